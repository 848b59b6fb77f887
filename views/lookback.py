"""Lookback page: how many bars of memory the model uses at each bar (effective look-back under the price, shaded by
regime), its distribution per regime, each regime's median with an interval and the test of the differences (a
ranking is stated only where the test supports it), and for one picked bar which past bars the SSM state draws on.

Layout only: the look-back comes from views.model_results, the per-regime table from the bundle, the intervals and
differences from engine.diagnostics.lookback_test, the hidden attention of the picked bar from
engine.diagnostics.hidden_attention, both through engine.diagnostics.view_results (kept on disk beside the
diagnostics; the default view's are computed ahead, so that the page's default view needs neither the model nor
torch: only a bar picked for the first time loads it), charts from engine.figures.lookback.
"""
from __future__ import annotations

import pandas as pd
import streamlit as st

from engine.diagnostics import view_results
from engine.diagnostics.lookback_test import LookbackTest
from engine.figures import lookback as charts
from engine.figures.regimes import planted_on_clock
from views.bar_picker import pick_bar
from views.export_widgets import chart_with_downloads, report_buttons
from views.frame import current_selection, date_span_text
from views.model_results import asset_closes, model_view
from views.url_state import url_widget

LAG_CHOICES = (20, 50, 100, 200, view_results.MAX_LAG_KEPT)  # the most: what a bar's trace keeps on disk
HALF_MASS_WINDOW = 4096  # rows each traced bar looks back over (one batched pass; further weight is left out)
REGIME_SOURCES = ("found in the embeddings", "planted (synthetic demo)")

selection = current_selection()
st.title("Lookback")
view = model_view(selection)
bundle, symbols, synthetic, ts = view.bundle, view.bundle.symbols, selection.synthetic, view.ts
inference = bundle.inference


@st.cache_data(show_spinner=False, max_entries=64)
def bar_attention(run_id: str, data_key: str, symbol: str, at: int, _run, _entry) -> tuple[pd.DataFrame, float]:
    """view_results.bar_attention of one bar (its newest 501 rows, its half-mass lag); keyed by run, data, asset
    and bar (the model is not hashed). From disk when kept there; else the model runs, loaded first if need be."""
    del run_id, data_key
    return view_results.bar_attention(_entry, _run, ts, symbol, at)


@st.cache_data(show_spinner="Loading the model and tracing the memory the output uses…", max_entries=16)
def half_mass_trace(run_id: str, data_key: str, symbol: str, rows: tuple[int, int], _run) -> pd.Series:
    """half_mass_lags over the chosen dates (runs the model: torch); keyed by run, data, asset and dates."""
    from engine.diagnostics.hidden_attention import half_mass_lags

    del run_id, data_key
    return half_mass_lags(_run.model, _run.features, symbol, range(*rows), window=HALF_MASS_WINDOW, n_points=40)


@st.cache_data(show_spinner="Testing the look-back's differences between regimes, and asking the data which "
                            "memory it rewards per regime…", max_entries=16)
def lookback_tested(run_id: str, data_key: str, regime_source: str, rows: tuple[int, int], _labels, _names,
                    _entry) -> tuple[LookbackTest, list[str]]:
    """view_results.lookback_per_regime (lookback_regime_test and memory_verdicts) on the shading's labels over the
    chosen dates; keyed by run, data, labels and dates. From disk when kept there."""
    del run_id, data_key, regime_source
    return view_results.lookback_per_regime(_entry, view.loaded, bundle, _labels, _names, range(*rows))


controls = st.columns([1, 1, 1])
sources = REGIME_SOURCES if view.truth is not None else REGIME_SOURCES[:1]
with controls[0]:
    regime_source = url_widget(st.radio, "Shade by regimes", key="lb_regimes", default=sources[0],
                               options=list(sources), horizontal=True)
if regime_source == REGIME_SOURCES[1]:
    shared = planted_on_clock(ts, view.truth.regimes)
    labels_per_asset = [shared] * len(symbols)
    names, labels_arg = view.truth.regime_names, shared
else:
    labels_per_asset, names, labels_arg = list(bundle.regimes.labels), None, None
test_labels = labels_arg if labels_arg is not None else bundle.regimes.labels
test_names = names if names is not None else view_results.found_regime_names(bundle)
with controls[1]:
    chosen = url_widget(st.multiselect, "Assets", key="lb_assets", default=list(symbols), options=list(symbols))
with controls[2]:
    trace_used = url_widget(st.toggle, "Trace the memory the output uses", key="lb_half_mass", default=False,
                            help="Half-mass lag of the SSM's hidden attention at 40 bars per asset: the own bars "
                                 "back within which half of the weight reaching the output lies. A few seconds "
                                 "per asset.")
if not chosen:
    st.info("Choose at least one asset.")
    st.stop()
st.caption(f"Showing {date_span_text(selection)} of run `{view.run_id}`. Effective look-back is the half-life "
           "ln 2 / (Δ·|A|) of the SSM's memory in bars, the median over channels; it is drawn on the asset's open "
           "bars and carried across closed ones. Shaded spans are out of sample.")

st.subheader("Which past bars the state draws on")
pick = st.columns([3, 1])
with pick[0]:
    at = pick_bar("Bar", ts, view.rows, selection.interval, key="lb_bar",
                  help="The bar whose SSM output is traced back over the bars before it.")
with pick[1]:
    max_lag = url_widget(st.select_slider, "Lags shown", key="lb_max_lag", default=100, options=LAG_CHOICES)

data_key = f"{selection.db_path}|{selection.last_bar}"
for symbol in chosen:
    asset = symbols.index(symbol)
    used = half_mass_trace(view.run_id, data_key, symbol, (view.rows.start, view.rows.stop), view.run) \
        if trace_used else None
    chart_with_downloads(charts.lookback_chart(
        ts, asset_closes(view, symbol), inference.lookback_median[asset], symbol, open_bars=inference.mask[asset],
        labels=labels_per_asset[asset],
        regime_names=names, rows=view.rows, marked_time=ts[at], out_of_sample=view.out_of_sample,
        synthetic=synthetic, regime_palette="planted" if regime_source == REGIME_SOURCES[1] else "found",
        half_mass=used, half_mass_label=f"memory used: half-mass lag within {HALF_MASS_WINDOW:,} rows (at least)",
    ), key=f"lb_trace_{symbol}", file_stem=f"lookback-{symbol}")
st.caption("Top: the price. Bottom: the look-back, shaded by regime: the line is a rolling median of the per-bar "
           "look-back and the grey band its rolling 10-90 % range (the window is in each chart's title). A longer "
           "look-back means the model keeps older bars in its state; the dashed line marks the bar traced below. "
           "Zoom with the buttons or the range slider; long spans are thinned for display, as each title says. The "
           "look-back is how fast the state could forget; the memory the output uses (the toggle above, and the "
           "bar traced below) is where the weight reaching the output sits: its half-mass lag, in own bars.")

tracing = ("Tracing which past bars the state draws on…" if view_results.model_is_loaded(view.run) else
           "Loading the model (once) to trace which past bars the state draws on at this bar…")
for symbol in chosen:
    try:
        with st.spinner(tracing):  # shown only when it takes longer than half a second: a bar not traced before
            frame, used_lag = bar_attention(view.run_id, data_key, symbol, at, view.run, view.entry)
    except ValueError as error:
        st.warning(f"No hidden attention for {symbol} at {ts[at]:%Y-%m-%d %H:%M} UTC: {error}")
        continue
    if not inference.mask[symbols.index(symbol), at]:
        st.caption(f"{symbol}'s market was closed at this bar: its state is the last open bar's.")
    asset = symbols.index(symbol)
    st.caption(f"{symbol} at this bar: half of the weight reaching the output lies within the last "
               f"{used_lag:.0f} own bars (the memory used); the look-back (Δ half-life, median over "
               f"channels) is {inference.lookback_median[asset, at]:.1f} bars.")
    chart_with_downloads(charts.hidden_attention_chart(frame.iloc[: max_lag + 1], symbol, synthetic=synthetic),
                         key=f"lb_hidden_{symbol}", file_stem=f"hidden-attention-{symbol}")
st.caption("Bar height: how strongly each earlier bar reaches the SSM output at the picked bar (the model's "
           "implicit attention). Closed bars of an equity take no step and weigh 0.")

st.subheader("Look-back per regime")
tested, memory = lookback_tested(view.run_id, data_key, regime_source, (view.rows.start, view.rows.stop),
                                 test_labels, test_names, view.entry)
rankings = [tested.ranking(symbol) for symbol in chosen]
for line in [m for m in memory if m.split(":")[0] in chosen]:
    st.markdown(f"- {line}")
st.caption("The memory the data rewards, without a model: per regime, which half-life of an average of the "
           "asset's past returns (a drift's memory) and of its past absolute returns (volatility clustering's) "
           "best predicts the next bar; two regimes differ when their best half-lives, with every half-life "
           "within one standard error of the best, do not overlap.")
for line in rankings:
    st.markdown(f"- {line}")
chart_with_downloads(charts.lookback_intervals_chart(tested.intervals, chosen, labels_from=regime_source,
                                                     synthetic=synthetic),
                     key="lb_intervals", file_stem="lookback-intervals")
differences = tested.differences[tested.differences["symbol"].isin(chosen)].copy()
differences["regime_a"] = [test_names[int(r)] for r in differences["regime_a"]]
differences["regime_b"] = [test_names[int(r)] for r in differences["regime_b"]]
st.table(differences.rename(columns={"regime_a": "regime A", "regime_b": "regime B",
                                     "difference": "B − A (bars)"}).style.format(
    {"B − A (bars)": "{:+.3g}", "low": "{:+.3g}", "high": "{:+.3g}", "p": "{:.3f}", "q": "{:.3f}"}))
st.caption("Median look-back of each regime with a moving-block bootstrap interval (blocks as long as the regimes' "
           "spells; with a state this slow, read them as a lower bound on the uncertainty). Each pair's difference "
           f"is tested against the labels circularly shifted in time, Holm-corrected over every pair of every asset "
           f"at {tested.alpha:.0%}: a ranking is stated only where that test supports it. Over the chosen dates.")
table = bundle.lookback_by_regime(labels=labels_arg, regime_names=names, rows=view.rows)
chart_with_downloads(charts.lookback_by_regime_chart(table, chosen, labels_from=regime_source, synthetic=synthetic),
                     key="lb_by_regime", file_stem="lookback-by-regime")
if view.truth is not None and view.truth.memory_order:
    st.caption("Planted memory, longest first: " + " > ".join(view.truth.memory_order) +
               ". With planted shading, a model whose memory moves with it would show that order, and the test "
               "above says whether the differences are more than chance.")
st.caption("Each box spans the middle half of the asset's open bars in that regime; the line is the median. The "
           "spread over bars says nothing about how sure the median is: that is the interval above.")

report_buttons("Lookback", selection, verdicts=[*memory, *rankings],
               tables={"Look-back per regime (median, interval)": tested.intervals,
                       "Differences between regimes (tested)": differences}, key="lb_report")
