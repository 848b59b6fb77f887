"""What the Forecasts and Overview views show, in numbers: the model's forecasts beside what happened.

Past forecasts come from the run's walk-forward record (predictions.npz: each fold's model on its own test span), so
every one shown against its outcome is out of sample. The latest forecast, for the bar after the last cached one, is
the final model's (engine.model.inference over the whole cached history). Scores against the baselines are the table
the findings' skill verdicts came from (engine.diagnostics.findings: the run's scores.json when the current scorer
wrote it, else the run scored now), laid out per asset and horizon by score_board.
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from engine.evaluation.scores import (
    Predictions,
    calibration_table,
    expected_calibration_error,
)
from engine.model.inference import InferenceResult
from engine.targets import compute_targets
from storage.panel import Panel


@dataclass(frozen=True)
class PastForecasts:
    """One asset's out-of-sample forecasts at one horizon beside the realised h-bar log return, keyed by origin ts."""

    symbol: str
    horizon: int
    frame: pd.DataFrame  # index ts (UTC); q<level> columns, prob_up, volatility, realised (NaN until known)
    quantile_levels: tuple[float, ...]

    def calibration(self, n_bins: int = 10) -> pd.DataFrame:
        known = self.frame.dropna(subset=["realised", "prob_up"])
        return calibration_table(known["realised"].to_numpy() > 0, known["prob_up"].to_numpy(), n_bins)

    def calibration_error(self, n_bins: int = 10) -> float:
        known = self.frame.dropna(subset=["realised", "prob_up"])
        if known.empty:
            return float("nan")
        return expected_calibration_error(known["realised"].to_numpy() > 0, known["prob_up"].to_numpy(), n_bins)

    def coverage(self) -> float:
        """Share of realised returns inside the outermost quantile band (e.g. 10-90 %)."""
        lo, hi = f"q{self.quantile_levels[0]:g}", f"q{self.quantile_levels[-1]:g}"
        known = self.frame.dropna(subset=["realised", lo, hi])
        if known.empty:
            return float("nan")
        return float(((known["realised"] >= known[lo]) & (known["realised"] <= known[hi])).mean())


def past_forecasts(panel: Panel, predictions: Predictions, ts_us: np.ndarray, symbol: str,
                   horizon: int) -> PastForecasts:
    """The run's walk-forward forecasts for `symbol` at `horizon`, matched to `panel` by time, with outcomes."""
    if symbol not in panel.symbols:
        raise ValueError(f"{symbol} is not in the panel ({', '.join(panel.symbols)})")
    if horizon not in predictions.horizons or predictions.quantiles is None:
        raise ValueError(f"the run has no quantile forecasts at horizon {horizon} (it has {predictions.horizons})")
    asset, j = list(panel.symbols).index(symbol), predictions.horizons.index(horizon)
    panel_us = np.asarray(panel.ts.as_unit("us").asi8)
    where = np.searchsorted(panel_us, ts_us)
    found = (where < len(panel_us)) & (panel_us[np.minimum(where, len(panel_us) - 1)] == ts_us)
    rows = where[found]
    realised = compute_targets(panel, (horizon,)).log_return[asset, :, 0]  # (T,), NaN where not yet known
    columns = {f"q{level:g}": predictions.quantiles[asset, found, j, k]
               for k, level in enumerate(predictions.quantile_levels)}
    if predictions.prob_up is not None:
        columns["prob_up"] = predictions.prob_up[asset, found, j]
    if predictions.volatility is not None:
        columns["volatility"] = predictions.volatility[asset, found, j]
    columns["realised"] = realised[rows]
    frame = pd.DataFrame(columns, index=pd.DatetimeIndex(panel.ts[rows], name="ts"))
    frame = frame[np.isfinite(frame[f"q{predictions.quantile_levels[0]:g}"])]  # closed-market rows carry no forecast
    return PastForecasts(symbol, horizon, frame, tuple(predictions.quantile_levels))


@dataclass(frozen=True)
class LatestForecast:
    """The final model's forecast made at the asset's last open bar, for every horizon."""

    symbol: str
    made_at: pd.Timestamp  # the bar the forecast is made at (its close is the last known price)
    last_close: float
    table: pd.DataFrame  # index horizon; q<level> (log return), prob_up, volatility, price_q<level>


def latest_forecast(inference: InferenceResult, closes: np.ndarray, symbol: str) -> LatestForecast:
    """closes: (T,) the asset's close on the inference clock."""
    asset = inference.symbols.index(symbol)
    open_rows = np.flatnonzero(inference.mask[asset])
    if len(open_rows) == 0:
        raise ValueError(f"the model has no open bar of {symbol} to forecast from")
    t = int(open_rows[-1])
    last_close = float(closes[t])
    table = pd.DataFrame(index=pd.Index(inference.horizons, name="horizon"))
    for k, level in enumerate(inference.quantile_levels):
        table[f"q{level:g}"] = inference.quantiles[asset, t, :, k]
        table[f"price_q{level:g}"] = last_close * np.exp(inference.quantiles[asset, t, :, k])
    table["prob_up"] = inference.prob_up[asset, t]
    table["volatility"] = inference.volatility[asset, t]
    return LatestForecast(symbol, inference.ts[t], last_close, table)


def read_scores(run_dir: str | Path) -> pd.DataFrame | None:
    """The long score table (model, asset, horizon, metric, value) evaluate wrote, or None if it never ran."""
    from engine.evaluation.run_scores import (
        SCORES_JSON,  # evaluate pulls in every baseline: only when scores are read
    )

    path = Path(run_dir) / SCORES_JSON
    if not path.exists():
        return None
    payload = json.loads(path.read_text())
    return pd.DataFrame.from_records(payload["rows"])


SCORE_COLUMNS = ("n", "pinball", "coverage_10_90", "quantile_spread", "mse", "hit_rate", "brier", "log_loss", "ece",
                 "qlike")


# What each score column means, for the page's column titles and tooltips (lower is better unless said).
SCORE_LABELS: dict[str, tuple[str, str]] = {
    "forecaster": ("forecaster", "The model, or a baseline scored on the same walk-forward test bars."),
    "n": ("forecasts", "Number of scored out-of-sample forecasts."),
    "pinball": ("pinball loss", "Mean pinball (quantile) loss over the quantile levels, in log return; lower is better."),
    "coverage_10_90": ("10-90% band coverage", "Share of outcomes inside the 10%-90% quantile band; 80% is calibrated."),
    "quantile_spread": ("band width", "Mean width of the 10%-90% quantile band, in log return."),
    "mse": ("MSE of the mean", "Mean squared error of the forecast mean log return; lower is better."),
    "hit_rate": ("hit rate", "Share of forecasts whose sign matched the outcome's; higher is better."),
    "brier": ("Brier score of P(up)", "Mean squared error of P(up) against up/down (0.25 = a coin); lower is better."),
    "log_loss": ("log loss of P(up)",
                 "Mean negative log-likelihood of the outcome under P(up) (0.693 = a coin); lower is better."),
    "ece": ("calibration error of P(up)", "Expected calibration error over 10 equal-width bins; lower is better."),
    "qlike": ("QLIKE of volatility",
              "Quasi-likelihood loss of the forecast variance against the squared outcome; lower is better."),
}
SMALL_SCORE = 1e-2  # a column whose typical size is below this is shown in scientific notation


def score_column_specs(board: pd.DataFrame) -> dict[str, tuple[str, str, str | None]]:
    """Column -> (title, tooltip, number format or None for text) for a score_board: counts as integers, columns
    of small numbers (MSE of log returns is ~1e-4) in scientific notation, others with 4 decimals."""
    specs = {}
    for column in board.columns:
        if column in SCORE_LABELS:
            title, text = SCORE_LABELS[column]
        elif column.startswith("model vs this: "):
            metric = column.removeprefix("model vs this: ")
            title = f"model vs this row: {SCORE_LABELS.get(metric, (metric, ''))[0]}"
            text = (f"The model against this forecaster on {SCORE_LABELS.get(metric, (metric, ''))[0]}: one-sided "
                    "Diebold-Mariano (HAC) in the direction observed, Holm-corrected over this table.")
        else:
            title, text = column, ""
        if not pd.api.types.is_numeric_dtype(board[column]):
            specs[column] = (title, text, None)
            continue
        values = board[column].to_numpy(float)
        typical = np.nanmedian(np.abs(values[values != 0])) if np.any(np.isfinite(values) & (values != 0)) else 1.0
        fmt = "%d" if column == "n" else ("%.3e" if typical < SMALL_SCORE else "%.4f")
        specs[column] = (title, text, fmt)
    return specs


def comparison_column(metric: str) -> str:
    return f"model vs this: {metric}"


def score_board(scores: pd.DataFrame, symbol: str, horizon: int, method: str = "holm") -> pd.DataFrame:
    """One row per forecaster (the model first) for one asset and horizon: its losses, and for each baseline the
    model against it on mse, brier, qlike and pinball in words, one-sided in the observed direction ("better than
    ar1, p = 0.012" / "worse than garch_t, p < 0.001"), corrected (Holm by default) over every comparison in the
    board, both directions counted. Pinball against a baseline whose quantiles have no spread is no test: "no
    spread". Never a two-sided p: it says the losses differ, not who is better."""
    from engine.evaluation.skill import VERDICT_METRICS, adjusted_p_values, format_p, pairwise_comparisons

    rows = scores[(scores["asset"] == symbol) & (scores["horizon"] == horizon)]
    wide = rows.pivot_table(index="model", columns="metric", values="value", sort=False)
    order = ["model"] + [m for m in wide.index if m != "model"]
    columns = [c for c in SCORE_COLUMNS if c in wide.columns]
    board = wide.reindex(order)[columns].rename_axis("forecaster").reset_index()
    pairs = pairwise_comparisons(rows) if "model" in wide.index else pd.DataFrame()
    if pairs.empty:
        return board
    tested = pairs["eligible"].to_numpy(bool)
    raw = np.concatenate([pairs["p_better"].to_numpy(float), pairs["p_worse"].to_numpy(float)])
    usable = np.concatenate([tested, tested]) & np.isfinite(raw)
    corrected = np.full(len(raw), np.nan)
    if usable.any():
        corrected[usable] = adjusted_p_values(raw[usable], method)
    pairs = pairs.assign(p_better=corrected[: len(pairs)], p_worse=corrected[len(pairs):])
    for metric in VERDICT_METRICS:
        cells = pairs[pairs["metric"] == metric]
        if cells.empty:
            continue
        words = {}
        for cell in cells.itertuples():
            if not cell.eligible:
                words[cell.baseline] = "no spread: not compared"
            elif cell.direction == "tie":
                words[cell.baseline] = f"no different from {cell.baseline}"
            else:
                p = cell.p_better if cell.direction == "better" else cell.p_worse
                words[cell.baseline] = f"{cell.direction} than {cell.baseline}, {format_p(p)}"
        board[comparison_column(metric)] = [words.get(name, "") for name in board["forecaster"]]
    return board
