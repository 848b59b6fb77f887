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

from engine.benchmarks._measure import Timing, time_cpu, verdict
from engine.diagnostics import (
    compute_diagnostics,
    hidden_attention,
    load_or_compute_diagnostics,
)
from engine.diagnostics.bundle import DiagnosticsConfig
from engine.diagnostics.regimes import fit_regimes
from engine.features import build_feature_set
from engine.model.config import ModelConfig
from engine.model.hybrid import HybridModel
from engine.model.inference import (
    extend_inference,
    run_inference,
    run_inference_with_state,
)
from engine.runtime import device_label
from storage.panel import Panel, demo_panel, panel_fingerprint

N_BARS = 20_000
BUDGET_S = 10.0
LIVE_BUDGET_S = 0.3  # issue 18: one new hourly bar on the screen, 3 assets x 20,000 bars of history


def _seconds(fn) -> tuple[float, object]:
    started = time.perf_counter()
    value = fn()
    return time.perf_counter() - started, value


def first_rows(panel: Panel, n: int) -> Panel:
    return Panel(panel.ts[:n], panel.symbols, {k: v[:n] for k, v in panel.fields.items()}, panel.observed[:n])


def rows(device: torch.device | str) -> list[dict]:
    device = torch.device(device)
    live_panel = first_rows(demo_panel("1h").panel, N_BARS + 1)
    panel = first_rows(live_panel, N_BARS)
    features_s, features = _seconds(lambda: build_feature_set(panel, range(N_BARS // 2)))
    torch.manual_seed(0)
    model = HybridModel(ModelConfig(n_assets=3, n_features=features.values.shape[2], point_head=False,
                                    lead_path=False)).to(device)
    config = DiagnosticsConfig()
    fit_rows = range(N_BARS // 2)
    threads = device_label(device)
    if device.type == "cpu":
        threads = f"{torch.get_num_threads()} torch threads, shared CPU (load average {os.getloadavg()[0]:.1f} at start)"
    run_inference(model, replace(features, values=features.values[:, :256], mask=features.mask[:, :256],
                                 ts=features.ts[:256]), config.inference)  # warm-up
    inference_s, _ = _seconds(lambda: run_inference(model, features, config.inference))
    full_s, _ = _seconds(lambda: compute_diagnostics(model, features, fit_rows, config))
    with tempfile.TemporaryDirectory() as cache_dir:
        args = {"run_id": "bench", "fingerprint": panel_fingerprint(panel, "1h"), "config": config, "cache_dir": cache_dir}
        load_or_compute_diagnostics(model, features, fit_rows, **args)
        cached_s, (_, status) = _seconds(lambda: load_or_compute_diagnostics(model, features, fit_rows, **args))
    hidden_s, _ = _seconds(lambda: hidden_attention(model, features, "SPY", N_BARS - 1))
    case = f"3 assets x {N_BARS:,} hourly bars"
    return [
        {"case": f"features ({case}, demo 1h)", "seconds": features_s, "budget_s": "-", "note": "pandas, once per panel"},
        {"case": f"inference only ({case})", "seconds": inference_s, "budget_s": "-", "note": threads},
        {"case": f"full diagnostics ({case})", "seconds": full_s, "budget_s": BUDGET_S,
         "result": verdict(full_s, BUDGET_S), "note": threads},
        {"case": f"diagnostics from the disk cache ({case})", "seconds": cached_s, "budget_s": "-", "note": status},
        {"case": f"hidden attention of one bar over {N_BARS:,} past bars", "seconds": hidden_s, "budget_s": "-",
         "note": "on demand, exact over the whole history"},
        *live_rows(model, live_panel, config, full_s),
    ]


def live_rows(model: HybridModel, panel: Panel, config: DiagnosticsConfig, full_s: float) -> list[dict]:
    """One new hourly bar after 20,000: the model advanced from its saved end state over the new bar only
    (extend_inference, exact to run_inference over everything), against the full recompute, and the parts of a
    refresh that are still O(history): the features (pandas over the panel) and the regime fit (PCA + clusters
    refitted on the training rows, since the fitted transforms are not kept)."""
    fit_rows = range(N_BARS // 2)
    features = build_feature_set(panel, fit_rows)  # N_BARS + 1 rows: the history and the new bar
    history = replace(features, values=features.values[:, :N_BARS], mask=features.mask[:, :N_BARS],
                      ts=features.ts[:N_BARS])
    previous, state = run_inference_with_state(model, history, config.inference)
    advance = time_cpu(lambda: extend_inference(model, previous, state, features, config.inference),
                       budget_s=2.0, min_reps=5, max_reps=20)
    extended, _ = extend_inference(model, previous, state, features, config.inference)
    features_t = time_cpu(lambda: build_feature_set(panel, fit_rows), budget_s=2.0, min_reps=3, max_reps=10)
    regimes_t = time_cpu(lambda: fit_regimes(extended.embeddings, extended.mask, fit_rows, config.regimes),
                         budget_s=2.0, min_reps=3, max_reps=5)
    shown = advance.median / 1e3
    case = f"1 new hourly bar on 3 x {N_BARS:,}"
    return [
        {"case": f"{case}: model advanced from the saved end state (extend_inference)", "seconds": shown,
         "spread": _seconds_spread(advance), "budget_s": LIVE_BUDGET_S, "result": verdict(shown, LIVE_BUDGET_S),
         "note": f"O(new bars); {full_s / shown:,.0f}x less than the full recompute above"},
        {"case": f"{case}: features rebuilt over the panel (today's refresh)", "seconds": features_t.median / 1e3,
         "spread": _seconds_spread(features_t), "budget_s": "-", "note": "O(history): engine.features, not incremental"},
        {"case": f"{case}: regimes refitted on the training rows (today's refresh)", "seconds": regimes_t.median / 1e3,
         "spread": _seconds_spread(regimes_t), "budget_s": "-",
         "note": "O(training rows): the fitted PCA/clusters are not kept, so new bars cannot just be labelled"},
    ]


def _seconds_spread(timing: Timing) -> str:
    return f"IQR {timing.q1 / 1e3:.3f}..{timing.q3 / 1e3:.3f} s (n={len(timing.samples)})"


def main(argv: list[str] | None = None) -> None:
    from engine.bench import run_single

    run_single("diagnostics benchmark", rows, __doc__, argv)


if __name__ == "__main__":
    main()
