"""Several real processes on one DuckDB file: the app reading while a refresh writes, a refresh killed at random
moments, two refreshes at once, two processes seeding at once."""
from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import duckdb
import pytest

from storage import cache, locks
from storage.config import CacheSettings
from storage.locks import CacheBusyError
from storage.panel import read_panel
from storage.refresh import EXIT_BUSY, RefreshRequest, run_refresh
from tests.storage.helpers_bars import make_bars

REPO_ROOT = Path(__file__).resolve().parents[2]
KILL_ITERATIONS = 15
BIG_IMPORT_BARS = 200_000


def start_python(*args: str, **options) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, *args], cwd=REPO_ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, **options
    )


def run_to_end(*args: str, timeout: float = 120) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, *args], cwd=REPO_ROOT, capture_output=True, text=True, timeout=timeout)


def start_job(job: str, *args) -> subprocess.Popen:
    return start_python("-m", "tests.storage.helpers_processes", job, *map(str, args))


def refresh_cli(*args) -> list[str]:
    return ["-m", "storage.refresh", *map(str, args)]


def wait_for(path: Path, process: subprocess.Popen, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while not path.exists():
        assert process.poll() is None, f"helper exited early: {process.communicate()}"
        assert time.monotonic() < deadline, f"{path} did not appear"
        time.sleep(0.02)


def json_result(process: subprocess.Popen, timeout: float = 60.0) -> dict:
    out, err = process.communicate(timeout=timeout)
    assert process.returncode == 0, err
    return json.loads(out.strip().splitlines()[-1])


def duplicate_keys(db_path: Path) -> int:
    with cache.connect(db_path, read_only=True) as con:
        return cache.query_value(
            con, "SELECT count(*) FROM (SELECT symbol, source, interval, ts FROM bars GROUP BY ALL HAVING count(*) > 1)"
        )


def bars_per_symbol(db_path: Path) -> dict[str, int]:
    with cache.connect(db_path, read_only=True) as con:
        return dict(con.execute("SELECT symbol, count(*) FROM bars GROUP BY symbol").fetchall())


def test_the_app_reads_while_a_refresh_writes_and_never_sees_a_lock_error(db_path, tmp_path):
    files = {}
    for seed, symbol in enumerate(["BTC", "SPY"]):
        files[symbol] = tmp_path / f"{symbol}.parquet"
        make_bars(30_000, start="2019-01-01", freq="1h", seed=seed).to_parquet(files[symbol])
    stop = tmp_path / "stop"
    reader = start_job("read_like_the_app", db_path, stop)  # starts before the cache file even exists

    try:
        writers = [
            run_to_end(*refresh_cli("--source", "parquet", "--path", path, "--symbol", symbol, "--interval", "1h",
                                    "--db", db_path))
            for symbol, path in files.items()
        ]
        writers.append(run_to_end(*refresh_cli("--symbols", "BTC", "SPY", "AAPL", "--interval", "1h", "--db", db_path)))
    finally:
        stop.touch()
    seen = json_result(reader)

    assert [w.returncode for w in writers] == [0, 0, 0], [w.stderr for w in writers]
    assert seen["errors"] == []
    assert seen["reads"] > 0
    assert seen["distinct_totals"] >= 2  # the reader really read while the cache was being filled
    assert bars_per_symbol(db_path) == {"BTC": 30_000 + 26_304, "SPY": 30_000 + 5_474, "AAPL": 5_474}


def test_a_reader_waits_out_a_short_batch_and_explains_a_long_one(db_path, tmp_path):
    cache.upsert_bars(make_bars(10), "BTC", "demo", "1h", db_path)

    ready = tmp_path / "short"
    short = start_job("hold_write_connection", db_path, 1.0, ready)
    wait_for(ready, short)
    assert len(cache.read_bars("BTC", "1h", db_path=db_path)) == 10  # waited for the batch, no error
    json_result(short)

    ready = tmp_path / "long"
    long = start_job("hold_write_connection", db_path, 30.0, ready)
    try:
        wait_for(ready, long)
        with pytest.raises(CacheBusyError) as busy:
            with cache.connect(db_path, read_only=True, settings=CacheSettings(db_path, lock_retry_seconds=0.5)):
                pass
    finally:
        long.kill()
        long.communicate()
    message = str(busy.value)
    assert f"pid {long.pid}" in message and "try again in a moment" in message
    assert "Could not set lock" not in message and "IO Error" not in message


def test_a_refresh_killed_at_any_moment_stores_the_whole_batch_or_none_of_it(db_path, tmp_path):
    big = tmp_path / "big.parquet"
    bars = make_bars(BIG_IMPORT_BARS, start="2015-01-01", freq="1min", seed=11)
    bars.to_parquet(big)

    def import_as(symbol: str, into: Path = db_path) -> list[str]:
        return refresh_cli("--source", "parquet", "--path", big, "--symbol", symbol, "--interval", "1m", "--db", into)

    # Calibrate on another file, so that the first kills below may also land while the cache file is created.
    started = time.monotonic()
    calibration = run_to_end(*import_as("FIRST", into=tmp_path / "calibration.duckdb"))
    whole_run = time.monotonic() - started
    assert calibration.returncode == 0, calibration.stderr

    # Kill moments spread from a quarter of a whole run (about when the interpreter has finished importing and
    # starts reading the file) to a little past its end, so they land in reading, validating, the write
    # transaction, the checkpoint, and just after it. Seeded: a failure can be replayed.
    rng = random.Random(20241122)
    killed_midway = 0
    for i in range(KILL_ITERATIONS):
        symbol = f"K{i}"
        refresh = start_python(*import_as(symbol))
        time.sleep(rng.uniform(0.25 * whole_run, 1.1 * whole_run))
        refresh.send_signal(signal.SIGKILL)
        refresh.communicate()
        killed_midway += refresh.returncode == -signal.SIGKILL

        # The cache opens, holds no duplicate key, and holds this import whole or not at all, with a log row
        # saying 'ok' exactly when the bars are there.
        counts = bars_per_symbol(db_path)
        assert counts.get(symbol, 0) in (0, BIG_IMPORT_BARS), f"iteration {i}: partial batch {counts.get(symbol)}"
        assert duplicate_keys(db_path) == 0
        log = cache.recent_refreshes(100, db_path)
        logged_ok = ((log["symbol"] == symbol) & (log["outcome"] == "ok")).any()
        assert logged_ok == (counts.get(symbol, 0) == BIG_IMPORT_BARS), f"iteration {i}"

    assert killed_midway > 0  # otherwise no kill landed inside a refresh and the loop proved nothing
    after = run_to_end(*import_as("AFTER"))
    assert after.returncode == 0, after.stderr
    assert bars_per_symbol(db_path)["AFTER"] == BIG_IMPORT_BARS
    assert duplicate_keys(db_path) == 0
    con = duckdb.connect(str(db_path))  # and a plain read-write open works after all those kills
    con.close()


def test_a_second_refresh_exits_at_once_naming_the_running_one(db_path, tmp_path):
    ready = tmp_path / "ready"
    holder = start_job("hold_refresh_lock", db_path, 60, ready)
    try:
        wait_for(ready, holder)
        second = run_to_end(*refresh_cli("--symbols", "BTC", "--db", db_path), timeout=30)
    finally:
        holder.kill()
        holder.communicate()
    assert second.returncode == EXIT_BUSY
    assert f"a refresh is already running: pid {holder.pid}" in second.stderr
    assert "a long refresh held by the test" in second.stderr
    assert not cache.has_bars(db_path)


def test_two_processes_seeding_at_once_store_the_demo_once(db_path):
    seeders = [start_job("seed", db_path) for _ in range(2)]
    results = sorted(json_result(p, timeout=120)["seeded"] for p in seeders)

    assert results == [False, True]
    assert duplicate_keys(db_path) == 0
    assert bars_per_symbol(db_path) == {"BTC": 2192 + 26_304, "SPY": 1566 + 5_474, "AAPL": 1566 + 5_474}
    assert len(cache.recent_refreshes(100, db_path)) == 6


def test_the_apps_refresh_thread_and_its_readers_share_one_process(db_path):
    """The app's "Refresh now" runs run_refresh in a thread while page reruns read in other threads."""
    report, reader_errors, reads = {}, [], []

    def refresh() -> None:
        report["result"] = run_refresh(RefreshRequest(("BTC", "SPY", "AAPL"), "1h", db_path=db_path))

    def read_until_done() -> None:
        while writer.is_alive() or not reads:
            try:
                panel = read_panel(["BTC", "SPY", "AAPL"], "1h", db_path=db_path)
                cache.cache_summary(db_path)
                reads.append(len(panel))
            except Exception as error:  # collected, so the assertion below shows what a page would have shown
                reader_errors.append(f"{type(error).__name__}: {error}")
                return

    writer = threading.Thread(target=refresh)
    readers = [threading.Thread(target=read_until_done) for _ in range(2)]
    writer.start()
    for reader in readers:
        reader.start()
    for thread in (writer, *readers):
        thread.join(timeout=120)

    assert reader_errors == []
    assert report["result"].ok, [r.line() for r in report["result"].failed]
    assert len(reads) > 2 and max(reads) == 26_304
    assert len(read_panel(["BTC", "SPY", "AAPL"], "1h", db_path=db_path)) == 26_304


def test_new_readers_let_a_waiting_writer_go_first(db_path, tmp_path):
    """DuckDB's lock does not queue, so a writer that had to wait announces itself and readers hold back."""
    db_path.parent.mkdir(parents=True)
    events: list[str] = []
    busy = duckdb.IOException('IO Error: Could not set lock on file "x": Conflicting lock is held (PID 1)')
    attempts = iter([busy, busy, "writer connection"])

    def writer_open():
        outcome = next(attempts)
        if isinstance(outcome, Exception):
            events.append("writer refused")
            if len(events) == 2:  # refused once already, so it has announced itself: start the reader
                reader_may_start.set()
            raise outcome
        events.append("writer opened")
        return outcome

    def reader_open():
        events.append("reader opened")
        return "reader connection"

    reader_may_start = threading.Event()
    writer = threading.Thread(target=lambda: locks.open_with_retry(writer_open, db_path, 10.0, writing=True))
    writer.start()
    reader_may_start.wait(10)
    assert locks.writer_marker_path(db_path).exists()
    assert locks.open_with_retry(reader_open, db_path, 10.0, writing=False) == "reader connection"
    writer.join(10)

    assert events == ["writer refused", "writer refused", "writer opened", "reader opened"]
    assert not locks.writer_marker_path(db_path).exists()


def test_a_marker_left_by_a_killed_writer_is_ignored(db_path):
    db_path.parent.mkdir(parents=True)
    marker = locks.writer_marker_path(db_path)
    marker.touch()
    old = time.time() - 10 * locks.WRITER_MARKER_FRESH_SECONDS
    os.utime(marker, (old, old))
    assert locks.open_with_retry(lambda: "opened", db_path, 0.0, writing=False) == "opened"
