"""Scan benchmarks: the selective scan alone, our paths against their peers, with the bytes each must move.

`rows(device)` returns one dict per (method, shape): the median ms and its spread (IQR, min..max) after a warm-up,
for the forward alone (no autograd) and for forward + backward of y.sum() into every input. Shapes are
(batch, L, D, N) with one group (G = 1); (8, *, 128, 16) is the layer the model runs.

On a GPU the timing is CUDA events with the L2 cache flushed before every repeat (engine.benchmarks._measure), and
every row carries the byte floor of the scan: the bytes it cannot avoid moving (read u, delta, B, C, A once, write
y once; the backward also reads dy and writes du, d delta, dB, dC, dA), that floor at the bandwidth a plain device
copy reaches on this machine (measured in the same run), the achieved bandwidth (floor bytes / time) and the time
as a multiple of the floor time, and at the issue's shape (32, 8192, 512, 16) the budgets: forward within 3x the floor,
forward + backward within 5x. Rows: our one-pass kernel in float32 and with bf16 inputs and output (its floor counted
at 2 bytes for those tensors), the previous three-kernel Triton scan (the "before"), the chunked PyTorch path.
Peers: mambapy's pscan (the parallel scan of a pure-PyTorch Mamba) and, where
mamba_ssm imports (its CUDA/Triton kernels: Mamba-1's selective_scan_fn and Mamba-2's SSD chunk scan), those; a
row says so when they are not installed. `python -m engine.benchmarks.scan` prints the table; `--sweep` also times
the kernel's tile choices (chunk, channel block, warps) at the issue's shape.
"""
from __future__ import annotations

import argparse
from ast import literal_eval
from collections.abc import Callable
from importlib import metadata

# First, before torch loads: engine.runtime sets the OpenMP wait policy, which OpenMP reads only at start-up.
from engine.runtime import configure_cpu_threads, device_label, pick_device  # isort: skip

import torch
from torch import Tensor

from engine.benchmarks._measure import Timing, machine_line, time_on, verdict
from engine.model.scan import (
    expand_groups,
    fused_kernel_available,
    selective_scan,
    selective_scan_chunked,
    selective_scan_reference,
)

SHAPES = ((8, 1024, 128, 16), (8, 4096, 128, 16))  # (batch, L, D, N): the model's layer
GPU_SHAPES = SHAPES + ((32, 8192, 512, 16),)  # and the issue's large shape, where the bytes dominate
ISSUE_SHAPE = (32, 8192, 512, 16)
BUDGET_FWD, BUDGET_TRAIN = 3.0, 5.0  # x the byte floor at ISSUE_SHAPE, for our fused kernel (issue 18)
SEQUENTIAL_MAX_ELEMENTS = 8 * 4096 * 128  # the Python-loop reference is skipped past this (minutes per call)
OURS = "fused Triton (ours)"
OURS_BF16 = "fused Triton (ours), bf16 u/delta/B/C/y"


def median_ms(fn: Callable[[], object], device: torch.device, *, budget_s: float = 3.0, max_reps: int = 20) -> float:
    """Median ms of fn (CUDA events with L2 flushed on a GPU, wall clock on the CPU): the older callers' API."""
    return time_on(device, fn, budget_s=budget_s, max_reps=max_reps).median


def scan_inputs(shape: tuple[int, int, int, int], device: torch.device) -> list[Tensor]:
    """u, delta, A, B, C with the value ranges a trained layer sees (delta after softplus, A = -exp(A_log))."""
    batch, length, channels, state = shape
    gen = torch.Generator().manual_seed(0)
    u = torch.randn(batch, length, channels, generator=gen)
    delta = torch.nn.functional.softplus(torch.randn(batch, length, channels, generator=gen) - 4.0)
    A = -torch.arange(1, state + 1, dtype=torch.float32).repeat(channels, 1)  # the S4D-real initialisation
    B = torch.randn(batch, length, 1, state, generator=gen)
    C = torch.randn(batch, length, 1, state, generator=gen)
    return [t.to(device) for t in (u, delta, A, B, C)]


def floor_bytes(shape: tuple[int, int, int, int], *, element: int = 4, groups: int = 1) -> tuple[int, int]:
    """(forward, forward+backward) bytes a scan cannot avoid moving at this shape.

    forward: read u, delta (b L D each), B, C (b L G N each), A (D N); write y (b L D).
    backward: read the same inputs and dy again; write du, d delta, dB, dC, dA. A kernel that keeps the states on
    chip moves no more; everything above the floor is recomputation traffic, spills or launch overhead.
    """
    batch, length, channels, state = shape
    per_channel = batch * length * channels
    per_group = batch * length * groups * state
    inputs = 2 * per_channel + 2 * per_group + channels * state
    forward = inputs + per_channel
    backward = inputs + per_channel + inputs  # inputs and dy in, gradients of the inputs out
    return forward * element, (forward + backward) * element


def copy_bandwidth(device: torch.device) -> float:
    """Bytes per second of a plain device copy (read + write of 512 MB on a GPU, 64 MB on the CPU)."""
    n = (512 if device.type == "cuda" else 64) * 2**20 // 4
    source = torch.ones(n, device=device)
    target = torch.empty_like(source)
    timing = time_on(device, lambda: target.copy_(source), budget_s=1.0, max_reps=20)
    return 2 * n * 4 / (timing.median / 1e3)


def mambapy_scan(u: Tensor, delta: Tensor, A: Tensor, B: Tensor, C: Tensor) -> Tensor:
    """mambapy's selective scan (its Mamba.selective_scan, without the D skip): decay and input materialised as
    (batch, L, D, N), then its Blelloch parallel scan."""
    from mambapy.pscan import pscan

    decay = torch.exp(delta.unsqueeze(-1) * A)  # (b, L, D, N)
    drive = (delta * u).unsqueeze(-1) * expand_groups(B, u.shape[-1])  # (b, L, D, N)
    states = pscan(decay, drive)
    return (states @ C[:, :, 0].unsqueeze(-1)).squeeze(3)  # (b, L, D)


def mamba_ssm_methods() -> tuple[dict[str, Callable[..., Tensor]], str | None]:
    """mamba_ssm's kernels on our inputs, or ({}, why not). Mamba-1's selective_scan_fn is the same computation
    (B, C in (batch, G, N, L) layout, delta taken as is); Mamba-2's SSD chunk scan has one scalar decay per head
    (here one head per 64 channels) and is the kernel family the issue names as the speed to beat."""
    try:
        from mamba_ssm.ops.selective_scan_interface import selective_scan_fn
        version = metadata.version("mamba_ssm")
    except (ImportError, OSError, RuntimeError, metadata.PackageNotFoundError) as error:  # or built for another torch
        return {}, f"mamba_ssm not importable here ({type(error).__name__}: {str(error)[:80]})"
    found: dict[str, Callable[..., Tensor]] = {}

    def mamba1(u, delta, A, B, C):
        return selective_scan_fn(u.transpose(1, 2), delta.transpose(1, 2), A, B.permute(0, 2, 3, 1),
                                 C.permute(0, 2, 3, 1)).transpose(1, 2)

    found[f"mamba_ssm {version} selective_scan_fn (Mamba-1 CUDA)"] = mamba1
    try:
        from mamba_ssm.ops.triton.ssd_combined import mamba_chunk_scan_combined

        def mamba2(u, delta, A, B, C, head_dim=64):
            batch, length, channels = u.shape
            heads = channels // head_dim
            x = u.view(batch, length, heads, head_dim)
            dt = delta.view(batch, length, heads, head_dim)[..., 0].contiguous()
            return mamba_chunk_scan_combined(x, dt, A[::head_dim, 0].contiguous(), B, C, chunk_size=256)

        found[f"mamba_ssm {version} SSD chunk scan (Mamba-2 Triton)"] = mamba2
    except (ImportError, OSError, RuntimeError):
        return found, "mamba_ssm's Mamba-2 SSD kernels not importable here (Mamba-1's are timed)"
    return found, None


def methods(device: torch.device) -> tuple[dict[str, Callable[..., Tensor]], list[str]]:
    """The scans to time and the notes on peers that could not be."""
    notes: list[str] = []
    found: dict[str, Callable[..., Tensor]] = {
        "sequential reference": lambda *x: selective_scan_reference(*x).y,
        "chunked PyTorch (ours)": lambda *x: selective_scan_chunked(*x).y,
    }
    if device.type == "cuda":
        if fused_kernel_available():
            from engine.benchmarks._scan_triton_v1 import (
                selective_scan_triton as before,
            )
            from engine.model.scan_triton import selective_scan_triton

            found[OURS] = lambda *x: selective_scan(*x).y
            # Inputs cast to bf16 once per shape by rows(); A stays float32, the state float32.
            found[OURS_BF16] = lambda *x: selective_scan_triton(*x, out_dtype=torch.bfloat16)[0]
            found["previous fused Triton, 3 kernels (before)"] = lambda *x: before(*x)[0]
        else:
            notes.append("our Triton kernel is not available (triton not importable)")
        peers, why_not = mamba_ssm_methods()
        found |= peers
        if why_not:
            notes.append(why_not)
    else:
        notes.append("mamba_ssm kernels: CUDA only, skipped on the CPU")
    try:
        found[f"mambapy {metadata.version('mambapy')} pscan"] = mambapy_scan
    except metadata.PackageNotFoundError:
        notes.append("mambapy not installed (pip install mambapy==1.2.0)")
    return found, notes


def forward_and_backward(scan: Callable[..., Tensor], inputs: list[Tensor], device: torch.device,
                         budget_s: float, *, with_backward: bool = True) -> tuple[Timing, Timing | None]:
    with torch.no_grad():
        forward = time_on(device, lambda: scan(*inputs), budget_s=budget_s, max_reps=20)
    if not with_backward:
        return forward, None
    leaves = [t.detach().requires_grad_() for t in inputs]

    def train_pass() -> None:
        for leaf in leaves:
            leaf.grad = None
        scan(*leaves).sum().backward()

    return forward, time_on(device, train_pass, budget_s=budget_s, max_reps=20)


def rows(device: torch.device | str | None = None, *, shapes=None, budget_s: float = 3.0) -> list[dict]:
    device = pick_device(device)
    shapes = shapes or (GPU_SHAPES if device.type == "cuda" else SHAPES)
    bandwidth = copy_bandwidth(device)
    found, notes = methods(device)
    results = []
    for shape in shapes:
        inputs = scan_inputs(shape, device)
        for name, scan in found.items():
            batch, length, channels, _ = shape
            too_long = batch * length * channels > SEQUENTIAL_MAX_ELEMENTS or (device.type == "cuda" and length > 1024)
            if name == "sequential reference" and too_long:
                continue  # a Python loop over thousands of bars (one launch per op per bar on a GPU): no news
            bf16 = name == OURS_BF16
            fwd_bytes, train_bytes = floor_bytes(shape, element=2 if bf16 else 4)  # (A is 1/100000 of it)
            args = [t.to(torch.bfloat16) if bf16 and i != 2 else t for i, t in enumerate(inputs)]
            try:
                forward, train = forward_and_backward(scan, args, device, budget_s)
            except (RuntimeError, ValueError, TypeError) as error:  # a peer failing at this shape: say so, go on
                results.append({"scan": name, "(batch, L, D, N)": str(shape), "note": f"failed: {error!s:.100}"})
                continue
            row = {
                "scan": name,
                "(batch, L, D, N)": str(shape),
                "fwd ms": forward.median,
                "fwd spread": forward.spread(),
                "fwd+bwd ms": train.median,
                "fwd+bwd spread": train.spread(),
                "floor MB (fwd / fwd+bwd)": f"{fwd_bytes / 2**20:,.0f} / {train_bytes / 2**20:,.0f}",
                "achieved GB/s fwd": fwd_bytes / (forward.median / 1e3) / 1e9,
                "x floor fwd": forward.median / (fwd_bytes / bandwidth * 1e3),
                "x floor fwd+bwd": train.median / (train_bytes / bandwidth * 1e3),
            }
            if name in (OURS, OURS_BF16) and tuple(shape) == ISSUE_SHAPE:
                row["budget"] = (f"fwd <= {BUDGET_FWD:g}x: {verdict(row['x floor fwd'], BUDGET_FWD)}; "
                                 f"fwd+bwd <= {BUDGET_TRAIN:g}x: {verdict(row['x floor fwd+bwd'], BUDGET_TRAIN)}")
            results.append(row)
            del args
        if device.type == "cuda":
            del inputs
            torch.cuda.empty_cache()
    results.append({"scan": f"plain device copy: {bandwidth / 1e9:,.0f} GB/s (the floor's bandwidth)",
                    "note": "; ".join(notes)})
    return results


# (forward tiles, backward tiles, dB/dC by atomics): tiles are (chunk, channel block, warps). The backward splits its
# channel block as (block / 4 in registers) x (4 on the lanes). A forward chunk that is a multiple of the backward's
# stays (the forward stores the backward's chunk starts inside its own); otherwise the forward runs at the backward's.
SWEEP = (
    ((8, 16, 1), (8, 8, 1), True), ((8, 16, 1), (8, 8, 1), False), ((8, 16, 1), (4, 16, 1), True),
    ((8, 32, 1), (4, 8, 1), True), ((8, 8, 1), (8, 4, 1), True), ((16, 8, 1), (4, 4, 1), True),
)


def sweep(device: torch.device | str | None = None, shape=ISSUE_SHAPE, choices=SWEEP) -> list[dict]:
    """Our kernel's forward and forward+backward at `shape` for each tile choice; one that fails to compile
    (registers, shared memory) says so. The forward+backward's forward runs with the backward's chunk."""
    import engine.model.scan_triton as kernel

    device = pick_device(device)
    inputs = scan_inputs(shape, device)
    fwd_bytes, train_bytes = floor_bytes(shape)
    bandwidth = copy_bandwidth(device)
    saved = dict(kernel.TILES)
    results = []
    try:
        for fwd, bwd, atomic in choices:
            kernel.TILES.update(fwd=fwd, bwd=bwd, bwd_atomic=atomic)
            row = {"fwd (chunk, block, warps)": str(fwd), "bwd (chunk, block, warps)": str(bwd),
                   "dB/dC": "atomics" if atomic else "partials"}
            try:
                forward, train = forward_and_backward(lambda *x: selective_scan(*x).y, inputs, device, 1.0)
            except Exception as error:  # noqa: BLE001  (a compile failure of one choice: say so, go on)
                row["note"] = f"failed: {error!s:.80}"
                results.append(row)
                continue
            row |= {"fwd ms": forward.median, "fwd+bwd ms": train.median,
                    "x floor fwd": forward.median / (fwd_bytes / bandwidth * 1e3),
                    "x floor fwd+bwd": train.median / (train_bytes / bandwidth * 1e3)}
            results.append(row)
    finally:
        kernel.TILES.update(saved)
    return results


def adopt_best(swept: list[dict]) -> None:
    """Set the kernel's tiles to the sweep's fastest forward and fastest forward+backward, and say which."""
    import engine.model.scan_triton as kernel

    timed = [row for row in swept if "fwd ms" in row]
    fastest_fwd = min(timed, key=lambda row: row["fwd ms"])
    fastest_train = min(timed, key=lambda row: row["fwd+bwd ms"])
    kernel.TILES.update(fwd=literal_eval(fastest_fwd["fwd (chunk, block, warps)"]),
                        bwd=literal_eval(fastest_train["bwd (chunk, block, warps)"]),
                        bwd_atomic=fastest_train["dB/dC"] == "atomics")
    print(f"tiles adopted for the table: {kernel.TILES}\n", flush=True)


def main(argv: list[str] | None = None) -> None:
    from engine.bench import format_table

    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--device", default=None, help="cpu or cuda (default: cuda when present)")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: all cores, <= 4)")
    parser.add_argument("--sweep", action="store_true", help="also time the Triton kernel's tile choices (CUDA)")
    parser.add_argument("--only-sweep", action="store_true", help="the sweep alone")
    parser.add_argument("--adopt-best", action="store_true", help="time the table with the sweep's fastest tiles")
    args = parser.parse_args(argv)
    configure_cpu_threads(args.threads)
    device = pick_device(args.device)
    print(f"# selective scan on {device_label(device)}\n\n{machine_line(device)}\n", flush=True)
    if args.sweep or args.only_sweep:
        swept = sweep(device)
        print(f"## tile sweep at {ISSUE_SHAPE}\n\n{format_table(swept)}\n", flush=True)
        if args.adopt_best:
            adopt_best(swept)
    if not args.only_sweep:
        print(format_table(rows(device)))


if __name__ == "__main__":
    main()
