"""One training run end to end: train walk-forward, score against the baselines, register the checkpoint.

The command line (engine.train) and the Model page both call `run_training`, so a run made in the browser and one
made in a terminal go through the same steps in the same order. Under torchrun every rank trains, and rank 0 alone
scores and registers (the other ranks return once the checkpoint is written).
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd

from engine.model.checkpoint import register_run, resolve_runs_dir
from engine.training.config import TrainConfig, TrainResult
from engine.training.loop import train_panel
from engine.training.settings import on_training_span


@dataclass
class TrainingRun:
    """What run_training did: the training result, and on the main rank the score table and where it registered."""

    result: TrainResult
    scores: pd.DataFrame | None = None  # the long score table (engine.evaluation.run_scores), None when skipped
    registered_in: Path | None = None  # the runs directory whose registry lists the run, None when not registered
    span_note: str | None = None  # why it trained on the common span rather than the full history (None: full)

    @property
    def finished(self) -> bool:
        return self.result.outcome == "finished"


def run_training(loaded, config: TrainConfig, run_dir: str | Path, *, evaluate: bool = True, register: bool = True,
                 runs_dir: str | Path | None = None, is_main: bool = True, **train_kwargs: Any) -> TrainingRun:
    """Train on a LoadedPanel into run_dir, then (main rank, finished runs only) score it against every baseline on
    the same walk-forward test spans and append it to the registry in runs_dir ($REGIME_RUNS or data/runs).

    When the assets' histories start so far apart that the full history cannot be trained on, it trains on their
    common span (engine.training.settings.training_span) and says so at the start of the result's message.

    train_kwargs go to engine.training.loop.train_walk_forward (run_id, progress, cancel, resume, dist, parallel).
    """
    run_dir = Path(run_dir)
    loaded, span_note = on_training_span(loaded, config)
    result = train_panel(loaded, config, run_dir, **train_kwargs)
    if span_note:
        result = dataclasses.replace(result, message=f"{span_note[0].upper()}{span_note[1:]}. {result.message}")
    run = TrainingRun(result, span_note=span_note)
    if not run.finished or not is_main:
        return run
    # Imported here: the baselines pull in statsmodels and arch, which a cancelled run never needs.
    from engine.evaluation.run_scores import evaluate_run, read_manifest

    if evaluate:
        run.scores = evaluate_run(run_dir, loaded)
    if register:
        run.registered_in = resolve_runs_dir(runs_dir)
        register_run(run.registered_in, read_manifest(run_dir), run_dir)
    return run
