"""Lags in clock rows, shown as time: the lead-lag map of a :30 equity feed beside a :00 crypto feed has no lags
that are exactly zero by construction (the equity is open at consecutive rows), nothing after a row is in it, and
the charts label every lag with its duration."""
from __future__ import annotations

import dataclasses

import numpy as np
import pandas as pd
import pytest
import torch

from engine.diagnostics.lead_lag import lag_convention, lag_label, lead_lag_map, open_key_share
from engine.features import build_feature_set
from engine.figures.lead_lag import lead_lag_heatmaps
from engine.model.config import ModelConfig
from engine.model.hybrid import HybridModel
from engine.model.inference import run_inference
from engine.runtime import configure_cpu_threads
from engine.training.config import default_model_config
from storage import cache
from storage.panel import PANEL_FIELDS, align_as_of, read_panel
from tests.storage.helpers_bars import make_bars, only_weekdays

MAX_LAG = 4
HOUR = pd.Timedelta("1h")


@pytest.fixture
def half_hour_equity(tmp_path):
    """BTC every hour at :00; SPY binned from 09:30 ET, its bars opening 14:30..20:30 UTC on weekdays."""
    db_path = tmp_path / "bars.duckdb"
    btc = make_bars(24 * 21, start="2024-01-01", seed=1)
    spy = only_weekdays(make_bars(24 * 21, start="2024-01-01 00:30", seed=2, price=470.0))
    spy = spy[spy["ts"].dt.hour.between(14, 20)].reset_index(drop=True)
    cache.upsert_bars(btc, "BTC", "demo", "1h", db_path)
    cache.upsert_bars(spy, "SPY", "demo", "1h", db_path)
    return db_path, {"BTC": btc, "SPY": spy}


def test_lags_are_labelled_with_their_duration():
    assert lag_label(2, HOUR) == "lag 2 (2h)"
    assert [lag_label(k, pd.Timedelta("1D")) for k in (0, 1, 5)] == ["lag 0 (0d)", "lag 1 (1d)", "lag 5 (5d)"]
    assert lag_label(3, pd.Timedelta("30min")) == "lag 3 (1h 30m)" and lag_label(2, None) == "lag 2"
    assert "one 1h period on the UTC grid" in lag_convention(HOUR) and "in which it closes" in lag_convention(HOUR)


def test_the_heatmap_shows_lags_as_time():
    weights = np.full((2, 2, MAX_LAG + 1), 1.0 / (2 * (MAX_LAG + 1)))
    fig = lead_lag_heatmaps(weights, ("BTC", "SPY"), step=HOUR, synthetic=False)
    assert list(fig.layout.xaxis.ticktext) == [f"lag {k} ({k}h)" for k in range(MAX_LAG + 1)]
    assert fig.layout.xaxis.title.text == "lag (clock rows before the forecast origin)"
    assert list(fig.data[0].customdata[0]) == [f"lag {k} ({k}h)" for k in range(MAX_LAG + 1)]
    bare = lead_lag_heatmaps(weights, ("BTC", "SPY"), synthetic=False)
    assert list(bare.layout.xaxis.ticktext) == [f"lag {k}" for k in range(MAX_LAG + 1)]


def test_a_half_hour_equity_is_open_at_every_lag_of_the_crypto_s_map(half_hour_equity):
    db_path, bars = half_hour_equity
    panel = read_panel(["BTC", "SPY"], "1h", db_path=db_path)
    share = open_key_share(np.asarray(panel.observed).T, MAX_LAG)  # (target, source, lag)
    assert (share[0, 1] > 0).all() and (share[1, 1] > 0).all()  # BTC on SPY, and SPY on itself, at every lag
    assert share[1, 1, 1] == pytest.approx(6 / 7)  # SPY's previous row is its own bar but at the session's open

    # The same bars on the clock of their opens (what a union of bar opens gave): BTC and SPY never share a row,
    # so BTC's lag 0 on SPY is exactly zero whatever the model learns, and in the session SPY's keys are open only
    # at every other lag (the lag axis mixes 30-minute and 1-hour steps).
    frames = [bars["BTC"], bars["SPY"]]
    asset = np.concatenate([np.full(len(f), a) for a, f in enumerate(frames)])
    ts_us = np.concatenate([f["ts"].dt.as_unit("us").astype("int64").to_numpy() for f in frames])
    values = {name: np.concatenate([f[name].to_numpy() for f in frames]) for name in PANEL_FIELDS}
    _, _, on_opens = align_as_of(asset, ts_us, values, 2, None, interval_us=30 * 60 * 1_000_000)
    alternating = open_key_share(on_opens.T, MAX_LAG)
    assert alternating[0, 1, 0] == 0 and (alternating[0, 1, 0::2] < alternating[0, 1, 1::2].min() / 3).all()


def tiny_model(n_features: int) -> HybridModel:
    config: ModelConfig = dataclasses.replace(default_model_config(), n_assets=2, n_features=n_features, d_model=8,
                                              d_state=4, n_heads=2, max_lag=MAX_LAG)
    torch.manual_seed(0)
    return HybridModel(config).eval()


def test_the_model_s_map_has_no_structural_zeros_and_nothing_after_a_row_reaches_it(half_hour_equity):
    configure_cpu_threads(1)
    db_path, _ = half_hour_equity
    panel = read_panel(["BTC", "SPY"], "1h", db_path=db_path)
    features = build_feature_set(panel, range(0, len(panel.ts)))
    model = tiny_model(features.values.shape[2])
    result = run_inference(model, features)
    weights = lead_lag_map(result.attention, result.mask)
    assert (weights[0, 1] > 0).all(), weights[0, 1]  # BTC attends to SPY at every lag: no exact zeros

    # Row t holds nothing from after it: the panel read up to a cut gives the same attention before the cut.
    cut = pd.Timestamp("2024-01-15 16:00", tz="UTC")  # SPY's 15:30 bar opens before the cut and closes after it
    early = read_panel(["BTC", "SPY"], "1h", end=cut, db_path=db_path)
    early_features = build_feature_set(early, range(0, len(early.ts)), scaler=features.scaler)
    early_result = run_inference(model, early_features)
    n = len(early.ts)
    np.testing.assert_array_equal(early_features.values, features.values[:, :n])
    np.testing.assert_allclose(early_result.attention, result.attention[:n], rtol=0, atol=1e-6)
