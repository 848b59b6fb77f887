"""Multi-task training losses, each averaged over the entries a target-valid mask allows.

Targets (all (B, A, T, H), one slot per asset, bar and horizon):
  ret    realised forward return over the horizon          -> pinball loss on the return quantiles, and squared
                                                              error on the mean forecast (when the model has one)
  up     1.0 if that return was > 0 else 0.0               -> BCE with logits on the direction logit
  vol    realised volatility over the horizon (a noisy proxy of the true one) -> QLIKE on variance
  valid  bool: the target exists (inside the data, market open at the forecast bar, ...)
Invalid entries may hold anything, NaN included: they are replaced before any arithmetic, so neither the loss nor
its gradient sees them.
"""
from __future__ import annotations

import functools
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Protocol

import torch
import torch.nn.functional as F
from torch import Tensor

TARGET_KEYS = ("ret", "up", "vol", "valid")

# exp(-2 * log_vol) must stay finite in float32: vols outside e^-20 .. e^20 are far beyond any return scale.
LOG_VOL_BOUND = 20.0


@dataclass(frozen=True)
class LossWeights:
    quantile: float = 1.0
    direction: float = 1.0
    volatility: float = 1.0
    point: float = 1.0  # squared error of the mean forecast; read only when the output has one


class Forecasts(Protocol):
    """What multitask_loss reads from a model output (engine.model.hybrid.ModelOutput satisfies it)."""

    quantiles: Tensor  # (B, A, T, H, Q)
    direction_logit: Tensor  # (B, A, T, H)
    log_vol: Tensor  # (B, A, T, H)
    quantile_levels: tuple[float, ...]
    # mean: Tensor | None, (B, A, T, H), optional: the conditional-mean (point) forecast


def masked_mean(values: Tensor, valid: Tensor) -> Tensor:
    """Mean over valid entries; 0 (still differentiable) when nothing is valid."""
    values = torch.where(valid, values, torch.zeros((), dtype=values.dtype, device=values.device))
    return values.sum() / valid.sum().clamp_min(1)


@functools.lru_cache(maxsize=16)
def _levels(levels: tuple[float, ...], dtype: torch.dtype, device: torch.device) -> Tensor:
    """The quantile levels as a tensor, made once per (levels, dtype, device): a copy from host memory at every
    step cannot be captured in a CUDA graph (engine.training.graphed_step), and this one never changes."""
    return torch.as_tensor(levels, dtype=dtype, device=device)


def pinball_loss(quantiles: Tensor, target: Tensor, levels: Sequence[float], valid: Tensor) -> Tensor:
    """Quantile (pinball) loss, summed over levels, averaged over valid entries.

    quantiles (..., Q), target (...), valid (...) bool. For level tau and error e = y - q the loss is
    max(tau * e, (tau - 1) * e): minimised in expectation exactly at the tau-quantile of y.
    """
    tau = _levels(tuple(levels), quantiles.dtype, quantiles.device)  # (Q,)
    error = _where_valid(target, valid).unsqueeze(-1) - quantiles  # (..., Q)
    per_level = torch.maximum(tau * error, (tau - 1) * error)
    return masked_mean(per_level.sum(dim=-1), valid)


def direction_loss(logits: Tensor, up: Tensor, valid: Tensor) -> Tensor:
    """Binary cross-entropy with logits for P(return > 0); logits, up, valid (...)."""
    per_entry = F.binary_cross_entropy_with_logits(logits, _where_valid(up.to(logits.dtype), valid), reduction="none")
    return masked_mean(per_entry, valid)


def point_loss(mean: Tensor, target: Tensor, valid: Tensor) -> Tensor:
    """Squared error of the mean forecast, averaged over valid entries; mean, target, valid (...). Its minimiser is
    E[ret | inputs], the forecast MSE scores (the pinball median is not: with fat tails it is a noisier centre)."""
    return masked_mean((_where_valid(target, valid) - mean).square(), valid)


def volatility_loss(log_vol: Tensor, realised_vol: Tensor, valid: Tensor) -> Tensor:
    """QLIKE on variance: sigma2_proxy / sigma2_hat + log sigma2_hat (dropping terms free of the forecast).

    Why QLIKE: realised volatility is a noisy proxy of the true one. Patton (2011) shows only losses of the
    QLIKE/MSE-on-variance family rank forecasts the same under an unbiased noisy proxy as under the truth; MSE on
    log-vol does not. QLIKE is also scale-free (BTC and SPY weigh alike) and punishes under-predicting risk more
    than over-predicting it. Its minimiser is sigma2_hat = E[proxy variance].
    log_vol, realised_vol, valid (...).
    """
    log_vol = log_vol.clamp(-LOG_VOL_BOUND, LOG_VOL_BOUND)
    proxy_variance = _where_valid(realised_vol.to(log_vol.dtype), valid).square()
    per_entry = proxy_variance * torch.exp(-2.0 * log_vol) + 2.0 * log_vol
    return masked_mean(per_entry, valid)


def multitask_loss(
    output: Forecasts, targets: Mapping[str, Tensor], weights: LossWeights
) -> tuple[Tensor, dict[str, Tensor]]:
    """Weighted sum of the task losses -> (total scalar, {'quantile', 'direction', 'volatility'[, 'point']} scalars);
    'point' is there when the output has a mean forecast."""
    valid = _checked_targets(output, targets)
    parts = {
        "quantile": pinball_loss(output.quantiles, targets["ret"], output.quantile_levels, valid),
        "direction": direction_loss(output.direction_logit, targets["up"], valid),
        "volatility": volatility_loss(output.log_vol, targets["vol"], valid),
    }
    total = (
        weights.quantile * parts["quantile"]
        + weights.direction * parts["direction"]
        + weights.volatility * parts["volatility"]
    )
    mean = getattr(output, "mean", None)
    if mean is not None:
        parts["point"] = point_loss(mean, targets["ret"], valid)
        total = total + weights.point * parts["point"]
    return total, parts


def _where_valid(target: Tensor, valid: Tensor) -> Tensor:
    return torch.where(valid, target, torch.zeros((), dtype=target.dtype, device=target.device))


def _checked_targets(output: Forecasts, targets: Mapping[str, Tensor]) -> Tensor:
    missing = [key for key in TARGET_KEYS if key not in targets]
    if missing:
        raise ValueError(f"multitask_loss: targets lack {missing}; expected keys {list(TARGET_KEYS)}")
    shape = tuple(output.direction_logit.shape)  # (B, A, T, H)
    for key in TARGET_KEYS:
        if tuple(targets[key].shape) != shape:
            raise ValueError(
                f"multitask_loss: targets['{key}'] has shape {tuple(targets[key].shape)}, "
                f"expected (batch, assets, time, horizons) = {shape} like the model output"
            )
    if targets["valid"].dtype != torch.bool:
        raise ValueError(f"multitask_loss: targets['valid'] must be bool, got {targets['valid'].dtype}")
    return targets["valid"]


# ----- the cost-aware objective --------------------------------------------------------------------------------------
#
# The statistical losses above score forecasts; the backtest (engine.backtest.engine) charges costs on what a
# strategy does with them. This term trains on the second directly: the net return of the position the direction
# head implies, after the backtest's cost per unit of turnover. The position is the backtest's own
# size_by_confidence sizing, 2 (P(up) - 1/2) = tanh(logit / 2), sharpened by k: tanh(k * logit / 2) tends to the
# threshold rule's sign(logit) as k grows and stays differentiable. Maximising it asks the head to be confident
# (|p| near 1) only where the move pays more than the cost of getting in and out, and weights each bar by the size
# of its move: what "only predict when confident, weight larger moves, charge spread and slippage" asks for.


def implied_position(direction_logit: Tensor, sharpness: float = 1.0) -> Tensor:
    """The position in [-1, 1] a direction logit implies: tanh(sharpness * logit / 2) (sharpness 1: 2 P(up) - 1)."""
    return torch.tanh(sharpness * direction_logit / 2)


def cost_aware_loss(direction_logit: Tensor, ret: Tensor, valid: Tensor, cost: Tensor | float,
                    sharpness: float = 1.0) -> Tensor:
    """Minus the mean net return of the implied position, over valid entries; time is the LAST axis.

    direction_logit, ret, valid (..., T): one horizon's logits, realised returns and target mask; cost: per unit of
    position change, in ret's units (a float or a tensor broadcasting to (..., T)). With p_t the implied position
    (implied_position) and p_prev the position at the previous valid bar of the same series,

        loss = -(1/N) sum_valid [ p_t * ret_t - cost * |p_t - p_prev| ]

    The first valid bar of a series pays no turnover (the position before it is not known). Positions are set at
    valid bars only; a closed bar between two open ones carries the position (no charge for the gap itself).
    """
    position = torch.where(valid, implied_position(direction_logit, sharpness),
                           torch.zeros((), dtype=direction_logit.dtype, device=direction_logit.device))
    steps = torch.arange(valid.shape[-1], device=valid.device).expand(valid.shape)
    last_valid = torch.where(valid, steps, torch.full_like(steps, -1)).cummax(dim=-1).values  # (..., T)
    previous = torch.cat([torch.full_like(last_valid[..., :1], -1), last_valid[..., :-1]], dim=-1)
    has_previous = valid & (previous >= 0)
    previous_position = position.gather(-1, previous.clamp_min(0))
    turnover = torch.where(has_previous, (position - previous_position).abs(), torch.zeros_like(position))
    net = position * _where_valid(ret.to(position.dtype), valid) - cost * turnover
    return -masked_mean(net, valid)
