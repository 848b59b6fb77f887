"""Specification of the selective scan (engine/model/scan.py, engine/model/scan_triton.py) and of engine/runtime.py.

The sequential loop in float64 is the yardstick: every fast path, run in float32, must match it to a relative error of
1e-5 (max |fast - reference| / max |reference|) in all outputs and in the gradients of all six inputs, including
lengths of 1, odd lengths, lengths that are no multiple of the chunk, grouped B/C, and deltas from 1e-6 to ~50 with
A down to -16 (where exp(delta·A) underflows).
"""
from __future__ import annotations

from dataclasses import dataclass

import pytest
import torch

from engine.model.scan import (
    ScanResult,
    auto_chunk_size,
    selective_scan,
    selective_scan_reference,
)
from engine.runtime import configure_cpu_threads, device_label, pick_device

REL_TOL = 1e-5
INPUT_NAMES = ("u", "delta", "A", "B", "C", "h0")


def relative_error(actual: torch.Tensor, expected: torch.Tensor) -> float:
    """max |actual - expected| / max |expected|, in float64 (max |actual| when expected is all zeros)."""
    actual, expected = actual.detach().double(), expected.detach().double()
    scale = expected.abs().max().item() or actual.abs().max().item() or 1.0
    return (actual - expected).abs().max().item() / scale


@dataclass(frozen=True)
class Case:
    batch: int
    length: int
    channels: int
    state: int
    groups: int
    chunk_size: int | None = None  # None: the automatic choice
    delta_regime: str = "typical"  # typical | tiny | huge | mixed (tiny, huge and frozen bars together)
    a_max: float = 1.0  # A is drawn from [-a_max, -0.05]

    def __str__(self) -> str:
        return (f"b{self.batch}-L{self.length}-D{self.channels}-N{self.state}-G{self.groups}"
                f"-chunk{self.chunk_size or 'auto'}-{self.delta_regime}-A{self.a_max:g}")


CASES = [
    Case(2, 1, 4, 3, 1, chunk_size=8),
    Case(2, 7, 6, 4, 2, chunk_size=4),
    Case(3, 37, 8, 5, 4, chunk_size=16),
    Case(2, 64, 8, 16, 1, chunk_size=16),
    Case(1, 100, 12, 4, 3),
    Case(2, 45, 8, 4, 2, chunk_size=8, delta_regime="tiny"),
    Case(2, 45, 8, 4, 2, chunk_size=8, delta_regime="huge", a_max=16.0),
    Case(2, 45, 8, 4, 2, chunk_size=8, delta_regime="mixed", a_max=16.0),
]


def make_inputs(case: Case, device: str = "cpu", seed: int = 0) -> dict[str, torch.Tensor]:
    """Leaf float64 tensors for the case (h0 included)."""
    gen = torch.Generator().manual_seed(seed)
    b, L, D, N, G = case.batch, case.length, case.channels, case.state, case.groups
    f64 = dict(dtype=torch.float64, generator=gen)
    if case.delta_regime == "typical":
        delta = 1e-3 + torch.rand(b, L, D, **f64)
    elif case.delta_regime == "tiny":
        delta = 1e-6 * torch.rand(b, L, D, **f64)
    elif case.delta_regime == "huge":
        delta = 25.0 + 25.0 * torch.rand(b, L, D, **f64)
    elif case.delta_regime == "mixed":
        pick = torch.randint(0, 4, (b, L, D), generator=gen)
        choices = torch.stack([torch.zeros(b, L, D, dtype=torch.float64), 1e-6 * torch.rand(b, L, D, **f64),
                               torch.rand(b, L, D, **f64), 50.0 * torch.rand(b, L, D, **f64)])
        delta = choices.gather(0, pick.unsqueeze(0)).squeeze(0)
    else:
        raise AssertionError(case.delta_regime)
    tensors = {
        "u": torch.randn(b, L, D, **f64),
        "delta": delta,
        "A": -(0.05 + (case.a_max - 0.05) * torch.rand(D, N, **f64)),
        "B": torch.randn(b, L, G, N, **f64),
        "C": torch.randn(b, L, G, N, **f64),
        "h0": torch.randn(b, D, N, **f64),
    }
    return {name: t.to(device).requires_grad_() for name, t in tensors.items()}


def cast_leaves(inputs: dict[str, torch.Tensor], dtype: torch.dtype) -> dict[str, torch.Tensor]:
    return {name: t.detach().to(dtype).requires_grad_() for name, t in inputs.items()}


def outputs_and_grads(result: ScanResult, inputs: dict[str, torch.Tensor], upstream: dict[str, torch.Tensor]):
    """Backpropagate fixed random upstream gradients from every output that exists; return outputs and grads."""
    loss = (result.y * upstream["y"].to(result.y.dtype)).sum()
    loss = loss + (result.last_state * upstream["last_state"].to(result.y.dtype)).sum()
    outputs = {"y": result.y, "last_state": result.last_state}
    if result.states is not None:
        loss = loss + (result.states * upstream["states"].to(result.y.dtype)).sum()
        outputs["states"] = result.states
    grads = torch.autograd.grad(loss, list(inputs.values()))
    return outputs, dict(zip(inputs, grads))


def random_upstream(case: Case, device: str, seed: int = 1) -> dict[str, torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    b, L, D, N = case.batch, case.length, case.channels, case.state
    shapes = {"y": (b, L, D), "last_state": (b, D, N), "states": (b, L, D, N)}
    return {k: torch.randn(*s, dtype=torch.float64, generator=gen).to(device) for k, s in shapes.items()}


def assert_fast_path_matches_reference(case: Case, device: str, return_states: bool, with_h0: bool) -> None:
    inputs64 = make_inputs(case, device)
    if not with_h0:
        del inputs64["h0"]
    inputs32 = cast_leaves(inputs64, torch.float32)
    upstream = random_upstream(case, device)

    expected = selective_scan_reference(**inputs64, return_states=return_states)
    actual = selective_scan(**inputs32, return_states=return_states, chunk_size=case.chunk_size)
    assert actual.y.dtype == torch.float32
    assert (actual.states is None) == (not return_states)

    expected_out, expected_grads = outputs_and_grads(expected, inputs64, upstream)
    actual_out, actual_grads = outputs_and_grads(actual, inputs32, upstream)
    errors = {f"output {k}": relative_error(actual_out[k], expected_out[k]) for k in expected_out}
    errors |= {f"grad {k}": relative_error(actual_grads[k], expected_grads[k]) for k in expected_grads}
    too_large = {k: f"{v:.2e}" for k, v in errors.items() if not v <= REL_TOL}
    assert not too_large, f"{case}: relative errors above {REL_TOL}: {too_large}"


# ---------------------------------------------------------------------------------------------------------------------
# The reference itself
# ---------------------------------------------------------------------------------------------------------------------


def test_reference_matches_the_closed_form_sum_over_past_inputs():
    # h_t = (prod_{r<=t} a_r) h0 + sum_{s<=t} (prod_{s<r<=t} a_r) x_s, written out with explicit products.
    case = Case(1, 6, 4, 3, 2)
    x = {k: v.detach() for k, v in make_inputs(case).items()}
    result = selective_scan_reference(**x, return_states=True)
    per_group = case.channels // case.groups
    for d in range(case.channels):
        g = d // per_group
        for n in range(case.state):
            decay = torch.exp(x["delta"][0, :, d] * x["A"][d, n])  # (L,)
            drive = x["delta"][0, :, d] * x["u"][0, :, d] * x["B"][0, :, g, n]
            for t in range(case.length):
                h = torch.prod(decay[: t + 1]) * x["h0"][0, d, n]
                h = h + sum(torch.prod(decay[s + 1: t + 1]) * drive[s] for s in range(t + 1))
                assert result.states[0, t, d, n].item() == pytest.approx(h.item(), rel=1e-12, abs=1e-12)
    y = (result.states * x["C"].repeat_interleave(per_group, dim=2)).sum(-1)
    torch.testing.assert_close(result.y, y, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(result.last_state, result.states[:, -1], rtol=0, atol=0)


# ---------------------------------------------------------------------------------------------------------------------
# The fast CPU path
# ---------------------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("case", CASES, ids=str)
def test_fast_path_matches_float64_reference_in_outputs_and_all_gradients(case):
    assert_fast_path_matches_reference(case, "cpu", return_states=True, with_h0=True)


@pytest.mark.parametrize("case", [CASES[2], CASES[7]], ids=str)
def test_fast_path_matches_reference_when_only_y_is_used_and_there_is_no_h0(case):
    assert_fast_path_matches_reference(case, "cpu", return_states=False, with_h0=False)


def test_hand_written_backward_passes_gradcheck_in_float64():
    case = Case(1, 5, 4, 2, 2, chunk_size=2)
    inputs = make_inputs(case)
    inputs["delta"] = (0.1 + inputs["delta"].detach()).requires_grad_()

    def scan(*args):
        result = selective_scan(*args, return_states=True, chunk_size=case.chunk_size)
        return result.y, result.last_state, result.states

    assert torch.autograd.gradcheck(scan, tuple(inputs[k] for k in INPUT_NAMES), eps=1e-6, atol=1e-7, rtol=1e-5)


@pytest.mark.parametrize("split", [1, 16, 21])  # inside the first chunk, on a chunk boundary, inside a later one
def test_scanning_in_two_pieces_from_the_last_state_equals_one_scan(split):
    case = Case(2, 40, 8, 4, 2, chunk_size=16)
    x = {k: v.detach().float() for k, v in make_inputs(case).items()}
    whole = selective_scan(**x, return_states=True, chunk_size=16)
    first = selective_scan(
        x["u"][:, :split], x["delta"][:, :split], x["A"], x["B"][:, :split], x["C"][:, :split], x["h0"],
        return_states=True, chunk_size=16)
    second = selective_scan(
        x["u"][:, split:], x["delta"][:, split:], x["A"], x["B"][:, split:], x["C"][:, split:], first.last_state,
        return_states=True, chunk_size=16)
    assert relative_error(torch.cat([first.y, second.y], dim=1), whole.y) <= REL_TOL
    assert relative_error(torch.cat([first.states, second.states], dim=1), whole.states) <= REL_TOL
    assert relative_error(second.last_state, whole.last_state) <= REL_TOL


def test_zero_delta_freezes_the_state_and_the_input_has_no_effect():
    case = Case(2, 30, 8, 4, 2, chunk_size=8)
    x = {k: v.detach().float() for k, v in make_inputs(case).items()}
    frozen = slice(6, 19)  # closed-market bars, across a chunk boundary
    x["delta"][:, frozen] = 0.0
    x = {k: v.requires_grad_() for k, v in x.items()}
    result = selective_scan(**x, return_states=True, chunk_size=8)

    held = result.states[:, frozen.start - 1]
    for t in range(frozen.start, frozen.stop):
        assert torch.equal(result.states[:, t], held), f"state moved at frozen bar {t}"
    per_group = case.channels // case.groups
    readout = (held.unsqueeze(1) * x["C"][:, frozen].repeat_interleave(per_group, dim=2)).sum(-1)
    torch.testing.assert_close(result.y[:, frozen], readout, rtol=1e-6, atol=1e-6)

    grad_u, grad_B = torch.autograd.grad(result.y.sum() + result.last_state.sum(), [x["u"], x["B"]])
    assert torch.count_nonzero(grad_u[:, frozen]) == 0
    assert torch.count_nonzero(grad_B[:, frozen]) == 0
    assert torch.count_nonzero(grad_u[:, frozen.stop:]) > 0  # the check above is not vacuous


def test_under_bf16_autocast_the_scan_still_computes_in_float32():
    case = Case(2, 20, 8, 4, 2, chunk_size=8)
    x32 = {k: v.detach().float() for k, v in make_inputs(case).items()}
    plain = selective_scan(**x32, chunk_size=8)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        under_autocast = selective_scan(**x32, chunk_size=8)
    assert under_autocast.y.dtype == torch.float32
    assert torch.equal(under_autocast.y, plain.y)

    x_bf16 = {k: v.bfloat16() for k, v in x32.items()}
    from_bf16 = selective_scan(**x_bf16, chunk_size=8)
    reference = selective_scan_reference(**{k: v.double() for k, v in x_bf16.items()})
    assert from_bf16.y.dtype == torch.float32
    assert relative_error(from_bf16.y, reference.y) <= REL_TOL


def _scan_backward_node(tensor: torch.Tensor):
    """Walk back from an output to the scan's own autograd node."""
    pending, seen = [tensor.grad_fn], set()
    while pending:
        node = pending.pop()
        if node is None or node in seen:
            continue
        seen.add(node)
        if "SelectiveScan" in type(node).__name__:
            return node
        pending.extend(next_node for next_node, _ in node.next_functions)
    raise AssertionError("no selective-scan node in the graph")


def test_backward_keeps_no_tensor_of_size_batch_by_length_by_channels_by_state():
    case = Case(2, 256, 16, 8, 2, chunk_size=32)
    x = {k: v.detach().float().requires_grad_() for k, v in make_inputs(case).items()}
    result = selective_scan(**x, chunk_size=32)
    saved = _scan_backward_node(result.y).saved_tensors
    full_size = case.batch * case.length * case.channels * case.state
    assert saved, "the scan saved nothing: the check below would be vacuous"
    assert max(t.numel() for t in saved) < full_size // 4


@pytest.mark.parametrize(
    "change, message",
    [
        (lambda x: x.update(u=x["u"][0]), "u must be (batch, L, D)"),
        (lambda x: x.update(u=x["u"][:, :0], delta=x["delta"][:, :0], B=x["B"][:, :0], C=x["C"][:, :0]),
         "u has no bars (L = 0)"),
        (lambda x: x.update(delta=x["delta"][:, :-1]), "delta must match u"),
        (lambda x: x.update(A=x["A"][:-1]), "A must be (D=8, N)"),
        (lambda x: x.update(B=x["B"][..., :-1]), "B must be (batch=2, L=5, G, N=4)"),
        (lambda x: x.update(C=x["C"][:, :, :1]), "B (2, 5, 2, 4) and C (2, 5, 1, 4) must have the same shape"),
        (lambda x: x.update(B=x["B"][:, :, :1].expand(2, 5, 3, 4), C=x["C"][:, :, :1].expand(2, 5, 3, 4)),
         "D=8 channels cannot be split into G=3"),
        (lambda x: x.update(h0=x["h0"][:, :, :2]), "h0 must be (batch=2, D=8, N=4)"),
        (lambda x: x.update(u=x["u"].long()), "u must be a floating-point tensor"),
    ],
)
def test_bad_inputs_raise_an_error_naming_the_argument(change, message):
    x = {k: v.detach().float() for k, v in make_inputs(Case(2, 5, 8, 4, 2)).items()}
    change(x)
    with pytest.raises(ValueError, match=message.replace("(", r"\(").replace(")", r"\)")):
        selective_scan(**x)


def test_automatic_chunk_size_keeps_a_chunk_near_256k_state_elements_within_16_to_128_bars():
    assert auto_chunk_size(8, 128, 16) == 16  # 16K elements per bar
    assert auto_chunk_size(8, 32, 16) == 64
    assert auto_chunk_size(1, 8, 4) == 128
    assert auto_chunk_size(64, 512, 16) == 16


def test_chunk_size_must_be_positive():
    x = {k: v.detach().float() for k, v in make_inputs(Case(1, 5, 4, 2, 1)).items()}
    with pytest.raises(ValueError, match="chunk_size must be >= 1, got 0"):
        selective_scan(**x, chunk_size=0)


# ---------------------------------------------------------------------------------------------------------------------
# The fused CUDA kernel
# ---------------------------------------------------------------------------------------------------------------------


@pytest.mark.gpu
@pytest.mark.parametrize("case", CASES, ids=str)
def test_fused_kernel_matches_float64_reference_in_outputs_and_all_gradients(case):
    assert_fast_path_matches_reference(case, "cuda", return_states=True, with_h0=True)


@pytest.mark.gpu
@pytest.mark.parametrize("case", [CASES[2], CASES[7]], ids=str)
def test_fused_kernel_matches_reference_when_only_y_is_used_and_there_is_no_h0(case):
    assert_fast_path_matches_reference(case, "cuda", return_states=False, with_h0=False)


@pytest.mark.gpu
def test_cuda_float32_inputs_run_the_fused_kernel():
    x = {k: v.detach().float().requires_grad_() for k, v in make_inputs(Case(2, 40, 8, 4, 2), "cuda").items()}
    result = selective_scan(**x)
    assert "Triton" in type(_scan_backward_node(result.y)).__name__


@pytest.mark.gpu
def test_fused_kernel_at_full_size_matches_the_chunked_path_in_float64():
    # The benchmark shape: many chunks, the cross-chunk scan looping over several blocks of chunks.
    from engine.model.scan import selective_scan_chunked

    case = Case(8, 4096, 128, 16, 1, chunk_size=256, delta_regime="mixed", a_max=8.0)
    inputs64 = make_inputs(case, "cuda")
    inputs32 = cast_leaves(inputs64, torch.float32)
    upstream = random_upstream(case, "cuda")
    expected_out, expected_grads = outputs_and_grads(
        selective_scan_chunked(**inputs64, chunk_size=256), inputs64, upstream)
    actual_out, actual_grads = outputs_and_grads(selective_scan(**inputs32), inputs32, upstream)
    for name in expected_out:
        assert relative_error(actual_out[name], expected_out[name]) <= REL_TOL, name
    for name in expected_grads:
        assert relative_error(actual_grads[name], expected_grads[name]) <= REL_TOL, f"grad {name}"


@pytest.mark.gpu
def test_fused_kernel_under_bf16_autocast_computes_in_float32():
    x = {k: v.detach().float() for k, v in make_inputs(Case(2, 50, 8, 4, 2), "cuda").items()}
    plain = selective_scan(**x)
    with torch.autocast("cuda", dtype=torch.bfloat16):
        under_autocast = selective_scan(**x)
    assert under_autocast.y.dtype == torch.float32
    assert torch.equal(under_autocast.y, plain.y)


# ---------------------------------------------------------------------------------------------------------------------
# engine/runtime.py
# ---------------------------------------------------------------------------------------------------------------------


@pytest.fixture
def restore_torch_cpu_settings():
    threads = torch.get_num_threads()
    yield
    torch.set_num_threads(threads)
    torch.set_flush_denormal(False)


def test_configure_cpu_threads_sets_the_thread_count_and_flushes_denormals(restore_torch_cpu_settings):
    assert configure_cpu_threads(1) == 1
    assert torch.get_num_threads() == 1
    assert torch.tensor([1e-40], dtype=torch.float32).item() == 0.0  # a float32 denormal, flushed to zero


def test_configure_cpu_threads_rejects_a_non_positive_count():
    with pytest.raises(ValueError, match="n must be >= 1, got 0"):
        configure_cpu_threads(0)


def test_pick_device_prefers_cuda_only_when_present():
    assert pick_device().type == ("cuda" if torch.cuda.is_available() else "cpu")
    assert pick_device("cpu") == torch.device("cpu")
    assert device_label("cpu") == f"CPU ({torch.get_num_threads()} threads)"
    with pytest.raises(ValueError, match="unsupported device 'meta'"):
        pick_device("meta")


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the error raised when CUDA is missing")
def test_asking_for_cuda_without_it_is_an_error():
    with pytest.raises(RuntimeError, match="'cuda' was requested but no CUDA device is available"):
        pick_device("cuda")
