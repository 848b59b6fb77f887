"""Regimes page: first the verdict per asset (how many regimes the data supports, chosen on the next bar's returns,
and whether they differ beyond chance: "one regime, or none distinct" when not), each regime's volatility and mean
return with intervals, persistence tested against shuffled labels, agreement with an HMM; then the exploration:
each asset's regime embeddings (PCA scatter) for a chosen number of clusters with those clusters' own test, the
regime ribbon under its price, explained variance, the transition matrix, and on the demo the planted regimes.

Layout only: the verdicts come from engine.diagnostics.findings (views.model_results.model_findings), the results
from views.model_results, a different number of clusters is a cached refit with engine.diagnostics.fit_regimes on
the training rows, and every chart is built by engine.figures.regimes.
"""
from __future__ import annotations

import pandas as pd
import streamlit as st

from engine.backtest.inputs import bars_per_year_of, infer_markets
from engine.diagnostics import RegimeConfig, RegimeResult, fit_regimes, view_results
from engine.diagnostics.regimes import regime_table as per_regime_table
from engine.figures import regimes as charts
from engine.figures.style import red_losses
from views.csv_downloads import csv_buttons
from views.export_widgets import chart_with_downloads, report_buttons
from views.frame import current_selection, date_span_text
from views.model_results import asset_closes, model_findings, model_view
from views.url_state import url_widget

MAX_REGIMES = 8

selection = current_selection()
st.title("Regimes")
view = model_view(selection)
bundle, symbols, synthetic = view.bundle, view.bundle.symbols, selection.synthetic
findings = model_findings(view, selection, ("regimes",))


@st.cache_data(show_spinner="Refitting the regimes on the training span…", max_entries=16)
def refit_regimes(run_id: str, data_key: str, n_regimes: int, _bundle) -> RegimeResult:
    """The bundle's regimes with another number of clusters; keyed by run, data and k (the arrays are not hashed)."""
    del run_id, data_key  # only key the cache
    fitted = _bundle.regimes
    config = RegimeConfig(n_regimes=n_regimes, n_components=fitted.projections.shape[2])
    return fit_regimes(_bundle.inference.embeddings, _bundle.inference.mask, range(*fitted.fit_rows), config)


@st.cache_data(show_spinner="Testing the clusters against shifted labels…", max_entries=32)
def clusters_tested(run_id: str, data_key: str, n_regimes: int, symbol: str, _regimes, _loaded, _entry) -> str:
    """The regime tests on the page's clusters of one asset, in words (findings.cluster_evidence, kept on disk
    beside the diagnostics by view_results; the shipped number of clusters' are computed ahead); keyed by run,
    data, k and asset."""
    del run_id, data_key, n_regimes
    return view_results.clusters_tested(_entry, _loaded, _regimes.labels, bundle.inference.mask, symbol)


st.subheader("Are there regimes? Tested on the data")
verdicts = findings.regime_lines()
for line in verdicts:
    st.markdown(f"- {line}")
st.table(findings.regimes_table().style.format(
    {"separation p": "{:.3f}", "separation q": "{:.3f}", "beyond GARCH p": "{:.3f}", "beyond GARCH q": "{:.3f}",
     "stays in its regime": "{:.0%}", "stays, labels shuffled": "{:.0%}", "persistence p": "{:.3f}",
     "agreement with a 2-state HMM (ARI)": "{:.3f}"}, na_rep="–"))
levels = findings.regime_levels_table()
chart_with_downloads(charts.regime_levels_chart(levels, synthetic=synthetic), key="rg_levels",
                     file_stem="regimes-tested")
st.caption(
    "Per asset, clusters of the model's state are the candidates; the number of regimes is the fewest that describe "
    "the next bar's (gap-normalised) volatility as well as any more do, after a BIC price per regime, so one regime "
    "is a possible answer. Separation: the chosen split against the same split with the labels circularly shifted "
    "in time (selection included, Holm over assets). Beyond GARCH: the same test on returns divided by the "
    "one-step forecast of a GARCH(1,1) fitted on the training rows; volatility clustering alone passes the first "
    "test and fails this one, and regimes are claimed only when both pass. "
    "Persistence: how often a bar keeps its label, against shuffled labels: a slow state's labels persist on any "
    "data, so this says the labels are slow, not that they mean anything. ARI: agreement with a 2-state Gaussian "
    "HMM on absolute returns (1 = the same partition, 0 = chance). Intervals: moving-block bootstrap. Computed over "
    "the whole cached history."
)

st.subheader("Explore the model's state")
shipped_k = bundle.regimes.transition_matrix.shape[1]
controls = st.columns([2, 2, 1])
with controls[0]:
    symbol = url_widget(st.selectbox, "Asset", key="rg_asset", default=symbols[0], options=list(symbols))
with controls[1]:
    n_regimes = url_widget(
        st.slider, "Number of regimes", key="rg_k", default=shipped_k, min_value=2, max_value=MAX_REGIMES,
        help="Clusters of the embeddings, fitted on the training span only; a change refits them (cached).",
    )
with controls[2]:
    colour_by = url_widget(st.radio, "Colour points by", key="rg_colour", default=charts.COLOUR_BY[0],
                           options=list(charts.COLOUR_BY))

try:
    regimes = bundle.regimes if n_regimes == shipped_k else refit_regimes(
        view.run_id, f"{selection.db_path}|{selection.last_bar}", n_regimes, bundle)
except ValueError as error:
    st.error(f"The regimes could not be refitted with {n_regimes} clusters: {error}")
    st.stop()

asset = symbols.index(symbol)
mask, ts = bundle.inference.mask, view.ts
# the asset's own clock (365 or 252 days of bars) for the per-regime table's annual figures
asset_year = float(bars_per_year_of(selection.interval, infer_markets(view.loaded.panel))[
    view.loaded.symbols.index(symbol)])


def transitions_frame() -> pd.DataFrame:
    names = [f"regime {k}" for k in range(regimes.transition_matrix.shape[1])]
    frame = pd.DataFrame(regimes.transition_matrix[asset], columns=[f"to {n}" for n in names])
    frame.insert(0, "from", names)
    frame["bars counted"] = regimes.transition_counts[asset].sum(axis=1)
    return frame
closes = asset_closes(view, symbol)
truth = view.truth
planted = charts.planted_on_clock(ts, truth.regimes) if truth is not None else None
fit_first, fit_last = ts[regimes.fit_rows[0]], ts[regimes.fit_rows[1] - 1]
st.caption(
    f"Showing {date_span_text(selection)} of run `{view.run_id}`. The PCA and the clusters were fitted on the "
    f"training span only ({fit_first:%Y-%m-%d} .. {fit_last:%Y-%m-%d} UTC) and applied bar by bar, so a label "
    "never uses a later bar. The clusters are cut along the first component (the direction the state moves most); "
    "regime numbers are arbitrary, sorted along it."
)

st.caption(f"Tested, these {n_regimes} clusters of {symbol} (not chosen on the data; not corrected over assets): "
           + clusters_tested(view.run_id, f"{selection.db_path}|{selection.last_bar}", n_regimes, symbol, regimes,
                             view.loaded, view.entry))

left, right = st.columns([3, 2])
with left:
    chart_with_downloads(charts.regime_scatter(
        regimes.projections[asset], regimes.labels[asset], mask[asset], ts, closes, symbol, colour_by=colour_by,
        explained=regimes.explained_variance_ratio[asset], rows=view.rows, synthetic=synthetic,
    ), key="rg_scatter", file_stem=f"regimes-scatter-{symbol}")
    st.caption("Each point is one open bar's SSM state, projected on the two main directions of the training "
               "states. Bars close together are states the model finds alike; hover for the bar's date and price.")
with right:
    chart_with_downloads(charts.transition_heatmap(regimes.transition_matrix[asset], regimes.transition_counts[asset],
                                                   symbol, synthetic=synthetic),
                         key="rg_transitions", file_stem=f"regimes-transitions-{symbol}")
    st.caption("Row = regime now, column = regime at the next open bar, counted over the whole history. Clusters "
               "of a slowly moving state stay put on any data, independent random walks included, so the diagonal "
               "is no evidence of regimes: see the tests above.")

st.markdown(f"**{symbol}: what each regime looks like** (over the chosen dates)")
span = slice(view.rows.start, view.rows.stop)
per_regime = per_regime_table(regimes.labels[asset][span], mask[asset][span], closes[span], ts[span],
                              asset_year)
per_regime_shown = charts.regime_table_display(per_regime)
st.table(  # static: it wraps instead of cutting the last columns at 1280 px
    red_losses(per_regime_shown, columns=["annual return"], percent=["annual return"], missing="–",
               formats={"share of time": "{:.1%}", "annual volatility": "{:.1%}", "mean spell (bars)": "{:,.1f}",
                        "median spell (bars)": "{:,.1f}"}).hide(axis="index"),
)
st.caption("Columns: share of the asset's open bars in the regime; the next bar's return and volatility, "
           "annualised; spells (runs of consecutive open bars in one regime), their mean and median length in bars "
           "and in wall-clock time (closed hours inside a spell count).")
st.caption(f"Return and volatility are of the bar AFTER a bar in the regime (the label is known at the bar's "
           f"close, so this is what it says about what follows), annualised with {asset_year:,.0f} "
           f"bars/year ({symbol}'s own clock). A spell is a run of consecutive open bars in one regime.")

chart_with_downloads(charts.regime_timeline(
    ts, closes, regimes.labels[asset], symbol, planted=planted,
    planted_names=truth.regime_names if truth is not None else None, rows=view.rows,
    out_of_sample=view.out_of_sample, synthetic=synthetic,
), key="rg_timeline", file_stem=f"regimes-timeline-{symbol}")
st.caption("The ribbon under the price is the regime found at every bar" +
           (", with the planted regimes of the synthetic demo under it." if planted is not None else ".") +
           " Shaded spans are out of sample (walk-forward test folds).")

if planted is not None:
    st.subheader("Found vs planted")
    agreement = charts.adjusted_rand_by_asset(regimes.labels, planted, mask, symbols, rows=view.rows)
    st.dataframe(agreement, hide_index=True, width="content", key="rg_ari", placeholder="–",
                 column_config={"adjusted_rand_index": st.column_config.NumberColumn("adjusted Rand index",
                                                                                     format="%.3f")})
    st.caption("Adjusted Rand index between the found and the planted regimes on each asset's open bars in the "
               "chosen dates: 1 = the same partition, about 0 = chance. It ignores the numbering of the regimes.")

chart_with_downloads(charts.explained_variance_chart(regimes.explained_variance_ratio, symbols, synthetic=synthetic),
                     key="rg_variance", file_stem="regimes-explained-variance")
st.caption("How much of the training states' variance each principal component holds, per asset: the scatter "
           "shows the first two.")

csv_buttons({"Regime tests": findings.regimes_table(), "Regimes chosen on the data": levels,
             f"Per-regime table {symbol}": per_regime, f"Transitions {symbol}": transitions_frame(),
             **({"Found vs planted": agreement} if planted is not None else {})},
            key="rg", file_stem="regimes")

report_buttons("Regimes", selection, verdicts=verdicts,
               tables={"Regime tests per asset": findings.regimes_table(), "Regimes chosen on the data": levels,
                       f"Regimes of {symbol}": per_regime_shown},
               settings={"asset": symbol, "clusters explored": n_regimes}, key="rg_report")
