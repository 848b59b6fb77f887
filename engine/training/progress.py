"""Training progress as ONE event type, and the command-line progress bar it drives.

The training loop knows nothing about who listens: it calls `progress(TrainingProgress(...))` after every step,
at the end of every epoch and fold, and once at the end. The command line draws a bar from those events; the
Streamlit app can put the same events on a queue and draw its own bar, so both show the same numbers.

Cancelling goes the other way: the loop checks a `CancelCheck` (a threading.Event or any callable returning True)
between steps. `as_cancel_check` turns either into one callable.
"""
from __future__ import annotations

import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import Literal, TextIO

import numpy as np

Phase = Literal["start", "step", "epoch", "fold", "done", "cancelled"]


@dataclass(frozen=True)
class TrainingProgress:
    phase: Phase
    fold: int  # 0-based fold being trained
    n_folds: int
    epoch: int  # 0-based epoch within the fold
    n_epochs: int  # the most epochs a fold may run (early stopping can end it sooner)
    step: int  # optimiser steps done in this epoch
    steps_per_epoch: int
    train_loss: float | None = None  # running mean of this epoch's finite losses
    val_loss: float | None = None  # the last validation loss of this fold
    best_val_loss: float | None = None
    skipped_steps: int = 0  # non-finite loss or gradient, over the whole run
    elapsed_s: float = 0.0
    eta_s: float | None = None  # remaining time if every fold ran all its epochs (an upper bound)
    message: str = ""

    @property
    def fraction(self) -> float:
        """Share of the most work the run can do (all folds x all epochs), in [0, 1]."""
        if self.phase == "done":
            return 1.0
        total = max(self.n_folds * self.n_epochs * max(self.steps_per_epoch, 1), 1)
        done = (self.fold * self.n_epochs + self.epoch) * max(self.steps_per_epoch, 1) + self.step
        return min(max(done / total, 0.0), 1.0)


ProgressCallback = Callable[[TrainingProgress], None]
CancelCheck = Callable[[], bool]


def as_cancel_check(cancel: threading.Event | CancelCheck | None) -> CancelCheck:
    if cancel is None:
        return lambda: False
    if isinstance(cancel, threading.Event):
        return cancel.is_set
    if callable(cancel):
        return cancel
    raise TypeError(f"cancel must be a threading.Event or a callable returning bool, got {type(cancel).__name__}")


def eta_seconds(elapsed_s: float, fraction: float) -> float | None:
    """Remaining time at the pace so far; None until there is a pace to go by."""
    if fraction <= 0 or elapsed_s <= 0:
        return None
    return elapsed_s * (1 - fraction) / fraction


FIRST_SETUP_SHARE = 0.4  # later folds' set-up against the first's: 0.3 and 0.5 on two demo runs


class EtaEstimator:
    """Remaining seconds of a run from its progress events, by the pace of its epochs alone.

    `eta_seconds(elapsed, fraction)` divides the time so far by the share done, so the seconds spent loading the
    panel and computing features before the first step count as if they were training: after the first epoch of a
    52 s run it said 07:44. This estimator times each epoch from its own events (the first epoch of a fold from its
    first step, scaled up by one step), so set-up is not pace; it adds each remaining fold's set-up as the set-up of
    the folds seen after the first (the first one also loads the panel), a share of the first fold's until one is seen; it
    sizes later folds' epochs by the growth of steps per epoch seen so far (walk-forward folds grow). A fold is expected
    to run halfway between the soonest early stopping can end it and all its epochs (`expected_epochs`; pass the
    trainer's patience when known).

    Feed it every event (`observe`); it returns the estimate, None until an epoch has finished."""

    RECENT_EPOCHS = 3  # the pace is the median of the last few epochs' seconds per step

    def __init__(self, patience: int | None = None) -> None:
        self.patience = patience  # the trainer's early-stopping patience, when the caller knows it
        self._without_gain = 0  # epochs of the current fold since its validation loss last improved
        self._best: float | None = None
        self._fold_started: dict[int, float] = {}  # the first step event's time, per fold
        self._setup: dict[int, float] = {}  # seconds from the previous fold's end (or the start) to that event
        self._steps: dict[int, int] = {}  # steps per epoch, per fold
        self._epoch_mark: float | None = None  # when the current epoch started (an event time)
        self._per_step: list[float] = []  # seconds per step of each finished epoch, validation included
        self._fold_ended = 0.0

    def observe(self, event: TrainingProgress) -> float | None:
        t, fold = event.elapsed_s, event.fold
        if event.phase in ("done", "cancelled"):
            return 0.0
        if event.phase == "step" and fold not in self._fold_started:
            self._fold_started[fold] = t
            self._setup[fold] = t - self._fold_ended
            self._steps[fold] = max(event.steps_per_epoch, 1)
            self._epoch_mark = None
        elif event.phase == "epoch":
            steps = max(event.steps_per_epoch, 1)
            self._steps[fold] = steps
            if self._epoch_mark is None:  # a fold's first epoch: timed from its first step's end
                start = self._fold_started.get(fold, t)
                counted = max(steps - 1, 0)
                per_step = (t - start) / counted if counted else None
            else:
                per_step = (t - self._epoch_mark) / steps
            if per_step is not None and per_step > 0:
                self._per_step.append(per_step)
            self._epoch_mark = t
            improved = event.val_loss is not None and (self._best is None or event.val_loss < self._best)
            self._without_gain = 0 if improved or event.epoch == 0 else self._without_gain + 1
            if improved:
                self._best = event.val_loss
        elif event.phase == "fold":
            self._fold_ended = t
            self._epoch_mark = None
            self._best, self._without_gain = None, 0
        return self.estimate(event)

    def expected_epochs(self, done: int, n_epochs: int, without_gain: int = 0) -> float:
        """Epochs a fold with `done` finished is expected to run in all: halfway between the soonest early stopping
        can end it (patience epochs without a gain; one more epoch when the patience is unknown) and all n_epochs.
        On the demo's runs folds stopped anywhere from the soonest (5 of 15) to the last epoch."""
        soonest = done + (max(self.patience - without_gain, 1) if self.patience else 1)
        soonest = min(soonest, n_epochs)
        return (soonest + n_epochs) / 2

    def estimate(self, event: TrainingProgress) -> float | None:
        if not self._per_step:
            return None
        recent = sorted(self._per_step[-self.RECENT_EPOCHS:])
        per_step = recent[len(recent) // 2]
        fold, steps = event.fold, max(event.steps_per_epoch, 1)
        if event.phase == "fold":
            left_in_fold = 0.0
        else:
            done_steps = steps if event.phase == "epoch" else event.step
            done = event.epoch + 1 if event.phase == "epoch" else event.epoch
            epochs_left = max(self.expected_epochs(done, event.n_epochs, self._without_gain) - event.epoch - 1, 0)
            left_in_fold = per_step * ((steps - done_steps) + epochs_left * steps)
        later = range(fold + 1, event.n_folds)
        setups = [seconds for f, seconds in self._setup.items() if f > 0]
        # Until a later fold is seen, a share of the first fold's set-up: that one also loaded the panel and computed
        # the features (on demo runs, 5.9 s against 3.3 s and 2.4 s for the next folds; 4.9 s against 1.4 s, 1.7 s).
        setup = float(np.median(setups)) if setups else FIRST_SETUP_SHARE * self._setup.get(0, 0.0)
        growth = 0.0
        if len(self._steps) >= 2:
            first, last = min(self._steps), max(self._steps)
            growth = (self._steps[last] - self._steps[first]) / (last - first)
        epochs = self.expected_epochs(0, event.n_epochs)
        future = sum(setup + per_step * epochs * max(steps + growth * (f - fold), 1.0) for f in later)
        return max(left_in_fold + future, 0.0)


def with_better_eta(event: TrainingProgress, estimator: EtaEstimator) -> TrainingProgress:
    """The event with its ETA from `estimator` (fed every event in order), the loop's own until an epoch is timed."""
    eta = estimator.observe(event)
    return event if eta is None else replace(event, eta_s=eta)


def format_duration(seconds: float | None) -> str:
    if seconds is None:
        return "--:--"
    seconds = int(round(seconds))
    minutes, seconds = divmod(seconds, 60)
    hours, minutes = divmod(minutes, 60)
    return f"{hours}:{minutes:02d}:{seconds:02d}" if hours else f"{minutes:02d}:{seconds:02d}"


def describe(event: TrainingProgress) -> str:
    """One line: fold, epoch, losses, skipped steps, elapsed and ETA."""
    parts = [f"fold {event.fold + 1}/{event.n_folds}", f"epoch {event.epoch + 1}/{event.n_epochs}"]
    if event.train_loss is not None:
        parts.append(f"loss {event.train_loss:.4f}")
    if event.val_loss is not None:
        parts.append(f"val {event.val_loss:.4f}")
    if event.skipped_steps:
        parts.append(f"skipped {event.skipped_steps}")
    parts.append(f"{format_duration(event.elapsed_s)} elapsed, ETA {format_duration(event.eta_s)}")
    return " | ".join(parts)


class ConsoleProgressBar:
    """Draws `[#####.....]  42% fold 1/3 | epoch 4/30 | ...` on one terminal line; each epoch and fold end gets its
    own line so the log keeps the validation history. Redraws at most every `min_interval_s` during steps."""

    def __init__(self, stream: TextIO | None = None, width: int = 24, min_interval_s: float = 0.2):
        self.stream = stream or sys.stderr
        self.width = width
        self.min_interval_s = min_interval_s
        self._last_draw = 0.0
        self._eta = EtaEstimator()

    def __call__(self, event: TrainingProgress) -> None:
        event = with_better_eta(event, self._eta)
        now = time.monotonic()
        if event.phase == "step" and now - self._last_draw < self.min_interval_s:
            return
        self._last_draw = now
        filled = int(round(event.fraction * self.width))
        bar = "#" * filled + "." * (self.width - filled)
        line = f"[{bar}] {event.fraction:4.0%} {describe(event)}"
        if event.message:
            line += f" | {event.message}"
        end = "\n" if event.phase != "step" else ""
        self.stream.write("\r" + line.ljust(120)[:160] + end)
        self.stream.flush()
