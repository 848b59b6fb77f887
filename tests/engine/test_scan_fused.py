"""The one-pass Triton scan's extras (engine/model/scan_triton.py): the fused SSM-block form, bf16 inputs and outputs,
and the SSM block's fused path against its plain one. Every check here needs CUDA (skipped without it); the plain
contract's exactness against the float64 reference is tests/engine/test_scan.py's."""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from engine.model.scan import selective_scan_reference
from tests.engine.test_scan import REL_TOL, Case, make_inputs, relative_error

pytestmark = pytest.mark.gpu

CLAMP = (1e-4, 1.0)


def fused_inputs(batch=2, length=45, channels=8, state=4, groups=2, device="cuda", seed=0):
    gen = torch.Generator().manual_seed(seed)
    f64 = {"dtype": torch.float64, "generator": gen}
    x = {"u": torch.randn(batch, length, channels, **f64), "dt": 2 * torch.randn(batch, length, channels, **f64) - 3,
         "dt_bias": torch.randn(channels, **f64), "A": -(0.05 + 4 * torch.rand(channels, state, **f64)),
         "B": torch.randn(batch, length, groups, state, **f64), "C": torch.randn(batch, length, groups, state, **f64),
         "D_skip": torch.randn(channels, **f64), "z": torch.randn(batch, length, channels, **f64),
         "h0": torch.randn(batch, channels, state, **f64)}
    x["dt"][0, :3] = 30.0  # past softplus's linear threshold, then clamped at the top
    x["dt"][1, 4:9] = -30.0  # into the clamp's floor: no gradient there
    open_bars = (torch.rand(batch, length, groups, generator=gen) > 0.3).double()
    return {k: v.to(device) for k, v in x.items()}, open_bars.to(device)


def fused_reference(open_bars, u, dt, dt_bias, A, B, C, D_skip, z, h0):
    per_group = u.shape[-1] // B.shape[2]
    delta = F.softplus(dt + dt_bias).clamp(*CLAMP) * open_bars.repeat_interleave(per_group, dim=-1)
    result = selective_scan_reference(u, delta, A, B, C, h0)
    return (result.y + D_skip * u) * F.silu(z), result.last_state


@pytest.mark.parametrize("length", [1, 45, 200])
def test_fused_form_matches_the_float64_composition_in_outputs_and_all_gradients(length):
    from engine.model.scan_triton import selective_scan_fused

    x, open_bars = fused_inputs(length=length)
    gen = torch.Generator().manual_seed(3)
    up_y = torch.randn(x["u"].shape, dtype=torch.float64, generator=gen).cuda()
    up_last = torch.randn(x["h0"].shape, dtype=torch.float64, generator=gen).cuda()

    def outputs_and_grads(fn, leaves):
        y, last = fn(**leaves)
        loss = (y * up_y.to(y.dtype)).sum() + (last * up_last.to(last.dtype)).sum()
        return (y, last), torch.autograd.grad(loss, list(leaves.values()))

    leaves64 = {k: v.clone().requires_grad_() for k, v in x.items()}
    leaves32 = {k: v.float().requires_grad_() for k, v in x.items()}
    expected, expected_grads = outputs_and_grads(lambda **k: fused_reference(open_bars, **k), leaves64)
    actual, actual_grads = outputs_and_grads(
        lambda **k: selective_scan_fused(**k, open_bars=open_bars.float(), dt_clamp=CLAMP), leaves32)
    for name, a, e in zip(("y", "last_state"), actual, expected):
        assert relative_error(a, e) <= REL_TOL, name
    for name, a, e in zip(x, actual_grads, expected_grads):
        assert relative_error(a, e) <= REL_TOL, f"grad {name}"


def test_bf16_inputs_and_output_keep_a_float32_state():
    from engine.model.scan_triton import selective_scan_triton

    case = Case(2, 300, 32, 16, 2)
    x64 = {k: v.detach() for k, v in make_inputs(case, "cuda").items()}
    # The reference sees exactly the bf16-rounded inputs: what is left is the output's rounding alone.
    rounded = {k: (v.to(torch.bfloat16).double() if k in ("u", "delta", "B", "C") else v) for k, v in x64.items()}
    expected = selective_scan_reference(**rounded).y
    bf16 = {k: (v.to(torch.bfloat16) if k in ("u", "delta", "B", "C") else v.float()) for k, v in x64.items()}
    y, last, _ = selective_scan_triton(**bf16, out_dtype=torch.bfloat16)
    assert y.dtype == torch.bfloat16 and last.dtype == torch.float32
    assert relative_error(y, expected) <= 2**-8  # bf16's own rounding of y (8 bits of mantissa)
    assert relative_error(last, selective_scan_reference(**rounded).last_state) <= REL_TOL


def test_bf16_gradients_come_back_in_the_inputs_dtypes_and_match_float32():
    from engine.model.scan_triton import selective_scan_triton

    case = Case(2, 100, 16, 8, 1)
    x = {k: v.detach() for k, v in make_inputs(case, "cuda").items() if k != "h0"}
    low = {k: (v.to(torch.bfloat16) if k != "A" else v.float()).requires_grad_() for k, v in x.items()}
    high = {k: v.detach().float().requires_grad_() for k, v in low.items()}  # the same numbers in float32
    selective_scan_triton(**low)[0].sum().backward()
    selective_scan_triton(**high)[0].sum().backward()
    for name, leaf in low.items():
        assert leaf.grad.dtype == leaf.dtype, name
        assert relative_error(leaf.grad, high[name].grad) <= 2**-7, name


def test_the_ssm_block_fused_path_matches_its_plain_path_in_outputs_and_gradients():
    from engine.model.config import ModelConfig
    from engine.model.ssm import SelectiveSSMBlock

    torch.manual_seed(0)
    config = ModelConfig(n_assets=3, d_model=32, d_state=8, dropout=0.0)
    block = SelectiveSSMBlock(config).cuda().double()
    x = torch.randn(4, 70, 3, 32, device="cuda", dtype=torch.float64)
    mask = torch.rand(4, 70, 3, device="cuda") > 0.2
    expected = block(x, mask, return_state=True)  # float64: the plain path with the reference scan
    expected_grads = torch.autograd.grad(expected.output.square().sum(), list(block.parameters()))
    block32 = block.float()
    actual = block32(x.float(), mask, return_state=True)
    assert block32._fused_scan_applies(x.float(), readout=False)
    actual_grads = torch.autograd.grad(actual.output.square().sum(), list(block32.parameters()))
    assert relative_error(actual.output, expected.output) <= 1e-5
    assert relative_error(actual.state.ssm_state, expected.state.ssm_state) <= 1e-5
    for (name, _), a, e in zip(block.named_parameters(), actual_grads, expected_grads):
        assert relative_error(a, e) <= 1e-4, name


@pytest.mark.parametrize("upstream", ["broadcast", "transposed"])
def test_backward_reads_a_broadcast_or_strided_upstream_gradient_through_its_strides(upstream):
    # y.sum()'s gradient is a stride-0 expand and a permuted loss gives a non-contiguous one: the kernel reads both
    # as they are (no copy first), and must get the same gradients as the float64 reference.
    from engine.model.scan_triton import selective_scan_triton

    case = Case(2, 70, 16, 8, 2)
    x64 = {k: v.detach() for k, v in make_inputs(case, "cuda").items() if k != "h0"}
    x32 = {k: v.float().requires_grad_() for k, v in x64.items()}
    leaves64 = {k: v.clone().requires_grad_() for k, v in x64.items()}
    up = torch.randn(case.channels, case.length, case.batch, dtype=torch.float64, device="cuda")

    def loss(y):
        return y.sum() if upstream == "broadcast" else (y.permute(2, 1, 0) * up.to(y.dtype)).sum()

    expected = torch.autograd.grad(loss(selective_scan_reference(**leaves64).y), list(leaves64.values()))
    actual = torch.autograd.grad(loss(selective_scan_triton(**x32)[0]), list(x32.values()))
    for name, a, e in zip(x64, actual, expected):
        assert relative_error(a, e) <= REL_TOL, name


@pytest.mark.parametrize("bwd_tiles", [None, (8, 8, 1), (4, 8, 1)], ids=["default", "bwd-8-8-1", "bwd-4-8-1"])
def test_full_channel_blocks_match_the_float64_reference(bwd_tiles, monkeypatch):
    # Small shapes shrink the channel block to 2 (engine.model.scan_triton._channel_block); here the blocks stay at
    # the tiles the benchmark shape runs (forward 16 channels, backward 8 or 16 split as registers x lanes).
    import engine.model.scan_triton as kernel

    monkeypatch.setattr(kernel, "MIN_PROGRAMS_PER_SM", 0)
    if bwd_tiles is not None:
        monkeypatch.setitem(kernel.TILES, "bwd", bwd_tiles)
    case = Case(2, 100, 32, 16, 1)
    x64 = {k: v.detach() for k, v in make_inputs(case, "cuda").items()}
    x32 = {k: v.float().requires_grad_() for k, v in x64.items()}
    leaves64 = {k: v.clone().requires_grad_() for k, v in x64.items()}
    gen = torch.Generator().manual_seed(5)
    up_y = torch.randn(case.batch, case.length, case.channels, dtype=torch.float64, generator=gen).cuda()
    up_last = torch.randn(case.batch, case.channels, case.state, dtype=torch.float64, generator=gen).cuda()

    def outputs_and_grads(y, last, leaves):
        loss = (y * up_y.to(y.dtype)).sum() + (last * up_last.to(last.dtype)).sum()
        return (y, last), torch.autograd.grad(loss, list(leaves.values()))

    reference = selective_scan_reference(**leaves64)
    expected, expected_grads = outputs_and_grads(reference.y, reference.last_state, leaves64)
    y, last, _ = kernel.selective_scan_triton(**x32)
    actual, actual_grads = outputs_and_grads(y, last, x32)
    for name, a, e in zip(("y", "last_state"), actual, expected):
        assert relative_error(a, e) <= REL_TOL, name
    for name, a, e in zip(x64, actual_grads, expected_grads):
        assert relative_error(a, e) <= REL_TOL, f"grad {name}"
