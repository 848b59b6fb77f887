"""Where the model runs and how it shares the CPU.

The app runs the Streamlit server and PyTorch on the same two cores. OpenMP's default is to spin-wait between
parallel regions; when the server (or another process) is busy, those spinning threads steal each other's core and a
scan can get tens of times slower. So: a deliberate thread count, passive waiting, and flushed denormals (a decaying
recurrent state walks into the denormal range, where every multiply is slow).
"""
from __future__ import annotations

import os

# Read by the OpenMP runtime when it starts, i.e. at the first torch import: set them before that where we can.
# setdefault: an operator who exported their own policy keeps it.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
os.environ.setdefault("KMP_BLOCKTIME", "0")

import torch  # noqa: E402  (after the environment it reads)

_interop_threads_set = False


def configure_cpu_threads(n: int | None = None) -> int:
    """Pin torch's intra-op thread count (default: all cores, at most 4) and return it.

    Call once at start-up, before any parallel torch work. Safe to call again: the inter-op pool can only be sized
    before it is first used, so later calls leave it alone.
    """
    global _interop_threads_set
    if n is None:
        n = min(os.cpu_count() or 1, 4)
    if n < 1:
        raise ValueError(f"configure_cpu_threads: n must be >= 1, got {n}")
    torch.set_num_threads(n)
    if not _interop_threads_set:
        try:
            # One inter-op thread: the model runs one graph at a time; extra pools only compete for the cores.
            torch.set_num_interop_threads(1)
        except RuntimeError:
            pass  # the pool already started (torch raises then); its size is fixed for this process
        _interop_threads_set = True
    torch.set_flush_denormal(True)
    return n


def pick_device(prefer: str | torch.device | None = None) -> torch.device:
    """"cuda" when available (or asked for and present), else "cpu". Asking for cuda without one is an error."""
    if prefer is None:
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(prefer)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise RuntimeError(f"pick_device: {prefer!r} was requested but no CUDA device is available")
    if device.type not in ("cuda", "cpu"):
        raise ValueError(f"pick_device: unsupported device {prefer!r}; use 'cuda' or 'cpu'")
    return device


def device_label(device: str | torch.device | None = None) -> str:
    """Human-readable name of the device, e.g. 'NVIDIA H100 80GB HBM3' or 'CPU (2 threads)'."""
    device = pick_device(device)
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return f"CPU ({torch.get_num_threads()} threads)"
