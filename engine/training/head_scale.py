"""The heads' output scale during training: a fixed per-column affine map on the head weights, baked in afterwards.

The column layout (which column of a horizon's block is the median, the log-volatility, the mean) is
engine.model.heads.ForecastHeads' own; this module reads it from the heads instead of repeating offsets.
"""
from __future__ import annotations

import numpy as np
import torch
from torch import Tensor, nn
from torch.nn.utils import parametrize

from engine.features import FeatureSet
from engine.model.hybrid import HybridModel
from engine.targets import Targets
from engine.training.config import TrainingError

# ----- output scale --------------------------------------------------------------------------------------------------
#
# The heads forecast raw log returns (about 0.01 a day, 0.003 an hour), while a fresh head emits numbers of order 1.
# Adam moves every weight by about lr per step whatever the gradient's size, so a median head in raw units jitters
# by more than the whole signal. Training therefore runs the head's weights through a fixed per-column affine map
# (torch parametrize): the median columns are multiplied by the asset's training-span return scale, which makes
# Adam act as if the targets were standardised, and every head column starts at a sensible value (gaps between
# quantiles and log-vol from the same scale). After training the map is baked into plain weights, so a checkpoint
# is an ordinary HybridModel whose outputs are in raw units (what engine.model.inference and the app expect).
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


class ColumnAffine(nn.Module):
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
    config, heads = model.config, model.heads
    n_q, levels = len(config.quantiles), np.asarray(config.quantiles)
    anchor = heads.anchor
    z = np.asarray(stats_norm_ppf(levels))
    col_scale = np.ones((config.n_assets, heads.n_columns))
    col_shift = np.zeros_like(col_scale)
    for j in range(len(config.horizons)):
        s = scale[:, j : j + 1]  # (A, 1)
        col_scale[:, heads.column(j, "median")] = centre_gain * s[:, 0]
        gaps = np.abs(np.diff(z))  # a normal fan as the starting point, one gap per non-anchor level
        for k in range(n_q):
            if k == anchor:
                continue
            gap = s[:, 0] * (gaps[k] if k < anchor else gaps[k - 1])
            col_shift[:, heads.column(j, "quantile", k)] = np.log(np.expm1(gap))  # softplus^-1
        col_shift[:, heads.column(j, "log_vol")] = np.log(s[:, 0])  # log-vol starts at the training scale
        if heads.has_mean:
            col_scale[:, heads.column(j, "mean")] = centre_gain * s[:, 0]  # the mean, in raw units, like the median
    proj = heads.proj
    if zero_centre:
        # The centre forecasts (median, mean) start as the zero forecast: a random head would start them with noise
        # as large as the returns themselves, which the few thousand follower targets take many epochs to undo.
        centre = [heads.column(j, "median") for j in range(len(config.horizons))]
        if heads.has_mean:
            centre += [heads.column(j, "mean") for j in range(len(config.horizons))]
        with torch.no_grad():
            proj.weight[..., centre] = 0.0
            proj.bias[..., centre] = 0.0
    as_tensor = lambda a: torch.as_tensor(a, dtype=proj.weight.dtype, device=proj.weight.device)  # noqa: E731
    parametrize.register_parametrization(
        proj, "weight", ColumnAffine(as_tensor(col_scale)[:, None, :], torch.zeros((), device=proj.weight.device)))
    parametrize.register_parametrization(proj, "bias", ColumnAffine(as_tensor(col_scale), as_tensor(col_shift)))
    lead = model.heads.lead
    if lead is not None:  # a location shift per horizon, in raw units like the median: the same scale
        parametrize.register_parametrization(
            lead, "weight", ColumnAffine(as_tensor(lead_gain * scale)[:, None, :],
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


def stats_norm_ppf(levels: np.ndarray) -> np.ndarray:
    from scipy.stats import norm

    return norm.ppf(levels)
