"""Training's float32 matmul precision (engine.training.precision): TF32 on a GPU unless turned off, never on a CPU,
and the process's own setting restored after the block."""
from __future__ import annotations

import torch

from engine.training.precision import (
    TF32_ENV_VAR,
    precision_label,
    tf32_matmuls,
    training_precision,
    training_tf32,
)


def test_tf32_is_for_gpu_training_only_and_can_be_turned_off(monkeypatch):
    monkeypatch.delenv(TF32_ENV_VAR, raising=False)
    assert training_tf32(torch.device("cuda")) and precision_label(torch.device("cuda")).startswith("TF32")
    assert not training_tf32(torch.device("cpu")) and precision_label(torch.device("cpu")) == "float32"
    monkeypatch.setenv(TF32_ENV_VAR, "0")
    assert not training_tf32(torch.device("cuda")) and precision_label(torch.device("cuda")) == "float32"


def test_the_block_sets_tf32_and_restores_what_the_process_had():
    before = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
    try:
        torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = False
        with tf32_matmuls(True):
            assert torch.backends.cuda.matmul.allow_tf32 and torch.backends.cudnn.allow_tf32
        assert not torch.backends.cuda.matmul.allow_tf32 and not torch.backends.cudnn.allow_tf32
        with training_precision(torch.device("cpu")):  # a CPU run leaves the setting alone
            assert not torch.backends.cuda.matmul.allow_tf32
    finally:
        torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = before
