"""From a file read as bars to bars fit to store, with an import report: `prepare_import`.

read_bar_file/load_bar_file (storage.sources.files) parse and validate a file; this module checks the bars
against what the user says they are and against the market's calendar (storage.sessions):

0. daily bars are stamped with their session date at 00:00 UTC, as the yfinance source stores them: a vendor's
   local midnight (05:00 or 04:00 UTC for New York: Yahoo CSVs with offsets, Polygon, Alpaca) is moved to its
   date (normalise_daily_stamps), so a daily bar lands on its date's row of the panel's clock, not the next;
1. bars outside [start, end) are left out (end is exclusive);
2. the interval: a bar size the file states itself (Databento's rtype) and the bars' median spacing within
   sessions must both be the interval they are imported as, else the import is refused (nothing is stored);
3. a last bar whose period was not over when the file was written, or is not over now, is dropped;
4. sessions (NYSE) or periods (24/7) without a bar are counted: a warning in the report, not a refusal;
5. plausibility (plausibility_text): a bar opening before 1970, or before 2009 for a crypto symbol (BTC,
   ETH/USDT, ...), refuses the file; a one-bar move with |log return| above max_log_return (MAX_LOG_RETURN, 3: a
   20-fold move) is flagged in the report and kept, since splits and crashes are real. Prices outside
   [1e-8, 1e9] were refused by validation already.

The import is then written by storage.cache, which refuses bars that would interleave with the series already
stored (bars less than one interval from a stored bar, or off its clock).

The ImportReport says all of it; the refresh CLI prints it, SymbolResult carries it to the Data page, and its
JSON is stored with the import's refresh_log row, so `latest_import_reports` can show it later.
"""
from __future__ import annotations

import dataclasses
import json
import os
from dataclasses import dataclass

import numpy as np
import pandas as pd

from storage.cache import connect, query_frame, query_value
from storage.sessions import (
    IntervalMismatchError,
    check_spacing,
    count_missing,
    looks_like_crypto,
    market_hours,
    partial_last_bar,
)
from storage.sources.files import BarFile
from storage.validation import PRICE_CEILING, PRICE_FLOOR

# The first bar a plausible file holds: nothing here trades before the Unix epoch, and no crypto asset before
# Bitcoin's first block (2009-01-03).
EARLIEST_BAR = pd.Timestamp("1970-01-01", tz="UTC")
EARLIEST_CRYPTO_BAR = pd.Timestamp("2009-01-01", tz="UTC")
# A one-bar close-to-close move with |log return| above this is flagged (a warning; the bar is kept): 3 is a
# 20-fold rise or a 95% fall in one bar, a unit change (cents vs dollars) or a glitch more often than a market.
MAX_LOG_RETURN = 3.0
MAX_JUMPS_SHOWN = 3


def plausibility_text(max_log_return: float = MAX_LOG_RETURN) -> str:
    """The plausibility rules, and which refuse and which warn, for the report."""
    return (
        f"refused: bars before {EARLIEST_BAR:%Y} (before {EARLIEST_CRYPTO_BAR:%Y} for crypto), prices outside "
        f"[{PRICE_FLOOR:g}, {PRICE_CEILING:g}]; warned: one-bar |log return| > {max_log_return:g}"
    )


@dataclass(frozen=True)
class ImportReport:
    origin: str  # the file's name
    symbol: str
    interval: str
    layout: str  # "csv: Databento ohlcv-1h"
    time_column: str  # "ts_event (unix ns)"
    rows_read: int  # data rows in the file
    rows_kept: int  # bars handed to the cache
    rows_repaired: int  # rows of the file whose OHLC were widened by float rounding (OHLC_ROUNDING_TOLERANCE)
    spacing: str  # how the interval was confirmed: "median 1 h within sessions, over 27 gaps"
    market_hours: str  # "NYSE sessions (XNYS): no bars on the 9 weekend/holiday day(s) the file spans"
    calendar: str  # "XNYS" or "24/7"
    missing_unit: str  # "sessions" or "periods"
    expected: int  # sessions/periods from the first bar to the last
    missing: int  # of those, how many have no bar
    first_missing: tuple[str, ...] = ()
    partial_last_bar: str | None = None  # what was dropped and why
    repaired_examples: tuple[str, ...] = ()
    duplicates_dropped: int = 0
    empty_rows_dropped: int = 0
    outside_span: int = 0  # rows left out by --start/--end
    bars_on_closed_days: int = 0  # NYSE: bars dated on a weekend or holiday (kept)
    notes: tuple[str, ...] = ()
    stamps_normalised: int = 0  # daily bars whose stamp was moved to their session date at 00:00 UTC
    date_order: str | None = None  # day/month text dates: "day-first (line 14: '13/01/2021')"
    encoding: str | None = None  # text files: utf-8, utf-8-sig, utf-16, cp1252
    plausibility: str = ""  # the rules checked (plausibility_text)
    jumps_flagged: int = 0  # bars whose close moved more than max_log_return (log) from the previous close: kept
    first_jumps: tuple[str, ...] = ()

    def lines(self) -> list[str]:
        """The report as aligned lines for a terminal."""
        rows = [
            ("layout", self.layout),
            ("time column", self.time_column),
            ("rows read", f"{self.rows_read:,}"),
            ("rows kept", f"{self.rows_kept:,}"),
            ("rows repaired", self._repaired_text()),
            *([("date order", self.date_order)] if self.date_order else []),
            *([("encoding", self.encoding)] if self.encoding not in (None, "utf-8") else []),
            ("partial last bar", self.partial_last_bar or "none"),
            ("interval", f"{self.interval} ({self.spacing})"),
            ("market hours", self.market_hours),
            (f"missing {self.missing_unit}", self._missing_text()),
        ]
        if self.plausibility:
            rows.append(("plausibility", self.plausibility))
            jumps = "none" if not self.jumps_flagged else f"{self.jumps_flagged:,} flagged, kept: " + ", ".join(
                self.first_jumps) + (", ..." if self.jumps_flagged > len(self.first_jumps) else "")
            rows.append(("large moves", jumps))
        if self.duplicates_dropped:
            rows.append(("duplicates dropped", f"{self.duplicates_dropped:,} (identical repeated rows)"))
        if self.empty_rows_dropped:
            rows.append(("empty rows dropped", f"{self.empty_rows_dropped:,} (no prices, no volume)"))
        if self.outside_span:
            rows.append(("outside --start/--end", f"{self.outside_span:,} rows left out"))
        if self.bars_on_closed_days:
            rows.append(("bars on closed days", f"{self.bars_on_closed_days:,} (kept; the NYSE was closed)"))
        if self.stamps_normalised:
            rows.append(("daily stamps", f"{self.stamps_normalised:,} moved to their session date at 00:00 UTC"))
        rows += [("note", note) for note in self.notes]
        width = max(len(name) for name, _ in rows) + 1
        return [f"{name + ':':<{width}} {value}" for name, value in rows]

    def summary(self) -> str:
        """What deserves attention, in one short clause (empty when nothing does)."""
        parts = []
        if self.rows_repaired:
            parts.append(f"{self.rows_repaired:,} rows repaired (float rounding)")
        if self.partial_last_bar:
            parts.append("partial last bar dropped")
        if self.missing:
            shown = ", ".join(self.first_missing[:3]) + (", ..." if self.missing > 3 else "")
            unit = self.missing_unit if self.missing != 1 else self.missing_unit[:-1]
            parts.append(f"{self.missing:,} missing {unit} ({shown})")
        if self.jumps_flagged:
            parts.append(f"{self.jumps_flagged:,} implausibly large one-bar moves flagged ({self.first_jumps[0]})")
        if self.date_order:
            parts.append(f"dates read {self.date_order.split(' ')[0]}")
        return "; ".join(parts)

    def to_json(self) -> str:
        return json.dumps(dataclasses.asdict(self), separators=(",", ":"))

    @classmethod
    def from_json(cls, text: str) -> ImportReport:
        data = json.loads(text)
        known = {f.name: f for f in dataclasses.fields(cls)}
        values = {k: tuple(v) if isinstance(v, list) else v for k, v in data.items() if k in known}
        return cls(**values)

    def _repaired_text(self) -> str:
        if not self.rows_repaired:
            return "0"
        example = f", e.g. {self.repaired_examples[0]}" if self.repaired_examples else ""
        return f"{self.rows_repaired:,} (OHLC off by float rounding; high/low widened{example})"

    def _missing_text(self) -> str:
        text = f"{self.missing:,} of {self.expected:,} ({self.calendar})"
        if self.first_missing:
            more = ", ..." if self.missing > len(self.first_missing) else ""
            text += ": " + ", ".join(self.first_missing) + more
        return text


def prepare_import(
    loaded: BarFile,
    symbol: str,
    interval: str,
    *,
    start: pd.Timestamp | None = None,
    end: pd.Timestamp | None = None,
    now: pd.Timestamp | None = None,
    max_log_return: float = MAX_LOG_RETURN,
) -> tuple[pd.DataFrame, ImportReport]:
    """The bars of `loaded` to store as (symbol, interval), and the report; raises ValueError to refuse.

    start/end: keep bars with start <= ts < end (UTC). now: the clock for the partial-bar check (default: now).
    max_log_return: one-bar moves beyond it are flagged in the report (kept).
    """
    now = pd.Timestamp.now(tz="UTC") if now is None else now
    origin = loaded.origin
    bars = loaded.bars
    notes = []
    normalised, clash = 0, None
    if interval == "1d":
        try:
            bars, normalised, note = normalise_daily_stamps(bars, origin)
        except ValueError as error:  # refused below, unless the interval checks give the better reason
            clash = error
        else:
            notes.extend([note] if note else [])
    outside = 0
    if start is not None or end is not None:  # the mask copies every bar: only when asked
        in_span = pd.Series(True, index=bars.index)
        if start is not None:
            in_span &= bars["ts"] >= start
        if end is not None:
            in_span &= bars["ts"] < end
        outside = int((~in_span).sum())
        bars = bars[in_span].reset_index(drop=True)
    if len(bars) == 0:
        raise ValueError(f"{origin}: none of its {len(loaded.bars):,} bars lie in {_span_text(start, end)}")

    if loaded.stated_interval is not None and loaded.stated_interval != interval:
        raise IntervalMismatchError(
            f"{origin}: the file says its bars are {loaded.stated_interval} ({loaded.layout}), not {interval}: "
            f"import with --interval {loaded.stated_interval}"
        )
    spacing = check_spacing(bars["ts"], interval, origin)
    if clash is not None:
        raise clash
    check_plausible_times(bars["ts"], symbol, origin)
    hours = market_hours(bars["ts"], interval, symbol)
    if loaded.file_symbol and loaded.file_symbol.upper() != symbol.upper():
        notes.append(f"the file's symbol column says {loaded.file_symbol}; stored as {symbol}")

    partial, partial_note = partial_last_bar(bars["ts"], interval, hours, loaded.saved_at, now)
    if partial_note:
        notes.append(partial_note)
    if partial is not None:
        bars = bars.iloc[:-1].reset_index(drop=True)
        if len(bars) == 0:
            raise ValueError(f"{origin}: its only bar is not over yet ({partial.describe()})")
    missing = count_missing(bars["ts"], interval, hours)
    if missing.bars_on_closed_days:
        notes.append("bars on NYSE-closed days: " + ", ".join(missing.first_closed_days))
    jumps, first_jumps = large_moves(bars, max_log_return)

    report = ImportReport(
        origin=origin,
        symbol=symbol,
        interval=interval,
        layout=loaded.layout,
        time_column=loaded.time_reading,
        rows_read=loaded.rows_read,
        rows_kept=len(bars),
        rows_repaired=loaded.rounding_repairs,
        spacing=spacing,
        market_hours=hours.describe(),
        calendar=hours.calendar,
        missing_unit=missing.unit,
        expected=missing.expected,
        missing=missing.missing,
        first_missing=missing.first_missing,
        partial_last_bar=None if partial is None else partial.describe(),
        repaired_examples=loaded.repaired_examples,
        duplicates_dropped=loaded.duplicates_dropped,
        empty_rows_dropped=loaded.empty_rows_dropped,
        outside_span=outside,
        bars_on_closed_days=missing.bars_on_closed_days,
        notes=tuple(notes),
        stamps_normalised=normalised,
        date_order=loaded.date_order,
        encoding=loaded.encoding,
        plausibility=plausibility_text(max_log_return),
        jumps_flagged=jumps,
        first_jumps=first_jumps,
    )
    return bars, report


def check_plausible_times(ts: pd.Series, symbol: str, origin: str) -> None:
    """Refuse bars that open before any market this product reads existed (EARLIEST_BAR, EARLIEST_CRYPTO_BAR)."""
    crypto = looks_like_crypto(symbol)
    earliest = EARLIEST_CRYPTO_BAR if crypto else EARLIEST_BAR
    first = ts.iloc[0]  # sorted
    if first >= earliest:
        return
    early = int((ts < earliest).sum())
    why = f"{symbol} is a crypto asset, and none traded before {earliest:%Y}" if crypto else \
        f"no market data here predates {earliest:%Y}"
    raise ValueError(
        f"{origin}: {early:,} bar(s) open before {earliest:%Y-%m-%d} (the first: {first:%Y-%m-%d %H:%M} UTC): {why}; "
        "check the time column (a two-digit year, an Excel day number, the wrong date format?)"
    )


def large_moves(bars: pd.DataFrame, max_log_return: float) -> tuple[int, tuple[str, ...]]:
    """Bars whose close is more than max_log_return (in log terms) away from the previous bar's close: how many,
    and the first few as text ("2024-01-05 14:00 UTC: close 1.5 -> 150 (log return +4.61)")."""
    close = bars["close"].to_numpy()
    if len(close) < 2:
        return 0, ()
    with np.errstate(divide="ignore", invalid="ignore"):
        moves = np.log(close[1:] / close[:-1])
    flagged = np.flatnonzero(np.abs(moves) > max_log_return)
    shown = tuple(
        f"{bars['ts'].iloc[i + 1]:%Y-%m-%d %H:%M} UTC: close {close[i]:.6g} -> {close[i + 1]:.6g} "
        f"(log return {moves[i]:+.2f})"
        for i in flagged[:MAX_JUMPS_SHOWN]
    )
    return len(flagged), shown


_HALF_DAY = pd.Timedelta(hours=12)


def normalise_daily_stamps(bars: pd.DataFrame, origin: str) -> tuple[pd.DataFrame, int, str | None]:
    """Daily bars stamped with their session date at 00:00 UTC -> (bars, how many stamps moved, a note or None).

    Vendors stamp a daily bar with local midnight of its date, which UTC shows as a time of day: 05:00 (04:00 in
    summer) for New York, 23:00 the day before for Central Europe, 15:00 the day before for Tokyo. A time of day
    up to 12:00 is local midnight west of UTC and names that UTC date; one after 12:00 is local midnight east of
    UTC and names the next. Either way the bar moves no later than its session's close, so no price is dated
    before it happened. Two bars that name one date are refused (the stamps are not daily sessions).
    """
    ts = pd.DatetimeIndex(bars["ts"])
    time_of_day = ts - ts.normalize()
    if not (time_of_day != pd.Timedelta(0)).any():
        return bars, 0, None
    dates = (ts.normalize() + pd.to_timedelta(np.where(time_of_day > _HALF_DAY, 1, 0), unit="D")).as_unit(ts.unit)
    if dates.has_duplicates:
        twice = dates[dates.duplicated()][0]
        stamps = ", ".join(f"{t:%Y-%m-%d %H:%M}" for t in ts[dates == twice])
        raise ValueError(f"{origin}: the daily bars stamped {stamps} UTC both fall on {twice:%Y-%m-%d}: a daily "
                         "file needs one bar per session date (is it really 1d?)")
    moved = time_of_day[time_of_day != pd.Timedelta(0)]
    hours = sorted({f"{int(t.total_seconds() // 3600):02d}:{int(t.total_seconds() % 3600 // 60):02d}" for t in moved})
    note = (f"daily stamps at {'/'.join(hours)} UTC (a vendor's local midnight) stored as their session date at "
            f"00:00 UTC ({len(moved):,} bars), like the yfinance source")
    return bars.assign(ts=dates), len(moved), note


def _span_text(start, end) -> str:
    first = "the beginning" if start is None else f"{start:%Y-%m-%d %H:%M} UTC"
    last = "the end" if end is None else f"{end:%Y-%m-%d %H:%M} UTC (exclusive)"
    return f"[{first}, {last})"


# --- reading reports back -----------------------------------------------------------------------------------

REPORT_COLUMNS: tuple[str, ...] = (
    "symbol", "source", "interval", "imported_at", "path", "layout", "rows_read", "rows_kept", "rows_repaired",
    "partial_last_bar", "calendar", "missing_unit", "expected", "missing", "first_missing",
)

_LATEST_REPORTS = """
SELECT symbol, source, interval, arg_max(finished_at, id) AS imported_at, arg_max(path, id) AS path,
       arg_max(report, id) AS report
FROM refresh_log
WHERE outcome = 'ok' AND report IS NOT NULL
GROUP BY symbol, source, interval
ORDER BY symbol, interval, source
"""


def latest_import_reports(db_path: str | os.PathLike | None = None) -> pd.DataFrame:
    """The newest successful import of each (symbol, source, interval), one row each, as REPORT_COLUMNS.

    For the Data page: missing sessions per symbol (first_missing is a comma-separated text of the first few),
    rows repaired, whether a partial last bar was dropped. A cache written before reports were stored has none.
    """
    with connect(db_path, read_only=True) as con:
        has_reports = query_value(
            con,
            "SELECT count(*) FROM duckdb_columns() WHERE table_name = 'refresh_log' AND column_name = 'report'",
        )
        rows = query_frame(con, _LATEST_REPORTS) if has_reports else pd.DataFrame()
    records = []
    for row in rows.itertuples(index=False):
        report = ImportReport.from_json(row.report)
        records.append(
            {
                "symbol": row.symbol,
                "source": row.source,
                "interval": row.interval,
                "imported_at": row.imported_at,
                "path": row.path,
                "layout": report.layout,
                "rows_read": report.rows_read,
                "rows_kept": report.rows_kept,
                "rows_repaired": report.rows_repaired,
                "partial_last_bar": report.partial_last_bar is not None,
                "calendar": report.calendar,
                "missing_unit": report.missing_unit,
                "expected": report.expected,
                "missing": report.missing,
                "first_missing": ", ".join(report.first_missing),
            }
        )
    return pd.DataFrame(records, columns=list(REPORT_COLUMNS))
