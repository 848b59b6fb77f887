"""The walk-forward training loop: one model per fold, trained on the past, stopped early on validation, scored on
the test span that follows; the run's out-of-sample record is every fold's test-span forecasts.

Per fold (engine/splits.py gives the spans, purged by the longest target reach):
  features  scaler fitted on the fold's training rows only (engine.features.build_feature_set)
  windows   training rows cut into overlapping windows; targets reaching past the training span are masked
            (engine.dataset.make_windows purges at the span's end)
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
import hashlib
import inspect
import io
import json
import math
import shutil
import time
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
from torch import Tensor, nn
from torch.nn.utils import parametrize

from engine.checkpoint import (
    CheckpointError, DataFingerprint, Manifest, load_training_state, new_run_id, save_checkpoint,
    save_training_state,
)
from engine.dataset import Windows, make_windows
from engine.distributed import (
    DistContext, ParallelMode, all_reduce_sum, barrier, broadcast_bytes, broadcast_float, check_same_everywhere,
    owner_of_fold, shard_of,
)
from engine.features import FeatureConfig, FeatureSet, PanelLike, build_feature_set
from engine.losses import LossWeights, multitask_loss
from engine.model import HybridModel, ModelConfig
from engine.progress import CancelCheck, ProgressCallback, TrainingProgress, as_cancel_check, eta_seconds
from engine.runtime import configure_cpu_threads, device_label, pick_device
from engine.scores import DEFAULT_QUANTILE_LEVELS, Predictions, concat_predictions
from engine.splits import Fold, walk_forward
from engine.targets import Targets, compute_targets

PREDICTIONS_FILE = "predictions.npz"
RESUME_DIR = "resume"
FOLDS_DIR = "folds"


def default_model_config() -> ModelConfig:
    """Small enough to train a demo run in minutes on two cores; n_assets/n_features are set from the data."""
    return ModelConfig(
        d_model=32, d_state=8, expand=2, n_heads=4, max_lag=8, layer_pattern=("ssm", "attn", "ssm"),
        quantiles=DEFAULT_QUANTILE_LEVELS, dropout=0.1,
    )


@dataclass
class TrainConfig:
    model: ModelConfig = field(default_factory=default_model_config)
    features: FeatureConfig = field(default_factory=FeatureConfig)
    # walk-forward folds (engine.splits.walk_forward), in union-clock rows
    n_folds: int = 3
    fold_mode: Literal["expanding", "rolling"] = "expanding"
    min_train: int = 800
    val_size: int = 180
    test_size: int = 240
    purge: int | None = None  # None: the panel's longest target reach (Targets.max_reach), at least the max horizon
    # windows and optimisation
    window: int = 128
    stride: int = 16
    batch_size: int = 16
    max_epochs: int = 30
    patience: int = 5  # epochs without a better validation loss before the fold stops
    lr: float = 3e-3
    weight_decay: float = 1e-2
    grad_clip: float = 1.0
    max_bad_steps: int = 10  # consecutive steps with a non-finite loss or gradient before training stops
    seed: int = 0
    device: str | None = None  # None: CUDA when present, else CPU
    threads: int | None = None  # torch CPU threads; None: leave as the process configured them
    predict_chunk: int = 2048  # bars per forward call when forecasting a long history
    # The loss early stopping watches (standardised units, on the validation span); None: the training loss.
    # Return-only weights keep the stop from being decided by the direction and volatility terms, which improve
    # for many epochs after the return forecasts have started to overfit, or stop before those have learned.
    early_stop_weights: LossWeights | None = None
    # The horizons that loss is taken over; None: all. The long horizons' forecasts overfit within an epoch or
    # two on a few thousand bars, and averaged in they stop a fold before the 1-bar forecast has learned anything.
    early_stop_horizons: tuple[int, ...] | None = None
    zero_init_centre: bool = False  # the median and mean head columns start at the zero forecast
    # Average the loss per asset, then over assets (training and early stopping). Pooled, a 24/7 asset has ~5x the
    # valid bars of an equity at 1h, so the shared layers and the stop follow BTC's (unforecastable) noise.
    balance_assets: bool = False
    # Shift the grid of window starts by a random offset in [0, stride) every epoch (drawn from the epoch's seed):
    # each epoch then sees windows cut at other bars, so more epochs are not the same ~N/batch steps repeated.
    random_window_offsets: bool = False
    # The lead path's weights (ModelConfig.lead_path) train through this fixed gain on top of the target scale.
    # Its inputs are standardised features diluted by the attention weights (~1/15 each at the start), so the
    # shift it must learn needs weights of order 1 to 10: at Adam's ~lr per step, thousands of steps without it.
    lead_gain: float = 1.0
    # The median and mean head columns (read from the whole stream) train through this gain: below 1 they move
    # slower than Adam's ~lr per step. Their signal is a few percent of the return variance, so at full rate they
    # fit noise in the follower's own features before the lead path (lead_gain) has found the leader.
    centre_gain: float = 1.0
    # AdamW's decay on the SSM's dynamics (A_log, D and the bias of Delta's projection) as on every other weight
    # (True: how the shipped demo checkpoint was trained), or none on them (False: the Mamba reference recipe).
    # Decay pulls A_log toward 0 (every state's rate toward 1) and Delta's bias toward softplus^-1(0.69), i.e.
    # toward one memory length for all channels, whatever the data want.
    decay_ssm_dynamics: bool = True

    def __post_init__(self) -> None:
        if isinstance(self.model, dict):
            self.model = ModelConfig.from_dict(self.model)
        if isinstance(self.features, dict):
            self.features = FeatureConfig(**self.features)
        if isinstance(self.early_stop_weights, dict):
            self.early_stop_weights = LossWeights(**self.early_stop_weights)
        if self.early_stop_horizons is not None:
            self.early_stop_horizons = tuple(int(h) for h in self.early_stop_horizons)
            unknown = sorted(set(self.early_stop_horizons) - set(self.model.horizons))
            if not self.early_stop_horizons or unknown:
                raise ValueError(f"TrainConfig: early_stop_horizons {self.early_stop_horizons} must be a non-empty "
                                 f"subset of the model's horizons {self.model.horizons}")
        for name in ("n_folds", "min_train", "val_size", "test_size", "window", "stride", "batch_size",
                     "max_epochs", "patience", "max_bad_steps", "predict_chunk"):
            value = getattr(self, name)
            if not isinstance(value, int) or value < 1:
                raise ValueError(f"TrainConfig: {name} must be a positive integer, got {value!r}")
        for name in ("lr", "grad_clip", "lead_gain", "centre_gain"):
            if not getattr(self, name) > 0:
                raise ValueError(f"TrainConfig: {name} must be > 0, got {getattr(self, name)!r}")
        if self.weight_decay < 0:
            raise ValueError(f"TrainConfig: weight_decay must be >= 0, got {self.weight_decay!r}")
        if self.window > self.min_train:
            raise ValueError(f"TrainConfig: window {self.window} is longer than the shortest training span "
                             f"min_train {self.min_train}")

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> "TrainConfig":
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ValueError(f"TrainConfig.from_dict: unknown keys {unknown}")
        return cls(**data)

    def digest(self) -> str:
        """A short hash of the whole config: a resumed run must use the config it started with."""
        return hashlib.sha256(json.dumps(self.to_dict(), sort_keys=True, default=list).encode()).hexdigest()[:16]


class TrainingError(RuntimeError):
    """Training could not go on; the message says why and what to try."""


class TrainingDiverged(TrainingError):
    """Too many consecutive steps had a non-finite loss or gradient."""


@dataclass
class FoldSummary:
    fold: int
    train: tuple[int, int]  # [start, stop) rows
    val: tuple[int, int]
    test: tuple[int, int]
    epochs_run: int
    best_epoch: int
    best_val_loss: float
    skipped_steps: int
    seconds: float


@dataclass
class TrainResult:
    outcome: Literal["finished", "cancelled"]
    run_dir: Path
    message: str
    model: HybridModel | None = None  # the final model (last fold), None when cancelled
    manifest: Manifest | None = None
    predictions: Predictions | None = None  # every fold's test span, joined
    folds: list[FoldSummary] = field(default_factory=list)
    skipped_steps: int = 0
    seconds: float = 0.0


# ----- data for one fold ------------------------------------------------------------------------------------------


def loss_targets(targets: Mapping[str, Tensor]) -> dict[str, Tensor]:
    """engine.dataset's target names -> engine.losses' names."""
    return {"ret": targets["log_return"], "up": targets["direction"], "vol": targets["realised_vol"],
            "valid": targets["valid"]}


def span_targets(targets: Targets, feature_set: FeatureSet, span: range) -> dict[str, Tensor]:
    """Targets (1, A, span.stop, H) for a forward pass over rows [0, span.stop), valid only inside `span`, at fresh
    bars, and only where the target stays inside the span (so a validation loss never reads a test-span price)."""
    purged = targets.until(span.stop)
    valid = purged.valid[:, : span.stop] & feature_set.mask[:, : span.stop, None]  # (A, T, H)
    in_span = np.zeros(span.stop, dtype=bool)
    in_span[span.start:] = True
    valid = valid & in_span[None, :, None]

    def tensor(array: np.ndarray) -> Tensor:
        return torch.from_numpy(np.where(valid, np.nan_to_num(array[:, : span.stop]), 0.0).astype(np.float32))[None]

    return {"ret": tensor(purged.log_return), "up": tensor(purged.direction.astype(np.float32)),
            "vol": tensor(purged.realised_vol), "valid": torch.from_numpy(valid)[None]}


def early_stop_targets(targets: dict[str, Tensor], config: TrainConfig) -> dict[str, Tensor]:
    """Validation targets (1, A, T, H) with only config.early_stop_horizons left valid (all when None)."""
    if config.early_stop_horizons is None:
        return targets
    keep = torch.tensor([h in config.early_stop_horizons for h in config.model.horizons])  # (H,)
    return {**targets, "valid": targets["valid"] & keep}


def model_config_for(config: TrainConfig, feature_set: FeatureSet) -> ModelConfig:
    n_assets, _, n_features = feature_set.values.shape
    return dataclasses.replace(config.model, n_assets=n_assets, n_features=n_features)


def make_folds(n_rows: int, targets: Targets, config: TrainConfig) -> list[Fold]:
    """Walk-forward folds purged by the longest reach of any target (an equity's 20 bars span weekends)."""
    max_horizon = max(config.model.horizons)
    purge = max(config.purge or 0, targets.max_reach(), max_horizon)
    return walk_forward(n_rows, config.n_folds, config.min_train, config.val_size, config.test_size, purge,
                        mode=config.fold_mode, max_horizon=max_horizon)


# ----- output scale --------------------------------------------------------------------------------------------------
#
# The heads forecast raw log returns (about 0.01 a day, 0.003 an hour), while a fresh head emits numbers of order 1.
# Adam moves every weight by about lr per step whatever the gradient's size, so a median head in raw units jitters
# by more than the whole signal. Training therefore runs the head's weights through a fixed per-column affine map
# (torch parametrize): the median columns are multiplied by the asset's training-span return scale, which makes
# Adam act as if the targets were standardised, and every head column starts at a sensible value (gaps between
# quantiles and log-vol from the same scale). After training the map is baked into plain weights, so a checkpoint
# is an ordinary HybridModel whose outputs are in raw units (what engine.inference and the app expect).
# The quantile gaps and log-vol need no scaling: softplus of a very negative number is ~exp, already scale-free.


def target_scale(targets: Targets, feature_set: FeatureSet, train: range) -> np.ndarray:
    """(A, H) std of each asset's h-bar log return over the valid, purged targets of the training span."""
    purged = targets.until(train.stop)
    valid = purged.valid[:, train.start : train.stop] & feature_set.mask[:, train.start : train.stop, None]
    values = np.where(valid, purged.log_return[:, train.start : train.stop], np.nan)
    with np.errstate(invalid="ignore"):
        scale = np.sqrt(np.nanmean(values**2, axis=1))  # (A, H), around zero: a drift does not shrink it
    if not np.isfinite(scale).all() or (scale <= 0).any():
        raise TrainingError(f"training rows {train.start}..{train.stop - 1} leave an asset without valid targets")
    return scale


class _ColumnAffine(nn.Module):
    """w -> w * scale + shift, broadcast over the head's input axis; buffers, so nothing here is trained."""

    def __init__(self, scale: Tensor, shift: Tensor):
        super().__init__()
        self.register_buffer("scale", scale)
        self.register_buffer("shift", shift)

    def forward(self, w: Tensor) -> Tensor:
        return w * self.scale + self.shift


def scale_heads_for_training(model: HybridModel, scale: np.ndarray, zero_centre: bool = False,
                             lead_gain: float = 1.0, centre_gain: float = 1.0) -> None:
    """Put the per-column affine maps on model.heads.proj (see the section comment). scale (A, H). zero_centre:
    start the median and mean columns at exactly zero (TrainConfig.zero_init_centre)."""
    config = model.config
    n_q, levels = len(config.quantiles), np.asarray(config.quantiles)
    anchor = model.heads.anchor
    z = np.asarray(stats_norm_ppf(levels))
    width = model.heads.width
    col_scale = np.ones((config.n_assets, len(config.horizons) * width))
    col_shift = np.zeros_like(col_scale)
    for j in range(len(config.horizons)):
        s = scale[:, j : j + 1]  # (A, 1)
        col_scale[:, j * width + anchor] = centre_gain * s[:, 0]
        gaps = np.abs(np.diff(z))  # a normal fan as the starting point, one gap per non-anchor level
        for k in range(n_q):
            if k == anchor:
                continue
            gap = s[:, 0] * (gaps[k] if k < anchor else gaps[k - 1])
            col_shift[:, j * width + k] = np.log(np.expm1(gap))  # softplus^-1
        col_shift[:, j * width + n_q + 1] = np.log(s[:, 0])  # log-vol starts at the training scale
        if model.heads.has_mean:
            col_scale[:, j * width + n_q + 2] = centre_gain * s[:, 0]  # the mean, in raw units, like the median
    proj = model.heads.proj
    if zero_centre:
        # The centre forecasts (median, mean) start as the zero forecast: a random head would start them with noise
        # as large as the returns themselves, which the few thousand follower targets take many epochs to undo.
        centre = [j * width + anchor for j in range(len(config.horizons))]
        if model.heads.has_mean:
            centre += [j * width + n_q + 2 for j in range(len(config.horizons))]
        with torch.no_grad():
            proj.weight[..., centre] = 0.0
            proj.bias[..., centre] = 0.0
    as_tensor = lambda a: torch.as_tensor(a, dtype=proj.weight.dtype, device=proj.weight.device)  # noqa: E731
    parametrize.register_parametrization(
        proj, "weight", _ColumnAffine(as_tensor(col_scale)[:, None, :], torch.zeros((), device=proj.weight.device)))
    parametrize.register_parametrization(proj, "bias", _ColumnAffine(as_tensor(col_scale), as_tensor(col_shift)))
    lead = model.heads.lead
    if lead is not None:  # a location shift per horizon, in raw units like the median: the same scale
        parametrize.register_parametrization(
            lead, "weight", _ColumnAffine(as_tensor(lead_gain * scale)[:, None, :],
                                          torch.zeros((), device=proj.weight.device)))


def bake_head_scale(model: HybridModel) -> None:
    """Replace the parametrised head weights by the plain weights they stand for."""
    proj = model.heads.proj
    if parametrize.is_parametrized(proj):
        parametrize.remove_parametrizations(proj, "weight", leave_parametrized=True)
        parametrize.remove_parametrizations(proj, "bias", leave_parametrized=True)
    lead = model.heads.lead
    if lead is not None and parametrize.is_parametrized(lead):
        parametrize.remove_parametrizations(lead, "weight", leave_parametrized=True)


@dataclass
class StandardisedOutput:
    """A model output divided by the per-asset target scale, which is what the loss is taken on: the pinball loss of
    BTC and of SPY then weigh alike, and the return task pulls on the shared layers as hard as the other two (in raw
    units its loss is ~100x smaller than the direction loss). QLIKE only shifts by a constant."""

    quantiles: Tensor  # (B, A, T, H, Q)
    direction_logit: Tensor  # (B, A, T, H)
    log_vol: Tensor
    quantile_levels: tuple[float, ...]
    mean: Tensor | None = None  # (B, A, T, H)

    @classmethod
    def of(cls, output, scale: Tensor) -> "StandardisedOutput":
        s = scale[None, :, None, :]  # (1, A, 1, H)
        mean = getattr(output, "mean", None)
        return cls(output.quantiles / s[..., None], output.direction_logit, output.log_vol - torch.log(s),
                   tuple(output.quantile_levels), None if mean is None else mean / s)


def training_loss(output, targets: Mapping[str, Tensor], weights: LossWeights, balance_assets: bool) -> Tensor:
    """multitask_loss, pooled over every valid entry, or (balance_assets) its mean over assets of each asset's
    own loss. output: StandardisedOutput, tensors (B, A, T, H[, Q])."""
    if not balance_assets:
        return multitask_loss(output, targets, weights)[0]
    return per_asset_losses(output, targets, weights).mean()


def per_asset_losses(output, targets: Mapping[str, Tensor], weights: LossWeights) -> Tensor:
    """(A,) each asset's own multitask_loss, averaged over its valid entries (0 where it has none)."""
    per_asset = []
    for a in range(output.direction_logit.shape[1]):
        one = slice(a, a + 1)
        sliced = StandardisedOutput(output.quantiles[:, one], output.direction_logit[:, one], output.log_vol[:, one],
                                    output.quantile_levels, None if output.mean is None else output.mean[:, one])
        per_asset.append(multitask_loss(sliced, {k: v[:, one] for k, v in targets.items()}, weights)[0])
    return torch.stack(per_asset)


def sharded_loss(output, targets: Mapping[str, Tensor], weights: LossWeights, balance_assets: bool,
                 sync: DistContext, cancelled: bool) -> tuple[Tensor, float, bool, bool]:
    """This rank's share of a global batch's loss, scaled so that DDP's gradient AVERAGE over the W ranks equals the
    gradient of the loss one process would take over the whole global batch.

    Every loss term is a mean over valid entries (per asset with balance_assets), and the ranks' shards hold
    different numbers of them, so a mean of the ranks' means is not the global mean. With c the rank's valid count
    and C the global one (per asset when balanced), the rank's loss L = S / c is rescaled to W * L * c / C: the
    average over ranks is then sum(S) / C. One all-reduce per step carries the counts, the loss sums (for the
    reported global loss) and two flags, so every rank takes the same decision: skip the step when ANY rank's loss
    is not finite, stop when any rank was cancelled.
    -> (loss to backpropagate, the global batch's loss, any rank non-finite, any rank cancelled)."""
    valid = targets["valid"]  # (b, A, T, H)
    counts = valid.sum(dim=(0, 2, 3)).double()  # (A,)
    if balance_assets:
        local = per_asset_losses(output, targets, weights)  # (A,)
        sums = local.detach().double() * counts
    else:
        local = multitask_loss(output, targets, weights)[0]
        sums = (local.detach().double() * counts.sum()).reshape(1)
    flags = torch.tensor([float(not bool(torch.isfinite(local.detach()).all())), float(cancelled)],
                         dtype=torch.float64, device=counts.device)
    stats = all_reduce_sum(sync, torch.cat([counts, sums, flags]))
    n = counts.numel()
    total_counts, total_sums = stats[:n], stats[n: n + sums.numel()]
    not_finite, any_cancelled = bool(stats[-2] > 0), bool(stats[-1] > 0)
    if balance_assets:
        share = (counts / total_counts.clamp_min(1)).to(local.dtype)
        loss = sync.world_size * (local * share).mean()
        global_loss = float((total_sums / total_counts.clamp_min(1)).mean())
    else:
        share = (counts.sum() / total_counts.sum().clamp_min(1)).to(local.dtype)
        loss = sync.world_size * local * share
        global_loss = float(total_sums.sum() / total_counts.sum().clamp_min(1))
    return loss, global_loss, not_finite, any_cancelled


def standardised_targets(targets: Mapping[str, Tensor], scale: Tensor) -> dict[str, Tensor]:
    s = scale[None, :, None, :]
    return {**targets, "ret": targets["ret"] / s, "vol": targets["vol"] / s}


def stats_norm_ppf(levels: np.ndarray) -> np.ndarray:
    from scipy.stats import norm

    return norm.ppf(levels)


# ----- forecasting --------------------------------------------------------------------------------------------------


@torch.no_grad()
def forward_history(model: HybridModel, x: Tensor, mask: Tensor, stop: int, chunk: int):
    """The model over rows [0, stop) of x (1, A, T, F), chunk by chunk, carrying its state -> the chunks' outputs."""
    outputs, state = [], None
    for start in range(0, stop, chunk):
        end = min(start + chunk, stop)
        out = model(x[:, :, start:end], mask[:, :, start:end], state=state, return_state=True)
        state = out.state
        outputs.append(out)
    return outputs


def forecast_span(model: HybridModel, feature_set: FeatureSet, span: range, device: torch.device,
                  chunk: int = 2048) -> Predictions:
    """Forecasts at every row of `span` from a causal pass over the whole history before it; NaN where the asset
    had no fresh bar (closed market or warm-up), like the baselines."""
    was_training = model.training
    model.eval()
    try:
        x = torch.from_numpy(np.ascontiguousarray(feature_set.values))[None].to(device)  # (1, A, T, F)
        mask = torch.from_numpy(np.ascontiguousarray(feature_set.mask))[None].to(device)  # (1, A, T)
        outputs = forward_history(model, x, mask, span.stop, chunk)
    finally:
        model.train(was_training)
    quantiles = torch.cat([o.quantiles[0] for o in outputs], dim=1)[:, span.start:].double().cpu().numpy()
    logit = torch.cat([o.direction_logit[0] for o in outputs], dim=1)[:, span.start:].double().cpu()
    log_vol = torch.cat([o.log_vol[0] for o in outputs], dim=1)[:, span.start:].double().cpu()
    has_mean = outputs[0].mean is not None
    mean = torch.cat([o.mean[0] for o in outputs], dim=1)[:, span.start:].double().cpu().numpy() if has_mean else None
    fresh = feature_set.mask[:, span.start : span.stop]  # (A, n)
    levels = tuple(model.config.quantiles)
    median = min(range(len(levels)), key=lambda i: abs(levels[i] - 0.5))

    def only_fresh(array: np.ndarray) -> np.ndarray:
        shape = fresh.shape + (1,) * (array.ndim - 2)
        return np.where(fresh.reshape(shape), array, np.nan)

    return Predictions(
        rows=np.arange(span.start, span.stop),
        horizons=tuple(model.config.horizons),
        # The mean head when there is one (what MSE scores); else the median the pinball loss trains.
        point=only_fresh(mean if has_mean else quantiles[..., median]),
        quantiles=only_fresh(quantiles),
        quantile_levels=levels,
        prob_up=only_fresh(torch.sigmoid(logit).numpy()),
        volatility=only_fresh(torch.exp(log_vol).numpy()),
    )


def validation_loss(model: HybridModel, x: Tensor, mask: Tensor, targets: Mapping[str, Tensor], stop: int,
                    chunk: int, scale: Tensor, weights: LossWeights | None = None,
                    balance_assets: bool = False) -> float:
    """The training loss (standardised units; `weights`, default the model's) over the targets given, from a
    causal pass over rows [0, stop)."""
    was_training = model.training
    model.eval()
    try:
        outputs = forward_history(model, x, mask, stop, chunk)
    finally:
        model.train(was_training)

    joined = StandardisedOutput.of(StandardisedOutput(  # over the whole history
        quantiles=torch.cat([o.quantiles for o in outputs], dim=2),
        direction_logit=torch.cat([o.direction_logit for o in outputs], dim=2),
        log_vol=torch.cat([o.log_vol for o in outputs], dim=2),
        quantile_levels=outputs[0].quantile_levels,
        mean=None if outputs[0].mean is None else torch.cat([o.mean for o in outputs], dim=2)), scale)
    total = training_loss(joined, standardised_targets(targets, scale), weights or model.config.loss_weights,
                          balance_assets)
    return float(total)


def predictions_to_arrays(pred: Predictions, prefix: str = "") -> dict[str, np.ndarray]:
    """Plain arrays for np.savez (no pickle: every entry is numeric)."""
    arrays = {"rows": pred.rows, "horizons": np.asarray(pred.horizons, dtype=np.int64),
              "quantile_levels": np.asarray(pred.quantile_levels, dtype=np.float64)}
    for name in ("point", "quantiles", "prob_up", "volatility"):
        if getattr(pred, name) is not None:
            # float32: forecasts carry no more digits than that, and the shipped demo run must stay small
            arrays[name] = np.asarray(getattr(pred, name), dtype=np.float32)
    return {prefix + key: value for key, value in arrays.items()}


def predictions_from_arrays(arrays: Mapping[str, np.ndarray], prefix: str = "") -> Predictions:
    def get(name):
        if prefix + name not in arrays:
            return None
        value = np.asarray(arrays[prefix + name])
        return value.astype(np.float64) if value.dtype == np.float32 else value

    return Predictions(rows=get("rows"), horizons=tuple(int(h) for h in get("horizons")), point=get("point"),
                       quantiles=get("quantiles"), quantile_levels=tuple(float(q) for q in get("quantile_levels")),
                       prob_up=get("prob_up"), volatility=get("volatility"))


def save_predictions(path: Path, pred: Predictions, fold_of_row: np.ndarray, ts_us: np.ndarray) -> None:
    """The out-of-sample record next to the checkpoint: predictions plus the fold and UTC time of every row."""
    tmp = path.with_name(path.name + ".tmp.npz")
    np.savez_compressed(tmp, fold=fold_of_row.astype(np.int64), ts_us=ts_us.astype(np.int64),
                        **predictions_to_arrays(pred))
    tmp.replace(path)


def load_predictions(run_dir: str | Path) -> tuple[Predictions, np.ndarray, np.ndarray]:
    """(predictions, fold per row, ts in epoch microseconds per row) of a finished run; never unpickles."""
    path = Path(run_dir) / PREDICTIONS_FILE
    if not path.exists():
        raise CheckpointError(f"{run_dir} has no {PREDICTIONS_FILE}: it is not a finished training run")
    with np.load(path, allow_pickle=False) as data:
        arrays = {key: data[key] for key in data.files}
    return predictions_from_arrays(arrays), arrays["fold"], arrays["ts_us"]


# ----- the loop -----------------------------------------------------------------------------------------------------


@dataclass
class _FoldState:
    """What an epoch boundary must remember to continue exactly."""

    next_epoch: int = 0
    best_val_loss: float = math.inf
    best_epoch: int = -1
    epochs_without_gain: int = 0
    skipped_steps: int = 0
    best_weights: dict[str, Tensor] | None = None


def _seed_for(config: TrainConfig, fold: int, epoch: int) -> int:
    return (config.seed * 1_000_003 + fold * 10_007 + epoch) % (2**63 - 1)


def _state_path(run_dir: Path, fold: int) -> Path:
    return run_dir / RESUME_DIR / f"fold_{fold}"


def _save_fold_state(run_dir: Path, fold: int, model: HybridModel, optimizer: torch.optim.Optimizer,
                     state: _FoldState, guard: dict[str, Any]) -> None:
    meta = {key: getattr(state, key) for key in ("next_epoch", "best_val_loss", "best_epoch",
                                                 "epochs_without_gain", "skipped_steps")}
    best = state.best_weights or {}
    save_training_state(_state_path(run_dir, fold), model.state_dict(), optimizer, best, {**meta, **guard})


def _load_fold_state(run_dir: Path, fold: int, model: HybridModel, optimizer: torch.optim.Optimizer,
                     guard: dict[str, Any]) -> _FoldState | None:
    directory = _state_path(run_dir, fold)
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
    return _FoldState(next_epoch=int(meta["next_epoch"]), best_val_loss=float(meta["best_val_loss"] or math.inf),
                      best_epoch=int(meta["best_epoch"]), epochs_without_gain=int(meta["epochs_without_gain"]),
                      skipped_steps=int(meta["skipped_steps"]),
                      best_weights=best or None)


def train_walk_forward(
    panel: PanelLike,
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

    dist: this process's place among torchrun's ranks (engine.distributed.init_distributed); None: one process.
    Across ranks, `parallel` "data" trains each fold with DistributedDataParallel and "folds" gives each rank its
    own folds. Only rank 0 writes (resume state, checkpoint, predictions) and reports progress; the other ranks
    return a result without a model."""
    started = time.monotonic()
    run_dir = Path(run_dir)
    ctx = dist or DistContext.single(config.device)
    if not resume and (run_dir / RESUME_DIR).exists():
        raise TrainingError(f"{run_dir} holds an unfinished run: pass resume=True (--resume) or choose another dir")
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
    summaries: list[FoldSummary] = []
    fold_predictions: list[Predictions] = []
    skipped_total = 0
    feature_set = None
    check_same_everywhere(ctx, f"{fingerprint.content_hash} {len(folds)} folds {config.digest()}",
                          "the training data or config")
    outcomes: list[tuple | None] = []
    for fold in folds:
        feature_set = build_feature_set(panel, fold.train, config.features)
        if fold_parallel and owner_of_fold(fold.index, ctx) != ctx.rank:
            outcomes.append(None)  # another rank's fold: gathered below
            continue
        sync = None if fold_parallel else ctx
        outcome = _train_fold(fold, len(folds), feature_set, targets, config, device, run_dir, notify,
                              is_cancelled, guard, skipped_total, started, sync=sync, writer=ctx.is_main)
        if outcome is None:
            message = (f"cancelled during fold {fold.index + 1}/{len(folds)}; the last finished epoch is saved in "
                       f"{run_dir / RESUME_DIR}: resume to continue")
            notify(_event("cancelled", fold.index, len(folds), 0, config.max_epochs, 0, 1, started,
                          skipped_total, message=message))
            return TrainResult("cancelled", run_dir, message, folds=[o[1] for o in outcomes if o is not None],
                               skipped_steps=skipped_total,
                               seconds=time.monotonic() - started)
        outcomes.append(outcome)
        skipped_total += outcome[1].skipped_steps
    if fold_parallel:
        outcomes = _gather_folds(ctx, outcomes, model_config_for(config, feature_set), device)
    if not ctx.is_main:
        # Wait for rank 0 to write the checkpoint before leaving: a rank that tears down its process group while
        # a peer is still taking in its last message aborts at exit (gloo, seen under CPU load).
        barrier(ctx)
        message = f"rank {ctx.rank}: finished its share of {len(folds)} folds; rank 0 wrote the checkpoint"
        return TrainResult("finished", run_dir, message, seconds=time.monotonic() - started)
    for model, summary, prediction in outcomes:
        summaries.append(summary)
        fold_predictions.append(prediction)
    skipped_total = sum(s.skipped_steps for s in summaries)

    predictions = concat_predictions(fold_predictions)
    fold_of_row = np.concatenate([np.full(len(p.rows), k) for k, p in enumerate(fold_predictions)])
    ts_us = np.asarray(panel.ts[predictions.rows].as_unit("us").asi8)
    manifest = Manifest(
        run_id=run_id or new_run_id(),
        model_config=model.config.to_dict(),
        feature_names=list(feature_set.names),
        scaler=feature_set.scaler.to_dict(),
        fingerprint=fingerprint,
        created_at=time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        device=device_label(device) + (f" x {ctx.world_size} processes" if ctx.active else ""),
        training={
            "config": config.to_dict(),
            "processes": ctx.world_size,
            "parallel": parallel if ctx.active else None,
            "final_model": "last fold's best-on-validation weights",
            "folds": [asdict(s) for s in summaries],
            "fold_spans_utc": [_span_times(panel, f) for f in folds],
            "skipped_steps": skipped_total,
            "seconds": round(time.monotonic() - started, 1),
            "torch_threads": torch.get_num_threads(),
            "n_parameters": model.num_parameters(),
        },
    )
    save_checkpoint(run_dir, model.state_dict(), manifest)
    save_predictions(run_dir / PREDICTIONS_FILE, predictions, fold_of_row, ts_us)
    shutil.rmtree(run_dir / RESUME_DIR, ignore_errors=True)
    shutil.rmtree(run_dir / FOLDS_DIR, ignore_errors=True)
    barrier(ctx)  # the other ranks return once the checkpoint is on disk (see above)
    elapsed = time.monotonic() - started
    message = f"trained {len(folds)} folds in {elapsed:.0f} s on {manifest.device}; checkpoint in {run_dir}"
    notify(_event("done", len(folds) - 1, len(folds), config.max_epochs - 1, config.max_epochs, 1, 1, started,
                  skipped_total, message=message))
    return TrainResult("finished", run_dir, message, model=model, manifest=manifest, predictions=predictions,
                       folds=summaries, skipped_steps=skipped_total, seconds=elapsed)


def _gather_folds(ctx: DistContext, outcomes: list[tuple | None], model_config: ModelConfig,
                  device: torch.device) -> list[tuple | None]:
    """ParallelMode 'folds': every fold's (model, summary, predictions) from the rank that trained it to rank 0, as
    bytes (safetensors, JSON, npz without pickle). Rank 0 gets the full list; other ranks get theirs back."""
    from safetensors.torch import load as load_tensors, save as save_tensors

    gathered: list[tuple | None] = list(outcomes)
    for index, outcome in enumerate(outcomes):
        owner = owner_of_fold(index, ctx)
        mine = ctx.rank == owner
        if owner == 0:
            continue  # rank 0 holds it already
        state = {k: v.contiguous().cpu() for k, v in outcome[0].state_dict().items()} if mine else None
        weights = broadcast_bytes(ctx, save_tensors(state) if mine else None, owner)
        summary = broadcast_bytes(ctx, json.dumps(asdict(outcome[1])).encode() if mine else None, owner)
        buffer = io.BytesIO()
        if mine:
            np.savez(buffer, **predictions_to_arrays(outcome[2]))
        arrays = broadcast_bytes(ctx, buffer.getvalue() if mine else None, owner)
        if ctx.is_main:
            model = HybridModel(model_config).to(device)
            model.load_state_dict(load_tensors(weights))
            with np.load(io.BytesIO(arrays), allow_pickle=False) as data:
                prediction = predictions_from_arrays({k: data[k] for k in data.files})
            summary_fields = json.loads(summary)
            summary_fields.update({k: tuple(summary_fields[k]) for k in ("train", "val", "test")})
            gathered[index] = (model, FoldSummary(**summary_fields), prediction)
    return gathered


def _span_times(panel: PanelLike, fold: Fold) -> dict[str, list[str]]:
    return {name: [str(panel.ts[span.start]), str(panel.ts[span.stop - 1])]
            for name, span in (("train", fold.train), ("val", fold.val), ("test", fold.test))}


def _event(phase, fold, n_folds, epoch, n_epochs, step, steps_per_epoch, started, skipped, **extra):
    event = TrainingProgress(phase=phase, fold=fold, n_folds=n_folds, epoch=epoch, n_epochs=n_epochs, step=step,
                             steps_per_epoch=steps_per_epoch, skipped_steps=skipped,
                             elapsed_s=time.monotonic() - started, **extra)
    return dataclasses.replace(event, eta_s=eta_seconds(event.elapsed_s, event.fraction))


def _finished_fold_path(run_dir: Path, fold: int) -> Path:
    return run_dir / FOLDS_DIR / f"fold_{fold}"


def _train_fold(fold: Fold, n_folds: int, feature_set: FeatureSet, targets: Targets, config: TrainConfig,
                device: torch.device, run_dir: Path, notify: ProgressCallback, is_cancelled: CancelCheck,
                guard: dict[str, Any], skipped_before: int, started: float, sync: DistContext | None = None,
                writer: bool = True):
    """-> (best model, summary, test-span predictions), or None when cancelled.

    sync: the ranks training this fold together (DistributedDataParallel); None or one process: alone.
    writer: this process writes the fold's resume state and record, and forecasts its test span (rank 0 only);
    the others return None for the predictions."""
    sync = sync or DistContext.single(device)
    fold_started = time.monotonic()
    torch.manual_seed(_seed_for(config, fold.index, -1))
    model = HybridModel(model_config_for(config, feature_set)).to(device)
    scale = target_scale(targets, feature_set, fold.train)
    scale_heads_for_training(model, scale, config.zero_init_centre, config.lead_gain, config.centre_gain)  # before the optimiser: it must hold the parametrised tensors
    scale_t = torch.as_tensor(scale, dtype=torch.float32, device=device)  # (A, H)
    optimizer = torch.optim.AdamW(parameter_groups(model, config), lr=config.lr)
    train_model = data_parallel(model, sync)

    finished = _finished_fold_path(run_dir, fold.index)
    is_finished = (finished / "summary.json").exists()
    check_same_everywhere(sync, f"fold {fold.index + 1} finished: {is_finished}", "the run directory's saved folds")
    if is_finished:  # a resumed run: this fold is done, take its results as they were
        weights, best, meta = load_training_state(finished, optimizer)
        model.load_state_dict(best)
        bake_head_scale(model)
        with np.load(finished / "test.npz", allow_pickle=False) as data:
            prediction = predictions_from_arrays({k: data[k] for k in data.files})
        return model, FoldSummary(**json.loads((finished / "summary.json").read_text())), prediction

    windows = resident(make_windows(feature_set, targets, fold.train, config.window, config.stride), device)
    x_all = torch.from_numpy(np.ascontiguousarray(feature_set.values))[None].to(device)  # (1, A, T, F)
    mask_all = torch.from_numpy(np.ascontiguousarray(feature_set.mask))[None].to(device)
    val_targets = early_stop_targets(span_targets(targets, feature_set, fold.val), config)
    val_targets = {k: v.to(device) for k, v in val_targets.items()}
    state = _load_fold_state(run_dir, fold.index, model, optimizer, guard) or _FoldState()
    check_same_everywhere(sync, f"fold {fold.index + 1} resumes at epoch {state.next_epoch}", "the resume state")
    n_windows = windows.x.shape[0]
    steps_per_epoch = math.ceil(n_windows / config.batch_size)
    weights = model.config.loss_weights

    for epoch in range(state.next_epoch, config.max_epochs):
        epoch_seed = _seed_for(config, fold.index, epoch)
        if config.random_window_offsets:
            windows = resident(epoch_windows(feature_set, targets, fold.train, config, epoch_seed), device)
            n_windows = windows.x.shape[0]
            steps_per_epoch = math.ceil(n_windows / config.batch_size)
        torch.manual_seed(epoch_seed)  # dropout draws
        order = torch.randperm(n_windows, generator=torch.Generator().manual_seed(epoch_seed))
        losses, bad_in_a_row = [], 0
        model.train()
        for step, batch in enumerate(order.split(config.batch_size)):
            step_result = train_step(train_model, optimizer, windows, batch, scale_t, weights, config, sync,
                                     is_cancelled)
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
            notify(_event("step", fold.index, n_folds, epoch, config.max_epochs, step + 1, steps_per_epoch,
                          started, skipped_before + state.skipped_steps,
                          train_loss=float(np.mean(losses)) if losses else None,
                          best_val_loss=_finite_or_none(state.best_val_loss)))

        # One pass over the history (batch 1, nothing to shard): rank 0 takes it and every rank follows its number,
        # so all take the same early-stopping decision.
        val_loss = validation_loss(model, x_all, mask_all, val_targets, fold.val.stop, config.predict_chunk,
                                   scale_t, config.early_stop_weights, config.balance_assets) if sync.is_main else None
        val_loss = broadcast_float(sync, val_loss)
        if math.isfinite(val_loss) and val_loss < state.best_val_loss:
            state.best_val_loss, state.best_epoch, state.epochs_without_gain = val_loss, epoch, 0
            state.best_weights = {k: v.detach().clone() for k, v in model.state_dict().items()}
        else:
            state.epochs_without_gain += 1
        state.next_epoch = epoch + 1
        stop = state.epochs_without_gain >= config.patience
        if writer:
            _save_fold_state(run_dir, fold.index, model, optimizer, state, guard)
        notify(_event("epoch", fold.index, n_folds, epoch, config.max_epochs, steps_per_epoch, steps_per_epoch,
                      started, skipped_before + state.skipped_steps,
                      train_loss=float(np.mean(losses)) if losses else None, val_loss=val_loss,
                      best_val_loss=_finite_or_none(state.best_val_loss),
                      message="early stop" if stop else ""))
        if stop:
            break

    if state.best_weights is None:
        raise TrainingError(f"fold {fold.index + 1}: no epoch gave a finite validation loss; nothing to keep")
    model.load_state_dict(state.best_weights)
    if writer:  # the fold's record, so a resumed run does not train it again (parametrised, like the resume state)
        save_training_state(finished, model.state_dict(), optimizer, state.best_weights, {})
    bake_head_scale(model)
    summary = FoldSummary(
        fold=fold.index, train=(fold.train.start, fold.train.stop), val=(fold.val.start, fold.val.stop),
        test=(fold.test.start, fold.test.stop), epochs_run=state.next_epoch, best_epoch=state.best_epoch,
        best_val_loss=state.best_val_loss, skipped_steps=state.skipped_steps,
        seconds=round(time.monotonic() - fold_started, 2),
    )
    if sync.active and not writer:
        return model, summary, None
    # Through the stored (float32) form at once, so a resumed run's earlier folds read back exactly what a run in
    # one go holds in memory.
    prediction = predictions_from_arrays(predictions_to_arrays(
        forecast_span(model, feature_set, fold.test, device, config.predict_chunk)))
    if writer:
        np.savez(finished / "test.npz", **predictions_to_arrays(prediction))
        (finished / "summary.json").write_text(json.dumps(asdict(summary)))
    notify(_event("fold", fold.index, n_folds, config.max_epochs - 1, config.max_epochs, steps_per_epoch,
                  steps_per_epoch, started, skipped_before + state.skipped_steps, val_loss=state.best_val_loss,
                  best_val_loss=state.best_val_loss, message=f"fold {fold.index + 1} done, best epoch "
                                                             f"{state.best_epoch + 1}"))
    return model, summary, prediction


def train_step(train_model: nn.Module, optimizer: torch.optim.Optimizer, windows: Windows, batch: Tensor,
               scale: Tensor, weights: LossWeights, config: TrainConfig, sync: DistContext,
               is_cancelled: CancelCheck) -> tuple[bool, float] | None:
    """One optimiser step on the global batch `batch` (window indices, identical on every rank); this rank takes
    its shard. -> (finite, the global batch's loss), or None when cancelled (any rank, under DDP). A non-finite
    loss or gradient leaves the weights as they were (finite False); counting those is the caller's.
    train_model: the model, or its DistributedDataParallel wrapper; scale (A, H) the fold's target scale."""
    if not sync.active and is_cancelled():
        return None
    device = scale.device
    mine = shard_of(batch, sync)  # this rank's windows of the global batch (all of it for one process)
    x, mask, batch_targets = _batch_on(windows, mine if len(mine) else batch[:1], device)
    if not len(mine):
        # Fewer windows than ranks in the last batch: a stand-in window with every target masked adds nothing to
        # the loss or the gradient, but lets this rank join DDP's gradient all-reduce.
        batch_targets["valid"] = torch.zeros_like(batch_targets["valid"])
    output = StandardisedOutput.of(train_model(x, mask), scale)  # tensors (b, A, W, H[, Q])
    std_targets = standardised_targets(batch_targets, scale)
    optimizer.zero_grad(set_to_none=True)
    if sync.active:
        loss, reported, not_finite, cancelled = sharded_loss(output, std_targets, weights, config.balance_assets,
                                                             sync, is_cancelled())
        if cancelled:
            return None
        finite = not not_finite
    else:
        loss = training_loss(output, std_targets, weights, config.balance_assets)
        finite = bool(torch.isfinite(loss))
        reported = float(loss.detach()) if finite else math.nan
    if finite:
        loss.backward()
        params = [p for group in optimizer.param_groups for p in group["params"]]
        grad_norm = torch.nn.utils.clip_grad_norm_(params, config.grad_clip)
        finite = bool(torch.isfinite(grad_norm))
    if finite:
        optimizer.step()
    else:
        optimizer.zero_grad(set_to_none=True)
    return finite, reported


SSM_DYNAMICS = ("A_log", "D", "dt_proj.bias")  # the SSM layers' memory: parameter names within a layer


def parameter_groups(model: nn.Module, config: TrainConfig) -> list[dict]:
    """AdamW groups: every weight decays by config.weight_decay, except the SSM's dynamics when
    config.decay_ssm_dynamics is False. One group when nothing is exempt, so the shipped runs' optimiser state
    keeps its layout."""
    if config.decay_ssm_dynamics:
        return [{"params": list(model.parameters()), "weight_decay": config.weight_decay}]
    decayed, exempt = [], []
    for name, parameter in model.named_parameters():
        parts = name.split(".")  # e.g. layers.0.dt_proj.bias
        within_layer = ".".join(parts[2:]) if parts[0] == "layers" else None
        (exempt if within_layer in SSM_DYNAMICS else decayed).append(parameter)
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


# ----- entry points for the CLI, the app and tests ------------------------------------------------------------------


def demo_config(interval: str = "1h") -> TrainConfig:
    """The settings the demo checkpoint is trained with, tuned on the SYNTHETIC demo market (storage/sources/DEMO.md).

    Why these: one SSM layer, then the lead-lag attention straight into the heads (about 40k weights); a deeper
    stack fits the training span within an epoch or two and stops before the lead is learned. The volatility
    loss is down-weighted (0.25) and the return quantiles up-weighted (2): QLIKE otherwise dominates the validation
    loss, which then stops training while the return heads are still improving. 1h rather than 1d: ten times the
    bars, so three folds of 3,000 test hours give ~1,900 out-of-sample bars per equity, and the 1d demo's 1,200
    training days were too few for the attention to single out the leader at all (measured, see the report).

    1h point forecasts: through the residual stream alone the model's 1-bar MSE never beat the zero forecast for
    SPY/AAPL (26 configurations), though a least-squares fit on BTC's lagged returns does. So the lead path
    (ModelConfig.lead_path) reads every source's bar return (lead_features=1) through the first attention layer's
    weights into the location of the fan and the mean, its weights trained 10x faster (lead_gain) and the centre
    columns read from the stream 10x slower (centre_gain: at full rate they fit the follower's own noise first);
    the stop watches the mean head's 1-bar squared error. Window grids move every epoch (random_window_offsets,
    stride 32). Chosen on the validation spans among 22 variants (DEMO.md gives the test numbers).
    """
    model = dataclasses.replace(default_model_config(), d_model=32, n_heads=4, max_lag=4, dropout=0.0,
                                layer_pattern=("ssm", "attn"),
                                loss_weights=LossWeights(quantile=2.0, direction=1.0, volatility=0.25))
    if interval == "1h":
        # The lead path reads the sources' bar returns through the attention's weights, and the mean head (the
        # point forecast) is stopped on its own 1-bar squared error; see the paragraph above.
        model_1h = dataclasses.replace(model, dropout=0.1, point_head=True, lead_path=True, lead_features=1)
        return TrainConfig(model=model_1h, n_folds=3, min_train=8000, val_size=2000, test_size=3000, window=128,
                           stride=32, batch_size=8, max_epochs=15, patience=5, lr=5e-3, weight_decay=0.1,
                           random_window_offsets=True, zero_init_centre=True, lead_gain=10.0, centre_gain=0.1,
                           early_stop_weights=LossWeights(quantile=0.0, direction=0.0, volatility=0.0, point=1.0),
                           early_stop_horizons=(1,))
    if interval == "1d":
        return TrainConfig(model=dataclasses.replace(model, d_model=16, n_heads=2, max_lag=2, dropout=0.3),
                           n_folds=3, min_train=800, val_size=180, test_size=240, window=128, stride=16,
                           batch_size=8, max_epochs=20, patience=5, lr=1e-3, weight_decay=0.1)
    raise ValueError(f"the demo has 1d and 1h bars, not {interval!r}")


def quick_config(interval: str = "1h", **overrides: Any) -> TrainConfig:
    """The demo settings cut short, for tests and negative controls (e.g. the null variant): fewer epochs, sparser
    windows. Pass overrides for anything else."""
    short = dict(max_epochs=5, patience=2, stride=64)
    return dataclasses.replace(demo_config(interval), **{**short, **overrides})


def train_panel(loaded, config: TrainConfig, run_dir: str | Path | None = None, **kwargs: Any) -> TrainResult:
    """Train on an engine.panel_data.LoadedPanel; run_dir defaults to a new folder under the runs directory."""
    from engine.checkpoint import resolve_runs_dir

    run_id = kwargs.pop("run_id", None) or new_run_id()
    run_dir = Path(run_dir) if run_dir is not None else resolve_runs_dir() / run_id
    return train_walk_forward(loaded.panel, config, interval=loaded.interval, fingerprint=loaded.fingerprint(),
                              run_dir=run_dir, run_id=run_id, **kwargs)
