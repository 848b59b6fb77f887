"""Whole-panel inference: chunked with the carried state it is one pass; it is causal; it keeps what the views need."""
from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import torch

from engine.features import build_feature_set
from engine.model.config import ModelConfig
from engine.model.hybrid import HybridModel
from engine.model.inference import LOOKBACK_LEVELS, InferenceConfig, run_inference
from engine.runtime import configure_cpu_threads
from storage.panel import demo_panel

N_ROWS = 400  # the first 400 daily demo bars (SYNTHETIC): long enough for warm-up, several chunks and weekends


@pytest.fixture(scope="module")
def features():
    configure_cpu_threads(1)
    panel = demo_panel("1d").panel
    return build_feature_set(panel, range(300))


def truncated(features, n_rows=N_ROWS):
    from dataclasses import replace

    return replace(features, values=features.values[:, :n_rows].copy(), mask=features.mask[:, :n_rows].copy(),
                   ts=features.ts[:n_rows])


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(3)
    config = ModelConfig(n_assets=3, n_features=16, d_model=16, d_state=4, n_heads=2, max_lag=4, dropout=0.1,
                         point_head=False, lead_path=False)
    return HybridModel(config)


def test_chunks_carrying_the_state_give_the_numbers_of_one_pass(model, features):
    small = truncated(features)
    whole = run_inference(model, small, InferenceConfig(chunk_size=N_ROWS))
    chunked = run_inference(model, small, InferenceConfig(chunk_size=37))  # not a divisor: a short last chunk
    for name in ("quantiles", "prob_up", "volatility", "embeddings", "attention"):
        np.testing.assert_allclose(getattr(chunked, name), getattr(whole, name), rtol=1e-4, atol=1e-5, err_msg=name)
    np.testing.assert_allclose(chunked.lookback, whole.lookback, rtol=1e-4, equal_nan=True)


def test_a_bar_is_never_changed_by_later_bars(model, features):
    small = truncated(features)
    before = run_inference(model, small, InferenceConfig(chunk_size=64))
    cut = 250
    changed = truncated(features)
    changed.values[:, cut:] += 3.0
    after = run_inference(model, changed, InferenceConfig(chunk_size=64))
    for name in ("quantiles", "embeddings", "lookback"):
        np.testing.assert_array_equal(getattr(after, name)[:, :cut], getattr(before, name)[:, :cut], err_msg=name)
    np.testing.assert_array_equal(after.attention[:cut], before.attention[:cut])
    assert not np.allclose(after.quantiles[:, cut:], before.quantiles[:, cut:])


def test_outputs_have_the_documented_shapes_and_meaning(model, features):
    small = truncated(features)
    result = run_inference(model, small)
    config = model.config
    A, T, H, Q = 3, N_ROWS, len(config.horizons), len(config.quantiles)
    assert result.quantiles.shape == (A, T, H, Q)
    assert result.prob_up.shape == result.volatility.shape == (A, T, H)
    assert result.embeddings.shape == (A, T, config.embedding_dim)
    assert result.lookback.shape == (A, T, len(LOOKBACK_LEVELS))
    assert result.attention.shape == (T, A, A, config.max_lag + 1)
    assert (np.diff(result.quantiles, axis=-1) >= 0).all()
    assert ((result.prob_up > 0) & (result.prob_up < 1)).all() and (result.volatility > 0).all()
    # Look-back quantiles over channels are ordered, defined on fresh bars and NaN where the bar is closed.
    mask = result.mask
    assert (np.diff(result.lookback[mask], axis=-1) >= 0).all()
    assert np.isnan(result.lookback[~mask]).all() and np.isfinite(result.lookback[mask]).all()
    # An open target's weights over (source, lag) sum to 1; a closed one attends to nothing.
    sums = result.attention.sum(axis=(2, 3)).T  # (A, T)
    np.testing.assert_allclose(sums[mask], 1.0, rtol=1e-5)
    assert (sums[~mask] == 0).all()


def test_the_model_is_run_in_eval_mode_and_left_as_it_was(model, features):
    small = truncated(features, 60)
    model.train()
    first = run_inference(model, small)
    second = run_inference(model, small)
    assert model.training, "the caller's mode is restored"
    np.testing.assert_array_equal(first.quantiles, second.quantiles)  # no dropout noise


def test_forecast_frame_is_keyed_by_ts_over_open_bars_only(model, features):
    small = truncated(features)
    result = run_inference(model, small)
    frame = result.forecast_frame("SPY", 5)
    spy = small.symbols.index("SPY")
    assert isinstance(frame.index, pd.DatetimeIndex) and frame.index.tz is not None
    assert len(frame) == small.mask[spy].sum()
    assert (frame.index.day_of_week < 5).all(), "the demo's SPY trades on weekdays only"
    assert list(frame.columns) == [f"q{q:g}" for q in model.config.quantiles] + ["prob_up", "volatility"]
    first = np.flatnonzero(small.mask[spy])[0]
    assert frame.iloc[0]["prob_up"] == pytest.approx(float(result.prob_up[spy, first, 1]))
    with pytest.raises(ValueError, match="horizon 7"):
        result.forecast_frame("SPY", 7)
    with pytest.raises(ValueError, match="'ETH'"):
        result.forecast_frame("ETH", 1)


def test_features_that_do_not_fit_the_model_are_refused_with_the_reason(features):
    small = truncated(features, 50)
    wrong = HybridModel(ModelConfig(n_assets=2, n_features=16, d_model=16, d_state=4, n_heads=2))
    with pytest.raises(ValueError, match="3 assets x 16 features, the model expects 2 x 16"):
        run_inference(wrong, small)
    no_attention = HybridModel(ModelConfig(n_assets=3, d_model=16, d_state=4, n_heads=2, layer_pattern=("ssm",),
                                             lead_path=False))
    with pytest.raises(ValueError, match="needs an 'ssm' and an 'attn' layer"):
        run_inference(no_attention, small)
    with pytest.raises(ValueError, match="chunk_size must be >= 1"):
        InferenceConfig(chunk_size=0)


def test_past_the_attention_budget_only_the_latest_bars_are_kept_and_the_whole_span_map_stays_exact(model, features):
    from engine.diagnostics.lead_lag import lead_lag_map
    from engine.model.inference import attention_rows_kept

    small = truncated(features)
    full = run_inference(model, small, InferenceConfig(chunk_size=64))
    per_bar_mb = 3 * 3 * (model.config.max_lag + 1) * 4 / 2**20
    budget = 150.5 * per_bar_mb  # room for 150 bars
    cut = run_inference(model, small, InferenceConfig(chunk_size=64, attention_budget_mb=budget))
    assert attention_rows_kept(N_ROWS, 3, model.config.max_lag + 1, budget) == 150
    assert full.attention_start == 0 and cut.attention_start == N_ROWS - 150
    np.testing.assert_array_equal(cut.attention, full.attention[-150:])
    # the whole-span map is summed as the chunks pass: every bar counts, kept or not
    exact = lead_lag_map(full.attention, full.mask)
    np.testing.assert_allclose(cut.lead_lag, exact, rtol=1e-6)
    np.testing.assert_allclose(full.lead_lag, exact, rtol=1e-6)
    np.testing.assert_array_equal(cut.quantiles, full.quantiles)  # nothing else changes
    with pytest.raises(ValueError, match="attention_budget_mb"):
        InferenceConfig(attention_budget_mb=0)


@pytest.mark.parametrize("budget_bars", [None, 150])
def test_new_bars_extend_the_result_from_the_saved_end_state_as_one_pass_over_everything(model, features, budget_bars):
    from engine.model.inference import extend_inference, run_inference_with_state

    per_bar_mb = 3 * 3 * (model.config.max_lag + 1) * 4 / 2**20
    budget = 512.0 if budget_bars is None else (budget_bars + 0.5) * per_bar_mb
    config = InferenceConfig(chunk_size=64, attention_budget_mb=budget)
    everything = run_inference(model, truncated(features), config)
    result, state = run_inference_with_state(model, truncated(features, N_ROWS - 7), config)
    for n_rows in (N_ROWS - 6, N_ROWS):  # one new bar, then six (a refresh after a gap)
        result, state = extend_inference(model, result, state, truncated(features, n_rows), config)
    assert result.attention_start == everything.attention_start and len(result.ts) == N_ROWS
    for name in ("quantiles", "prob_up", "volatility", "embeddings", "attention"):
        np.testing.assert_allclose(getattr(result, name), getattr(everything, name), rtol=1e-4, atol=1e-5,
                                   err_msg=name)
    np.testing.assert_allclose(result.lookback, everything.lookback, rtol=1e-4, equal_nan=True)
    np.testing.assert_allclose(result.lead_lag, everything.lead_lag, rtol=1e-6)
    np.testing.assert_array_equal(result.mask, everything.mask)
    # A history that is not the previous one's (a revised bar moved the clock) is refused, not silently extended.
    from dataclasses import replace

    shifted = replace(truncated(features, N_ROWS), ts=features.ts[:N_ROWS] + pd.Timedelta(hours=1))
    with pytest.raises(ValueError, match="previous result's bars"):
        extend_inference(model, result, state, shifted, config)
