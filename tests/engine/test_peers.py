"""The hybrid's neural peers: presets of the one training recipe, the shared output layout, exact chunked and step
modes, and checkpoints that reload as the model they hold."""
from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch

from engine.evaluation.predictions import load_predictions
from engine.model.checkpoint import load_checkpoint, read_manifest
from engine.model.config import ModelConfig
from engine.model.hybrid import HybridModel
from engine.model.peers import LSTMPeer, TransformerPeer, build_model
from engine.runtime import configure_cpu_threads
from engine.training.config import TrainConfig, default_model_config
from engine.training.loop import train_walk_forward
from engine.training.peer_presets import PRESETS, apply_preset
from storage.panel import Panel, demo_panel, panel_fingerprint

N_ROWS = 460


@pytest.fixture(autouse=True)
def one_thread():
    configure_cpu_threads(1)


def tiny_config() -> TrainConfig:
    model = dataclasses.replace(default_model_config(), d_model=8, d_state=4, n_heads=2, max_lag=2, point_head=True)
    return TrainConfig(model=model, n_folds=1, min_train=300, val_size=40, test_size=60, window=48, stride=48,
                       batch_size=4, max_epochs=1, patience=1, threads=1)


@pytest.fixture(scope="module")
def panel() -> Panel:
    full = demo_panel("1d").panel
    return Panel(ts=full.ts[:N_ROWS], symbols=full.symbols, fields={k: v[:N_ROWS].copy() for k, v in full.fields.items()},
                 observed=full.observed[:N_ROWS].copy())


@pytest.fixture(scope="module")
def runs(panel, tmp_path_factory):
    """Every preset trained one epoch on the same tiny panel and fold."""
    configure_cpu_threads(1)
    root = tmp_path_factory.mktemp("peers")
    results = {}
    for name in PRESETS:
        config = apply_preset(tiny_config(), name)
        results[name] = train_walk_forward(panel, config, interval="1d", fingerprint=panel_fingerprint(panel, "1d"),
                                           run_dir=root / name)
    return results


def test_every_preset_trains_on_the_same_fold_and_forecasts_in_the_shared_layout(runs):
    reference = runs["hybrid"]
    assert reference.outcome == "finished"
    for name, result in runs.items():
        assert result.outcome == "finished", name
        assert [(f.train, f.val, f.test) for f in result.folds] == [(f.train, f.val, f.test) for f in reference.folds]
        p, ref = result.predictions, reference.predictions
        assert np.array_equal(p.rows, ref.rows), name
        assert p.horizons == ref.horizons and p.quantile_levels == ref.quantile_levels, name
        for field in ("point", "quantiles", "prob_up", "volatility"):
            got, want = getattr(p, field), getattr(ref, field)
            assert got.shape == want.shape, (name, field)
            # forecasts exactly where the hybrid has them (fresh bars), finite there
            assert np.array_equal(np.isnan(got), np.isnan(want)), (name, field)
            assert np.isfinite(got[~np.isnan(want)]).all(), (name, field)
        assert np.all(np.diff(p.quantiles, axis=-1)[~np.isnan(p.quantiles[..., 1:])] >= 0), name  # fans never cross


def test_the_peers_are_the_models_they_claim_to_be(runs):
    kinds = {name: result.manifest.model_config["kind"] for name, result in runs.items()}
    assert kinds == {"hybrid": "hybrid", "pure_ssm": "hybrid", "late_fusion": "hybrid", "transformer": "transformer",
                     "lstm": "lstm", "cost_aware": "hybrid"}
    assert isinstance(runs["transformer"].model, TransformerPeer) and isinstance(runs["lstm"].model, LSTMPeer)
    assert "attn" not in runs["pure_ssm"].model.config.layer_pattern
    assert runs["late_fusion"].model.config.layer_pattern == ("ssm", "ssm", "attn")
    assert runs["cost_aware"].manifest.training["config"]["cost_aware_weight"] > 0
    assert runs["hybrid"].manifest.training["config"]["cost_aware_weight"] == 0
    # the same recipe: only the model (or the objective) differs
    base = runs["hybrid"].manifest.training["config"]
    for name in ("transformer", "lstm", "pure_ssm"):
        other = runs[name].manifest.training["config"]
        assert {k: v for k, v in other.items() if k != "model"} == {k: v for k, v in base.items() if k != "model"}


def test_a_saved_peer_reloads_as_itself_and_forecasts_what_training_stored(runs, panel):
    from engine.evaluation.predictions import forecast_span
    from engine.features import FeatureConfig, FeatureScaler, build_feature_set

    for name in ("transformer", "lstm"):
        run_dir = runs[name].run_dir
        weights, manifest = load_checkpoint(run_dir)
        model = build_model(ModelConfig.from_dict(manifest.model_config))
        model.load_state_dict(weights)
        assert type(model) is type(runs[name].model)
        scaler = FeatureScaler.from_dict(manifest.scaler)
        features = build_feature_set(panel, range(*scaler.fit_rows), FeatureConfig(), scaler=scaler)
        stored, _, _ = load_predictions(run_dir)
        again = forecast_span(model, features, range(int(stored.rows[0]), int(stored.rows[-1]) + 1),
                              torch.device("cpu"))
        assert np.allclose(again.prob_up, stored.prob_up, atol=1e-6, equal_nan=True), name


def test_a_manifest_without_a_kind_is_a_hybrid(runs):
    manifest = read_manifest(runs["hybrid"].run_dir)
    config = dict(manifest.model_config)
    config.pop("kind")
    assert isinstance(build_model(ModelConfig.from_dict(config)), HybridModel)


def small_peer(kind: str, seed: int, **sizes):
    """A fresh peer in eval mode, no dropout, seeded."""
    torch.manual_seed(seed)
    config = ModelConfig(d_state=4, n_heads=2, lead_path=False, kind=kind, dropout=0.0, **sizes)
    return build_model(config).eval()


@pytest.mark.parametrize("kind", ["transformer", "lstm"])
def test_a_peer_gives_the_same_numbers_over_a_window_in_chunks_and_bar_by_bar(kind):
    model = small_peer(kind, seed=0, n_assets=3, n_features=5, d_model=16, max_lag=6, point_head=True)
    x, mask = torch.randn(2, 3, 30, 5), torch.rand(2, 3, 30) > 0.25
    x[~mask] = float("nan")  # closed bars' features are ignored
    with torch.no_grad():
        whole = model(x, mask)
        first = model(x[:, :, :11], mask[:, :, :11], return_state=True)
        second = model(x[:, :, 11:], mask[:, :, 11:], state=first.state)
        state, stepped = model.init_state(2), []
        for t in range(30):
            out, state = model.step(x[:, :, t], mask[:, :, t], state)
            stepped.append(out.direction_logit)
    assert torch.isfinite(whole.quantiles).all()
    assert torch.allclose(torch.cat([first.quantiles, second.quantiles], 2), whole.quantiles, atol=1e-5)
    assert torch.allclose(torch.cat(stepped, 2), whole.direction_logit, atol=1e-5)


@pytest.mark.parametrize("kind", ["transformer", "lstm"])
def test_a_peer_sees_only_the_past_and_nothing_of_other_assets(kind):
    model = small_peer(kind, seed=1, n_assets=2, n_features=4, d_model=8, max_lag=4, point_head=False)
    x, mask = torch.randn(1, 2, 20, 4), torch.ones(1, 2, 20, dtype=torch.bool)
    changed = x.clone()
    changed[:, 0, 12:] += 5.0  # asset 0's future, from bar 12 on
    with torch.no_grad():
        a, b = model(x, mask).direction_logit, model(changed, mask).direction_logit
    assert torch.equal(a[:, 0, :12], b[:, 0, :12])  # no bar before 12 moved
    assert not torch.equal(a[:, 0, 12:], b[:, 0, 12:])
    assert torch.equal(a[:, 1], b[:, 1])  # one stream per asset: asset 1 never saw it


def test_presets_refuse_what_they_cannot_build():
    with pytest.raises(ValueError, match="unknown preset"):
        apply_preset(tiny_config(), "mamba2")
    with pytest.raises(ValueError, match="no lead path"):
        ModelConfig(kind="lstm", lead_path=True)
    with pytest.raises(ValueError, match="kind must be one of"):
        ModelConfig(kind="gru", lead_path=False)


def test_evaluate_scores_the_peers_beside_the_baselines_with_the_same_one_sided_tests(runs, panel):
    from engine.evaluation.run_scores import evaluate_run
    from storage.panel import LoadedPanel

    loaded = LoadedPanel(panel, "1d", (), "demo 1d, first rows (SYNTHETIC)", synthetic=True)
    peers = {"lstm": runs["lstm"].run_dir, "transformer": runs["transformer"].run_dir}
    table = evaluate_run(runs["hybrid"].run_dir, loaded, baselines=("zero",), write=False, peers=peers)
    assert set(table["model"]) == {"model", "peer: lstm", "peer: transformer", "zero"}
    lstm = table[(table["model"] == "peer: lstm") & (table["horizon"] == 1)].set_index(["asset", "metric"])["value"]
    for asset in panel.symbols:  # the hybrid against the peer, one-sided both ways, on the rows both forecast
        assert 0 <= lstm[(asset, "dm_p_better_brier")] <= 1 and 0 <= lstm[(asset, "dm_p_worse_brier")] <= 1
    with pytest.raises(Exception, match="other walk-forward folds|trained on data"):
        evaluate_run(runs["hybrid"].run_dir, loaded, baselines=("zero",), write=False,
                     peers={"elsewhere": _run_on_other_folds(panel, runs["hybrid"].run_dir.parent)})


def _run_on_other_folds(panel, root):
    config = dataclasses.replace(apply_preset(tiny_config(), "lstm"), test_size=50)
    train_walk_forward(panel, config, interval="1d", fingerprint=panel_fingerprint(panel, "1d"),
                       run_dir=root / "other_folds")
    return root / "other_folds"


def test_the_train_command_takes_a_preset():
    from engine.train import build_parser, config_from_args

    config = config_from_args(build_parser().parse_args(["--demo", "1d", "--preset", "transformer", "--window", "64"]))
    assert config.model.kind == "transformer" and config.model.max_lag == 63  # context = the training window
    assert config_from_args(build_parser().parse_args(["--demo", "1d"])).model.kind == "hybrid"


@pytest.mark.parametrize("interval", ["1h", "1d"])
def test_every_preset_applies_to_the_shipped_recipes(interval):
    from engine.training.presets import demo_config, general_config

    for base in (demo_config(interval), general_config(interval)):
        for name in PRESETS:
            config = apply_preset(base, name)
            assert config.model.n_features == base.model.n_features
            assert config.window == base.window and config.n_folds == base.n_folds


def test_the_model_pages_refuse_a_peer_with_what_to_do_instead(runs):
    from engine.diagnostics.for_run import load_model
    from engine.model.checkpoint import CheckpointError

    with pytest.raises(CheckpointError, match="lstm peer of the hybrid.*--peers"):
        load_model(runs["lstm"].run_dir)
    assert isinstance(load_model(runs["late_fusion"].run_dir)[0], HybridModel)  # a hybrid-kind peer shows as usual
