"""The per-asset selective-SSM block: exact against a plain per-asset loop, closed bars inert, streams independent."""
from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

import engine.model.ssm as ssm_module
from engine.model.config import ModelConfig
from engine.model.scan import selective_scan_reference
from engine.model.ssm import SelectiveSSMBlock, regime_embedding


def small_config(**overrides) -> ModelConfig:
    settings = dict(n_assets=3, n_features=5, d_model=8, d_state=4, expand=2, d_conv=3, n_heads=2, max_lag=2,
                    dropout=0.0)
    settings.update(overrides)
    return ModelConfig(**settings)


def make_block(seed: int = 0, dtype=torch.float64, **overrides) -> SelectiveSSMBlock:
    torch.manual_seed(seed)
    block = SelectiveSSMBlock(small_config(**overrides)).to(dtype).eval()
    with torch.no_grad():  # move D and the norm gains off their trivial init so the test sees them act
        block.D.uniform_(0.5, 1.5)
        block.norm.weight.uniform_(0.5, 1.5)
    return block


def random_inputs(batch=2, length=11, assets=3, d_model=8, closed_fraction=0.3, seed=1, dtype=torch.float64):
    generator = torch.Generator().manual_seed(seed)
    x = torch.randn(batch, length, assets, d_model, generator=generator, dtype=dtype)
    mask = torch.rand(batch, length, assets, generator=generator) >= closed_fraction
    return x, mask


def per_asset_loop(block: SelectiveSSMBlock, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """The block written the slow, obvious way: each asset on its own, one bar at a time. x (B, T, A, M)."""
    batch, length, n_assets, _ = x.shape
    Di, N, K = block.d_inner, block.d_state, block.d_conv
    lo, hi = block.dt_clamp
    out = x.clone()

    def own(weight: torch.Tensor, asset: int) -> torch.Tensor:
        return weight[0] if weight.shape[0] == 1 else weight[asset]

    for a in range(n_assets):
        rows = slice(a * Di, (a + 1) * Di) if block.conv_weight.shape[0] > Di else slice(0, Di)
        conv_w, conv_b = block.conv_weight[rows], block.conv_bias[rows]  # (Di, K), (Di,)
        A = -torch.exp(block.A_log[rows])  # (Di, N)
        h = torch.zeros(batch, Di, N, dtype=x.dtype)
        history = [torch.zeros(batch, Di, dtype=x.dtype)] * (K - 1)
        for t in range(length):
            x_t = x[:, t, a]
            open_ = mask[:, t, a].to(x.dtype).unsqueeze(-1)
            normed = x_t / torch.sqrt(x_t.pow(2).mean(-1, keepdim=True) + block.norm.eps) * own(block.norm.weight, a)
            u_in, z = (normed @ own(block.in_proj.weight, a)).split(Di, dim=-1)
            history = history + [u_in * open_]
            window = torch.stack(history[-K:], dim=-1)  # (B, Di, K), oldest first
            u = F.silu((window * conv_w).sum(-1) + conv_b)
            dt_low, B, C = (u @ own(block.x_proj.weight, a)).split([block.dt_rank, N, N], dim=-1)
            delta = F.softplus(dt_low @ own(block.dt_proj.weight, a) + own(block.dt_proj.bias, a)).clamp(lo, hi) * open_
            h = torch.exp(delta.unsqueeze(-1) * A) * h + (delta * u).unsqueeze(-1) * B.unsqueeze(1)
            y = (h * C.unsqueeze(1)).sum(-1) + u * own(block.D, a)
            out[:, t, a] = x_t + ((y * F.silu(z)) @ own(block.out_proj.weight, a)) * open_
    return out


@pytest.mark.parametrize("shared", [False, True])
def test_block_matches_a_plain_per_asset_loop_in_float64(shared):
    block = make_block(shared_ssm=shared)
    x, mask = random_inputs()
    with torch.no_grad():
        fast, _, _ = block(x, mask)
        slow = per_asset_loop(block, x, mask)
    torch.testing.assert_close(fast, slow, rtol=1e-10, atol=1e-12)


def test_closed_bars_carry_the_state_and_pass_the_stream_through():
    block = make_block()
    x, mask = random_inputs(length=9, closed_fraction=0.0)
    mask[:, 4:7, 1] = False  # asset 1's market closes for bars 4..6
    with torch.no_grad():
        out, _, diag = block(x, mask, readout=True)
    assert torch.equal(out[:, 4:7, 1], x[:, 4:7, 1]), "a closed bar's output must be its input"
    embeddings = diag.embeddings[:, :, 1]  # (B, T, E), a function of asset 1's state h_t alone
    for t in (4, 5, 6):
        assert torch.equal(embeddings[:, t], embeddings[:, 3]), f"state of asset 1 moved at closed bar {t}"
    assert not torch.equal(embeddings[:, 7], embeddings[:, 6]), "the state must move again when it reopens"
    assert not torch.equal(diag.embeddings[:, 5, 0], diag.embeddings[:, 4, 0]), "open assets keep moving"


def test_each_assets_stream_ignores_the_other_assets():
    block = make_block()
    x, mask = random_inputs()
    x_changed = x.clone()
    x_changed[:, :, 1] += torch.randn_like(x_changed[:, :, 1])
    with torch.no_grad():
        before, after = block(x, mask)[0], block(x_changed, mask)[0]
    assert torch.equal(before[:, :, [0, 2]], after[:, :, [0, 2]])
    assert not torch.allclose(before[:, :, 1], after[:, :, 1])


def test_initialisation_follows_mamba_and_s4d_real():
    config = small_config(d_model=32, dt_min=1e-3, dt_max=1e-1)
    torch.manual_seed(0)
    block = SelectiveSSMBlock(config)
    dt_at_init = F.softplus(block.dt_proj.bias)
    assert dt_at_init.min() >= config.dt_min * (1 - 1e-6) and dt_at_init.max() <= config.dt_max * (1 + 1e-6)
    A = block.decay_rates()
    assert A.shape == (config.n_assets * config.d_inner, config.d_state)
    expected = -torch.arange(1, config.d_state + 1, dtype=A.dtype).expand_as(A)
    torch.testing.assert_close(A, expected)
    with torch.no_grad():
        block.A_log.add_(torch.randn_like(block.A_log) * 5)  # whatever training does, A stays negative
    assert (block.decay_rates() < 0).all()


def test_delta_is_clamped_and_zero_at_closed_bars():
    block = make_block(dtype=torch.float32)
    x, mask = random_inputs(dtype=torch.float32)
    with torch.no_grad():
        block.dt_proj.bias.fill_(50.0)  # softplus(50) = 50, far above the clamp
        delta = block.scan_inputs(x * 100, mask)[0].delta
    lo, hi = block.dt_clamp
    assert torch.equal(delta[~mask], torch.zeros_like(delta[~mask]))
    assert delta[mask].max() == hi and delta[mask].min() >= lo


def test_step_matches_forward_bar_by_bar_with_closed_bars():
    block = make_block()
    x, mask = random_inputs(length=12)
    with torch.no_grad():
        full, final_state, diag = block(x, mask, return_state=True, readout=True)
        batch, D = x.shape[0], block.n_assets * block.d_inner
        state = block.init_state(batch, dtype=x.dtype)
        assert torch.equal(state.conv_buffer, torch.zeros(batch, D, block.d_conv - 1, dtype=x.dtype))
        assert torch.equal(state.ssm_state, torch.zeros(batch, D, block.d_state, dtype=x.dtype))
        for t in range(x.shape[1]):
            bar = slice(t, t + 1)  # step takes one bar in the window's layout, (B, T=1, A, .)
            out_t, state, diag_t = block.step(x[:, bar], mask[:, bar], state, readout=True)
            torch.testing.assert_close(out_t, full[:, bar], rtol=1e-10, atol=1e-12)
            torch.testing.assert_close(diag_t.embeddings, diag.embeddings[:, bar], rtol=1e-10, atol=1e-12)
            torch.testing.assert_close(diag_t.delta, diag.delta[:, bar], rtol=1e-10, atol=1e-12)
            torch.testing.assert_close(diag_t.effective_lookback, diag.effective_lookback[:, bar], rtol=1e-10,
                                       atol=1e-12, equal_nan=True)
    torch.testing.assert_close(state.ssm_state, final_state.ssm_state, rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(state.conv_buffer, final_state.conv_buffer, rtol=1e-10, atol=1e-12)


def test_forward_continues_from_a_state_like_one_long_window():
    block = make_block()
    x, mask = random_inputs(length=14)
    with torch.no_grad():
        whole = block(x, mask)[0]
        first, state, _ = block(x[:, :6], mask[:, :6], return_state=True)
        second = block(x[:, 6:], mask[:, 6:], state)[0]
    torch.testing.assert_close(torch.cat([first, second], dim=1), whole, rtol=1e-10, atol=1e-12)


def test_effective_lookback_is_the_half_life_of_the_slowest_state():
    block = make_block()
    x, mask = random_inputs()
    with torch.no_grad():
        _, _, diag = block(x, mask, readout=True)
    slowest = block.decay_rates().abs().amin(-1).view(block.n_assets, block.d_inner)
    expected = math.log(2) / (diag.delta * slowest)
    torch.testing.assert_close(diag.effective_lookback[mask], expected[mask])
    assert diag.effective_lookback[~mask].isnan().all()


def test_regime_embedding_layout():
    h = torch.randn(2, 5, 3, 8, 4)  # (B, T, A, Di, N)
    emb = regime_embedding(h)
    assert emb.shape == (2, 5, 3, 2 * 4 + 8)
    torch.testing.assert_close(emb[..., :4], h.mean(-2))
    torch.testing.assert_close(emb[..., 4:8], h.pow(2).mean(-2).sqrt())
    torch.testing.assert_close(emb[..., 8:], h.mean(-1))


def test_implicit_attention_matches_a_brute_force_product_and_reproduces_the_scan():
    block = make_block()
    x, mask = random_inputs(length=10)
    asset, t = 2, 9
    with torch.no_grad():
        alpha = block.implicit_attention(x, mask, asset)  # (B, Di, T)
        s, _ = block.scan_inputs(x, mask)
    A = s.A.view(block.n_assets, block.d_inner, block.d_state)[asset]  # (Di, N)
    delta, B, C = s.delta[:, :, asset], s.B[:, :, asset], s.C[:, :, asset]
    brute = torch.zeros_like(alpha)
    for past in range(t + 1):
        decay = torch.ones(x.shape[0], block.d_inner, block.d_state, dtype=x.dtype)
        for r in range(past + 1, t + 1):
            decay = decay * torch.exp(delta[:, r].unsqueeze(-1) * A)
        brute[:, :, past] = (C[:, t].unsqueeze(1) * decay * B[:, past].unsqueeze(1)).sum(-1) * delta[:, past]
    torch.testing.assert_close(alpha, brute, rtol=1e-10, atol=1e-14)
    # The hidden attention is the scan: y_t = sum_s alpha[., s] u_s.
    u = s.u[:, :, asset]
    y = selective_scan_reference(u, delta, A, B.unsqueeze(2), C.unsqueeze(2)).y[:, t]
    torch.testing.assert_close((alpha * u.transpose(1, 2)).sum(-1), y, rtol=1e-10, atol=1e-12)


def test_under_bf16_autocast_the_scan_runs_in_float32(monkeypatch):
    seen = []

    def recording_scan(u, delta, A, B, C, h0=None, **kwargs):
        seen.append({t.dtype for t in (u, delta, A, B, C)})
        return selective_scan_reference(u, delta, A, B, C, h0, **kwargs)

    monkeypatch.setattr(ssm_module, "selective_scan", recording_scan)
    block = make_block(dtype=torch.float32)
    x, mask = random_inputs(dtype=torch.float32)
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        out, _, _ = block(x, mask)
    assert seen == [{torch.float32}]
    assert torch.isfinite(out).all()


def test_step_takes_one_bar_and_starts_from_an_empty_past_without_a_state():
    block = make_block()
    x, mask = random_inputs(length=3)
    with torch.no_grad():
        first = block(x[:, :1], mask[:, :1])[0]
        torch.testing.assert_close(block.step(x[:, :1], mask[:, :1])[0], first, rtol=1e-10, atol=1e-12)
        with pytest.raises(ValueError, match="one bar"):
            block.step(x, mask)


def test_the_ssm_dynamics_are_tagged_for_no_weight_decay_where_they_are_defined():
    """A_log, D and Delta's bias carry mamba.py's `_no_weight_decay` tag (the optimiser's groups read it); every
    weight matrix, norm gain and conv weight does not. The tag survives a dtype change."""
    block = make_block(dtype=torch.float32).double()
    tagged = sorted(name for name, p in block.named_parameters() if getattr(p, "_no_weight_decay", False))
    assert tagged == ["A_log", "D", "dt_proj.bias"]
