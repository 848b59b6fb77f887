"""A tearsheet of one backtest, as quantstats gives it: return distribution, worst drawdowns, yearly and monthly
returns, and alpha, beta, information ratio and tracking error against the benchmark (buy-and-hold).

Definitions (quantstats' `stats` where it has one; differences said):
- returns are the portfolio's net per-bar returns on the panel clock; the benchmark's are on the same bars;
- beta = cov(strategy, benchmark) / var(benchmark) (sample, ddof=1); alpha = mean(strategy) - beta mean(benchmark)
  per bar, annualised x bars/year (as quantstats' `greeks`); correlation is Pearson's;
- active return = strategy - benchmark per bar; tracking error = its sample std x sqrt(bars/year); information
  ratio = mean / std of it x sqrt(bars/year). quantstats' `information_ratio` is NOT annualised; ours is, so that
  it reads on the same scale as the Sharpe ratio;
- a drawdown starts at the first bar below the running peak of compounded equity (1 before the first bar), its
  trough is its lowest bar, and it recovers at the first bar back at or above that peak (None: not yet); its
  length counts bars from its start to its recovery (exclusive) or to the last bar (inclusive);
- yearly and monthly returns compound the bars of each calendar year/month (UTC);
- the distribution is of daily returns (bars compounded per UTC day) when bars are intraday, else of bar returns.

Annualisation comes from engine.calendar, stated in `annualisation`. A figure that is undefined (no variance, no
benchmark variance, fewer than two bars) is None, never 0.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import pandas as pd

from engine.backtest.metrics import drawdown_of_equity
from engine.calendar import Annualisation

MONTH_NAMES = ("Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec")
WORST_DRAWDOWNS = 5
DRAWDOWN_COLUMNS = ("start", "trough", "recovery", "depth", "length (bars)", "length")


@dataclass(frozen=True)
class RelativeMetrics:
    """The strategy against its benchmark on the same bars; None = undefined."""

    alpha: float | None  # annualised, per-bar alpha x bars/year
    beta: float | None
    correlation: float | None
    information_ratio: float | None  # annualised
    tracking_error: float | None  # annualised
    n_bars: int


@dataclass(frozen=True)
class Tearsheet:
    periods_per_year: float
    annualisation: str  # the convention in words, from engine.calendar
    relative: RelativeMetrics
    drawdowns: pd.DataFrame  # the worst drawdowns, deepest first (DRAWDOWN_COLUMNS)
    yearly: pd.DataFrame  # index: year; columns strategy, benchmark, excess (strategy - benchmark)
    monthly: pd.DataFrame  # index: year; columns Jan..Dec; NaN = no bars that month
    distribution: pd.DataFrame  # columns strategy, benchmark: the returns the histogram draws
    distribution_period: str  # "day" or "bar"


def relative_metrics(returns, benchmark_returns, periods_per_year: float) -> RelativeMetrics:
    """Alpha, beta, correlation, information ratio and tracking error (see the module docstring)."""
    r = np.asarray(returns, dtype=np.float64)
    b = np.asarray(benchmark_returns, dtype=np.float64)
    if r.shape != b.shape or r.ndim != 1:
        raise ValueError(f"relative_metrics: returns {r.shape} and benchmark {b.shape} must be the same 1-D shape")
    both = np.isfinite(r) & np.isfinite(b)
    r, b = r[both], b[both]
    n = int(r.size)
    if n < 2:
        return RelativeMetrics(None, None, None, None, None, n)
    annualise = math.sqrt(periods_per_year)
    r_dev, b_dev = r - r.mean(), b - b.mean()
    var_b = float(np.einsum("i,i->", b_dev, b_dev)) / (n - 1)
    var_r = float(np.einsum("i,i->", r_dev, r_dev)) / (n - 1)
    cov = float(np.einsum("i,i->", r_dev, b_dev)) / (n - 1)
    scale = max(float(np.abs(b).max()), float(np.abs(r).max()), np.finfo(np.float64).tiny)
    tiny = (1e-12 * scale) ** 2  # a variance this small is rounding noise of a constant series
    beta = cov / var_b if var_b > tiny else None
    alpha = None if beta is None else (float(r.mean()) - beta * float(b.mean())) * periods_per_year
    correlation = cov / math.sqrt(var_r * var_b) if var_b > tiny and var_r > tiny else None
    active = r - b
    active_std = float(active.std(ddof=1))
    tracking_error = active_std * annualise
    information_ratio = float(active.mean()) / active_std * annualise if active_std ** 2 > tiny else None
    return RelativeMetrics(alpha, beta, correlation, information_ratio, tracking_error, n)


def drawdown_periods(returns, ts, worst: int | None = None) -> pd.DataFrame:
    """The drawdowns of compounded equity (start, trough, recovery, depth, length): all of them in time order, or
    the `worst` deepest, deepest first."""
    r = np.nan_to_num(np.asarray(returns, dtype=np.float64))
    times = _utc(ts)
    if len(times) != r.size:
        raise ValueError(f"drawdown_periods: {r.size} returns for {len(times)} times")
    drawdown = drawdown_of_equity(np.cumprod(1.0 + r))
    underwater = drawdown < 0
    edges = np.diff(np.concatenate([[0], underwater.astype(np.int8), [0]]))
    starts, ends = np.flatnonzero(edges == 1), np.flatnonzero(edges == -1)  # ends: first bar back at the peak
    order = np.arange(starts.size)
    if worst is not None and starts.size:
        depths = np.minimum.reduceat(drawdown, starts)  # each period's deepest bar (periods never touch)
        order = np.argsort(depths, kind="stable")[:worst]
    rows = []
    for start, end in zip(starts[order], ends[order]):
        trough = start + int(np.argmin(drawdown[start:end]))
        recovered = end < r.size
        rows.append({
            "start": times[start], "trough": times[trough], "recovery": times[end] if recovered else pd.NaT,
            "depth": float(drawdown[trough]), "length (bars)": int(end - start),
            "length": (times[end] if recovered else times[-1]) - times[start],
        })
    frame = pd.DataFrame(rows, columns=list(DRAWDOWN_COLUMNS))
    return frame.astype({"depth": float, "length (bars)": int}) if len(frame) else frame


def worst_drawdowns(returns, ts, n: int = WORST_DRAWDOWNS) -> pd.DataFrame:
    """The n deepest drawdowns, deepest first."""
    return drawdown_periods(returns, ts, worst=n)


def calendar_returns(returns, ts, frequency: str) -> pd.Series:
    """Compounded returns per calendar period, "year" (index: year) or "month" (index: (year, month)), UTC."""
    series = pd.Series(np.nan_to_num(np.asarray(returns, dtype=np.float64)), index=_utc(ts))
    keys = [series.index.year] if frequency == "year" else [series.index.year, series.index.month]
    if frequency not in ("year", "month"):
        raise ValueError(f"calendar_returns: frequency must be 'year' or 'month', got {frequency!r}")
    return (1.0 + series).groupby(keys).prod() - 1.0


def yearly_returns(returns, benchmark_returns, ts) -> pd.DataFrame:
    table = pd.DataFrame({"strategy": calendar_returns(returns, ts, "year"),
                          "benchmark": calendar_returns(benchmark_returns, ts, "year")})
    table["excess"] = table["strategy"] - table["benchmark"]
    table.index.name = "year"
    return table


def monthly_returns(returns, ts) -> pd.DataFrame:
    """Years as rows, Jan..Dec as columns, NaN where a month has no bars."""
    table = calendar_returns(returns, ts, "month").unstack().reindex(columns=range(1, 13))
    table.index.name, table.columns = "year", list(MONTH_NAMES)
    return table


def distribution_returns(returns, benchmark_returns, ts, periods_per_year: float) -> tuple[pd.DataFrame, str]:
    """(returns per day when there is more than one bar a day, else per bar; "day" or "bar")."""
    times = _utc(ts)
    frame = pd.DataFrame({"strategy": np.nan_to_num(np.asarray(returns, dtype=np.float64)),
                          "benchmark": np.nan_to_num(np.asarray(benchmark_returns, dtype=np.float64))}, index=times)
    if len(times) > 1 and (times[1:] - times[:-1]).min() < pd.Timedelta(days=1):
        daily = (1.0 + frame).groupby(times.floor("D")).prod() - 1.0
        return daily.reset_index(drop=True), "day"
    return frame.reset_index(drop=True), "bar"


def tearsheet(returns, benchmark_returns, ts, periods_per_year: float, n_drawdowns: int = WORST_DRAWDOWNS) -> Tearsheet:
    """Every tearsheet statistic of a strategy's per-bar returns against its benchmark's on the same bars."""
    distribution, period = distribution_returns(returns, benchmark_returns, ts, periods_per_year)
    return Tearsheet(
        periods_per_year=float(periods_per_year),
        annualisation=Annualisation.infer(periods_per_year).describe(),
        relative=relative_metrics(returns, benchmark_returns, periods_per_year),
        drawdowns=worst_drawdowns(returns, ts, n_drawdowns),
        yearly=yearly_returns(returns, benchmark_returns, ts),
        monthly=monthly_returns(returns, ts),
        distribution=distribution,
        distribution_period=period,
    )


def tearsheet_of(result, n_drawdowns: int = WORST_DRAWDOWNS) -> Tearsheet:
    """The tearsheet of an engine.backtest.engine.BacktestResult against its buy-and-hold benchmark."""
    return tearsheet(result.portfolio_net_returns, result.benchmark.net_returns, result.inputs.ts,
                     result.metrics.periods_per_year, n_drawdowns)


def _utc(ts) -> pd.DatetimeIndex:
    index = pd.DatetimeIndex(ts)
    return index.tz_localize("UTC") if index.tz is None else index.tz_convert("UTC")
