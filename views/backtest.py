"""Backtest page: strategy sliders that rerun alone (st.fragment), equity vs buy-and-hold, drawdown, rolling Sharpe,
monthly returns, metrics with PSR/DSR over the trials tried, the trades, a two-parameter sweep, and the report export.

Only layout lives here: forecasts come from engine.backtest.inputs, accounting from engine.backtest.engine, charts from
engine.figures.backtest, the report from engine.report.
"""
from __future__ import annotations

import functools
from dataclasses import asdict

import pandas as pd
import streamlit as st

from engine.backtest.engine import StrategyConfig, run_backtest
from engine.backtest.inputs import (
    FORECASTERS,
    backtest_inputs_from_forecasts,
    backtested_span_text,
    model_forecasts,
)
from engine.backtest.sweep import sweep
from engine.backtest.tearsheet import tearsheet_of
from engine.backtest.trials import TrialLog, trials_for_backtest
from engine.figures import backtest as charts
from engine.figures.export import browser_unavailable_reason
from engine.figures.style import red_losses
from engine.report import ReportContent, report_html, report_pdf
from storage.locks import CacheBusyError
from storage.panel import read_panel
from views.csv_downloads import csv_buttons
from views.export_widgets import chart_with_downloads, share_url
from views.frame import (
    MODEL_RESULTS_CACHED,
    current_selection,
    load_summary,
    selection_series,
)
from views.url_state import url_widget

FORECAST_HORIZONS = (1, 5, 20)
# The grids a sweep may run over: two sliders at a time, every cell counted as a trial.
SWEEP_GRIDS = {
    "threshold": (0.0, 0.01, 0.02, 0.03, 0.05, 0.075, 0.1),
    "max_position": (0.25, 0.5, 0.75, 1.0, 1.5, 2.0),
    "commission_bps": (0.0, 1.0, 2.0, 5.0, 10.0, 20.0),
    "slippage_bps": (0.0, 1.0, 2.0, 5.0, 10.0),
    "holding_horizon": (1, 2, 5, 10, 20),
    "vol_target": (None, 0.1, 0.2, 0.3, 0.5),
}
SWEEP_METRICS = ("sharpe", "cagr", "max_drawdown", "calmar", "turnover")
LOSS_STATISTICS = ("Alpha (annual)", "Information ratio")
# Rows of the on-page trades table (the CSV download holds every trade). Every slider move resends them, styled cell
# by cell: 500 rows were a 122 KB message and ~0.07 s of a move (load 2, chromium); the box shows seven at a time.
TRADES_SHOWN = 100
# What the page draws under the sliders, one section at a time (in the URL as bt_section): a slider move redraws only
# the open section. All three at once took 0.95-1.46 s a move (medians of 7, chromium, two cores), the charts 0.38 s.
SECTIONS = ("Charts", "Metrics and tearsheet", "Trades")

selection = current_selection()
st.title("Backtest")
if not selection.symbols:
    st.info("Choose one or more symbols in the sidebar.")
    st.stop()


MODEL_FORECASTER = "model (walk-forward)"


@st.cache_data(show_spinner="Running the walk-forward forecaster (refitted on the past of every fold)…", max_entries=8)
def load_forecasts(db_path: str, symbols: tuple[str, ...], interval: str, forecaster: str, freshness: tuple,
                   run_path: str | None):
    """(panel, forecasts); `freshness` (the last bar of each series) only keys the cache.

    `symbols` are asset names; with the model forecaster they are in the checkpoint's order (the frame's
    Selection.symbols is), the order its forecasts are stored in."""
    del freshness
    panel = read_panel(list(symbols), interval, db_path=db_path)
    if forecaster == MODEL_FORECASTER:
        return panel, model_forecasts(panel, run_path, FORECAST_HORIZONS)
    return panel, FORECASTERS[forecaster](panel, FORECAST_HORIZONS)


summary = load_summary(selection.db_path)
spans = selection_series(summary, selection).copy()  # the series each asset is read from
missing = sorted(set(selection.symbols) - set(spans["asset"]))
if missing:
    st.warning(f"No {selection.interval} bars cached for {', '.join(missing)}: fetch or import them on the Data page.")
    st.stop()
synthetic = "demo" in set(spans["source"])

top = st.columns([2, 1])
run_path = selection.checkpoint["path"] if selection.checkpoint else None
forecaster_options = ([MODEL_FORECASTER] if run_path else []) + list(FORECASTERS)
with top[0]:
    forecaster = url_widget(
        st.selectbox, "Forecaster", key="bt_forecaster", default=forecaster_options[0], options=forecaster_options,
        help="What produces P(up) and the volatility the strategy trades on: the selected checkpoint's walk-forward "
         "out-of-sample forecasts, or a walk-forward baseline. Either way every traded forecast was made by a "
         "model fitted on earlier bars only.",
    )
if run_path is None:
    st.caption("No checkpoint fits this selection, so a baseline drives the backtest (train one on the Model page).")
with top[1]:
    horizon = url_widget(st.selectbox, "Forecast horizon (bars)", key="bt_horizon", default=FORECAST_HORIZONS[0],
                         options=FORECAST_HORIZONS)
freshness = tuple(spans.sort_values("asset")[["asset", "symbol", "source", "last_ts"]].itertuples(index=False, name=None))
try:
    panel, forecasts = load_forecasts(selection.db_path, selection.symbols, selection.interval, forecaster, freshness,
                                      run_path if forecaster == MODEL_FORECASTER else None)
except CacheBusyError as error:
    st.warning(str(error))
    st.stop()
except ValueError as error:
    st.error(f"No backtest for this selection: {error}")
    st.stop()
st.caption(f"**Forecasts:** {forecasts.description}. Only out-of-sample bars are backtested.")
if forecaster == MODEL_FORECASTER:
    st.session_state[MODEL_RESULTS_CACHED] = True  # the model's stored forecasts: the status line says so

# The inputs live in the session so the work they cache (held signals, the benchmark) survives slider moves.
dates = (selection.start, selection.end)
inputs_key = (selection.db_path, selection.symbols, selection.interval, forecaster, horizon, freshness, dates)
if st.session_state.get("bt_inputs_key") != inputs_key:
    try:
        st.session_state["bt_inputs"] = backtest_inputs_from_forecasts(
            panel, forecasts.prob_up, forecasts.predicted_vol, forecasts.horizons, horizon, selection.interval,
            start=selection.start, end=selection.end,
        )
    except ValueError as error:
        st.error(f"No backtest for this selection: {error}")
        st.stop()
    st.session_state["bt_inputs_key"] = inputs_key
inputs = st.session_state["bt_inputs"]
span_text = backtested_span_text(inputs)
st.caption(f"**Backtested span:** {span_text}. The strategy and its buy-and-hold benchmark are measured over "
           "these same bars.")
trials_key = (selection.db_path, selection.symbols, selection.interval, forecaster, freshness, dates)
if st.session_state.get("bt_trials_key") != trials_key:  # trials count per checkpoint, data and span, on disk
    st.session_state["bt_trials"] = trials_for_backtest(
        panel, selection.interval, forecaster, dates,
        run_path=run_path if forecaster == MODEL_FORECASTER else None,
        run_id=selection.checkpoint["run_id"] if forecaster == MODEL_FORECASTER else None,
    )
    st.session_state["bt_trials_key"] = trials_key
    st.session_state.pop("bt_sweep", None)
    st.session_state.pop("bt_sweep_table", None)
    st.session_state.pop("bt_report_figures", None)
trials: TrialLog = st.session_state["bt_trials"]
trials.refresh()  # another session may have tried settings since
# The sweep's chart, shared by both fragments (a sweep reruns only its own): the report, built when its button is
# clicked, adds it to the charts of every section.
report_figures: dict = st.session_state.setdefault("bt_report_figures", {})


def data_spans_table() -> pd.DataFrame:
    table = spans[["asset", "symbol", "source", "interval", "rows", "first_ts", "last_ts", "stale"]].copy()
    table["freshness"] = table.pop("stale").map({True: "stale", False: "fresh"})
    backtested = pd.DatetimeIndex(inputs.ts).tz_localize("UTC")
    table["backtested span (UTC)"] = f"{backtested[0]:%Y-%m-%d %H:%M} .. {backtested[-1]:%Y-%m-%d %H:%M}"
    return table


def strategy_sliders() -> StrategyConfig:
    left, right = st.columns(2)
    with left:
        threshold = url_widget(st.slider, "Threshold |P(up) - 0.5|", key="bt_threshold", default=0.02,
                               min_value=0.0, max_value=0.2, step=0.005,
                               help="Trade long above 0.5 + threshold, short (if allowed) below 0.5 - threshold.")
        max_position = url_widget(st.slider, "Maximum position", key="bt_max_position", default=1.0, min_value=0.1,
                                  max_value=2.0, step=0.05, help="Cap on |position| as a fraction of each asset's sleeve.")
        long_short = url_widget(st.toggle, "Long/short (off: long or flat only)", key="bt_long_short", default=True)
        vol_target = url_widget(st.slider, "Volatility target (annual, 0 = off)", key="bt_vol_target", default=0.0,
                                min_value=0.0, max_value=0.6, step=0.05,
                                help="Size x target / predicted annualised volatility.")
    with right:
        commission = url_widget(st.slider, "Commission (bps)", key="bt_commission", default=1.0, min_value=0.0,
                                max_value=20.0, step=0.5)
        slippage = url_widget(st.slider, "Slippage (bps)", key="bt_slippage", default=2.0, min_value=0.0,
                              max_value=20.0, step=0.5)
        holding = url_widget(st.slider, "Holding horizon (bars)", key="bt_holding", default=1, min_value=1,
                             max_value=20, step=1,
                             help="Re-decide every this many of the asset's open bars; positions are held between.")
        assets = url_widget(st.multiselect, "Assets", key="bt_assets", default=list(inputs.symbols),
                            options=list(inputs.symbols))
    if not assets:
        st.info("Choose at least one asset to backtest.")
        st.stop()
    weight_columns = st.columns(len(assets))
    weights = {}
    for column, symbol in zip(weight_columns, assets):
        with column:
            weights[symbol] = url_widget(st.slider, f"Weight {symbol}", key=f"bt_weight_{symbol}", default=1.0,
                                         min_value=0.0, max_value=1.0, step=0.05,
                                         help="Starting share of capital; weights are normalised to sum to 1.")
    if sum(weights.values()) <= 0:
        st.info("Give at least one asset a positive weight.")
        st.stop()
    return StrategyConfig(
        threshold=threshold, max_position=max_position, long_short=long_short,
        vol_target=vol_target or None, holding_horizon=int(holding), commission_bps=commission,
        slippage_bps=slippage, weights=tuple(weights.get(symbol, 0.0) for symbol in inputs.symbols),
    )


def headline_metrics(result, n_trials: int) -> None:
    help_text = charts.metric_help(result.metrics.periods_per_year)
    annualisation = f" Annualisation: {result.annualisation}"
    m, b = result.metrics, result.benchmark.metrics
    dsr = result.deflated_sharpe(trials)
    cells = [
        ("Sharpe ratio", charts.format_metric(m.sharpe, "num"), f"B&H {charts.format_metric(b.sharpe, 'num')}"),
        ("CAGR", charts.format_metric(m.cagr, "pct"), f"B&H {charts.format_metric(b.cagr, 'pct')}"),
        ("Max drawdown", charts.format_metric(m.max_drawdown, "pct"), f"B&H {charts.format_metric(b.max_drawdown, 'pct')}"),
        ("PSR (vs 0)", charts.format_metric(m.probabilistic_sharpe, "pct"), None),
        (f"DSR ({n_trials} trials)", charts.format_metric(dsr, "pct"), None),
    ]
    help_text[cells[-1][0]] = ("Deflated Sharpe ratio: PSR against the best Sharpe that this many skill-less trials "
                               "would reach by luck. Every distinct setting ever tried on this checkpoint (or "
                               "baseline), data and span is a trial, in any session; they are kept in "
                               f"{trials.path.name} beside the run.")
    for column, (label, value, delta) in zip(st.columns(len(cells)), cells):
        # The benchmark's value is a reference, not a change: no arrow, no colour.
        column.metric(label, value, delta, delta_color="off", delta_arrow="off", help=help_text[label] + annualisation)


@st.fragment
def strategy_view() -> None:
    config = strategy_sliders()
    result = run_backtest(inputs, config)
    st.session_state["bt_last_config"] = config
    trials.with_context(horizon=horizon).record(config, result.sharpe_per_period)
    headline_metrics(result, trials.n_trials)
    st.caption(f"Annualisation: {result.annualisation}")

    oos = forecasts.out_of_sample_start
    window = max(20, int(result.metrics.periods_per_year // 4))  # about three months of bars
    zone = selection.zone  # the sidebar's "Time zone of tables"; times are kept in UTC
    sheet = functools.cache(lambda: tearsheet_of(result))
    metrics = functools.cache(lambda: charts.metrics_table(result, trials))
    relative = functools.cache(lambda: charts.relative_table(sheet()))
    trades = functools.cache(lambda: charts.trades_table(result, zone))

    section = url_widget(st.segmented_control, "Section", key="bt_section", default=SECTIONS[0], options=SECTIONS,
                         help="The section drawn under the sliders; only it is redrawn when a slider moves. The "
                              "CSV downloads and the report below hold every section.") or SECTIONS[0]
    if section == SECTIONS[0]:
        for name, fig in chart_figures(result, oos, window).items():
            chart_with_downloads(fig, key=name, file_stem=f"backtest-{name}")
    elif section == SECTIONS[1]:
        tearsheet_section(metrics(), sheet(), relative(), zone)
    else:
        trades_section(trades())
    csv_buttons({"Trades": lambda: charts.trades_csv(result), "Equity": lambda: charts.equity_csv(result),
                 "Metrics": metrics, "Worst drawdowns": lambda: sheet().drawdowns,
                 "Yearly returns": lambda: sheet().yearly.reset_index(),
                 "Monthly returns": lambda: sheet().monthly.reset_index(), "Against buy and hold": relative},
                key="bt", file_stem="backtest")

    settings = {"forecaster": forecaster, "forecast horizon (bars)": horizon, **asdict(config)}
    n_trials_now = trials.n_trials

    def content() -> ReportContent:
        # Built on click (on Streamlit's download thread): every section's charts and tables of this result, whichever
        # is open, and the sweep when one was run.
        figures = chart_figures(result, oos, window) | tearsheet_figures(sheet())
        if "Parameter sweep" in report_figures:
            figures["Parameter sweep"] = report_figures["Parameter sweep"]
        return ReportContent(
            title=f"Backtest · {', '.join(config_assets(config))} · {selection.interval}",
            figures=figures, tables={"Metrics": metrics(), "Against buy and hold": shown_relative(relative()),
                                     "Worst drawdowns": charts.drawdowns_table(sheet(), zone),
                                     "Trades (latest 200)": trades().head(200)},
            settings=settings, data_spans=data_spans_table(), synthetic=synthetic,
            checkpoint_id=selection.checkpoint["run_id"] if forecaster == MODEL_FORECASTER else None,
            share_url=url, notes=[forecasts.description, f"Backtested span: {span_text}",
                                  f"Annualisation: {result.annualisation}",
                                  f"Trials counted: {n_trials_now}"],
        )

    url = share_url()
    st.subheader("Export report")
    buttons = st.columns([1, 1, 2], vertical_alignment="center")
    buttons[0].download_button("Export report (HTML)", data=lambda: report_html(content()),
                               file_name="backtest-report.html", mime="text/html", key="bt_export_html",
                               on_click="ignore", type="primary", icon=":material/description:")
    if browser_unavailable_reason() is None:
        buttons[1].download_button("Export report (PDF)", data=lambda: report_pdf(content()),
                                   file_name="backtest-report.pdf", mime="application/pdf", key="bt_export_pdf",
                                   on_click="ignore", icon=":material/picture_as_pdf:")
    else:
        buttons[1].caption(browser_unavailable_reason())


def chart_figures(result, oos, window: int) -> dict:
    """The Charts section's figures, by title."""
    return {
        "Equity, drawdown and rolling Sharpe": charts.performance_chart(result, window, oos, synthetic=synthetic),
        "Monthly returns": charts.monthly_returns_heatmap(result, synthetic=synthetic),
    }


def tearsheet_figures(sheet) -> dict:
    return {
        "Return distribution": charts.return_distribution_chart(sheet, synthetic=synthetic),
        "Yearly returns": charts.yearly_returns_chart(sheet, synthetic=synthetic),
    }


def shown_relative(relative: pd.DataFrame) -> pd.DataFrame:
    """The against-buy-and-hold table with each value formatted by its kind (percent, number)."""
    return relative.assign(value=[charts.format_metric(v, k) for v, k in zip(relative["value"], relative["kind"])]
                           ).drop(columns="kind")


def tearsheet_section(table: pd.DataFrame, sheet, relative: pd.DataFrame, zone: str) -> None:
    """The metrics table and the tearsheet."""
    # Static tables (st.table) for the short ones: they wrap their text and never scroll inside themselves.
    st.subheader("Metrics")
    st.table(red_losses(table, columns=["strategy", "buy and hold"]).hide(axis="index"))
    st.subheader("Tearsheet")
    st.caption(f"Against buy and hold on the same bars. Annualisation: {sheet.annualisation}.")
    for column, (name, fig) in zip(st.columns(2), tearsheet_figures(sheet).items()):
        with column:
            chart_with_downloads(fig, key=name, file_stem=f"backtest-{name}")
    shown = shown_relative(relative)
    yearly = charts.yearly_table(sheet)
    left, right = st.columns(2)
    with left:
        st.markdown("**Against buy and hold**")
        # Red only where negative is a loss (alpha, information ratio); a negative beta is no loss.
        st.table(red_losses(shown, columns=["value"], rows=shown.index[shown["statistic"].isin(LOSS_STATISTICS)])
                 .hide(axis="index"))
    with right:
        st.markdown("**Yearly net returns**")
        st.table(red_losses(yearly, columns=list(yearly.columns[1:]), percent=list(yearly.columns[1:]))
                 .hide(axis="index"))
    drawdowns = charts.drawdowns_table(sheet, zone)
    st.markdown(f"**Worst drawdowns** (times in {zone})")
    # one format call (red_losses' formats): a second Styler.format reset the depth's percentages to raw decimals
    st.table(red_losses(drawdowns, columns=["depth"], percent=["depth"], missing="",
                        formats={"length (bars)": "{:,}"}).hide(axis="index"))
    st.caption("Start: the first bar under the running peak of equity; trough: its lowest bar; recovery: the first "
               "bar back at the peak. Length: bars (and time) from the start to the recovery, or to the last bar.")


def trades_section(trades: pd.DataFrame) -> None:
    st.subheader("Trades")
    # The page's table holds the latest trades (every slider move resends it, styled cell by cell); the CSV has all.
    shown_trades = trades.head(TRADES_SHOWN)  # newest first
    if len(shown_trades) < len(trades):
        st.caption(f"The latest {len(shown_trades):,} of {len(trades):,} trades; **Trades (CSV)** below has them all.")
    st.dataframe(red_losses(shown_trades, columns=["return"], percent=["return"], number=["size"]), hide_index=True,
                 width="stretch", height=280, key="bt_trades_table",
                 column_config={"return": st.column_config.Column(
                     help="The trade's net return on its sleeve, entry and exit costs included."),
                     "size": st.column_config.Column(help="|position| at entry, as a fraction of the sleeve.")})


def config_assets(config: StrategyConfig) -> list[str]:
    return [s for s, w in zip(inputs.symbols, config.normalised_weights(len(inputs.symbols))) if w > 0]


@st.fragment
def sweep_view() -> None:
    st.subheader("Parameter sweep")
    st.caption("Every cell is a backtest with the other sliders as set above, and every cell counts as a trial "
               "for the deflated Sharpe ratio.")
    names = list(SWEEP_GRIDS)
    columns = st.columns(3)
    param_x = columns[0].selectbox("Across", names, index=0, key="bt_sweep_x")
    param_y = columns[1].selectbox("Down", [n for n in names if n != param_x], index=1, key="bt_sweep_y")
    metric = columns[2].selectbox("Metric", SWEEP_METRICS, key="bt_sweep_metric")
    if st.button("Run sweep", key="bt_run_sweep"):
        base = st.session_state.get("bt_last_config", StrategyConfig())
        result = sweep(inputs, base, param_x, SWEEP_GRIDS[param_x], param_y, SWEEP_GRIDS[param_y],
                       metric_names=SWEEP_METRICS, trials=trials.with_context(horizon=horizon))
        st.session_state["bt_sweep"] = charts.sweep_heatmap(result, metric, synthetic=synthetic)
        st.session_state["bt_sweep_table"] = charts.sweep_table(result)
        report_figures["Parameter sweep"] = st.session_state["bt_sweep"]
    if st.session_state.get("bt_sweep") is not None:
        chart_with_downloads(st.session_state["bt_sweep"], key="sweep", file_stem="backtest-sweep")
        csv_buttons({"Sweep": st.session_state["bt_sweep_table"]}, key="bt_sweep", file_stem="backtest")


strategy_view()
sweep_view()
