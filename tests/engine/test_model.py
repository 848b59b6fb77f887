"""The hybrid model as a whole: one model in two modes, strictly causal, honest heads and losses, learns a lead-lag."""
from __future__ import annotations

import dataclasses
import json

import pytest
import torch
import torch.nn.functional as F

from engine.model.config import ModelConfig
from engine.model.heads import monotone_quantiles
from engine.model.hybrid import HybridModel, ModelOutput
from engine.model.losses import (
    LossWeights,
    direction_loss,
    multitask_loss,
    pinball_loss,
    volatility_loss,
)

N_ASSETS, N_FEATURES = 3, 5


def small_config(**overrides) -> ModelConfig:
    """A small plain model (no mean head, no lead path); the tests of those parts switch them on."""
    settings = dict(n_assets=N_ASSETS, n_features=N_FEATURES, d_model=16, d_state=4, d_conv=3, n_heads=2, max_lag=3,
                    layer_pattern=("ssm", "ssm", "attn", "ssm", "attn"), horizons=(1, 5), dropout=0.0,
                    point_head=False, lead_path=False)
    settings.update(overrides)
    return ModelConfig(**settings)


def make_model(seed: int = 0, dtype=torch.float64, **overrides) -> HybridModel:
    torch.manual_seed(seed)
    return HybridModel(small_config(**overrides)).to(dtype).eval()


def random_panel(batch=2, length=12, closed_fraction=0.25, seed=1, dtype=torch.float64):
    generator = torch.Generator().manual_seed(seed)
    x = torch.randn(batch, N_ASSETS, length, N_FEATURES, generator=generator, dtype=dtype)
    mask = torch.rand(batch, N_ASSETS, length, generator=generator) >= closed_fraction
    mask[:, :, 0] = True
    mask[0, 2, 4:8] = False  # a closed stretch (a weekend) for one equity
    return x, mask


def every_output(output: ModelOutput) -> dict[str, torch.Tensor]:
    """Every per-bar tensor a caller can read, keyed by name; the time axis is 2, except attention's 1."""
    d = output.diagnostics
    tensors = {"quantiles": output.quantiles, "direction_logit": output.direction_logit, "log_vol": output.log_vol}
    if d is not None:
        tensors |= {"embeddings": d.embeddings, "delta": d.delta, "effective_lookback": d.effective_lookback}
        tensors |= {f"attention[{i}]": a for i, a in d.attention_by_layer.items()}
    return tensors


def time_slice(name: str, tensor: torch.Tensor, bars: slice) -> torch.Tensor:
    return tensor[:, bars] if name.startswith("attention") else tensor[:, :, bars]


# ----- configuration -------------------------------------------------------------------------------------------


def test_default_model_fits_the_cpu_parameter_budget():
    count = HybridModel(ModelConfig(n_assets=3)).num_parameters()
    assert 100_000 <= count <= 300_000, count


def test_config_survives_a_json_round_trip():
    config = ModelConfig(n_assets=2, horizons=(1, 3), layer_pattern=("ssm", "attn"), lead_features=None)
    restored = ModelConfig.from_dict(json.loads(json.dumps(config.to_dict())))
    assert restored == config
    assert config.dt_rank == 4 and config.d_inner == 128


@pytest.mark.parametrize(
    "overrides, message",
    [
        (dict(quantiles=(0.5, 0.1)), "strictly increasing"),
        (dict(layer_pattern=("ssm", "mlp")), "layer_pattern"),
        (dict(dt_min=0.5, dt_max=0.1), "dt_min"),
        (dict(horizons=(0,)), "horizons"),
    ],
)
def test_bad_config_is_refused_with_the_reason(overrides, message):
    with pytest.raises(ValueError, match=message):
        ModelConfig(**overrides)


def test_weights_round_trip_through_safetensors(tmp_path):
    from safetensors.torch import load_file, save_file

    model = make_model(dtype=torch.float32)
    save_file(model.state_dict(), tmp_path / "weights.safetensors")
    restored = HybridModel(ModelConfig.from_dict(json.loads(json.dumps(model.config.to_dict())))).eval()
    restored.load_state_dict(load_file(tmp_path / "weights.safetensors"))
    x, mask = random_panel(dtype=torch.float32)
    assert torch.equal(restored(x, mask).quantiles, model(x, mask).quantiles)


def test_unknown_config_keys_are_refused():
    with pytest.raises(ValueError, match="unknown keys"):
        ModelConfig.from_dict({"d_model": 32, "n_layer": 4})
    with pytest.raises(ValueError, match="loss_weights is now engine.training.config.TrainConfig.loss_weights"):
        ModelConfig.from_dict({"d_model": 32, "loss_weights": {"quantile": 1.0}})


def test_the_config_is_architecture_only_and_its_defaults_are_the_shipped_recipes():
    from engine.training.presets import demo_config

    assert "loss_weights" not in ModelConfig().to_dict()  # a training knob: TrainConfig's
    recipe = demo_config("1h").model
    for name in ("point_head", "lead_path", "lead_features", "shared_ssm"):
        assert getattr(ModelConfig(), name) == getattr(recipe, name), name


# ----- shapes, inputs, determinism -----------------------------------------------------------------------------


def test_output_and_diagnostic_shapes():
    model = make_model()
    c = model.config
    x, mask = random_panel(length=10)
    out = model(x, mask, return_diagnostics=True, attention_per_head=True)
    B, A, T, H, Q = 2, N_ASSETS, 10, len(c.horizons), len(c.quantiles)
    assert out.quantiles.shape == (B, A, T, H, Q)
    assert out.direction_logit.shape == out.log_vol.shape == (B, A, T, H)
    d = out.diagnostics
    assert d.embeddings.shape == (B, A, T, c.embedding_dim) and c.embedding_dim <= 256
    assert d.delta.shape == d.effective_lookback.shape == (B, A, T, c.d_inner)
    assert d.attention.shape == (B, T, A, A, c.max_lag + 1)
    assert sorted(d.attention_by_layer) == [2, 4] and d.attention is d.attention_by_layer[2]
    assert d.attention_per_head[4].shape == (B, T, A, c.n_heads, A, c.max_lag + 1)
    assert model(x, mask).diagnostics is None


def test_same_seed_gives_bit_identical_outputs():
    x, mask = random_panel(dtype=torch.float32)
    first = every_output(make_model(seed=7, dtype=torch.float32)(x, mask, return_diagnostics=True))
    second = every_output(make_model(seed=7, dtype=torch.float32)(x, mask, return_diagnostics=True))
    other = every_output(make_model(seed=8, dtype=torch.float32)(x, mask, return_diagnostics=True))
    for name in first:
        assert torch.equal(first[name].nan_to_num(), second[name].nan_to_num()), name
    assert not torch.equal(first["quantiles"], other["quantiles"])


def test_features_at_closed_bars_are_ignored_even_when_missing():
    model = make_model()
    x, mask = random_panel()
    x_nan = x.clone()
    x_nan[~mask] = float("nan")
    clean = every_output(model(x, mask, return_diagnostics=True))
    with_nan = every_output(model(x_nan, mask, return_diagnostics=True))
    for name in clean:
        torch.testing.assert_close(with_nan[name], clean[name], equal_nan=True, msg=name)
    assert torch.isfinite(with_nan["quantiles"]).all()


def test_bad_inputs_say_what_and_where():
    model = make_model()
    x, mask = random_panel()
    x[1, 2, 3, 0] = float("nan")
    mask[1, 2, 3] = True
    with pytest.raises(ValueError, match="batch 1, asset 2, bar 3"):
        model(x, mask)
    with pytest.raises(ValueError, match="assets=3"):
        model(x[:, :2], mask[:, :2])
    with pytest.raises(ValueError, match="mask must be bool"):
        model(x.nan_to_num(), mask.float())
    with pytest.raises(ValueError, match="state is for batch 4"):
        model.step(x[:, :, 0].nan_to_num(), mask[:, :, 0], model.init_state(4))


def test_runs_under_bf16_autocast_in_both_modes():
    model = make_model(dtype=torch.float32)
    x, mask = random_panel(dtype=torch.float32)
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        full = model(x, mask, return_diagnostics=True)
        stepped, _ = model.step(x[:, :, 0], mask[:, :, 0], model.init_state(x.shape[0]), return_diagnostics=True)
    for output in (full, stepped):
        assert all(torch.isfinite(t).all() for t in (output.quantiles, output.direction_logit, output.log_vol))
        assert output.diagnostics.embeddings.dtype == torch.float32  # read from the float32 scan state


# ----- one model, two modes ------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "dtype, tolerance, shared",
    [(torch.float64, 1e-10, False), (torch.float32, 1e-5, False), (torch.float64, 1e-10, True)],
)
def test_step_mode_matches_the_full_sequence_bar_by_bar(dtype, tolerance, shared):
    model = make_model(dtype=dtype, shared_ssm=shared)
    x, mask = random_panel(length=12, dtype=dtype)
    with torch.no_grad():
        full = every_output(model(x, mask, return_diagnostics=True))
        state = model.init_state(x.shape[0])
        for t in range(x.shape[2]):
            output, state = model.step(x[:, :, t], mask[:, :, t], state, return_diagnostics=True)
            stepped = every_output(output)
            assert stepped.keys() == full.keys()
            for name, value in stepped.items():
                expected = time_slice(name, full[name], slice(t, t + 1))
                torch.testing.assert_close(value, expected, rtol=tolerance, atol=tolerance, equal_nan=True,
                                           msg=lambda m: f"{name} at bar {t}: {m}")


def test_a_state_warmed_on_history_continues_like_the_full_sequence():
    model = make_model()
    x, mask = random_panel(length=14)
    warm = 9
    with torch.no_grad():
        full = every_output(model(x, mask, return_diagnostics=True))
        history = model(x[:, :, :warm], mask[:, :, :warm], return_state=True)
        state = history.state
        for t in range(warm, x.shape[2]):
            output, state = model.step(x[:, :, t], mask[:, :, t], state, return_diagnostics=True)
            for name, value in every_output(output).items():
                torch.testing.assert_close(value, time_slice(name, full[name], slice(t, t + 1)), rtol=1e-10,
                                           atol=1e-10, equal_nan=True, msg=name)
        # ... and a long history can go through forward in chunks.
        chunked = model(x[:, :, warm:], mask[:, :, warm:], state=history.state, return_diagnostics=True)
    for name, value in every_output(chunked).items():
        torch.testing.assert_close(value, time_slice(name, full[name], slice(warm, None)), rtol=1e-10, atol=1e-10,
                                   equal_nan=True, msg=name)


@pytest.mark.parametrize("t", [0, 5, 10])
def test_nothing_after_bar_t_changes_any_output_or_diagnostic_at_or_before_t(t):
    model = make_model()
    x, mask = random_panel(length=12)
    x_future, mask_future = x.clone(), mask.clone()
    x_future[:, :, t + 1 :] = torch.randn_like(x_future[:, :, t + 1 :]) * 5
    mask_future[:, :, t + 1 :] = ~mask_future[:, :, t + 1 :]
    with torch.no_grad():
        now = every_output(model(x, mask, return_diagnostics=True))
        changed = every_output(model(x_future, mask_future, return_diagnostics=True))
    past = slice(0, t + 1)
    for name in now:
        torch.testing.assert_close(time_slice(name, changed[name], past), time_slice(name, now[name], past),
                                   rtol=1e-12, atol=1e-12, equal_nan=True, msg=name)
    assert not torch.allclose(changed["quantiles"][:, :, t + 1 :], now["quantiles"][:, :, t + 1 :])


# ----- diagnostics ---------------------------------------------------------------------------------------------


def test_regime_embeddings_hold_still_while_a_market_is_closed():
    model = make_model()
    x, mask = random_panel()  # asset 2 of batch 0 is closed for bars 4..7
    d = model(x, mask, return_diagnostics=True).diagnostics
    for t in range(4, 8):
        assert torch.equal(d.embeddings[0, 2, t], d.embeddings[0, 2, 3])
    assert (d.delta[0, 2, 4:8] == 0).all() and d.effective_lookback[0, 2, 4:8].isnan().all()
    assert (d.effective_lookback[mask] > 0).all()


def test_implicit_attention_sees_only_the_past_and_nothing_at_closed_bars():
    model = make_model()
    x, mask = random_panel(length=12)
    t = 8
    alpha = model.implicit_attention(x, mask, asset=2, t=t)
    assert alpha.shape == (2, model.config.d_inner, t + 1)
    x_future = x.clone()
    x_future[:, :, t + 1 :] += 10
    torch.testing.assert_close(model.implicit_attention(x_future, mask, asset=2, t=t), alpha, rtol=0, atol=0)
    assert (alpha[0, :, 4:8] == 0).all(), "closed bars take no step (delta = 0), so nothing of them is remembered"
    assert alpha[0, :, :4].abs().sum() > 0
    summary = model.implicit_attention(x, mask, asset=2, t=t, reduce=True)
    torch.testing.assert_close(summary, alpha.abs().mean(dim=1))
    with pytest.raises(ValueError, match="t=12"):
        model.implicit_attention(x, mask, asset=0, t=12)


# ----- heads ---------------------------------------------------------------------------------------------------


def test_quantiles_never_cross_even_for_extreme_head_outputs():
    model = make_model(quantiles=(0.05, 0.25, 0.5, 0.75, 0.95))
    with torch.no_grad():
        model.heads.proj.weight.mul_(1000.0)
    x, mask = random_panel()
    quantiles = model(x * 50, mask).quantiles
    assert (quantiles.diff(dim=-1) >= 0).all()
    assert (quantiles.diff(dim=-1) > 0).float().mean() > 0.5


def test_the_heads_name_their_columns_as_forward_reads_them():
    """ForecastHeads.column says where each head sits in the projection (engine.training.head_scale scales by
    it): with zero weights every output is its bias, so each named column must come out where it says."""
    model = make_model(point_head=True, lead_path=False, quantiles=(0.1, 0.25, 0.5, 0.75, 0.9))
    heads = model.heads
    assert heads.n_columns == heads.proj.weight.shape[-1] == 2 * (5 + 3)
    with torch.no_grad():
        heads.proj.weight.zero_()
        heads.proj.bias.copy_(torch.arange(heads.n_columns, dtype=heads.proj.bias.dtype).expand_as(heads.proj.bias))
        x, mask = random_panel(length=3)
        out = model(x, mask)
    for j in range(2):
        assert (out.direction_logit[..., j] == heads.column(j, "direction_logit")).all()
        assert (out.log_vol[..., j] == heads.column(j, "log_vol")).all()
        assert (out.mean[..., j] == heads.column(j, "mean")).all()
        assert (out.quantiles[..., j, heads.anchor] == heads.column(j, "median")).all()
        assert heads.column(j, "quantile", heads.anchor) == heads.column(j, "median") == j * heads.width + 2
    with pytest.raises(ValueError, match="no 'mean' head"):
        make_model().heads.column(0, "mean")
    with pytest.raises(ValueError, match="horizon_index 2"):
        heads.column(2, "log_vol")


def test_monotone_quantiles_keep_the_median_slot_as_is():
    raw = torch.randn(100, 5) * 10
    q = monotone_quantiles(raw, anchor=2)
    assert torch.equal(q[:, 2], raw[:, 2])
    assert (q.diff(dim=-1) >= 0).all()
    torch.testing.assert_close(q[:, 3] - q[:, 2], F.softplus(raw[:, 3]))
    torch.testing.assert_close(q[:, 2] - q[:, 1], F.softplus(raw[:, 1]))


# ----- weight decay --------------------------------------------------------------------------------------------


def test_the_optimisers_no_decay_group_is_what_the_layers_tag():
    """engine.training.loop.parameter_groups reads the `_no_weight_decay` tags, not a list of names: the SSM
    dynamics of every SSM layer are exempt when decay_ssm_dynamics is False, a tag anywhere else is honoured too,
    and with nothing exempt there is one group (the layout of the shipped runs' optimiser state)."""
    from engine.training.config import TrainConfig
    from engine.training.loop import parameter_groups

    model = make_model()
    names = {id(p): n for n, p in model.named_parameters()}
    config = TrainConfig(model=model.config, weight_decay=0.5, min_train=128)
    (everything,) = parameter_groups(model, config)
    assert [id(p) for p in everything["params"]] == [id(p) for p in model.parameters()]
    keep_dynamics = dataclasses.replace(config, decay_ssm_dynamics=False)
    decayed, exempt = parameter_groups(model, keep_dynamics)
    assert sorted(names[id(p)] for p in exempt["params"]) == sorted(
        f"layers.{i}.{leaf}" for i in (0, 1, 3) for leaf in ("A_log", "D", "dt_proj.bias"))
    assert exempt["weight_decay"] == 0.0 and decayed["weight_decay"] == 0.5
    assert len(decayed["params"]) + len(exempt["params"]) == len(list(model.parameters()))
    model.layers[2].lag_embedding._no_weight_decay = True  # a tag is all it takes
    assert "layers.2.lag_embedding" in {names[id(p)] for p in parameter_groups(model, keep_dynamics)[1]["params"]}
    attention_only = make_model(layer_pattern=("attn",))
    assert len(parameter_groups(attention_only, keep_dynamics)) == 1  # nothing tagged: nothing exempt


# ----- losses --------------------------------------------------------------------------------------------------


def test_pinball_loss_is_smallest_at_the_true_quantile():
    y = torch.distributions.Gamma(2.0, 1.0).sample((20_000,))  # skewed: quantiles differ from mean +- k*sd
    valid = torch.ones_like(y, dtype=torch.bool)
    for tau in (0.1, 0.5, 0.9):
        best = torch.quantile(y, tau)
        at_best = pinball_loss(best.expand(20_000, 1), y, [tau], valid)
        for shift in (-0.2, 0.2):
            assert pinball_loss((best + shift).expand(20_000, 1), y, [tau], valid) > at_best, (tau, shift)


def test_volatility_loss_is_minimised_by_the_true_variance_under_a_noisy_proxy():
    torch.manual_seed(0)
    true_vol = torch.rand(50_000) * 2 + 0.5
    proxy = (true_vol * torch.randn(50_000)).abs()  # |return| as the proxy: very noisy, E[proxy^2] = true variance
    valid = torch.ones_like(true_vol, dtype=torch.bool)
    truth = volatility_loss(true_vol.log(), proxy, valid)
    for scale in (0.8, 1.25):
        assert volatility_loss((true_vol * scale).log(), proxy, valid) > truth, scale
    # The constant forecast that minimises QLIKE is sqrt(mean proxy^2): zero gradient there.
    log_vol = (0.5 * proxy.square().mean().log()).expand(50_000).clone().requires_grad_(True)
    volatility_loss(log_vol, proxy, valid).backward()
    assert log_vol.grad.sum().abs() < 1e-4


def test_invalid_targets_are_ignored_even_when_nan():
    generator = torch.Generator().manual_seed(0)
    shape = (2, 3, 6, 2)
    output = ModelOutput(
        quantiles=torch.randn(*shape, 3, generator=generator).sort(-1).values.requires_grad_(True),
        direction_logit=torch.randn(*shape, generator=generator).requires_grad_(True),
        log_vol=torch.randn(*shape, generator=generator).requires_grad_(True),
        quantile_levels=(0.1, 0.5, 0.9), horizons=(1, 5),
    )
    ret = torch.randn(*shape, generator=generator)
    valid = torch.rand(*shape, generator=generator) > 0.4
    targets = {"ret": ret, "up": (ret > 0).float(), "vol": ret.abs(), "valid": valid}
    spoiled = {key: value.clone() for key, value in targets.items()}
    for key in ("ret", "up", "vol"):
        spoiled[key][~valid] = float("nan")
    weights = LossWeights(quantile=1.0, direction=0.5, volatility=2.0)
    total, parts = multitask_loss(output, targets, weights)
    total_spoiled, _ = multitask_loss(output, spoiled, weights)
    torch.testing.assert_close(total_spoiled, total)
    total_spoiled.backward()
    assert all(torch.isfinite(t.grad).all() for t in (output.quantiles, output.direction_logit, output.log_vol))
    torch.testing.assert_close(total, parts["quantile"] + 0.5 * parts["direction"] + 2.0 * parts["volatility"])
    expected_bce = F.binary_cross_entropy_with_logits(output.direction_logit[valid], targets["up"][valid])
    torch.testing.assert_close(direction_loss(output.direction_logit, targets["up"], valid), expected_bce)


def test_loss_refuses_targets_that_do_not_fit():
    model = make_model(dtype=torch.float32)
    x, mask = random_panel(dtype=torch.float32)
    output = model(x, mask)
    shape = output.direction_logit.shape
    good = {"ret": torch.zeros(shape), "up": torch.zeros(shape), "vol": torch.ones(shape),
            "valid": torch.ones(shape, dtype=torch.bool)}
    with pytest.raises(ValueError, match="lack \\['vol'\\]"):
        multitask_loss(output, {k: v for k, v in good.items() if k != "vol"}, LossWeights())
    with pytest.raises(ValueError, match="targets\\['ret'\\] has shape"):
        multitask_loss(output, good | {"ret": torch.zeros(shape[:-1])}, LossWeights())


# ----- learning ------------------------------------------------------------------------------------------------

PLANTED_LAG = 2


def lead_lag_batch(generator: torch.Generator, batch: int = 16, length: int = 40):
    """Asset 1's next-bar return is asset 0's return PLANTED_LAG bars before the forecast bar; the rest is noise.

    Feature 0 of bar t is the return that closed at bar t, so the forecast made at bar t of r1[t+1] = r0[t-2] can
    only come from asset 0's features at lag 2.
    """
    returns = torch.randn(batch, 2, length + 1, generator=generator)
    returns[:, 1, PLANTED_LAG + 1 :] = returns[:, 0, : length - PLANTED_LAG]
    x = torch.randn(batch, 2, length, 4, generator=generator) * 0.1
    x[..., 0] = returns[:, :, :length]
    mask = torch.ones(batch, 2, length, dtype=torch.bool)
    ret = returns[:, :, 1:].unsqueeze(-1)  # (B, A, T, H=1)
    valid = torch.zeros_like(ret, dtype=torch.bool)
    valid[:, 1, PLANTED_LAG + 1 :] = True  # only asset 1 is predictable
    return x, mask, {"ret": ret, "up": (ret > 0).float(), "vol": ret.abs(), "valid": valid}


def test_training_finds_the_planted_lead_lag():
    torch.manual_seed(0)
    config = ModelConfig(n_assets=2, n_features=4, d_model=16, d_state=4, n_heads=2, max_lag=4, horizons=(1,),
                         layer_pattern=("ssm", "attn"), dropout=0.0, point_head=False, lead_path=False)
    loss_weights = LossWeights()
    model = HybridModel(config)
    optimiser = torch.optim.Adam(model.parameters(), lr=1e-2)
    x_eval, mask_eval, targets_eval = lead_lag_batch(torch.Generator().manual_seed(99), batch=64)

    def evaluate():
        with torch.no_grad():
            output = model(x_eval, mask_eval, return_diagnostics=True)
            total, parts = multitask_loss(output, targets_eval, loss_weights)
            alpha = output.diagnostics.attention[:, PLANTED_LAG + 1 :, 1].mean(dim=(0, 1))  # (A_src, K+1)
        return total, parts, alpha

    total_before, parts_before, _ = evaluate()
    generator = torch.Generator().manual_seed(0)
    for _ in range(120):
        x, mask, targets = lead_lag_batch(generator)
        loss, _ = multitask_loss(model(x, mask), targets, loss_weights)
        optimiser.zero_grad()
        loss.backward()
        optimiser.step()
    total_after, parts_after, alpha = evaluate()

    assert total_after < total_before
    assert parts_after["quantile"] < 0.25 * parts_before["quantile"]
    assert parts_after["direction"] < 0.25 * parts_before["direction"]
    source, lag = divmod(int(alpha.argmax()), alpha.shape[1])
    assert (source, lag) == (0, PLANTED_LAG), alpha
    assert alpha[0, PLANTED_LAG] > 0.5, alpha


def test_the_point_head_forecasts_a_mean_in_both_modes_and_its_loss_is_the_squared_error():
    model = make_model(point_head=True)
    x, mask = random_panel(length=8)
    with torch.no_grad():
        full = model(x, mask)
        state = model.init_state(x.shape[0])
        for t in range(x.shape[2]):
            output, state = model.step(x[:, :, t], mask[:, :, t], state)
            torch.testing.assert_close(output.mean, full.mean[:, :, t : t + 1], rtol=1e-10, atol=1e-10)
    assert full.mean.shape == full.direction_logit.shape
    assert make_model().__call__(x, mask).mean is None, "without a point head there is no mean"
    ret = torch.randn(full.mean.shape, dtype=full.mean.dtype)
    valid = torch.rand(full.mean.shape) > 0.3
    targets = {"ret": ret, "up": (ret > 0).to(ret.dtype), "vol": ret.abs(), "valid": valid}
    total, parts = multitask_loss(full, targets, LossWeights(quantile=1.0, direction=1.0, volatility=1.0, point=3.0))
    torch.testing.assert_close(parts["point"], (ret - full.mean)[valid].square().mean())
    torch.testing.assert_close(total, parts["quantile"] + parts["direction"] + parts["volatility"]
                               + 3.0 * parts["point"])


def test_the_lead_path_shifts_the_whole_fan_and_the_mean_alike_in_both_modes():
    """ModelConfig.lead_path: a linear map from the first attention layer's update to a location shift. It starts
    at zero (the model is then the one without it) and, once trained, moves every quantile and the mean by the
    same amount; step mode gives the same numbers as the full sequence."""
    plain = make_model(point_head=True)
    with_lead = make_model(point_head=True, lead_path=True)
    x, mask = random_panel(length=8)
    missing, unexpected = with_lead.load_state_dict(plain.state_dict(), strict=False)
    assert missing == ["heads.lead.weight"] and unexpected == []
    with torch.no_grad():
        torch.testing.assert_close(with_lead(x, mask).quantiles, plain(x, mask).quantiles)
        with_lead.heads.lead.weight.normal_()
        full = with_lead(x, mask)
        shift = full.mean - plain(x, mask).mean
        torch.testing.assert_close(full.quantiles - plain(x, mask).quantiles, shift.unsqueeze(-1).expand_as(full.quantiles))
        assert shift.abs().max() > 1e-3
        state = with_lead.init_state(x.shape[0])
        for t in range(x.shape[2]):
            output, state = with_lead.step(x[:, :, t], mask[:, :, t], state)
            torch.testing.assert_close(output.mean, full.mean[:, :, t : t + 1], rtol=1e-10, atol=1e-10)
            torch.testing.assert_close(output.quantiles, full.quantiles[:, :, t : t + 1], rtol=1e-10, atol=1e-10)
        # ... and through forward in chunks, as forecasts over a long history are made
        first = with_lead(x[:, :, :5], mask[:, :, :5], return_state=True)
        rest = with_lead(x[:, :, 5:], mask[:, :, 5:], state=first.state)
        torch.testing.assert_close(torch.cat([first.mean, rest.mean], dim=2), full.mean, rtol=1e-10, atol=1e-10)
        # ... and it is causal: other bars after t change nothing at or before t
        future = x.clone()
        future[:, :, 6:] += 3.0
        torch.testing.assert_close(with_lead(future, mask).mean[:, :, :6], full.mean[:, :, :6], rtol=1e-12, atol=1e-12)
    with pytest.raises(ValueError, match="lead_path reads the first attention layer.*set lead_path=False"):
        small_config(lead_path=True, layer_pattern=("ssm",))
    with pytest.raises(ValueError, match="lead_features"):
        small_config(lead_path=True, lead_features=N_FEATURES + 1)
    reading_returns = make_model(point_head=True, lead_path=True, lead_features=1)
    assert reading_returns.heads.lead.weight.shape == (N_ASSETS, small_config().n_heads, 2)  # heads x 1 feature
    weights = torch.rand(x.shape[0], x.shape[2], N_ASSETS, small_config().n_heads, N_ASSETS, small_config().max_lag + 1,
                         dtype=x.dtype)
    moved = x.clone()
    moved[..., 1:] += 1.0  # every feature but the first: the lead path does not read them
    lead_path = reading_returns.lead_path  # time-major like the layers: x (B, T, A, F), mask (B, T, A)
    read, _ = lead_path(x.transpose(1, 2), mask.transpose(1, 2), weights)
    torch.testing.assert_close(lead_path(moved.transpose(1, 2), mask.transpose(1, 2), weights)[0], read)
    moved[..., 0] += 1.0
    assert not torch.allclose(lead_path(moved.transpose(1, 2), mask.transpose(1, 2), weights)[0], read)


# ----- the batch-1 fast path of step mode (live stepping) -----------------------------------------------------


@pytest.mark.parametrize("dtype, tolerance", [(torch.float64, 1e-10), (torch.float32, 1e-5)])
@pytest.mark.parametrize("overrides", [{}, {"point_head": True, "lead_path": True}, {"shared_ssm": True}])
def test_the_batch_1_fast_step_matches_the_full_sequence(dtype, tolerance, overrides):
    model = make_model(dtype=dtype, **overrides)
    x, mask = random_panel(batch=1, length=14, dtype=dtype)
    x = x.masked_fill(~mask.unsqueeze(-1), float("nan"))  # closed bars' features are ignored on the fast path too
    with torch.inference_mode():
        full = model(x, mask)
        state = model.init_state(1)
        for t in range(x.shape[2]):
            output, state = model.step(x[:, :, t], mask[:, :, t], state)
            for name in ("quantiles", "direction_logit", "log_vol", "mean"):
                if getattr(full, name) is not None:
                    torch.testing.assert_close(getattr(output, name), getattr(full, name)[:, :, t : t + 1],
                                               rtol=tolerance, atol=tolerance, msg=f"{name} at bar {t}")
    # The fast path ran: it derives its weights once and keeps them on the layers.
    assert all("_derived_weights" in layer.__dict__ for layer in model.layers)


def test_fast_and_plain_steps_share_one_state_and_the_fast_path_sees_new_weights():
    model = make_model(point_head=True, lead_path=True)
    x, mask = random_panel(batch=1, length=10)
    with torch.no_grad():
        history = model(x[:, :, :6], mask[:, :, :6], return_state=True)
        state = history.state
        for t in range(6, 8):  # fast (batch 1, no grad) then plain (with diagnostics) from the fast path's state
            _, state = model.step(x[:, :, t], mask[:, :, t], state)
        plain, _ = model.step(x[:, :, 8], mask[:, :, 8], state, return_diagnostics=True)
        torch.testing.assert_close(plain.quantiles, model(x, mask).quantiles[:, :, 8:9], rtol=1e-10, atol=1e-10)
        # A weight changed in place (as an optimiser step does) is seen by the next fast step, not a stale copy.
        before, _ = model.step(x[:, :, 8], mask[:, :, 8], state)
        model.layers[0].in_proj.weight.mul_(1.5)
        model.layers[2].qkv.weight.mul_(0.5)
        fast, _ = model.step(x[:, :, 8], mask[:, :, 8], state)
        plain, _ = model.step(x[:, :, 8], mask[:, :, 8], state, return_diagnostics=True)
        assert not torch.allclose(fast.quantiles, before.quantiles)
        torch.testing.assert_close(fast.quantiles, plain.quantiles, rtol=1e-10, atol=1e-10)
        # ... and so are parameter objects replaced outright (load_state_dict(assign=True)).
        weights = {name: value.clone() * 1.1 for name, value in model.state_dict().items()}
        model.load_state_dict(weights, assign=True)
        fast, _ = model.step(x[:, :, 8], mask[:, :, 8], state)
        plain, _ = model.step(x[:, :, 8], mask[:, :, 8], state, return_diagnostics=True)
        torch.testing.assert_close(fast.quantiles, plain.quantiles, rtol=1e-10, atol=1e-10)
