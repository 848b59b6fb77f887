"""The tearsheet's statistics on series small enough to check by hand."""
from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest

from engine.backtest.tearsheet import (
    calendar_returns,
    distribution_returns,
    drawdown_periods,
    monthly_returns,
    relative_metrics,
    tearsheet,
    worst_drawdowns,
    yearly_returns,
)

DAYS = pd.date_range("2024-03-01", periods=6, freq="D", tz="UTC")


def test_drawdowns_start_below_the_peak_bottom_at_the_trough_and_recover_back_at_it():
    # equity 1.1, 0.99, 0.891, 1.3365, 1.0692, 1.0692: peaks 1.1 then 1.3365
    returns = [0.1, -0.1, -0.1, 0.5, -0.2, 0.0]
    periods = drawdown_periods(returns, DAYS)
    assert len(periods) == 2
    first, second = periods.iloc[0], periods.iloc[1]
    assert (first["start"], first["trough"], first["recovery"]) == (DAYS[1], DAYS[2], DAYS[3])
    assert first["depth"] == pytest.approx(0.891 / 1.1 - 1)  # -19%
    assert first["length (bars)"] == 2 and first["length"] == pd.Timedelta(days=2)
    assert (second["start"], second["trough"]) == (DAYS[4], DAYS[4]) and pd.isna(second["recovery"])
    assert second["depth"] == pytest.approx(-0.2)
    assert second["length (bars)"] == 2  # still under water at the last bar
    worst = worst_drawdowns(returns, DAYS, n=1)
    assert len(worst) == 1 and worst.iloc[0]["depth"] == pytest.approx(-0.2)


def test_a_series_that_never_falls_has_no_drawdown():
    assert drawdown_periods([0.01, 0.0, 0.02], DAYS[:3]).empty


def test_beta_alpha_and_correlation_of_a_strategy_that_is_twice_the_benchmark_plus_a_constant():
    benchmark = np.array([0.01, -0.02, 0.03, 0.0])
    strategy = 2 * benchmark + 0.01
    rel = relative_metrics(strategy, benchmark, periods_per_year=252)
    assert rel.beta == pytest.approx(2.0)
    assert rel.alpha == pytest.approx(0.01 * 252)  # per-bar alpha 1%, annualised x 252 bars/year
    assert rel.correlation == pytest.approx(1.0)
    # active returns = benchmark + 0.01 = [0.02, -0.01, 0.04, 0.01]: mean 0.015, squared deviations 1300e-6
    active_std = math.sqrt(1300e-6 / 3)
    assert rel.tracking_error == pytest.approx(active_std * math.sqrt(252))
    assert rel.information_ratio == pytest.approx(0.015 / active_std * math.sqrt(252))
    assert rel.n_bars == 4


def test_a_flat_benchmark_leaves_beta_and_alpha_undefined_not_zero():
    rel = relative_metrics([0.01, -0.01, 0.02], [0.0, 0.0, 0.0], 365)
    assert rel.beta is None and rel.alpha is None and rel.correlation is None
    assert rel.information_ratio is not None  # the active return still varies


def test_yearly_and_monthly_returns_compound_the_bars_of_each_calendar_period():
    ts = pd.DatetimeIndex(["2023-12-30", "2023-12-31", "2024-01-01", "2024-01-02"], tz="UTC")
    strategy, benchmark = [0.1, -0.1, 0.5, -0.2], [0.0, 0.0, 0.1, 0.0]
    yearly = yearly_returns(strategy, benchmark, ts)
    assert list(yearly.index) == [2023, 2024]
    assert yearly.loc[2023, "strategy"] == pytest.approx(1.1 * 0.9 - 1)  # -1%
    assert yearly.loc[2024, "strategy"] == pytest.approx(1.5 * 0.8 - 1)  # +20%
    assert yearly.loc[2024, "excess"] == pytest.approx(0.2 - 0.1)
    monthly = monthly_returns(strategy, ts)
    assert monthly.loc[2023, "Dec"] == pytest.approx(-0.01) and monthly.loc[2024, "Jan"] == pytest.approx(0.2)
    assert np.isnan(monthly.loc[2023, "Jan"])
    assert calendar_returns(strategy, ts, "month").size == 2


def test_intraday_bars_are_compounded_per_day_for_the_distribution():
    ts = pd.DatetimeIndex(["2024-01-01 22:00", "2024-01-01 23:00", "2024-01-02 00:00"], tz="UTC")
    frame, period = distribution_returns([0.1, 0.1, -0.5], [0.0, 0.0, 0.0], ts, 8760)
    assert period == "day"
    assert frame["strategy"].tolist() == pytest.approx([0.21, -0.5])
    daily, period = distribution_returns([0.1, -0.1], [0.0, 0.0], DAYS[:2], 365)
    assert period == "bar" and daily["strategy"].tolist() == pytest.approx([0.1, -0.1])


def test_the_tearsheet_states_its_annualisation():
    sheet = tearsheet([0.1, -0.1, -0.1, 0.5, -0.2, 0.0], [0.0, 0.01, -0.01, 0.02, 0.0, 0.01], DAYS, 365)
    assert sheet.annualisation.startswith("365 days x 1 bars/day")
    assert sheet.drawdowns.iloc[0]["depth"] == pytest.approx(-0.2)
    assert sheet.relative.beta is not None
