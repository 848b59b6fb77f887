"""Jobs the concurrency tests run in separate processes: `python -m tests.storage.helpers_processes JOB ARGS`.

Each job prints one JSON line with what it saw, so the test can check it without sharing memory.
"""
from __future__ import annotations

import json
import sys
import time
from pathlib import Path


def read_like_the_app(db_path: str, stop_file: str, pause_seconds: str = "0.01") -> None:
    """Loop read_panel + cache_summary until stop_file appears; count reads and any error, never crash."""
    from storage import cache
    from storage.panel import read_panel

    reads, errors, row_counts = 0, [], set()
    while not Path(stop_file).exists():
        try:
            panel = read_panel(["BTC", "SPY", "AAPL"], "1h", db_path=db_path)
            summary = cache.cache_summary(db_path)
            reads += 1
            row_counts.add(int(summary["rows"].sum()) if len(summary) else 0)
            assert panel.fields["close"].shape == (len(panel), 3)
        except Exception as error:  # the test asserts there were none; report them instead of dying
            errors.append(f"{type(error).__name__}: {error}")
        time.sleep(float(pause_seconds))
    print(json.dumps({"reads": reads, "errors": errors, "distinct_totals": len(row_counts)}))


def hold_write_connection(db_path: str, seconds: str, ready_file: str) -> None:
    """Keep a read-write connection open (as a long batch would) and say when it holds it."""
    from storage import cache

    with cache.connect(db_path) as con:
        Path(ready_file).touch()
        time.sleep(float(seconds))
        cache.query_value(con, "SELECT count(*) FROM bars")
    print(json.dumps({"held": float(seconds)}))


def hold_refresh_lock(db_path: str, seconds: str, ready_file: str) -> None:
    from storage.locks import refresh_lock

    with refresh_lock(Path(db_path), "a long refresh held by the test"):
        Path(ready_file).touch()
        time.sleep(float(seconds))


def seed(db_path: str) -> None:
    from storage.refresh import seed_demo_if_empty

    print(json.dumps({"seeded": seed_demo_if_empty(db_path)}))


JOBS = {
    "read_like_the_app": read_like_the_app,
    "hold_write_connection": hold_write_connection,
    "hold_refresh_lock": hold_refresh_lock,
    "seed": seed,
}

if __name__ == "__main__":
    JOBS[sys.argv[1]](*sys.argv[2:])
