"""The panel, model and diagnostics work for a universe of 50 assets, not just three (SYNTHETIC data)."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from engine.diagnostics import compute_diagnostics
from engine.diagnostics.bundle import DiagnosticsConfig
from engine.features import build_feature_set
from engine.model.config import ModelConfig
from engine.model.hybrid import HybridModel
from engine.model.inference import InferenceConfig
from storage.panel import check_panel
from storage.sources.synthetic_universe import synthetic_universe

N_ASSETS, N_BARS = 50, 400


@pytest.fixture(scope="module")
def features():
    panel = synthetic_universe(N_ASSETS, N_BARS)
    check_panel(panel)
    return build_feature_set(panel, range(0, N_BARS // 2))


@pytest.fixture(scope="module")
def model(features):
    torch.manual_seed(0)
    config = ModelConfig(n_assets=N_ASSETS, n_features=features.values.shape[2], shared_ssm=True, d_model=32,
                         n_heads=2, max_lag=3, point_head=False, lead_path=False)
    return HybridModel(config).eval()


def test_the_synthetic_universe_has_closed_markets_and_a_clean_panel(features):
    assert features.values.shape[:2] == (N_ASSETS, N_BARS)
    closed = ~features.mask[1::2, 100:]  # the weekday-only half, past the warm-up
    assert closed.any() and not closed.all()


def test_attention_over_50_assets_is_a_distribution_and_closed_targets_get_none(model, features):
    x = torch.from_numpy(features.values)[None]  # (1, 50, T, F)
    mask = torch.from_numpy(features.mask)[None]  # (1, 50, T)
    with torch.inference_mode():
        out = model(x, mask, return_diagnostics=True)
    attention = out.diagnostics.attention[0]  # (T, A_tgt, A_src, K+1)
    assert attention.shape == (N_BARS, N_ASSETS, N_ASSETS, 4)
    totals = attention.sum(dim=(-2, -1))  # (T, A_tgt)
    open_bars = mask[0].T  # (T, A)
    torch.testing.assert_close(totals[open_bars], torch.ones_like(totals[open_bars]), atol=1e-5, rtol=0)
    assert torch.all(totals[~open_bars] == 0)
    assert out.quantiles.shape[:3] == (1, N_ASSETS, N_BARS)


def test_step_mode_matches_the_full_sequence_at_50_assets(model, features):
    x = torch.from_numpy(features.values[:, :40])[None]
    mask = torch.from_numpy(features.mask[:, :40])[None]
    with torch.inference_mode():
        full = model(x, mask)
        head = model(x[:, :, :39], mask[:, :, :39], return_state=True)
        step, _ = model.step(x[:, :, 39], mask[:, :, 39], head.state)
    torch.testing.assert_close(step.quantiles[:, :, 0], full.quantiles[:, :, 39], atol=1e-5, rtol=1e-5)


def test_diagnostics_cover_every_asset_pair(model, features):
    config = DiagnosticsConfig(inference=InferenceConfig(chunk_size=128))
    bundle = compute_diagnostics(model, features, range(0, N_BARS // 2), config)
    assert bundle.lead_lag.shape == (N_ASSETS, N_ASSETS, 4)
    np.testing.assert_allclose(bundle.lead_lag.sum(axis=(1, 2)), 1.0, atol=1e-4)
    assert bundle.regimes.labels.shape == (N_ASSETS, N_BARS)
    assert len(bundle.strongest_pairs(top=10)) == 10
