"""Storage benchmark: `python -m storage.bench [--repeats 5] [--bars 1000000]` prints a markdown table.

Measures what the issue sets targets for, each as the median of several runs on fresh files:

- upsert throughput for 1,000,000 new bars (target >= 750,000 bars/s, pass/fail on the cache's row), and what
  bounds it: a plain INSERT into the bars table with its primary key and without (the key's index is the gap);
  for a batch half of which overlaps
  stored keys with revised values, and for a batch that repeats stored bars unchanged (a refresh's overlap);
  the cache's way (plain INSERT of new keys by anti-join + UPDATE of changed keys, from Arrow) beside the
  textbook INSERT .. ON CONFLICT DO UPDATE from a pandas DataFrame and from Arrow;
- reading an aligned panel of 3 assets x 50,000 bars, connection included (target < 100 ms): read_panel beside
  the same alignment done by a DuckDB ASOF JOIN, and a plain query + pandas pivot + forward fill;
- the peak memory of importing the largest file the import limits allow (storage.sources.files.MAX_ROWS rows, as
  a CSV with text times and as Parquet) through the app's upload path, each in a fresh subprocess (peak RSS from
  getrusage, the baseline after the imports a server has loaded anyway), against IMPORT_MEMORY_MULTIPLE times the
  kept bars (48 bytes each): pass or fail.

Not a test: timings depend on the machine, which the table names.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import re
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import duckdb
import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.csv as pa_csv
import pyarrow.parquet as pq

from storage import cache
from storage.panel import read_panel as read_aligned_panel
from storage.sources.files import MAX_ROWS
from storage.validation import validate_bars

UPSERT_TARGET_BARS_PER_SECOND = 750_000
PANEL_TARGET_MS = 100.0
PANEL_SYMBOLS = ("BTC", "SPY", "AAPL")
KEY = {"symbol": "BTC", "source": "demo", "interval": "1m"}

_ON_CONFLICT = """
INSERT INTO bars BY NAME
SELECT $symbol AS symbol, $source AS source, $interval AS interval, ts, open, high, low, close, volume,
       now() AS ingested_at
FROM incoming
ON CONFLICT (symbol, source, interval, ts) DO UPDATE SET
    open = excluded.open, high = excluded.high, low = excluded.low, close = excluded.close,
    volume = excluded.volume, ingested_at = excluded.ingested_at
"""


def synthetic_bars(n: int, start: str = "2000-01-01", seed: int = 0) -> pd.DataFrame:
    """n one-minute bars of a random walk, already in validate_bars form."""
    rng = np.random.default_rng(seed)
    close = 100.0 * np.exp(np.cumsum(rng.normal(0.0, 1e-3, n)))
    open_ = np.concatenate([[100.0], close[:-1]])
    return pd.DataFrame(
        {
            "ts": pd.date_range(start, periods=n, freq="1min", tz="UTC").as_unit("us"),
            "open": open_,
            "high": np.maximum(open_, close) * 1.0005,
            "low": np.minimum(open_, close) * 0.9995,
            "close": close,
            "volume": rng.uniform(1.0, 100.0, n),
        }
    )


def median_seconds(run: Callable[[], float], repeats: int) -> float:
    return statistics.median(run() for _ in range(repeats))


# --- upserts ------------------------------------------------------------------------------------------------


def _cache_way(con, bars: pd.DataFrame) -> None:
    cache.write_bars(con, bars, **KEY)


def _on_conflict_pandas(con, bars: pd.DataFrame) -> None:
    con.register("incoming", bars)
    con.execute(_ON_CONFLICT, KEY)
    con.unregister("incoming")


def _on_conflict_arrow(con, bars: pd.DataFrame) -> None:
    con.register("incoming", pa.Table.from_pandas(bars, preserve_index=False))
    con.execute(_ON_CONFLICT, KEY)
    con.unregister("incoming")


UPSERT_WAYS: dict[str, Callable] = {
    "anti-join INSERT + changed-only UPDATE, Arrow (the cache)": _cache_way,
    "INSERT .. ON CONFLICT DO UPDATE, pandas": _on_conflict_pandas,
    "INSERT .. ON CONFLICT DO UPDATE, Arrow": _on_conflict_arrow,
}


def time_upsert(way: Callable, stored: pd.DataFrame | None, batch: pd.DataFrame, workdir: Path) -> tuple[float, float]:
    """Seconds for one batch (connect, transaction, commit) and for the CHECKPOINT after it, on a fresh file."""
    db_path = workdir / f"upsert-{time.monotonic_ns()}.duckdb"
    if stored is not None:
        cache.commit_batch(stored, **KEY, db_path=db_path)
        cache.checkpoint(db_path)
    started = time.perf_counter()
    with cache.connect(db_path) as con:
        con.execute("BEGIN TRANSACTION")
        way(con, batch)
        con.execute("COMMIT")
        batch_done = time.perf_counter()
        con.execute("CHECKPOINT")
    checkpoint_done = time.perf_counter()
    for leftover in workdir.glob(db_path.name + "*"):
        leftover.unlink()
    return batch_done - started, checkpoint_done - batch_done


def upsert_rows(n_bars: int, repeats: int, workdir: Path) -> list[dict]:
    fresh = synthetic_bars(n_bars)
    # Half the batch revises stored bars (every close moved a little), half is new.
    half = n_bars // 2
    revised = fresh.copy()
    revised.loc[:, ["close", "high"]] = revised[["close", "high"]].to_numpy() * 1.0001
    cases = {
        f"{n_bars:,} new bars": (None, fresh),
        f"{n_bars:,} bars, {half:,} revise stored ones": (fresh.iloc[:half], revised),
        f"{n_bars:,} bars, all stored unchanged": (fresh, fresh),
    }
    rows = []
    for case, (stored, batch) in cases.items():
        # The ways take turns within each repeat, so a change in the machine's load hits them all alike.
        timings: dict[str, list[tuple[float, float]]] = {name: [] for name in UPSERT_WAYS}
        for _ in range(repeats):
            for way_name, way in UPSERT_WAYS.items():
                timings[way_name].append(time_upsert(way, stored, batch, workdir))
        for way_name, way_timings in timings.items():
            batch_s = statistics.median(t[0] for t in way_timings)
            checkpoint_s = statistics.median(t[0] + t[1] for t in way_timings)
            spread = [n_bars / t[0] for t in way_timings]
            rows.append(
                {
                    "case": case,
                    "way": way_name,
                    "batch (s)": batch_s,
                    "bars/s": n_bars / batch_s,
                    "bars/s min..max": f"{min(spread):,.0f}..{max(spread):,.0f}",
                    "bars/s incl. CHECKPOINT": n_bars / checkpoint_s,
                    # The target is for new bars written the cache's way; other rows are comparisons.
                    "result": (("pass" if n_bars / batch_s >= UPSERT_TARGET_BARS_PER_SECOND else "FAIL")
                               if UPSERT_WAYS[way_name] is _cache_way and stored is None else "-"),
                }
            )
    validate_s = median_seconds(lambda: _seconds(lambda: validate_bars(fresh, "bench")), repeats)
    rows.append({"case": f"{n_bars:,} new bars", "way": "validate_bars alone (before any write)",
                 "batch (s)": validate_s, "bars/s": n_bars / validate_s, "bars/s min..max": "-",
                 "bars/s incl. CHECKPOINT": float("nan"), "result": "-"})
    return rows


_PLAIN_INSERT = """
INSERT INTO bars SELECT $symbol, $source, $interval, ts, open, high, low, close, volume, now() FROM incoming
"""


def index_rows(n_bars: int, repeats: int, workdir: Path) -> list[dict]:
    """What bounds writing new bars: a plain INSERT from Arrow (no anti-join, no update) into the bars table with
    its primary key, and into the same table without it, taking turns. The gap is the key's index (DuckDB keeps an
    ART index for a primary key and checks every new row against it); the cache's upsert cannot be faster than the
    first row."""
    table = pa.Table.from_pandas(synthetic_bars(n_bars), preserve_index=False)
    timings: dict[str, list[float]] = {"with its PRIMARY KEY": [], "without a key": []}
    for repeat in range(repeats):
        for name, samples in timings.items():
            db_path = workdir / f"index-{repeat}-{len(name)}.duckdb"
            con = duckdb.connect(str(db_path))
            try:
                con.execute("SET TimeZone='UTC'")
                schema = cache.SCHEMA_STATEMENTS[0]  # the cache's own bars table (NOT NULL columns, the key)
                con.execute(schema if name.startswith("with its") else re.sub(r",\s*PRIMARY KEY \([^)]*\)", "", schema))
                con.register("incoming", table)
                started = time.perf_counter()
                con.execute("BEGIN TRANSACTION")
                con.execute(_PLAIN_INSERT, KEY)
                con.execute("COMMIT")
                samples.append(time.perf_counter() - started)
            finally:
                con.close()
            for leftover in workdir.glob(db_path.name + "*"):
                leftover.unlink()
    return [{"case": f"{n_bars:,} new bars", "way": f"plain INSERT from Arrow, bars table {name} (bound)",
             "batch (s)": statistics.median(t), "bars/s": n_bars / statistics.median(t),
             "bars/s min..max": f"{n_bars / max(t):,.0f}..{n_bars / min(t):,.0f}",
             "bars/s incl. CHECKPOINT": float("nan"), "result": "-"} for name, t in timings.items()]


def _seconds(work: Callable[[], object]) -> float:
    started = time.perf_counter()
    work()
    return time.perf_counter() - started


# --- panel reads --------------------------------------------------------------------------------------------

_ASOF_PANEL = """
WITH wanted AS (
    SELECT unnest($symbols) AS symbol, generate_subscripts($symbols, 1) - 1 AS asset
),
chosen AS (
    SELECT wanted.asset, bars.ts, bars.open, bars.high, bars.low, bars.close, bars.volume
    FROM bars JOIN wanted ON bars.symbol = wanted.symbol
    WHERE bars.source = 'demo' AND bars.interval = '1m'
),
clock AS (SELECT DISTINCT ts FROM chosen),
grid AS (SELECT wanted.asset, clock.ts FROM clock CROSS JOIN wanted)
SELECT grid.ts, coalesce(chosen.ts = grid.ts, false) AS observed,
       coalesce(CASE WHEN chosen.ts = grid.ts THEN chosen.open ELSE chosen.close END, 'NaN'::DOUBLE) AS open,
       coalesce(CASE WHEN chosen.ts = grid.ts THEN chosen.high ELSE chosen.close END, 'NaN'::DOUBLE) AS high,
       coalesce(CASE WHEN chosen.ts = grid.ts THEN chosen.low ELSE chosen.close END, 'NaN'::DOUBLE) AS low,
       coalesce(chosen.close, 'NaN'::DOUBLE) AS close,
       CASE WHEN chosen.ts = grid.ts THEN chosen.volume ELSE 0.0 END AS volume
FROM grid ASOF LEFT JOIN chosen ON grid.asset = chosen.asset AND grid.ts >= chosen.ts
ORDER BY grid.ts, grid.asset
"""


def _panel_by_asof_join(db_path: Path) -> np.ndarray:
    with cache.connect(db_path, read_only=True) as con:
        columns = con.execute(_ASOF_PANEL, {"symbols": list(PANEL_SYMBOLS)}).fetchnumpy()
    return np.asarray(columns["close"]).reshape(-1, len(PANEL_SYMBOLS))


def _panel_by_pandas_pivot(db_path: Path) -> np.ndarray:
    with cache.connect(db_path, read_only=True) as con:
        long = cache.query_frame(
            con, "SELECT symbol, ts, close FROM bars WHERE source = 'demo' AND interval = '1m' "
            "AND symbol IN (SELECT unnest($symbols))", {"symbols": list(PANEL_SYMBOLS)}
        )
    return long.pivot(index="ts", columns="symbol", values="close")[list(PANEL_SYMBOLS)].ffill().to_numpy()


def panel_rows(n_bars: int, repeats: int, workdir: Path) -> list[dict]:
    """3 assets x n_bars one-minute bars; SPY and AAPL miss every 7th bar, so alignment has work to do."""
    db_path = workdir / "panel.duckdb"
    for seed, symbol in enumerate(PANEL_SYMBOLS):
        bars = synthetic_bars(n_bars, start="2024-01-01", seed=seed)
        if seed:
            bars = bars[np.arange(n_bars) % 7 != seed].reset_index(drop=True)
        cache.commit_batch(bars, symbol, "demo", "1m", db_path)
    cache.checkpoint(db_path)

    def read_panel() -> np.ndarray:
        return read_aligned_panel(PANEL_SYMBOLS, "1m", db_path=db_path).close

    reference = read_panel()
    assert np.array_equal(_panel_by_asof_join(db_path), reference, equal_nan=True), "ASOF variant disagrees"
    ways = {
        "read_panel: one query + numpy as-of (the cache)": read_panel,
        "DuckDB ASOF JOIN over the (tick x asset) grid": lambda: _panel_by_asof_join(db_path),
        "plain query + pandas pivot + ffill (close only)": lambda: _panel_by_pandas_pivot(db_path),
    }
    for way in ways.values():
        way()  # warm the file cache: the app reads a file it has read before
    timings: dict[str, list[float]] = {name: [] for name in ways}
    for _ in range(repeats):
        for name, way in ways.items():
            timings[name].append(_seconds(way))
    case = f"{len(PANEL_SYMBOLS)} assets x {n_bars:,} bars"
    return [{"case": case, "way": name, "median (ms)": 1000 * statistics.median(t),
             "min..max (ms)": f"{1000 * min(t):.1f}..{1000 * max(t):.1f}",
             "result": ("pass" if 1000 * statistics.median(t) < PANEL_TARGET_MS else "FAIL") if i == 0 else "-"}
            for i, (name, t) in enumerate(timings.items())]


# --- import memory ------------------------------------------------------------------------------------------

# An import's peak memory above the process's baseline, in multiples of the bars it keeps (48 bytes a bar: ts and
# five float64), i.e. 384 bytes a bar. Where it goes, measured at MAX_ROWS on the dev machine: reading the file in
# batches and checking it about 2x; DuckDB about 4.5x (~210 bytes a bar) while the one transaction commits, since
# the primary-key index of the new rows is built in memory and merged at COMMIT and cannot spill to disk.
IMPORT_MEMORY_MULTIPLE = 8.0
KEPT_BYTES_PER_BAR = 48

# Runs in a fresh interpreter: argv = path, file name, db path. Prints one JSON line.
_IMPORT_CHILD = r"""
import json, re, resource, sys, time
import duckdb, exchange_calendars, pyarrow.parquet  # what the app has loaded before anyone imports
from storage.refresh import import_uploaded_file
from storage.sessions import nyse_schedule
import pandas as pd
nyse_schedule(pd.Timestamp("2020-01-01"), pd.Timestamp("2020-01-02"))
status = open("/proc/self/status").read()
baseline = int(re.search(r"VmRSS:\s+(\d+)", status).group(1)) * 1024
path, name, db = sys.argv[1:4]
started = time.perf_counter()
with open(path, "rb") as upload:
    (result,) = import_uploaded_file(name, upload, "BTC", "1m", db).results
seconds = time.perf_counter() - started
peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
print(json.dumps({"outcome": result.outcome, "message": result.message[:200], "kept": result.fetched,
                  "baseline": baseline, "peak": peak, "seconds": seconds}))
"""


def largest_import_files(workdir: Path, rows: int) -> dict[str, Path]:
    """rows one-minute bars as the product's plain CSV (ISO text times: the costliest to parse) and as Parquet."""
    bars = synthetic_bars(rows, start="2018-01-01")
    table = pa.table({
        "ts": pa.array(bars["ts"].dt.strftime("%Y-%m-%dT%H:%M:%SZ")),
        **{c: pa.array(np.round(bars[c].to_numpy(), 6)) for c in ("open", "high", "low", "close", "volume")},
    })
    csv_path, parquet_path = workdir / "largest.csv", workdir / "largest.parquet"
    pa_csv.write_csv(table, csv_path, pa_csv.WriteOptions(quoting_style="none"))
    pq.write_table(pa.Table.from_pandas(bars, preserve_index=False), parquet_path)
    return {"CSV": csv_path, "Parquet": parquet_path}


def import_memory_rows(rows: int, workdir: Path) -> list[dict]:
    out = []
    for kind, path in largest_import_files(workdir, rows).items():
        db_path = workdir / f"import-{kind}.duckdb"
        done = subprocess.run(
            [sys.executable, "-c", _IMPORT_CHILD, str(path), path.name, str(db_path)],
            capture_output=True, text=True, check=True, cwd=Path(__file__).resolve().parents[1],
        )
        measured = json.loads(done.stdout.strip().splitlines()[-1])
        if measured["outcome"] != "ok":
            raise RuntimeError(f"the import failed: {measured['message']}")
        kept = measured["kept"] * KEPT_BYTES_PER_BAR
        above = measured["peak"] - measured["baseline"]
        budget = IMPORT_MEMORY_MULTIPLE * kept
        mb = 1024 * 1024
        out.append({
            "file": f"{kind}, {measured['kept']:,} rows, {path.stat().st_size / mb:.0f} MB",
            "kept bars (MB)": kept / mb,
            "baseline RSS (MB)": measured["baseline"] / mb,
            "peak RSS (MB)": measured["peak"] / mb,
            "above baseline (x kept)": above / kept,
            f"budget ({IMPORT_MEMORY_MULTIPLE:g}x kept, MB)": budget / mb,
            "import (s)": measured["seconds"],
            "result": "pass" if above <= budget else "FAIL",
        })
    return out


# --- report -------------------------------------------------------------------------------------------------


def machine() -> str:
    cpu = platform.processor() or "unknown CPU"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return (
        f"{cpu}, {os.cpu_count()} cores, {platform.system()} {platform.release()}, Python {platform.python_version()}, "
        f"DuckDB {duckdb.__version__}, pandas {pd.__version__}, pyarrow {pa.__version__}"
    )


def markdown(rows: list[dict], formats: dict[str, str]) -> str:
    columns = list(rows[0])
    lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    for row in rows:
        cells = [formats.get(c, "{}").format(row[c]) if c in formats else str(row[c]) for c in columns]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m storage.bench", description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=5, help="runs per measurement; the median is shown")
    parser.add_argument("--panel-repeats", type=int, default=21, help="runs per panel read; the median is shown")
    parser.add_argument("--bars", type=int, default=1_000_000, help="bars per upsert batch")
    parser.add_argument("--panel-bars", type=int, default=50_000, help="bars per asset in the panel read")
    parser.add_argument("--import-rows", type=int, default=MAX_ROWS, help="rows of the largest import (the limit)")
    parser.add_argument("--only", choices=["upsert", "panel", "import"], help="run one benchmark")
    args = parser.parse_args(argv)
    load_before = os.getloadavg()[0]  # other work on the machine skews every figure: say how much there was

    with tempfile.TemporaryDirectory(prefix="storage-bench-") as tmp:
        workdir = Path(tmp)
        upserts = upsert_rows(args.bars, args.repeats, workdir) if args.only in (None, "upsert") else []
        upserts += index_rows(args.bars, args.repeats, workdir) if args.only in (None, "upsert") else []
        panels = panel_rows(args.panel_bars, args.panel_repeats, workdir) if args.only in (None, "panel") else []
        imports = import_memory_rows(args.import_rows, workdir) if args.only in (None, "import") else []

    print(f"Machine: {machine()}")
    print(f"Load average (1 min) before / after the run: {load_before:.2f} / {os.getloadavg()[0]:.2f}")
    print(f"Upserts: median of {args.repeats} runs, each on a fresh file; panel reads: median of {args.panel_repeats}.\n")
    if upserts:
        print(f"### Upsert (target >= {UPSERT_TARGET_BARS_PER_SECOND:,} new bars/s)\n")
        print(markdown(upserts, {"batch (s)": "{:.3f}", "bars/s": "{:,.0f}", "bars/s incl. CHECKPOINT": "{:,.0f}"}))
    if panels:
        print(f"\n### Panel read, connection included (target < {PANEL_TARGET_MS:.0f} ms)\n")
        print(markdown(panels, {"median (ms)": "{:.1f}"}))
    if imports:
        print(f"\n### Import memory: the largest file allowed, through the upload path, in a fresh process (budget: "
              f"peak RSS above baseline <= {IMPORT_MEMORY_MULTIPLE:g} x the kept bars)\n")
        number = "{:,.0f}"
        print(markdown(imports, {k: number for k in imports[0] if "MB" in k} | {
            "above baseline (x kept)": "{:.2f}", "import (s)": "{:.1f}"}))


if __name__ == "__main__":
    main()
