"""Features, targets and training windows: causal, computed on each asset's own bars, normalised on the past only."""
from __future__ import annotations

import json
from dataclasses import replace

import numpy as np
import pandas as pd
import pytest

from engine.features import (
    FEATURE_NAMES,
    FEATURES,
    UNCLIPPED_BOUND_STDS,
    FeatureConfig,
    FeatureScaler,
    build_feature_set,
    compute_raw_features,
    features_table,
)
from engine.targets import compute_targets
from engine.training.dataset import make_windows
from storage.panel import Panel


def make_panel(n_rows: int = 400, seed: int = 0, freq: str = "1D", vol_blocks: int = 0) -> Panel:
    """BTC trading every bar and SPY on weekdays only, aligned the way storage aligns them: closed rows carry the
    last close as a flat bar with zero volume, NaN before the first bar. vol_blocks > 0 alternates calm and
    turbulent spans of that many rows (a planted volatility regime)."""
    rng = np.random.default_rng(seed)
    ts = pd.date_range("2021-01-01", periods=n_rows, freq=freq, tz="UTC")
    observed = np.ones((n_rows, 2), dtype=bool)
    observed[:, 1] = ts.day_of_week < 5
    scale = np.full(n_rows, 0.01)
    if vol_blocks:
        scale = np.where((np.arange(n_rows) // vol_blocks) % 2 == 0, 0.006, 0.03)
    fields = {name: np.full((n_rows, 2), np.nan) for name in ("open", "high", "low", "close")}
    fields["volume"] = np.zeros((n_rows, 2))
    for asset in range(2):
        rows = np.flatnonzero(observed[:, asset])
        close = 100 * np.exp(np.cumsum(rng.normal(0, 1, len(rows)) * scale[rows]))
        open_ = np.concatenate([[100.0], close[:-1]])
        wick = np.exp(np.abs(rng.normal(0, 0.004, (2, len(rows)))))
        bars = {"open": open_, "close": close, "high": np.maximum(open_, close) * wick[0],
                "low": np.minimum(open_, close) / wick[1]}
        for name, values in bars.items():
            fields[name][rows, asset] = values
        fields["volume"][rows, asset] = rng.lognormal(10, 0.5, len(rows))
        # closed rows: a flat bar at the last close
        last_close = pd.Series(fields["close"][:, asset]).ffill().to_numpy()
        for name in ("open", "high", "low", "close"):
            fields[name][:, asset] = np.where(observed[:, asset], fields[name][:, asset], last_close)
    return Panel(ts=ts, symbols=("BTC", "SPY"), fields=fields, observed=observed)


def perturbed_after(panel: Panel, row: int, seed: int = 1, drop_bars: bool = False) -> Panel:
    """The same panel with every bar after `row` replaced by different prices and volumes (and, with drop_bars,
    SPY's later bars removed altogether)."""
    rng = np.random.default_rng(seed)
    fields = {name: values.copy() for name, values in panel.fields.items()}
    shock = np.exp(rng.normal(0, 0.05, (len(panel.ts) - row - 1, 2)))
    for name in ("open", "high", "low", "close"):
        fields[name][row + 1 :] *= shock
    fields["volume"][row + 1 :] *= rng.uniform(0.1, 10, shock.shape)
    observed = panel.observed.copy()
    if drop_bars:
        observed[row + 1 :, 1] = False
    return replace(panel, fields=fields, observed=observed)


# ---- the feature table ----


def test_every_feature_is_documented_and_computed_in_table_order():
    assert features_table()["name"].tolist()[: len(FEATURE_NAMES)] == list(FEATURE_NAMES)  # then the gap ones
    assert all(spec.formula and spec.why for spec in FEATURES)
    raw = compute_raw_features(make_panel(120))
    assert raw.names == FEATURE_NAMES
    assert raw.values.shape == (2, 120, len(FEATURE_NAMES))


# ---- values on the asset's own bars ----


def test_returns_use_own_bars_so_monday_compares_with_friday():
    panel = make_panel(200)
    raw = compute_raw_features(panel)
    spy_rows = np.flatnonzero(panel.observed[:, 1])
    close = panel.fields["close"][spy_rows, 1]
    ret_1, ret_5 = FEATURE_NAMES.index("ret_1"), FEATURE_NAMES.index("ret_5")
    np.testing.assert_allclose(raw.values[1, spy_rows[1:], ret_1], np.log(close[1:] / close[:-1]))
    np.testing.assert_allclose(raw.values[1, spy_rows[5:], ret_5], np.log(close[5:] / close[:-5]))
    monday = spy_rows[np.flatnonzero(panel.ts[spy_rows].day_of_week == 0)[1]]
    friday = spy_rows[np.searchsorted(spy_rows, monday) - 1]
    assert raw.values[1, monday, ret_1] == pytest.approx(np.log(panel.fields["close"][monday, 1] /
                                                                 panel.fields["close"][friday, 1]))


def test_closed_rows_carry_the_last_own_bar_features_and_are_masked():
    panel = make_panel(200)
    raw = compute_raw_features(panel)
    saturday = np.flatnonzero((panel.ts.day_of_week == 5) & (np.arange(200) > 100))[0]
    friday = saturday - 1
    indicators = [FEATURE_NAMES.index(name) for name in ("ret_1", "rsi_14", "macd", "atr_14_rel")]
    np.testing.assert_array_equal(raw.values[1, saturday, indicators], raw.values[1, friday, indicators])
    assert not raw.mask[1, saturday] and raw.mask[1, friday]
    assert raw.mask[0, saturday]  # BTC trades on Saturday
    market_open = FEATURE_NAMES.index("market_open")
    assert raw.values[1, saturday, market_open] == 0 and raw.values[1, friday, market_open] == 1


def test_indicators_on_a_steadily_rising_market():
    """Closes up 1% every bar: RSI pinned at the top, positive MACD, realised vol = the constant return."""
    n = 80
    ts = pd.date_range("2022-01-03", periods=n, freq="1D", tz="UTC")
    close = 100 * 1.01 ** np.arange(n)
    high, low = close * 1.002, close / 1.002
    fields = {"open": close[:, None], "high": high[:, None], "low": low[:, None], "close": close[:, None],
              "volume": np.full((n, 1), 5.0)}
    raw = compute_raw_features(Panel(ts, ("X",), fields, np.ones((n, 1), dtype=bool)))
    last = raw.values[0, -1]
    assert last[FEATURE_NAMES.index("rsi_14")] == pytest.approx(1.0)
    assert last[FEATURE_NAMES.index("macd")] > 0
    assert last[FEATURE_NAMES.index("realised_vol_20")] == pytest.approx(np.log(1.01))
    assert last[FEATURE_NAMES.index("hl_range")] == pytest.approx(2 * np.log(1.002))
    assert last[FEATURE_NAMES.index("log_volume_z")] == 0.0  # constant volume: no surprise, not 0/0
    assert raw.mask[0, -1] and not raw.mask[0, 0]  # warmed up by the end, not on the first bar


def test_calendar_features_follow_the_clock():
    panel = make_panel(48, freq="1h")
    raw = compute_raw_features(panel)
    six_am = np.flatnonzero(panel.ts.hour == 6)[0]
    assert raw.values[0, six_am, FEATURE_NAMES.index("hour_sin")] == pytest.approx(1.0)
    assert raw.values[0, six_am, FEATURE_NAMES.index("hour_cos")] == pytest.approx(0.0, abs=1e-12)


def test_bad_bars_are_reported_with_asset_and_time():
    panel = make_panel(60)
    close = panel.fields["close"].copy()
    close[10, 0] = np.nan
    with pytest.raises(ValueError, match=r"'close'.*BTC.*2021-01-11"):
        compute_raw_features(replace(panel, fields={**panel.fields, "close": close}))


# ---- causality: nothing after t changes anything at or before t ----


@pytest.mark.parametrize("drop_bars", [False, True])
@pytest.mark.parametrize("cut", [150, 184, 260])  # 184 is a Sunday: SPY closed at the cut
def test_bars_after_t_change_no_feature_mask_or_scaler_at_or_before_t(cut, drop_bars):
    panel = make_panel(320)
    other = perturbed_after(panel, cut, drop_bars=drop_bars)
    before = build_feature_set(panel, fit_rows=range(0, cut + 1))
    after = build_feature_set(other, fit_rows=range(0, cut + 1))
    np.testing.assert_array_equal(before.values[:, : cut + 1], after.values[:, : cut + 1])
    np.testing.assert_array_equal(before.mask[:, : cut + 1], after.mask[:, : cut + 1])
    assert before.scaler.to_dict() == after.scaler.to_dict()
    # and the perturbation did reach the later rows, so the comparison above could have failed
    assert not np.array_equal(before.values[:, cut + 1 :], after.values[:, cut + 1 :])


@pytest.mark.parametrize("cut", [150, 184])
def test_targets_at_t_use_only_bars_up_to_t_plus_h(cut):
    panel = make_panel(320)
    targets = compute_targets(panel)
    other = compute_targets(perturbed_after(panel, cut))
    np.testing.assert_array_equal(targets.valid, other.valid)  # which targets exist does not depend on prices
    np.testing.assert_array_equal(targets.end_row, other.end_row)
    untouched = targets.valid & (targets.end_row <= cut)
    changed = targets.valid & (targets.end_row > cut)
    np.testing.assert_array_equal(targets.log_return[untouched], other.log_return[untouched])
    np.testing.assert_array_equal(targets.realised_vol[untouched], other.realised_vol[untouched])
    np.testing.assert_array_equal(targets.direction[untouched], other.direction[untouched])
    assert (targets.log_return[changed] != other.log_return[changed]).mean() > 0.9


# ---- targets ----


def test_targets_count_own_bars_so_friday_h1_is_monday():
    panel = make_panel(200)
    targets = compute_targets(panel, horizons=(1, 5))
    friday = np.flatnonzero(panel.ts.day_of_week == 4)[3]
    monday = friday + 3
    close = panel.fields["close"][:, 1]
    assert targets.end_row[1, friday, 0] == monday
    assert targets.log_return[1, friday, 0] == pytest.approx(np.log(close[monday] / close[friday]))
    assert targets.end_row[1, friday, 1] == friday + 7  # five weekdays later: next Friday
    assert not targets.valid[1, friday + 1].any()  # Saturday: SPY closed, nothing to forecast from
    assert targets.valid[0, friday + 1].all()  # BTC trades


def test_realised_vol_direction_and_the_invalid_tail():
    panel = make_panel(120)
    targets = compute_targets(panel, horizons=(1, 5, 20))
    btc_log_close = np.log(panel.fields["close"][:, 0])
    returns = np.diff(btc_log_close)
    t = 30
    assert targets.realised_vol[0, t, 1] == pytest.approx(np.sqrt(np.sum(returns[t : t + 5] ** 2)))
    assert targets.direction[0, t, 2] == (btc_log_close[t + 20] > btc_log_close[t])
    assert targets.valid[0, -20:, 2].sum() == 0 and targets.valid[0, -21, 2]
    assert targets.valid[0, -5:, 1].sum() == 0 and targets.valid[0, -6, 1]
    assert targets.max_reach() > 20  # an equity's 20 own bars span weekends: more than 20 union rows


def test_until_purges_targets_that_reach_the_end_of_a_span():
    targets = compute_targets(make_panel(200))
    purged = targets.until(150)
    assert not (purged.valid & (targets.end_row >= 150)).any()
    assert (purged.valid == (targets.valid & (targets.end_row < 150))).all()
    assert np.isnan(purged.log_return[~purged.valid]).all()


# ---- normalisation ----


def test_scaler_standardises_the_training_span_and_ignores_later_rows():
    panel = make_panel(400)
    feature_set = build_feature_set(panel, fit_rows=range(0, 250))
    train = feature_set.values[:, :250][feature_set.mask[:, :250]]  # (n, F)
    standardised = [spec.standardise for spec in FEATURES[: len(FEATURE_NAMES)]]
    np.testing.assert_allclose(train[:, standardised].mean(axis=0), 0.0, atol=1e-5)
    # winsorising the 0.5% tails pulls the std a little under 1, never over
    stds = train[:, standardised].std(axis=0)
    assert ((stds > 0.85) & (stds <= 1.0 + 1e-5)).all(), stds
    # flags pass through untouched
    assert set(np.unique(feature_set.values[..., FEATURE_NAMES.index("market_open")])) == {0.0, 1.0}
    assert feature_set.values.dtype == np.float32 and feature_set.values.shape == (2, 400, len(FEATURE_NAMES))
    assert np.isfinite(feature_set.values).all()


def test_robust_clipping_bounds_a_crash_after_training():
    panel = make_panel(300)
    close = panel.fields["close"].copy()
    close[280:, 0] *= 0.2  # an 80% crash, long after the training span
    crashed = build_feature_set(replace(panel, fields={**panel.fields, "close": close}), fit_rows=range(0, 200))
    ret_1 = FEATURE_NAMES.index("ret_1")
    scaler = crashed.scaler
    floor = (scaler.lower[0, ret_1] - scaler.mean[0, ret_1]) / scaler.std[0, ret_1]
    assert crashed.values[0, 280, ret_1] == pytest.approx(floor, rel=1e-5)
    assert floor > -10


def test_scaler_round_trips_through_json_and_reproduces_the_features():
    panel = make_panel(300)
    feature_set = build_feature_set(panel, fit_rows=range(0, 200))
    restored = FeatureScaler.from_dict(json.loads(json.dumps(feature_set.scaler.to_dict())))
    again = build_feature_set(panel, fit_rows=range(0, 1), scaler=restored)  # fit_rows ignored with a scaler
    np.testing.assert_array_equal(again.values, feature_set.values)


def test_scaler_errors_say_what_is_wrong():
    panel = make_panel(300)
    data = build_feature_set(panel, fit_rows=range(0, 200)).scaler.to_dict()
    with pytest.raises(ValueError, match="'std' has shape"):
        FeatureScaler.from_dict({**data, "std": data["std"][:1]})
    with pytest.raises(ValueError, match="missing"):
        FeatureScaler.from_dict({key: value for key, value in data.items() if key != "mean"})
    with pytest.raises(ValueError, match="no warmed-up bars"):
        build_feature_set(panel, fit_rows=range(0, 10))
    wrong_symbols = FeatureScaler.from_dict({**data, "symbols": ["ETH", "QQQ"]})
    with pytest.raises(ValueError, match="fitted for"):
        build_feature_set(panel, fit_rows=range(0, 200), scaler=wrong_symbols)


# ---- training windows ----


def test_windows_slice_features_and_purge_targets_at_the_range_end():
    panel = make_panel(400)
    feature_set = build_feature_set(panel, fit_rows=range(0, 300))
    targets = compute_targets(panel)
    windows = make_windows(feature_set, targets, range(50, 300), window=64, stride=48)
    n = len(windows.rows)
    assert windows.x.shape == (n, 2, 64, len(FEATURE_NAMES)) and windows.mask.shape == (n, 2, 64)
    assert all(value.shape == (n, 2, 64, 3) for value in windows.targets.values())
    rows = windows.rows.numpy()
    assert rows[0, 0] == 50 and rows[-1, -1] == 299  # the last window is flush with the end
    assert set(np.unique(rows)) == set(range(50, 300))  # every row is in some window
    np.testing.assert_array_equal(windows.x[1].numpy(), feature_set.values[:, rows[1]])
    valid = windows.targets["valid"].numpy()
    reach = np.moveaxis(targets.end_row[:, rows], 1, 0)  # (N, A, W, H)
    assert not (valid & (reach >= 300)).any()  # nothing in a training window is scored on later prices
    assert valid.any()
    assert not valid[~windows.mask.numpy()].any()  # no loss where the inputs were carried, not fresh
    assert np.isfinite(windows.targets["log_return"].numpy()).all()  # zeros, not NaN, under the mask


def test_windows_reject_a_range_shorter_than_a_window():
    panel = make_panel(200)
    feature_set = build_feature_set(panel, fit_rows=range(0, 150))
    with pytest.raises(ValueError, match="fewer than one window"):
        make_windows(feature_set, compute_targets(panel), range(100, 150), window=64)


# ---- the demo market end to end (skipped until storage provides it) ----


def test_demo_market_features_are_finite_and_masked_on_equity_weekends(demo_panel):
    feature_set = build_feature_set(demo_panel, fit_rows=range(0, 1000))
    spy = demo_panel.symbols.index("SPY")
    weekend = demo_panel.ts.day_of_week >= 5
    assert not feature_set.mask[spy, weekend].any()
    assert feature_set.mask[spy, ~weekend][100:].all()
    assert np.isfinite(feature_set.values).all()


@pytest.fixture(scope="module")
def demo_panel(tmp_path_factory):
    demo = pytest.importorskip("storage.sources.demo")
    cache = pytest.importorskip("storage.cache")
    panel = pytest.importorskip("storage.panel")
    market = demo.demo_market("1d")
    db_path = tmp_path_factory.mktemp("demo") / "bars.duckdb"
    for symbol, bars in market.bars.items():
        cache.upsert_bars(bars, symbol, "demo", "1d", db_path=db_path)
    return panel.read_panel(list(market.bars), "1d", db_path=db_path)


def test_an_unclipped_feature_keeps_large_moves_and_bounds_only_a_bad_tick():
    """FeatureConfig.unclipped: standardised by the plain training mean and std; a move far beyond the winsorising
    bounds passes through whole (the lead skip path reads ret_1 as a linear regressor), one beyond
    UNCLIPPED_BOUND_STDS stds is held there; the other features stay winsorised; JSON keeps the bounds."""
    panel = make_panel(300)
    close = panel.fields["close"].copy()
    config = FeatureConfig(unclipped=("ret_1",))
    ret_1, vol = FEATURE_NAMES.index("ret_1"), FEATURE_NAMES.index("realised_vol_20")
    scaler = build_feature_set(panel, fit_rows=range(0, 200), config=config).scaler
    std, centre = scaler.std[0, ret_1], scaler.mean[0, ret_1]
    close[250:, 0] *= np.exp(-12 * std)  # a 12-std drop: winsorised features hold it near 3
    close[280:, 0] *= 0.2  # an 80% crash, a bad tick's size: hundreds of stds
    moved = replace(panel, fields={**panel.fields, "close": close})
    features = build_feature_set(moved, fit_rows=range(0, 1), config=config, scaler=scaler)
    winsorised = build_feature_set(moved, fit_rows=range(0, 200))
    drop = (np.log(close[250, 0] / close[249, 0]) - centre) / std
    assert drop < -11
    assert features.values[0, 250, ret_1] == pytest.approx(drop, rel=1e-4)
    assert winsorised.values[0, 250, ret_1] > -6
    assert features.values[0, 280, ret_1] == pytest.approx(-UNCLIPPED_BOUND_STDS, rel=1e-4)
    assert np.isfinite(scaler.upper[:, vol]).all() and scaler.upper[0, vol] < scaler.mean[0, vol] + 10 * scaler.std[0, vol]
    restored = FeatureScaler.from_dict(json.loads(json.dumps(scaler.to_dict())))
    again = build_feature_set(moved, fit_rows=range(0, 1), scaler=restored)
    np.testing.assert_array_equal(again.values, features.values)
    with pytest.raises(ValueError, match="unclipped"):
        FeatureConfig(unclipped=("not_a_feature",))
