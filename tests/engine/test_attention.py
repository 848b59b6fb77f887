"""Cross-asset lead-lag attention: a proper distribution over (source, lag), strictly causal, masks respected."""
from __future__ import annotations

import pytest
import torch

from engine.model.attention import LeadLagAttention
from engine.model.config import ModelConfig

N_ASSETS, D_MODEL, MAX_LAG = 3, 8, 3


def make_attention(seed: int = 0, **overrides) -> LeadLagAttention:
    settings = dict(n_assets=N_ASSETS, n_features=4, d_model=D_MODEL, n_heads=2, max_lag=MAX_LAG, dropout=0.0)
    settings.update(overrides)
    torch.manual_seed(seed)
    return LeadLagAttention(ModelConfig(**settings)).double().eval()


def random_inputs(batch=2, length=12, closed_fraction=0.3, seed=1):
    generator = torch.Generator().manual_seed(seed)
    x = torch.randn(batch, length, N_ASSETS, D_MODEL, generator=generator, dtype=torch.float64)
    mask = torch.rand(batch, length, N_ASSETS, generator=generator) >= closed_fraction
    return x, mask


def run(layer, x, mask, **kwargs):
    with torch.no_grad():
        return layer(x, mask, readout=True, **kwargs)


def test_weights_are_a_distribution_over_source_and_lag_at_open_targets():
    layer = make_attention()
    x, mask = random_inputs()
    _, _, weights = run(layer, x, mask)
    alpha = weights.mean  # (B, T, A_tgt, A_src, K+1)
    assert alpha.shape == (2, 12, N_ASSETS, N_ASSETS, MAX_LAG + 1)
    totals = alpha.sum(dim=(-1, -2))  # (B, T, A_tgt)
    torch.testing.assert_close(totals[mask], torch.ones_like(totals[mask]))
    assert (alpha >= 0).all()


def test_closed_or_missing_source_bars_get_exactly_zero_weight():
    layer = make_attention()
    x, mask = random_inputs()
    _, _, weights = run(layer, x, mask)
    alpha = weights.mean
    length = x.shape[1]
    for lag in range(MAX_LAG + 1):
        for t in range(length):
            source_bar = t - lag
            if source_bar < 0:  # before the first bar
                assert (alpha[:, t, :, :, lag] == 0).all(), f"bar {t} attends before the start at lag {lag}"
            else:
                closed = ~mask[:, source_bar]  # (B, A_src)
                picked = alpha[:, t, :, :, lag].transpose(1, 2)[closed]  # (n_closed, A_tgt)
                assert (picked == 0).all(), f"bar {t} attends to a closed bar at lag {lag}"


def test_closed_targets_get_no_weights_and_pass_through():
    layer = make_attention()
    x, mask = random_inputs()
    out, _, weights = run(layer, x, mask)
    closed = ~mask
    assert closed.any()
    assert (weights.mean[closed] == 0).all()
    assert torch.equal(out[closed], x[closed])
    assert not torch.allclose(out[mask], x[mask]), "open targets must receive something"


def test_nothing_after_bar_t_changes_anything_at_or_before_t():
    layer = make_attention()
    x, mask = random_inputs(length=10)
    t = 5
    x_future, mask_future = x.clone(), mask.clone()
    x_future[:, t + 1 :] = torch.randn_like(x_future[:, t + 1 :]) * 3
    mask_future[:, t + 1 :] = ~mask_future[:, t + 1 :]
    out, _, weights = run(layer, x, mask)
    out_future, _, weights_future = run(layer, x_future, mask_future)
    assert torch.equal(out[:, : t + 1], out_future[:, : t + 1])
    assert torch.equal(weights.mean[:, : t + 1], weights_future.mean[:, : t + 1])
    assert not torch.allclose(out[:, t + 1 :], out_future[:, t + 1 :])


def test_step_with_the_cached_bars_matches_the_full_sequence():
    layer = make_attention()
    x, mask = random_inputs(length=9)
    full, final_state, weights = run(layer, x, mask, return_state=True)
    state = layer.init_state(x.shape[0], dtype=x.dtype)
    for t in range(x.shape[1]):
        with torch.no_grad():
            out_t, state, weights_t = layer.step(x[:, t : t + 1], mask[:, t : t + 1], state, readout=True)
        torch.testing.assert_close(out_t, full[:, t : t + 1], rtol=1e-12, atol=1e-12)
        torch.testing.assert_close(weights_t.mean, weights.mean[:, t : t + 1], rtol=1e-12, atol=1e-12)
    for name in ("keys", "values", "key_mask"):
        torch.testing.assert_close(getattr(state, name), getattr(final_state, name))


def test_weights_are_computed_only_when_asked_and_per_head_averages_to_the_mean():
    layer = make_attention()
    x, mask = random_inputs()
    with torch.no_grad():
        out_plain, _, none = layer(x, mask)
        out_weighted, _, weights = layer(x, mask, readout=True)
    assert none is None
    assert torch.equal(out_plain, out_weighted)
    assert weights.per_head.shape == (2, 12, N_ASSETS, 2, N_ASSETS, MAX_LAG + 1)
    torch.testing.assert_close(weights.per_head.mean(dim=3), weights.mean)


def test_the_lag_embedding_is_what_tells_lags_apart():
    # A stream that is constant in time gives identical keys at every lag: only the lag embedding can separate them.
    layer = make_attention()
    x = torch.randn(1, 1, N_ASSETS, D_MODEL, dtype=torch.float64).expand(1, 8, N_ASSETS, D_MODEL)
    mask = torch.ones(1, 8, N_ASSETS, dtype=torch.bool)
    with torch.no_grad():
        layer.lag_embedding.zero_()
    alpha_flat = run(layer, x, mask)[2].mean[:, -1]  # (1, A_tgt, A_src, K+1), every lag in range
    torch.testing.assert_close(alpha_flat, alpha_flat[..., :1].expand_as(alpha_flat))
    with torch.no_grad():
        layer.lag_embedding.normal_(0, 1.0)
    alpha_lagged = run(layer, x, mask)[2].mean[:, -1]
    assert (alpha_lagged.amax(-1) - alpha_lagged.amin(-1)).min() > 1e-3


def test_lag_embedding_row_k_belongs_to_lag_k():
    layer = make_attention()
    bar = torch.randn(1, 1, 1, D_MODEL, dtype=torch.float64)
    x = bar.expand(1, 8, N_ASSETS, D_MODEL)  # every asset and bar alike: one query vector for every target
    mask = torch.ones(1, 8, N_ASSETS, dtype=torch.bool)
    with torch.no_grad():
        query = layer.qkv(layer.norm(bar)).split(D_MODEL, dim=-1)[0].view(layer.n_heads, layer.head_dim)
        layer.lag_embedding.zero_()
        layer.lag_embedding[2] = 20 * query / query.norm(dim=-1, keepdim=True)  # raises every score at lag 2
    alpha = run(layer, x, mask)[2].mean[0, -1]  # (A_tgt, A_src, K+1)
    assert (alpha.argmax(dim=-1) == 2).all(), alpha


def test_heads_must_divide_the_model_width():
    with pytest.raises(ValueError, match="divisible by n_heads"):
        ModelConfig(d_model=10, n_heads=4)
