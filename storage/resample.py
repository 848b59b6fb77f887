"""Coarser bars from finer stored bars, computed by DuckDB: `resample_bars`.

A coarse bar covers [bucket, bucket + width): its open is the first fine bar's open, its close the last fine
bar's close, high/low the extremes, volume the sum. Buckets are aligned to `origin` (default the Unix epoch, so
1h buckets start on the hour and 1d buckets at 00:00 UTC). A bucket is returned only once it is over
(bucket + width <= now), the same "closed bars only" rule the sources follow; a bucket that has only some of its
fine bars (a gap in the data, a market that trades part of the day) is kept with what there is.
"""
from __future__ import annotations

import os

import pandas as pd

from storage.cache import RefreshLogEntry, UpsertResult, checkpoint, commit_batch, connect, query_frame, to_utc
from storage.config import INTERVAL_SECONDS, check_interval, check_source, check_symbol, resolve_db_path
from storage.locks import refresh_lock
from storage.validation import validate_bars

DEFAULT_ORIGIN = pd.Timestamp("1970-01-01", tz="UTC")
# Storing waits this long for a running refresh to finish rather than failing at once: resampling is a quick
# follow-up job, not a competing refresh.
RESAMPLE_LOCK_WAIT_SECONDS = 30.0

_RESAMPLE_QUERY = """
SELECT time_bucket($width, ts, $origin) AS ts,
       arg_min(open, ts) AS open, max(high) AS high, min(low) AS low, arg_max(close, ts) AS close,
       sum(volume) AS volume
FROM bars
WHERE symbol = $symbol AND source = $source AND interval = $interval
GROUP BY 1
HAVING time_bucket($width, ts, $origin) + $width <= $now
ORDER BY 1
"""


def _check_coarser(from_interval: str, to_interval: str) -> None:
    fine, coarse = INTERVAL_SECONDS[check_interval(from_interval)], INTERVAL_SECONDS[check_interval(to_interval)]
    if coarse <= fine or coarse % fine:
        raise ValueError(
            f"cannot resample {from_interval} bars to {to_interval}: the target must be a whole multiple "
            f"of the source interval and longer than it"
        )


def resample_bars(
    symbol: str,
    source: str,
    from_interval: str,
    to_interval: str,
    db_path: str | os.PathLike | None = None,
    *,
    origin=DEFAULT_ORIGIN,
    now=None,
    store: bool = False,
) -> pd.DataFrame:
    """Stored from_interval bars of (symbol, source) aggregated to to_interval, as BAR_COLUMNS.

    store=True also upserts the result under (symbol, source, to_interval), replacing stored coarse bars of the
    same key, holding the refresh lock like any other writer and logging the job in refresh_log.
    now: which buckets count as closed (default: the current time).
    """
    check_symbol(symbol)
    check_source(source)
    _check_coarser(from_interval, to_interval)
    params = {
        "symbol": symbol,
        "source": source,
        "interval": from_interval,
        "width": pd.Timedelta(seconds=INTERVAL_SECONDS[to_interval]).to_pytimedelta(),
        "origin": to_utc(origin, "origin"),
        "now": to_utc(now, "now") if now is not None else pd.Timestamp.now(tz="UTC"),
    }
    with connect(db_path, read_only=True) as con:
        bars = query_frame(con, _RESAMPLE_QUERY, params)
    if store and len(bars):
        _store(bars, symbol, source, from_interval, to_interval, db_path)
    return bars


def _store(
    bars: pd.DataFrame, symbol: str, source: str, from_interval: str, to_interval: str, db_path
) -> UpsertResult:
    command = f"resample {symbol} {source} {from_interval} -> {to_interval}"
    started = pd.Timestamp.now(tz="UTC")
    bars = validate_bars(bars, f"resampled {symbol} {source} {to_interval}")
    path = resolve_db_path(db_path)
    with refresh_lock(path, command, wait_seconds=RESAMPLE_LOCK_WAIT_SECONDS) as holder:
        result = commit_batch(
            bars,
            symbol,
            source,
            to_interval,
            path,
            log=lambda result: RefreshLogEntry(
                started_at=started,
                finished_at=pd.Timestamp.now(tz="UTC"),
                who=holder.identity,
                command=command,
                outcome="ok",
                row_count=result.written,
                symbol=symbol,
                source=source,
                interval=to_interval,
            ),
        )
        checkpoint(path)
    return result
