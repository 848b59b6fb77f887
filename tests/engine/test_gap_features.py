"""The gap features (issue 15): returns scaled by the time they took, the gap's length, the gap ahead learnt from
the asset's own calendar, and log variance EWMAs; selected per run by FeatureConfig.names."""
from __future__ import annotations

import numpy as np
import pytest

from engine.features import (
    ALL_FEATURE_NAMES,
    FEATURE_NAMES,
    GAP_FEATURE_NAMES,
    FeatureConfig,
    FeatureScaler,
    compute_raw_features,
)
from tests.engine.test_features import make_panel

NAMES = FEATURE_NAMES + GAP_FEATURE_NAMES


def daily():
    panel = make_panel(200, seed=3)  # BTC every day, SPY on weekdays
    return panel, compute_raw_features(panel, FeatureConfig(names=NAMES))


def column(raw, name, asset):
    return raw.values[asset, :, raw.names.index(name)]


def test_old_runs_keep_the_sixteen_features_in_their_order():
    panel = make_panel(120)
    assert FEATURE_NAMES == ALL_FEATURE_NAMES[:16] and len(GAP_FEATURE_NAMES) == 7
    raw = compute_raw_features(panel)
    assert raw.names == FEATURE_NAMES and raw.values.shape[2] == 16
    full = compute_raw_features(panel, FeatureConfig(names=NAMES))
    np.testing.assert_array_equal(full.values[:, :, :16], raw.values)  # the old columns do not move


def test_a_subset_in_any_order_is_the_same_columns():
    panel = make_panel(120)
    full = compute_raw_features(panel, FeatureConfig(names=NAMES))
    picked = ("log_var_hl8", "ret_1", "gap_log")
    raw = compute_raw_features(panel, FeatureConfig(names=picked))
    for j, name in enumerate(picked):
        np.testing.assert_array_equal(raw.values[:, :, j], full.values[:, :, NAMES.index(name)])


def test_gap_log_is_the_closed_time_and_the_return_is_scaled_by_it():
    panel, raw = daily()
    ts = panel.ts
    spy = 1
    monday = np.flatnonzero((ts.day_of_week == 0) & np.asarray(panel.observed)[:, spy])[3]
    tuesday = monday + 1
    assert column(raw, "gap_log", spy)[monday] == pytest.approx(np.log(3.0))  # Friday -> Monday
    assert column(raw, "gap_log", spy)[tuesday] == pytest.approx(0.0)
    assert column(raw, "gap_log", 0)[monday] == pytest.approx(0.0)  # BTC trades every day
    ret = column(raw, "ret_1", spy)
    assert column(raw, "ret_1_gap", spy)[monday] == pytest.approx(ret[monday] / np.sqrt(3.0))
    assert column(raw, "ret_1_gap", spy)[tuesday] == pytest.approx(ret[tuesday])


def test_the_gap_ahead_is_read_from_the_same_weekday_a_week_before():
    panel, raw = daily()
    ts, spy = panel.ts, 1
    fridays = np.flatnonzero((ts.day_of_week == 4) & np.asarray(panel.observed)[:, spy])
    ahead = column(raw, "next_gap_log", spy)
    assert ahead[fridays[0]] == 0.0, "no Friday before the first: assume the usual spacing"
    assert ahead[fridays[1:]] == pytest.approx(np.log(3.0))  # a weekend follows every Friday
    thursdays = np.flatnonzero((ts.day_of_week == 3) & np.asarray(panel.observed)[:, spy])
    assert (ahead[thursdays] == 0.0).all()


def test_the_gap_ahead_uses_no_later_bar():
    panel, raw = daily()
    cut = 120
    shorter = compute_raw_features(panel_rows(panel, cut), FeatureConfig(names=NAMES))
    np.testing.assert_allclose(shorter.values, raw.values[:, :cut], equal_nan=True)


def panel_rows(panel, stop):
    from engine.training.settings import panel_rows as rows

    return rows(panel, range(stop))


def test_variance_ewmas_order_with_their_half_life_after_a_shock():
    _panel, raw = daily()
    btc = 0
    fast, slow = column(raw, "log_var_hl2", btc), column(raw, "log_var_hl128", btc)
    assert np.isfinite(fast[30:]).all() and np.isfinite(slow[30:]).all()
    # the fast one moves more from bar to bar
    assert np.nanstd(np.diff(fast[30:])) > 3 * np.nanstd(np.diff(slow[30:]))


def test_unknown_or_repeated_names_are_refused_with_the_list():
    with pytest.raises(ValueError, match="distinct names"):
        FeatureConfig(names=("ret_1", "nope"))
    with pytest.raises(ValueError, match="distinct names"):
        FeatureConfig(names=("ret_1", "ret_1"))


def test_flags_are_not_standardised_and_the_scaler_follows_the_names():
    panel, raw = daily()
    scaler = FeatureScaler.fit(raw, panel.symbols, range(150))
    for name in ("gap_log", "next_gap_log", "market_open"):
        j = raw.names.index(name)
        assert (scaler.mean[:, j] == 0).all() and (scaler.std[:, j] == 1).all()
    j = raw.names.index("log_var_hl8")
    assert (scaler.std[:, j] != 1).all()
