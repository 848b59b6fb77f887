"""Forecast review: past forecasts line up with their outcomes by time, the latest forecast is the last open bar's."""
from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from engine.evaluation.forecast_review import (
    latest_forecast,
    past_forecasts,
    score_board,
)
from engine.evaluation.scores import Predictions
from engine.model.inference import InferenceResult
from storage.panel import Panel

LEVELS = (0.1, 0.5, 0.9)


def _panel(n: int = 40) -> Panel:
    ts = pd.date_range("2024-01-01", periods=n, freq="h", tz="UTC")
    rng = np.random.default_rng(0)
    close = 100 * np.exp(np.cumsum(rng.normal(0, 0.01, size=(n, 2)), axis=0))
    observed = np.ones((n, 2), dtype=bool)
    observed[::5, 1] = False  # the second asset misses some bars
    fields = {name: close for name in ("open", "high", "low", "close")}
    fields["volume"] = np.ones((n, 2))
    return Panel(ts=ts, symbols=("BTC", "SPY"), fields=fields, observed=observed)


def _predictions(panel: Panel, rows: np.ndarray) -> Predictions:
    n = len(rows)
    base = np.arange(n, dtype=float)[None, :, None]  # (1, n, 1): a value that says which row it belongs to
    quantiles = np.stack([base - 1, base, base + 1], axis=-1).repeat(2, axis=0)  # (A, n, H=1, Q)
    return Predictions(rows=rows, horizons=(1,), quantiles=quantiles, quantile_levels=LEVELS,
                       prob_up=np.full((2, n, 1), 0.6), volatility=np.full((2, n, 1), 0.01))


def test_past_forecasts_are_matched_to_the_panel_by_time_with_their_outcomes():
    panel = _panel()
    rows = np.arange(20, 35)
    predictions = _predictions(panel, rows)
    ts_us = panel.ts[rows].as_unit("us").asi8
    past = past_forecasts(panel, predictions, ts_us, "BTC", 1)
    assert list(past.frame.index) == list(panel.ts[rows])
    assert np.array_equal(past.frame["q0.5"].to_numpy(), np.arange(len(rows), dtype=float))
    close = panel.fields["close"][:, 0]
    expected = np.log(close[rows + 1] / close[rows])
    np.testing.assert_allclose(past.frame["realised"].to_numpy(), expected)


def test_forecasts_made_on_bars_the_panel_no_longer_has_are_dropped():
    panel = _panel()
    rows = np.arange(20, 35)
    predictions = _predictions(panel, rows)
    ts_us = panel.ts[rows].as_unit("us").asi8 + 1  # a microsecond off every bar: none is a bar of this panel
    assert past_forecasts(panel, predictions, ts_us, "BTC", 1).frame.empty


def test_coverage_counts_outcomes_inside_the_outer_band():
    panel = _panel()
    rows = np.arange(20, 35)
    past = past_forecasts(panel, _predictions(panel, rows), panel.ts[rows].as_unit("us").asi8, "BTC", 1)
    frame = past.frame.dropna(subset=["realised"])
    inside = ((frame["realised"] >= frame["q0.1"]) & (frame["realised"] <= frame["q0.9"])).mean()
    assert past.coverage() == pytest.approx(inside)


def test_latest_forecast_is_made_at_the_assets_last_open_bar():
    n = 10
    ts = pd.date_range("2024-01-01", periods=n, freq="h", tz="UTC")
    mask = np.ones((2, n), dtype=bool)
    mask[1, -3:] = False  # SPY's market closed for the last three bars
    quantiles = np.zeros((2, n, 2, 3))
    quantiles[1, n - 4] = [[-0.1, 0.0, 0.1], [-0.2, 0.0, 0.2]]
    inference = InferenceResult(
        ts=ts, symbols=("BTC", "SPY"), horizons=(1, 5), quantile_levels=LEVELS, mask=mask, quantiles=quantiles,
        prob_up=np.full((2, n, 2), 0.5), volatility=np.full((2, n, 2), 0.01), embeddings=np.zeros((2, n, 4)),
        lookback=np.zeros((2, n, 3)), attention=np.zeros((n, 2, 2, 2)),
    )
    closes = np.arange(1.0, n + 1)
    latest = latest_forecast(inference, closes, "SPY")
    assert latest.made_at == ts[n - 4] and latest.last_close == closes[n - 4]
    assert latest.table.loc[5, "price_q0.9"] == pytest.approx(closes[n - 4] * np.exp(0.2))


def test_score_board_puts_the_model_first():
    scores = pd.DataFrame.from_records([
        {"model": m, "asset": "SPY", "horizon": 1, "metric": metric, "value": v}
        for m, v in (("zero", 2.0), ("model", 1.0), ("ar1", 1.5)) for metric in ("mse", "pinball")
    ])
    board = score_board(scores, "SPY", 1)
    assert list(board["forecaster"]) == ["model", "zero", "ar1"]
    assert list(board.columns) == ["forecaster", "pinball", "mse"]
