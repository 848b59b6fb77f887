"""Resuming a run: every fold's state after every epoch, and every finished fold's test forecasts, on disk.

After every epoch the fold's state (current and best weights, AdamW moments, counters) is written as safetensors +
JSON under <run_dir>/resume; a finished fold leaves its test forecasts under <run_dir>/folds. Nothing is unpickled
on the way back in. Both folders are removed once the run's checkpoint is written. Every fold seeds its weights,
and every epoch its shuffle and dropout, from (seed, fold, epoch) alone, so a resumed run continues as if it had
never stopped.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from engine.model.checkpoint import (
    CheckpointError,
    load_training_state,
    save_training_state,
)
from engine.model.hybrid import HybridModel
from engine.training.config import TrainConfig

RESUME_DIR = "resume"


FOLDS_DIR = "folds"


# ----- the loop -----------------------------------------------------------------------------------------------------


@dataclass
class FoldState:
    """What an epoch boundary must remember to continue exactly."""

    next_epoch: int = 0
    best_val_loss: float = math.inf
    best_epoch: int = -1
    epochs_without_gain: int = 0
    skipped_steps: int = 0
    best_weights: dict[str, Tensor] | None = None


def seed_for(config: TrainConfig, fold: int, epoch: int) -> int:
    return (config.seed * 1_000_003 + fold * 10_007 + epoch) % (2**63 - 1)


def state_path(run_dir: Path, fold: int) -> Path:
    return run_dir / RESUME_DIR / f"fold_{fold}"


def save_fold_state(run_dir: Path, fold: int, model: HybridModel, optimizer: torch.optim.Optimizer,
                     state: FoldState, guard: dict[str, Any]) -> None:
    meta = {key: getattr(state, key) for key in ("next_epoch", "best_val_loss", "best_epoch",
                                                 "epochs_without_gain", "skipped_steps")}
    best = state.best_weights or {}
    save_training_state(state_path(run_dir, fold), model.state_dict(), optimizer, best, {**meta, **guard})


def load_fold_state(run_dir: Path, fold: int, model: HybridModel, optimizer: torch.optim.Optimizer,
                     guard: dict[str, Any]) -> FoldState | None:
    directory = state_path(run_dir, fold)
    if not directory.exists():
        return None
    weights, best, meta = load_training_state(directory, optimizer)
    for key, expected in guard.items():
        if meta.get(key) != expected:
            raise CheckpointError(
                f"cannot resume {run_dir}: its saved state was made with a different {key} "
                f"({meta.get(key)!r}, now {expected!r}); start a new run instead"
            )
    model.load_state_dict(weights)
    return FoldState(next_epoch=int(meta["next_epoch"]), best_val_loss=float(meta["best_val_loss"] or math.inf),
                      best_epoch=int(meta["best_epoch"]), epochs_without_gain=int(meta["epochs_without_gain"]),
                      skipped_steps=int(meta["skipped_steps"]),
                      best_weights=best or None)


def finished_fold_path(run_dir: Path, fold: int) -> Path:
    return run_dir / FOLDS_DIR / f"fold_{fold}"
