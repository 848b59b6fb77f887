"""The training objective: targets in the losses' names, the standardised multi-task loss (pooled or balanced
over assets, sharded over ranks), and the validation loss early stopping watches."""
from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor

from engine.evaluation.predictions import forward_history
from engine.features import FeatureSet
from engine.model.hybrid import HybridModel
from engine.model.losses import LossWeights, cost_aware_loss, multitask_loss
from engine.targets import Targets
from engine.training.config import TrainConfig
from engine.training.distributed import (
    DistContext,
    all_reduce_sum,
)

# ----- data for one fold ------------------------------------------------------------------------------------------


def loss_targets(targets: Mapping[str, Tensor]) -> dict[str, Tensor]:
    """engine.training.dataset's target names -> engine.model.losses' names."""
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


@dataclass(frozen=True)
class CostAware:
    """The cost-aware term of a training loss (TrainConfig.cost_aware_weight > 0): its weight, the position's
    sharpness and the cost per unit of position change (A,) in the standardised units of each asset's first-horizon
    return (the backtest's cost rate divided by the fold's target scale, as the returns are)."""

    weight: float
    sharpness: float
    cost: Tensor  # (A,)


def backtest_cost_rate(config: TrainConfig) -> float:
    """Cost per unit of position change as a fraction: config.cost_bps, or the backtest's default commission +
    slippage (engine.backtest.engine.StrategyConfig), so the objective charges what the Backtest page charges."""
    if config.cost_bps is not None:
        return config.cost_bps / 1e4
    from engine.backtest.engine import StrategyConfig

    return StrategyConfig().cost_rate


def cost_aware_term(config: TrainConfig, scale: Tensor) -> CostAware | None:
    """The fold's cost-aware term (scale (A, H): the fold's target scale), or None when the objective is off."""
    if config.cost_aware_weight == 0:
        return None
    return CostAware(config.cost_aware_weight, config.cost_aware_sharpness, backtest_cost_rate(config) / scale[:, 0])


def cost_term_loss(output, targets: Mapping[str, Tensor], cost: CostAware, balance_assets: bool) -> Tensor:
    """engine.model.losses.cost_aware_loss at the first horizon (the one the backtest trades by default), pooled
    or averaged per asset like the other terms; output and targets standardised, (B, A, T, H)."""
    logit, ret, valid = output.direction_logit[..., 0], targets["ret"][..., 0], targets["valid"][..., 0]  # (B, A, T)
    per_unit = cost.cost.to(logit)[None, :, None]  # (1, A, 1)
    if not balance_assets:
        return cost_aware_loss(logit, ret, valid, per_unit, cost.sharpness)
    return torch.stack([cost_aware_loss(logit[:, a], ret[:, a], valid[:, a], per_unit[:, a], cost.sharpness)
                        for a in range(logit.shape[1])]).mean()


def training_loss(output, targets: Mapping[str, Tensor], weights: LossWeights, balance_assets: bool,
                  cost: CostAware | None = None) -> Tensor:
    """multitask_loss, pooled over every valid entry, or (balance_assets) its mean over assets of each asset's
    own loss; plus the cost-aware term when `cost` is given. output: StandardisedOutput, tensors (B, A, T, H[, Q])."""
    if not balance_assets:
        total = multitask_loss(output, targets, weights)[0]
    else:
        total = per_asset_losses(output, targets, weights).mean()
    return total if cost is None else total + cost.weight * cost_term_loss(output, targets, cost, balance_assets)


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


def validation_loss(model: HybridModel, x: Tensor, mask: Tensor, targets: Mapping[str, Tensor], stop: int,
                    chunk: int, scale: Tensor, weights: LossWeights,
                    balance_assets: bool = False, cost: CostAware | None = None) -> float:
    """The training loss (standardised units, under `weights`, plus the cost-aware term when given) over the
    targets given, from a causal pass over rows [0, stop)."""
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
    total = training_loss(joined, standardised_targets(targets, scale), weights,
                          balance_assets, cost)
    return float(total)
