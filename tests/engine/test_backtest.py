"""The backtester: a signal trades on the next bar, costs follow turnover, and the book-keeping adds up."""
from __future__ import annotations

import pickle

import numpy as np
import pandas as pd
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from engine.backtest.engine import BacktestInputs, StrategyConfig, run_backtest

HOUR_US = 3_600_000_000
FREE = dict(commission_bps=0.0, slippage_bps=0.0)


def make_inputs(returns, prob_up, pred_vol=None, tradable=None, bars_per_year=None, symbols=None, horizon=None):
    """Hourly bars from 2024-01-01; arrays may be (T,) for one asset or (T, A)."""
    returns = np.asarray(returns, dtype=float)
    returns = returns[:, None] if returns.ndim == 1 else returns
    n_bars, n_assets = returns.shape

    def panel(values, fill):
        if values is None:
            return np.full((n_bars, n_assets), fill)
        values = np.asarray(values)
        return values[:, None] if values.ndim == 1 else values

    return BacktestInputs(
        ts=np.datetime64("2024-01-01T00:00:00", "us") + np.arange(n_bars) * np.timedelta64(HOUR_US, "us"),
        symbols=tuple(symbols or [f"A{i}" for i in range(n_assets)]),
        returns=returns,
        prob_up=panel(prob_up, np.nan).astype(float),
        pred_vol=panel(pred_vol, 0.01).astype(float),
        tradable=panel(tradable, True),
        bars_per_year=np.full(n_assets, 8760.0) if bars_per_year is None else bars_per_year,
        horizon=horizon,
    )


def random_inputs(seed: int, n_bars: int = 300, n_assets: int = 2, closed_share: float = 0.0) -> BacktestInputs:
    rng = np.random.default_rng(seed)
    tradable = rng.random((n_bars, n_assets)) >= closed_share
    tradable[0] = True
    return make_inputs(
        returns=rng.normal(0, 0.01, (n_bars, n_assets)),
        prob_up=np.clip(0.5 + rng.normal(0, 0.08, (n_bars, n_assets)), 0, 1),
        pred_vol=rng.uniform(0.005, 0.02, (n_bars, n_assets)),
        tradable=tradable,
    )


def changes_from_flat(positions: np.ndarray) -> np.ndarray:
    return np.abs(np.diff(positions, axis=0, prepend=0.0))


# ---------------------------------------------------------------------------------------------------- timing
configs = st.builds(
    StrategyConfig,
    threshold=st.floats(0.0, 0.2, allow_subnormal=False),
    max_position=st.floats(0.1, 2.0, allow_subnormal=False),
    long_short=st.booleans(),
    size_by_confidence=st.booleans(),
    inverse_vol=st.booleans(),
    vol_target=st.none() | st.floats(0.05, 0.5, allow_subnormal=False),
    holding_horizon=st.integers(1, 6),
    commission_bps=st.floats(0.0, 20.0, allow_subnormal=False),
)


@settings(max_examples=60, deadline=None)
@given(
    seed=st.integers(0, 10_000),
    n_bars=st.integers(2, 40),
    cut=st.integers(0, 39),
    config=configs,
    shuffle=st.booleans(),
)
def test_changing_or_shuffling_later_bars_never_changes_earlier_positions(seed, n_bars, cut, config, shuffle):
    cut = min(cut, n_bars - 1)
    rng = np.random.default_rng(seed)
    inputs = random_inputs(seed, n_bars=n_bars, n_assets=2, closed_share=0.3)
    later = slice(cut + 1, None)
    arrays = {name: getattr(inputs, name).copy() for name in ("returns", "prob_up", "pred_vol", "tradable")}
    if shuffle:
        order = rng.permutation(n_bars - cut - 1)
        for values in arrays.values():
            values[later] = values[later][order]
    else:
        arrays["returns"][later] = rng.normal(0, 0.05, arrays["returns"][later].shape)
        arrays["prob_up"][later] = rng.random(arrays["prob_up"][later].shape)
        arrays["pred_vol"][later] = rng.uniform(0.001, 0.1, arrays["pred_vol"][later].shape)
        arrays["tradable"][later] = rng.random(arrays["tradable"][later].shape) < 0.5
    changed = make_inputs(**arrays)
    before = run_backtest(inputs, config).positions
    after = run_backtest(changed, config).positions
    # The position over bar cut + 1 is decided at the close of bar `cut`, from data up to `cut` only.
    np.testing.assert_array_equal(before[: cut + 2], after[: cut + 2])


def test_a_signal_never_earns_the_bar_that_produced_it():
    returns = np.array([0.0, 0.05, -0.03, 0.02])
    prob = np.array([0.5, 0.9, 0.9, 0.9])  # bullish from the close of bar 1
    result = run_backtest(make_inputs(returns, prob), StrategyConfig(threshold=0.1, **FREE))
    np.testing.assert_array_equal(result.positions[:, 0], [0.0, 0.0, 1.0, 1.0])
    np.testing.assert_allclose(result.net_returns[:, 0], [0.0, 0.0, -0.03, 0.02])


def test_a_same_bar_signal_on_independent_returns_shows_no_edge():
    rng = np.random.default_rng(2024)
    returns = rng.normal(0.0, 0.01, 20_000)
    # P(up) = 1 exactly when the bar it is computed on went up: pure hindsight if a backtest let it trade that bar.
    prob = (returns > 0).astype(float)
    result = run_backtest(make_inputs(returns, prob), StrategyConfig(threshold=0.1, **FREE))
    pnl = result.net_returns[1:, 0]
    z = pnl.mean() / (pnl.std(ddof=1) / np.sqrt(pnl.size))
    # Trading the same bar would earn E|r| = 0.8 sigma per bar, a z-score near 110; the next bar earns nothing.
    assert abs(z) < 4.0


@settings(max_examples=30, deadline=None)
@given(seed=st.integers(0, 10_000), n_assets=st.integers(1, 3))
def test_perfect_foresight_at_zero_cost_earns_the_sum_of_absolute_returns(seed, n_assets):
    rng = np.random.default_rng(seed)
    returns = rng.normal(0, 0.01, (60, n_assets))
    returns[returns == 0] = 1e-4
    # Known at the close of bar t: the sign of bar t+1. Positions +-1 from bar 1 on; bar 0 cannot be traded.
    prob = np.full_like(returns, 0.5)
    prob[:-1] = (returns[1:] > 0).astype(float)
    result = run_backtest(make_inputs(returns, prob), StrategyConfig(threshold=0.0, long_short=True, **FREE))
    np.testing.assert_array_equal(result.positions[1:], np.sign(returns[1:]))
    np.testing.assert_allclose(result.net_returns.sum(axis=0), np.abs(returns[1:]).sum(axis=0), rtol=1e-12)


# ------------------------------------------------------------------------------------------------------ costs
def test_a_zero_signal_gives_flat_equity_and_no_cost():
    inputs = make_inputs(np.random.default_rng(1).normal(0, 0.01, (200, 2)), np.full((200, 2), 0.5))
    result = run_backtest(inputs, StrategyConfig(threshold=0.0, commission_bps=10.0))
    assert np.all(result.positions == 0)
    assert np.all(result.equity == 1.0)
    assert np.all(result.costs == 0) and np.all(result.portfolio_costs == 0)
    assert len(result.trades) == 0
    assert result.metrics.sharpe is None  # undefined, not 0
    assert result.metrics.probabilistic_sharpe is None
    assert result.metrics.n_trades == 0


@pytest.mark.parametrize("config", [
    StrategyConfig(commission_bps=3.0, slippage_bps=4.0),
    StrategyConfig(commission_bps=5.0, size_by_confidence=True, holding_horizon=3),
    StrategyConfig(commission_bps=5.0, vol_target=0.2, long_short=False),
])
def test_costs_are_the_cost_rate_times_the_position_changes(config):
    inputs = random_inputs(7, closed_share=0.2)
    result = run_backtest(inputs, config)
    expected = config.cost_rate * changes_from_flat(result.positions)
    np.testing.assert_allclose(result.costs, expected, rtol=1e-12, atol=0)
    assert result.costs.sum() == pytest.approx(config.cost_rate * changes_from_flat(result.positions).sum())
    np.testing.assert_allclose(result.net_returns, result.gross_returns - result.costs, atol=1e-15)
    np.testing.assert_allclose(
        result.portfolio_net_returns, result.portfolio_gross_returns - result.portfolio_costs, atol=1e-14
    )


@settings(max_examples=40, deadline=None)
@given(seed=st.integers(0, 10_000), config=configs, extra_bps=st.floats(0.01, 50.0, allow_subnormal=False))
def test_raising_the_cost_never_raises_net_pnl(seed, config, extra_bps):
    inputs = random_inputs(seed, n_bars=80, closed_share=0.2)
    cheap = run_backtest(inputs, config)
    dear = run_backtest(inputs, StrategyConfig(**{**config.__dict__, "slippage_bps": config.slippage_bps + extra_bps}))
    np.testing.assert_array_equal(cheap.positions, dear.positions)
    assert np.all(dear.net_returns <= cheap.net_returns + 1e-15)
    assert dear.equity[-1] <= cheap.equity[-1] + 1e-12


# ---------------------------------------------------------------------------------------------------- sizing
def test_long_only_never_shorts_and_threshold_is_strict():
    prob = np.array([0.1, 0.75, 0.76, 0.9, 0.1, 0.5])  # 0.75 - 0.5 is exactly the threshold: no trade
    result = run_backtest(make_inputs(np.zeros(6), prob), StrategyConfig(threshold=0.25, long_short=False))
    np.testing.assert_array_equal(result.positions[:, 0], [0, 0, 0, 1, 1, 0])
    both = run_backtest(make_inputs(np.zeros(6), prob), StrategyConfig(threshold=0.25, long_short=True))
    np.testing.assert_array_equal(both.positions[:, 0], [0, -1, 0, 1, 1, -1])


def test_size_by_confidence_and_the_position_cap():
    prob = np.array([0.8, 0.35, 1.0, 0.5])
    config = StrategyConfig(threshold=0.0, size_by_confidence=True, max_position=0.9)
    result = run_backtest(make_inputs(np.zeros(4), prob), config)
    np.testing.assert_allclose(result.positions[:, 0], [0.0, 0.6, -0.3, 0.9])


def test_vol_target_scales_by_predicted_annual_volatility():
    vol = np.array([0.01, 0.02, 0.005, 0.01])  # per bar, 252 bars a year
    inputs = make_inputs(np.zeros(4), np.full(4, 0.9), pred_vol=vol, bars_per_year=np.array([252.0]))
    result = run_backtest(inputs, StrategyConfig(threshold=0.1, vol_target=0.1, max_position=1.5))
    expected = np.minimum(0.1 / (vol[:-1] * np.sqrt(252)), 1.5)
    np.testing.assert_allclose(result.positions[1:, 0], expected)


def test_inverse_vol_sizes_against_the_mean_predicted_vol_so_far():
    vol = np.array([0.01, 0.01, 0.02, 0.04])
    result = run_backtest(make_inputs(np.zeros(4), np.full(4, 0.9), pred_vol=vol), StrategyConfig(inverse_vol=True))
    mean_so_far = np.cumsum(vol) / np.arange(1, 5)
    np.testing.assert_allclose(result.positions[1:, 0], np.minimum(mean_so_far[:-1] / vol[:-1], 1.0))


def test_holding_horizon_re_evaluates_every_h_bars():
    rng = np.random.default_rng(3)
    prob = rng.random(40)
    result = run_backtest(make_inputs(np.zeros(40), prob), StrategyConfig(threshold=0.0, holding_horizon=4))
    positions = result.positions[:, 0]
    # Decisions at the closes of bars 0, 4, 8, ...; each sets the position for the 4 bars after it.
    np.testing.assert_array_equal(positions[1:], np.repeat(np.sign(prob[::4] - 0.5), 4)[:39])


def test_unselected_assets_hold_nothing_and_weights_are_normalised():
    inputs = random_inputs(4, n_assets=3)
    result = run_backtest(inputs, StrategyConfig(weights=(2.0, 0.0, 2.0)))
    assert np.all(result.positions[:, 1] == 0)
    assert set(result.asset_metrics) == {"A0", "A2"}
    # Sleeves are funded 50/50 and never rebalanced against each other.
    expected = 0.5 * result.asset_equity[:, 0] + 0.5 * result.asset_equity[:, 2]
    np.testing.assert_allclose(result.equity, expected, rtol=1e-12)


# ---------------------------------------------------------------------------------------------- benchmark
def test_buy_and_hold_matches_a_hand_computed_equity_curve():
    rng = np.random.default_rng(8)
    returns = rng.normal(0.0005, 0.01, (50, 2))
    tradable = np.ones((50, 2), dtype=bool)
    tradable[:3, 1] = False  # the second market opens at bar 3: bought at that close, held from bar 4
    config = StrategyConfig(commission_bps=10.0, slippage_bps=5.0)
    result = run_backtest(make_inputs(returns, np.full((50, 2), 0.5), tradable=tradable), config)
    sleeves = []
    for asset, first_held in ((0, 1), (1, 4)):
        growth = np.ones(50)
        growth[first_held:] = 1 + returns[first_held:, asset]
        growth[first_held] -= config.cost_rate  # the entry cost, paid once
        sleeves.append(np.cumprod(growth))
    np.testing.assert_allclose(result.benchmark.equity, np.mean(sleeves, axis=0), rtol=1e-12)
    assert result.benchmark.metrics.n_trades == 2


def test_always_long_reproduces_buy_and_hold():
    inputs = random_inputs(9, n_assets=3)
    long_everything = make_inputs(inputs.returns, np.ones((300, 3)))
    result = run_backtest(long_everything, StrategyConfig(threshold=0.0, long_short=False, commission_bps=7.0))
    np.testing.assert_allclose(result.equity, result.benchmark.equity, rtol=1e-12)
    assert result.metrics.sharpe == pytest.approx(result.benchmark.metrics.sharpe, rel=1e-9)


# ------------------------------------------------------------------------------------------------------ trades
def test_trade_list_splits_runs_reversals_and_charges_both_legs():
    returns = np.array([0.0, 0.01, 0.02, -0.03, 0.01, 0.05, 0.02, -0.01])
    prob = np.array([0.9, 0.9, 0.1, 0.1, 0.5, 0.9, 0.9, 0.9])  # positions: 0 1 1 -1 -1 0 1 1
    config = StrategyConfig(threshold=0.1, commission_bps=10.0, slippage_bps=0.0)
    c = config.cost_rate
    result = run_backtest(make_inputs(returns, prob), config)
    np.testing.assert_array_equal(result.positions[:, 0], [0, 1, 1, -1, -1, 0, 1, 1])
    trades = result.trades_frame()
    assert list(trades["side"]) == [1, -1, 1]
    assert list(trades["bars_held"]) == [2, 2, 2]
    assert list(trades["open"]) == [False, False, True]
    assert trades["entry_ts"][1] == pd.Timestamp("2024-01-01 03:00", tz="UTC")  # first bar held: bar 3
    assert trades["exit_ts"][1] == pd.Timestamp("2024-01-01 04:00", tz="UTC")  # last bar held: bar 4
    assert trades["symbol"].tolist() == ["A0"] * 3
    expected = [
        (1 + 0.01 - c) * (1 + 0.02) * (1 - c) - 1,  # long: entry and exit legs
        (1 - 0.03 * -1 - c) * (1 + 0.01 * -1) * (1 - c) - 1,  # short: its own legs of the reversal and exit
        (1 + 0.02 - c) * (1 - 0.01) - 1,  # still open: no exit cost yet
    ]
    np.testing.assert_allclose(trades["return"], expected, rtol=1e-12)
    assert result.metrics.n_trades == 3
    assert result.metrics.win_rate == pytest.approx(np.mean(np.array(expected) > 0))


# ------------------------------------------------------------------------------------------------ edge cases
def test_a_single_bar_backtest_has_no_trades_and_undefined_sharpe():
    result = run_backtest(make_inputs([0.01], [0.9]), StrategyConfig())
    assert result.positions.shape == (1, 1) and result.positions[0, 0] == 0
    assert result.metrics.sharpe is None and result.metrics.n_trades == 0
    assert result.metrics.total_return == 0.0 and result.metrics.max_drawdown == 0.0


def test_closed_market_bars_carry_positions_without_trading():
    inputs = random_inputs(12, n_bars=400, n_assets=2, closed_share=0.4)
    result = run_backtest(inputs, StrategyConfig(threshold=0.0, size_by_confidence=True, commission_bps=5.0))
    closed = ~inputs.tradable[:-1]  # a closed bar t cannot trade at its close
    np.testing.assert_array_equal(result.positions[1:][closed], result.positions[:-1][closed])
    assert np.all(result.costs[1:][closed] == 0)
    assert np.any(result.positions != 0)


def test_each_asset_is_measured_on_its_own_clock():
    tradable = np.ones((24 * 20, 2), dtype=bool)
    tradable[:, 1] = (np.arange(24 * 20) % 24) < 7  # an equity market open 7 bars a day
    inputs = make_inputs(
        np.random.default_rng(2).normal(0, 0.01, (480, 2)) * tradable,
        np.full((480, 2), 0.9),
        tradable=tradable,
        bars_per_year=np.array([8760.0, 1764.0]),
        symbols=["BTC", "SPY"],
    )
    result = run_backtest(inputs, StrategyConfig())
    assert result.asset_metrics["BTC"].n_bars == 480 and result.asset_metrics["BTC"].periods_per_year == 8760
    assert result.asset_metrics["SPY"].n_bars == 7 * 20 and result.asset_metrics["SPY"].periods_per_year == 1764
    assert result.metrics.periods_per_year == 8760
    assert "SPY: 252 sessions x 7 bars = 1,764 bars/year (equities)" in result.annualisation
    # Sampling the sleeve on its open bars loses nothing: the compounded returns agree.
    assert result.asset_metrics["SPY"].total_return == pytest.approx(result.asset_equity[-1, 1] - 1, rel=1e-12)


def test_all_nan_forecasts_name_the_asset_and_horizon():
    prob = np.full((10, 2), 0.7)
    prob[:, 1] = np.nan
    inputs = make_inputs(np.zeros((10, 2)), prob, symbols=["BTC", "SPY"], horizon=5)
    with pytest.raises(ValueError, match="No forecasts for SPY at horizon 5"):
        run_backtest(inputs, StrategyConfig())
    # Leaving that asset out is fine.
    assert run_backtest(inputs, StrategyConfig(weights=(1.0, 0.0))).positions[1, 0] == 1.0


def test_cash_earns_its_rate_only_on_idle_capital():
    inputs = make_inputs(np.zeros(8761), np.full(8761, 0.5))
    result = run_backtest(inputs, StrategyConfig(cash_rate=0.05))
    assert result.equity[-1] == pytest.approx(1.05 ** (8761 / 8760), rel=1e-9)
    assert result.metrics.sharpe is None  # a constant return has no variance


@pytest.mark.parametrize(
    "change, message",
    [
        (dict(returns=np.full((5, 1), -1.5)), "returns.*A0 at bar 0"),
        (dict(prob_up=np.full((5, 1), 1.2)), r"prob_up.*in \[0, 1\]"),
        (dict(pred_vol=np.full((5, 1), -0.1)), "pred_vol"),
        (dict(tradable=np.ones((5, 1))), "tradable must be a bool array"),
        (dict(returns=np.zeros((4, 1))), r"shape \(bars, assets\)"),
    ],
)
def test_bad_inputs_say_what_is_wrong_and_where(change, message):
    good = dict(returns=np.zeros((5, 1)), prob_up=np.full((5, 1), 0.6), pred_vol=np.full((5, 1), 0.01),
                tradable=np.ones((5, 1), dtype=bool))
    with pytest.raises(ValueError, match=message):
        make_inputs(**{**good, **change})


def test_pickled_inputs_carry_their_arrays_but_not_the_reused_work():
    inputs = random_inputs(6)
    first = run_backtest(inputs, StrategyConfig())
    assert inputs.reusable  # held signals and the benchmark are kept for the next slider move
    copy = pickle.loads(pickle.dumps(inputs))
    assert "reusable" not in copy.__dict__
    np.testing.assert_array_equal(run_backtest(copy, StrategyConfig()).equity, first.equity)


def test_timestamps_may_be_tz_aware_pandas_but_not_naive():
    inputs = make_inputs(np.zeros(3), np.full(3, 0.6))
    fields = (inputs.symbols, inputs.returns, inputs.prob_up, inputs.pred_vol, inputs.tradable, inputs.bars_per_year)
    in_new_york = pd.date_range("2024-01-01 09:00", periods=3, freq="h", tz="America/New_York")
    converted = BacktestInputs(in_new_york, *fields)
    assert converted.ts[0] == np.datetime64("2024-01-01T14:00")  # stored as UTC
    with pytest.raises(ValueError, match="naive timestamps"):
        BacktestInputs(pd.date_range("2024-01-01", periods=3, freq="h"), *fields)


def test_unsorted_timestamps_are_rejected():
    inputs = make_inputs(np.zeros(3), np.full(3, 0.6))
    with pytest.raises(ValueError, match="strictly increasing; bar 2"):
        BacktestInputs(inputs.ts[[0, 2, 1]], inputs.symbols, inputs.returns, inputs.prob_up, inputs.pred_vol,
                       inputs.tradable, inputs.bars_per_year)


@pytest.mark.parametrize(
    "field, value", [("threshold", 0.5), ("max_position", 0.0), ("holding_horizon", 0), ("vol_target", -0.1),
                     ("commission_bps", -1.0), ("weights", (0.0, 0.0))],
)
def test_bad_settings_name_the_setting(field, value):
    with pytest.raises(ValueError, match=f"StrategyConfig.{field}"):
        StrategyConfig(**{field: value})
