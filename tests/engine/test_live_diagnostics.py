"""Live diagnostics: advancing a bundle over appended bars gives compute_diagnostics over the whole panel."""
from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest
import torch

from engine.diagnostics.bundle import DiagnosticsConfig, compute_diagnostics
from engine.diagnostics.live import (
    advance,
    extend_regimes,
    fit_regimes_kept,
    start_live,
)
from engine.diagnostics.regimes import fit_regimes
from engine.features import build_feature_set
from engine.model.config import ModelConfig
from engine.model.hybrid import HybridModel
from engine.model.inference import InferenceConfig
from engine.runtime import configure_cpu_threads
from storage.panel import demo_panel

N_ROWS = 360
FIT_ROWS = range(200)


@pytest.fixture(scope="module")
def features():
    configure_cpu_threads(1)
    return build_feature_set(demo_panel("1d").panel, FIT_ROWS)


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(5)
    config = ModelConfig(n_assets=3, n_features=16, d_model=16, d_state=4, n_heads=2, max_lag=4, dropout=0.1,
                         point_head=False, lead_path=False)
    return HybridModel(config).eval()


def first(features, n_rows):
    return replace(features, values=features.values[:, :n_rows].copy(), mask=features.mask[:, :n_rows].copy(),
                   ts=features.ts[:n_rows])


CONFIG = DiagnosticsConfig(inference=InferenceConfig(chunk_size=64))


def test_new_bars_labelled_with_the_kept_fit_are_fit_regimes_over_everything(features, model):
    inference = compute_diagnostics(model, first(features, N_ROWS), FIT_ROWS, CONFIG).inference
    embeddings, mask = inference.embeddings, inference.mask
    head, fits = fit_regimes_kept(embeddings[:, : N_ROWS - 30], mask[:, : N_ROWS - 30], FIT_ROWS, CONFIG.regimes)
    extended = extend_regimes(head, fits, embeddings, mask, CONFIG.regimes.n_regimes)
    whole = fit_regimes(embeddings, mask, FIT_ROWS, CONFIG.regimes)
    for name in ("labels", "transition_counts", "explained_variance_ratio"):
        np.testing.assert_array_equal(getattr(extended, name), getattr(whole, name), err_msg=name)
    np.testing.assert_allclose(extended.projections, whole.projections, rtol=1e-6, atol=1e-6)
    np.testing.assert_array_equal(extended.transition_matrix, whole.transition_matrix)


def test_advancing_over_new_bars_gives_the_diagnostics_of_the_whole_panel(features, model):
    everything = compute_diagnostics(model, first(features, N_ROWS), FIT_ROWS, CONFIG)
    live = start_live(model, first(features, N_ROWS - 9), FIT_ROWS, CONFIG)
    for n_rows, status in ((N_ROWS - 8, "advanced by 1 bars"), (N_ROWS, "advanced by 8 bars"),
                           (N_ROWS, "unchanged")):
        live, said = advance(model, live, first(features, n_rows))
        assert said == status
    got, want = live.bundle, everything
    for name in ("quantiles", "prob_up", "volatility", "embeddings", "attention"):
        np.testing.assert_allclose(getattr(got.inference, name), getattr(want.inference, name), rtol=1e-4,
                                   atol=1e-5, err_msg=name)
    np.testing.assert_allclose(got.lead_lag, want.lead_lag, rtol=1e-6)
    # Labels and transitions are discrete: the same wherever the float rounding of the chunks leaves the same side.
    same = (got.regimes.labels == want.regimes.labels).mean()
    assert same > 0.995, same
    np.testing.assert_allclose(got.regimes.projections, want.regimes.projections, rtol=1e-3, atol=1e-4)
    if same == 1.0:
        np.testing.assert_array_equal(got.regimes.transition_counts, want.regimes.transition_counts)


def test_a_revised_history_is_computed_afresh_not_extended(features, model):
    live = start_live(model, first(features, N_ROWS - 5), FIT_ROWS, CONFIG)
    revised = first(features, N_ROWS)
    revised.values[0, N_ROWS - 20, 0] += 1.0  # a refresh revised a stored bar
    fresh, said = advance(model, live, revised)
    assert said.startswith("computed")
    expected = compute_diagnostics(model, revised, FIT_ROWS, CONFIG)
    np.testing.assert_array_equal(fresh.bundle.regimes.labels, expected.regimes.labels)


def test_the_app_s_cached_diagnostics_advance_over_a_refresh_s_new_bars(features, model, tmp_path):
    from engine.diagnostics.cache import (
        load_or_compute_diagnostics,
        wait_for_cache_writes,
    )

    loaded = demo_panel("1d")

    def fingerprint(n_rows):  # what the app passes: the panel's own fingerprint, new with every refresh
        return replace(loaded.fingerprint(), n_rows=n_rows, content_hash=f"test-{n_rows}")

    args = {"run_id": "live-test", "config": CONFIG, "cache_dir": tmp_path}
    _, status = load_or_compute_diagnostics(model, first(features, N_ROWS - 1), FIT_ROWS,
                                            fingerprint=fingerprint(N_ROWS - 1), **args)
    assert status.startswith("computed: no entry")
    bundle, status = load_or_compute_diagnostics(model, first(features, N_ROWS), FIT_ROWS,
                                                 fingerprint=fingerprint(N_ROWS), **args)
    assert status.startswith("advanced by 1 bars")
    expected = compute_diagnostics(model, first(features, N_ROWS), FIT_ROWS, CONFIG)
    np.testing.assert_allclose(bundle.inference.quantiles, expected.inference.quantiles, rtol=1e-4, atol=1e-5)
    assert (bundle.regimes.labels == expected.regimes.labels).mean() > 0.995
    wait_for_cache_writes()  # the advanced bundle is written behind the answer
    _, status = load_or_compute_diagnostics(model, first(features, N_ROWS), FIT_ROWS,
                                            fingerprint=fingerprint(N_ROWS), **args)
    assert status == "cached"  # ... to the disk cache, like a computed one
