"""Background jobs: progress is visible while work runs, cancel stops it, failures become one-line messages."""
from __future__ import annotations

import threading
import time

import pytest

from engine.training.jobs import BackgroundJob, JobCancelled, JobRegistry


def _stepper(steps: int, release: threading.Event | None = None):
    """Work that reports each step and, after the first, waits until the test releases it."""
    def work(report, cancel):
        for step in range(steps):
            if cancel.is_set():
                raise JobCancelled()
            report(step)
            if release is not None:
                release.wait(5)
        return "finished"
    return work


def test_progress_is_visible_while_running_and_result_at_the_end():
    release = threading.Event()
    job = BackgroundJob("train", _stepper(3, release)).start()
    while job.snapshot().progress is None:
        time.sleep(0.005)
    seen = job.snapshot()
    assert seen.running and seen.progress == 0
    release.set()
    final = job.join(5)
    assert final.progress == 2
    assert final.outcome == "done" and final.result == "finished" and final.finished_at is not None


def test_cancel_ends_the_job_as_cancelled():
    release = threading.Event()
    job = BackgroundJob("train", _stepper(1000, release)).start()
    job.cancel()
    release.set()
    final = job.join(5)
    assert final.outcome == "cancelled" and final.result is None


def test_a_failure_is_one_line_with_the_traceback_kept():
    def work(report, cancel):
        raise ValueError("the checkpoint does not fit SPY, BTC\nmore detail")

    final = BackgroundJob("train", work).start().join(5)
    assert final.outcome == "failed"
    assert final.error == "the checkpoint does not fit SPY, BTC"
    assert "ValueError" in final.details


def test_a_returned_cancellation_counts_as_cancelled():
    final = BackgroundJob("train", lambda report, cancel: {"outcome": "cancelled"},
                          is_cancellation=lambda result: result["outcome"] == "cancelled").start().join(5)
    assert final.outcome == "cancelled"


def test_the_registry_allows_one_running_job_per_name():
    release = threading.Event()
    registry = JobRegistry()
    job = registry.start("train", _stepper(2, release))
    with pytest.raises(RuntimeError, match="already running"):
        registry.start("train", _stepper(1))
    job.cancel()
    release.set()
    job.join(5)
    registry.forget("train")
    assert registry.get("train") is None
