"""Performance metrics of a return series, and how much of a Sharpe ratio survives the settings that were tried.

Conventions (checked against the reference values in tests/engine/test_metrics.py):
- returns are simple per-bar returns; NaN means "no observation" and is dropped;
- Sharpe = mean / sample std (ddof=1) x sqrt(periods_per_year), risk-free rate 0 (cash is already in the returns);
- Sortino = mean / sqrt(mean of squared negative returns, over ALL bars) x sqrt(periods_per_year);
- drawdown is measured on compounded equity that starts at 1 before the first bar: equity / running peak - 1.
  The reference drawdowns (-2%, -10%) come out exactly this way; additive P&L would give -1.98% relative to its
  1.01 peak, and in absolute terms agrees on the references but makes two -10% bars -20% instead of -19%;
- a ratio whose denominator is zero (no variance, no losing bar, no drawdown) is undefined: None, never 0 or inf.

- win rate, profit factor and average trade are per trade when given trade returns (as the backtest does);
  turnover (annualised |position change|) and exposure (share of bars in the market) read positions.

The return-series metrics have a `*_rows` form along the last axis of an (..., T) array (NaN = undefined), which
the parameter sweep uses for many settings at once; the scalar form is that function on one row. `summarise`
computes them all from one equity curve and one set of moments (it runs on every slider move).

Probabilistic and deflated Sharpe ratio: Bailey & Lopez de Prado, "The Sharpe ratio efficient frontier" (2012)
and "The deflated Sharpe ratio" (2014).
"""
from __future__ import annotations

import math
from collections.abc import Hashable
from dataclasses import asdict, dataclass, field
from statistics import NormalDist

import numpy as np

# The standard normal from the standard library: scipy.stats costs ~0.8 s to import, on every cold start.
_NORMAL = NormalDist()


# A standard deviation this small relative to the mean is rounding noise of a constant series (e.g. the cash rate).
_ZERO_VARIANCE_RELATIVE = 1e-12
_TINY = np.finfo(np.float64).tiny


# ----------------------------------------------------------------------------------------------- along rows (batch)
def total_return_rows(returns: np.ndarray) -> np.ndarray:
    """Compounded return over the last axis. returns (..., T) -> (...)"""
    return np.prod(1.0 + returns, axis=-1) - 1.0


def cagr_rows(returns: np.ndarray, periods_per_year: float) -> np.ndarray:
    """Compound annual growth rate; -100% once equity is gone. returns (..., T) -> (...)"""
    n = returns.shape[-1]
    if n == 0:
        return np.full(returns.shape[:-1], np.nan)
    return cagr_of_final_equity(np.prod(1.0 + returns, axis=-1), n, periods_per_year)


def cagr_of_final_equity(final_equity, n_bars: int, periods_per_year: float):
    """CAGR from the equity after n_bars bars (starting at 1); works on scalars and arrays."""
    return np.maximum(final_equity, 0.0) ** (periods_per_year / n_bars) - 1.0


def volatility_rows(returns: np.ndarray, periods_per_year: float) -> np.ndarray:
    """Annualised sample standard deviation (ddof=1). returns (..., T) -> (...)"""
    if returns.shape[-1] < 2:
        return np.full(returns.shape[:-1], np.nan)
    return returns.std(axis=-1, ddof=1) * math.sqrt(periods_per_year)


def sharpe_rows(returns: np.ndarray, periods_per_year: float) -> np.ndarray:
    """Annualised Sharpe ratio, NaN where undefined (fewer than 2 bars or no variance). (..., T) -> (...)"""
    return per_period_sharpe_rows(returns) * math.sqrt(periods_per_year)


def per_period_sharpe_rows(returns: np.ndarray) -> np.ndarray:
    """Mean / sample std, not annualised (the unit the probabilistic Sharpe ratio works in). (..., T) -> (...)"""
    if returns.shape[-1] < 2:
        return np.full(returns.shape[:-1], np.nan)
    mean = returns.mean(axis=-1)
    std = returns.std(axis=-1, ddof=1)
    undefined = std <= _ZERO_VARIANCE_RELATIVE * np.maximum(np.abs(mean), _TINY)
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(undefined, np.nan, mean / np.where(undefined, 1.0, std))


def sortino_rows(returns: np.ndarray, periods_per_year: float) -> np.ndarray:
    """Mean over downside deviation (target 0), annualised; NaN without a losing bar. (..., T) -> (...)"""
    if returns.shape[-1] == 0:
        return np.full(returns.shape[:-1], np.nan)
    downside = np.sqrt(np.mean(np.square(np.minimum(returns, 0.0)), axis=-1))
    mean = returns.mean(axis=-1)
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(downside > 0, mean / np.where(downside > 0, downside, 1.0), np.nan) * math.sqrt(
            periods_per_year
        )


def drawdown_rows(returns: np.ndarray) -> np.ndarray:
    """Drawdown of compounded equity (starting at 1) after each bar, <= 0. (..., T) -> (..., T)"""
    equity = np.cumprod(1.0 + returns, axis=-1)
    return drawdown_of_equity(equity)


def drawdown_of_equity(equity: np.ndarray) -> np.ndarray:
    """equity (..., T) with an implicit 1 before the first bar -> drawdown (..., T), <= 0."""
    drawdown = np.maximum(equity, 1.0)
    np.maximum.accumulate(drawdown, axis=-1, out=drawdown)  # running peak
    np.divide(equity, drawdown, out=drawdown)
    drawdown -= 1.0
    return drawdown


def max_drawdown_rows(returns: np.ndarray) -> np.ndarray:
    """Deepest drawdown (a negative fraction, 0 if equity never fell). (..., T) -> (...)"""
    if returns.shape[-1] == 0:
        return np.zeros(returns.shape[:-1])
    return np.minimum(drawdown_rows(returns).min(axis=-1), 0.0)


def max_drawdown_duration_rows(returns: np.ndarray) -> np.ndarray:
    """Longest run of bars spent below a previous equity peak (to recovery or the end). (..., T) -> (...) int"""
    return underwater_duration_of_drawdown(drawdown_rows(returns))


def underwater_duration_of_drawdown(drawdown: np.ndarray) -> np.ndarray:
    """drawdown (..., T) -> longest underwater run in bars (...), int64."""
    n = drawdown.shape[-1]
    if drawdown.ndim == 1:
        # Bars at a peak split the series; the longest gap between them (the start counts as a peak) is the answer.
        peaks = np.flatnonzero(drawdown >= 0.0)
        return np.int64(np.diff(peaks, prepend=-1, append=n).max() - 1)
    if n == 0:
        return np.zeros(drawdown.shape[:-1], dtype=np.int64)
    index = np.arange(n)
    # Index of the last bar at a peak (-1: the starting equity of 1), carried forward; bars since it are underwater.
    last_peak = np.maximum.accumulate(np.where(drawdown >= 0.0, index, -1), axis=-1)
    return (index - last_peak).max(axis=-1)


def calmar_rows(returns: np.ndarray, periods_per_year: float) -> np.ndarray:
    """CAGR / |max drawdown|, NaN when there was no drawdown. (..., T) -> (...)"""
    depth = -max_drawdown_rows(returns)
    growth = cagr_rows(returns, periods_per_year)
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(depth > 0, growth / np.where(depth > 0, depth, 1.0), np.nan)


# ------------------------------------------------------------------------------------------ one series (scalar)
def clean_returns(returns: np.ndarray | list[float], name: str = "returns") -> np.ndarray:
    """A 1-D float array with the NaN observations dropped; infinities are an error."""
    values = np.asarray(returns, dtype=np.float64)
    if values.ndim != 1:
        raise ValueError(f"{name} must be 1-D, got shape {values.shape}")
    if np.isfinite(values).all():  # the common case, one pass
        return values
    values = values[~np.isnan(values)]
    if not np.all(np.isfinite(values)):
        raise ValueError(f"{name} contains infinite values at positions {np.flatnonzero(~np.isfinite(values))[:5]}")
    return values


def _scalar(value: np.ndarray) -> float | None:
    value = float(value)
    return None if math.isnan(value) else value


def total_return(returns) -> float | None:
    r = clean_returns(returns)
    return _scalar(total_return_rows(r)) if r.size else None


def cagr(returns, periods_per_year: float) -> float | None:
    return _scalar(cagr_rows(clean_returns(returns), periods_per_year))


def annualised_volatility(returns, periods_per_year: float) -> float | None:
    return _scalar(volatility_rows(clean_returns(returns), periods_per_year))


def sharpe_ratio(returns, periods_per_year: float) -> float | None:
    """Annualised Sharpe ratio; None ("undefined") for fewer than 2 bars or zero variance."""
    return _scalar(sharpe_rows(clean_returns(returns), periods_per_year))


def sortino_ratio(returns, periods_per_year: float) -> float | None:
    return _scalar(sortino_rows(clean_returns(returns), periods_per_year))


def max_drawdown(returns) -> float:
    return float(max_drawdown_rows(clean_returns(returns)))


def max_drawdown_duration(returns) -> int:
    """Longest stretch, in bars, spent below an earlier equity peak."""
    return int(max_drawdown_duration_rows(clean_returns(returns)))


def calmar_ratio(returns, periods_per_year: float) -> float | None:
    return _scalar(calmar_rows(clean_returns(returns), periods_per_year))


def win_rate(returns) -> float | None:
    """Share of observations (trades, or bars) with a positive return; None when there are none."""
    r = clean_returns(returns)
    return float(np.mean(r > 0)) if r.size else None


def profit_factor(returns) -> float | None:
    """Sum of gains / sum of losses; None without a loss."""
    r = clean_returns(returns)
    losses = -r[r < 0].sum()
    return float(r[r > 0].sum() / losses) if losses > 0 else None


def average_trade(trade_returns) -> float | None:
    r = clean_returns(trade_returns, "trade_returns")
    return float(r.mean()) if r.size else None


def _positions_by_asset(positions, weights) -> tuple[np.ndarray, np.ndarray]:
    """positions (T,) or (T, A) -> a time-last (A, T) view and weights (A,)."""
    values = np.asarray(positions, dtype=np.float64)
    if values.ndim == 1:
        values = values[:, None]
    if values.ndim != 2:
        raise ValueError(f"positions must be (T,) or (T, A), got shape {values.shape}")
    n_assets = values.shape[1]
    w = np.full(n_assets, 1.0 / n_assets) if weights is None else np.asarray(weights, dtype=np.float64)
    if w.shape != (n_assets,):
        raise ValueError(f"weights must have one value per asset ({n_assets}), got shape {w.shape}")
    return values.T, w


def turnover(positions, periods_per_year: float, weights=None) -> float | None:
    """Annualised turnover: sum of |position changes| (from flat before the first bar) per year.

    1.0 means the whole book is traded once a year; a portfolio weights each asset's changes by `weights`.
    """
    by_asset, w = _positions_by_asset(positions, weights)
    n_bars = by_asset.shape[1]
    if n_bars == 0:
        return None
    per_asset = np.abs(np.diff(by_asset, axis=1)).sum(axis=1) + np.abs(by_asset[:, 0])  # (A,)
    return float(per_asset @ w / n_bars * periods_per_year)


def exposure(positions, weights=None) -> float | None:
    """Share of bars with an open position (in any asset with non-zero weight)."""
    by_asset, w = _positions_by_asset(positions, weights)
    if by_asset.shape[1] == 0:
        return None
    return float(np.mean((by_asset[w > 0] != 0).any(axis=0)))


# ----------------------------------------------------------------------------------- probabilistic Sharpe ratio
def probabilistic_sharpe_ratio(
    sharpe: float, n_obs: int, skew: float = 0.0, kurtosis: float = 3.0, benchmark: float = 0.0
) -> float | None:
    """P(true Sharpe > benchmark) given an observed per-period Sharpe over n_obs bars (kurtosis: 3 = normal).

    PSR = Phi((SR - SR*) sqrt(n - 1) / sqrt(1 - skew SR + (kurtosis - 1) / 4 SR^2)).
    """
    if n_obs < 2:
        return None
    variance_term = 1.0 - skew * sharpe + (kurtosis - 1.0) / 4.0 * sharpe**2
    if not variance_term > 0:
        return None  # moments so extreme the normal approximation breaks down
    return float(_NORMAL.cdf((sharpe - benchmark) * math.sqrt(n_obs - 1) / math.sqrt(variance_term)))


def expected_maximum_sharpe(n_trials: int, sharpe_variance: float = 1.0) -> float:
    """Expected largest of n_trials Sharpe ratios drawn with zero mean and this variance (false strategy theorem).

    E[max] = sqrt(V) ((1 - g) Phi^-1(1 - 1/N) + g Phi^-1(1 - 1/(N e))), g = Euler-Mascheroni. One trial: 0.
    """
    if n_trials < 1:
        raise ValueError(f"expected_maximum_sharpe: n_trials must be >= 1, got {n_trials}")
    if sharpe_variance < 0:
        raise ValueError(f"expected_maximum_sharpe: sharpe_variance must be >= 0, got {sharpe_variance}")
    if n_trials == 1:
        return 0.0
    gamma = np.euler_gamma
    z = (1 - gamma) * _NORMAL.inv_cdf(1 - 1 / n_trials) + gamma * _NORMAL.inv_cdf(1 - 1 / (n_trials * math.e))
    return float(math.sqrt(sharpe_variance) * z)


@dataclass(frozen=True)
class ReturnMoments:
    """Sample moments of a return series, each computed once (summarise runs on every slider move)."""

    n: int
    mean: float
    std: float  # ddof = 1
    skew: float  # biased sample skew, as scipy.stats.skew
    kurtosis: float  # biased, 3 = normal, as scipy.stats.kurtosis(fisher=False)
    downside: float  # sqrt(mean of squared negative returns), over all bars

    @classmethod
    def of(cls, returns: np.ndarray) -> ReturnMoments:
        """returns: 1-D, already cleaned; at least 2 values."""
        n = returns.size
        mean = float(returns.mean())
        # einsum, not np.dot: OpenBLAS threads a long dot product, and on two shared cores that costs 10x.
        deviations = returns - mean
        m2 = float(np.einsum("i,i->", deviations, deviations)) / n
        std = math.sqrt(m2 * n / (n - 1))
        skew, kurtosis = 0.0, 3.0
        if m2 > 0:
            standardised = np.divide(deviations, math.sqrt(m2), out=deviations)  # m2**2 can underflow
            squared = standardised * standardised
            skew = float(np.einsum("i,i->", squared, standardised)) / n
            kurtosis = float(np.einsum("i,i->", squared, squared)) / n
        losses = np.minimum(returns, 0.0, out=deviations)
        downside = math.sqrt(float(np.einsum("i,i->", losses, losses)) / n)
        return cls(n, mean, std, skew, kurtosis, downside)

    @property
    def sharpe_per_period(self) -> float | None:
        """mean / std; None with no variance (same rule as per_period_sharpe_rows)."""
        if self.std <= _ZERO_VARIANCE_RELATIVE * max(abs(self.mean), _TINY):
            return None
        return self.mean / self.std


def return_moments(returns) -> tuple[float | None, int, float, float]:
    """(per-period Sharpe or None, n, skew, kurtosis (3 = normal)) of a return series, NaN dropped."""
    r = clean_returns(returns)
    if r.size < 2:
        return None, r.size, 0.0, 3.0
    moments = ReturnMoments.of(r)
    return moments.sharpe_per_period, moments.n, moments.skew, moments.kurtosis


def probabilistic_sharpe_of(returns, benchmark: float = 0.0) -> float | None:
    """PSR of a return series against a per-period benchmark Sharpe; None when its Sharpe is undefined."""
    sharpe, n, skew, kurt = return_moments(returns)
    return None if sharpe is None else probabilistic_sharpe_ratio(sharpe, n, skew, kurt, benchmark)


@dataclass
class TrialCounter:
    """The distinct settings tried on one data span, with each one's per-period Sharpe ratio.

    The Backtest page records every distinct slider setting and a sweep records all of its cells, so the deflated
    Sharpe ratio knows how many chances the best result had to look good by luck.
    """

    sharpes: dict[Hashable, float | None] = field(default_factory=dict)

    def record(self, setting: Hashable, sharpe_per_period: float | None) -> None:
        self.sharpes[setting] = sharpe_per_period

    @property
    def n_trials(self) -> int:
        return len(self.sharpes)

    def sharpe_variance(self) -> float | None:
        """Variance (ddof=1) of the recorded per-period Sharpe ratios; None with fewer than 2 defined ones."""
        values = np.array([s for s in self.sharpes.values() if s is not None and math.isfinite(s)])
        return float(values.var(ddof=1)) if values.size >= 2 else None

    def reset(self) -> None:
        self.sharpes.clear()


def deflated_sharpe_ratio(
    returns, trials: TrialCounter | int, sharpe_variance: float | None = None
) -> float | None:
    """PSR against the Sharpe ratio the best of N skill-less trials would show by luck.

    The variance across trials is, in order: the one given; the variance of the Sharpe ratios the TrialCounter
    recorded; else the variance of a Sharpe estimate under the null of no skill, 1 / (n - 1) (independent trials,
    which deflates the most).
    """
    sharpe, n, skew, kurt = return_moments(returns)
    if sharpe is None:
        return None
    n_trials = trials.n_trials if isinstance(trials, TrialCounter) else int(trials)
    if sharpe_variance is None and isinstance(trials, TrialCounter):
        sharpe_variance = trials.sharpe_variance()
    if sharpe_variance is None:
        sharpe_variance = 1.0 / (n - 1)
    benchmark = expected_maximum_sharpe(max(n_trials, 1), sharpe_variance)
    return probabilistic_sharpe_ratio(sharpe, n, skew, kurt, benchmark)


# ---------------------------------------------------------------------------------------------------- summary
@dataclass(frozen=True)
class PerformanceSummary:
    """Every headline metric of one return series; None = undefined (see the module docstring)."""

    periods_per_year: float
    n_bars: int
    total_return: float | None
    cagr: float | None
    annualised_volatility: float | None
    sharpe: float | None
    sortino: float | None
    max_drawdown: float
    max_drawdown_duration_bars: int
    calmar: float | None
    probabilistic_sharpe: float | None
    turnover: float | None
    exposure: float | None
    n_trades: int
    win_rate: float | None  # per trade
    profit_factor: float | None  # per trade
    average_trade: float | None

    def as_dict(self) -> dict[str, float | int | None]:
        return asdict(self)


def summarise(
    returns,
    periods_per_year: float,
    positions=None,
    trade_returns=None,
    weights=None,
    equity: np.ndarray | None = None,
) -> PerformanceSummary:
    """All metrics of a per-bar return series; positions (T,) or (T, A) and trade returns when there are any.

    The same definitions as the functions above, computed from one equity curve and one set of moments.
    equity: the compounded returns when the caller has them already (the backtest does); saves a pass.
    """
    r = clean_returns(returns)
    trades = clean_returns([] if trade_returns is None else trade_returns, "trade_returns")
    n = r.size
    annualise = math.sqrt(periods_per_year)

    sharpe = volatility = sortino = psr = None
    if n >= 2:
        moments = ReturnMoments.of(r)
        volatility = moments.std * annualise
        sharpe_per_period = moments.sharpe_per_period
        if sharpe_per_period is not None:
            sharpe = sharpe_per_period * annualise
            psr = probabilistic_sharpe_ratio(sharpe_per_period, n, moments.skew, moments.kurtosis)
        if moments.downside > 0:
            sortino = moments.mean / moments.downside * annualise

    if equity is None:
        equity = np.cumprod(np.add(r, 1.0))
    elif equity.shape != r.shape:
        raise ValueError(f"summarise: equity has shape {equity.shape}, returns (NaN dropped) {r.shape}")
    drawdown = drawdown_of_equity(equity)
    deepest = float(min(drawdown.min(), 0.0)) if n else 0.0
    growth = float(cagr_of_final_equity(equity[-1], n, periods_per_year)) if n else None
    return PerformanceSummary(
        periods_per_year=float(periods_per_year),
        n_bars=int(n),
        total_return=float(equity[-1] - 1.0) if n else None,
        cagr=growth,
        annualised_volatility=volatility,
        sharpe=sharpe,
        sortino=sortino,
        max_drawdown=deepest,
        max_drawdown_duration_bars=int(underwater_duration_of_drawdown(drawdown)),
        calmar=None if growth is None or deepest == 0 else growth / -deepest,
        probabilistic_sharpe=psr,
        turnover=None if positions is None else turnover(positions, periods_per_year, weights),
        exposure=None if positions is None else exposure(positions, weights),
        n_trades=int(trades.size),
        win_rate=win_rate(trades),
        profit_factor=profit_factor(trades),
        average_trade=average_trade(trades),
    )
