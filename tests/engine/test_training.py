"""The walk-forward training loop: repeatable, robust to non-finite steps, cancellable and resumable, leak-free."""
from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

import engine.training.loop as training
import engine.training.objective as objective
from engine.evaluation.predictions import PREDICTIONS_FILE, load_predictions
from engine.model.checkpoint import list_runs, published_files
from engine.model.hybrid import HybridModel
from engine.model.losses import LossWeights
from engine.runtime import configure_cpu_threads
from engine.targets import compute_targets
from engine.training.config import (
    TrainConfig,
    TrainingDiverged,
    TrainingError,
    default_model_config,
)
from engine.training.head_scale import scale_heads_for_training
from engine.training.loop import train_walk_forward
from engine.training.resume import RESUME_DIR
from storage.panel import Panel, demo_panel, panel_fingerprint

N_ROWS = 720


def tiny_config(**overrides) -> TrainConfig:
    model = dataclasses.replace(default_model_config(), d_model=8, d_state=4, n_heads=2, max_lag=2)
    base = dict(model=model, n_folds=2, min_train=300, val_size=80, test_size=80, window=64, stride=32,
                batch_size=4, max_epochs=2, patience=2, threads=1)
    return TrainConfig(**{**base, **overrides})


def small_panel(n_rows: int = N_ROWS) -> Panel:
    panel = demo_panel("1d").panel
    return Panel(ts=panel.ts[:n_rows], symbols=panel.symbols,
                      fields={k: v[:n_rows].copy() for k, v in panel.fields.items()},
                      observed=panel.observed[:n_rows].copy())


def train(panel, config, run_dir, **kwargs):
    return train_walk_forward(panel, config, interval="1d", fingerprint=panel_fingerprint(panel, "1d"),
                              run_dir=run_dir, **kwargs)


def weights(run_dir) -> dict[str, torch.Tensor]:
    return load_file(str(published_files(run_dir)[1]))


def same_weights(a: dict, b: dict) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


@pytest.fixture(autouse=True)
def one_thread():
    configure_cpu_threads(1)


def test_two_cpu_runs_with_the_same_seed_give_identical_weights_and_another_seed_does_not(tmp_path):
    panel = small_panel()
    first = train(panel, tiny_config(), tmp_path / "a")
    second = train(panel, tiny_config(), tmp_path / "b")
    other_seed = train(panel, tiny_config(seed=1), tmp_path / "c")
    assert first.outcome == second.outcome == "finished"
    assert same_weights(weights(tmp_path / "a"), weights(tmp_path / "b"))
    assert not same_weights(weights(tmp_path / "a"), weights(tmp_path / "c"))
    assert np.array_equal(first.predictions.quantiles, second.predictions.quantiles, equal_nan=True)
    assert other_seed.outcome == "finished"


def test_the_run_keeps_every_folds_test_forecasts_and_a_plain_model_checkpoint(tmp_path):
    result = train(small_panel(), tiny_config(), tmp_path)
    predictions, fold_of_row, ts_us = load_predictions(tmp_path)
    folds = result.manifest.training["folds"]
    expected_rows = np.concatenate([np.arange(*f["test"]) for f in folds])
    assert np.array_equal(predictions.rows, expected_rows)
    assert np.array_equal(np.unique(fold_of_row), np.arange(len(folds)))
    assert len(ts_us) == len(expected_rows)
    # a plain HybridModel state dict: no training-time parametrisation left in the file
    assert set(weights(tmp_path)) == set(HybridModel(result.model.config).state_dict())
    assert not (tmp_path / RESUME_DIR).exists()
    assert result.manifest.training["float32_matmuls"] == "float32"  # TF32 is for GPU training only
    # forecasts in raw return units: the h=1 80% interval is about as wide as the daily returns are
    spread = np.nanmedian(predictions.quantiles[1, :, 0, -2] - predictions.quantiles[1, :, 0, 1])
    assert 0.003 < spread < 0.2


def _nan_loss_on(steps: set[int] | None, monkeypatch) -> list[int]:
    """Make the training loss non-finite on the given training steps (None: on every step)."""
    real = objective.multitask_loss
    calls = []

    def loss_with_injected_nan(output, targets, weights):
        total, parts = real(output, targets, weights)
        if total.requires_grad:  # a training step, not a validation pass
            calls.append(len(calls))
            if steps is None or calls[-1] in steps:
                total = total * float("nan")
        return total, parts

    monkeypatch.setattr(objective, "multitask_loss", loss_with_injected_nan)
    return calls


def test_a_non_finite_loss_skips_the_step_and_is_counted(tmp_path, monkeypatch):
    calls = _nan_loss_on({1, 4}, monkeypatch)
    result = train(small_panel(), tiny_config(), tmp_path)
    assert result.outcome == "finished"
    assert result.skipped_steps == 2
    assert sum(f.skipped_steps for f in result.folds) == 2
    assert len(calls) > 5
    assert all(torch.isfinite(t).all() for t in weights(tmp_path).values())


def test_persistent_non_finite_losses_stop_training_with_a_clear_error_and_save_nothing(tmp_path, monkeypatch):
    _nan_loss_on(None, monkeypatch)
    with pytest.raises(TrainingDiverged, match=r"consecutive steps had a non-finite loss"):
        train(small_panel(), tiny_config(max_bad_steps=3), tmp_path)
    assert not published_files(tmp_path)[1].exists()
    assert not published_files(tmp_path)[0].exists()
    assert not list(tmp_path.rglob("*.safetensors"))


def test_cancel_then_resume_finishes_with_the_weights_of_an_uninterrupted_run(tmp_path):
    panel, config = small_panel(), tiny_config(max_epochs=3, patience=3)
    uninterrupted = train(panel, config, tmp_path / "whole")
    events = []

    def cancel_in_the_second_fold() -> bool:  # after its first epoch is saved, before the fold ends
        return any(e.phase == "epoch" and e.fold == 1 for e in events)

    cancelled = train(panel, config, tmp_path / "cut", cancel=cancel_in_the_second_fold, progress=events.append)
    assert cancelled.outcome == "cancelled" and "resume" in cancelled.message
    assert events[-1].phase == "cancelled"
    assert not published_files(tmp_path / "cut")[1].exists()
    assert (tmp_path / "cut" / RESUME_DIR).exists()
    with pytest.raises(TrainingError, match="unfinished run"):
        train(panel, config, tmp_path / "cut")  # a fresh start over a half-done run is refused
    resumed = train(panel, config, tmp_path / "cut", resume=True)
    assert resumed.outcome == "finished"
    assert same_weights(weights(tmp_path / "whole"), weights(tmp_path / "cut"))
    assert np.array_equal(uninterrupted.predictions.point, resumed.predictions.point, equal_nan=True)


def test_a_threading_event_cancels_too(tmp_path):
    import threading

    event = threading.Event()
    event.set()
    result = train(small_panel(), tiny_config(), tmp_path, cancel=event)
    assert result.outcome == "cancelled"


def _perturbed(panel: Panel, from_row: int, seed: int = 3) -> Panel:
    """The same panel with every price from `from_row` on moved by a random factor per bar."""
    rng = np.random.default_rng(seed)
    factor = np.exp(np.cumsum(rng.normal(0, 0.05, size=(len(panel.ts) - from_row, len(panel.symbols))), axis=0))
    fields = {k: v.copy() for k, v in panel.fields.items()}
    for name in ("open", "high", "low", "close"):
        fields[name][from_row:] = fields[name][from_row:] * factor
    return dataclasses.replace(panel, fields=fields)


def test_training_never_sees_a_validation_or_test_target(tmp_path):
    # One epoch, so the kept weights are that epoch's whatever the validation loss says: they may depend on the
    # training span alone. Prices from the end of the training span on are rewritten; the weights must not move.
    panel = small_panel()
    config = tiny_config(n_folds=1, max_epochs=1)
    train(panel, config, tmp_path / "base")
    fold = training.make_folds(len(panel.ts), compute_targets(panel, config.model.horizons), config)[0]
    train(_perturbed(panel, fold.train.stop), config, tmp_path / "future_moved")
    assert same_weights(weights(tmp_path / "base"), weights(tmp_path / "future_moved"))
    # The control: moving prices a few bars before the end of the training span does change them.
    train(_perturbed(panel, fold.train.stop - 5), config, tmp_path / "train_moved")
    assert not same_weights(weights(tmp_path / "base"), weights(tmp_path / "train_moved"))


def test_the_train_command_registers_the_run(tmp_path):
    from engine.train import main

    runs = tmp_path / "runs"
    code = main(["--demo", "1d", "--folds", "2", "--epochs", "1", "--min-train", "300", "--val-size", "80",
                 "--test-size", "80", "--window", "64", "--stride", "128", "--threads", "1", "--no-evaluate",
                 "--runs-dir", str(runs), "--out", str(tmp_path / "run"), "--run-id", "test-run"])
    assert code == 0
    listed = list_runs(runs, include_demo=False)
    assert [entry["run_id"] for entry in listed] == ["test-run"]
    assert listed[0]["interval"] == "1d" and listed[0]["symbols"] == ["BTC", "SPY", "AAPL"]
    assert (tmp_path / "run" / PREDICTIONS_FILE).exists()


def test_bad_configs_are_refused_with_the_field_named():
    with pytest.raises(ValueError, match="max_epochs"):
        TrainConfig(max_epochs=0)
    with pytest.raises(ValueError, match="window"):
        TrainConfig(window=1000, min_train=500)
    with pytest.raises(ValueError, match="unknown keys"):
        TrainConfig.from_dict({"epochs": 3})
    assert TrainConfig.from_dict(TrainConfig().to_dict()) == TrainConfig()


def test_a_point_head_run_forecasts_its_mean_as_the_point_and_round_trips_its_options(tmp_path):
    """The mean head (ModelConfig.point_head) is Predictions.point; the early-stop and balancing options survive
    the manifest's JSON."""
    model = dataclasses.replace(tiny_config().model, point_head=True)
    config = tiny_config(model=model, early_stop_weights=LossWeights(0.0, 0.0, 0.0, 1.0),
                         early_stop_horizons=(1,), zero_init_centre=True, balance_assets=True)
    result = train(small_panel(), config, tmp_path)
    predictions, _, _ = load_predictions(tmp_path)
    anchor = result.model.heads.anchor
    assert np.isfinite(predictions.point).any()
    # the point is the mean head's output, not the median quantile
    assert not np.allclose(predictions.point, predictions.quantiles[..., anchor], equal_nan=True)
    assert TrainConfig.from_dict(result.manifest.training["config"]) == config
    assert set(weights(tmp_path)) == set(HybridModel(result.model.config).state_dict())


def test_early_stop_horizons_must_be_model_horizons():
    with pytest.raises(ValueError, match="early_stop_horizons"):
        TrainConfig(early_stop_horizons=(2,))
    with pytest.raises(ValueError, match="early_stop_horizons"):
        TrainConfig(early_stop_horizons=())


def test_random_window_offsets_move_the_grid_every_epoch_repeatably_and_stay_inside_the_span():
    from engine.features import build_feature_set
    from engine.targets import compute_targets

    panel = small_panel()
    config = tiny_config(random_window_offsets=True, stride=16)
    targets = compute_targets(panel, config.model.horizons)
    train_rows = range(0, 300)
    features = build_feature_set(panel, train_rows)
    starts = [int(training.epoch_windows(features, targets, train_rows, config, seed).rows[0, 0])
              for seed in range(12)]
    assert starts == [int(training.epoch_windows(features, targets, train_rows, config, seed).rows[0, 0])
                      for seed in range(12)], "an epoch's windows follow from its seed alone"
    assert len(set(starts)) > 1 and all(0 <= s < config.stride for s in starts)
    last = training.epoch_windows(features, targets, train_rows, config, 3)
    assert int(last.rows.max()) == train_rows.stop - 1, "the span's end is still covered"


def test_a_lead_path_run_with_moving_windows_ships_a_plain_checkpoint(tmp_path):
    model = dataclasses.replace(tiny_config().model, point_head=True, lead_path=True, lead_features=1)
    config = tiny_config(model=model, random_window_offsets=True, stride=16, zero_init_centre=True, lead_gain=10.0,
                         centre_gain=0.1)
    result = train(small_panel(), config, tmp_path / "a")
    again = train(small_panel(), config, tmp_path / "b")
    assert same_weights(weights(tmp_path / "a"), weights(tmp_path / "b"))
    assert TrainConfig.from_dict(result.manifest.training["config"]) == config
    assert set(weights(tmp_path / "a")) == set(HybridModel(result.model.config).state_dict())
    assert torch.count_nonzero(weights(tmp_path / "a")["heads.lead.weight"]) > 0, "the lead path was trained"
    assert np.isfinite(again.predictions.point).any()


def test_the_head_gains_scale_only_their_own_columns_and_must_be_positive():
    from engine.features import build_feature_set

    panel = small_panel()
    features = build_feature_set(panel, range(0, 300))
    model_config = dataclasses.replace(tiny_config().model, point_head=True, lead_path=True, n_assets=3,
                                       n_features=features.values.shape[2])
    scale = np.full((3, len(model_config.horizons)), 0.01)
    plain, slow = HybridModel(model_config), HybridModel(model_config)
    scale_heads_for_training(plain, scale)
    scale_heads_for_training(slow, scale, lead_gain=10.0, centre_gain=0.1)
    width, anchor, n_q = plain.heads.width, plain.heads.anchor, plain.heads.n_quantiles
    ratio = (slow.heads.proj.parametrizations.weight[0].scale / plain.heads.proj.parametrizations.weight[0].scale)
    centre = [j * width + c for j in range(len(model_config.horizons)) for c in (anchor, n_q + 2)]
    others = [c for c in range(ratio.shape[-1]) if c not in centre]
    assert torch.allclose(ratio[..., centre], torch.tensor(0.1)) and torch.allclose(ratio[..., others], torch.tensor(1.0))
    lead_ratio = slow.heads.lead.parametrizations.weight[0].scale / plain.heads.lead.parametrizations.weight[0].scale
    assert torch.allclose(lead_ratio, torch.tensor(10.0))
    for name in ("lead_gain", "centre_gain"):
        with pytest.raises(ValueError, match=name):
            TrainConfig(**{name: 0.0})


def test_the_train_command_on_cached_bars_sizes_its_folds_to_the_panel(tmp_path):
    from engine.evaluation.run_scores import read_manifest
    from engine.train import main
    from storage.refresh import seed_demo_if_empty

    db = tmp_path / "bars.duckdb"
    assert seed_demo_if_empty(db_path=db)
    code = main(["--db", str(db), "--symbols", "BTC", "SPY", "--interval", "1d", "--folds", "2", "--epochs", "1",
                 "--threads", "1", "--no-evaluate", "--no-register", "--out", str(tmp_path / "run")])
    assert code == 0
    config = read_manifest(tmp_path / "run").training["config"]
    n_rows = len(demo_panel("1d").panel.ts)  # BTC's clock: every day
    assert config["n_folds"] == 2 and config["test_size"] == int(0.10 * n_rows)  # engine.training.settings
    assert main(["--db", str(db), "--symbols", "BTC", "ETH", "--interval", "1d", "--no-register",
                 "--out", str(tmp_path / "bad")]) == 2  # no ETH bars: refused with the reason


def test_the_ssm_dynamics_can_be_kept_out_of_weight_decay():
    from engine.model.hybrid import HybridModel
    from engine.training.loop import parameter_groups

    config = tiny_config(weight_decay=0.5)
    model = HybridModel(dataclasses.replace(config.model, n_assets=3, n_features=16))
    names = {id(p): n for n, p in model.named_parameters()}
    assert len(parameter_groups(model, config)) == 1  # the default: everything decays, as the demo was trained
    decayed, exempt = parameter_groups(model, dataclasses.replace(config, decay_ssm_dynamics=False))
    assert sorted(names[id(p)] for p in exempt["params"]) == sorted(
        f"layers.{i}.{leaf}" for i in (0, 2) for leaf in ("A_log", "D", "dt_proj.bias"))
    assert exempt["weight_decay"] == 0.0 and decayed["weight_decay"] == 0.5
    # one AdamW step with zero gradients: only decay moves a weight
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    optimizer = torch.optim.AdamW([decayed, exempt], lr=0.1)
    for p in model.parameters():
        p.grad = torch.zeros_like(p)
    optimizer.step()
    for name, p in model.named_parameters():
        moved = not torch.equal(p.detach(), before[name])
        assert moved == (name not in {names[id(q)] for q in exempt["params"]} and bool(before[name].abs().sum() > 0)), name


def test_windows_stay_on_the_host_for_a_cpu_and_move_whole_to_a_gpu_when_they_fit(monkeypatch):
    from engine.features import build_feature_set
    from engine.targets import compute_targets
    from engine.training.dataset import make_windows

    panel, config = small_panel(), tiny_config()
    targets = compute_targets(panel, config.model.horizons)
    windows = make_windows(build_feature_set(panel, range(0, 300), config.features), targets, range(0, 300), 64, 32)
    assert training.resident(windows, torch.device("cpu")) is windows
    moved = []
    monkeypatch.setattr(type(windows), "to", lambda self, device: moved.append(device) or self)
    training.resident(windows, torch.device("cuda", 0))
    assert moved == [torch.device("cuda", 0)]
    monkeypatch.setattr(training, "RESIDENT_WINDOWS_BYTES", windows.nbytes - 1)  # too big: left on the host
    assert training.resident(windows, torch.device("cuda", 0)) is windows and len(moved) == 1
