"""`python -m engine.benchmarks.training_step`: the training loop's own step on a GPU, eager against one CUDA graph.

engine.benchmarks.model times the model's forward and backward alone; this times what a training run does per
step (engine.training.loop: pick the batch's windows, forward, the real multitask loss, backward, finiteness
checks, clipping, AdamW), through train_walk_forward itself, with engine.training.graphed_step on and off
(REGIME_CUDA_GRAPHS) and the epochs' matmuls in plain float32 or TF32 (REGIME_TF32, engine.training.precision;
training's default on a GPU is both on). The demo's hourly panel, the default model, windows of 512 bars, batch 32,
one fold of three epochs; a step's time is the interval between two progress events of the same epoch, the median
over epochs 2-3 (epoch 1 holds the capture and the warm-ups). Runs alternate between the four settings, twice each.
CUDA only: on a CPU the loop never captures a graph, so there is nothing to compare.
"""
from __future__ import annotations

import dataclasses
import itertools
import os
import statistics
import tempfile
import time

import torch

from engine.benchmarks._measure import Timing
from engine.training.config import TrainConfig, default_model_config
from engine.training.graphed_step import GRAPHS_ENV_VAR
from engine.training.precision import TF32_ENV_VAR

WINDOW, BATCH, EPOCHS, ROUNDS = 512, 32, 3, 2


def _step_intervals(device: torch.device, graphs: bool, tf32: bool) -> tuple[list[float], list[float], str]:
    """One training run -> (step intervals in ms over epochs 2.., the epochs' training losses, its messages)."""
    from engine.training.loop import train_walk_forward
    from storage.panel import demo_panel, panel_fingerprint

    panel = demo_panel("1h").panel
    config = TrainConfig(model=dataclasses.replace(default_model_config()), n_folds=1, window=WINDOW, stride=64,
                         batch_size=BATCH, max_epochs=EPOCHS, patience=EPOCHS, device=str(device))
    stamps: list[tuple[str, int, float]] = []
    epochs = []

    def progress(event) -> None:
        if event.phase in ("step", "epoch"):
            torch.cuda.synchronize(device)
            stamps.append((event.phase, event.epoch, time.perf_counter()))
        if event.phase == "epoch":
            epochs.append(event)

    saved = {name: os.environ.get(name) for name in (GRAPHS_ENV_VAR, TF32_ENV_VAR)}
    os.environ[GRAPHS_ENV_VAR], os.environ[TF32_ENV_VAR] = ("1" if graphs else "0"), ("1" if tf32 else "0")
    try:
        with tempfile.TemporaryDirectory() as run_dir:
            train_walk_forward(panel, config, interval="1h", fingerprint=panel_fingerprint(panel, "1h"),
                               run_dir=run_dir, progress=progress)
    finally:
        for name, value in saved.items():
            if value is None:
                os.environ.pop(name)
            else:
                os.environ[name] = value
    intervals = []
    for epoch in range(1, EPOCHS):
        times = [t for phase, e, t in stamps if phase == "step" and e == epoch]
        intervals += [(b - a) * 1e3 for a, b in itertools.pairwise(times)]
    return intervals, [e.train_loss for e in epochs], "; ".join(e.message for e in epochs if e.message)


SETTINGS = (("eager, float32", False, False), ("one CUDA graph, float32", True, False),
            ("eager, TF32", False, True), ("one CUDA graph, TF32 (training's default on a GPU)", True, True))


def rows(device=None) -> list[dict]:
    device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    if device.type != "cuda":
        return [{"case": "training loop step, eager vs one CUDA graph", "note": "CUDA only: skipped on a CPU"}]
    samples: dict[str, list[float]] = {name: [] for name, _, _ in SETTINGS}
    losses: dict[str, list[float]] = {}
    notes: dict[str, str] = {}
    for _ in range(ROUNDS):
        for name, graphs, tf32 in SETTINGS:
            intervals, losses[name], notes[name] = _step_intervals(device, graphs, tf32)
            samples[name] += intervals
    shape = f"demo 1h, 3 assets x {WINDOW} bars x batch {BATCH}, default model"
    out = []
    for name, _, _ in SETTINGS:
        timing = Timing(tuple(samples[name]))
        out.append({"case": f"training loop step, {shape}, {name}", "step_ms": timing.median,
                    "spread": timing.spread(), "train losses (epochs 1-3)": ", ".join(f"{v:.4f}" for v in losses[name]),
                    "note": notes[name]})
    eager = statistics.median(samples[SETTINGS[0][0]])
    for name, _, _ in SETTINGS[1:]:
        out.append({"case": f"ratio: eager float32 / {name}", "step_ms": eager / statistics.median(samples[name]),
                    "note": "x faster"})
    return out


if __name__ == "__main__":
    from engine.bench import run_single

    run_single("training loop step", rows, __doc__)
