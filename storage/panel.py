"""The aligned panel: several assets on one clock without looking ahead, and everything that comes with it.

This module is the contract between storage and the engine. The engine computes on a `Panel` it is handed and
imports nothing else from storage: the type, the checks (`check_panel`), the own-bar helpers, the data fingerprint
a checkpoint records, and `LoadedPanel` (a panel plus what it is). The roads to a panel live here too:

- `read_panel`: the DuckDB cache, aligned with `align_as_of`;
- `demo_panel`: the synthetic demo market straight from its generator, aligned by the same `align_as_of`, so it
  is identical to the panel read back from a cache filled by `storage.refresh` with the demo source;
- `cached_panel`: `read_panel` as a `LoadedPanel`, refusing a symbol with no bars.

Assets are named as storage.symbols names them (`asset_name`, re-exported here for the engine): BTC-USD and
BTCUSDT are the asset BTC, read from whichever stored spelling has bars.

Both loaders attach the demo's planted truth when the data is the demo market. Importing this module loads no
database: the cache is imported inside `read_panel`, so the engine's import of the contract carries no I/O.
"""
from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np
import pandas as pd

from storage.config import INTERVAL_SECONDS, check_interval, check_source, check_symbol
from storage.sources.demo import (
    DEMO_INTERVALS,
    DEMO_SYMBOLS,
    VARIANTS,
    PlantedTruth,
    demo_market,
)
from storage.symbols import asset_name, choose_stored

PRICE_FIELDS: tuple[str, ...] = ("open", "high", "low", "close")
PANEL_FIELDS: tuple[str, ...] = (*PRICE_FIELDS, "volume")


@dataclass(frozen=True, eq=False)
class Panel:
    """Several assets on one clock, without looking ahead.

    The clock. Rows are periods of the interval on the UTC grid: [tau, tau + interval) with tau a multiple of the
    interval since the epoch (hours at :00, days at 00:00 UTC, minutes on the minute). A bar opening at o closes
    at o + interval and belongs to the row whose period END is the first grid point at or after its close: the
    row is read at its end, so the bar is known from the end of that row and never before. Aligned bars (every
    :00 hourly bar, every 00:00 UTC daily bar) land on the row that starts at their open; an equity bar a vendor
    bins from 09:30 ET (13:30-14:30 UTC) lands on the row [14:00, 15:00), beside the 14:00 crypto bar. Several
    bars of one asset in one row (a finer feed) are aggregated: first open, highest high, lowest low, last close,
    summed volume. The panel has a row for every period in which some asset has a bar (not for periods where
    every market was closed). `storage.panel.bar_row` is the rule in code.

    ts: (T,) each row's period start tau, UTC, strictly increasing.
    symbols: (A,) the assets, in column order.
    fields: "open", "high", "low", "close", "volume" -> float64 (T, A).
    observed: bool (T, A), True where the asset had a bar closing in the row's period (its market was open).
    Where an asset has no bar (its market is closed), its open/high/low/close are its last known CLOSE (a flat
    bar at the last traded price, never a value from later) and its volume is 0; before its first bar they are NaN.
    sources: (A,) the source each asset was read from, None where no bar was read; None when the panel was built
    from arrays (tests, synthetic markets).
    interval: the bar interval ("1h", "1d", ...), the clock's step (`clock_step`); None when not known.
    stored_symbols: (A,) the stored symbol each asset was read from (BTC-USD for the asset BTC, see
    storage.symbols), None where no bar was read; None when the panel was not read from the cache.
    """

    ts: pd.DatetimeIndex
    symbols: tuple[str, ...]
    fields: Mapping[str, np.ndarray]
    observed: np.ndarray
    sources: tuple[str | None, ...] | None = None
    interval: str | None = None
    stored_symbols: tuple[str | None, ...] | None = None

    def __len__(self) -> int:
        return len(self.ts)

    @property
    def close(self) -> np.ndarray:
        return self.fields["close"]

    @property
    def clock_step(self) -> pd.Timedelta | None:
        """One row of the clock (the interval) as a duration; None when the interval is not known."""
        return None if self.interval is None else interval_duration(self.interval)


def interval_duration(interval: str) -> pd.Timedelta:
    """The length of one bar of this interval ("1h" -> 1 hour)."""
    return pd.Timedelta(seconds=INTERVAL_SECONDS[check_interval(interval)])


def check_panel(panel: Panel) -> None:
    """Raise ValueError naming the field, asset and time of the first thing that breaks the panel contract."""
    n_rows, n_assets = len(panel.ts), len(panel.symbols)
    if n_assets == 0:
        raise ValueError("panel has no symbols")
    if not isinstance(panel.ts, pd.DatetimeIndex) or panel.ts.tz is None:
        raise ValueError("panel.ts must be a timezone-aware (UTC) DatetimeIndex")
    if not panel.ts.is_monotonic_increasing or panel.ts.has_duplicates:
        raise ValueError("panel.ts must be strictly increasing")
    observed = np.asarray(panel.observed)
    if observed.shape != (n_rows, n_assets) or observed.dtype != bool:
        raise ValueError(f"panel.observed must be bool with shape {(n_rows, n_assets)}, got {observed.dtype} {observed.shape}")
    for name in PANEL_FIELDS:
        if name not in panel.fields:
            raise ValueError(f"panel.fields is missing {name!r} (has {sorted(panel.fields)})")
        values = np.asarray(panel.fields[name])
        if values.shape != (n_rows, n_assets):
            raise ValueError(f"panel.fields[{name!r}] has shape {values.shape}, expected {(n_rows, n_assets)}")
        bad_prices = observed & ~(np.isfinite(values) & ((values > 0) if name in PRICE_FIELDS else (values >= 0)))
        if bad_prices.any():
            row, col = np.argwhere(bad_prices)[0]
            raise ValueError(
                f"panel.fields[{name!r}] for {panel.symbols[col]} at {panel.ts[row]} is {values[row, col]!r}: "
                "observed bars need finite positive prices and non-negative volume"
            )


# --- the asset's own bars -------------------------------------------------------------------------------------


def own_bars(panel: Panel, asset: int) -> tuple[np.ndarray, pd.DataFrame]:
    """(union rows of the asset's own bars (n,), its OHLCV on those bars as a DataFrame (n, 5))."""
    rows = np.flatnonzero(np.asarray(panel.observed)[:, asset])
    frame = pd.DataFrame({name: np.asarray(panel.fields[name])[rows, asset] for name in PANEL_FIELDS})
    return rows, frame


def own_bar_log_returns(panel: Panel) -> np.ndarray:
    """(A, T) log return from the asset's previous own close to this one; NaN where closed and at its first bar."""
    out = np.full((len(panel.symbols), len(panel.ts)), np.nan)
    for asset in range(len(panel.symbols)):
        rows, bars = own_bars(panel, asset)
        out[asset, rows[1:]] = np.diff(np.log(bars["close"].to_numpy()))
    return out


# --- as-of alignment ------------------------------------------------------------------------------------------


def bar_row(open_us: np.ndarray, interval_us: int) -> np.ndarray:
    """The clock row (its period start tau, epoch microseconds) of bars opening at open_us: the row whose period
    end is the first multiple of the interval at or after the bar's close (open + interval). See Panel."""
    close_us = np.asarray(open_us, dtype=np.int64) + interval_us
    return -(-close_us // interval_us) * interval_us - interval_us  # ceil(close) on the grid, minus one period


def align_as_of(
    asset: np.ndarray,
    ts_us: np.ndarray,
    values: Mapping[str, np.ndarray],
    n_assets: int,
    start_us: int | None,
    *,
    interval_us: int,
    end_us: int | None = None,
) -> tuple[np.ndarray, dict[str, np.ndarray], np.ndarray]:
    """Long bars -> (clock, fields, observed) on the clock described on Panel.

    asset (n,) int, ts_us (n,) int64 bar opens in epoch microseconds, values[name] (n,) float64, in any order;
    interval_us: the clock's step. The clock keeps the rows with start_us <= tau < end_us (None: no bound); bars
    in earlier rows only serve as as-of values. Returns clock (T,) int64 row starts, fields[name] (T, n_assets),
    observed (T, n_assets).
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

    # Each asset's bars on its rows: one aggregated bar per row it has bars in (rows ascending).
    per_asset = [_bars_by_row(ts_us, values, by_asset[bounds[a] : bounds[a + 1]], interval_us)
                 for a in range(n_assets)]

    # The clock: the union of the rows with bars. Concatenated sorted runs sort in O(n) with timsort.
    clock = np.sort(np.concatenate([rows for rows, _ in per_asset] or [np.zeros(0, np.int64)]), kind="stable")
    if start_us is not None:
        clock = clock[clock >= start_us]
    if end_us is not None:
        clock = clock[clock < end_us]
    if len(clock):
        clock = clock[np.concatenate(([True], clock[1:] != clock[:-1]))]  # (T,)

    shape = (len(clock), n_assets)
    fields = {name: np.full(shape, np.nan) for name in PANEL_FIELDS}
    observed = np.zeros(shape, dtype=bool)
    for a, (own_rows, bars) in enumerate(per_asset):
        if len(own_rows) == 0:
            continue  # nothing stored for this asset: NaN and unobserved throughout
        latest = np.searchsorted(own_rows, clock, side="right") - 1  # the last row with a bar at or before each tick
        known = latest >= 0
        latest = np.maximum(latest, 0)
        is_bar = known & (own_rows[latest] == clock)
        last_close = np.where(known, bars["close"][latest], np.nan)
        fields["close"][:, a] = last_close
        for name in ("open", "high", "low"):
            fields[name][:, a] = np.where(is_bar, bars[name][latest], last_close)
        fields["volume"][:, a] = np.where(is_bar, bars["volume"][latest], 0.0)
        observed[:, a] = is_bar
    return clock, fields, observed


def _bars_by_row(ts_us: np.ndarray, values: Mapping[str, np.ndarray], run: np.ndarray, interval_us: int
                 ) -> tuple[np.ndarray, dict[str, np.ndarray]]:
    """One asset's bars (indices `run`, in time order) -> (its rows (m,) ascending, OHLCV (m,) per row): first
    open, highest high, lowest low, last close, summed volume of the bars in each row."""
    rows = bar_row(ts_us[run], interval_us)  # non-decreasing, as the opens are
    own = {name: np.asarray(values[name])[run] for name in PANEL_FIELDS}
    first = np.flatnonzero(np.concatenate(([True], rows[1:] != rows[:-1]))) if len(rows) else np.zeros(0, np.int64)
    if len(first) == len(rows):
        return rows, own  # one bar per row (every aligned feed): the bars as they are
    last = np.concatenate((first[1:], [len(rows)])) - 1
    return rows[first], {
        "open": own["open"][first],
        "high": np.maximum.reduceat(own["high"], first),
        "low": np.minimum.reduceat(own["low"], first),
        "close": own["close"][last],
        "volume": np.add.reduceat(own["volume"], first),
    }


def _interval_us(interval: str) -> int:
    return INTERVAL_SECONDS[check_interval(interval)] * 1_000_000


def _clock_index(clock_us: np.ndarray) -> pd.DatetimeIndex:
    return pd.DatetimeIndex(clock_us.view("datetime64[us]"), name="ts").tz_localize("UTC")


# --- the fingerprint a checkpoint records ---------------------------------------------------------------------


@dataclass(frozen=True)
class DataFingerprint:
    """What a model was trained on: enough to refuse a misfit and to key cached diagnostics."""

    symbols: tuple[str, ...]
    interval: str
    first_ts: str
    last_ts: str
    n_rows: int
    content_hash: str
    sources: tuple[str, ...] = ()

    @classmethod
    def of(cls, *, symbols, interval: str, ts, arrays: dict[str, np.ndarray], sources=()) -> "DataFingerprint":
        digest = hashlib.sha256()
        digest.update(json.dumps([list(symbols), interval]).encode())
        digest.update(np.asarray(ts, dtype="datetime64[us]").astype(np.int64).tobytes())
        for name in sorted(arrays):
            # NaN bytes are canonical under numpy, so equal data always hashes equal.
            digest.update(name.encode())
            digest.update(np.ascontiguousarray(arrays[name], dtype=np.float64).tobytes())
        ts = np.asarray(ts, dtype="datetime64[us]")
        return cls(
            symbols=tuple(symbols), interval=interval,
            first_ts=str(ts[0]) if len(ts) else "", last_ts=str(ts[-1]) if len(ts) else "",
            n_rows=int(len(ts)), content_hash=digest.hexdigest()[:16], sources=tuple(sources),
        )

    @classmethod
    def from_dict(cls, data: dict) -> "DataFingerprint":
        return cls(**{**data, "symbols": tuple(data["symbols"]), "sources": tuple(data.get("sources", ()))})


def panel_fingerprint(panel: Panel, interval: str, sources=()) -> DataFingerprint:
    """Symbols, interval, span and a hash of every OHLCV value and the observed mask."""
    arrays = {name: np.asarray(panel.fields[name]) for name in PANEL_FIELDS}
    arrays["observed"] = np.asarray(panel.observed).astype(np.float64)
    return DataFingerprint.of(symbols=panel.symbols, interval=interval, ts=panel.ts, arrays=arrays, sources=sources)


# --- a panel and what it is -----------------------------------------------------------------------------------


@dataclass(frozen=True)
class LoadedPanel:
    """A panel plus what it is: enough to label it on screen, fingerprint it for a checkpoint and, for the demo
    market, check what a model found against what was planted."""

    panel: Panel
    interval: str
    sources: tuple[str, ...]  # one per symbol ("demo:planted:7", "yfinance", ...)
    label: str  # e.g. "demo 1d, planted, seed 7 (SYNTHETIC)"
    synthetic: bool
    truth: PlantedTruth | None = None  # the demo's planted structure when every asset is demo data

    @property
    def symbols(self) -> tuple[str, ...]:
        return tuple(self.panel.symbols)

    def fingerprint(self) -> DataFingerprint:
        return panel_fingerprint(self.panel, self.interval, self.sources)


def demo_panel(interval: str = "1d", variant: str = "planted", seed: int = 7,
               symbols: tuple[str, ...] = DEMO_SYMBOLS) -> LoadedPanel:
    """The demo market (SYNTHETIC) aligned on the panel's clock, without a database, with its planted truth."""
    if interval not in DEMO_INTERVALS:
        raise ValueError(f"the demo has no {interval!r} bars: choose one of {', '.join(DEMO_INTERVALS)}")
    if variant not in VARIANTS:
        raise ValueError(f"demo variant {variant!r} is not known: choose one of {', '.join(VARIANTS)}")
    unknown = [s for s in symbols if s not in DEMO_SYMBOLS]
    if unknown or not symbols:
        raise ValueError(f"the demo market has {', '.join(DEMO_SYMBOLS)}; got {list(symbols)}")
    market = demo_market(interval, variant, seed)
    frames = [market.bars[symbol] for symbol in symbols]
    asset = np.concatenate([np.full(len(f), a, dtype=np.int64) for a, f in enumerate(frames)])
    ts_us = np.concatenate([pd.DatetimeIndex(f["ts"]).as_unit("us").asi8 for f in frames])  # epoch microseconds
    values = {name: np.concatenate([f[name].to_numpy(dtype=np.float64) for f in frames]) for name in PANEL_FIELDS}
    clock, fields, observed = align_as_of(asset, ts_us, values, len(symbols), None,
                                          interval_us=_interval_us(interval))
    panel = Panel(ts=_clock_index(clock), symbols=tuple(symbols), fields=fields, observed=observed,
                  sources=tuple("demo" for _ in symbols), interval=interval)
    check_panel(panel)
    return LoadedPanel(panel, interval, tuple(f"demo:{variant}:{seed}" for _ in symbols),
                       f"demo {interval}, {variant}, seed {seed} (SYNTHETIC)", synthetic=True, truth=market.truth)


def _cached_demo_truth(panel: Panel) -> PlantedTruth | None:
    """The planted truth of a panel read from the cache when every asset is the demo source, else None.

    The cache stores the demo under source "demo" without its variant or seed. `storage.refresh` seeds the default
    generator (planted, seed 7), which is deterministic per (interval, variant, seed), so regenerating it gives the
    truth of the stored bars, and their closes say whether they are those bars: demo bars fetched with another seed
    or variant, or resampled to another interval, have no truth here.
    """
    if not panel.sources or set(panel.sources) != {"demo"} or panel.interval not in DEMO_INTERVALS:
        return None
    market = demo_market(panel.interval)
    for asset, symbol in enumerate(panel.symbols):
        if symbol not in market.bars:
            return None
        bars = market.bars[symbol]
        generated = pd.Series(bars["close"].to_numpy(), index=pd.DatetimeIndex(bars["ts"]))
        rows = np.flatnonzero(np.asarray(panel.observed)[:, asset])
        if not np.array_equal(generated.reindex(panel.ts[rows]).to_numpy(), np.asarray(panel.close)[rows, asset]):
            return None
    return market.truth


def cached_panel(symbols, interval: str, *, db_path: str | os.PathLike | None = None,
                 sources=None, start=None, end=None) -> LoadedPanel:
    """A panel read from the DuckDB bar cache (read_panel); refuses a symbol with no bars.

    The label says which stored symbol an asset was read from when it differs from the asset's name.
    """
    panel = read_panel(symbols, interval, sources=sources, start=start, end=end, db_path=db_path)
    empty = [s for s, source in zip(panel.symbols, panel.sources) if source is None]
    if empty:
        raise ValueError(
            f"the cache has no {interval} bars for {', '.join(empty)}"
            + (f" between {start} and {end}" if start or end else "")
            + ": refresh them first (python -m storage.refresh)"
        )
    check_panel(panel)
    synthetic = "demo" in panel.sources  # the demo market seeded into the cache is still synthetic
    read_as = [f"{name} from {stored}" for name, stored in zip(panel.symbols, panel.stored_symbols) if stored != name]
    label = (f"{', '.join(panel.symbols)} {interval} from the cache" + (f" ({'; '.join(read_as)})" if read_as else "")
             + (" (SYNTHETIC demo data)" if synthetic else ""))
    return LoadedPanel(panel, interval, tuple(panel.sources), label, synthetic=synthetic,
                       truth=_cached_demo_truth(panel))


# --- reading the panel from the cache -------------------------------------------------------------------------


# The panel is read in one query and aligned in numpy. The query returns the chosen series' bars in long form
# (asset index, epoch microseconds, OHLCV); align_as_of puts each bar on its clock row (bar_row) and, for every
# row, np.searchsorted finds each asset's latest row with a bar at or before it, which is exactly an ASOF join on
# the bars' close times: a value can only come from the past.
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
# start shows its last price there instead of NaN, while older history is skipped. That bar is also the only one
# that can open before start and still close in a row at or after it (a :30 bar), so no row is read half.
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


_STORED_SERIES = "SELECT DISTINCT symbol, source FROM bars WHERE interval = $interval"


def _stored_series(
    symbols: tuple[str, ...], requested: list[str | None], stored: list[tuple[str, str]], preference: Sequence[str]
) -> list[tuple[str, str | None]]:
    """Per asset, the (stored symbol, source) to read: its spelling with bars at the interval from the requested
    source, or else the preferred one (storage.symbols.choose_stored); (the name, the requested source) when no
    spelling is stored, which reads nothing and leaves the asset empty."""
    read = []
    for symbol, source in zip(symbols, requested):
        found = choose_stored(symbol, stored, tuple(preference), source=source)
        read.append(found if found is not None else (symbol, source))
    return read


def _sources_read(
    asset: np.ndarray, source_rank: np.ndarray, n_assets: int, preference: Sequence[str]
) -> tuple[str | None, ...]:
    """Which source each asset's rows came from (the rank is the same on all of an asset's rows)."""
    rank_of = np.zeros(n_assets, dtype=np.int64)
    rank_of[asset] = source_rank
    return tuple(preference[rank - 1] if rank > 0 else None for rank in rank_of)


def read_panel(
    symbols: Sequence[str],
    interval: str,
    sources: str | Sequence[str] | Mapping[str, str] | None = None,
    start=None,
    end=None,
    db_path: str | os.PathLike | None = None,
) -> Panel:
    """Assets aligned on the clock of the interval (see Panel): the rows with start <= row start < end, from the
    bars in the cache that open before end (and as-of values from before start).

    symbols: asset names or any stored spelling of them (storage.symbols: BTC, BTC-USD and BTCUSDT are the asset
    BTC); each is read from whichever stored spelling has bars at this interval, from its preferred source, and the
    panel keeps the names asked for (Panel.stored_symbols says what was read).
    sources: None (each symbol's preferred source, storage.cache.SOURCE_PREFERENCE), one name for all, one per
    symbol, or a {symbol: source} mapping (symbols left out use their preferred source).
    """
    from storage.cache import (  # the database loads only when a panel is read
        SOURCE_PREFERENCE,
        connect,
        to_utc,
    )

    if isinstance(symbols, str):
        raise TypeError("symbols must be a list of symbols, not one string")
    symbols = tuple(check_symbol(symbol) for symbol in symbols)
    if not symbols or len({asset_name(s) for s in symbols}) != len(symbols):
        raise ValueError(f"read_panel needs one or more distinct assets, got {list(symbols)}")
    check_interval(interval)
    params: dict = {"interval": interval, "preference": list(SOURCE_PREFERENCE)}
    start, end = to_utc(start, "start"), to_utc(end, "end")
    if start is None:
        query = _PANEL_WANTED + _PANEL_BARS + "WHERE bars.interval = $interval"
    else:
        params["start"] = start
        query = _PANEL_WANTED + _PANEL_FLOORS + _PANEL_BARS + _PANEL_FROM_FLOORS
    if end is not None:
        params["end"] = end
        query += " AND bars.ts < $end"
    with connect(db_path, read_only=True) as con:
        stored = con.execute(_STORED_SERIES, {"interval": interval}).fetchall()
        read = _stored_series(symbols, _requested_sources(symbols, sources), stored, SOURCE_PREFERENCE)
        params["symbols"], params["sources"] = [symbol for symbol, _ in read], [source for _, source in read]
        # Arrow, then numpy without copies (no column holds NULLs): measured faster than fetchnumpy here.
        table = con.sql(query, params=params).to_arrow_table()
    columns = {name: table.column(name).to_numpy() for name in table.column_names}
    start_us = None if start is None else start.value // 1_000  # Timestamp.value is always nanoseconds
    end_us = None if end is None else end.value // 1_000
    clock, fields, observed = align_as_of(columns["asset"], columns["ts_us"], columns, len(symbols), start_us,
                                          interval_us=_interval_us(interval), end_us=end_us)
    chosen = _sources_read(columns["asset"], columns["source_rank"], len(symbols), SOURCE_PREFERENCE)
    stored_symbols = tuple(symbol if source else None for (symbol, _), source in zip(read, chosen))
    return Panel(ts=_clock_index(clock), symbols=symbols, fields=fields, observed=observed, sources=chosen,
                 interval=interval, stored_symbols=stored_symbols)
