"""How many bars make a year, and saying so in words.

Annualised figures (CAGR, volatility, Sharpe) depend on the number of bars per year, and libraries disagree
(vectorbt counts 365 days, quantstats 252): every backtest states the convention it used.

- crypto trades around the clock: 365 days x bars per day (24 for hourly bars);
- equities trade in sessions: 252 sessions x bars per session (7 hourly bars for a 6.5 h US session, the last
  one a half-hour bar).

A mixed portfolio (BTC with SPY) lives on the panel clock, which is the 24/7 clock of the crypto asset: the equity
sleeve simply carries its position at zero return while its market is closed. So portfolio-level figures annualise
with the fastest clock in the panel, and per-asset figures with each asset's own clock (see `portfolio_bars_per_year`).
"""
from __future__ import annotations

import math
import re
from collections.abc import Sequence
from dataclasses import dataclass

CRYPTO_DAYS_PER_YEAR = 365
EQUITY_SESSIONS_PER_YEAR = 252
EQUITY_SESSION_MINUTES = 390  # US regular session, 09:30-16:00

_INTERVAL_PATTERN = re.compile(r"^(\d+)(m|h|d)$")
_INTERVAL_MINUTES = {"m": 1, "h": 60, "d": 24 * 60}


@dataclass(frozen=True)
class Annualisation:
    """One asset's clock: `days_per_year` trading days of `bars_per_day` bars each."""

    days_per_year: int
    bars_per_day: float
    market: str  # "crypto", "equities" or "other"

    def __post_init__(self) -> None:
        if self.days_per_year <= 0 or not self.bars_per_day > 0:
            raise ValueError(
                f"Annualisation: days_per_year and bars_per_day must be positive, got "
                f"{self.days_per_year} and {self.bars_per_day}"
            )

    @classmethod
    def crypto(cls, bars_per_day: float) -> Annualisation:
        return cls(CRYPTO_DAYS_PER_YEAR, bars_per_day, "crypto")

    @classmethod
    def equities(cls, bars_per_session: float) -> Annualisation:
        return cls(EQUITY_SESSIONS_PER_YEAR, bars_per_session, "equities")

    @classmethod
    def from_interval(cls, interval: str, market: str) -> Annualisation:
        """From a bar interval such as "1h", "15m" or "1d" and a market ("crypto" or "equities")."""
        match = _INTERVAL_PATTERN.match(interval.strip())
        if match is None:
            raise ValueError(f"Annualisation.from_interval: unsupported interval {interval!r}; use e.g. 5m, 1h, 1d")
        minutes = int(match.group(1)) * _INTERVAL_MINUTES[match.group(2)]
        if minutes <= 0 or minutes > 24 * 60:
            raise ValueError(f"Annualisation.from_interval: interval {interval!r} must be between 1m and 1d")
        if market == "crypto":
            return cls.crypto(24 * 60 / minutes)
        if market == "equities":
            # A session that is not a whole number of bars ends on a short bar (yfinance's 15:30 hourly bar).
            return cls.equities(1 if minutes >= 24 * 60 else math.ceil(EQUITY_SESSION_MINUTES / minutes))
        raise ValueError(f"Annualisation.from_interval: market must be 'crypto' or 'equities', got {market!r}")

    @classmethod
    def infer(cls, bars_per_year: float) -> Annualisation:
        """Recognise a bars-per-year figure as 365 x n (crypto) or 252 x n (equities), else say it as it is."""
        if not bars_per_year > 0:
            raise ValueError(f"Annualisation.infer: bars_per_year must be positive, got {bars_per_year}")
        for days, market in ((CRYPTO_DAYS_PER_YEAR, "crypto"), (EQUITY_SESSIONS_PER_YEAR, "equities")):
            per_day = bars_per_year / days
            if abs(per_day - round(per_day)) < 1e-9 and round(per_day) >= 1:
                return cls(days, float(round(per_day)), market)
        return cls(1, float(bars_per_year), "other")

    @property
    def bars_per_year(self) -> float:
        return self.days_per_year * self.bars_per_day

    def describe(self) -> str:
        """E.g. "365 days x 24 bars/day = 8,760 bars/year (crypto)"."""
        per_day = _format_number(self.bars_per_day)
        total = _format_number(self.bars_per_year)
        if self.market == "crypto":
            return f"{self.days_per_year} days x {per_day} bars/day = {total} bars/year (crypto)"
        if self.market == "equities":
            return f"{self.days_per_year} sessions x {per_day} bars = {total} bars/year (equities)"
        return f"{total} bars/year"


def portfolio_bars_per_year(bars_per_year: Sequence[float]) -> float:
    """Bars per year of the panel clock that a portfolio of these assets is marked on.

    The panel joins assets on the union of their bar times, so its clock is the fastest asset's clock (24/7 for a
    crypto asset); slower assets carry their positions through the extra bars.
    """
    values = [float(v) for v in bars_per_year]
    if not values or not all(v > 0 for v in values):
        raise ValueError(f"portfolio_bars_per_year: need positive bars_per_year per asset, got {values}")
    return max(values)


def describe_annualisation(
    bars_per_year: float | Sequence[float],
    symbols: Sequence[str] | None = None,
    portfolio_clock: float | None = None,
) -> str:
    """One sentence stating the annualisation used, per asset and, for a mixed portfolio, for the portfolio."""
    values = [float(bars_per_year)] if isinstance(bars_per_year, (int, float)) else [float(v) for v in bars_per_year]
    if symbols is not None and len(symbols) != len(values):
        raise ValueError(f"describe_annualisation: {len(symbols)} symbols for {len(values)} bars_per_year values")
    clock = portfolio_bars_per_year(values) if portfolio_clock is None else float(portfolio_clock)
    distinct = sorted(set(values), reverse=True)
    if len(distinct) == 1 and distinct[0] == clock:
        return Annualisation.infer(clock).describe()
    parts = []
    for value in distinct:
        text = Annualisation.infer(value).describe()
        if symbols is not None:
            names = ", ".join(s for s, v in zip(symbols, values) if v == value)
            text = f"{names}: {text}"
        parts.append(text)
    return (
        "; ".join(parts)
        + f". Portfolio figures use the panel clock, {Annualisation.infer(clock).describe()}: an asset whose market"
        " is closed carries its position at zero return on those bars."
    )


def _format_number(value: float) -> str:
    return f"{value:,.0f}" if float(value).is_integer() else f"{value:,.2f}".rstrip("0").rstrip(".")
