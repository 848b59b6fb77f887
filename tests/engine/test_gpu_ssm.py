"""The CUDA-only speed paths of the model (issue 18): the grouped per-asset matmul, the SSM block and the full model
under bf16 autocast, and the training step captured as one CUDA graph. Every check needs CUDA (skipped without it).

Tolerances. float32 paths that only reorder additions (the grouped matmul's split weight gradient, a graph replay
whose scan backward adds dB/dC with atomics) are held to 1e-5 relative (float32's unit roundoff is 6e-8; sums of
a few thousand terms stay well inside). bf16 autocast rounds every projection's inputs and weights to 8 significant
bits (unit roundoff u = 2^-9 = 2e-3) and accumulates in float32; the scan itself stays float32. A block's update
passes through four such products (in_proj, x_proj, dt_proj, out_proj), each rounding two operands: at most ~8u =
1.6e-2 relative if every rounding pushed the same way, ~3u = 6e-3 if they are independent. The bounds below are
2.5e-2 for a block's forward and 5e-2 for its gradients taken together (the backward's products round again; one
small gradient that is a sum of cancelling terms can have a larger relative error, so the check is on the whole
gradient vector), 5e-2 for the full model's outputs, all measured against float64; the bf16 error must also exceed
10x float32's: proof that the bf16 path ran at all.
"""
from __future__ import annotations

import pytest
import torch

from engine.model import ssm
from engine.model.config import ModelConfig
from engine.model.hybrid import GraphedTrainingStep, HybridModel
from engine.model.ssm import PerAssetLinear, SelectiveSSMBlock

pytestmark = pytest.mark.gpu

FLOAT32_TOL = 1e-5
BF16_FORWARD_TOL = 2.5e-2
BF16_GRAD_TOL = 5e-2
BF16_MODEL_TOL = 5e-2  # the full model: four layers and the heads, ~1.2e-2 if the layers' errors are independent


@pytest.fixture(autouse=True)
def no_tf32(monkeypatch):
    monkeypatch.setattr(torch.backends.cuda.matmul, "allow_tf32", False)
    monkeypatch.setattr(torch.backends.cudnn, "allow_tf32", False)


def rel(a: torch.Tensor, b: torch.Tensor) -> float:
    a, b = a.double(), b.double()
    return ((a - b).norm() / b.norm().clamp_min(1e-30)).item()


def test_grouped_matmul_matches_the_plain_path_in_output_and_gradients(monkeypatch):
    monkeypatch.setattr(ssm, "SPLIT_ROWS", 8)  # 120 rows: the weight gradient in 8 slices of 15
    torch.manual_seed(0)
    layer = PerAssetLinear(5, 16, 24).cuda()
    x = torch.randn(3, 40, 5, 32, device="cuda")[..., :16]  # a strided slice, as in_proj's split hands on
    results = {}
    for grouped in (False, True):
        monkeypatch.setattr(ssm, "GROUPED_MATMUL", grouped)
        xg = x.detach().requires_grad_(True)
        layer.zero_grad(set_to_none=True)
        y = layer(xg)
        (y * torch.linspace(-1, 1, y.numel(), device="cuda").view_as(y)).sum().backward()
        results[grouped] = (y.detach(), xg.grad, layer.weight.grad, layer.bias.grad)
    assert ssm._row_slices(120, 5) == 8
    for plain, grouped in zip(results[False], results[True]):
        assert rel(grouped, plain) < FLOAT32_TOL


def test_grouped_matmul_in_bf16_keeps_float32_results_close():
    torch.manual_seed(0)
    layer = PerAssetLinear(3, 64, 256, bias=False).cuda()
    x = torch.randn(4, 128, 3, 64, device="cuda")
    exact = torch.einsum("btai,aio->btao", x.double(), layer.weight.double())
    saved = ssm.PROJECTION_PRECISION
    ssm.PROJECTION_PRECISION = "bf16"
    try:
        y = layer(x)
    finally:
        ssm.PROJECTION_PRECISION = saved
    assert y.dtype == torch.float32
    error = rel(y, exact)
    # the operands and the product each rounded to bf16 once (u = 2^-9 each, RMS u/sqrt(3)), float32 sums
    assert 1e-4 < error < 3 * 2**-9, error


def _block_run(block, x, mask, dtype, autocast):
    xg = x.to(dtype).detach().requires_grad_(True)
    block.zero_grad(set_to_none=True)
    with torch.autocast("cuda", dtype=torch.bfloat16, enabled=autocast):
        out = block(xg, mask).output
    update = (out - xg).float()  # the block's contribution: the residual x would hide its error
    weights = torch.linspace(-1, 1, update.numel(), device="cuda").view_as(update)
    (update * weights).sum().backward()
    grads = {name: p.grad.detach().double() for name, p in block.named_parameters()}
    return update.double(), xg.grad.double(), grads


def test_ssm_block_under_bf16_autocast_stays_within_bf16_error_of_float64():
    torch.manual_seed(0)
    config = ModelConfig(n_assets=3, dropout=0.0)
    block = SelectiveSSMBlock(config).cuda().train()
    x = torch.randn(4, 128, 3, config.d_model, device="cuda")
    mask = torch.rand(4, 128, 3, device="cuda") > 0.1
    exact = _block_run(block.double(), x, mask, torch.float64, False)
    block.float()
    fp32 = _block_run(block, x, mask, torch.float32, False)
    bf16 = _block_run(block, x, mask, torch.float32, True)
    def flat(run):  # every gradient (the input's and each parameter's) in one vector
        return torch.cat([run[1].flatten()] + [g.flatten() for g in run[2].values()])

    errors = {"update": (rel(fp32[0], exact[0]), rel(bf16[0], exact[0])),
              "all gradients": (rel(flat(fp32), flat(exact)), rel(flat(bf16), flat(exact)))}
    per_tensor = {name: f"{rel(bf16[2][name], exact[2][name]):.1e}" for name in exact[2]}
    print("errors against float64 (fp32, bf16):", errors, "bf16 per parameter:", per_tensor)
    assert errors["update"][0] < 10 * FLOAT32_TOL and errors["all gradients"][0] < 10 * FLOAT32_TOL, errors
    assert errors["update"][1] < BF16_FORWARD_TOL and errors["all gradients"][1] < BF16_GRAD_TOL, errors
    assert errors["update"][1] > 10 * errors["update"][0], errors  # bf16 really ran


def test_full_model_under_bf16_autocast_stays_within_bf16_error_of_float64():
    torch.manual_seed(0)
    config = ModelConfig(n_assets=3, dropout=0.0)
    model = HybridModel(config).cuda().eval()
    x = torch.randn(2, 3, 96, config.n_features, device="cuda")
    mask = torch.rand(2, 3, 96, device="cuda") > 0.1
    with torch.no_grad():
        exact = model.double()(x.double(), mask)
        model.float()
        fp32 = model(x, mask)
        with torch.autocast("cuda", dtype=torch.bfloat16):
            bf16 = model(x, mask)
    for field in ("quantiles", "direction_logit", "log_vol", "mean"):
        e32, e16 = rel(getattr(fp32, field), getattr(exact, field)), rel(getattr(bf16, field), getattr(exact, field))
        print(field, f"fp32 {e32:.1e} bf16 {e16:.1e}")
        assert e32 < FLOAT32_TOL * 10 and e16 < BF16_MODEL_TOL, (field, e32, e16)


def _loss(model, x, mask):
    out = model(x, mask)
    return out.quantiles.square().mean() + out.direction_logit.mean() + out.log_vol.square().mean()


def test_training_step_as_one_cuda_graph_gives_the_eager_gradients_on_new_inputs():
    torch.manual_seed(0)
    config = ModelConfig(n_assets=3, dropout=0.0)  # lead path and point head on, as the shipped recipe
    model = HybridModel(config).cuda().train()
    x1, x2 = (torch.randn(4, 3, 64, config.n_features, device="cuda") for _ in range(2))
    mask1, mask2 = (torch.rand(4, 3, 64, device="cuda") > 0.2 for _ in range(2))

    def eager(x, mask):
        model.zero_grad(set_to_none=True)
        loss = _loss(model, x, mask)
        loss.backward()
        return loss.detach(), {n: p.grad.clone() for n, p in model.named_parameters()}

    want1, want2 = eager(x1, mask1), eager(x2, mask2)
    step = GraphedTrainingStep(model, lambda x, mask: _loss(model, x, mask), x1, mask1)
    for x, mask, (loss_want, grads_want) in ((x2, mask2, want2), (x1, mask1, want1), (x2, mask2, want2)):
        loss = step(x, mask)
        assert rel(loss, loss_want) < FLOAT32_TOL
        for name, p in model.named_parameters():
            assert rel(p.grad, grads_want[name]) < FLOAT32_TOL, name

