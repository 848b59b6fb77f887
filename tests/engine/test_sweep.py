"""Parameter sweeps: every cell is the backtest of its setting, and every cell counts as a trial."""
from __future__ import annotations

import math

import numpy as np
import pytest

from engine.backtest import sweep as sweep_module
from engine.backtest.engine import StrategyConfig, run_backtest
from engine.backtest.metrics import TrialCounter
from engine.backtest.sweep import SWEEP_METRICS, sweep
from tests.engine.test_backtest import random_inputs

BASE = StrategyConfig(threshold=0.02, commission_bps=2.0, slippage_bps=1.0)


def summary_value(result, name: str) -> float:
    value = getattr(result.metrics, name)
    return np.nan if value is None else float(value)


def assert_cells_match_single_runs(inputs, grid):
    for iy in range(len(grid.values_y)):
        for ix in range(len(grid.values_x)):
            single = run_backtest(inputs, grid.config_at(iy, ix))
            for name, values in grid.metrics.items():
                expected = summary_value(single, name)
                assert values[iy, ix] == pytest.approx(expected, rel=1e-9, abs=1e-12, nan_ok=True), (
                    name, grid.config_at(iy, ix)
                )


def test_threshold_by_cost_cells_equal_single_backtests():
    inputs = random_inputs(21, n_bars=400, n_assets=2, closed_share=0.2)
    grid = sweep(inputs, BASE, "threshold", [0.0, 0.05, 0.1, 0.49], "commission_bps", [0.0, 10.0],
                 metric_names=SWEEP_METRICS)
    assert grid.metrics["sharpe"].shape == (2, 4)
    assert np.isnan(grid.metrics["sharpe"][:, -1]).all()  # threshold 0.49: never trades, Sharpe undefined
    assert_cells_match_single_runs(inputs, grid)


@pytest.mark.parametrize(
    "param_x, values_x, param_y, values_y",
    [
        ("holding_horizon", [1, 3, 7], "long_short", [True, False]),
        ("vol_target", [None, 0.1, 0.4], "max_position", [0.5, 2.0]),
        ("size_by_confidence", [False, True], "inverse_vol", [False, True]),
        ("cash_rate", [0.0, 0.05], None, None),
    ],
)
def test_style_and_numeric_parameters_sweep_like_single_runs(param_x, values_x, param_y, values_y):
    inputs = random_inputs(5, n_bars=250, n_assets=3, closed_share=0.1)
    grid = sweep(inputs, BASE, param_x, values_x, param_y, values_y,
                 metric_names=("sharpe", "cagr", "max_drawdown", "turnover", "n_trades", "exposure"))
    assert_cells_match_single_runs(inputs, grid)


def test_chunk_boundaries_do_not_change_results(monkeypatch):
    inputs = random_inputs(8, n_bars=200, n_assets=2)
    values = np.linspace(0.0, 0.2, 9)
    whole = sweep(inputs, BASE, "threshold", values, "slippage_bps", [0.0, 5.0])
    monkeypatch.setattr(sweep_module, "_BUFFER_ELEMENTS", 2 * 200 * 3)  # 3 settings per chunk
    chunked = sweep(inputs, BASE, "threshold", values, "slippage_bps", [0.0, 5.0])
    for name in whole.metrics:
        np.testing.assert_array_equal(whole.metrics[name], chunked.metrics[name])


def test_every_setting_is_recorded_as_a_trial():
    inputs = random_inputs(3, n_bars=300, n_assets=2)
    trials = TrialCounter()
    grid = sweep(inputs, BASE, "threshold", [0.0, 0.05, 0.1], "commission_bps", [1.0, 5.0], trials=trials)
    assert trials.n_trials == 6
    setting = grid.config_at(1, 2)
    assert trials.sharpes[setting] == pytest.approx(grid.metrics["sharpe"][1, 2] / math.sqrt(8760), rel=1e-12)
    assert trials.sharpes[setting] == pytest.approx(run_backtest(inputs, setting).sharpe_per_period, rel=1e-9)
    # Sweeping the same grid again tries nothing new.
    sweep(inputs, BASE, "threshold", [0.0, 0.05, 0.1], "commission_bps", [1.0, 5.0], trials=trials)
    assert trials.n_trials == 6


def test_best_cell():
    inputs = random_inputs(13, n_bars=300, n_assets=1)
    grid = sweep(inputs, BASE, "threshold", [0.0, 0.02, 0.04, 0.08])
    config, value = grid.best("sharpe")
    assert value == np.nanmax(grid.metrics["sharpe"])
    assert config.threshold == grid.values_x[int(np.nanargmax(grid.metrics["sharpe"][0]))]
    assert grid.best("max_drawdown", maximise=False)[1] == np.min(grid.metrics["max_drawdown"])


@pytest.mark.parametrize(
    "kwargs, message",
    [
        (dict(param_x="weights", values_x=[(1, 1)]), "cannot sweep 'weights'"),
        (dict(param_x="speed", values_x=[1]), "cannot sweep 'speed'"),
        (dict(param_x="threshold", values_x=[0.1], param_y="threshold", values_y=[0.2]), "both 'threshold'"),
        (dict(param_x="threshold", values_x=[]), "at least one value"),
        (dict(param_x="threshold", values_x=[0.1, 0.7]), r"setting \{'threshold': 0.7\} is not valid"),
        (dict(param_x="threshold", values_x=[0.1], metric_names=("alpha",)), "unknown metric"),
    ],
)
def test_bad_sweeps_say_what_is_wrong(kwargs, message):
    with pytest.raises(ValueError, match=message):
        sweep(random_inputs(1, n_bars=20), BASE, **kwargs)
