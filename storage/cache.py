"""The DuckDB bar cache: schema, short-lived connections, upserts, reads and the summary.

The aligned multi-asset panel is storage.panel's: its read_panel queries the bars through the connections here.

One file holds two tables:

- `bars`: one row per (symbol, source, interval, ts); ts is the bar OPEN in UTC.
- `refresh_log`: one row per symbol per refresh/import/seed attempt: who, what, how many rows, outcome, error.

Rules kept everywhere below: every connection runs SET TimeZone='UTC' (TIMESTAMPTZ formatting and truncation
follow the session zone); values travel only as bound parameters; table and column names come only from the
constants in this module. Connections live for one batch or one read (see storage/locks.py for why).

A reader of a cache that does not exist yet gets an empty in-memory cache with the same schema: the app can
start before the first refresh without creating a file or special-casing "no data".
"""
from __future__ import annotations

import contextlib
import os
import threading
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import duckdb
import numpy as np
import pandas as pd
import pyarrow as pa

from storage.config import (
    DB_ENV_VAR,
    INTERVAL_SECONDS,
    CacheSettings,
    check_interval,
    check_source,
    check_symbol,
    resolve_db_path,
)
from storage.locks import open_with_retry
from storage.sessions import duration_text
from storage.sources.base import BAR_COLUMNS
from storage.symbols import asset_name
from storage.validation import validate_bars

# When read_bars (or storage.panel.read_panel) is not told which source to use and a symbol is stored under
# several, the first of these that has bars wins: data fetched from a real market first, then files the user
# imported, and the synthetic demo only when nothing real exists.
SOURCE_PREFERENCE: tuple[str, ...] = ("yfinance", "ccxt", "parquet", "csv", "demo")

# Staleness (cache_summary): the newest stored bar is stamped with its OPEN time, so right after a bar closes it
# is already one interval old, and a refresh that runs a little late makes it two. An asset that trades around
# the clock is stale once its newest bar is older than STALE_AFTER_INTERVALS intervals. An asset that does not
# trade at weekends (no stored bar on a Saturday or Sunday, UTC) also has nights, weekends and one-day holidays
# without bars: it is stale only past max(STALE_AFTER_INTERVALS intervals, MARKET_CLOSED_ALLOWANCE + 1 interval).
STALE_AFTER_INTERVALS = 3
MARKET_CLOSED_ALLOWANCE = pd.Timedelta(days=4)

SCHEMA_STATEMENTS: tuple[str, ...] = (
    """
    CREATE TABLE IF NOT EXISTS bars (
        symbol VARCHAR NOT NULL,
        source VARCHAR NOT NULL,
        interval VARCHAR NOT NULL,
        ts TIMESTAMPTZ NOT NULL,
        open DOUBLE NOT NULL,
        high DOUBLE NOT NULL,
        low DOUBLE NOT NULL,
        close DOUBLE NOT NULL,
        volume DOUBLE NOT NULL,
        ingested_at TIMESTAMPTZ NOT NULL,
        PRIMARY KEY (symbol, source, interval, ts)
    )
    """,
    "CREATE SEQUENCE IF NOT EXISTS refresh_log_id START 1",
    """
    CREATE TABLE IF NOT EXISTS refresh_log (
        id BIGINT PRIMARY KEY DEFAULT nextval('refresh_log_id'),
        started_at TIMESTAMPTZ NOT NULL,
        finished_at TIMESTAMPTZ NOT NULL,
        who VARCHAR NOT NULL,
        command VARCHAR NOT NULL,
        symbol VARCHAR,
        source VARCHAR,
        interval VARCHAR,
        path VARCHAR,
        row_count BIGINT NOT NULL,
        outcome VARCHAR NOT NULL CHECK (outcome IN ('ok', 'error', 'skipped')),
        error VARCHAR
    )
    """,
    # A file import's report (storage.importing.ImportReport as JSON); added after the first release.
    "ALTER TABLE refresh_log ADD COLUMN IF NOT EXISTS report VARCHAR",
)
CACHE_TABLES: tuple[str, ...] = ("bars", "refresh_log")
OUTCOMES: tuple[str, ...] = ("ok", "error", "skipped")


# --- connections --------------------------------------------------------------------------------------------


def ensure_schema(con: duckdb.DuckDBPyConnection) -> None:
    for statement in SCHEMA_STATEMENTS:
        con.execute(statement)


class NotACacheError(ValueError):
    """The database file exists but does not hold the cache's tables."""


class NotADuckDBFileError(ValueError):
    """The cache path names something that is not a DuckDB database (a CSV, an empty file, a folder)."""


# Every DuckDB database file carries these four bytes at offset 8.
DUCKDB_MAGIC = b"DUCK"
_FILE_KINDS: tuple[tuple[bytes, str], ...] = (
    (b"SQLite format 3", "an SQLite database"),
    (b"PAR1", "a Parquet file"),
    (b"PK\x03\x04", "a ZIP archive"),
    (b"\x1f\x8b", "a gzip archive"),
    (b"%PDF", "a PDF document"),
)


def check_database_file(path: Path) -> None:
    """Raise NotADuckDBFileError naming what `path` is, unless it is a DuckDB file or does not exist yet.

    Checked before DuckDB opens the file (whose own error is a traceback-worthy IOException) and before the
    refresh lock file is created beside it.
    """
    if path.is_dir():
        raise NotADuckDBFileError(f"{path} is a folder, not a DuckDB file: point --db or ${DB_ENV_VAR} at a file")
    try:
        with open(path, "rb") as stream:
            head = stream.read(512)
    except FileNotFoundError:
        return
    except OSError as error:
        raise NotADuckDBFileError(f"{path} cannot be read as a DuckDB file: {error.strerror}") from None
    if head[8:12] == DUCKDB_MAGIC:
        return
    raise NotADuckDBFileError(
        f"{path} is not a DuckDB file (it is {_file_kind(head)}): point --db or ${DB_ENV_VAR} at the bar cache, or "
        "at a new path to start one"
    )


def _file_kind(head: bytes) -> str:
    if not head:
        return "empty"
    kind = next((what for magic, what in _FILE_KINDS if head.startswith(magic)), None)
    if kind is not None:
        return kind
    try:
        text = head.decode("utf-8")
    except UnicodeDecodeError:
        return "binary data of another kind"
    if "\x00" in text:
        return "binary data of another kind"
    first = text.splitlines()[0][:40] if text.strip() else ""
    return f"a text file starting {first!r}" if first else "a text file"


def _create_atomically(path: Path) -> None:
    """Create a new cache file complete with its schema, or not at all.

    The file is built under a scratch name and hard-linked into place (os.link fails instead of overwriting
    when another writer got there first), so a reader never meets a cache file without its tables, even if a
    writer is killed while creating it. That lets readers skip checking for the tables on every open.
    """
    scratch = path.with_name(f".{path.name}.{os.getpid()}.{threading.get_ident()}.creating")
    try:
        con = duckdb.connect(str(scratch))
        try:
            ensure_schema(con)
            con.execute("CHECKPOINT")
        finally:
            con.close()
        with contextlib.suppress(FileExistsError):
            os.link(scratch, path)
    finally:
        scratch.unlink(missing_ok=True)
        scratch.with_name(scratch.name + ".wal").unlink(missing_ok=True)


def _empty_cache() -> duckdb.DuckDBPyConnection:
    con = duckdb.connect(":memory:")
    con.execute("SET TimeZone='UTC'")
    ensure_schema(con)
    return con


@contextlib.contextmanager
def connect(
    db_path: str | os.PathLike | None = None,
    read_only: bool = False,
    *,
    settings: CacheSettings | None = None,
) -> Iterator[duckdb.DuckDBPyConnection]:
    """A short-lived connection with TimeZone=UTC, closed on exit.

    read_only=False creates the file (and its folder) and the schema if needed, atomically. read_only=True never
    creates anything: a missing file reads as an empty cache; a DuckDB file without the cache tables raises
    NotACacheError. Both retry on another process's lock for settings.lock_retry_seconds, then raise
    storage.locks.CacheBusyError.
    """
    path = resolve_db_path(db_path)
    settings = settings or CacheSettings(db_path=path)
    check_database_file(path)
    if read_only and not path.exists():
        con = _empty_cache()
    else:
        if not read_only and not path.exists():
            path.parent.mkdir(parents=True, exist_ok=True)
            _create_atomically(path)
        con = open_with_retry(
            lambda: duckdb.connect(str(path), read_only=read_only),
            path,
            settings.lock_retry_seconds,
            writing=not read_only,
        )
        con.execute("SET TimeZone='UTC'")
        if not read_only:
            ensure_schema(con)  # a no-op on our own files; completes one made by anything else
    try:
        yield con
    except duckdb.CatalogException as error:
        if any(f"with name {table} does not exist" in str(error) for table in CACHE_TABLES):
            raise NotACacheError(
                f"{path} is a DuckDB file but not a bar cache (it has no {'/'.join(CACHE_TABLES)} tables): "
                "point --db or $REGIME_DB at the cache, or at a new path to start one"
            ) from error
        raise
    finally:
        con.close()


def query_frame(con: duckdb.DuckDBPyConnection, sql: str, params: Mapping | None = None) -> pd.DataFrame:
    """A query's result as a DataFrame through Arrow (TIMESTAMPTZ -> datetime64[us, UTC]); keeps dtypes when empty.

    Not .df(): in DuckDB 2.0 with pandas 3 it emits a deprecation warning from inside DuckDB on every call.
    """
    return con.sql(sql, params=dict(params or {})).to_arrow_table().to_pandas()


def query_value(con: duckdb.DuckDBPyConnection, sql: str, params: Mapping | None = None):
    """The single value a query returns. fetchall, not fetchone: in DuckDB 2.0 a result that was not read to its
    end keeps the connection busy, and the next query on it fails."""
    return con.execute(sql, dict(params or {})).fetchall()[0][0]


def checkpoint(db_path: str | os.PathLike | None = None) -> None:
    """Fold the write-ahead log into the database file (the end of every refresh)."""
    with connect(db_path) as con:
        con.execute("CHECKPOINT")


# --- timestamps ---------------------------------------------------------------------------------------------


def to_utc(value, what: str) -> pd.Timestamp | None:
    """A bound for a query as a UTC timestamp; naive values are taken as UTC, like everywhere in the cache."""
    if value is None:
        return None
    try:
        stamp = pd.Timestamp(value)
    except (ValueError, TypeError) as error:
        raise ValueError(f"{what} is not a timestamp: {value!r} ({error})") from None
    if pd.isna(stamp):
        raise ValueError(f"{what} is not a timestamp: {value!r}")
    return stamp.tz_localize("UTC") if stamp.tzinfo is None else stamp.tz_convert("UTC")


def _time_filter(params: dict, start, end, column: str = "ts") -> str:
    """SQL condition for start <= ts < end, adding the bounds to params (the SQL text itself is constant)."""
    condition = ""
    start, end = to_utc(start, "start"), to_utc(end, "end")
    if start is not None:
        params["start"] = start
        condition += f" AND {column} >= $start"
    if end is not None:
        params["end"] = end
        condition += f" AND {column} < $end"
    return condition


# --- writing bars -------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class UpsertResult:
    inserted: int  # keys that were not stored before
    updated: int  # stored keys whose values changed
    unchanged: int  # stored keys sent again with the same values (a refresh's overlap)

    @property
    def written(self) -> int:
        return self.inserted + self.updated


# New keys go in with a plain INSERT (an anti-join against the stored keys of this series, bounded to the
# batch's time span so DuckDB's zone maps can skip the rest); stored keys are updated only where a value
# changed, so a refresh's overlap rewrites nothing. Measured with storage/bench.py on the 2-core dev machine:
# 1.4-1.7x the throughput of INSERT .. ON CONFLICT DO UPDATE for 1,000,000 new bars, about 2x for a batch of
# unchanged bars.
_UPDATE_CHANGED_BARS = """
UPDATE bars SET
    open = incoming.open, high = incoming.high, low = incoming.low, close = incoming.close,
    volume = incoming.volume, ingested_at = now()
FROM incoming
WHERE bars.symbol = $symbol AND bars.source = $source AND bars.interval = $interval
  AND bars.ts >= $first AND bars.ts <= $last AND bars.ts = incoming.ts
  AND (bars.open, bars.high, bars.low, bars.close, bars.volume)
      IS DISTINCT FROM (incoming.open, incoming.high, incoming.low, incoming.close, incoming.volume)
"""
_INSERT_NEW_BARS = """
INSERT INTO bars BY NAME
SELECT $symbol AS symbol, $source AS source, $interval AS interval, incoming.ts,
       incoming.open, incoming.high, incoming.low, incoming.close, incoming.volume, now() AS ingested_at
FROM incoming
ANTI JOIN (
    SELECT ts FROM bars
    WHERE symbol = $symbol AND source = $source AND interval = $interval AND ts >= $first AND ts <= $last
) AS stored ON stored.ts = incoming.ts
"""


def _as_arrow(frame: pd.DataFrame) -> pa.Table:
    """The normalised frame as Arrow: DuckDB scans it without a per-row conversion."""
    if list(frame.columns) != list(BAR_COLUMNS):
        raise ValueError(f"write_bars expects exactly the columns {BAR_COLUMNS} (run validate_bars first)")
    if not isinstance(frame["ts"].dtype, pd.DatetimeTZDtype) or str(frame["ts"].dt.tz) != "UTC":
        raise ValueError(f"write_bars expects ts as a UTC datetime column, got {frame['ts'].dtype}")
    return pa.Table.from_pandas(frame, preserve_index=False)


# A large import is written in slices of this many bars, one after the other inside the same transaction, so
# DuckDB's working memory for the update/anti-join follows the slice, not the file.
WRITE_BATCH_ROWS = 1_000_000


def write_bars(
    con: duckdb.DuckDBPyConnection,
    bars: pd.DataFrame,
    symbol: str,
    source: str,
    interval: str,
    *,
    origin: str | None = None,
) -> UpsertResult:
    """Upsert validated bars (validate_bars output) inside the caller's open transaction.

    Bars that would interleave with the stored bars of the series are refused first (OffGridError; see
    check_on_stored_grid); a bar at the same ts as a stored one revises it.
    """
    if len(bars) == 0:
        return UpsertResult(0, 0, 0)
    key = {"symbol": check_symbol(symbol), "source": check_source(source), "interval": check_interval(interval)}
    check_on_stored_grid(con, bars, **key, origin=origin)
    inserted = updated = 0
    for start in range(0, len(bars), WRITE_BATCH_ROWS):
        batch = bars.iloc[start : start + WRITE_BATCH_ROWS]
        params = {**key, "first": batch["ts"].min(), "last": batch["ts"].max()}
        con.register("incoming", _as_arrow(batch))
        try:
            updated += int(query_value(con, _UPDATE_CHANGED_BARS, params))
            inserted += int(query_value(con, _INSERT_NEW_BARS, params))
        finally:
            con.unregister("incoming")
    return UpsertResult(inserted, updated, len(bars) - inserted - updated)


# --- the stored series' clock -------------------------------------------------------------------------------

class OffGridError(ValueError):
    """Bars that would interleave with the stored bars of their series: not on its bar grid."""


# Intervals up to an hour keep their phase (ts modulo the interval) across daylight-saving changes, so every bar
# of a series shares one; 4 h and daily bars of an exchange that opens at 09:30 local time may not.
PHASE_CHECKED_UP_TO_SECONDS = 3600

_STORED_NEAR = """
SELECT epoch_us(ts) AS ts FROM bars
WHERE symbol = $symbol AND source = $source AND interval = $interval AND ts >= $low AND ts <= $high
ORDER BY ts
"""
_STORED_NEIGHBOURS = """
SELECT epoch_us(max(ts) FILTER (WHERE ts < $first)), epoch_us(min(ts) FILTER (WHERE ts > $last)) FROM bars
WHERE symbol = $symbol AND source = $source AND interval = $interval
"""


def check_on_stored_grid(
    con: duckdb.DuckDBPyConnection,
    bars: pd.DataFrame,
    symbol: str,
    source: str,
    interval: str,
    origin: str | None = None,
) -> None:
    """Refuse (OffGridError) bars that would sit between the stored bars of (symbol, source, interval).

    Two rules, checked against what is stored, inside the writer's transaction: no new bar may lie less than one
    interval from a stored bar without being at the same ts (daily bars stamped at another hour, hourly bars
    offset by minutes, fractional epoch seconds); and for intervals up to an hour, every new bar must be a whole
    number of intervals from the nearest stored bar (the series keeps one phase, e.g. :30 for vendor equity
    hours), even where the new bars do not overlap the stored span. The message shows the first clash.
    """
    bar_us = INTERVAL_SECONDS[interval] * 1_000_000
    new = pd.DatetimeIndex(bars["ts"]).as_unit("us").asi8
    first, last = bars["ts"].min(), bars["ts"].max()
    params = {"symbol": symbol, "source": source, "interval": interval}
    span = pd.Timedelta(microseconds=bar_us)
    stored = con.execute(_STORED_NEAR, {**params, "low": first - span, "high": last + span}).fetchnumpy()["ts"]
    stored = np.asarray(stored, dtype="int64")
    if len(stored):
        after = np.searchsorted(stored, new)  # stored[after - 1] < new <= stored[after]
        has_after, has_before = after < len(stored), after > 0
        to_after = np.where(has_after, stored[np.minimum(after, len(stored) - 1)] - new, bar_us)
        to_before = np.where(has_before, new - stored[np.maximum(after - 1, 0)], bar_us)
        same = to_after == 0
        near_after = ~same & (to_after < bar_us)
        near_before = ~same & (to_before < bar_us)
        clashes = near_after | near_before
        if clashes.any():
            i = int(np.argmax(clashes))
            # The nearer stored bar; the earlier one on a tie.
            nearer_before = near_before[i] and (not near_after[i] or to_before[i] <= to_after[i])
            neighbour = new[i] - to_before[i] if nearer_before else new[i] + to_after[i]
            raise _off_grid(origin, symbol, source, interval, neighbour, new[i], int(clashes.sum()), len(new))
    if INTERVAL_SECONDS[interval] > PHASE_CHECKED_UP_TO_SECONDS:
        return
    if len(stored):
        reference = int(stored[0])
    else:
        before, after_last = con.execute(_STORED_NEIGHBOURS, {**params, "first": first, "last": last}).fetchall()[0]
        reference = before if before is not None else after_last
        if reference is None:
            return  # nothing stored: the file sets the series' clock
    off = (new - reference) % bar_us != 0
    if off.any():
        i = int(np.argmax(off))
        raise _off_grid(origin, symbol, source, interval, reference, new[i], int(off.sum()), len(new),
                        phase_us=int((new[i] - reference) % bar_us))


def _off_grid(
    origin, symbol, source, interval, stored_us: int, new_us: int, clashes: int, total: int, phase_us: int | None = None
) -> OffGridError:
    def stamp(us: int) -> str:
        return pd.Timestamp(int(us), unit="us", tz="UTC").isoformat()

    def duration(us: int) -> str:
        return duration_text(us / 1e6) if us % 1_000_000 == 0 else f"{us / 1e6:g} s"

    how = f"{duration(abs(new_us - stored_us))} apart" if phase_us is None else f"{duration(phase_us)} off its clock"
    where = f"{origin}: " if origin else ""
    return OffGridError(
        f"{where}{clashes:,} of {total:,} bars are not on the clock of the {interval} bars already stored for {symbol} "
        f"({source}): the first clash is stored {stamp(stored_us)}, new {stamp(new_us)} ({how}). Bars "
        "offset by minutes, fractions of a second or a time zone would sit between the stored ones: fix the times "
        "in the file; nothing was stored"
    )


def commit_batch(
    bars: pd.DataFrame,
    symbol: str,
    source: str,
    interval: str,
    db_path: str | os.PathLike | None = None,
    *,
    log: Callable[[UpsertResult], RefreshLogEntry] | None = None,
    origin: str | None = None,
) -> UpsertResult:
    """Upsert validated bars as ONE transaction on a connection that lives only for it.

    log: builds the refresh_log row from the result; it commits together with the bars, so an 'ok' row in the
    log always means its bars are there, and a crash leaves neither. origin: how an OffGridError names the bars.
    """
    with connect(db_path) as con:
        con.execute("BEGIN TRANSACTION")
        try:
            result = write_bars(con, bars, symbol, source, interval, origin=origin)
            if log is not None:
                write_log(con, log(result))
            con.execute("COMMIT")
        except BaseException:
            con.execute("ROLLBACK")
            raise
    return result


def upsert_bars(
    frame: pd.DataFrame,
    symbol: str,
    source: str,
    interval: str,
    db_path: str | os.PathLike | None = None,
    *,
    origin: str | None = None,
) -> UpsertResult:
    """Validate frame and upsert it as one transaction: all of its bars are stored, or none.

    This is the low-level write: it does not take the refresh lock or log anything (storage.refresh does both).
    """
    origin = origin or f"{source}:{symbol} {interval}"
    return commit_batch(validate_bars(frame, origin), symbol, source, interval, db_path, origin=origin)


# --- the refresh log ----------------------------------------------------------------------------------------


@dataclass(frozen=True)
class RefreshLogEntry:
    started_at: pd.Timestamp
    finished_at: pd.Timestamp
    who: str  # "user@host pid 1234"
    command: str  # what was asked, e.g. the CLI arguments
    outcome: str  # 'ok' | 'error' | 'skipped'
    row_count: int = 0  # bars written (inserted + updated)
    symbol: str | None = None
    source: str | None = None
    interval: str | None = None
    path: str | None = None  # the imported file, for csv/parquet
    error: str | None = None
    report: str | None = None  # a file import's report as JSON (storage.importing.ImportReport.to_json)


_INSERT_LOG = """
INSERT INTO refresh_log
    (started_at, finished_at, who, command, symbol, source, interval, path, row_count, outcome, error, report)
VALUES ($started_at, $finished_at, $who, $command, $symbol, $source, $interval, $path, $row_count, $outcome, $error,
        $report)
"""


def write_log(con: duckdb.DuckDBPyConnection, entry: RefreshLogEntry) -> None:
    """Append entry inside the caller's transaction (so an 'ok' row commits together with its bars)."""
    if entry.outcome not in OUTCOMES:
        raise ValueError(f"refresh outcome {entry.outcome!r} is not one of {', '.join(OUTCOMES)}")
    con.execute(
        _INSERT_LOG,
        {
            "started_at": to_utc(entry.started_at, "started_at"),
            "finished_at": to_utc(entry.finished_at, "finished_at"),
            "who": entry.who,
            "command": entry.command,
            "symbol": entry.symbol,
            "source": entry.source,
            "interval": entry.interval,
            "path": entry.path,
            "row_count": int(entry.row_count),
            "outcome": entry.outcome,
            "error": entry.error,
            "report": entry.report,
        },
    )


def log_refresh(entry: RefreshLogEntry, db_path: str | os.PathLike | None = None) -> None:
    with connect(db_path) as con:
        write_log(con, entry)


def recent_refreshes(limit: int = 20, db_path: str | os.PathLike | None = None) -> pd.DataFrame:
    """The newest refresh_log rows first."""
    if not isinstance(limit, int) or limit < 1:
        raise ValueError(f"limit must be a positive whole number, got {limit!r}")
    with connect(db_path, read_only=True) as con:
        return query_frame(con, "SELECT * FROM refresh_log ORDER BY id DESC LIMIT $limit", {"limit": limit})


# --- reading bars -------------------------------------------------------------------------------------------


def has_bars(db_path: str | os.PathLike | None = None) -> bool:
    with connect(db_path, read_only=True) as con:
        return query_value(con, "SELECT EXISTS (SELECT 1 FROM bars)")


def last_bar_ts(
    symbol: str, source: str, interval: str, db_path: str | os.PathLike | None = None
) -> pd.Timestamp | None:
    """The open time of the newest stored bar of this series, or None when none is stored."""
    params = {"symbol": check_symbol(symbol), "source": check_source(source), "interval": check_interval(interval)}
    with connect(db_path, read_only=True) as con:
        value = query_value(
            con, "SELECT max(ts) FROM bars WHERE symbol = $symbol AND source = $source AND interval = $interval", params
        )
    return None if value is None else pd.Timestamp(value).tz_convert("UTC")


_CHOOSE_SOURCES = """
SELECT symbol, arg_min(source, list_position($preference, source)) AS source
FROM bars
WHERE interval = $interval AND symbol IN (SELECT unnest($symbols))
GROUP BY symbol
"""


def _preferred_sources(con, symbols: Sequence[str], interval: str) -> dict[str, str]:
    rows = con.execute(
        _CHOOSE_SOURCES, {"preference": list(SOURCE_PREFERENCE), "interval": interval, "symbols": list(symbols)}
    ).fetchall()
    return dict(rows)


def read_bars(
    symbol: str,
    interval: str,
    source: str | None = None,
    start=None,
    end=None,
    db_path: str | os.PathLike | None = None,
) -> pd.DataFrame:
    """Stored bars of one series with start <= ts < end, sorted, as BAR_COLUMNS (ts datetime64[us, UTC]).

    source=None picks the first source in SOURCE_PREFERENCE that holds bars for (symbol, interval).
    Nothing stored gives an empty frame with the same columns and dtypes.
    """
    params = {"symbol": check_symbol(symbol), "interval": check_interval(interval)}
    time_filter = _time_filter(params, start, end)
    with connect(db_path, read_only=True) as con:
        if source is None:
            source = _preferred_sources(con, [symbol], interval).get(symbol, "demo")
        params["source"] = check_source(source)
        return query_frame(
            con,
            "SELECT ts, open, high, low, close, volume FROM bars "
            "WHERE symbol = $symbol AND source = $source AND interval = $interval" + time_filter + " ORDER BY ts",
            params,
        )


# --- the summary --------------------------------------------------------------------------------------------


_SUMMARY_QUERY = """
WITH stored AS (
    SELECT symbol, source, interval, count(*) AS "rows", min(ts) AS first_ts, max(ts) AS last_ts,
           bool_or(dayofweek(ts) IN (0, 6)) AS trades_weekends
    FROM bars GROUP BY symbol, source, interval
),
refreshed AS (
    SELECT symbol, source, interval, arg_max(finished_at, id) AS last_refresh_at, arg_max(outcome, id) AS last_outcome,
           arg_max(error, id) AS last_error
    FROM refresh_log WHERE symbol IS NOT NULL AND source IS NOT NULL AND interval IS NOT NULL
    GROUP BY symbol, source, interval
)
SELECT symbol, source, interval, coalesce(stored."rows", 0) AS "rows", first_ts, last_ts,
       coalesce(trades_weekends, false) AS trades_weekends, last_refresh_at, last_outcome, last_error
FROM stored FULL OUTER JOIN refreshed USING (symbol, source, interval)
ORDER BY symbol, interval, source
"""


def stale_allowance(interval: str, trades_weekends: bool) -> pd.Timedelta:
    """How old the newest bar may be before the series counts as stale (see STALE_AFTER_INTERVALS)."""
    bar = pd.Timedelta(seconds=INTERVAL_SECONDS[check_interval(interval)])
    allowance = STALE_AFTER_INTERVALS * bar
    if not trades_weekends:
        allowance = max(allowance, MARKET_CLOSED_ALLOWANCE + bar)
    return allowance


def cache_summary(db_path: str | os.PathLike | None = None, now=None) -> pd.DataFrame:
    """One row per (symbol, source, interval) stored or attempted.

    Columns: symbol, source, interval, rows, first_ts, last_ts, trades_weekends, last_refresh_at, last_outcome,
    last_error, stale (True when the newest bar is older than stale_allowance, or nothing is stored), asset (the
    asset the stored symbol is, storage.symbols.asset_name: "BTC" for BTC-USD or BTCUSDT).
    now: the clock to judge staleness by (default: the current time).
    """
    now = to_utc(now, "now") if now is not None else pd.Timestamp.now(tz="UTC")
    with connect(db_path, read_only=True) as con:
        summary = query_frame(con, _SUMMARY_QUERY)
    allowances = pd.to_timedelta(
        [stale_allowance(i, bool(w)) for i, w in zip(summary["interval"], summary["trades_weekends"])]
    )
    nothing_stored = summary["last_ts"].isna().to_numpy()
    too_old = ((now - summary["last_ts"]) > allowances).to_numpy(dtype=bool)
    assets = [asset_name(symbol) for symbol in summary["symbol"]]
    return summary.assign(stale=nothing_stored | too_old, asset=pd.Series(assets, index=summary.index, dtype=object))
