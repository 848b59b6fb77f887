"""Float32 matmuls while training on a GPU: TF32 tensor cores by default (issue 18: "TF32/bf16 for them").

TF32 keeps float32's range and rounds a matmul's inputs to 10 mantissa bits; the accumulation stays float32. For a
training step that is noise far below the gradient's own (PyTorch recommends it on Ampere and later), and it is where
the GPU step's targets are met (engine.benchmarks.model: the 50-asset step 24 ms against 34 ms in plain float32 on
an H200). Only the training epochs use it (the steps and the early-stopping validation); the forecasts a run keeps
and every inference in the app run in plain float32, as on a CPU. REGIME_TF32=0 trains in plain float32; the
checkpoint's manifest says which (training.float32_matmuls).
"""
from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator

import torch

TF32_ENV_VAR = "REGIME_TF32"


def training_tf32(device: torch.device) -> bool:
    """Whether training on `device` runs its float32 matmuls as TF32: on CUDA, unless REGIME_TF32=0."""
    return device.type == "cuda" and os.environ.get(TF32_ENV_VAR, "1") != "0"


@contextlib.contextmanager
def tf32_matmuls(enabled: bool) -> Iterator[None]:
    """TF32 for float32 matmuls (and convolutions) inside the block, or plain float32; restored after."""
    saved = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = enabled
    try:
        yield
    finally:
        torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = saved


def training_precision(device: torch.device) -> contextlib.AbstractContextManager:
    """The block a fold's epochs run in: TF32 matmuls when training_tf32(device), else as the process has them."""
    return tf32_matmuls(True) if training_tf32(device) else contextlib.nullcontext()


def precision_label(device: torch.device) -> str:
    """For the manifest: how the training epochs' float32 matmuls ran."""
    return "TF32 (GPU training epochs)" if training_tf32(device) else "float32"
