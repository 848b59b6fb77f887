"""When bars should exist: a market's hours, the spacing of bars against an interval, unfinished bars, gaps.

Two kinds of market: one that trades around the clock (crypto: every period has a bar) and US equities on the
NYSE calendar (sessions on weekdays that are not holidays, early closes included; exchange_calendars' "XNYS").
Which one a file holds is read from the data when it can be (bars on days the NYSE is closed), else from the
symbol (`market_hours`).

- `check_spacing`: the median spacing of consecutive bars within sessions (gaps over SESSION_GAP_FACTOR
  intervals are nights, weekends and holidays, and are left out) must be the interval the bars are imported as.
- `partial_last_bar`: a last bar whose period was not over when the file was written (or is not over now) holds
  a price that was still moving; it is dropped.
- `count_missing`: sessions (NYSE) or periods (24/7) between the first and the last bar that have no bar.

The calendar is computed from rules by exchange_calendars: nothing is downloaded.
"""
from __future__ import annotations

import functools
import re
import warnings
from dataclasses import dataclass

import numpy as np
import pandas as pd

from storage.config import INTERVAL_SECONDS

AROUND_THE_CLOCK = "24/7"
NYSE = "XNYS"  # exchange_calendars' name for the New York Stock Exchange
NYSE_ZONE = "America/New_York"

# Gaps wider than this many intervals are market closures (nights, weekends, holidays), not bar spacing.
SESSION_GAP_FACTOR = 3
# The median spacing may differ from the interval by this fraction (daily bars stamped at local midnight are
# 23 or 25 hours apart across a DST change). Supported intervals differ by a factor of 2 or more.
SPACING_TOLERANCE = 0.10
# A market whose bars fall on NYSE-closed days (weekends, holidays) more often than this trades around the
# clock; at or below it the odd bar is a vendor's stray row, counted and shown, not a different market.
CLOSED_DAY_SHARE = 0.05
MAX_MISSING_SHOWN = 5

# Bases (and quotes) of common crypto assets, for symbols like BTC, BTC-USD, BTCUSDT, ETH/USDT.
CRYPTO_ASSETS: frozenset[str] = frozenset(
    "BTC XBT ETH SOL XRP DOGE ADA LTC BNB DOT AVAX LINK TRX BCH XLM MATIC POL TON SHIB UNI ATOM ETC".split()
)
_CRYPTO_QUOTES = ("USDT", "USDC", "BUSD", "FDUSD", "USD", "EUR", "BTC", "ETH")


class IntervalMismatchError(ValueError):
    """Bars whose spacing says they are not of the interval they are imported as."""


@dataclass(frozen=True)
class MarketHours:
    calendar: str  # AROUND_THE_CLOCK or NYSE
    basis: str  # why, in words

    @property
    def around_the_clock(self) -> bool:
        return self.calendar == AROUND_THE_CLOCK

    def describe(self) -> str:
        name = "24/7" if self.around_the_clock else "NYSE sessions (XNYS)"
        return f"{name}: {self.basis}"


@dataclass(frozen=True)
class PartialBar:
    ts: pd.Timestamp  # the bar's open
    period_end: pd.Timestamp  # when its period ends (a session's close for a daily equity bar)
    reference: pd.Timestamp  # the time it was judged against
    reference_is_file_time: bool  # True: the file's modification time; False: now

    def describe(self) -> str:
        when = "the file was last written" if self.reference_is_file_time else "now"
        return (
            f"{self.ts:%Y-%m-%d %H:%M} UTC dropped: its period ends {self.period_end:%Y-%m-%d %H:%M} UTC, "
            f"after {when} ({self.reference:%Y-%m-%d %H:%M} UTC)"
        )


@dataclass(frozen=True)
class Missing:
    unit: str  # "sessions" (NYSE) or "periods" (24/7)
    expected: int  # sessions or periods from the first bar's to the last bar's, inclusive
    missing: int
    first_missing: tuple[str, ...]  # the first few, as dates ("2024-01-17") or times ("2024-01-17 14:00")
    bars_on_closed_days: int = 0  # NYSE only: bars dated on a weekend or holiday
    first_closed_days: tuple[str, ...] = ()

    def describe(self) -> str:
        text = f"{self.missing:,} of {self.expected:,} {self.unit}"
        if self.first_missing:
            text += " (" + ", ".join(self.first_missing) + (", ..." if self.missing > len(self.first_missing) else "")
            text += ")"
        return text


def _sorted_unique(values: np.ndarray) -> np.ndarray:
    """np.unique for arrays that are almost always sorted already (bar times): a sort and a diff, no hashing
    (numpy's hash-based unique takes ~0.3 s per million int64)."""
    values = np.sort(values, kind="stable")
    if len(values) < 2:
        return values
    return values[np.concatenate(([True], values[1:] != values[:-1]))]


# --- the calendar -------------------------------------------------------------------------------------------


@functools.lru_cache(maxsize=8)
def _nyse_calendar(first_year: int, last_year: int):
    import exchange_calendars  # about half a second to import: only when a file is checked

    with warnings.catch_warnings():
        # exchange_calendars 4.13 reads Series.values of tz-aware columns, which pandas 3.1 deprecates.
        warnings.simplefilter("ignore", DeprecationWarning)
        warnings.simplefilter("ignore", FutureWarning)
        return exchange_calendars.get_calendar(NYSE, start=f"{first_year}-01-01", end=f"{last_year}-12-31")


def nyse_schedule(first: pd.Timestamp, last: pd.Timestamp) -> pd.DataFrame:
    """NYSE sessions covering the years of first..last: index = session date (naive), columns open/close (UTC)."""
    calendar = _nyse_calendar(max(first.year, 1885), max(last.year, first.year, 1885))
    return calendar.schedule[["open", "close"]]


def session_dates(ts: pd.Series, interval: str) -> np.ndarray:
    """The trading date each bar belongs to, in New York, as datetime64[D].

    Intraday bars: the New York date of the bar's open. Daily bars are stamped at midnight UTC (Yahoo dates,
    Databento, Binance), at midnight New York (Polygon, Alpaca, yfinance with zones) or at the open; twelve
    hours after the stamp, in New York, is the same calendar day for all three.
    """
    local = pd.DatetimeIndex(ts).tz_convert(NYSE_ZONE)
    if INTERVAL_SECONDS[interval] >= 86_400:
        local = local + pd.Timedelta(hours=12)
    return local.tz_localize(None).normalize().to_numpy().astype("datetime64[D]")


def looks_like_crypto(symbol: str) -> bool:
    """BTC, BTC-USD, BTCUSDT, ETH/USDT: a crypto asset by its name (a pair with "/" always is)."""
    name = symbol.upper()
    if "/" in name:
        return True
    base = re.split(r"[-_:]", name)[0]
    if base in CRYPTO_ASSETS:
        return True
    return any(base.endswith(q) and base[: -len(q)] in CRYPTO_ASSETS for q in _CRYPTO_QUOTES)


def market_hours(ts: pd.Series, interval: str, symbol: str) -> MarketHours:
    """24/7 or NYSE sessions, from the data when the file spans a day the NYSE is closed, else from the symbol."""
    dates = session_dates(ts, interval)
    days = _sorted_unique(dates)
    schedule = nyse_schedule(pd.Timestamp(days[0]), pd.Timestamp(days[-1]))
    sessions = schedule.index.to_numpy().astype("datetime64[D]")
    bar_on_closed_day = ~np.isin(dates, sessions)
    all_days = np.arange(days[0], days[-1] + 1)
    closed_days_spanned = int((~np.isin(all_days, sessions)).sum())
    share = bar_on_closed_day.mean()
    if share > CLOSED_DAY_SHARE:
        closed_with_bars = len(_sorted_unique(dates[bar_on_closed_day]))
        return MarketHours(
            AROUND_THE_CLOCK, f"bars on {closed_with_bars} day(s) the NYSE is closed (weekends, holidays)"
        )
    if closed_days_spanned:
        return MarketHours(NYSE, f"no bars on the {closed_days_spanned} weekend/holiday day(s) the file spans")
    if looks_like_crypto(symbol):
        return MarketHours(AROUND_THE_CLOCK, f"the file spans no weekend; {symbol} is a crypto symbol")
    return MarketHours(NYSE, f"the file spans no weekend; {symbol} is taken for a US equity")


# --- spacing ------------------------------------------------------------------------------------------------


def duration_text(seconds: float) -> str:
    """60 -> "1 min", 86400 -> "1 day", 5400 -> "90 min"."""
    for size, singular, plural in ((86_400, "day", "days"), (3600, "h", "h"), (60, "min", "min"), (1, "s", "s")):
        if seconds >= size and seconds % size == 0:
            count = int(seconds // size)
            return f"{count} {singular if count == 1 else plural}"
    return f"{seconds:g} s"


def interval_named(seconds: float) -> str | None:
    """The supported interval within SPACING_TOLERANCE of this spacing, if any."""
    return next(
        (name for name, size in INTERVAL_SECONDS.items() if abs(seconds - size) <= SPACING_TOLERANCE * size), None
    )


def check_spacing(ts: pd.Series, interval: str, origin: str) -> str:
    """Raise IntervalMismatchError unless the bars' median spacing within sessions is `interval`.

    Returns how the spacing was found, for the import report ("median 1 day within sessions").
    """
    stamps = pd.DatetimeIndex(ts).as_unit("us").asi8
    gaps = np.diff(_sorted_unique(stamps)) / 1e6  # seconds
    if len(gaps) == 0:
        return "not checked: a single bar"
    bar = INTERVAL_SECONDS[interval]
    within = gaps[gaps <= SESSION_GAP_FACTOR * bar]
    if len(within) and abs(np.median(within) - bar) <= SPACING_TOLERANCE * bar:
        gaps = "gap" if len(within) == 1 else "gaps"
        return f"median {duration_text(float(np.median(within)))} within sessions, over {len(within):,} {gaps}"
    # The claim does not fit: say what the data looks like on its own terms. Its short gaps (the 10th
    # percentile) are bar spacing; the median of the gaps up to three times that is the bar size.
    reference = np.percentile(gaps, 10)
    typical = float(np.median(gaps[gaps <= SESSION_GAP_FACTOR * reference]))
    name = interval_named(typical)
    advice = (
        f"import with --interval {name}"
        if name
        else f"which is none of the supported intervals ({', '.join(INTERVAL_SECONDS)})"
    )
    raise IntervalMismatchError(
        f"{origin}: bars are {duration_text(round(typical))} apart (median), not {interval}: {advice}"
    )


# --- the last bar -------------------------------------------------------------------------------------------


def period_end(ts: pd.Timestamp, interval: str, hours: MarketHours) -> pd.Timestamp:
    """When the bar opening at ts is over: ts + interval, or the session's close where that comes first (a
    daily equity bar ends at the close; the last hourly bar of a session at 16:00 New York, or 13:00 on an
    early close)."""
    end = ts + pd.Timedelta(seconds=INTERVAL_SECONDS[interval])
    if hours.around_the_clock:
        return end
    (day,) = session_dates(pd.Series([ts]), interval)
    schedule = nyse_schedule(ts, ts)
    key = pd.Timestamp(day)
    if key not in schedule.index:
        return end
    close = schedule.loc[key, "close"].tz_convert("UTC")
    if INTERVAL_SECONDS[interval] >= 86_400:
        return close
    return close if ts < close < end else end


def partial_last_bar(
    ts: pd.Series, interval: str, hours: MarketHours, saved_at: pd.Timestamp | None, now: pd.Timestamp
) -> tuple[PartialBar | None, str | None]:
    """The last bar, if its period was not over when the file was written (saved_at) or is not over now.

    Returns (the partial bar or None, a note when saved_at could not be used). A file cannot hold a bar that
    opened after it was written, so a modification time before the last bar's open is wrong (a copy that
    kept an older time) and only now is used. A bar that opens after now is not partial but wrong (a time zone
    error, most likely): it is left for the caller to refuse.
    """
    last = pd.Timestamp(ts.iloc[-1])
    if last > now:
        return None, None
    end = period_end(last, interval, hours)
    reference, from_file, note = now, False, None
    if saved_at is not None:
        if saved_at < last:
            note = (
                f"the file's modification time ({saved_at:%Y-%m-%d %H:%M} UTC) is before its last bar opens: "
                "not used to judge the last bar"
            )
        elif saved_at < now:
            reference, from_file = saved_at, True
    if end > reference:
        return PartialBar(last, end, reference, from_file), note
    return None, note


# --- gaps ---------------------------------------------------------------------------------------------------


def count_missing(ts: pd.Series, interval: str, hours: MarketHours) -> Missing:
    """Sessions (NYSE) or periods (24/7) from the first bar to the last without a bar."""
    if hours.around_the_clock:
        return _missing_periods(ts, interval)
    return _missing_sessions(ts, interval)


def _missing_periods(ts: pd.Series, interval: str) -> Missing:
    bar_us = INTERVAL_SECONDS[interval] * 1_000_000
    stamps = _sorted_unique(pd.DatetimeIndex(ts).as_unit("us").asi8)
    steps = np.rint(np.diff(stamps) / bar_us).astype(np.int64)  # 1 where consecutive, k where k - 1 are missing
    absent = np.maximum(steps - 1, 0)
    shown: list[str] = []
    daily = INTERVAL_SECONDS[interval] >= 86_400
    for i in np.flatnonzero(absent)[:MAX_MISSING_SHOWN]:
        for k in range(1, min(absent[i], MAX_MISSING_SHOWN - len(shown)) + 1):
            stamp = pd.Timestamp(stamps[i] + k * bar_us, unit="us", tz="UTC")
            shown.append(f"{stamp:%Y-%m-%d}" if daily else f"{stamp:%Y-%m-%d %H:%M}")
        if len(shown) >= MAX_MISSING_SHOWN:
            break
    expected = int(steps.sum()) + 1
    return Missing("periods", expected, int(absent.sum()), tuple(shown))


def _missing_sessions(ts: pd.Series, interval: str) -> Missing:
    dates = session_dates(ts, interval)
    schedule = nyse_schedule(pd.Timestamp(dates.min()), pd.Timestamp(dates.max()))
    sessions = schedule.index.to_numpy().astype("datetime64[D]")
    spanned = sessions[(sessions >= dates.min()) & (sessions <= dates.max())]
    absent = spanned[~np.isin(spanned, dates)]
    closed = _sorted_unique(dates[~np.isin(dates, sessions)])
    on_closed = int((~np.isin(dates, sessions)).sum())
    return Missing(
        "sessions",
        len(spanned),
        len(absent),
        tuple(str(d) for d in absent[:MAX_MISSING_SHOWN]),
        on_closed,
        tuple(str(d) for d in closed[:MAX_MISSING_SHOWN]),
    )
