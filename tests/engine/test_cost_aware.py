"""The cost-aware objective: minus the net return, after the backtest's costs, of the position the heads imply."""
from __future__ import annotations

import math

import pytest
import torch

from engine.backtest.engine import StrategyConfig
from engine.model.losses import LossWeights, cost_aware_loss, implied_position
from engine.training.config import TrainConfig
from engine.training.objective import (
    StandardisedOutput,
    backtest_cost_rate,
    cost_aware_term,
    training_loss,
)


def test_the_gradient_matches_the_hand_derivation_with_a_closed_bar_between_two_open_ones():
    k, c = 2.0, 0.005
    z = torch.tensor([0.5, 7.0, -0.3], dtype=torch.float64, requires_grad=True)
    ret = torch.tensor([0.02, float("nan"), -0.01], dtype=torch.float64)  # the closed bar's target is unknown
    valid = torch.tensor([True, False, True])
    loss = cost_aware_loss(z, ret, valid, c, sharpness=k)
    loss.backward()

    p1, p3 = math.tanh(k * 0.5 / 2), math.tanh(k * -0.3 / 2)
    # two valid bars; the second pays |p3 - p1| (the closed bar carries the position, it is not charged)
    assert loss.item() == pytest.approx(-(p1 * 0.02 + p3 * -0.01 - c * abs(p3 - p1)) / 2, rel=1e-12)
    sign = math.copysign(1.0, p3 - p1)
    dp1, dp3 = k / 2 * (1 - p1**2), k / 2 * (1 - p3**2)
    expected = [-(0.02 + c * sign) / 2 * dp1, 0.0, -(-0.01 - c * sign) / 2 * dp3]
    assert z.grad.tolist() == pytest.approx(expected, rel=1e-12, abs=1e-15)


def test_without_costs_the_gradient_pushes_each_position_toward_its_bars_move_and_costs_hold_it_back():
    z = torch.zeros(4, requires_grad=True)
    ret = torch.tensor([0.01, -0.02, 0.03, -0.01])
    cost_aware_loss(z, ret, torch.ones(4, dtype=torch.bool), 0.0).backward()
    assert torch.equal(torch.sign(-z.grad), torch.sign(ret))  # descent raises the logit where the bar went up
    # a position already held pays to move: a large cost makes staying flat the cheapest
    flat = torch.zeros(4, requires_grad=True)
    costly = cost_aware_loss(flat + 0.01, ret, torch.ones(4, dtype=torch.bool), 1.0)
    free = cost_aware_loss(flat + 0.01, ret, torch.ones(4, dtype=torch.bool), 0.0)
    assert costly.item() == pytest.approx(free.item())  # equal positions: no turnover, no charge


def test_sharpness_one_is_the_backtests_confidence_sizing():
    logits = torch.linspace(-4, 4, 9)
    assert torch.allclose(implied_position(logits, 1.0), 2 * torch.sigmoid(logits) - 1, atol=1e-6)
    assert torch.allclose(implied_position(logits, 50.0)[[0, -1]], torch.tensor([-1.0, 1.0]))


def test_the_training_loss_adds_the_term_at_the_first_horizon_with_the_backtests_cost_in_target_units():
    config = TrainConfig(cost_aware_weight=0.5, cost_aware_sharpness=3.0)
    assert backtest_cost_rate(config) == StrategyConfig().cost_rate  # the Backtest page's default costs
    assert backtest_cost_rate(TrainConfig(cost_bps=10.0)) == pytest.approx(1e-3)
    assert cost_aware_term(TrainConfig(), torch.ones(2, 3)) is None  # off by default
    scale = torch.tensor([[0.01, 0.02, 0.05], [0.02, 0.04, 0.1]])  # (A, H)
    term = cost_aware_term(config, scale)
    assert torch.allclose(term.cost, StrategyConfig().cost_rate / scale[:, 0])

    torch.manual_seed(0)
    B, A, T, H, Q = 2, 2, 6, 3, 3
    output = StandardisedOutput(quantiles=torch.randn(B, A, T, H, Q).sort(-1).values,
                                direction_logit=torch.randn(B, A, T, H), log_vol=torch.randn(B, A, T, H),
                                quantile_levels=(0.1, 0.5, 0.9))
    targets = {"ret": torch.randn(B, A, T, H), "up": (torch.rand(B, A, T, H) > 0.5).float(),
               "vol": torch.rand(B, A, T, H), "valid": torch.rand(B, A, T, H) > 0.2}
    plain = training_loss(output, targets, LossWeights(), False)
    with_cost = training_loss(output, targets, LossWeights(), False, term)
    alone = cost_aware_loss(output.direction_logit[..., 0], targets["ret"][..., 0], targets["valid"][..., 0],
                            term.cost[None, :, None], 3.0)
    assert (with_cost - plain).item() == pytest.approx(0.5 * alone.item(), rel=1e-5)


def test_bad_cost_settings_are_refused():
    with pytest.raises(ValueError, match="cost_aware_weight"):
        TrainConfig(cost_aware_weight=-1.0)
    with pytest.raises(ValueError, match="cost_aware_sharpness"):
        TrainConfig(cost_aware_sharpness=0.0)
