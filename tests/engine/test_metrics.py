"""Metrics against published reference values, the 'undefined' rules, the deflated Sharpe ratio, annualisation."""
from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays
from scipy import stats

from engine.backtest import metrics
from engine.calendar import (
    Annualisation,
    describe_annualisation,
    portfolio_bars_per_year,
)

SIMPLE = [0.01, -0.02, 0.03, -0.01, 0.02]
WITH_NAN = np.array([np.nan, 1, 10, -4, 2, 3, 2, 1, -10]) / 100


# ------------------------------------------------------------------------------------------ reference values
def test_simple_series_matches_reference_values():
    assert metrics.sharpe_ratio(SIMPLE, 252) == pytest.approx(4.593220, abs=5e-7)
    assert metrics.sortino_ratio(SIMPLE, 252) == pytest.approx(9.524705, abs=5e-7)
    assert metrics.annualised_volatility(SIMPLE, 252) == pytest.approx(0.329181, abs=5e-7)
    assert metrics.max_drawdown(SIMPLE) == pytest.approx(-0.02, abs=1e-15)
    assert metrics.win_rate(SIMPLE) == 0.6
    assert metrics.profit_factor(SIMPLE) == pytest.approx(2.0, rel=1e-12)


def test_series_with_a_missing_bar_matches_reference_values():
    assert metrics.sharpe_ratio(WITH_NAN, 252) == pytest.approx(1.7238613961706866, rel=1e-13)
    assert metrics.annualised_volatility(WITH_NAN, 252) == pytest.approx(0.9136465399704637, rel=1e-13)
    assert metrics.max_drawdown(WITH_NAN) == pytest.approx(-0.10, abs=1e-15)


def test_drawdown_is_measured_on_compounded_equity_starting_at_one():
    # Equity 1.01 then 1.01 * 0.98: exactly -2% from the peak. Additive P&L over a 1.01 peak would give -1.98%.
    assert metrics.max_drawdown([0.01, -0.02]) == pytest.approx(-0.02, abs=1e-15)
    # A loss on the first bar counts against the starting equity of 1.
    assert metrics.max_drawdown([-0.05, 0.01]) == pytest.approx(-0.05, abs=1e-15)
    # Two losses compound: 0.9 * 0.9 = 0.81.
    assert metrics.max_drawdown([0.0, -0.1, -0.1, 0.5]) == pytest.approx(-0.19, abs=1e-12)


def test_drawdown_duration_counts_bars_below_the_last_peak():
    assert metrics.max_drawdown_duration(SIMPLE) == 1
    # Down for three bars, back above the old peak on the fourth.
    assert metrics.max_drawdown_duration([0.1, -0.1, 0.05, 0.01, 0.2, 0.01]) == 3
    # Never recovers: counts to the end.
    assert metrics.max_drawdown_duration([0.1, -0.1, 0.0, 0.0]) == 3
    assert metrics.max_drawdown_duration([0.01, 0.02]) == 0


def test_compound_growth_and_calmar():
    returns = [0.1, -0.05, 0.02, 0.03]
    growth = 1.1 * 0.95 * 1.02 * 1.03
    assert metrics.total_return(returns) == pytest.approx(growth - 1, rel=1e-12)
    assert metrics.cagr(returns, 2) == pytest.approx(growth ** (2 / 4) - 1, rel=1e-12)
    assert metrics.calmar_ratio(returns, 2) == pytest.approx((growth ** 0.5 - 1) / 0.05, rel=1e-12)


def test_cagr_of_a_ruined_series_is_minus_one_hundred_percent():
    assert metrics.cagr([0.5, -1.0, 0.2], 252) == -1.0


# ------------------------------------------------------------------------------------------ undefined is None
@pytest.mark.parametrize("returns", [[0.0] * 10, [0.001] * 10, [0.02], []])
def test_sharpe_is_undefined_without_variance(returns):
    assert metrics.sharpe_ratio(returns, 252) is None
    assert metrics.probabilistic_sharpe_of(returns) is None
    assert metrics.deflated_sharpe_ratio(returns, 10) is None


def test_ratios_with_a_zero_denominator_are_undefined():
    gains_only = [0.01, 0.02, 0.0]
    assert metrics.sortino_ratio(gains_only, 252) is None
    assert metrics.profit_factor(gains_only) is None
    assert metrics.calmar_ratio(gains_only, 252) is None
    assert metrics.win_rate([]) is None
    assert metrics.average_trade([]) is None


def test_infinite_returns_are_an_error_that_says_where():
    with pytest.raises(ValueError, match="infinite"):
        metrics.sharpe_ratio([0.01, np.inf, 0.02], 252)
    with pytest.raises(ValueError, match="1-D"):
        metrics.sharpe_ratio(np.zeros((3, 2)), 252)


def test_turnover_and_exposure_of_positions():
    positions = np.array([[0.0, 0.0], [1.0, 0.0], [1.0, -0.5], [0.0, -0.5]])  # (T, A)
    # Changes: asset 0: 1 + 1 = 2; asset 1: 0.5. Equal weights: (2 + 0.5) / 2 over 4 bars, x 252 per year.
    assert metrics.turnover(positions, 252) == pytest.approx(2.5 / 2 / 4 * 252)
    assert metrics.turnover(positions, 252, weights=[1.0, 0.0]) == pytest.approx(2 / 4 * 252)
    assert metrics.exposure(positions) == 0.75
    assert metrics.exposure(positions, weights=[0.0, 1.0]) == 0.5


# ------------------------------------------------------------------------------------ one definition, two paths
finite_returns = arrays(
    np.float64, st.integers(2, 60), elements=st.floats(-0.5, 0.5, allow_nan=False, allow_subnormal=False)
)


@settings(max_examples=60, deadline=None)
@given(finite_returns)
def test_summary_agrees_with_the_single_metric_functions(returns):
    summary = metrics.summarise(returns, 365)
    for name, expected in [
        ("total_return", metrics.total_return(returns)),
        ("cagr", metrics.cagr(returns, 365)),
        ("annualised_volatility", metrics.annualised_volatility(returns, 365)),
        ("sharpe", metrics.sharpe_ratio(returns, 365)),
        ("sortino", metrics.sortino_ratio(returns, 365)),
        ("max_drawdown", metrics.max_drawdown(returns)),
        ("calmar", metrics.calmar_ratio(returns, 365)),
        ("probabilistic_sharpe", metrics.probabilistic_sharpe_of(returns)),
    ]:
        value = getattr(summary, name)
        if expected is None:
            assert value is None, name
        else:
            assert value == pytest.approx(expected, rel=1e-9, abs=1e-12), name
    assert summary.max_drawdown_duration_bars == metrics.max_drawdown_duration(returns)


@settings(max_examples=40, deadline=None)
@given(arrays(np.float64, (3, 25), elements=st.floats(-0.2, 0.2, allow_nan=False, allow_subnormal=False)))
def test_row_functions_equal_the_scalar_function_on_each_row(rows):
    sharpe = metrics.sharpe_rows(rows, 252)
    duration = metrics.max_drawdown_duration_rows(rows)
    for i, row in enumerate(rows):
        scalar = metrics.sharpe_ratio(row, 252)
        assert (math.isnan(sharpe[i]) and scalar is None) or sharpe[i] == pytest.approx(scalar, rel=1e-12)
        assert duration[i] == metrics.max_drawdown_duration(row)


def test_moments_match_scipy():
    returns = np.random.default_rng(3).standard_t(4, size=500) / 100
    sharpe, n, skew, kurtosis = metrics.return_moments(returns)
    assert n == 500
    assert sharpe == pytest.approx(returns.mean() / returns.std(ddof=1), rel=1e-12)
    assert skew == pytest.approx(stats.skew(returns), rel=1e-10)
    assert kurtosis == pytest.approx(stats.kurtosis(returns, fisher=False), rel=1e-10)


# ---------------------------------------------------------------------------- probabilistic / deflated Sharpe
def test_probabilistic_sharpe_reference_value():
    assert metrics.probabilistic_sharpe_ratio(0.1, 250, skew=0.0, kurtosis=3.0, benchmark=0.0) == pytest.approx(
        0.9423, abs=5e-5
    )


def test_probabilistic_sharpe_penalises_negative_skew_and_fat_tails():
    normal = metrics.probabilistic_sharpe_ratio(0.1, 250)
    assert metrics.probabilistic_sharpe_ratio(0.1, 250, skew=-1.0) < normal
    assert metrics.probabilistic_sharpe_ratio(0.1, 250, kurtosis=10.0) < normal
    assert metrics.probabilistic_sharpe_ratio(0.1, 250, benchmark=0.1) == pytest.approx(0.5)


def test_expected_maximum_sharpe_reference_value():
    assert metrics.expected_maximum_sharpe(100, 1.0) == pytest.approx(2.5306, abs=5e-5)
    assert metrics.expected_maximum_sharpe(100, 4.0) == pytest.approx(2 * 2.5306, abs=1e-4)
    assert metrics.expected_maximum_sharpe(1, 1.0) == 0.0
    with pytest.raises(ValueError, match="n_trials"):
        metrics.expected_maximum_sharpe(0)


def test_expected_maximum_sharpe_matches_simulated_maxima():
    rng = np.random.default_rng(11)
    simulated = rng.standard_normal((4000, 50)).max(axis=1).mean()
    # The Bailey & Lopez de Prado approximation is within a few percent of the true expectation.
    assert metrics.expected_maximum_sharpe(50) == pytest.approx(simulated, rel=0.05)


def test_deflated_sharpe_with_one_trial_is_the_probabilistic_sharpe():
    returns = np.random.default_rng(5).normal(0.001, 0.01, 500)
    assert metrics.deflated_sharpe_ratio(returns, 1) == pytest.approx(metrics.probabilistic_sharpe_of(returns))


def test_deflated_sharpe_falls_as_trials_grow():
    returns = np.random.default_rng(5).normal(0.001, 0.01, 500)
    values = [metrics.deflated_sharpe_ratio(returns, n) for n in (1, 10, 100, 1000)]
    assert all(a > b for a, b in zip(values, values[1:]))


def test_trial_counter_counts_distinct_settings_and_their_spread():
    trials = metrics.TrialCounter()
    trials.record(("threshold", 0.1), 0.05)
    trials.record(("threshold", 0.1), 0.05)  # the same setting again: still one trial
    trials.record(("threshold", 0.2), 0.01)
    trials.record(("threshold", 0.3), None)  # undefined Sharpe: a trial, but no spread information
    assert trials.n_trials == 3
    assert trials.sharpe_variance() == pytest.approx(np.var([0.05, 0.01], ddof=1))
    returns = np.random.default_rng(6).normal(0.001, 0.01, 300)
    expected = metrics.probabilistic_sharpe_of(
        returns, metrics.expected_maximum_sharpe(3, trials.sharpe_variance())
    )
    assert metrics.deflated_sharpe_ratio(returns, trials) == pytest.approx(expected)
    trials.reset()
    assert trials.n_trials == 0


# ------------------------------------------------------------------------------------------------ annualisation
def test_annualisation_is_stated_in_words():
    assert Annualisation.crypto(24).describe() == "365 days x 24 bars/day = 8,760 bars/year (crypto)"
    assert Annualisation.equities(7).describe() == "252 sessions x 7 bars = 1,764 bars/year (equities)"
    assert describe_annualisation(8760.0) == "365 days x 24 bars/day = 8,760 bars/year (crypto)"
    assert describe_annualisation([1764, 1764]) == "252 sessions x 7 bars = 1,764 bars/year (equities)"


def test_a_mixed_portfolio_says_which_clock_it_uses():
    text = describe_annualisation([8760, 1764, 1764], ["BTC", "SPY", "AAPL"])
    assert text.startswith("BTC: 365 days x 24 bars/day = 8,760 bars/year (crypto); SPY, AAPL: 252 sessions")
    assert "Portfolio figures use the panel clock, 365 days x 24 bars/day = 8,760 bars/year" in text
    assert portfolio_bars_per_year([8760, 1764]) == 8760


@pytest.mark.parametrize(
    "interval, market, bars_per_year",
    [("1h", "crypto", 8760), ("1h", "equities", 1764), ("1d", "crypto", 365), ("1d", "equities", 252),
     ("15m", "equities", 252 * 26), ("5m", "crypto", 365 * 288)],
)
def test_bars_per_year_from_the_interval(interval, market, bars_per_year):
    assert Annualisation.from_interval(interval, market).bars_per_year == bars_per_year


def test_bad_annualisation_input_is_rejected():
    with pytest.raises(ValueError, match="interval"):
        Annualisation.from_interval("1w", "crypto")
    with pytest.raises(ValueError, match="market"):
        Annualisation.from_interval("1h", "forex")
    with pytest.raises(ValueError, match="positive"):
        portfolio_bars_per_year([8760, 0])
