"""The fused lead-lag attention (engine.model.attention_triton) against the layer's torch path in float64: the
output and every gradient (the input's; q, k and v through the projection's weight and the norm's gain; out_proj; the
lag and source embeddings), with closed targets, closed key bars and a fully closed bar, at 3 and at 50 assets.
Every check needs CUDA (skipped without it).

Tolerances. float32 with IEEE products: the kernel reorders sums (online softmax, the backward's recomputed scores),
so the scan tests' 1e-5 relative (max |error| / max |value|) holds, against float64. bf16 autocast rounds the
projection's inputs, weights and outputs (q, k, v) to 8 significant bits (u = 2^-9): the same 2.5e-2 / 5e-2 bounds
as tests/engine/test_gpu_ssm.py for the update and the gradients.
"""
from __future__ import annotations

import pytest
import torch

from engine.model import attention
from engine.model.attention import LeadLagAttention
from engine.model.config import ModelConfig

pytestmark = [pytest.mark.gpu, pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")]

REL_TOL = 1e-5  # as tests/engine/test_scan.py
BF16_FORWARD_TOL, BF16_GRAD_TOL = 2.5e-2, 5e-2


@pytest.fixture(autouse=True)
def no_tf32(monkeypatch):
    monkeypatch.setattr(torch.backends.cuda.matmul, "allow_tf32", False)
    monkeypatch.setattr(torch.backends.cudnn, "allow_tf32", False)


@pytest.fixture
def fused_calls(monkeypatch):
    """Counts the fused kernel's calls (proof that the layer took it)."""
    import engine.model.attention_triton as kernel

    calls = []
    original = kernel.lead_lag_attention
    monkeypatch.setattr(kernel, "lead_lag_attention", lambda *a, **k: calls.append(1) or original(*a, **k))
    return calls


def relative_error(actual: torch.Tensor, expected: torch.Tensor) -> float:
    actual, expected = actual.detach().double(), expected.detach().double()
    scale = expected.abs().max().item() or actual.abs().max().item() or 1.0
    return (actual - expected).abs().max().item() / scale


def make_layer(assets: int, max_lag: int = 8) -> LeadLagAttention:
    torch.manual_seed(0)
    layer = LeadLagAttention(ModelConfig(n_assets=assets, max_lag=max_lag, dropout=0.0))  # d_model 64, 4 heads
    with torch.no_grad():  # embeddings and gain away from their init, so that their gradients matter
        layer.norm.weight.normal_(1.0, 0.2)
        layer.lag_embedding.normal_(0.0, 0.5)
        layer.source_embedding.normal_(0.0, 0.5)
    return layer.cuda().train()


def make_inputs(batch: int, length: int, assets: int, closed: float = 0.25):
    generator = torch.Generator().manual_seed(1)
    x = torch.randn(batch, length, assets, 64, generator=generator, dtype=torch.float64)
    mask = torch.rand(batch, length, assets, generator=generator) >= closed
    mask[:, 3] = False  # a bar closed everywhere: no open target, and no key for the next K bars at that lag
    mask[0, :, 0] = False  # an asset closed throughout one sample
    upstream = torch.randn(batch, length, assets, 64, generator=generator, dtype=torch.float64)
    return x.cuda(), mask.cuda(), upstream.cuda()


def run(layer, x, mask, upstream, *, autocast: bool = False):
    """(the layer's update y - x, {name: gradient}) for the loss sum(update * upstream)."""
    xg = x.detach().requires_grad_(True)
    layer.zero_grad(set_to_none=True)
    with torch.autocast("cuda", dtype=torch.bfloat16, enabled=autocast):
        y = layer(xg, mask).output
    update = (y - xg).float() if autocast else y - xg
    (update * upstream.to(update.dtype)).sum().backward()
    grads = {"x": xg.grad} | {name: p.grad for name, p in layer.named_parameters()}
    return update.detach(), grads


def reference(layer, x, mask, upstream):
    saved = attention.FUSED_ON_CUDA
    attention.FUSED_ON_CUDA = False
    try:
        return run(layer.double(), x, mask, upstream)
    finally:
        attention.FUSED_ON_CUDA = saved
        layer.float()


@pytest.mark.parametrize("assets, batch, length, max_lag", [(3, 4, 70, 8), (50, 2, 24, 8), (5, 2, 6, 8),
                                                             (20, 2, 33, 3)])
def test_fused_attention_matches_float64_in_output_and_every_gradient(fused_calls, assets, batch, length, max_lag):
    layer = make_layer(assets, max_lag)
    x, mask, upstream = make_inputs(batch, length, assets)
    exact_update, exact_grads = reference(layer, x, mask, upstream)
    update, grads = run(layer, x.float(), mask, upstream.float())
    assert fused_calls, "the layer did not take the fused kernel"
    errors = {"update": relative_error(update, exact_update)}
    errors |= {f"grad {name}": relative_error(grads[name], exact_grads[name]) for name in exact_grads}
    too_large = {name: f"{error:.2e}" for name, error in errors.items() if not error <= REL_TOL}
    assert not too_large, f"relative errors above {REL_TOL}: {too_large}"
    # closed targets: the layer adds exactly nothing
    assert (update[~mask] == 0).all()


def test_fused_attention_under_bf16_autocast_stays_within_bf16_error(fused_calls):
    layer = make_layer(50)
    x, mask, upstream = make_inputs(2, 24, 50)
    exact_update, exact_grads = reference(layer, x, mask, upstream)
    fp32 = run(layer, x.float(), mask, upstream.float())
    bf16 = run(layer, x.float(), mask, upstream.float(), autocast=True)
    assert len(fused_calls) == 2

    def flat(grads):
        return torch.cat([grads[name].double().flatten() for name in sorted(grads)])

    def rms_rel(a, b):
        a, b = a.double(), b.double()
        return ((a - b).norm() / b.norm()).item()

    update_errors = rms_rel(fp32[0], exact_update), rms_rel(bf16[0], exact_update)
    grad_errors = rms_rel(flat(fp32[1]), flat(exact_grads)), rms_rel(flat(bf16[1]), flat(exact_grads))
    assert update_errors[1] < BF16_FORWARD_TOL and grad_errors[1] < BF16_GRAD_TOL, (update_errors, grad_errors)
    assert update_errors[1] > 10 * update_errors[0], update_errors  # bf16 really ran


def test_state_readout_single_bar_and_float64_keep_the_torch_path(fused_calls):
    layer = make_layer(3)
    x, mask, _ = make_inputs(2, 12, 3)
    with torch.no_grad():
        layer(x.float(), mask, readout=True)
        layer(x.float(), mask, return_state=True)
        layer(x[:, :1].float(), mask[:, :1])
        layer(x.float(), mask, layer.init_state(2, device="cuda"))
        layer.double()(x, mask)
    assert not fused_calls
    with torch.no_grad():  # inference over a window with nothing asked takes it, and agrees with the torch path
        fused = layer.float()(x.float(), mask).output
        assert fused_calls
        expected = layer(x.float(), mask, readout=True).output
    assert relative_error(fused, expected) <= REL_TOL
