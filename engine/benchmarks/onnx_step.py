"""Step latency of the exported ONNX graph (engine.export) against PyTorch's step mode: one new bar for 3 assets,
batch 1, one CPU thread each, per bar with the state carried, medians of interleaved rounds (the two sides share the
machine's load alike).

Two models: the model benchmark's step configuration (engine.benchmarks.model: ModelConfig defaults, 3 assets, no
lead path) and the shipped demo checkpoint (1 SSM layer + attention + lead path). Budget: 1 ms per bar (the model
benchmark's STEP_BUDGET_MS). Needs onnx, onnxscript and onnxruntime (requirements-optional.txt); without them the
table says so. ONNX Runtime runs on the CPU whatever --device says.

    python -m engine.benchmarks.onnx_step
"""
from __future__ import annotations

import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from engine.model.config import ModelConfig
from engine.model.hybrid import HybridModel

ASSETS = 3
BARS = 300
ROUNDS = 5
STEP_BUDGET_MS = 1.0


def _models():
    from engine.diagnostics.for_run import load_model
    from engine.model.checkpoint import DEMO_CHECKPOINT_DIR

    torch.manual_seed(0)
    yield "model benchmark's step config", HybridModel(ModelConfig(n_assets=ASSETS, point_head=False,
                                                                   lead_path=False)).eval()
    yield "demo checkpoint", load_model(DEMO_CHECKPOINT_DIR)[0]


def _torch_per_bar(model, x: np.ndarray, mask: np.ndarray) -> float:
    state = model.init_state(1)
    t0 = time.perf_counter()
    for t in range(len(x)):
        state = model.step(torch.from_numpy(x[t]), torch.from_numpy(mask[t]), state)[1]
    return 1e3 * (time.perf_counter() - t0) / len(x)


def _onnx_per_bar(session, feed: dict, state_names: list[str], x: np.ndarray, mask: np.ndarray) -> float:
    t0 = time.perf_counter()
    for t in range(len(x)):
        out = session.run(None, {"x": x[t], "mask": mask[t], **feed})
        feed = dict(zip(state_names, out[-len(state_names):]))
    return 1e3 * (time.perf_counter() - t0) / len(x)


def rows(device: torch.device | None = None) -> list[dict]:
    try:
        import onnxruntime  # noqa: F401
        import onnxscript  # noqa: F401
    except ImportError:
        return [{"case": "ONNX step", "note": "onnxruntime/onnxscript not installed: "
                                              "pip install -r requirements-optional.txt"}]
    from engine.export import export_step, initial_state, onnx_session

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    result = []
    try:
        for name, model in _models():
            with tempfile.TemporaryDirectory() as folder:
                path = Path(folder) / "step.onnx"
                step = export_step(model, path)
                session = onnx_session(path, threads=1)
            rng = np.random.default_rng(0)
            x = rng.standard_normal((BARS, 1, ASSETS, model.config.n_features)).astype(np.float32)
            mask = np.ones((BARS, 1, ASSETS), dtype=bool)
            torch_ms, onnx_ms = [], []
            with torch.inference_mode():
                for _ in range(ROUNDS):  # interleaved: each side once per round
                    torch_ms.append(_torch_per_bar(step.model, x, mask))
                    onnx_ms.append(_onnx_per_bar(session, initial_state(step), step.layout.names, x, mask))
            for runtime, times in (("PyTorch step mode", torch_ms), ("ONNX Runtime", onnx_ms)):
                median = statistics.median(times)
                result.append({"case": f"{runtime}, {name}", "assets": ASSETS, "threads": 1,
                               "ms per bar (median)": median, "min..max": f"{min(times):.3f}..{max(times):.3f}",
                               "params": step.model.num_parameters(), "budget ms": STEP_BUDGET_MS,
                               "verdict": "pass" if median <= STEP_BUDGET_MS else "FAIL"})
            result.append({"case": f"ratio ONNX Runtime / PyTorch, {name}", "assets": ASSETS, "threads": 1,
                           "ms per bar (median)": statistics.median(o / t for o, t in zip(onnx_ms, torch_ms))})
    finally:
        torch.set_num_threads(threads)
    return result


if __name__ == "__main__":
    from engine.bench import format_table

    print(f"# ONNX step latency, CPU, {BARS} bars x {ROUNDS} interleaved rounds\n")
    print(format_table(rows()))
