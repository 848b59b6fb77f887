"""Bring the cache up to date: `run_refresh` (the app's "Refresh now") and `python -m storage.refresh` (the CLI).

    python -m storage.refresh --symbols BTC SPY AAPL --interval 1d --source yfinance
    python -m storage.refresh --symbols BTC --interval 1h --source ccxt --exchange bybit
    python -m storage.refresh --source csv --path prices.csv --symbol SPY --interval 1h

For each symbol: fetch only what is new (from the newest stored bar minus `overlap` bars, so a revised last bar
is corrected; the first fetch goes back `lookback`), validate, upsert as one transaction together with its
refresh_log row, and report one line. A file import is read by storage.sources.files and checked by
storage.importing (interval against the data, partial last bar, missing sessions): its ImportReport is printed
under that line and stored with the log row. --start/--end bound what is fetched or imported: start <= ts < end,
END EXCLUSIVE. A symbol that fails is logged as 'error' and leaves its stored bars
untouched; the other symbols still go ahead. The run ends with a CHECKPOINT.

Only one refresh runs at a time (storage/locks.py: the refresh lock next to the database); a second one stops at
once with RefreshBusyError, which the CLI turns into exit code 75 (EX_TEMPFAIL) and a line naming the holder.
Exit codes: 0 every symbol ok or skipped, 1 some symbol failed, 2 bad arguments, 75 another refresh is running.
"""
from __future__ import annotations

import argparse
import io
import re
import shlex
import shutil
import sys
import tempfile
import unicodedata
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, BinaryIO

import numpy as np
import pandas as pd

from storage.cache import (
    NotADuckDBFileError,
    RefreshLogEntry,
    UpsertResult,
    check_database_file,
    checkpoint,
    commit_batch,
    has_bars,
    last_bar_ts,
    log_refresh,
)
from storage.config import (
    INTERVAL_SECONDS,
    check_interval,
    check_source,
    check_symbol,
    resolve_db_path,
)
from storage.importing import MAX_LOG_RETURN, ImportReport, prepare_import
from storage.locks import CacheBusyError, LockHolder, RefreshBusyError, refresh_lock
from storage.sources.base import SourceError
from storage.validation import validate_bars

FILE_SOURCES: tuple[str, ...] = ("csv", "parquet")
EXIT_OK, EXIT_FAILED, EXIT_USAGE, EXIT_BUSY = 0, 1, 2, 75  # 75 = EX_TEMPFAIL: try again later
DEFAULT_SYMBOLS: tuple[str, ...] = ("BTC", "SPY", "AAPL")

# How far back the first fetch of a series goes when --lookback is not given. The intraday values stay inside
# what yfinance serves (1m: about a week; up to 90m: about 60 days; 1h: about 730 days). The demo source ignores
# this and returns its whole synthetic history.
DEFAULT_LOOKBACK: dict[str, pd.Timedelta] = {
    "1m": pd.Timedelta(days=7),
    "5m": pd.Timedelta(days=59),
    "15m": pd.Timedelta(days=59),
    "30m": pd.Timedelta(days=59),
    "1h": pd.Timedelta(days=729),
    "4h": pd.Timedelta(days=729),
    "1d": pd.Timedelta(days=3650),
}

DST_SHIFT_US = 3600 * 1_000_000

# progress(fraction done in [0, 1], message): matches st.progress(value, text=...).
ProgressCallback = Callable[[float, str], None]


@dataclass(frozen=True)
class RefreshRequest:
    symbols: tuple[str, ...] = DEFAULT_SYMBOLS
    interval: str = "1d"
    source: str = "demo"
    db_path: Path | None = None  # None: $REGIME_DB, then data/bars.duckdb
    exchange: str = "bybit"  # ccxt only
    path: Path | None = None  # csv/parquet only: the file to import (for exactly one symbol)
    path_label: str | None = None  # how messages name that file (default: the path itself)
    overlap: int = 3  # bars re-fetched before the newest stored one
    lookback: pd.Timedelta | None = None  # first fetch only; None: DEFAULT_LOOKBACK (demo: everything)
    start: pd.Timestamp | None = None  # fetch/import bars with ts >= start (overrides the incremental start)
    end: pd.Timestamp | None = None  # ... and ts < end: END IS EXCLUSIVE
    command: str = "run_refresh"  # what refresh_log records as the command
    source_options: Mapping[str, Any] = field(default_factory=dict)  # extra get_source options (e.g. demo seed)
    date_format: str | None = None  # file imports: "day-first", "month-first" or a strptime format (04/01/2021)
    max_log_return: float = MAX_LOG_RETURN  # file imports: one-bar moves beyond it are flagged in the report

    def __post_init__(self) -> None:
        if isinstance(self.symbols, str):
            object.__setattr__(self, "symbols", (self.symbols,))
        object.__setattr__(self, "symbols", tuple(check_symbol(s) for s in self.symbols))
        if not self.symbols:
            raise ValueError("a refresh needs at least one symbol")
        if len(set(self.symbols)) != len(self.symbols):
            raise ValueError(f"symbols repeat: {list(self.symbols)}")
        check_interval(self.interval)
        check_source(self.source)
        if not isinstance(self.overlap, int) or self.overlap < 0:
            raise ValueError(f"overlap must be a whole number of bars >= 0, got {self.overlap!r}")
        if self.lookback is not None and pd.Timedelta(self.lookback) <= pd.Timedelta(0):
            raise ValueError(f"lookback must be a positive duration, got {self.lookback!r}")
        for name in ("start", "end"):
            value = getattr(self, name)
            if value is not None:
                stamp = pd.Timestamp(value)
                object.__setattr__(self, name, stamp.tz_localize("UTC") if stamp.tzinfo is None else stamp.tz_convert("UTC"))
        if self.start is not None and self.end is not None and self.start >= self.end:
            raise ValueError(f"start {self.start.isoformat()} is not before end {self.end.isoformat()} (end is exclusive)")
        if self.source in FILE_SOURCES:
            if self.path is None:
                raise ValueError(f"--source {self.source} imports a file: give it with --path FILE")
            if len(self.symbols) != 1:
                raise ValueError(f"a {self.source} file holds one symbol: give exactly one --symbol")
        elif self.path is not None:
            raise ValueError(f"--path is only for --source csv or parquet, not {self.source}")
        if self.source == "ccxt":
            from storage.sources.ccxt_source import check_exchange

            object.__setattr__(self, "exchange", check_exchange(self.exchange))
        if not (isinstance(self.max_log_return, (int, float)) and self.max_log_return > 0):
            raise ValueError(f"max_log_return must be a positive number, got {self.max_log_return!r}")

    @property
    def is_file_import(self) -> bool:
        return self.source in FILE_SOURCES


@dataclass(frozen=True)
class SymbolResult:
    symbol: str
    interval: str
    source: str
    outcome: str  # 'ok' | 'error' | 'skipped'
    message: str  # one line
    fetched: int = 0
    inserted: int = 0
    updated: int = 0
    last_ts: pd.Timestamp | None = None
    import_report: ImportReport | None = None  # file imports that were stored

    def line(self) -> str:
        return f"{self.symbol} {self.interval} {self.source}: {self.outcome}: {self.message}"


@dataclass(frozen=True)
class RefreshReport:
    request: RefreshRequest
    results: tuple[SymbolResult, ...]

    @property
    def failed(self) -> tuple[SymbolResult, ...]:
        return tuple(r for r in self.results if r.outcome == "error")

    @property
    def ok(self) -> bool:
        return not self.failed

    @property
    def exit_code(self) -> int:
        return EXIT_OK if self.ok else EXIT_FAILED


def run_refresh(
    request: RefreshRequest,
    progress: ProgressCallback | None = None,
    cancel: Callable[[], bool] | None = None,
) -> RefreshReport:
    """Refresh every symbol of request under the refresh lock; raises RefreshBusyError if another job holds it.

    progress is called before and after each symbol; cancel is asked before each symbol, and the symbols not
    yet started are then reported (and logged) as skipped.
    """
    db_path = resolve_db_path(request.db_path)
    check_database_file(db_path)  # before the lock file is made beside it: NotADuckDBFileError names the file
    with refresh_lock(db_path, request.command) as holder:
        return refresh_locked(request, db_path, holder, progress, cancel)


def refresh_locked(
    request: RefreshRequest,
    db_path: Path,
    holder: LockHolder,
    progress: ProgressCallback | None = None,
    cancel: Callable[[], bool] | None = None,
) -> RefreshReport:
    """run_refresh's body, for callers that already hold the refresh lock."""
    report = progress or (lambda fraction, message: None)
    source = None if request.is_file_import else _make_source(request)
    results: list[SymbolResult] = []
    total = len(request.symbols)
    for done, symbol in enumerate(request.symbols):
        started = pd.Timestamp.now(tz="UTC")
        if cancel is not None and cancel():
            result = SymbolResult(symbol, request.interval, request.source, "skipped", "cancelled before it started")
            _log_outcome(request, db_path, holder, symbol, started, result)
        else:
            report(done / total, f"{symbol}: fetching {request.interval} bars from {request.source}")
            result = _refresh_symbol(request, db_path, holder, source, symbol, started)
        results.append(result)
        report((done + 1) / total, result.line())
    try:
        checkpoint(db_path)
    except CacheBusyError as error:  # the bars are committed (in the WAL); the next writer folds them in
        print(f"warning: refresh finished without a checkpoint: {error}", file=sys.stderr)
    return RefreshReport(request, tuple(results))


class _UnavailableSource:
    """Stands in for a source that could not be built (e.g. an unknown exchange): every symbol reports why."""

    def __init__(self, error: Exception):
        self.error = error

    def fetch(self, symbol, interval, start=None, end=None):
        raise self.error


def _make_source(request: RefreshRequest):
    # The fetching sources import slowly: only when asked for.
    from storage.sources import get_source

    options = dict(request.source_options)
    if request.source == "ccxt":
        options.setdefault("exchange", request.exchange)
    try:
        return get_source(request.source, **options)
    except Exception as error:
        return _UnavailableSource(error)


def _refresh_symbol(request, db_path, holder, source, symbol, started) -> SymbolResult:
    interval = request.interval
    import_report = None
    try:
        if request.is_file_import:
            origin = request.path_label or str(request.path)
            bars, import_report = prepare_import(
                _read_file(request), symbol, interval, start=request.start, end=request.end,
                max_log_return=request.max_log_return,
            )
        else:
            last_stored = last_bar_ts(symbol, request.source, interval, db_path)
            frame = source.fetch(symbol, interval, start=_fetch_start(request, last_stored), end=request.end)
            origin = f"{request.source}:{symbol} {interval}"
            if len(frame) == 0 and last_stored is not None:
                result = SymbolResult(
                    symbol, interval, request.source, "skipped", f"no new bars after {last_stored.isoformat()}"
                )
                _log_outcome(request, db_path, holder, symbol, started, result)
                return result
            if len(frame) == 0:
                raise SourceError(symbol, f"{request.source} returned no {interval} bars", "check the symbol")
            bars = validate_bars(frame, origin)
        _check_spacing_and_clock(bars, interval, origin)
        report_json = None if import_report is None else import_report.to_json()
        stored = commit_batch(
            bars,
            symbol,
            request.source,
            interval,
            db_path,
            log=lambda result: _log_entry(
                request, holder, symbol, started, "ok", result.written, report=report_json
            ),
            origin=origin,
        )
    except Exception as error:  # one symbol failing must not stop the others; the log says what happened
        result = SymbolResult(symbol, interval, request.source, "error", _one_line(error))
        _log_outcome(request, db_path, holder, symbol, started, result)
        return result
    message = _describe(len(bars), stored, bars["ts"].iloc[-1])
    if import_report is not None and import_report.summary():
        message += "; " + import_report.summary()
    return SymbolResult(
        symbol,
        interval,
        request.source,
        "ok",
        message,
        fetched=len(bars),
        inserted=stored.inserted,
        updated=stored.updated,
        last_ts=bars["ts"].iloc[-1],
        import_report=import_report,
    )


def _fetch_start(request: RefreshRequest, last: pd.Timestamp | None) -> pd.Timestamp | None:
    if request.start is not None:
        return request.start
    if last is not None:
        return last - request.overlap * pd.Timedelta(seconds=INTERVAL_SECONDS[request.interval])
    lookback = request.lookback
    if lookback is None:
        if request.source == "demo":
            return None  # the demo's whole synthetic history
        lookback = DEFAULT_LOOKBACK[request.interval]
    return pd.Timestamp.now(tz="UTC") - pd.Timedelta(lookback)


def _read_file(request: RefreshRequest):
    from storage.sources.files import load_bar_file

    return load_bar_file(request.path, origin=request.path_label or str(request.path), date_format=request.date_format)


def _check_spacing_and_clock(bars: pd.DataFrame, interval: str, origin: str) -> None:
    """Bars closer together than the interval, or opening in the future, mean the wrong file or interval."""
    ts_us = bars["ts"].to_numpy(dtype="datetime64[us]").view("int64")
    bar_us = INTERVAL_SECONDS[interval] * 1_000_000
    if INTERVAL_SECONDS[interval] >= 86_400:
        bar_us -= DST_SHIFT_US  # daily bars stamped at local midnight come 23 h apart across a DST change
    gaps = np.diff(ts_us)
    if len(gaps) and gaps.min() < bar_us:
        at = int(np.argmin(gaps)) + 1
        raise ValueError(
            f"{origin}: bars at {bars['ts'].iloc[at - 1].isoformat()} and {bars['ts'].iloc[at].isoformat()} are "
            f"{gaps.min() / 1e6:g} s apart, less than one {interval} bar: is this {interval} data?"
        )
    now = pd.Timestamp.now(tz="UTC")
    if bars["ts"].iloc[-1] > now:
        raise ValueError(
            f"{origin}: the last bar opens at {bars['ts'].iloc[-1].isoformat()}, after now ({now.isoformat()}): "
            "check the file's time zone"
        )


def _describe(fetched: int, stored: UpsertResult, last: pd.Timestamp) -> str:
    return (
        f"{fetched:,} bars fetched, {stored.inserted:,} new, {stored.updated:,} revised; "
        f"last bar {last:%Y-%m-%d %H:%M} UTC"
    )


def _one_line(error: BaseException) -> str:
    text = "; ".join(line.strip(" -") for line in str(error).splitlines() if line.strip())
    known = (SourceError, ValueError, OSError)
    return text if isinstance(error, known) else f"{type(error).__name__}: {text}"


def _log_entry(request, holder, symbol, started, outcome, rows, error=None, report=None) -> RefreshLogEntry:
    return RefreshLogEntry(
        started_at=started,
        finished_at=pd.Timestamp.now(tz="UTC"),
        who=holder.identity,
        command=request.command,
        outcome=outcome,
        row_count=rows,
        symbol=symbol,
        source=request.source,
        interval=request.interval,
        path=None if request.path is None else str(request.path),
        error=error,
        report=report,
    )


def _log_outcome(request, db_path, holder, symbol, started, result: SymbolResult) -> None:
    """Log an error or skipped symbol in its own short write; if even that fails, the report still says why."""
    entry = _log_entry(request, holder, symbol, started, result.outcome, 0, error=result.message)
    try:
        log_refresh(entry, db_path)
    except Exception as error:  # e.g. the cache is busy: the symbol's own line already explains the failure
        print(f"warning: could not record {symbol} in refresh_log: {_one_line(error)}", file=sys.stderr)


# --- seeding the demo market --------------------------------------------------------------------------------

DEMO_SEED_INTERVALS: tuple[str, ...] = ("1d", "1h")
# A second process that wants to seed waits for the first one's seeding (a few seconds) instead of failing.
SEED_LOCK_WAIT_SECONDS = 120.0


def seed_demo_if_empty(db_path=None, progress: ProgressCallback | None = None) -> bool:
    """If the cache holds no bars at all, store the demo market (BTC, SPY, AAPL; 1d and 1h) as source "demo".

    Returns whether this call seeded. Safe when several processes call it at once: the refresh lock makes them
    take turns, and each checks again for bars once it holds the lock.
    """
    path = resolve_db_path(db_path)
    if has_bars(path):
        return False
    from storage.sources.demo import DEMO_SYMBOLS

    with refresh_lock(path, "seed demo market", wait_seconds=SEED_LOCK_WAIT_SECONDS) as holder:
        if has_bars(path):
            return False
        seeded = False
        for step, interval in enumerate(DEMO_SEED_INTERVALS):
            request = RefreshRequest(
                symbols=DEMO_SYMBOLS, interval=interval, source="demo", db_path=path, command="seed demo market"
            )

            def scaled(fraction: float, message: str, step=step) -> None:
                if progress is not None:
                    progress((step + fraction) / len(DEMO_SEED_INTERVALS), message)

            report = refresh_locked(request, path, holder, scaled)
            seeded |= any(r.outcome == "ok" for r in report.results)
        return seeded


# How an upload is named in messages: its base name without control characters, at most this long.
UPLOAD_LABEL_CHARS = 80


def upload_label(file_name: str) -> str:
    """A safe name for an uploaded file in messages and the log: the base name (after / or \\), control and format
    characters removed, at most UPLOAD_LABEL_CHARS characters; "upload" when nothing usable is left (".", "..")."""
    base = re.split(r"[/\\]", str(file_name or ""))[-1]
    text = "".join(ch for ch in base if unicodedata.category(ch)[0] != "C").strip()
    if not text.strip("."):
        return "upload"
    return text if len(text) <= UPLOAD_LABEL_CHARS else text[: UPLOAD_LABEL_CHARS - 1] + "…"


def import_uploaded_file(
    file_name: str,
    data: bytes | BinaryIO,
    symbol: str,
    interval: str,
    db_path=None,
    progress: ProgressCallback | None = None,
    *,
    date_format: str | None = None,
) -> RefreshReport:
    """Import an upload (bytes, or a binary file object such as Streamlit's UploadedFile) exactly as
    `--source csv|parquet --path FILE` would: under the refresh lock, validated, spacing-checked, in one
    transaction, and logged.

    The bytes go to a private temporary folder under a generated name (upload.csv or upload.parquet), so no name a
    browser sends (.., 300 bytes of CJK, control characters) reaches the file system; messages name the upload by
    upload_label(file_name). Raises ValueError for a bad symbol, interval or an oversized upload (before
    anything is written).
    """
    from storage.sources.files import MAX_FILE_BYTES

    label = upload_label(file_name)
    stream = io.BytesIO(data) if isinstance(data, (bytes, bytearray, memoryview)) else data
    stream.seek(0, io.SEEK_END)
    size = stream.tell()
    stream.seek(0)
    if size > MAX_FILE_BYTES:
        raise ValueError(
            f"{label}: {size / 1024 / 1024:.0f} MB is over the {MAX_FILE_BYTES / 1024 / 1024:.0f} MB "
            "import limit; split the file"
        )
    source = "parquet" if stream.read(4) == b"PAR1" else "csv"
    stream.seek(0)
    with tempfile.TemporaryDirectory(prefix="regime-import-") as folder:
        path = Path(folder) / f"upload.{source}"
        with open(path, "wb") as out:
            shutil.copyfileobj(stream, out, 1024 * 1024)  # no second copy of the upload in memory
        request = RefreshRequest(
            symbols=(symbol,), interval=interval, source=source, path=path, path_label=label, db_path=db_path,
            command=f"app: import {label}", date_format=date_format,
        )
        return run_refresh(request, progress=progress)


# --- the command line ---------------------------------------------------------------------------------------


def _duration(text: str) -> pd.Timedelta:
    try:
        value = pd.Timedelta(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a duration: write e.g. 30d, 12h or 90min") from None
    if value <= pd.Timedelta(0):
        raise argparse.ArgumentTypeError(f"{text!r} must be a positive duration")
    return value


def _non_negative_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None
    if value < 0:
        raise argparse.ArgumentTypeError(f"{text!r} must be 0 or more")
    return value


def _utc_time(text: str) -> pd.Timestamp:
    try:
        stamp = pd.Timestamp(text)
    except ValueError:
        stamp = pd.NaT
    if pd.isna(stamp):
        raise argparse.ArgumentTypeError(f"{text!r} is not a date or time: write e.g. 2024-01-31 or 2024-01-31T14:30")
    return stamp.tz_localize("UTC") if stamp.tzinfo is None else stamp.tz_convert("UTC")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m storage.refresh",
        description="Fetch new bars into the DuckDB cache, or import a CSV/Parquet file.",
        epilog="Exit codes: 0 ok, 1 some symbol failed, 2 bad arguments, 75 another refresh is running.",
    )
    parser.add_argument(
        "--symbols", "--symbol", dest="symbols", nargs="+", metavar="SYMBOL",
        help=f"symbols to refresh (default: {' '.join(DEFAULT_SYMBOLS)}; one symbol for a file import)",
    )
    parser.add_argument(
        "--interval", default="1d", choices=list(INTERVAL_SECONDS), metavar="INTERVAL",
        help=f"bar size, one of {', '.join(INTERVAL_SECONDS)} (default 1d). For a file import, the bar size the file "
        "holds: it is checked against the median spacing of the bars and a mismatch is refused",
    )
    parser.add_argument(
        "--source", default="demo", choices=["demo", "yfinance", "ccxt", "csv", "parquet"],
        help="where the bars come from (default demo)",
    )
    parser.add_argument("--exchange", default="bybit", help="ccxt exchange id (default bybit)")
    parser.add_argument("--db", type=Path, help="cache file (default: $REGIME_DB, then data/bars.duckdb)")
    parser.add_argument("--path", type=Path, help="the CSV/Parquet file to import (--source csv|parquet)")
    parser.add_argument(
        "--overlap", type=_non_negative_int, default=3,
        help="bars to fetch again before the newest stored one, to pick up revisions (default 3)",
    )
    parser.add_argument(
        "--lookback", type=_duration,
        help="how far back the FIRST fetch of a series goes, e.g. 365d (default depends on the interval)",
    )
    parser.add_argument(
        "--start", type=_utc_time, metavar="TIME",
        help="fetch or import bars opening at or after TIME (UTC unless it has an offset; e.g. 2024-01-01); "
        "overrides the incremental start of a fetch",
    )
    parser.add_argument(
        "--end", type=_utc_time, metavar="TIME",
        help="fetch or import bars opening BEFORE TIME: --end is EXCLUSIVE (--start 2024-01-01 --end 2024-02-01 "
        "is the whole of January and nothing of February 1)",
    )
    parser.add_argument(
        "--date-format", metavar="ORDER",
        help="file imports with dates like 04/01/2021: day-first, month-first, or a strptime format such as "
        "%%d/%%m/%%Y. Without it the order is read from the column (a field above 12 is the day) and a file that "
        "cannot tell is refused",
    )
    parser.add_argument(
        "--max-log-return", type=float, default=MAX_LOG_RETURN, metavar="X",
        help=f"file imports: flag one-bar moves with |log return| above X in the report (default {MAX_LOG_RETURN:g}, "
        "a 20-fold move); flagged bars are kept",
    )
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    is_file = args.source in FILE_SOURCES
    if is_file and not args.symbols:
        parser.error(f"--source {args.source} needs --symbol SYMBOL (the symbol the file holds)")
    try:
        request = RefreshRequest(
            symbols=tuple(args.symbols or DEFAULT_SYMBOLS),
            interval=args.interval,
            source=args.source,
            db_path=args.db,
            exchange=args.exchange,
            path=args.path,
            overlap=args.overlap,
            lookback=args.lookback,
            start=args.start,
            end=args.end,
            command="python -m storage.refresh " + shlex.join(sys.argv[1:] if argv is None else argv),
            date_format=args.date_format,
            max_log_return=args.max_log_return,
        )
    except ValueError as error:
        parser.error(str(error))
    try:
        report = run_refresh(request)
    except RefreshBusyError as error:
        print(f"refresh not started: {error}", file=sys.stderr)
        return EXIT_BUSY
    except NotADuckDBFileError as error:
        print(f"refresh not started: {error}", file=sys.stderr)
        return EXIT_USAGE
    for result in report.results:
        print(result.line(), file=sys.stderr if result.outcome == "error" else sys.stdout)
        if result.import_report is not None:
            print(f"  import report for {result.import_report.origin}:")
            for line in result.import_report.lines():
                print(f"    {line}")
    return report.exit_code


if __name__ == "__main__":
    sys.exit(main())
