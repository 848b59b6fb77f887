"""The walk-forward training loop: one model per fold, trained on the past, stopped early on validation, scored on
the test span that follows; the run's out-of-sample record is every fold's test-span forecasts.

Per fold (engine/training/splits.py gives the spans, purged by the longest target reach):
  features  scaler fitted on the fold's training rows only (engine.features.build_feature_set)
  windows   training rows cut into overlapping windows; targets reaching past the training span are masked
            (engine.training.dataset.make_windows purges at the span's end)
  training  AdamW, gradient clipping, early stopping on the validation loss; a step whose loss or gradient is not
            finite is skipped and counted, and `max_bad_steps` of them in a row stop the run (TrainingDiverged)
  forecast  the best-on-validation weights run over the whole history up to the end of the test span (causal, so a
            forecast at row t uses rows <= t); the test rows are kept

The final model of a run is the LAST fold's model: it is trained on the most history (everything before its
validation span), chosen on the validation span just before the last test span, and its test forecasts are part of
the out-of-sample record, so the checkpoint's scores describe exactly the weights it ships. (Retraining on all but
the last test span would give weights no honest validation span was left to stop.)

Repeatability: every fold seeds its initial weights, and every epoch seeds its shuffle and dropout, from
(seed, fold, epoch) alone. A CPU run with the same config, data and thread count repeats exactly, and a run resumed
from an epoch's saved state continues as if it had never stopped.

Resuming: after every epoch the fold's state (current and best weights, AdamW moments, counters) is written as
safetensors + JSON under <run_dir>/resume; a finished fold leaves its test forecasts under <run_dir>/folds.
Nothing is unpickled on the way back in. Both folders are removed once the run's checkpoint is written.
"""
from __future__ import annotations

import dataclasses
import inspect
import io
import json
import math
import shutil
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from engine.evaluation.predictions import (
    PREDICTIONS_FILE,
    forecast_span,
    predictions_from_arrays,
    predictions_to_arrays,
    save_predictions,
)
from engine.evaluation.scores import Predictions, concat_predictions
from engine.features import FeatureSet, build_feature_set
from engine.model.checkpoint import (
    DataFingerprint,
    Manifest,
    checkpoint_written,
    load_training_state,
    new_run_id,
    save_checkpoint,
    save_training_state,
)
from engine.model.config import ModelConfig
from engine.model.hybrid import HybridModel
from engine.model.losses import LossWeights
from engine.model.peers import build_model
from engine.runtime import configure_cpu_threads, device_label
from engine.targets import Targets, compute_targets
from engine.training.config import (
    FoldSummary,
    TrainConfig,
    TrainingDiverged,
    TrainingError,
    TrainResult,
    model_config_for,
)
from engine.training.dataset import Windows, make_windows
from engine.training.distributed import (
    DistContext,
    ParallelMode,
    barrier,
    broadcast_bytes,
    broadcast_float,
    check_same_everywhere,
    owner_of_fold,
    shard_of,
)
from engine.training.graphed_step import GraphedLoss, graphs_wanted
from engine.training.head_scale import (
    bake_head_scale,
    scale_heads_for_training,
    target_scale,
)
from engine.training.objective import (
    StandardisedOutput,
    cost_aware_term,
    early_stop_targets,
    loss_targets,
    sharded_loss,
    span_targets,
    standardised_targets,
    training_loss,
    validation_loss,
)
from engine.training.precision import precision_label, training_precision
from engine.training.progress import (
    CancelCheck,
    ProgressCallback,
    TrainingProgress,
    as_cancel_check,
    eta_seconds,
)
from engine.training.resume import (
    FOLDS_DIR,
    RESUME_DIR,
    FoldState,
    finished_fold_path,
    load_fold_state,
    save_fold_state,
    seed_for,
)
from engine.training.skip_fit import fit_skip_paths, gate_centre
from engine.training.splits import Fold, walk_forward
from storage.panel import Panel, own_bar_log_returns


@dataclass(frozen=True)
class RunContext:
    """What every fold of one run shares: the data, the config, where it writes and whom it tells."""

    feature_targets: Targets  # every fold's targets, on the panel's rows
    returns: np.ndarray  # (A, T) own-bar log returns, NaN without a bar: what the findings' lead-lag test reads
    config: TrainConfig
    device: torch.device
    run_dir: Path
    n_folds: int
    notify: ProgressCallback  # progress events (a no-op on ranks other than 0)
    is_cancelled: CancelCheck
    guard: dict[str, Any]  # config digest and data hash a resume state must match
    started: float  # time.monotonic() when the run started

    def event(self, phase, fold, epoch, step, steps_per_epoch, skipped, **extra) -> TrainingProgress:
        return _event(phase, fold, self.n_folds, epoch, self.config.max_epochs, step, steps_per_epoch,
                      self.started, skipped, **extra)


@dataclass
class FoldOutcome:
    """A trained fold: its best-on-validation model (head scale baked in), its record, its test-span forecasts
    (None on a rank that trained the fold with others but does not write)."""

    model: HybridModel
    summary: FoldSummary
    predictions: Predictions | None


def make_folds(n_rows: int, targets: Targets, config: TrainConfig) -> list[Fold]:
    """Walk-forward folds purged by the longest reach of any target (an equity's 20 bars span weekends)."""
    max_horizon = max(config.model.horizons)
    purge = max(config.purge or 0, targets.max_reach(), max_horizon)
    return walk_forward(n_rows, config.n_folds, config.min_train, config.val_size, config.test_size, purge,
                        mode=config.fold_mode, max_horizon=max_horizon)


def train_walk_forward(
    panel: Panel,
    config: TrainConfig,
    *,
    interval: str,
    fingerprint: DataFingerprint,
    run_dir: str | Path,
    progress: ProgressCallback | None = None,
    cancel: Callable[[], bool] | Any = None,
    resume: bool = False,
    run_id: str | None = None,
    dist: DistContext | None = None,
    parallel: ParallelMode = "data",
) -> TrainResult:
    """Train every fold (resuming finished epochs and folds from run_dir when asked), then write the checkpoint
    (final = last fold's model), the out-of-sample predictions of every test span, and return them.

    dist: this process's place among torchrun's ranks (engine.training.distributed.init_distributed); None: one process.
    Across ranks, `parallel` "data" trains each fold with DistributedDataParallel and "folds" gives each rank its
    own folds. Only rank 0 writes (resume state, checkpoint, predictions) and reports progress; the other ranks
    return a result without a model."""
    started = time.monotonic()
    run_dir = Path(run_dir)
    ctx = dist or DistContext.single(config.device)
    if not resume and (run_dir / RESUME_DIR).exists():
        raise TrainingError(f"{run_dir} holds an unfinished run: pass resume=True (--resume) or choose another dir")
    finished = checkpoint_written(run_dir) if resume and not (run_dir / RESUME_DIR).exists() else None
    if finished is not None:  # resuming a finished run would silently train it again from scratch
        raise TrainingError(f"run {finished[0]} is finished (checkpoint written at {finished[1]} in {run_dir}): "
                            "nothing to resume; choose another --out to train again")
    if config.threads is not None:
        configure_cpu_threads(config.threads)
    device = ctx.device
    is_cancelled: CancelCheck = as_cancel_check(cancel)
    notify = (progress if ctx.is_main else None) or (lambda event: None)
    fold_parallel = ctx.active and parallel == "folds"
    if ctx.active and parallel not in ("data", "folds"):
        raise ValueError(f"parallel must be 'data' or 'folds', got {parallel!r}")
    guard = {"config_digest": config.digest(), "data_hash": fingerprint.content_hash}

    targets = compute_targets(panel, config.model.horizons)
    folds = make_folds(len(panel.ts), targets, config)
    skipped_total = 0
    feature_set = None
    check_same_everywhere(ctx, f"{fingerprint.content_hash} {len(folds)} folds {config.digest()}",
                          "the training data or config")
    run = RunContext(targets, own_bar_log_returns(panel), config, device, run_dir, len(folds), notify, is_cancelled,
                     guard, started)
    outcomes: list[FoldOutcome | None] = []
    for fold in folds:
        feature_set = build_feature_set(panel, fold.train, config.features)
        if fold_parallel and owner_of_fold(fold.index, ctx) != ctx.rank:
            outcomes.append(None)  # another rank's fold: gathered below
            continue
        job = FoldJob(fold, feature_set, DistContext.single(device) if fold_parallel else ctx, ctx.is_main,
                      skipped_total)
        outcome = _train_fold(job, run)
        if outcome is None:
            message = (f"cancelled during fold {fold.index + 1}/{len(folds)}; the last finished epoch is saved in "
                       f"{run_dir / RESUME_DIR}: resume to continue")
            notify(run.event("cancelled", fold.index, 0, 0, 1, skipped_total, message=message))
            return TrainResult("cancelled", run_dir, message, folds=[o.summary for o in outcomes if o is not None],
                               skipped_steps=skipped_total, seconds=time.monotonic() - started)
        outcomes.append(outcome)
        skipped_total += outcome.summary.skipped_steps
    if fold_parallel:
        outcomes = _gather_folds(ctx, outcomes, model_config_for(config, feature_set), device)
    if not ctx.is_main:
        # Wait for rank 0 to write the checkpoint before leaving: a rank that tears down its process group while
        # a peer is still taking in its last message aborts at exit (gloo, seen under CPU load).
        barrier(ctx)
        message = f"rank {ctx.rank}: finished its share of {len(folds)} folds; rank 0 wrote the checkpoint"
        return TrainResult("finished", run_dir, message, seconds=time.monotonic() - started)
    return _write_run(run, panel, folds, outcomes, feature_set, fingerprint=fingerprint, run_id=run_id, ctx=ctx,
                      parallel=parallel)


def _write_run(run: RunContext, panel: Panel, folds: list[Fold], outcomes: list[FoldOutcome], feature_set: FeatureSet,
               *, fingerprint: DataFingerprint, run_id: str | None, ctx: DistContext,
               parallel: ParallelMode) -> TrainResult:
    """Rank 0, every fold trained: the checkpoint (the last fold's model), the out-of-sample predictions of every
    test span, the resume folders removed -> the finished run."""
    config, run_dir, started = run.config, run.run_dir, run.started
    summaries = [o.summary for o in outcomes]
    fold_predictions = [o.predictions for o in outcomes]
    model = outcomes[-1].model  # the final model: the last fold's
    skipped_total = sum(s.skipped_steps for s in summaries)

    predictions = concat_predictions(fold_predictions)
    fold_of_row = np.concatenate([np.full(len(p.rows), k) for k, p in enumerate(fold_predictions)])
    ts_us = np.asarray(panel.ts[predictions.rows].as_unit("us").asi8)
    manifest = _manifest(run, panel, folds, summaries, model, feature_set, fingerprint=fingerprint, run_id=run_id,
                         ctx=ctx, parallel=parallel, skipped_steps=skipped_total)
    save_checkpoint(run_dir, model.state_dict(), manifest)
    save_predictions(run_dir / PREDICTIONS_FILE, predictions, fold_of_row, ts_us)
    shutil.rmtree(run_dir / RESUME_DIR, ignore_errors=True)
    shutil.rmtree(run_dir / FOLDS_DIR, ignore_errors=True)
    barrier(ctx)  # the other ranks return once the checkpoint is on disk (see above)
    elapsed = time.monotonic() - started
    message = f"trained {len(folds)} folds in {elapsed:.0f} s on {manifest.device}; checkpoint in {run_dir}"
    run.notify(_event("done", len(folds) - 1, len(folds), config.max_epochs - 1, config.max_epochs, 1, 1, started,
                  skipped_total, message=message))
    return TrainResult("finished", run_dir, message, model=model, manifest=manifest, predictions=predictions,
                       folds=summaries, skipped_steps=skipped_total, seconds=elapsed)


def _manifest(run: RunContext, panel: Panel, folds: list[Fold], summaries: list[FoldSummary], model: HybridModel,
              feature_set: FeatureSet, *, fingerprint: DataFingerprint, run_id: str | None, ctx: DistContext,
              parallel: ParallelMode, skipped_steps: int) -> Manifest:
    """The checkpoint's manifest: the final model's config, the last fold's scaler, the data, how it was trained.

    Spans are recorded as row ranges of this panel (folds, scaler.fit_rows) and as UTC timestamps, first and last
    bar open (fold_spans_utc, fit_span_utc): the timestamps are what a later panel is matched on."""
    return Manifest(
            run_id=run_id or new_run_id(),
            model_config=model.config.to_dict(),
            feature_names=list(feature_set.names),
            scaler=feature_set.scaler.to_dict(),
            fingerprint=fingerprint,
            created_at=time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            device=device_label(run.device) + (f" x {ctx.world_size} processes" if ctx.active else ""),
            training={
                "config": run.config.to_dict(),
                "processes": ctx.world_size,
                "parallel": parallel if ctx.active else None,
                "final_model": "last fold's best-on-validation weights",
                "folds": [asdict(s) for s in summaries],
                "fold_spans_utc": [_span_times(panel, f) for f in folds],
                "fit_span_utc": _rows_times(panel, range(*feature_set.scaler.fit_rows)),
                "skipped_steps": skipped_steps,
                "seconds": round(time.monotonic() - run.started, 1),
                "torch_threads": torch.get_num_threads(),
                "float32_matmuls": precision_label(run.device),
                "n_parameters": model.num_parameters(),
            },
    )


def _gather_folds(ctx: DistContext, outcomes: list[FoldOutcome | None], model_config: ModelConfig,
                  device: torch.device) -> list[FoldOutcome | None]:
    """ParallelMode 'folds': every fold's (model, summary, predictions) from the rank that trained it to rank 0, as
    bytes (safetensors, JSON, npz without pickle). Rank 0 gets the full list; other ranks get theirs back."""
    from safetensors.torch import load as load_tensors
    from safetensors.torch import save as save_tensors

    gathered: list[FoldOutcome | None] = list(outcomes)
    for index, outcome in enumerate(outcomes):
        owner = owner_of_fold(index, ctx)
        mine = ctx.rank == owner
        if owner == 0:
            continue  # rank 0 holds it already
        state = {k: v.contiguous().cpu() for k, v in outcome.model.state_dict().items()} if mine else None
        weights = broadcast_bytes(ctx, save_tensors(state) if mine else None, owner)
        summary = broadcast_bytes(ctx, json.dumps(asdict(outcome.summary)).encode() if mine else None, owner)
        buffer = io.BytesIO()
        if mine:
            np.savez(buffer, **predictions_to_arrays(outcome.predictions))
        arrays = broadcast_bytes(ctx, buffer.getvalue() if mine else None, owner)
        if ctx.is_main:
            model = build_model(model_config).to(device)
            model.load_state_dict(load_tensors(weights))
            with np.load(io.BytesIO(arrays), allow_pickle=False) as data:
                prediction = predictions_from_arrays({k: data[k] for k in data.files})
            summary_fields = json.loads(summary)
            summary_fields.update({k: tuple(summary_fields[k]) for k in ("train", "val", "test")})
            gathered[index] = FoldOutcome(model, FoldSummary(**summary_fields), prediction)
    return gathered


def _span_times(panel: Panel, fold: Fold) -> dict[str, list[str]]:
    return {name: _rows_times(panel, span) for name, span in (("train", fold.train), ("val", fold.val),
                                                              ("test", fold.test))}


def _rows_times(panel: Panel, rows: range) -> list[str]:
    """[first, last] row of the span as UTC timestamps (the rows' period starts: their bars' opens)."""
    return [str(panel.ts[rows.start]), str(panel.ts[rows.stop - 1])]


def _event(phase, fold, n_folds, epoch, n_epochs, step, steps_per_epoch, started, skipped, **extra):
    event = TrainingProgress(phase=phase, fold=fold, n_folds=n_folds, epoch=epoch, n_epochs=n_epochs, step=step,
                             steps_per_epoch=steps_per_epoch, skipped_steps=skipped,
                             elapsed_s=time.monotonic() - started, **extra)
    return dataclasses.replace(event, eta_s=eta_seconds(event.elapsed_s, event.fraction))


@dataclass(frozen=True)
class FoldJob:
    """One fold to train, and this process's part in it."""

    fold: Fold
    features: FeatureSet  # normalised with the scaler fitted on this fold's training rows
    sync: DistContext  # the ranks training this fold together (DistributedDataParallel); alone: single
    writer: bool  # writes the fold's resume state and record and forecasts its test span (rank 0 only)
    skipped_before: int  # non-finite steps skipped in the folds before (progress counts the run's total)


def _train_fold(job: FoldJob, run: RunContext) -> FoldOutcome | None:
    """-> the fold's best model, record and test-span forecasts (None for them when not the writer), or None when
    cancelled. A fold that a resumed run finished before is read back instead of trained."""
    config, device, fold = run.config, run.device, job.fold
    fold_started = time.monotonic()
    torch.manual_seed(seed_for(config, fold.index, -1))
    model = build_model(model_config_for(config, job.features)).to(device)  # the hybrid or a peer
    scale = target_scale(run.feature_targets, job.features, fold.train)
    if config.model.skip_paths:  # before the head scale's parametrisation: it zeroes the plain log-vol column
        fit_skip_paths(model, job.features, run.feature_targets, fold.train, scale, run.returns)
    # before the optimiser: it must hold the parametrised tensors
    scale_heads_for_training(model, scale, config.zero_init_centre, config.lead_gain, config.centre_gain)
    scale_t = torch.as_tensor(scale, dtype=torch.float32, device=device)  # (A, H)
    optimizer = torch.optim.AdamW(parameter_groups(model, config), lr=config.lr)
    train_model = data_parallel(model, job.sync)

    finished = finished_fold_path(run.run_dir, fold.index)
    is_finished = (finished / "summary.json").exists()
    check_same_everywhere(job.sync, f"fold {fold.index + 1} finished: {is_finished}", "the run directory's saved folds")
    if is_finished:  # a resumed run: this fold is done, take its results as they were
        _, best, _ = load_training_state(finished, optimizer)
        model.load_state_dict(best)
        bake_head_scale(model)
        if config.gate_centre:  # deterministic: the same gate the fold applied before
            gate_centre(model, job.features, run.feature_targets, fold.val, device, config.predict_chunk)
        with np.load(finished / "test.npz", allow_pickle=False) as data:
            prediction = predictions_from_arrays({k: data[k] for k in data.files})
        return FoldOutcome(model, FoldSummary(**json.loads((finished / "summary.json").read_text())), prediction)

    with training_precision(device):  # TF32 matmuls on a GPU (engine.training.precision)
        trained = _train_epochs(job, run, model, train_model, optimizer, scale_t)
    if trained is None:
        return None
    state, steps_per_epoch = trained
    if state.best_weights is None:
        raise TrainingError(f"fold {fold.index + 1}: no epoch gave a finite validation loss; nothing to keep")
    model.load_state_dict(state.best_weights)
    if job.writer:  # the fold's record, so a resumed run does not train it again (parametrised, like the resume state)
        save_training_state(finished, model.state_dict(), optimizer, state.best_weights, {})
    bake_head_scale(model)
    if config.gate_centre:
        gate_centre(model, job.features, run.feature_targets, fold.val, device, config.predict_chunk)
    summary = FoldSummary(
        fold=fold.index, train=(fold.train.start, fold.train.stop), val=(fold.val.start, fold.val.stop),
        test=(fold.test.start, fold.test.stop), epochs_run=state.next_epoch, best_epoch=state.best_epoch,
        best_val_loss=state.best_val_loss, skipped_steps=state.skipped_steps,
        seconds=round(time.monotonic() - fold_started, 2),
    )
    if job.sync.active and not job.writer:
        return FoldOutcome(model, summary, None)
    # Through the stored (float32) form at once, so a resumed run's earlier folds read back exactly what a run in
    # one go holds in memory.
    prediction = predictions_from_arrays(predictions_to_arrays(
        forecast_span(model, job.features, fold.test, device, config.predict_chunk)))
    if job.writer:
        np.savez(finished / "test.npz", **predictions_to_arrays(prediction))
        (finished / "summary.json").write_text(json.dumps(asdict(summary)))
    run.notify(run.event("fold", fold.index, config.max_epochs - 1, steps_per_epoch, steps_per_epoch,
                         job.skipped_before + state.skipped_steps,
                         val_loss=state.best_val_loss, best_val_loss=state.best_val_loss,
                         message=f"fold {fold.index + 1} done, best epoch {state.best_epoch + 1}"))
    return FoldOutcome(model, summary, prediction)


def _train_epochs(job: FoldJob, run: RunContext, model: HybridModel, train_model: nn.Module,
                  optimizer: torch.optim.Optimizer, scale_t: Tensor) -> tuple[FoldState, int] | None:
    """Epochs of AdamW over the fold's training windows with early stopping on its validation span, resuming from
    the fold's saved state -> (the state after the last epoch, steps per epoch), or None when cancelled.
    train_model: the model as trained (DistributedDataParallel across ranks, else the model); scale_t (A, H)."""
    config, device, fold, sync = run.config, run.device, job.fold, job.sync
    feature_set, targets = job.features, run.feature_targets
    windows = resident(make_windows(feature_set, targets, fold.train, config.window, config.stride), device)
    x_all = torch.from_numpy(np.ascontiguousarray(feature_set.values))[None].to(device)  # (1, A, T, F)
    mask_all = torch.from_numpy(np.ascontiguousarray(feature_set.mask))[None].to(device)  # (1, A, T)
    val_targets = early_stop_targets(span_targets(targets, feature_set, fold.val), config)
    val_targets = {k: v.to(device) for k, v in val_targets.items()}
    state = load_fold_state(run.run_dir, fold.index, model, optimizer, run.guard) or FoldState()
    check_same_everywhere(sync, f"fold {fold.index + 1} resumes at epoch {state.next_epoch}", "the resume state")
    n_windows = windows.x.shape[0]
    steps_per_epoch = math.ceil(n_windows / config.batch_size)
    # On one CUDA device the step's forward and backward replay as one captured graph (engine.training.graphed_step)
    graphed = GraphedLoss(train_model, lambda x, mask, targets: step_loss(train_model, x, mask, targets, scale_t,
                                                                          config.loss_weights, config)
                          ) if graphs_wanted(device, sync.active) else None

    def validate() -> float:
        # One pass over the history (batch 1, nothing to shard): rank 0 takes it and every rank follows its number,
        # so all take the same early-stopping decision.
        loss = validation_loss(model, x_all, mask_all, val_targets, fold.val.stop, config.predict_chunk,
                               scale_t, config.early_stop_weights or config.loss_weights,
                               config.balance_assets,
                               # the stop watches the training objective unless told otherwise
                               None if config.early_stop_weights else cost_aware_term(config, scale_t)
                               ) if sync.is_main else None
        return broadcast_float(sync, loss)

    if config.validate_start and state.next_epoch == 0 and state.best_weights is None:
        # The starting point (closed-form skip paths, zero residual) competes with every epoch: when no epoch beats
        # it on the validation span, the fold keeps it (best_epoch -1) rather than the least bad trained epoch.
        start_loss = validate()
        if math.isfinite(start_loss):
            state.best_val_loss = start_loss
            state.best_weights = {k: v.detach().clone() for k, v in model.state_dict().items()}

    for epoch in range(state.next_epoch, config.max_epochs):
        epoch_seed = seed_for(config, fold.index, epoch)
        if config.random_window_offsets:
            windows = resident(epoch_windows(feature_set, targets, fold.train, config, epoch_seed), device)
            n_windows = windows.x.shape[0]
            steps_per_epoch = math.ceil(n_windows / config.batch_size)
        torch.manual_seed(epoch_seed)  # dropout draws
        order = torch.randperm(n_windows, generator=torch.Generator().manual_seed(epoch_seed))
        losses, bad_in_a_row = [], 0
        model.train()
        for step, batch in enumerate(order.split(config.batch_size)):
            step_result = train_step(train_model, optimizer, windows, batch, scale_t, config.loss_weights, config,
                                     sync, run.is_cancelled, graphed=graphed)
            if step_result is None:
                return None
            finite, reported = step_result
            if not finite:
                state.skipped_steps += 1
                bad_in_a_row += 1
                if bad_in_a_row >= config.max_bad_steps:
                    raise TrainingDiverged(
                        f"training stopped: {bad_in_a_row} consecutive steps had a non-finite loss or gradient "
                        f"(fold {fold.index + 1}, epoch {epoch + 1}, step {step + 1}); nothing from this epoch was "
                        f"saved. Try a lower learning rate (now {config.lr}) or check the data for extreme values."
                    )
            else:
                bad_in_a_row = 0
                losses.append(reported)
            run.notify(run.event("step", fold.index, epoch, step + 1, steps_per_epoch,
                                 job.skipped_before + state.skipped_steps,
                                 train_loss=float(np.mean(losses)) if losses else None,
                                 best_val_loss=_finite_or_none(state.best_val_loss)))

        val_loss = validate()
        if math.isfinite(val_loss) and val_loss < state.best_val_loss:
            state.best_val_loss, state.best_epoch, state.epochs_without_gain = val_loss, epoch, 0
            state.best_weights = {k: v.detach().clone() for k, v in model.state_dict().items()}
        else:
            state.epochs_without_gain += 1
        state.next_epoch = epoch + 1
        stop = state.epochs_without_gain >= config.patience
        if job.writer:
            save_fold_state(run.run_dir, fold.index, model, optimizer, state, run.guard)
        run.notify(run.event("epoch", fold.index, epoch, steps_per_epoch, steps_per_epoch,
                             job.skipped_before + state.skipped_steps,
                             train_loss=float(np.mean(losses)) if losses else None, val_loss=val_loss,
                             best_val_loss=_finite_or_none(state.best_val_loss),
                             message="; ".join(filter(None, ("early stop" if stop else "",
                                                             graphed.take_failure() if graphed else "")))))
        if stop:
            break
    return state, steps_per_epoch


def train_step(train_model: nn.Module, optimizer: torch.optim.Optimizer, windows: Windows, batch: Tensor,
               scale: Tensor, weights: LossWeights, config: TrainConfig, sync: DistContext,
               is_cancelled: CancelCheck, *, graphed: GraphedLoss | None = None) -> tuple[bool, float] | None:
    """One optimiser step on the global batch `batch` (window indices, identical on every rank); this rank takes
    its shard. -> (finite, the global batch's loss), or None when cancelled (any rank, under DDP). A non-finite
    loss or gradient leaves the weights as they were (finite False); counting those is the caller's.
    train_model: the model, or its DistributedDataParallel wrapper; scale (A, H) the fold's target scale;
    graphed: the fold's captured forward and backward (one CUDA process), replayed when the batch has its shapes."""
    if not sync.active and is_cancelled():
        return None
    device = scale.device
    mine = shard_of(batch, sync)  # this rank's windows of the global batch (all of it for one process)
    x, mask, batch_targets = _batch_on(windows, mine if len(mine) else batch[:1], device)
    if not len(mine):
        # Fewer windows than ranks in the last batch: a stand-in window with every target masked adds nothing to
        # the loss or the gradient, but lets this rank join DDP's gradient all-reduce.
        batch_targets["valid"] = torch.zeros_like(batch_targets["valid"])
    loss = graphed(x, mask, batch_targets) if graphed is not None else None
    # A captured graph owns the gradients' memory: zero them in place, never drop them (graphed_step's doc)
    drop_grads = graphed is None or not graphed.active
    if loss is not None:  # replayed: the gradients are in .grad
        finite = bool(torch.isfinite(loss))
        reported = float(loss.detach()) if finite else math.nan
    elif sync.active:
        if cost_aware_term(config, scale) is not None:
            raise TrainingError("the cost-aware objective (cost_aware_weight) is not wired for torchrun yet: "
                                "train it in one process")
        optimizer.zero_grad(set_to_none=True)
        output = StandardisedOutput.of(train_model(x, mask), scale)  # tensors (b, A, W, H[, Q])
        loss, reported, not_finite, cancelled = sharded_loss(output, standardised_targets(batch_targets, scale),
                                                             weights, config.balance_assets, sync, is_cancelled())
        if cancelled:
            return None
        finite = not not_finite
        if finite:
            loss.backward()
    else:
        optimizer.zero_grad(set_to_none=drop_grads)
        loss = step_loss(train_model, x, mask, batch_targets, scale, weights, config)
        finite = bool(torch.isfinite(loss))
        reported = float(loss.detach()) if finite else math.nan
        if finite:
            loss.backward()
    if finite:
        params = [p for group in optimizer.param_groups for p in group["params"]]
        grad_norm = torch.nn.utils.clip_grad_norm_(params, config.grad_clip)
        finite = bool(torch.isfinite(grad_norm))
    if finite:
        optimizer.step()
    else:
        optimizer.zero_grad(set_to_none=drop_grads)
    return finite, reported


def step_loss(train_model: nn.Module, x: Tensor, mask: Tensor, batch_targets: dict[str, Tensor], scale: Tensor,
              weights: LossWeights, config: TrainConfig) -> Tensor:
    """The training objective of one batch in one process: x (b, A, W, F), mask (b, A, W), targets (b, A, W, H)."""
    output = StandardisedOutput.of(train_model(x, mask), scale)  # tensors (b, A, W, H[, Q])
    return training_loss(output, standardised_targets(batch_targets, scale), weights, config.balance_assets,
                         cost_aware_term(config, scale))


def parameter_groups(model: nn.Module, config: TrainConfig) -> list[dict]:
    """AdamW groups: every weight decays by config.weight_decay, except, when config.decay_ssm_dynamics is False,
    the parameters tagged `_no_weight_decay` where they are defined (the SSM's A_log, D and Delta's bias, see
    engine.model.ssm). A structural rule, as nanoGPT's configure_optimizers: no list of names to keep in step with
    the model. One group when nothing is exempt, so the shipped runs' optimiser state keeps its layout."""
    parameters = list(model.parameters())
    exempt = [] if config.decay_ssm_dynamics else [p for p in parameters if getattr(p, "_no_weight_decay", False)]
    if not exempt:
        return [{"params": parameters, "weight_decay": config.weight_decay}]
    exempt_ids = {id(p) for p in exempt}
    decayed = [p for p in parameters if id(p) not in exempt_ids]
    return [{"params": decayed, "weight_decay": config.weight_decay}, {"params": exempt, "weight_decay": 0.0}]


# On a GPU the training windows live in its memory when they fit this: picking a batch out of them on the host
# took ~17 ms a step for 50 assets (torch.profiler on an H200), a fifth of the step, while the GPU waited.
RESIDENT_WINDOWS_BYTES = 4 * 2**30


def resident(windows: Windows, device: torch.device) -> Windows:
    """The windows on the training device when it is a GPU and they fit RESIDENT_WINDOWS_BYTES; else as they are."""
    if device.type != "cuda" or windows.nbytes > RESIDENT_WINDOWS_BYTES:
        return windows
    return windows.to(device)


def _batch_on(windows: Windows, rows: Tensor, device: torch.device):
    """Windows `rows` on the device -> x (b, A, W, F), mask (b, A, W), loss targets (b, A, W, H) each."""
    rows = rows.to(windows.x.device)
    x = windows.x[rows].to(device)
    mask = windows.mask[rows].to(device)
    targets = {k: v.to(device) for k, v in loss_targets({k: t[rows] for k, t in windows.targets.items()}).items()}
    return x, mask, targets


def data_parallel(model: HybridModel, sync: DistContext) -> nn.Module:
    """The module the training steps call: DDP over the ranks in `sync`, or the model itself for one process.
    Buffers are not broadcast every step: the only ones are the head-scale constants, equal on every rank."""
    if not sync.active:
        return model
    from torch.nn.parallel import DistributedDataParallel

    device_ids = [sync.device.index] if sync.device.type == "cuda" else None
    # torch 2.13 renamed the option (2.11, the GPU image's, has only the old name)
    params = inspect.signature(DistributedDataParallel.__init__).parameters
    no_buffer_sync = {"forward_sync_buffers": False} if "forward_sync_buffers" in params else {
        "broadcast_buffers": False}
    return DistributedDataParallel(model, device_ids=device_ids, **no_buffer_sync)


def epoch_windows(feature_set: FeatureSet, targets: Targets, train: range, config: TrainConfig,
                  epoch_seed: int) -> Windows:
    """The training windows of one epoch with TrainConfig.random_window_offsets: the stride grid started
    `offset` rows into the span, offset in [0, stride) from the epoch's seed alone (so a resumed run repeats it)."""
    offset = int(np.random.default_rng(epoch_seed).integers(0, config.stride))
    start = min(train.start + offset, train.stop - config.window)
    return make_windows(feature_set, targets, range(start, train.stop), config.window, config.stride)


def _finite_or_none(value: float) -> float | None:
    return value if math.isfinite(value) else None


def train_panel(loaded, config: TrainConfig, run_dir: str | Path | None = None, **kwargs: Any) -> TrainResult:
    """Train on a storage.panel.LoadedPanel; run_dir defaults to a new folder under the runs directory."""
    from engine.model.checkpoint import resolve_runs_dir

    run_id = kwargs.pop("run_id", None) or new_run_id()
    run_dir = Path(run_dir) if run_dir is not None else resolve_runs_dir() / run_id
    return train_walk_forward(loaded.panel, config, interval=loaded.interval, fingerprint=loaded.fingerprint(),
                              run_dir=run_dir, run_id=run_id, **kwargs)
