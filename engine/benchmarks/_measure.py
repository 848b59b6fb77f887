"""How every engine benchmark times and reports, so that a referee can check the tables.

* Timing: the median over repeats after a warm-up, with its spread (the interquartile range and min..max), on the
  CPU by wall clock (time.perf_counter), on a GPU by CUDA events with the L2 cache flushed before every repeat (a
  256 MB buffer is written, larger than any GPU's L2, so no repeat reads what the last one left in cache).
* Budgets: every row that has one says pass or FAIL next to it (`verdict`).
* The machine: CPU model, cores, torch threads, torch/CUDA/Triton versions and the device (`machine_line`); on a
  shared CPU the load average too, since other work on the box slows every figure.

The leading underscore keeps this module out of `python -m engine.bench`'s list of benchmarks (it has no rows).
"""
from __future__ import annotations

import os
import platform
import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass
from importlib import metadata

import torch

L2_FLUSH_BYTES = 256 * 2**20  # larger than the L2 of any current GPU (H100 50 MB, H200 60 MB, B200 126 MB)


@dataclass(frozen=True)
class Timing:
    """Repeated measurements of one thing, in milliseconds."""

    samples: tuple[float, ...]

    @property
    def median(self) -> float:
        return statistics.median(self.samples)

    @property
    def q1(self) -> float:
        return _quantile(self.samples, 0.25)

    @property
    def q3(self) -> float:
        return _quantile(self.samples, 0.75)

    @property
    def low(self) -> float:
        return min(self.samples)

    @property
    def high(self) -> float:
        return max(self.samples)

    def spread(self) -> str:
        """'IQR 1.02..1.10, min..max 0.98..1.31 (n=20)': what a reader needs to judge the median."""
        digits = 3 if self.high < 1 else 2
        return (f"IQR {self.q1:.{digits}f}..{self.q3:.{digits}f}, min..max {self.low:.{digits}f}.."
                f"{self.high:.{digits}f} (n={len(self.samples)})")


def _quantile(values: tuple[float, ...], q: float) -> float:
    """Linear-interpolated quantile (numpy's default), without numpy for one number."""
    ordered = sorted(values)
    position = q * (len(ordered) - 1)
    lower = int(position)
    upper = min(lower + 1, len(ordered) - 1)
    return ordered[lower] + (ordered[upper] - ordered[lower]) * (position - lower)


def time_cpu(fn: Callable[[], object], *, budget_s: float = 3.0, min_reps: int = 5, max_reps: int = 30,
             warmup: int = 1) -> Timing:
    """Wall-clock ms of fn after `warmup` calls: at least min_reps timed calls, more while within budget_s."""
    for _ in range(warmup):
        fn()
    samples: list[float] = []
    started = time.perf_counter()
    while len(samples) < min_reps or (len(samples) < max_reps and time.perf_counter() - started < budget_s):
        t0 = time.perf_counter()
        fn()
        samples.append((time.perf_counter() - t0) * 1e3)
    return Timing(tuple(samples))


_flush_buffers: dict[torch.device, torch.Tensor] = {}


def flush_l2(device: torch.device) -> None:
    """Write L2_FLUSH_BYTES on the GPU, evicting whatever the last repeat left in its L2 cache."""
    buffer = _flush_buffers.get(device)
    if buffer is None:
        buffer = _flush_buffers[device] = torch.empty(L2_FLUSH_BYTES // 4, dtype=torch.int32, device=device)
    buffer.zero_()


def time_cuda(fn: Callable[[], object], device: torch.device, *, reps: int = 30, warmup: int = 3) -> Timing:
    """GPU ms of fn by CUDA events around each call, L2 flushed before each (the flush is not timed)."""
    for _ in range(warmup):
        fn()
    starts = [torch.cuda.Event(enable_timing=True) for _ in range(reps)]
    ends = [torch.cuda.Event(enable_timing=True) for _ in range(reps)]
    for start, end in zip(starts, ends):
        flush_l2(device)
        start.record()
        fn()
        end.record()
    torch.cuda.synchronize(device)
    return Timing(tuple(start.elapsed_time(end) for start, end in zip(starts, ends)))


def time_on(device: torch.device, fn: Callable[[], object], *, budget_s: float = 3.0, max_reps: int = 30) -> Timing:
    """time_cuda on a GPU, time_cpu on the CPU."""
    if device.type == "cuda":
        return time_cuda(fn, device, reps=max_reps)
    return time_cpu(fn, budget_s=budget_s, max_reps=max_reps)


def verdict(value: float, budget: float, *, at_least: bool = False) -> str:
    """'pass' or 'FAIL' of a measured value against its budget (at most budget, or at least with at_least)."""
    ok = value >= budget if at_least else value <= budget
    return "pass" if ok else "FAIL"


def cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as cpuinfo:
            for line in cpuinfo:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown CPU"


def _version(package: str) -> str | None:
    try:
        return metadata.version(package)
    except metadata.PackageNotFoundError:
        return None


def machine_line(device: torch.device | str) -> str:
    """The machine a table was measured on, in one line: what a reader needs to compare it with their own."""
    device = torch.device(device)
    parts = [f"CPU {cpu_model()}, {os.cpu_count()} cores, {torch.get_num_threads()} torch threads",
             f"torch {torch.__version__}", f"python {platform.python_version()}"]
    if hasattr(os, "getloadavg"):
        parts.append(f"load average {os.getloadavg()[0]:.1f}")
    if device.type == "cuda":
        parts.append(f"device {torch.cuda.get_device_name(device)}, CUDA {torch.version.cuda}")
        triton = _version("triton")
        if triton:
            parts.append(f"triton {triton}")
    else:
        parts.append("device CPU")
    return "; ".join(parts)


def time_interleaved(fns: dict[str, Callable[[], object]], device: torch.device, *, budget_s: float = 6.0,
                     min_rounds: int = 3, max_rounds: int = 15) -> dict[str, Timing]:
    """Time several things in rounds, each once per round, so that a change in the machine's load hits them all
    alike (on a shared CPU a figure swings 2-3x; a ratio of interleaved medians does not). One warm-up each."""
    for fn in fns.values():
        fn()
    samples: dict[str, list[float]] = {name: [] for name in fns}
    started = time.perf_counter()
    rounds = 0
    while rounds < min_rounds or (rounds < max_rounds and time.perf_counter() - started < budget_s):
        for name, fn in fns.items():
            if device.type == "cuda":
                flush_l2(device)
                start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
                start.record()
                fn()
                end.record()
                end.synchronize()
                samples[name].append(start.elapsed_time(end))
            else:
                t0 = time.perf_counter()
                fn()
                samples[name].append((time.perf_counter() - t0) * 1e3)
        rounds += 1
    return {name: Timing(tuple(values)) for name, values in samples.items()}


def paired_ratio(numerator: Timing, denominator: Timing) -> float:
    """Median over rounds of numerator/denominator, from time_interleaved's paired samples."""
    return statistics.median(a / b for a, b in zip(numerator.samples, denominator.samples))
