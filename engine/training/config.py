"""What a training run is asked to do (TrainConfig), what it reports (FoldSummary, TrainResult) and how it fails.

The model's own architecture lives in engine.model.config.ModelConfig; TrainConfig holds it plus the walk-forward,
windowing and optimisation settings. Named recipes are in engine.training.presets.
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Literal

from engine.evaluation.scores import DEFAULT_QUANTILE_LEVELS, Predictions
from engine.features import FeatureConfig, FeatureSet
from engine.model.checkpoint import (
    Manifest,
)
from engine.model.config import ModelConfig
from engine.model.hybrid import HybridModel
from engine.model.losses import LossWeights


def default_model_config() -> ModelConfig:
    """Small enough to train a demo run in minutes on two cores; n_assets/n_features are set from the data. The
    plain heads (no mean head, no lead path), on which the 1d recipe and the quick tests build."""
    return ModelConfig(
        d_model=32, d_state=8, expand=2, n_heads=4, max_lag=8, layer_pattern=("ssm", "attn", "ssm"),
        quantiles=DEFAULT_QUANTILE_LEVELS, dropout=0.1, point_head=False, lead_path=False,
    )


@dataclass
class TrainConfig:
    model: ModelConfig = field(default_factory=default_model_config)
    features: FeatureConfig = field(default_factory=FeatureConfig)
    # walk-forward folds (engine.training.splits.walk_forward), in union-clock rows
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
    loss_weights: LossWeights = field(default_factory=LossWeights)  # the training loss's mix of the heads' losses
    # The loss early stopping watches (standardised units, on the validation span); None: the training loss.
    # Return-only weights keep the stop from being decided by the direction and volatility terms, which improve
    # for many epochs after the return forecasts have started to overfit, or stop before those have learned.
    early_stop_weights: LossWeights | None = None
    # The horizons that loss is taken over; None: all. The long horizons' forecasts overfit within an epoch or
    # two on a few thousand bars, and averaged in they stop a fold before the 1-bar forecast has learned anything.
    early_stop_horizons: tuple[int, ...] | None = None
    # Validate the starting point before the first epoch and keep it when no epoch beats it (with the skip paths the
    # start is the closed-form statistical fit; without, an untrained network, which never wins).
    validate_start: bool = False
    # After training, per asset and horizon, keep the network's part of the centre forecast only where it lowers the
    # validation MSE by a one-sided test (engine.training.skip_fit.gate_centre); needs a point head.
    gate_centre: bool = False
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
    # The cost-aware objective (engine.model.losses.cost_aware_loss, wired in engine.training.objective): minus the
    # net return of the position the direction head implies at the first horizon, after costs, added to the loss
    # with this weight; 0: off. Sharpness k: position tanh(k * logit / 2), 1 = the backtest's size_by_confidence.
    # cost_bps: per unit of position change; None: the backtest's default commission + slippage.
    cost_aware_weight: float = 0.0
    cost_aware_sharpness: float = 1.0
    cost_bps: float | None = None

    def __post_init__(self) -> None:
        if isinstance(self.model, dict):
            self.model = ModelConfig.from_dict(self.model)
        if isinstance(self.features, dict):
            self.features = FeatureConfig(**self.features)
        if isinstance(self.loss_weights, dict):
            self.loss_weights = LossWeights(**self.loss_weights)
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
        if self.cost_aware_weight < 0 or not self.cost_aware_sharpness > 0 or (self.cost_bps or 0) < 0:
            raise ValueError(f"TrainConfig: need cost_aware_weight >= 0, cost_aware_sharpness > 0 and cost_bps >= 0, "
                             f"got {self.cost_aware_weight!r}, {self.cost_aware_sharpness!r}, {self.cost_bps!r}")
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


def model_config_for(config: TrainConfig, feature_set: FeatureSet) -> ModelConfig:
    n_assets, _, n_features = feature_set.values.shape
    return dataclasses.replace(config.model, n_assets=n_assets, n_features=n_features)
