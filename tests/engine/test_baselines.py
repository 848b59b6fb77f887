"""Baselines: fitted on the training span only, forecasting each test row from the past only, and finding what was
planted when there is something to find."""
from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from engine.evaluation.baselines import (
    AR1,
    BASELINES,
    HAR,
    BaselineInput,
    Garch11,
    GarchT,
    HistoricalQuantiles,
    MarkovRegime,
    SeasonalGarchT,
    SeasonalHAR,
    SeasonalProfile,
    ZeroReturn,
    fit_predict_baselines,
    walk_forward_baselines,
)
from engine.evaluation.scores import diebold_mariano, qlike_losses, score_table
from engine.targets import compute_targets
from engine.training.splits import walk_forward
from storage.panel import Panel

# demo_panel is a fixture: imported so both files share one way of loading the demo market through storage
from tests.engine.test_features import demo_panel, make_panel, perturbed_after  # noqa: F401

TRAIN, TEST = range(0, 450), range(500, 700)


def inputs(panel) -> BaselineInput:
    return BaselineInput.from_panel(panel, compute_targets(panel))


def panel_from_returns(returns: np.ndarray, freq: str = "1D") -> Panel:
    """A 24/7 panel whose closes follow the given per-bar log returns (T, A)."""
    n_rows, n_assets = returns.shape
    close = 100 * np.exp(np.cumsum(returns, axis=0))
    open_ = np.vstack([np.full((1, n_assets), 100.0), close[:-1]])
    fields = {"open": open_, "high": np.maximum(open_, close) * 1.001, "low": np.minimum(open_, close) / 1.001,
              "close": close, "volume": np.ones((n_rows, n_assets))}
    ts = pd.date_range("2020-01-01", periods=n_rows, freq=freq, tz="UTC")
    return Panel(ts, tuple(f"A{i}" for i in range(n_assets)), fields, np.ones((n_rows, n_assets), dtype=bool))


@pytest.fixture(scope="module")
def panel():
    return make_panel(700, seed=5, vol_blocks=100)


@pytest.fixture(scope="module")
def data(panel):
    return inputs(panel)


@pytest.fixture(scope="module")
def predictions(data):
    return fit_predict_baselines(data, TRAIN, TEST)


# ---- shape and sanity of every baseline ----


@pytest.mark.parametrize("name", sorted(BASELINES))
def test_each_baseline_forecasts_every_open_row_and_leaves_closed_rows_empty(name, predictions, panel):
    pred = predictions[name]
    outputs = {key: getattr(pred, key) for key in ("point", "quantiles", "prob_up", "volatility")
               if getattr(pred, key) is not None}
    assert outputs, f"{name} forecasts nothing"
    spy_open = panel.observed[TEST.start : TEST.stop, 1]
    for key, values in outputs.items():
        assert values.shape[:3] == (2, len(TEST), 3), key
        assert np.isfinite(values[0]).all(), f"{name}.{key}: BTC trades every bar"
        assert np.isfinite(values[1, spy_open]).all() and np.isnan(values[1, ~spy_open]).all(), key
    if pred.quantiles is not None:
        assert (np.diff(pred.quantiles[0], axis=-1) >= 0).all()  # quantiles never cross
    if pred.prob_up is not None:
        assert ((pred.prob_up[0] >= 0) & (pred.prob_up[0] <= 1)).all()
    if pred.volatility is not None:
        assert (pred.volatility[0] > 0).all()


# ---- leakage ----


@pytest.mark.parametrize("name", sorted(BASELINES))
def test_a_forecast_at_t_ignores_every_bar_after_t(name, panel, data):
    cut = 600
    fitted = BASELINES[name]().fit(data, TRAIN)
    before = fitted.predict(data, TEST)
    after = fitted.predict(inputs(perturbed_after(panel, cut)), TEST)
    upto = cut - TEST.start + 1
    for key in ("point", "quantiles", "prob_up", "volatility"):
        if getattr(before, key) is not None:
            np.testing.assert_array_equal(getattr(before, key)[:, :upto], getattr(after, key)[:, :upto], err_msg=key)
    if name not in ("zero", "historical_mean"):  # the others do react to new bars, so the check above has teeth
        changed = [not np.array_equal(getattr(before, key)[:, upto:], getattr(after, key)[:, upto:], equal_nan=True)
                   for key in ("point", "quantiles", "prob_up", "volatility") if getattr(before, key) is not None]
        assert any(changed)


@pytest.mark.parametrize("name", sorted(BASELINES))
def test_fitting_ignores_every_bar_after_the_training_span(name, panel, data):
    """Targets of the last training rows reach past the span; they must be purged, not fitted on."""
    on_original = BASELINES[name]().fit(data, TRAIN).predict(data, TEST)
    on_changed_future = BASELINES[name]().fit(inputs(perturbed_after(panel, TRAIN.stop - 1)), TRAIN).predict(data, TEST)
    for key in ("point", "quantiles", "prob_up", "volatility"):
        if getattr(on_original, key) is not None:
            np.testing.assert_array_equal(getattr(on_original, key), getattr(on_changed_future, key), err_msg=key)


# ---- they find what was planted ----


def test_ar1_recovers_a_planted_coefficient_and_forecasts_with_it():
    rng = np.random.default_rng(6)
    returns = np.zeros((1500, 1))
    shocks = rng.normal(0, 0.01, 1500)
    for t in range(1, 1500):
        returns[t] = 0.0005 + 0.5 * returns[t - 1] + shocks[t]
    data = inputs(panel_from_returns(returns))
    model = AR1().fit(data, range(0, 1200))
    (const, phi), _ = model.fitted[0]
    assert phi == pytest.approx(0.5, abs=0.06)
    pred = model.predict(data, range(1300, 1500))
    np.testing.assert_allclose(pred.point[0, :, 0], const + phi * data.returns[0, 1300:1500])


def test_volatility_baselines_see_the_turbulent_spans(predictions):
    """make_panel(vol_blocks=100): rows 500-599 are turbulent (3%), 600-699 calm (0.6%)."""
    # test positions, leaving each block's first 30 bars to adapt (HAR's longest window is 22 bars)
    turbulent, calm = slice(30, 100), slice(130, 200)
    for name in ("garch11", "garch_t", "seasonal_garch_t", "har", "seasonal_har", "markov_regime"):
        vol = predictions[name].volatility[0, :, 0]
        assert vol[turbulent].mean() > 2.5 * vol[calm].mean(), name


def test_regime_baseline_labels_calm_and_turbulent_from_filtered_probabilities(predictions):
    turbulent_prob = predictions["markov_regime"].extras["regime_prob"][0, :, 1]  # (n,), regimes sorted calm first
    truly_turbulent = np.arange(TEST.start, TEST.stop) < 600
    assert np.mean((turbulent_prob > 0.5) == truly_turbulent) > 0.9


def test_zero_baseline_intervals_cover_about_80_percent_when_nothing_changes():
    """iid returns: the training quantiles are the test quantiles. With 3000 rows each side the coverage's standard
    error is about 0.01, so 0.04 is a 4-sigma band."""
    returns = np.random.default_rng(7).normal(0, 0.01, (6100, 1))
    data = inputs(panel_from_returns(returns))
    pred = ZeroReturn().fit(data, range(0, 3000)).predict(data, range(3100, 6100))
    table = score_table({"zero": pred}, data.targets, reference=None).set_index(["horizon", "metric"])["value"]
    assert table[(1, "coverage_10_90")] == pytest.approx(0.8, abs=0.04)


def test_historical_quantiles_are_the_past_windows_empirical_quantiles():
    returns = np.random.default_rng(9).standard_t(4, (900, 1)) * 0.01
    data = inputs(panel_from_returns(returns))
    pred = HistoricalQuantiles().fit(data, range(0, 600)).predict(data, range(650, 900))
    levels, window = np.array(pred.quantile_levels), HistoricalQuantiles().config.historical_window
    own = data.returns[0]  # row 0 has no return: the first own bar
    for origin in (650, 777, 899):
        for j, h in enumerate(pred.horizons):
            h_bar = np.array([own[k - h + 1 : k + 1].sum() for k in range(max(h, 1), origin + 1)])  # ended by t
            np.testing.assert_allclose(pred.quantiles[0, origin - 650, j], np.quantile(h_bar[-window:], levels))


def test_garch_t_finds_fat_tails_and_its_intervals_cover_what_they_claim():
    """GARCH(1,1) with t(5) shocks: the fitted degrees of freedom are small and the 10-90% band covers about 80% at
    1 and 5 bars (5-bar sums are nearer normal: h_bar_degrees_of_freedom). 2000 test bars: se of a coverage ~0.01
    (more at h = 5, where targets overlap)."""
    rng = np.random.default_rng(10)
    n, omega, alpha, beta = 5000, 2e-6, 0.08, 0.9
    shocks = rng.standard_t(5, n) * np.sqrt(3 / 5)
    var, returns = omega / (1 - alpha - beta), np.zeros(n)
    for t in range(n):
        returns[t] = np.sqrt(var) * shocks[t]
        var = omega + alpha * returns[t] ** 2 + beta * var
    data = inputs(panel_from_returns(returns[:, None]))
    model = GarchT().fit(data, range(0, 3000))
    assert 3 < model.fitted[0].params[-1] < 9  # nu
    pred = model.predict(data, range(3000, 5000))
    table = score_table({"garch_t": pred}, data.targets, reference=None).set_index(["horizon", "metric"])["value"]
    assert table[(1, "coverage_10_90")] == pytest.approx(0.8, abs=0.03)
    assert table[(5, "coverage_10_90")] == pytest.approx(0.8, abs=0.05)


def hourly_seasonal_returns(n_rows: int, seed: int) -> np.ndarray:
    """24/7 hourly returns whose volatility has an hour-of-day profile (quiet nights, a busy afternoon, 5x apart)
    on top of GARCH-like clustering."""
    rng = np.random.default_rng(seed)
    hours = pd.date_range("2020-01-01", periods=n_rows, freq="1h", tz="UTC").hour.to_numpy()
    profile = np.where((hours >= 13) & (hours < 17), 2.5, np.where(hours < 6, 0.5, 1.0))
    var, returns = 1.0, np.zeros(n_rows)
    for t in range(n_rows):
        z = returns[t - 1] / (0.002 * profile[t - 1]) if t else 0.0
        var = 0.05 + 0.1 * z**2 + 0.85 * var
        returns[t] = 0.002 * profile[t] * np.sqrt(var) * rng.normal()
    return returns[:, None]


def test_seasonal_baselines_beat_plain_garch_and_har_on_hourly_bars_with_a_daily_profile():
    data = inputs(panel_from_returns(hourly_seasonal_returns(4000, seed=11), freq="1h"))
    train, test = range(0, 3000), range(3000, 4000)
    rv = data.targets.realised_vol[0, 3000:4000]
    ok = data.targets.valid[0, 3000:4000]

    def qlike(name: str, j: int) -> np.ndarray:
        vol = BASELINES[name]().fit(data, train).predict(data, test).volatility[0, :, j]
        return np.where(ok[:, j], qlike_losses(rv[:, j], vol), np.nan)

    for j, h in enumerate(data.targets.horizons[:2]):  # 1 and 5 bars
        for seasonal, plain in (("seasonal_garch_t", "garch11"), ("seasonal_garch_t", "garch_t"),
                                ("seasonal_har", "har")):
            result = diebold_mariano(qlike(seasonal, j), qlike(plain, j), h)
            assert result.direction == "better" and result.p_a_better < 0.01, (seasonal, plain, h, result)


def test_seasonal_profile_is_fitted_on_the_span_and_knows_which_bar_comes_next():
    """An equity-like clock: hourly bars 14-20 UTC on weekdays, the open twice as volatile."""
    ts = pd.date_range("2021-01-04", periods=24 * 7 * 30, freq="1h", tz="UTC")
    ts = ts[(ts.day_of_week < 5) & (ts.hour >= 14) & (ts.hour <= 20)]
    hours = np.asarray(ts.day_of_week * 24 + ts.hour)
    returns = np.random.default_rng(12).normal(size=len(ts)) * np.where(ts.hour == 14, 2.0, 1.0)
    profile = SeasonalProfile.fit(returns, hours, n_steps=2, shrinkage=10.0)
    friday_close, monday_open, monday_15 = 4 * 24 + 20, 14, 15
    assert profile.scale[monday_open] == pytest.approx(2 * profile.scale[monday_15], rel=0.25)
    # after Friday's last bar comes Monday's open, then Monday 15:00
    assert profile.ahead_var[friday_close, 0] == pytest.approx(profile.scale[monday_open] ** 2)
    assert profile.ahead_var[friday_close, 1] == pytest.approx(profile.scale[monday_15] ** 2)
    assert profile.scale[3] == pytest.approx(1.0, rel=0.3)  # never seen (Monday 03:00): shrunk to the average


def test_seasonal_baselines_need_bar_times():
    data = inputs(make_panel(300, seed=1))
    bare = BaselineInput(data.returns, data.observed, data.targets, data.symbols)
    for cls in (SeasonalGarchT, SeasonalHAR):
        with pytest.raises(ValueError, match="carries no bar times"):
            cls().fit(bare, range(0, 200))


# ---- errors ----


def test_errors_name_the_baseline_the_asset_and_the_rows(data):
    with pytest.raises(ValueError, match=r"garch11: BTC has 50 own bars in training rows 0..49, needs at least 60"):
        Garch11().fit(data, range(0, 50))
    with pytest.raises(RuntimeError, match="har: call fit"):
        HAR().predict(data, TEST)
    with pytest.raises(ValueError, match="unknown baselines"):
        fit_predict_baselines(data, TRAIN, TEST, names=("prophet",))
    with pytest.raises(ValueError, match="prediction rows"):
        MarkovRegime().fit(data, TRAIN).predict(data, range(600, 900))


# ---- the demo market (skipped until storage provides it) ----


def test_on_the_demo_market_garch_beats_constant_volatility(demo_panel):  # noqa: F811
    targets = compute_targets(demo_panel)
    fold = walk_forward(len(demo_panel.ts), 1, 1000, 120, 300, purge=targets.max_reach())[0]
    data = BaselineInput.from_panel(demo_panel, targets)
    predictions = fit_predict_baselines(data, fold.train, fold.test)
    table = score_table(predictions, targets, reference="garch11")
    qlike = table[(table.metric == "qlike") & (table.horizon == 1)].pivot(index="asset", columns="model", values="value")
    assert (qlike["garch11"] < qlike["zero"]).all(), qlike
    assert set(table["model"]) == set(BASELINES)


def test_walk_forward_joins_every_fold_test_span_in_order(data):
    folds = walk_forward(700, n_folds=3, min_train=300, val_size=40, test_size=100, purge=30)
    joined = walk_forward_baselines(data, folds, names=("ar1", "har"))
    np.testing.assert_array_equal(joined["ar1"].rows, np.arange(400, 700))
    assert joined["har"].volatility.shape == (2, 300, 3) and joined["har"].point is None
    last_fold = AR1().fit(data, folds[-1].train).predict(data, folds[-1].test)
    np.testing.assert_array_equal(joined["ar1"].point[:, 200:], last_fold.point)  # each fold refitted on its own span
