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
from dataclasses import dataclass
from typing import Literal, TextIO

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

    def __call__(self, event: TrainingProgress) -> None:
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
