"""Forecasts page: the latest multi-horizon fan per asset with the verdict on each forecast, the walk-forward
forecasts against what happened, calibration of P(up), the per-asset per-horizon verdict in words (one-sided against
the best baseline, corrected) and the score table against the baselines. Layout only: verdicts come from
engine.diagnostics.findings (views.model_results.model_findings), numbers from engine.evaluation.forecast_review,
charts from engine.figures.forecasts."""
from __future__ import annotations

import pandas as pd
import streamlit as st

from engine.evaluation.forecast_review import (
    latest_forecast,
    past_forecasts,
    score_board,
    score_column_specs,
)
from engine.evaluation.predictions import load_predictions
from engine.figures import forecasts as charts
from storage.config import INTERVAL_SECONDS
from views.csv_downloads import csv_buttons
from views.export_widgets import chart_with_downloads, report_buttons
from views.frame import current_selection
from views.model_results import asset_closes, model_findings, model_view
from views.url_state import url_widget

# The score table in three narrow parts (what each loss measures is in its column's tooltip).
SCORE_GROUPS = {"Quantiles and mean": ("n", "pinball", "coverage_10_90", "quantile_spread", "mse"),
                "Direction and volatility": ("hit_rate", "brier", "log_loss", "ece", "qlike")}
SHORT_TITLES = {"forecaster": "forecaster", "n": "forecasts", "pinball": "pinball", "coverage_10_90": "band cover",
                "quantile_spread": "band width", "mse": "MSE", "hit_rate": "hit rate", "brier": "Brier",
                "log_loss": "log loss", "ece": "calib. error", "qlike": "QLIKE"}


def _score_column(column: str, spec: tuple[str, str, str | None]):
    title, text, fmt = spec
    short = SHORT_TITLES.get(column, title)
    help_text = f"{title}: {text}" if text else title
    if fmt is None:
        return st.column_config.TextColumn(short, help=help_text)
    return st.column_config.NumberColumn(short, help=help_text, format=fmt)


def _without_name(text, name: str):
    return text.replace(f" than {name},", ",") if isinstance(text, str) else text


selection = current_selection()
st.title("Forecasts")
view = model_view(selection)
run_path = selection.checkpoint["path"]
findings = model_findings(view, selection, ("forecast_skill",))


@st.cache_data(show_spinner=False, max_entries=4)
def walk_forward_record(path: str, run_id: str):
    del run_id  # keys the cache: a retrained run in the same folder is a new record
    predictions, folds, ts_us = load_predictions(path)
    return predictions, folds, ts_us


predictions, _, ts_us = walk_forward_record(run_path, view.run_id)
horizons = list(predictions.horizons)
horizon = url_widget(st.segmented_control, "Horizon (bars)", key="fc_horizon", default=horizons[0],
                     options=horizons) or horizons[0]
bar = pd.Timedelta(seconds=INTERVAL_SECONDS[selection.interval])

st.subheader("Latest forecast")
st.caption("Made by the final model at each asset's last cached bar; the band is the outer quantile range of the "
           "price at each horizon ahead.")
columns = st.columns(len(selection.symbols))
for column, symbol in zip(columns, selection.symbols):
    with column:
        latest = latest_forecast(view.bundle.inference, asset_closes(view, symbol), symbol)
        row = latest.table.loc[horizon]
        st.metric(f"{symbol} P(up), {horizon} bars", f"{row['prob_up']:.0%}",
                  f"median {row[f'q{predictions.quantile_levels[len(predictions.quantile_levels) // 2]:g}']:+.2%}",
                  delta_color="off", delta_arrow="off",
                  help="Probability that the log return over the next bars is positive, and the "
                                          "median forecast log return.")
        recent = pd.Series(asset_closes(view, symbol), index=view.ts).loc[:latest.made_at].iloc[-60:]
        chart_with_downloads(charts.latest_fan_chart(latest, recent, bar, synthetic=selection.synthetic),
                             key=f"fc_latest_{symbol}", file_stem=f"forecast-latest-{symbol}")
        st.caption(f"Out of sample, {horizon} bar{'s' if horizon > 1 else ''}: P(up) {findings.skill_phrase(symbol, horizon, 'brier')}; "
                   f"median and band {findings.skill_phrase(symbol, horizon, 'pinball')}; mean "
                   f"{findings.skill_phrase(symbol, horizon, 'mse')}; volatility "
                   f"{findings.skill_phrase(symbol, horizon, 'qlike')}.")

st.subheader("Walk-forward forecasts against what happened")
st.caption("Every point was forecast by a model trained only on bars before its test span (out of sample). The "
           "band should hold the outcome about as often as its nominal coverage says.")
# One asset's walk-forward fan at a time (the coverage line of each is below it, the calibration chart has them all):
# with seven charts the first visit took 2.18 s (budget 2 s; chromium, two cores, app_speed), with five 1.36-1.39.
fan_symbol = url_widget(st.segmented_control, "Asset", key="fc_past_asset", default=selection.symbols[0],
                        options=list(selection.symbols),
                        help="The asset whose walk-forward forecasts are drawn against what happened.") \
    or selection.symbols[0]
calibration = {}
past_tables = {}
for symbol in selection.symbols:
    past = past_forecasts(view.loaded.panel, predictions, ts_us, symbol, horizon)
    if selection.start is not None:
        past = type(past)(past.symbol, past.horizon, past.frame.loc[selection.start:selection.end],
                          past.quantile_levels)
    if past.frame.empty:
        st.info(f"No walk-forward forecasts of {symbol} fall in the selected dates: widen the date range.")
        continue
    calibration[symbol] = past.calibration()
    past_tables[f"Walk-forward forecasts {symbol}"] = past.frame.reset_index()
    if symbol == fan_symbol:
        chart_with_downloads(charts.past_fan_chart(past, synthetic=selection.synthetic), key=f"fc_past_{symbol}",
                             file_stem=f"forecast-walk-forward-{symbol}")
    st.caption(f"{symbol}: {len(past.frame.dropna(subset=['realised'])):,} scored forecasts; band coverage "
               f"{past.coverage():.0%} (nominal {predictions.quantile_levels[-1] - predictions.quantile_levels[0]:.0%}); "
               f"calibration error of P(up) {past.calibration_error():.3f}")
if calibration:
    chart_with_downloads(charts.calibration_chart(calibration, horizon, synthetic=selection.synthetic),
                         key="fc_calibration", file_stem="forecast-calibration")
    past_tables["Calibration"] = pd.concat({s: t for s, t in calibration.items()}, names=["asset"]).reset_index(0)
if past_tables:
    csv_buttons(past_tables, key="fc_past", file_stem=f"forecasts-h{horizon}")

st.subheader("Does the model beat the baselines?")
scores = findings.scores
verdicts = findings.skill_lines(horizon)
report_tables = {}
if scores is None:
    st.info(f"No verdict on the forecasts' skill: {findings.skill_note}.")
else:
    for line in verdicts:
        st.markdown(f"- {line}")
    verdict_table = findings.skill_table(horizon)
    st.table(verdict_table.astype(object).where(verdict_table.notna(), "–").style.format(
        {"p (one-sided, corrected)": lambda p: p if isinstance(p, str) else f"{p:.3g}"}))
    st.caption("Per asset, horizon and loss: the model against the best baseline on that loss (lowest loss on the "
               "same walk-forward test bars), one-sided Diebold-Mariano (HAC), Holm-corrected over every cell of the "
               "table (all horizons, both directions). 'edge': the model's loss is lower beyond chance; 'worse': the "
               "baseline's is; 'no edge' otherwise. Pinball is compared only with baselines whose quantiles have a "
               f"spread. Scores: {findings.skill_note}.")
    st.subheader("Scores against the baselines")
    asset = url_widget(st.selectbox, "Asset", key="fc_score_asset", default=selection.symbols[0],
                       options=list(selection.symbols))
    report_tables = {"Verdicts against the best baseline": verdict_table,
                     **{f"Scores of {symbol}, {horizon}-bar horizon": score_board(scores, symbol, horizon)
                        for symbol in selection.symbols}}
    board = report_tables[f"Scores of {asset}, {horizon}-bar horizon"]
    specs = score_column_specs(board)
    # One table of fifteen columns scrolled sideways at 1280 px (2,170 px of content): three narrower ones, each
    # column titled short with the full name in its tooltip, and the comparisons in words in a table that wraps.
    for group, columns in SCORE_GROUPS.items():
        shown = ["forecaster", *(c for c in columns if c in board.columns)]
        if len(shown) == 1:
            continue
        st.markdown(f"**{group}**")
        st.dataframe(board[shown], hide_index=True, width="stretch", height="content", placeholder="–",
                     key=f"fc_score_table_{group.split()[0].lower()}",
                     column_config={column: _score_column(column, specs[column]) for column in shown})
    compared = [c for c in board.columns if c.startswith("model vs this: ")]
    if compared:
        st.markdown("**The model against each row** (one-sided Diebold-Mariano, Holm-corrected over this table)")
        words = board[["forecaster", *compared]].iloc[1:].copy()  # the model's own row compares nothing
        for column in compared:  # "worse than zero, p = 1.000" in the row of zero: "worse, p = 1.000"
            words[column] = [_without_name(text, name) for text, name in zip(words[column], words["forecaster"])]
        words.columns = ["forecaster", *(SHORT_TITLES.get(c.removeprefix("model vs this: "), c) for c in compared)]
        st.table(words.astype(object).where(words.notna(), "–").style.hide(axis="index"))
    csv_buttons({"Verdicts": verdict_table, **{f"Scores {symbol}": report_tables[f"Scores of {symbol}, {horizon}-bar "
                                                                                  "horizon"]
                                               for symbol in selection.symbols}},
                key="fc_scores", file_stem=f"forecasts-h{horizon}")
    st.caption("Same walk-forward test spans for every forecaster; lower is better for every loss (hover a column's "
               "title for what it measures). The last table tests the model against each row alone, one-sided in the "
               "direction observed, Holm-corrected over its comparisons; an empty cell: that forecaster makes no such "
               "forecast.")

report_buttons("Forecasts", selection, tables=report_tables, settings={"horizon (bars)": horizon},
               verdicts=verdicts, key="fc_report")
