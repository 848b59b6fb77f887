"""Scan benchmarks: the selective scan alone, sequential reference vs our fast path vs mambapy's parallel scan.

`rows(device)` returns one dict per (method, shape): median ms after a warm-up, for the forward alone (no autograd)
and for forward + backward of y.sum() into every input. Shapes are (batch, L, D, N) with one group (G = 1), the
layer the model runs (d_inner 128, state 16). `python -m engine.benchmarks.scan` prints them as a markdown table.
"""
from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable
from importlib import metadata

# First, before torch loads: engine.runtime sets the OpenMP wait policy, which OpenMP reads only at start-up.
from engine.runtime import configure_cpu_threads, device_label, pick_device  # isort: skip

import torch
from torch import Tensor

from engine.model.scan import (
    expand_groups,
    fused_kernel_available,
    selective_scan,
    selective_scan_chunked,
    selective_scan_reference,
)

SHAPES = ((8, 1024, 128, 16), (8, 4096, 128, 16))  # (batch, L, D, N)


def median_ms(fn: Callable[[], object], device: torch.device, *, budget_s: float = 3.0, max_reps: int = 20) -> float:
    """Median wall time of fn after one warm-up call: at least 3 timed calls, more while within budget_s."""
    def synchronise() -> None:
        if device.type == "cuda":
            torch.cuda.synchronize(device)

    fn()
    synchronise()
    times: list[float] = []
    started = time.perf_counter()
    while len(times) < 3 or (len(times) < max_reps and time.perf_counter() - started < budget_s):
        t0 = time.perf_counter()
        fn()
        synchronise()
        times.append(time.perf_counter() - t0)
    return statistics.median(times) * 1e3


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


def mambapy_scan(u: Tensor, delta: Tensor, A: Tensor, B: Tensor, C: Tensor) -> Tensor:
    """mambapy's selective scan (its Mamba.selective_scan, without the D skip): decay and input materialised as
    (batch, L, D, N), then its Blelloch parallel scan."""
    from mambapy.pscan import pscan

    decay = torch.exp(delta.unsqueeze(-1) * A)  # (b, L, D, N)
    drive = (delta * u).unsqueeze(-1) * expand_groups(B, u.shape[-1])  # (b, L, D, N)
    states = pscan(decay, drive)
    return (states @ C[:, :, 0].unsqueeze(-1)).squeeze(3)  # (b, L, D)


def methods(device: torch.device) -> dict[str, Callable[..., Tensor]]:
    found: dict[str, Callable[..., Tensor]] = {
        "sequential reference": lambda *x: selective_scan_reference(*x).y,
        "chunked PyTorch (ours)": lambda *x: selective_scan_chunked(*x).y,
    }
    if device.type == "cuda" and fused_kernel_available():
        found["fused Triton (ours)"] = lambda *x: selective_scan(*x).y
    try:
        found[f"mambapy {metadata.version('mambapy')} pscan"] = mambapy_scan
    except metadata.PackageNotFoundError:
        pass  # not installed here: its rows are left out
    return found


def forward_and_backward_ms(scan: Callable[..., Tensor], inputs: list[Tensor], device: torch.device,
                            budget_s: float) -> tuple[float, float]:
    with torch.no_grad():
        forward = median_ms(lambda: scan(*inputs), device, budget_s=budget_s)
    leaves = [t.detach().requires_grad_() for t in inputs]

    def train_pass() -> None:
        for leaf in leaves:
            leaf.grad = None
        scan(*leaves).sum().backward()

    return forward, median_ms(train_pass, device, budget_s=budget_s)


def rows(device: torch.device | str | None = None, *, shapes=SHAPES, budget_s: float = 3.0) -> list[dict]:
    device = pick_device(device)
    results = []
    for shape in shapes:
        inputs = scan_inputs(shape, device)
        for name, scan in methods(device).items():
            forward, train = forward_and_backward_ms(scan, inputs, device, budget_s)
            results.append({
                "scan": name,
                "(batch, L, D, N)": str(shape),
                "fwd ms": forward,
                "fwd+bwd ms": train,
            })
    return results


def main(argv: list[str] | None = None) -> None:
    from engine.bench import format_table

    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--device", default=None, help="cpu or cuda (default: cuda when present)")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: all cores, <= 4)")
    args = parser.parse_args(argv)
    configure_cpu_threads(args.threads)
    device = pick_device(args.device)
    print(f"# selective scan on {device_label(device)}\n")
    print(format_table(rows(device)))


if __name__ == "__main__":
    main()
