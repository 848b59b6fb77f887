"""The DuckDB bar cache: schema, short-lived connections, upserts, reads, the aligned panel and the summary.

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
    INTERVAL_SECONDS,
    CacheSettings,
    check_interval,
    check_source,
    check_symbol,
    resolve_db_path,
)
from storage.locks import open_with_retry
from storage.sources.base import BAR_COLUMNS
from storage.validation import validate_bars

PRICE_FIELDS: tuple[str, ...] = ("open", "high", "low", "close")
VALUE_FIELDS: tuple[str, ...] = (*PRICE_FIELDS, "volume")

# When read_bars/read_panel are not told which source to use and a symbol is stored under several, the first
# of these that has bars wins: data fetched from a real market first, then files the user imported, and the
# synthetic demo only when nothing real exists.
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
)
CACHE_TABLES: tuple[str, ...] = ("bars", "refresh_log")
OUTCOMES: tuple[str, ...] = ("ok", "error", "skipped")


# --- connections --------------------------------------------------------------------------------------------


def ensure_schema(con: duckdb.DuckDBPyConnection) -> None:
    for statement in SCHEMA_STATEMENTS:
        con.execute(statement)


class NotACacheError(ValueError):
    """The database file exists but does not hold the cache's tables."""


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


def write_bars(
    con: duckdb.DuckDBPyConnection, bars: pd.DataFrame, symbol: str, source: str, interval: str
) -> UpsertResult:
    """Upsert validated bars (validate_bars output) inside the caller's open transaction."""
    if len(bars) == 0:
        return UpsertResult(0, 0, 0)
    params = {
        "symbol": check_symbol(symbol),
        "source": check_source(source),
        "interval": check_interval(interval),
        "first": bars["ts"].min(),
        "last": bars["ts"].max(),
    }
    con.register("incoming", _as_arrow(bars))
    try:
        updated = query_value(con, _UPDATE_CHANGED_BARS, params)
        inserted = query_value(con, _INSERT_NEW_BARS, params)
    finally:
        con.unregister("incoming")
    return UpsertResult(int(inserted), int(updated), len(bars) - int(inserted) - int(updated))


def commit_batch(
    bars: pd.DataFrame,
    symbol: str,
    source: str,
    interval: str,
    db_path: str | os.PathLike | None = None,
    *,
    log: Callable[[UpsertResult], RefreshLogEntry] | None = None,
) -> UpsertResult:
    """Upsert validated bars as ONE transaction on a connection that lives only for it.

    log: builds the refresh_log row from the result; it commits together with the bars, so an 'ok' row in the
    log always means its bars are there, and a crash leaves neither.
    """
    with connect(db_path) as con:
        con.execute("BEGIN TRANSACTION")
        try:
            result = write_bars(con, bars, symbol, source, interval)
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
    bars = validate_bars(frame, origin or f"{source}:{symbol} {interval}")
    return commit_batch(bars, symbol, source, interval, db_path)


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


_INSERT_LOG = """
INSERT INTO refresh_log
    (started_at, finished_at, who, command, symbol, source, interval, path, row_count, outcome, error)
VALUES ($started_at, $finished_at, $who, $command, $symbol, $source, $interval, $path, $row_count, $outcome, $error)
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


# --- the aligned panel --------------------------------------------------------------------------------------


@dataclass(frozen=True, eq=False)
class Panel:
    """Several assets on one clock, without looking ahead.

    ts: the union of every asset's bar opens in the requested span (UTC), length T.
    fields: "open", "high", "low", "close", "volume" -> float64 array (T, assets).
    observed: bool (T, assets), True where the asset has a bar opening exactly at ts.
    Where an asset has no bar (its market is closed), its open/high/low/close are its last known CLOSE (a flat
    bar at the last traded price, never a value from later) and its volume is 0; before its first stored bar
    (looking back before `start` too) they are NaN.
    """

    ts: pd.DatetimeIndex
    symbols: tuple[str, ...]
    sources: tuple[str | None, ...]  # the source each asset was read from; None where no bar was read
    interval: str
    fields: dict[str, np.ndarray]
    observed: np.ndarray

    def __len__(self) -> int:
        return len(self.ts)

    @property
    def close(self) -> np.ndarray:
        return self.fields["close"]


# The panel is read in one query and aligned in numpy. The query returns the chosen series' bars in long form
# (asset index, epoch microseconds, OHLCV); for every tick of the union clock, np.searchsorted finds each asset's
# latest bar at or before the tick, which is exactly an ASOF join: a value can only come from the past.
# Measured (storage/bench.py): the same alignment as a DuckDB ASOF JOIN over the (tick x asset) grid, sorted and
# fetched, took about twice as long for 3 x 50,000 bars, mostly because it materialises and sorts the whole grid.
# `requested` lists the symbols with the source asked for (NULL: the preferred one); `wanted` settles the
# source, so choosing sources costs no extra round trip. source_rank tells Python which source each asset got.
_PANEL_WANTED = """
WITH requested AS (
    SELECT unnest($symbols) AS symbol, unnest($sources::VARCHAR[]) AS source,
           generate_subscripts($symbols, 1) - 1 AS asset
),
preferred AS (
    SELECT symbol, arg_min(source, list_position($preference, source)) AS source
    FROM bars
    WHERE interval = $interval AND symbol IN (SELECT symbol FROM requested WHERE source IS NULL)
    GROUP BY symbol
),
wanted AS (
    SELECT requested.asset, requested.symbol, coalesce(requested.source, preferred.source) AS source
    FROM requested LEFT JOIN preferred ON preferred.symbol = requested.symbol
)"""
# With a start, each asset is also read back to its last bar at or before start, so a market that is closed at
# start shows its last price there instead of NaN, while older history is skipped.
_PANEL_FLOORS = """,
floors AS (
    SELECT wanted.asset, max(bars.ts) AS floor_ts
    FROM bars JOIN wanted ON bars.symbol = wanted.symbol AND bars.source = wanted.source
    WHERE bars.interval = $interval AND bars.ts <= $start
    GROUP BY wanted.asset
)"""
_PANEL_BARS = """
SELECT wanted.asset::INTEGER AS asset, list_position($preference, wanted.source)::TINYINT AS source_rank,
       epoch_us(bars.ts) AS ts_us,
       bars.open, bars.high, bars.low, bars.close, bars.volume
FROM bars JOIN wanted ON bars.symbol = wanted.symbol AND bars.source = wanted.source
"""
_PANEL_FROM_FLOORS = """
LEFT JOIN floors ON floors.asset = wanted.asset
WHERE bars.interval = $interval AND bars.ts >= coalesce(floors.floor_ts, $start)"""


def align_as_of(
    asset: np.ndarray, ts_us: np.ndarray, values: Mapping[str, np.ndarray], n_assets: int, start_us: int | None
) -> tuple[np.ndarray, dict[str, np.ndarray], np.ndarray]:
    """Long bars -> (clock, fields, observed) as described on Panel.

    asset (n,) int, ts_us (n,) int64 epoch microseconds, values[name] (n,) float64, in any order; bars before
    start_us only serve as as-of values. Returns clock (T,) int64, fields[name] (T, n_assets), observed (T, n_assets).
    """
    # Group rows by asset with a stable sort on a small integer type (numpy radix-sorts those in O(n)), then
    # make each asset's run time-ordered; both are no-ops in the usual case that DuckDB returned them in order.
    by_asset = np.argsort(asset.astype(np.int16), kind="stable")
    bounds = np.searchsorted(asset[by_asset], np.arange(n_assets + 1))
    for a in range(n_assets):
        run = by_asset[bounds[a] : bounds[a + 1]]
        run_ts = ts_us[run]
        if np.any(run_ts[1:] < run_ts[:-1]):
            by_asset[bounds[a] : bounds[a + 1]] = run[np.argsort(run_ts, kind="stable")]
    ts_sorted = ts_us[by_asset]

    # The clock: the union of bar opens. Concatenated sorted runs sort in O(n) with timsort (kind="stable").
    on_clock = ts_sorted if start_us is None else ts_sorted[ts_sorted >= start_us]
    clock = np.sort(on_clock, kind="stable")
    if len(clock):
        clock = clock[np.concatenate(([True], clock[1:] != clock[:-1]))]  # (T,)

    shape = (len(clock), n_assets)
    fields = {name: np.full(shape, np.nan) for name in VALUE_FIELDS}
    observed = np.zeros(shape, dtype=bool)
    for a in range(n_assets):
        run = by_asset[bounds[a] : bounds[a + 1]]
        if len(run) == 0:
            continue  # nothing stored for this asset: NaN and unobserved throughout
        own_ts = ts_sorted[bounds[a] : bounds[a + 1]]
        latest = np.searchsorted(own_ts, clock, side="right") - 1  # the last bar at or before each tick, (T,)
        known = latest >= 0
        latest = np.maximum(latest, 0)
        is_bar = known & (own_ts[latest] == clock)
        rows = run[latest]
        last_close = np.where(known, values["close"][rows], np.nan)
        fields["close"][:, a] = last_close
        for name in ("open", "high", "low"):
            fields[name][:, a] = np.where(is_bar, values[name][rows], last_close)
        fields["volume"][:, a] = np.where(is_bar, values["volume"][rows], 0.0)
        observed[:, a] = is_bar
    return clock, fields, observed


def _requested_sources(symbols: tuple[str, ...], sources) -> list[str | None]:
    """One source name per symbol, or None where the preferred source should be used."""
    if sources is None:
        chosen = [None] * len(symbols)
    elif isinstance(sources, str):
        chosen = [sources] * len(symbols)
    elif isinstance(sources, Mapping):
        unknown = set(sources) - set(symbols)
        if unknown:
            raise ValueError(f"sources names symbols that are not in the panel: {sorted(unknown)}")
        chosen = [sources.get(symbol) for symbol in symbols]
    else:
        chosen = list(sources)
        if len(chosen) != len(symbols):
            raise ValueError(f"got {len(chosen)} sources for {len(symbols)} symbols: give one per symbol")
    return [None if source is None else check_source(source) for source in chosen]


def _sources_read(asset: np.ndarray, source_rank: np.ndarray, n_assets: int) -> tuple[str | None, ...]:
    """Which source each asset's rows came from (the rank is the same on all of an asset's rows)."""
    rank_of = np.zeros(n_assets, dtype=np.int64)
    rank_of[asset] = source_rank
    return tuple(SOURCE_PREFERENCE[rank - 1] if rank > 0 else None for rank in rank_of)


def read_panel(
    symbols: Sequence[str],
    interval: str,
    sources: str | Sequence[str] | Mapping[str, str] | None = None,
    start=None,
    end=None,
    db_path: str | os.PathLike | None = None,
) -> Panel:
    """Assets aligned on the union clock of their bars with start <= ts < end (see Panel).

    sources: None (each symbol's preferred source, SOURCE_PREFERENCE), one name for all, one per symbol, or a
    {symbol: source} mapping (symbols left out use their preferred source).
    """
    if isinstance(symbols, str):
        raise TypeError("symbols must be a list of symbols, not one string")
    symbols = tuple(check_symbol(symbol) for symbol in symbols)
    if not symbols or len(set(symbols)) != len(symbols):
        raise ValueError(f"read_panel needs one or more distinct symbols, got {list(symbols)}")
    check_interval(interval)
    params: dict = {
        "interval": interval,
        "symbols": list(symbols),
        "sources": _requested_sources(symbols, sources),
        "preference": list(SOURCE_PREFERENCE),
    }
    start = to_utc(start, "start")
    if start is None:
        query = _PANEL_WANTED + _PANEL_BARS + "WHERE bars.interval = $interval"
    else:
        params["start"] = start
        query = _PANEL_WANTED + _PANEL_FLOORS + _PANEL_BARS + _PANEL_FROM_FLOORS
    query += _time_filter(params, None, end, column="bars.ts")
    with connect(db_path, read_only=True) as con:
        # Arrow, then numpy without copies (no column holds NULLs): measured faster than fetchnumpy here.
        table = con.sql(query, params=params).to_arrow_table()
    columns = {name: table.column(name).to_numpy() for name in table.column_names}
    start_us = None if start is None else start.value // 1_000  # Timestamp.value is always nanoseconds
    clock, fields, observed = align_as_of(columns["asset"], columns["ts_us"], columns, len(symbols), start_us)
    ts = pd.DatetimeIndex(clock.view("datetime64[us]"), name="ts").tz_localize("UTC")
    chosen = _sources_read(columns["asset"], columns["source_rank"], len(symbols))
    return Panel(ts=ts, symbols=symbols, sources=chosen, interval=interval, fields=fields, observed=observed)


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
    last_error, stale (True when the newest bar is older than stale_allowance, or nothing is stored).
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
    return summary.assign(stale=nothing_stored | too_old)
