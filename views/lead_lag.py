"""Lead-lag page: the leads a model-free test finds (after false-discovery control) beside the model's attention,
drawn as its excess over an uninformed model's weights (one source x lag heatmap per target), how the attention
changes over time (a trailing window ending at a chosen bar), and the largest raw weights; the planted lead boxed on
the demo. "No lead-lag found" when the test finds none.

Layout only: the verdicts come from engine.diagnostics.findings (views.model_results.model_findings), the maps from
engine.diagnostics (bundle methods, findings.attention_and_null), the charts from engine.figures.lead_lag.
"""
from __future__ import annotations

import numpy as np
import streamlit as st

from engine.diagnostics.findings import attention_and_null
from engine.diagnostics.lead_lag import lag_convention, lag_duration
from engine.figures import lead_lag as charts
from engine.figures.lead_lag import attention_map_frame
from views.bar_picker import pick_bar
from views.csv_downloads import csv_buttons
from views.export_widgets import chart_with_downloads, report_buttons
from views.frame import current_selection
from views.model_results import model_findings, model_view
from views.url_state import url_widget

WINDOW_CHOICES = (20, 60, 120, 250, 500, 1000, 2000)

selection = current_selection()
st.title("Lead-lag")
view = model_view(selection)
bundle, symbols, synthetic, ts = view.bundle, view.bundle.symbols, selection.synthetic, view.ts
step = view.loaded.panel.clock_step  # one clock row: lags are shown as time with it
findings = model_findings(view, selection, ("lead_lag",))


@st.cache_data(show_spinner="Computing the rolling lead-lag map…", max_entries=16)
def rolling_map(run_id: str, data_key: str, window: int, target: str, _bundle) -> np.ndarray:
    """(T, A_src, K+1) one target's trailing-window maps; keyed by run, data, window and target (the bundle itself
    is not hashed)."""
    del run_id, data_key
    return _bundle.rolling_lead_lag_of(target, window)


shown = view.rows
controls = st.columns([1, 1, 1])
with controls[0]:
    whole = url_widget(st.toggle, "Whole chosen span", key="ll_whole", default=True,
                       help="Off: a trailing window that ends at the bar picked below.")
with controls[1]:
    hide_self = url_widget(st.toggle, "Hide self-attention", key="ll_hide_self", default=True,
                           help="An asset's attention on its own past dominates every map; hiding it gives the "
                                "colour range to the cross-asset cells.")
with controls[2]:
    top = url_widget(st.number_input, "Raw weights listed", key="ll_top", default=5, min_value=1, max_value=20)

windows = [w for w in WINDOW_CHOICES if w <= len(ts)] or [len(ts)]
window = url_widget(st.select_slider, "Trailing window (bars)", key="ll_window",
                    default=windows[min(2, len(windows) - 1)], options=windows, disabled=whole)
end = pick_bar("Window ends at", ts, shown, selection.interval, key="ll_end", disabled=whole)
if whole:
    rows, span_text = shown, f"{ts[shown.start]:%Y-%m-%d} .. {ts[shown.stop - 1]:%Y-%m-%d} UTC"
else:
    rows = range(max(end - window + 1, 0), end + 1)
    span_text = f"{window} bars to {ts[end]:%Y-%m-%d %H:%M} UTC"

kept = bundle.attention_rows
if kept.start > 0:  # a wide universe: per-bar attention is kept only for the latest bars (InferenceConfig)
    st.info(f"With {len(symbols)} assets the per-bar attention is kept for the latest {len(kept):,} bars (from "
            f"{ts[kept.start]:%Y-%m-%d %H:%M} UTC). The whole-span map counts every bar; a window or span that "
            f"starts earlier is drawn from its bars since then.")
weights, null = attention_and_null(bundle, rows)  # (A_tgt, A_src, K+1) each: the map and an uninformed model's
if not np.isfinite(weights).any():
    st.info("No target market was open in this window: widen it or move it.")
    st.stop()
tests = findings.lead_lag_tests
found = findings.lead_lag_table()
verdict = findings.lead_lag_lines()

# One above the other, each the page's width: side by side at 1280 px the maps were cramped and the table cut.
st.subheader("What the data shows, without the model")
if found.empty:
    st.success(verdict[0], icon="🚫")
else:
    st.markdown(f"**{len(found)} lead(s) found** by the model-free test: significant after false-discovery "
                f"control ({tests['fdr']:.0%}, {tests['n_tests']} tests).")
    st.table(found.style.format({"slope": "{:.3g}", "corr": "{:.3f}", "q": "{:.2g}", "bars": "{:,}"}))
for line in verdict[1 if found.empty else len(found):]:
    st.caption(line)
st.caption(f"The test: {tests['method']}, over the whole cached history. 'attention agrees': the model's "
           "weight on that source at key lag lead − 1 is above an uninformed model's and the pair's largest "
           "excess over it (one model's point estimate, not a test of the attention).")
st.subheader("What the model attends to")
chart_with_downloads(charts.lead_lag_heatmaps(
    weights, symbols, truth=view.truth, hide_self=hide_self, span_text=span_text, step=step, null=null,
    leads=[(p["target"], p["source"], p["lead_bars"]) for p in findings.lead_lag], synthetic=synthetic,
), key="ll_heatmaps", file_stem="lead-lag-heatmaps")
st.caption(f"Run `{view.run_id}` · {span_text}. Colour: the model's attention minus an uninformed model's, which "
           "spreads each bar's weight evenly over the keys it may look at (red: more than chance, blue: less); only "
           "bars where the target's market is open count. Dotted outlines: leads the model-free test found."
           + (" The planted lead of the synthetic demo is boxed in red." if view.truth is not None else ""))
st.caption("How to read the lags, once: a lead of k bars means the source's return k bars before the target's bar "
           "predicts it (lag 0, the same bar, is co-movement and never a lead). The map is read at the forecast "
           "origin for the next bar, so a lead of k bars shows at key lag k − 1: a column of panels is a target "
           "(title) looking at each source (rows) that many clock rows back (columns). " + lag_convention(step))

st.subheader("Largest raw attention weights")
st.caption("Raw weights are no evidence on their own: each target's weights sum to 1 and an uninformed model "
           "spreads them over the open keys. Read the map above (the excess) and the test beside it.")
strongest = bundle.strongest_pairs(int(top), rows)
strongest.insert(strongest.columns.get_loc("lag") + 1, "lag as time",
                 [lag_duration(lag, step) for lag in strongest["lag"]])
st.dataframe(strongest, hide_index=True, width="content", key="ll_pairs", placeholder="–",
             column_config={"weight": st.column_config.NumberColumn(format="%.4f")})
csv_buttons({"Leads found": found, "Largest raw weights": strongest,
             "Attention map": lambda: attention_map_frame(weights, null, symbols, step)},
            key="ll", file_stem="lead-lag")

st.subheader("Over time")
target = url_widget(st.selectbox, "Target", key="ll_target", default=symbols[-1], options=list(symbols))
over_time_window = window if not whole else windows[min(2, len(windows) - 1)]
rolling = rolling_map(view.run_id, f"{selection.db_path}|{selection.last_bar}", over_time_window, target, bundle)
chart_with_downloads(charts.attention_over_time(
    rolling, ts, symbols, target, window=over_time_window, target_open=bundle.inference.mask[symbols.index(target)],
    rows=shown, marked_time=None if whole else ts[end],
    out_of_sample=view.out_of_sample, synthetic=synthetic,
), key="ll_over_time", file_stem=f"lead-lag-over-time-{target}")
st.caption("The target's share of attention on each source (all lags) over a trailing window at every bar; the "
           "dashed line is the end of the window drawn above. Shaded spans are out of sample.")

report_buttons("Lead-lag", selection, verdicts=verdict,
               tables={"Leads found by the model-free test": found, "Largest raw attention weights": strongest},
               key="ll_report")
