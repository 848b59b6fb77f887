"""Diagnostics speed: everything the model views need for 3 assets x 20,000 hourly bars (the demo market, SYNTHETIC).

"full diagnostics" = inference over every bar in state-carrying chunks (forecasts, embeddings, look-back, attention)
+ PCA and regime labels fitted on the first half + the lead-lag map + look-back per regime. Budget (from the
issue): at most 10 s on this 2-core CPU, which other engineers share: a figure taken while they run is an upper
bound, so the row says how many threads it used. A random-initialised default model costs exactly what a trained
one does. Run: python -m engine.benchmarks.diagnostics [--device cpu|cuda]
"""
from __future__ import annotations

import os
import tempfile
import time
from dataclasses import replace

import torch

from engine.diagnostics import (
    compute_diagnostics,
    hidden_attention,
    load_or_compute_diagnostics,
)
from engine.diagnostics.bundle import DiagnosticsConfig
from engine.features import build_feature_set
from engine.model.config import ModelConfig
from engine.model.hybrid import HybridModel
from engine.model.inference import run_inference
from engine.runtime import device_label
from storage.panel import Panel, demo_panel, panel_fingerprint

N_BARS = 20_000
BUDGET_S = 10.0


def _seconds(fn) -> tuple[float, object]:
    started = time.perf_counter()
    value = fn()
    return time.perf_counter() - started, value


def first_rows(panel: Panel, n: int) -> Panel:
    return Panel(panel.ts[:n], panel.symbols, {k: v[:n] for k, v in panel.fields.items()}, panel.observed[:n])


def rows(device: torch.device | str) -> list[dict]:
    device = torch.device(device)
    panel = first_rows(demo_panel("1h").panel, N_BARS)
    features_s, features = _seconds(lambda: build_feature_set(panel, range(0, N_BARS // 2)))
    torch.manual_seed(0)
    model = HybridModel(ModelConfig(n_assets=3, n_features=features.values.shape[2], point_head=False,
                                    lead_path=False)).to(device)
    config = DiagnosticsConfig()
    fit_rows = range(0, N_BARS // 2)
    threads = device_label(device)
    if device.type == "cpu":
        threads = f"{torch.get_num_threads()} torch threads, shared CPU (load average {os.getloadavg()[0]:.1f} at start)"
    run_inference(model, replace(features, values=features.values[:, :256], mask=features.mask[:, :256],
                                 ts=features.ts[:256]), config.inference)  # warm-up
    inference_s, _ = _seconds(lambda: run_inference(model, features, config.inference))
    full_s, _ = _seconds(lambda: compute_diagnostics(model, features, fit_rows, config))
    with tempfile.TemporaryDirectory() as cache_dir:
        args = dict(run_id="bench", fingerprint=panel_fingerprint(panel, "1h"), config=config, cache_dir=cache_dir)
        load_or_compute_diagnostics(model, features, fit_rows, **args)
        cached_s, (_, status) = _seconds(lambda: load_or_compute_diagnostics(model, features, fit_rows, **args))
    hidden_s, _ = _seconds(lambda: hidden_attention(model, features, "SPY", N_BARS - 1))
    case = f"3 assets x {N_BARS:,} hourly bars"
    return [
        dict(case=f"features ({case}, demo 1h)", seconds=features_s, budget_s="-", note="pandas, once per panel"),
        dict(case=f"inference only ({case})", seconds=inference_s, budget_s="-", note=threads),
        dict(case=f"full diagnostics ({case})", seconds=full_s, budget_s=BUDGET_S,
             within_budget="yes" if full_s <= BUDGET_S else "NO", note=threads),
        dict(case=f"diagnostics from the disk cache ({case})", seconds=cached_s, budget_s="-", note=status),
        dict(case=f"hidden attention of one bar over {N_BARS:,} past bars", seconds=hidden_s, budget_s="-",
             note="on demand, exact over the whole history"),
    ]


def main(argv: list[str] | None = None) -> None:
    from engine.bench import run_single

    run_single("diagnostics benchmark", rows, __doc__, argv)


if __name__ == "__main__":
    main()
