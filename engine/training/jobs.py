"""Long work (training, a full diagnostics pass) in a background thread that the app can watch and cancel.

A Streamlit script reruns on every click, so work that takes minutes cannot run inside it: the page would freeze
and other pages with it. A `BackgroundJob` runs `work(report, cancel)` in a daemon thread and keeps, under one lock,
what a page needs to draw it: the latest progress event, the outcome, the result or the error. Pages poll it (for
instance from an `st.fragment(run_every=...)`), and a cancel sets an Event the work checks between steps.

Nothing here imports Streamlit; the registry that lets a rerun find its job again is a plain dict behind a lock
(the app keeps one per process with st.cache_resource).
"""
from __future__ import annotations

import threading
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Generic, Literal, TypeVar

Outcome = Literal["running", "done", "cancelled", "failed"]
Event = TypeVar("Event")

# work(report, cancel) -> result: report(event) publishes progress; cancel.is_set() asks whether to stop.
Work = Callable[[Callable[[Any], None], threading.Event], Any]


class JobCancelled(Exception):
    """Raised by work that noticed its cancel flag, so the job ends as 'cancelled' rather than 'failed'."""


@dataclass(frozen=True)
class JobSnapshot(Generic[Event]):
    name: str
    outcome: Outcome
    progress: Any | None  # the latest event the work reported (e.g. engine.training.progress.TrainingProgress)
    result: Any | None
    error: str | None  # one line for the user; the traceback stays in `details`
    details: str | None
    started_at: float
    finished_at: float | None

    @property
    def running(self) -> bool:
        return self.outcome == "running"

    @property
    def elapsed_s(self) -> float:
        return (self.finished_at or time.time()) - self.started_at


class BackgroundJob:
    def __init__(self, name: str, work: Work, *, is_cancellation: Callable[[Any], bool] | None = None):
        self.name = name
        self._work = work
        # Work may report a cancel by returning a value (e.g. a result whose outcome is "cancelled").
        self._is_cancellation = is_cancellation or (lambda result: False)
        self._cancel = threading.Event()
        self._lock = threading.Lock()
        self._outcome: Outcome = "running"
        self._progress: Any = None
        self._result: Any = None
        self._error: str | None = None
        self._details: str | None = None
        self._started_at = time.time()
        self._finished_at: float | None = None
        self._thread = threading.Thread(target=self._run, name=f"job:{name}", daemon=True)

    def start(self) -> BackgroundJob:
        self._thread.start()
        return self

    def cancel(self) -> None:
        self._cancel.set()

    def join(self, timeout: float | None = None) -> JobSnapshot:
        self._thread.join(timeout)
        return self.snapshot()

    def snapshot(self) -> JobSnapshot:
        with self._lock:
            return JobSnapshot(self.name, self._outcome, self._progress, self._result, self._error, self._details,
                               self._started_at, self._finished_at)

    def _report(self, event: Any) -> None:
        with self._lock:
            self._progress = event

    def _run(self) -> None:
        try:
            result = self._work(self._report, self._cancel)
        except JobCancelled:
            self._finish("cancelled")
        except Exception as error:  # the page shows the message; the traceback is kept for "details"
            message = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
            self._finish("failed", error=message, details=traceback.format_exc())
        else:
            self._finish("cancelled" if self._is_cancellation(result) else "done", result=result)

    def _finish(self, outcome: Outcome, *, result: Any = None, error: str | None = None,
                details: str | None = None) -> None:
        with self._lock:
            self._outcome, self._result, self._error, self._details = outcome, result, error, details
            self._finished_at = time.time()


class JobRegistry:
    """Jobs by name for one process: at most one running job per name (one training at a time, say)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._jobs: dict[str, BackgroundJob] = {}

    def start(self, name: str, work: Work, **options) -> BackgroundJob:
        with self._lock:
            current = self._jobs.get(name)
            if current is not None and current.snapshot().running:
                raise RuntimeError(f"a {name} job is already running (started {time.ctime(current.snapshot().started_at)})")
            job = BackgroundJob(name, work, **options)
            self._jobs[name] = job
        return job.start()

    def get(self, name: str) -> BackgroundJob | None:
        with self._lock:
            return self._jobs.get(name)

    def forget(self, name: str) -> None:
        """Drop a finished job (after its result was shown); a running one stays."""
        with self._lock:
            job = self._jobs.get(name)
            if job is not None and not job.snapshot().running:
                del self._jobs[name]
