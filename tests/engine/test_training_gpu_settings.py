"""How training runs on a GPU: float32 matmuls as TF32 unless turned off, never on a CPU, the process's own setting
restored after the block (engine.training.precision); the step as a CUDA graph only in one process's main thread,
unless turned off (engine.training.graphed_step)."""
from __future__ import annotations

import threading

import torch

from engine.training.graphed_step import GRAPHS_ENV_VAR, graphs_wanted
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


def test_graphs_are_for_one_cuda_process_and_can_be_turned_off(monkeypatch):
    monkeypatch.delenv(GRAPHS_ENV_VAR, raising=False)
    assert graphs_wanted(torch.device("cuda"), distributed=False)
    in_a_thread = []  # the app's training jobs: other threads of the server may be running the model on the GPU
    thread = threading.Thread(target=lambda: in_a_thread.append(graphs_wanted(torch.device("cuda"), False)))
    thread.start()
    thread.join()
    assert in_a_thread == [False]
    assert not graphs_wanted(torch.device("cuda"), distributed=True)
    assert not graphs_wanted(torch.device("cpu"), distributed=False)
    monkeypatch.setenv(GRAPHS_ENV_VAR, "0")
    assert not graphs_wanted(torch.device("cuda"), distributed=False)

