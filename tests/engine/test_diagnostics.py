"""Diagnostics: regimes fitted on the training span and applied bar by bar, the lead-lag map over open targets,
look-back per regime, the SSM's hidden attention in log space (against brute force), and the on-disk cache."""
from __future__ import annotations

import json
from dataclasses import replace

import numpy as np
import pytest
import torch
from sklearn.metrics import adjusted_rand_score

from engine.diagnostics import (
    DiagnosticsConfig,
    RegimeConfig,
    compute_diagnostics,
    fit_regimes,
    hidden_attention,
    lead_lag_map,
    load_or_compute_diagnostics,
    lookback_by_regime,
    rolling_lead_lag,
    strongest_pairs,
    strongest_source,
)
from engine.diagnostics.cache import ARRAYS_FILE, META_FILE
from engine.diagnostics.regimes import NO_LABEL, transition_counts
from engine.features import build_feature_set
from engine.model.config import ModelConfig
from engine.model.hybrid import HybridModel
from engine.runtime import configure_cpu_threads
from storage.panel import demo_panel

configure_cpu_threads(1)


# ----- regimes -------------------------------------------------------------------------------------------------


def planted_embeddings(n_rows=600, seed=0):
    """(A=2, T, E=6) embeddings that sit near one of three centres, switching in blocks of 50 bars."""
    rng = np.random.default_rng(seed)
    truth = np.repeat(rng.permutation(np.tile([0, 1, 2], n_rows // 150)), 50)[:n_rows]
    centres = rng.normal(0, 5, size=(3, 6))
    embeddings = centres[truth][None] + rng.normal(0, 0.3, size=(2, n_rows, 6))
    return embeddings, np.ones((2, n_rows), dtype=bool), truth


@pytest.mark.parametrize("method", ["kmeans", "gmm"])
def test_planted_clusters_are_found_and_numbered_the_same_way_every_time(method):
    embeddings, mask, truth = planted_embeddings()
    config = RegimeConfig(n_regimes=3, n_components=2, cluster_components=None, method=method)
    result = fit_regimes(embeddings, mask, range(0, 300), config)
    for asset in range(2):
        assert adjusted_rand_score(truth, result.labels[asset]) == pytest.approx(1.0)
    again = fit_regimes(embeddings, mask, range(0, 300), config)
    np.testing.assert_array_equal(again.labels, result.labels)
    assert result.projections.shape == (2, 600, 2)
    assert result.explained_variance_ratio.shape == (2, 2) and result.explained_variance_ratio.sum(axis=1).max() <= 1


def test_clusters_on_the_first_component_ignore_a_second_direction_that_is_not_a_regime():
    # Regimes apart along the direction of most variance; a bimodal nuisance (two levels, independent of the
    # regime) in another one. k-means on both coordinates splits on the nuisance too; on the first, it does not.
    rng = np.random.default_rng(4)
    n_rows = 900
    truth = np.repeat(rng.integers(0, 3, n_rows // 50), 50)
    nuisance = rng.integers(0, 2, n_rows)
    # two state dims move with the regime (after standardising, the first component), one with the nuisance
    embeddings = np.stack([4.0 * truth] * 2 + [3.0 * nuisance], axis=1)
    embeddings = (embeddings + rng.normal(0, 0.5, size=(n_rows, 3)))[None]  # (1, T, 3)
    mask = np.ones((1, n_rows), dtype=bool)
    first = fit_regimes(embeddings, mask, range(0, 600), RegimeConfig(n_components=2))
    both = fit_regimes(embeddings, mask, range(0, 600), RegimeConfig(n_components=2, cluster_components=None))
    assert adjusted_rand_score(truth, first.labels[0]) > 0.95
    assert adjusted_rand_score(truth, both.labels[0]) < 0.8
    assert first.projections.shape == both.projections.shape == (1, n_rows, 2)  # the scatter keeps both
    with pytest.raises(ValueError, match="cluster_components"):
        RegimeConfig(n_components=2, cluster_components=3)


def test_pca_and_clusters_see_only_the_training_rows_and_labels_only_their_own_bar():
    embeddings, mask, _ = planted_embeddings()
    fit_rows = range(100, 400)
    result = fit_regimes(embeddings, mask, fit_rows)
    changed = embeddings.copy()
    changed[:, :100] += 40.0  # before the training span
    changed[:, 500:] *= -3.0  # after it
    other = fit_regimes(changed, mask, fit_rows)
    np.testing.assert_array_equal(other.explained_variance_ratio, result.explained_variance_ratio)
    np.testing.assert_array_equal(other.labels[:, 100:500], result.labels[:, 100:500])
    np.testing.assert_array_equal(other.projections[:, 100:500], result.projections[:, 100:500])


def test_bars_before_the_first_fresh_bar_get_no_label_and_closed_bars_do_not_count_as_transitions():
    embeddings, mask, _ = planted_embeddings()
    mask = mask.copy()
    mask[1, :30] = False
    result = fit_regimes(embeddings, mask, range(0, 300))
    assert (result.labels[1, :30] == NO_LABEL).all() and (result.labels[1, 30:] >= 0).all()
    labels = np.array([0, 0, 1, 1, 2, 0])
    open_bars = np.array([True, True, True, False, True, True])
    counts = transition_counts(labels, open_bars, 3)
    # open sequence 0 0 1 2 0: 0->0, 0->1, 1->2, 2->0
    expected = np.zeros((3, 3), dtype=int)
    expected[0, 0] = expected[0, 1] = expected[1, 2] = expected[2, 0] = 1
    np.testing.assert_array_equal(counts, expected)
    rows = result.transition_matrix[0]
    np.testing.assert_allclose(rows.sum(axis=1), 1.0)
    assert result.transition_counts[0].sum() == 599


def test_regime_inputs_that_cannot_work_are_refused_with_the_reason():
    embeddings, mask, _ = planted_embeddings()
    with pytest.raises(ValueError, match="fit_rows"):
        fit_regimes(embeddings, mask, range(0, 601))
    sparse = mask.copy()
    sparse[0, :] = False
    with pytest.raises(ValueError, match="asset 0 has 0 fresh bars"):
        fit_regimes(embeddings, sparse, range(0, 300))
    with pytest.raises(ValueError, match="method"):
        RegimeConfig(method="hmm")


# ----- lead-lag ------------------------------------------------------------------------------------------------


def random_attention(n_rows=120, n_assets=3, n_lags=4, seed=1):
    rng = np.random.default_rng(seed)
    weights = rng.random((n_rows, n_assets, n_assets, n_lags))
    weights /= weights.sum(axis=(2, 3), keepdims=True)
    target_open = rng.random((n_assets, n_rows)) > 0.3
    return weights, target_open


def test_the_map_averages_over_open_target_bars_only():
    weights, target_open = random_attention()
    garbage = weights.copy()
    garbage[~target_open.T] = 0.0  # what the model emits at a closed target
    result = lead_lag_map(garbage, target_open)
    for i in range(3):
        expected = weights[target_open[i], i].mean(axis=0)
        np.testing.assert_allclose(result[i], expected)
    np.testing.assert_allclose(result.sum(axis=(1, 2)), 1.0)
    part = lead_lag_map(weights, target_open, range(10, 50))
    np.testing.assert_allclose(part[0], weights[10:50][target_open[0, 10:50], 0].mean(axis=0))


def test_the_rolling_map_is_a_trailing_mean_that_never_looks_ahead():
    weights, target_open = random_attention()
    window = 15
    rolling = rolling_lead_lag(weights, target_open, window)
    for t in (0, 7, 14, 15, 60, 119):
        start = max(0, t - window + 1)
        for i in range(3):
            rows = np.arange(start, t + 1)[target_open[i, start : t + 1]]
            if len(rows):
                np.testing.assert_allclose(rolling[t, i], weights[rows, i].mean(axis=0), rtol=1e-5)
            else:
                assert np.isnan(rolling[t, i]).all()
    with pytest.raises(ValueError, match="window must be >= 1"):
        rolling_lead_lag(weights, target_open, 0)


def test_strongest_pairs_leave_out_self_attention_and_rank_by_weight():
    weights = np.zeros((3, 3, 4))
    weights[1, 1, 0] = 0.9  # SPY on itself: excluded
    weights[1, 0, 3] = 0.3  # SPY <- BTC at lag 3
    weights[2, 1, 0] = 0.2  # AAPL <- SPY at lag 0
    weights[2, 0, 3] = 0.25  # AAPL <- BTC at lag 3
    table = strongest_pairs(weights, ("BTC", "SPY", "AAPL"), top=2)
    assert table[["target", "source", "lag"]].values.tolist() == [["SPY", "BTC", 3], ["AAPL", "BTC", 3]]
    assert strongest_source(weights, ("BTC", "SPY", "AAPL"), "AAPL") == ("BTC", 3, 0.25)
    with pytest.raises(ValueError, match="weights must be"):
        strongest_pairs(weights[:2], ("BTC", "SPY", "AAPL"))


# ----- look-back per regime ------------------------------------------------------------------------------------


def test_lookback_is_summarised_per_regime_over_open_bars():
    lookback = np.array([[1.0, 2.0, 3.0, 100.0, 10.0, 20.0]])
    open_bars = np.array([[True, True, True, False, True, True]])
    labels = np.array([0, 0, 0, 1, 1, 1])
    table = lookback_by_regime(lookback, open_bars, labels, ("BTC",), ("calm", "volatile"))
    calm, volatile = table.iloc[0], table.iloc[1]
    assert (calm["regime_name"], calm["n_bars"], calm["median"]) == ("calm", 3, 2.0)
    assert (volatile["n_bars"], volatile["median"]) == (2, 15.0), "the closed bar's 100 is left out"
    with pytest.raises(ValueError, match="labels must be"):
        lookback_by_regime(lookback, open_bars, labels[:4], ("BTC",))


# ----- hidden attention ----------------------------------------------------------------------------------------


def brute_force_alpha(block, h, mask_t, asset, t):
    """alpha[d, s] by the explicit recurrence: each input's contribution carried forward bar by bar, float64."""
    s, _ = block.scan_inputs(h, mask_t)
    Di, N = block.d_inner, block.d_state
    A = s.A.view(block.n_assets, Di, N)[asset]
    delta, B, C = s.delta[0, :, asset], s.B[0, :, asset], s.C[0, :, asset]  # (T, Di), (T, N), (T, N)
    carried = torch.zeros(t + 1, Di, N, dtype=torch.float64)  # contribution of input s to the state, per s
    for r in range(t + 1):
        carried[:r] = carried[:r] * torch.exp(delta[r].unsqueeze(-1) * A)  # every earlier input decays one step
        carried[r] = delta[r].unsqueeze(-1) * B[r]  # input r enters the state
    return (carried * C[t]).sum(-1).T  # (Di, t+1)


def hybrid_in_float64(**overrides):
    torch.manual_seed(5)
    config = ModelConfig(n_assets=2, n_features=5, d_model=8, d_state=4, n_heads=2, max_lag=2, dropout=0.0,
                         **{"point_head": False, "lead_path": False, **overrides})
    return HybridModel(config).double().eval()


@pytest.mark.parametrize(
    "overrides, length",
    [
        ({}, 1500),  # small Delta over a long span: weights reach far back
        ({"dt_min": 50.0, "dt_max": 200.0, "dt_clamp_max": 1000.0}, 300),  # huge Delta: exp(+sum Delta A) would overflow
    ],
)
def test_hidden_attention_matches_the_explicit_recurrence_in_float64(overrides, length):
    model = hybrid_in_float64(**overrides)
    torch.manual_seed(6)
    x = torch.randn(1, 2, length, 5, dtype=torch.float64)
    mask = torch.ones(1, 2, length, dtype=torch.bool)
    mask[0, 1, 100:160] = False  # a closed spell of asset 1
    t, asset = length - 1, 1
    alpha = model.implicit_attention(x, mask, asset, t)[0]  # (Di, t+1)
    assert torch.isfinite(alpha).all()
    mask_t = mask.transpose(1, 2)
    h = model._embed(x.transpose(1, 2), mask_t)
    for layer in model.layers[: model.diagnostic_ssm_layer]:
        h = layer(h, mask_t)[0]
    brute = brute_force_alpha(model.layers[model.diagnostic_ssm_layer], h, mask_t, asset, t)
    torch.testing.assert_close(alpha, brute, rtol=1e-9, atol=1e-300)
    assert (alpha[:, 100:160] == 0).all(), "closed bars take no step and are not remembered"


@pytest.fixture(scope="module")
def demo_features():
    loaded = demo_panel("1d")
    features = build_feature_set(loaded.panel, range(0, 300))
    n = 500
    return loaded, replace(features, values=features.values[:, :n].copy(), mask=features.mask[:, :n].copy(),
                           ts=features.ts[:n])


@pytest.fixture(scope="module")
def small_model():
    torch.manual_seed(3)
    return HybridModel(ModelConfig(n_assets=3, n_features=16, d_model=16, d_state=4, n_heads=2, max_lag=4,
                                   point_head=False, lead_path=False))


def test_hidden_attention_frame_is_keyed_by_past_bars_newest_first(small_model, demo_features):
    _, features = demo_features
    t = 450
    frame = hidden_attention(small_model, features, "SPY", features.ts[t], max_lag=20)
    assert frame.index[0] == features.ts[t] and list(frame["lag"]) == list(range(21))
    assert (frame["weight"] >= 0).all()
    spy = features.symbols.index("SPY")
    closed = ~features.mask[spy, t - 20 : t + 1][::-1]
    assert (frame["weight"].to_numpy()[closed] == 0).all() and (frame["weight"].to_numpy()[~closed] > 0).all()
    full = hidden_attention(small_model, features, "SPY", t)
    assert len(full) == t + 1
    np.testing.assert_allclose(full["weight"].to_numpy()[:21], frame["weight"].to_numpy())
    with pytest.raises(ValueError, match="is not a bar of the panel"):
        hidden_attention(small_model, features, "SPY", "1990-01-01")
    with pytest.raises(ValueError, match="'ETH'"):
        hidden_attention(small_model, features, "ETH", t)


# ----- the bundle and its cache --------------------------------------------------------------------------------


def test_bundle_views_agree_with_the_functions_they_wrap(small_model, demo_features):
    _, features = demo_features
    bundle = compute_diagnostics(small_model, features, range(0, 300))
    np.testing.assert_allclose(bundle.lead_lag, lead_lag_map(bundle.inference.attention, bundle.inference.mask))
    assert bundle.rolling_lead_lag(50).shape == bundle.inference.attention.shape
    assert len(bundle.strongest_pairs(top=3)) == 3
    table = bundle.lookback_by_regime()
    assert set(table["symbol"]) == set(features.symbols) and (table["n_bars"] > 0).any()


def fingerprint_of(loaded, features):
    fingerprint = loaded.fingerprint()
    return replace(fingerprint, n_rows=len(features.ts))  # the test uses the first rows of the panel


def test_second_call_is_served_from_the_cache_with_identical_numbers(small_model, demo_features, tmp_path):
    loaded, features = demo_features
    fingerprint = fingerprint_of(loaded, features)
    args = dict(run_id="test-run", fingerprint=fingerprint, cache_dir=tmp_path)
    first, status = load_or_compute_diagnostics(small_model, features, range(0, 300), **args)
    assert status.startswith("computed: no entry")
    second, status = load_or_compute_diagnostics(small_model, features, range(0, 300), **args)
    assert status == "cached"
    for name in ("quantiles", "embeddings", "lookback", "attention", "mask"):
        np.testing.assert_array_equal(getattr(second.inference, name), getattr(first.inference, name))
    np.testing.assert_array_equal(second.regimes.labels, first.regimes.labels)
    assert second.inference.ts.equals(first.inference.ts) and second.symbols == first.symbols
    # another checkpoint, other settings or other training rows get their own entries
    _, status = load_or_compute_diagnostics(small_model, features, range(0, 300), **{**args, "run_id": "other"})
    assert status.startswith("computed")
    _, status = load_or_compute_diagnostics(small_model, features, range(0, 300), **args,
                                            config=DiagnosticsConfig(RegimeConfig(n_regimes=4)))
    assert status.startswith("computed")
    _, status = load_or_compute_diagnostics(small_model, features, range(0, 250), **args)
    assert status.startswith("computed")


@pytest.mark.parametrize("damage", ["arrays", "meta", "key"])
def test_a_corrupt_or_mismatched_entry_is_recomputed_not_trusted(small_model, demo_features, tmp_path, damage):
    loaded, features = demo_features
    args = dict(run_id="test-run", fingerprint=fingerprint_of(loaded, features), cache_dir=tmp_path)
    first, _ = load_or_compute_diagnostics(small_model, features, range(0, 300), **args)
    (entry,) = [p for p in tmp_path.iterdir() if p.is_dir()]
    if damage == "arrays":
        data = bytearray((entry / ARRAYS_FILE).read_bytes())
        data[len(data) // 2] ^= 0xFF
        (entry / ARRAYS_FILE).write_bytes(bytes(data))
    elif damage == "meta":
        (entry / META_FILE).write_text("{not json")
    else:
        meta = json.loads((entry / META_FILE).read_text())
        meta["key"]["run_id"] = "somebody-else"
        (entry / META_FILE).write_text(json.dumps(meta))
    again, status = load_or_compute_diagnostics(small_model, features, range(0, 300), **args)
    assert status.startswith("computed: ")
    np.testing.assert_allclose(again.inference.quantiles, first.inference.quantiles)
    _, status = load_or_compute_diagnostics(small_model, features, range(0, 300), **args)
    assert status == "cached", "the recomputed entry replaced the bad one"


def test_a_fingerprint_of_other_data_is_refused(small_model, demo_features, tmp_path):
    loaded, features = demo_features
    with pytest.raises(ValueError, match="fingerprint describes"):
        load_or_compute_diagnostics(small_model, features, range(0, 300), run_id="r",
                                    fingerprint=loaded.fingerprint(), cache_dir=tmp_path)


# ----- from a checkpoint folder ----------------------------------------------------------------------------------


def write_checkpoint(directory, model, loaded, features):
    from engine.model.checkpoint import Manifest, save_checkpoint

    manifest = Manifest(
        run_id="hand-made", model_config=model.config.to_dict(), feature_names=list(features.names),
        scaler=features.scaler.to_dict(), fingerprint=loaded.fingerprint(), created_at="2026-12-01T00:00:00Z",
        device="cpu", training={"config": {"features": {}}},
    )
    save_checkpoint(directory, model.state_dict(), manifest)
    return manifest


def test_diagnostics_for_a_checkpoint_use_its_scaler_and_training_rows_and_are_cached(small_model, tmp_path):
    from engine.diagnostics.for_run import diagnostics_for_run, run_on_panel
    from engine.model.checkpoint import CheckpointError

    loaded = demo_panel("1d")
    features = build_feature_set(loaded.panel, range(0, 700))
    write_checkpoint(tmp_path / "run", small_model, loaded, features)
    run = run_on_panel(tmp_path / "run", loaded)
    assert run.fit_rows == range(0, 700)
    np.testing.assert_array_equal(run.features.values, features.values)
    bundle, status = diagnostics_for_run(tmp_path / "run", loaded, cache_dir=tmp_path / "cache")
    assert status.startswith("computed") and bundle.regimes.fit_rows == (0, 700)
    _, status = diagnostics_for_run(tmp_path / "run", loaded, cache_dir=tmp_path / "cache")
    assert status == "cached"
    with pytest.raises(CheckpointError, match="trained on symbols BTC, SPY, AAPL but the panel has BTC, SPY"):
        run_on_panel(tmp_path / "run", demo_panel("1d", symbols=("BTC", "SPY")))
    other = HybridModel(ModelConfig(n_assets=3, n_features=16, d_model=8, d_state=4, n_heads=2, max_lag=4,
                                    point_head=False, lead_path=False))
    manifest = write_checkpoint(tmp_path / "bad", other, loaded, features)
    from engine.model.checkpoint import save_checkpoint

    save_checkpoint(tmp_path / "bad", small_model.state_dict(), manifest)  # weights of another shape
    with pytest.raises(CheckpointError, match="do not fit the model its manifest describes"):
        run_on_panel(tmp_path / "bad", loaded)


def test_a_checkpoint_re_made_under_the_same_run_id_does_not_read_the_one_before(small_model, tmp_path):
    """The cache key holds the checkpoint (run id and when it was written), not the run id alone: the demo's command
    re-makes run demo-1h, and its diagnostics were read from the checkpoint before."""
    import dataclasses

    from engine.diagnostics.for_run import diagnostics_for_run
    from engine.model.checkpoint import save_checkpoint

    loaded = demo_panel("1d")
    features = build_feature_set(loaded.panel, range(0, 700))
    manifest = write_checkpoint(tmp_path / "run", small_model, loaded, features)
    first, _ = diagnostics_for_run(tmp_path / "run", loaded, cache_dir=tmp_path / "cache")
    retrained = HybridModel(small_model.config)
    with torch.no_grad():
        for parameter in retrained.parameters():
            parameter.add_(0.05 * torch.randn_like(parameter))
    save_checkpoint(tmp_path / "run", retrained.state_dict(),
                    dataclasses.replace(manifest, created_at="2026-12-02T00:00:00Z"))
    second, status = diagnostics_for_run(tmp_path / "run", loaded, cache_dir=tmp_path / "cache")
    assert status.startswith("computed")
    assert not np.allclose(second.inference.embeddings, first.inference.embeddings)


def test_a_bundle_past_the_attention_budget_draws_windows_from_the_kept_bars(small_model, demo_features):
    from engine.diagnostics import DiagnosticsConfig
    from engine.model.inference import InferenceConfig

    _, features = demo_features
    full = compute_diagnostics(small_model, features, range(0, 300))
    n_lags = small_model.config.max_lag + 1
    budget = 200.5 * 9 * n_lags * 4 / 2**20  # the latest 200 bars of 3 assets
    cut = compute_diagnostics(small_model, features, range(0, 300),
                              DiagnosticsConfig(inference=InferenceConfig(attention_budget_mb=budget)))
    T = len(features.ts)
    assert cut.attention_rows == range(T - 200, T) and full.attention_rows == range(0, T)
    np.testing.assert_allclose(cut.lead_lag, full.lead_lag, rtol=1e-6)
    inside = range(T - 120, T - 20)
    np.testing.assert_allclose(cut.lead_lag_over(inside), full.lead_lag_over(inside), rtol=1e-6)
    # a window reaching before the kept bars uses the kept ones among its rows
    np.testing.assert_allclose(cut.lead_lag_over(range(0, T - 50)), full.lead_lag_over(range(T - 200, T - 50)),
                               rtol=1e-6)
    # one target's trailing map: the full rolling map's rows, NaN before the kept bars
    rolling = full.rolling_lead_lag(30)
    np.testing.assert_allclose(full.rolling_lead_lag_of("SPY", 30), rolling[:, 1], equal_nan=True)
    of_cut = cut.rolling_lead_lag_of("SPY", 30)
    assert np.isnan(of_cut[: T - 200]).all()
    np.testing.assert_allclose(of_cut[T - 200 + 30:], rolling[T - 200 + 30:, 1], rtol=1e-5, equal_nan=True)
