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
from pathlib import Path

import torch

from engine.benchmarks._measure import Timing, time_cpu, verdict
from engine.diagnostics import (
    compute_diagnostics,
    hidden_attention,
    load_or_compute_diagnostics,
)
from engine.diagnostics.bundle import DiagnosticsConfig
from engine.diagnostics.cache import CacheKey, save_bundle
from engine.diagnostics.live import advance, start_live
from engine.features import build_feature_set
from engine.model.config import ModelConfig
from engine.model.hybrid import HybridModel
from engine.model.inference import (
    run_inference,
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
    """One new hourly bar after 20,000, the app's way (engine.diagnostics.cache keeps the last bundle live): the
    model advanced from its saved end state over the new bar and the bar labelled with the kept regime fit
    (engine.diagnostics.live.advance), the features rebuilt (pandas over the panel, not incremental): their sum is
    the time to show the bar, against the full recompute above. The disk-cache write is timed too; the app does it
    in a background thread after showing the bar."""
    fit_rows = range(N_BARS // 2)
    features = build_feature_set(panel, fit_rows)  # N_BARS + 1 rows: the history and the new bar
    history = replace(features, values=features.values[:, :N_BARS], mask=features.mask[:, :N_BARS],
                      ts=features.ts[:N_BARS])
    live = start_live(model, history, fit_rows, config)
    advanced, how = advance(model, live, features)
    if not how.startswith("advanced"):
        raise RuntimeError(f"the live bundle did not advance: {how}")
    advance_t = time_cpu(lambda: advance(model, live, features), budget_s=2.0, min_reps=5, max_reps=20)
    features_t = time_cpu(lambda: build_feature_set(panel, fit_rows), budget_s=2.0, min_reps=3, max_reps=10)
    with tempfile.TemporaryDirectory() as cache_dir:
        key = CacheKey("bench", "live", (fit_rows.start, fit_rows.stop), config.identity())
        save_t = time_cpu(lambda: save_bundle(Path(cache_dir) / "entry", advanced.bundle, key), budget_s=2.0,
                          min_reps=3, max_reps=10)
    total = (advance_t.median + features_t.median) / 1e3
    case = f"1 new hourly bar on 3 x {N_BARS:,}"
    return [
        {"case": f"{case}: model + regimes advanced over the new bar (live.advance)",
         "seconds": advance_t.median / 1e3, "spread": _seconds_spread(advance_t), "budget_s": "-",
         "note": "O(new bars) + one comparison of the stored features"},
        {"case": f"{case}: the bundle written to the disk cache", "seconds": save_t.median / 1e3,
         "spread": _seconds_spread(save_t), "budget_s": "-",
         "note": "O(history): npz + SHA-256 of every array; written behind the answer, in a background thread"},
        {"case": f"{case}: features rebuilt over the panel", "seconds": features_t.median / 1e3,
         "spread": _seconds_spread(features_t), "budget_s": "-", "note": "O(history): engine.features is pandas"},
        {"case": f"{case}: time to show it (features + advance)", "seconds": total, "budget_s": LIVE_BUDGET_S,
         "result": verdict(total, LIVE_BUDGET_S), "note": f"the full recompute above took {full_s / total:,.1f}x this"},
    ]


def _seconds_spread(timing: Timing) -> str:
    return f"IQR {timing.q1 / 1e3:.3f}..{timing.q3 / 1e3:.3f} s (n={len(timing.samples)})"


def main(argv: list[str] | None = None) -> None:
    from engine.bench import run_single

    run_single("diagnostics benchmark", rows, __doc__, argv)


if __name__ == "__main__":
    main()
