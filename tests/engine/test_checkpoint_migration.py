"""Checkpoint manifests are read as written and upgraded in memory: old formats load, newer ones are refused."""
from __future__ import annotations

import copy
import dataclasses
import json
from pathlib import Path

import pytest

from engine.model.checkpoint import (
    FORMAT_VERSION,
    MANIFEST_FILE,
    CheckpointError,
    DataFingerprint,
    Manifest,
    load_checkpoint,
    upgrade_manifest,
)
from engine.model.config import ModelConfig
from engine.model.hybrid import HybridModel
from engine.training.config import TrainConfig, default_model_config
from engine.training.presets import demo_config

FINGERPRINT = dict(symbols=["BTC", "SPY"], interval="1d", first_ts="2024-01-01T00:00:00", last_ts="2024-12-31T00:00:00",
                   n_rows=366, content_hash="0123456789abcdef", sources=["demo", "demo"])
OLD_LOSS_WEIGHTS = {"quantile": 2.0, "direction": 1.0, "volatility": 0.25, "point": 1.0}


def format_1_model_config() -> dict:
    """A ModelConfig as format 1 wrote it before the mean head and the lead path existed: no keys for them, and
    the training loss's weights inside."""
    config = dataclasses.asdict(dataclasses.replace(default_model_config(), n_assets=2, n_features=16))
    for key in ("point_head", "lead_path", "lead_features"):
        del config[key]
    return {**config, "loss_weights": dict(OLD_LOSS_WEIGHTS)}


def format_1_manifest(**changes) -> dict:
    model = format_1_model_config()
    training_config = {**TrainConfig().to_dict(), "model": copy.deepcopy(model)}
    del training_config["loss_weights"]
    return {"run_id": "old-run", "model_config": model, "feature_names": ["f"] * 16, "scaler": {},
            "fingerprint": FINGERPRINT, "created_at": "2026-12-01T00:00:00Z", "device": "CPU", "scores": {},
            "training": {"config": training_config, "seconds": 1.0}, "format_version": 1, **changes}


FORMAT_1_DEMO = Path(__file__).resolve().parents[1] / "fixtures" / "checkpoints" / "format1_demo_1h"


def test_a_format_1_checkpoint_loads_as_written():
    """The demo checkpoint as shipped until the general recipe (format 1 on disk, manifest and weights kept as a
    fixture): it loads to the recipe it was trained with, and loading does not rewrite it."""
    on_disk = (FORMAT_1_DEMO / MANIFEST_FILE).read_bytes()
    assert json.loads(on_disk)["format_version"] == 1
    weights, manifest = load_checkpoint(FORMAT_1_DEMO)
    assert (FORMAT_1_DEMO / MANIFEST_FILE).read_bytes() == on_disk, "loading must not rewrite the manifest"
    assert manifest.format_version == FORMAT_VERSION
    recipe = demo_config("1h")
    assert ModelConfig.from_dict(manifest.model_config) == recipe.model
    trained = TrainConfig.from_dict(manifest.training["config"])
    assert trained.model == recipe.model and trained.loss_weights == recipe.loss_weights
    HybridModel(ModelConfig.from_dict(manifest.model_config)).load_state_dict(weights)  # every weight in place


def test_a_format_1_manifest_upgrades_to_the_layout_it_was_written_with():
    old = format_1_manifest()
    before = copy.deepcopy(old)
    upgraded = upgrade_manifest(old)
    assert old == before, "the migration must not modify what it reads"
    assert upgraded["format_version"] == FORMAT_VERSION
    config = ModelConfig.from_dict(upgraded["model_config"])
    assert (config.point_head, config.lead_path, config.lead_features) == (False, False, None)
    assert config == dataclasses.replace(default_model_config(), n_assets=2, n_features=16, lead_features=None)
    training = TrainConfig.from_dict(upgraded["training"]["config"])
    assert dataclasses.asdict(training.loss_weights) == OLD_LOSS_WEIGHTS
    assert training.model == config
    assert upgraded["training"]["seconds"] == 1.0  # everything else as it was
    model = HybridModel(config)
    assert model.heads.lead is None and not model.heads.has_mean  # the weights of a format 1 checkpoint


def test_format_1_keys_a_manifest_has_are_kept_and_stray_loss_weights_are_not_lost():
    with_lead = format_1_manifest()
    with_lead["model_config"].update(point_head=True, lead_path=True, lead_features=1)
    assert ModelConfig.from_dict(upgrade_manifest(with_lead)["model_config"]).lead_features == 1
    no_training = upgrade_manifest(format_1_manifest(training={}))
    assert no_training["training"] == {"loss_weights": OLD_LOSS_WEIGHTS}


def test_a_manifest_round_trips_in_the_current_format(tmp_path):
    manifest = Manifest.from_json(json.dumps(format_1_manifest()))
    again = Manifest.from_json(manifest.to_json())
    assert again == manifest and again.format_version == FORMAT_VERSION
    assert isinstance(again.fingerprint, DataFingerprint)


def test_a_newer_format_is_refused_with_its_version_and_what_to_do():
    newer = {**format_1_manifest(), "format_version": FORMAT_VERSION + 1}
    with pytest.raises(CheckpointError, match=f"format {FORMAT_VERSION + 1} is newer than this code reads "
                                              f"\\(format {FORMAT_VERSION}\\): update the dashboard's code"):
        Manifest.from_json(json.dumps(newer))
    for missing in (None, 0, "1"):
        with pytest.raises(CheckpointError, match="no valid format_version"):
            upgrade_manifest({**format_1_manifest(), "format_version": missing})
