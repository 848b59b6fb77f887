"""How the model grows with the number of assets N (SYNTHETIC universe, storage.sources.synthetic_universe).

Per bar, the SSM streams cost O(N) and the cross-asset attention O(N^2 * (K+1)): every target attends to every
source at every lag. The rows give, for N = 3 .. 50 and one 512-bar window: parameters with per-asset and with shared
SSM weights, forward time with diagnostics, and the size of the attention-weight tensor the diagnostics return
(B x T x N x N x (K+1) floats), which is what grows fastest. Run: python -m engine.benchmarks.universe

Past the size where that bites, inference keeps the whole-span lead-lag map exact (summed chunk by chunk) but the
per-bar weights only for the latest bars that fit InferenceConfig.attention_budget_mb (512 MB): the last column
says how many hourly bars that is at each N; the Lead-lag page says so when it applies.
"""
from __future__ import annotations

import os
import time

import torch

from engine.features import build_feature_set
from engine.model.config import ModelConfig
from engine.model.hybrid import HybridModel
from engine.model.inference import InferenceConfig, attention_rows_kept
from engine.runtime import device_label
from storage.sources.synthetic_universe import synthetic_universe

SIZES = (3, 10, 25, 50)
WINDOW = 512


def _median_s(fn, repeats: int = 3) -> float:
    fn()  # warm-up
    times = []
    for _ in range(repeats):
        started = time.perf_counter()
        fn()
        times.append(time.perf_counter() - started)
    return sorted(times)[len(times) // 2]


def rows(device: torch.device | str) -> list[dict]:
    device = torch.device(device)
    out = []
    load = f"load {os.getloadavg()[0]:.1f}" if device.type == "cpu" else device_label(device)
    for n_assets in SIZES:
        panel = synthetic_universe(n_assets, WINDOW + 64)
        features = build_feature_set(panel, range(0, WINDOW // 2))
        x = torch.from_numpy(features.values[:, -WINDOW:])[None].to(device)  # (1, N, T, F)
        mask = torch.from_numpy(features.mask[:, -WINDOW:])[None].to(device)  # (1, N, T)
        for shared in (False, True):
            config = ModelConfig(n_assets=n_assets, n_features=features.values.shape[2], shared_ssm=shared,
                                 point_head=False, lead_path=False)
            model = HybridModel(config).to(device).eval()

            def forward():
                with torch.inference_mode():
                    model(x, mask, return_diagnostics=True)
                if device.type == "cuda":
                    torch.cuda.synchronize(device)

            seconds = _median_s(forward)
            attention_mb = WINDOW * n_assets * n_assets * (config.max_lag + 1) * 4 / 2**20
            kept = attention_rows_kept(10**9, n_assets, config.max_lag + 1, InferenceConfig().attention_budget_mb)
            out.append({
                "assets": n_assets, "SSM weights": "shared" if shared else "per asset",
                "parameters": f"{model.num_parameters():,}", "fwd+diagnostics ms (1 x 512 bars)": seconds * 1e3,
                "ms per bar": seconds * 1e3 / WINDOW, "attention weights MB": attention_mb,
                "bars of per-bar attention kept": f"{kept:,}", "machine": load,
            })
    return out


def main(argv: list[str] | None = None) -> None:
    from engine.bench import run_single

    run_single("universe size", rows, __doc__, argv)


if __name__ == "__main__":
    main()
