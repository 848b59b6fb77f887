"""The pages' further results kept beside the diagnostics (engine.diagnostics.view_results, cache.py's view store):
read back exactly as computed, recomputed when the file does not match, computed once under concurrent asks."""
from __future__ import annotations

import threading

import numpy as np
import pandas as pd
import pytest

from engine.diagnostics.cache import (
    VIEWS_FOLDER,
    inputs_digest,
    load_or_compute_view_result,
)
from engine.diagnostics.view_results import (
    clusters_tested,
    frame_arrays,
    frame_from_arrays,
)


def test_frames_come_back_exactly():
    frame = pd.DataFrame.from_records([
        {"symbol": "BTC", "regime": 0, "regime_name": "calm uptrend", "median": 1 / 3, "p": np.nan, "ok": True},
        {"symbol": "SPY", "regime": 1, "regime_name": "regime 1", "median": 2.5e-300, "p": 0.05, "ok": False},
    ])
    pd.testing.assert_frame_equal(frame_from_arrays("t", frame_arrays("t", frame)), frame)
    empty = pd.DataFrame(columns=["symbol", "regime_a", "difference"])
    pd.testing.assert_frame_equal(frame_from_arrays("e", frame_arrays("e", empty)), empty, check_dtype=False)
    timed = pd.DataFrame({"lag": np.arange(3), "weight": [0.5, 0.25, 0.125]},
                         index=pd.DatetimeIndex(["2024-01-01 02:00", "2024-01-01 01:00", "2023-12-29 21:00"],
                                                name="ts").tz_localize("UTC").as_unit("ns"))
    pd.testing.assert_frame_equal(frame_from_arrays("f", frame_arrays("f", timed)), timed)


def test_a_result_is_computed_once_then_read_and_a_bad_file_is_recomputed(tmp_path):
    entry = tmp_path / "entry"
    entry.mkdir()
    calls = []

    def compute():
        calls.append(1)
        return {"x": np.arange(4.0) / 3}

    first = load_or_compute_view_result(entry, "demo", {"a": 1}, compute)
    again = load_or_compute_view_result(entry, "demo", {"a": 1}, compute)
    assert len(calls) == 1 and np.array_equal(first["x"], again["x"])
    other = load_or_compute_view_result(entry, "demo", {"a": 2}, compute)  # another key: its own file
    assert len(calls) == 2 and np.array_equal(other["x"], first["x"])
    for path in (entry / VIEWS_FOLDER).glob("*.npz"):
        path.write_bytes(path.read_bytes()[:-40])  # cut short: unreadable
    load_or_compute_view_result(entry, "demo", {"a": 1}, compute)
    assert len(calls) == 3
    load_or_compute_view_result(entry, "demo", {"a": 1}, compute)
    assert len(calls) == 3  # rewritten when recomputed
    assert load_or_compute_view_result(None, "demo", {"a": 1}, compute) and len(calls) == 4  # nowhere to keep it
    assert load_or_compute_view_result(tmp_path / "absent", "demo", {"a": 1}, compute) and len(calls) == 5
    assert not (tmp_path / "absent").exists()


def test_concurrent_asks_compute_once(tmp_path):
    calls, started = [], threading.Event()

    def compute():
        calls.append(1)
        started.set()
        threading.Event().wait(0.3)
        return {"x": np.ones(2)}

    threads = [threading.Thread(target=load_or_compute_view_result, args=(tmp_path, "r", {"k": 0}, compute))
               for _ in range(3)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert len(calls) == 1


def test_the_digest_tells_inputs_apart():
    a = np.arange(6, dtype=np.int64)
    assert inputs_digest(a, "x") == inputs_digest(a.copy(), "x")
    assert inputs_digest(a, "x") != inputs_digest(a.astype(np.int32), "x")
    assert inputs_digest(a, "x") != inputs_digest(a.reshape(2, 3), "x")
    b = a.copy()
    b[5] = 7
    assert inputs_digest(a) != inputs_digest(b)


@pytest.fixture(scope="module")
def daily_demo():
    from storage.panel import demo_panel

    return demo_panel("1d")


def test_the_cluster_test_read_back_is_the_one_computed(tmp_path, daily_demo):
    from engine.diagnostics.findings import cluster_evidence

    loaded = daily_demo
    mask = np.asarray(loaded.panel.observed, dtype=bool).T  # (A, T)
    rng = np.random.default_rng(3)
    labels = np.repeat(rng.integers(0, 2, size=mask.shape[1] // 50 + 1), 50)[None, : mask.shape[1]].repeat(
        mask.shape[0], axis=0)
    symbol = loaded.symbols[0]
    direct = cluster_evidence(loaded, labels, mask, symbol).text
    assert clusters_tested(tmp_path, loaded, labels, mask, symbol) == direct  # computed and kept
    assert len(list((tmp_path / VIEWS_FOLDER).glob("*.npz"))) == 1
    assert clusters_tested(tmp_path, loaded, labels, mask, symbol) == direct  # read back
    shuffled = labels.copy()
    shuffled[:, :100] = 1 - shuffled[:, :100]
    clusters_tested(tmp_path, loaded, shuffled, mask, symbol)  # other labels: another result, not the kept one
    assert len(list((tmp_path / VIEWS_FOLDER).glob("*.npz"))) == 2
