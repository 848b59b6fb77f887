"""Hostile checkpoints (issue 16): every manifest field and every weight is checked before anything is built, a
publish is one atomic step, registry dates are not believed blindly, and --resume does not retrain a finished run.

Every refusal is a CheckpointError whose message names the field or tensor, its value and the bound.
"""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import threading
import time
from datetime import datetime, timedelta, timezone
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

from engine.diagnostics.for_run import load_model
from engine.model import checkpoint as ck
from engine.model.checkpoint import (
    CURRENT_LINK,
    DEMO_CHECKPOINT_DIR,
    FORMAT_VERSION,
    MANIFEST_FILE,
    POINTER_FILE,
    REGISTRY_FILE,
    WEIGHTS_FILE,
    CheckpointError,
    Manifest,
    check_fits,
    checked_created_at,
    checkpoint_written,
    list_runs,
    load_checkpoint,
    published_files,
    read_manifest,
    register_run,
    save_checkpoint,
    update_manifest_scores,
)
from engine.model.config import MAX_D_MODEL, ModelConfig
from engine.model.hybrid import HybridModel

REPO = Path(__file__).resolve().parents[2]
# The hostile manifests are edits of a real, fixed checkpoint: the demo as shipped before the general recipe
# (format 1 on disk, sixteen features), so the expected messages do not move when the shipped demo is retrained
FIXED_CHECKPOINT = REPO / "tests" / "fixtures" / "checkpoints" / "format1_demo_1h"


def demo_manifest() -> dict:
    return json.loads(published_files(FIXED_CHECKPOINT)[0].read_text())


def demo_weights() -> dict[str, torch.Tensor]:
    return load_file(str(published_files(FIXED_CHECKPOINT)[1]))


def write_run(directory: Path, manifest: dict | str | bytes | None = None, weights=None) -> Path:
    """A checkpoint folder in the layout written before atomic publishing: the two files side by side."""
    directory.mkdir(parents=True, exist_ok=True)
    manifest = demo_manifest() if manifest is None else manifest
    if isinstance(manifest, dict):
        manifest = json.dumps(manifest)
    (directory / MANIFEST_FILE).write_bytes(manifest.encode() if isinstance(manifest, str) else manifest)
    if weights is None:
        shutil.copyfile(FIXED_CHECKPOINT / WEIGHTS_FILE, directory / WEIGHTS_FILE)
    elif isinstance(weights, bytes):
        (directory / WEIGHTS_FILE).write_bytes(weights)
    else:
        save_file(weights, str(directory / WEIGHTS_FILE))
    return directory


def changed(**paths):
    """A manifest edit: {"model_config.d_model": 32768, "scaler": None, ...} on the demo's manifest."""

    def edit(manifest: dict) -> dict:
        for path, value in paths.items():
            *parents, last = path.split(".")
            node = manifest
            for key in parents:
                node = node[int(key)] if isinstance(node, list) else node[key]
            if value is DELETE:
                del node[last]
            elif isinstance(node, list):
                node[int(last)] = value
            else:
                node[last] = value
        return manifest

    return edit


DELETE = object()


def scaler_row(name: str, asset: int, feature: int, value):
    def edit(manifest: dict) -> dict:
        manifest["scaler"][name][asset][feature] = value
        return manifest

    return edit


# (edit of the demo manifest, what the message must say)
HOSTILE_MANIFESTS = {
    # the model's sizes: capped before anything is built
    "huge d_model": (changed(**{"model_config.d_model": 32768}),
                     r"d_model=32768 is more than the app runs \(d_model <= 1024\)"),
    "many assets": (changed(**{"model_config.n_assets": 100_000}), r"n_assets=100000 .*\(n_assets <= 256\)"),
    "huge d_state": (changed(**{"model_config.d_state": 4096}), r"d_state=4096 .*\(d_state <= 256\)"),
    "many layers": (changed(**{"model_config.layer_pattern": ["ssm", "attn"] * 20}),
                    r"layer_pattern has 40 layers, more than the app runs \(<= 32\)"),
    "long lag": (changed(**{"model_config.max_lag": 100_000}), r"max_lag=100000 .*\(max_lag <= 512\)"),
    "far horizon": (changed(**{"model_config.horizons": [1, 5, 1_000_000]}),
                    r"horizon 1000000 bars is more than the app runs \(horizons <= 4096 bars\)"),
    "parameter count": (changed(**{"model_config.n_assets": 256, "model_config.d_model": 1024,
                                   "model_config.dt_rank": 64}),
                        r"would have [\d,]+ parameters, more than the app runs \(<= 50,000,000\)"),
    "inference memory": (changed(**{"model_config.n_assets": 64, "model_config.max_lag": 512}),
                         r"about [\d.]+ GiB per 2048-bar chunk, more than the app allows \(4 GiB\)"),
    "d_model as text": (changed(**{"model_config.d_model": "32"}), r"d_model must be an integer, got '32'"),
    "fractional size": (changed(**{"model_config.d_state": 8.5}), r"d_state must be an integer, got 8.5"),
    "boolean size": (changed(**{"model_config.n_heads": True}), r"n_heads must be an integer, got True"),
    "NaN dropout": (changed(**{"model_config.dropout": float("nan")}), r"dropout must be a finite number"),
    "horizons not a list": (changed(**{"model_config.horizons": "1,5"}), r"horizons must be a list, got str"),
    "null quantile": (changed(**{"model_config.quantiles.2": None}), r"quantiles must be finite numbers, got None"),
    "flag as text": (changed(**{"model_config.lead_path": "yes"}), r"lead_path must be true or false, got 'yes'"),
    "unknown model key": (changed(**{"model_config.n_layer": 4}), r"unknown keys \['n_layer'\]"),
    "model_config null": (changed(model_config=None), r"cannot be upgraded"),  # format 1 on disk: the migration
    # the scaler
    "scaler null": (changed(scaler=None), r"scaler must be a JSON object, got NoneType"),
    "scaler mean null": (scaler_row("mean", 1, 3, None), r"scaler 'mean'\[1\]\[3\] is None: expected a finite number"),
    "scaler std null": (scaler_row("std", 0, 0, None), r"scaler 'std'\[0\]\[0\] is None"),
    "scaler std zero": (scaler_row("std", 2, 5, 0.0), r"scaler 'std'\[2\]\[5\] is 0.0: it must be positive"),
    "scaler text": (scaler_row("lower", 0, 1, "low"), r"scaler 'lower'\[0\]\[1\] is 'low': expected a finite number "
                                                     r"or null"),
    "scaler NaN": (scaler_row("mean", 0, 0, float("nan")), r"scaler 'mean'\[0\]\[0\] is nan"),
    "scaler short row": (changed(**{"scaler.std.1": [1.0] * 3}), r"scaler 'std' has shape \(3, 3\) at row 1, "
                                                                r"expected \(3, 16\)"),
    "scaler missing asset": (changed(**{"scaler.mean": [[0.0] * 16] * 2}), r"scaler 'mean' has shape \(2, \.\.\.\)"),
    "scaler bounds reversed": (changed(**{"scaler.lower.0.0": 1.0, "scaler.upper.0.0": -1.0}),
                               r"lower 1.0 > upper -1.0"),
    "scaler fit rows": (changed(**{"scaler.fit_rows": [500, 100]}), r"'fit_rows' must be \[start, stop\)"),
    "scaler other symbols": (changed(**{"scaler.symbols": ["ETH", "SPY", "AAPL"]}),
                             r"scaler.symbols = .*must equal fingerprint.symbols"),
    "scaler other names": (changed(**{"scaler.names.0": "ret_2"}), r"scaler.names = .*must equal feature_names"),
    # names, fingerprint, the rest
    "feature name number": (changed(**{"feature_names.0": 7}), r"feature_names\[0\] = 7: must be a string"),
    "feature names short": (changed(**{"feature_names": ["ret_1"]}), r"must hold 16 entries \(the model's\), not 1"),
    "fingerprint symbols": (changed(**{"fingerprint.symbols": ["BTC"]}), r"fingerprint.symbols = .*must hold 3"),
    "fingerprint rows": (changed(**{"fingerprint.n_rows": "many"}), r"fingerprint.n_rows = 'many'"),
    "fingerprint date": (changed(**{"fingerprint.first_ts": "yesterday"}),
                         r"fingerprint.first_ts = 'yesterday': must be an ISO 8601 timestamp"),
    "fingerprint far future": (changed(**{"fingerprint.last_ts": "9999-01-01T00:00:00"}),
                               r"between 1900 and 2200"),
    "fingerprint extra": (changed(**{"fingerprint.owner": "me"}),
                          r"manifest field fingerprint: has unknown fields \['owner'\]"),
    "fingerprint missing": (changed(**{"fingerprint.interval": DELETE}), r"lacks the required fields \['interval'\]"),
    "run_id null": (changed(run_id=None), r"run_id = None: must be a string"),
    "run_id huge": (changed(run_id="x" * 5000), r"run_id = .*at most 200 printable"),
    "run_id control": (changed(run_id="a\x1b[2Jb"), r"run_id = .*printable"),
    "created_at text": (changed(created_at="last week"), r"created_at = 'last week': must be an ISO 8601"),
    "device number": (changed(device=3), r"device = 3: must be a string"),
    "scores list": (changed(scores=[1, 2]), r"scores = \[1, 2\]: must be a JSON object"),
    "unknown field": (changed(owner="x"), r"manifest has unknown fields \['owner'\]"),
    "missing field": (changed(feature_names=DELETE), r"manifest lacks the required fields \['feature_names'\]"),
    "feature config": (changed(**{"training.config.features.vol_window": -3}),
                       r"training.config.features.vol_window = -3: must be a whole number of bars in 1..100000"),
    "feature config key": (changed(**{"training.config.features.bogus": 1}),
                           r"training.config.features = \['bogus'\]: are not FeatureConfig fields"),
    "feature config unclipped unknown": (changed(**{"training.config.features.unclipped": ["bogus"]}),
                                         r"training.config.features.unclipped = \['bogus'\]: FeatureConfig.unclipped"),
    "feature config unclipped text": (changed(**{"training.config.features.unclipped": "ret_1"}),
                                      r"training.config.features.unclipped = 'ret_1': must be a list of feature names"),
    "training config null": (changed(**{"training.config": None}), r"cannot be upgraded|training.config = None"),
    "fold span date": (changed(**{"training.fold_spans_utc.0.test": ["2024-01-01", "not a date"]}),
                       r"training.fold_spans_utc\[0\].test\[1\] = 'not a date'"),
    "fold span missing test": (changed(**{"training.fold_spans_utc.1.test": DELETE}),
                               r"training.fold_spans_utc\[1\] = .*must have its test span"),
    "fold rows": (changed(**{"training.folds.0.train": ["a", 5]}),
                  r"training.folds\[0\].train = \['a', 5\]: must be \[start, stop\) rows"),
    # the format
    "format 99": (changed(format_version=99),
                  r"checkpoint format 99 is newer than this code reads \(format 3\): update the dashboard's code "
                  r"\(git pull\) to load it, or retrain"),
    "format text": (changed(format_version="3"), r"has no valid format_version \(got '3'\)"),
    "format missing": (changed(format_version=DELETE), r"has no valid format_version \(got None\)"),
}


@pytest.mark.parametrize("name", list(HOSTILE_MANIFESTS))
def test_a_hostile_manifest_is_refused_naming_the_field_value_and_bound(name, tmp_path):
    edit, message = HOSTILE_MANIFESTS[name]
    run = write_run(tmp_path / "run", edit(demo_manifest()))
    started = time.perf_counter()
    with pytest.raises(CheckpointError, match=message) as refused:
        load_model(run)
    assert time.perf_counter() - started < 10  # refused before anything is built (d_model 32768 was 51 GB)
    assert "corrupt" not in str(refused.value)
    with pytest.raises(CheckpointError, match=message):  # the same from the manifest alone
        read_manifest(run, app_limits=True)


def test_a_run_trained_for_a_larger_machine_can_be_scored_and_listed_but_not_loaded(tmp_path):
    run = write_run(tmp_path / "run", changed(**{"model_config.d_model": 2048, "model_config.dt_rank": 128})(
        demo_manifest()))
    manifest = read_manifest(run)  # what evaluate and register_run read
    assert manifest.model_config["d_model"] == 2048
    with pytest.raises(CheckpointError, match=r"d_model=2048 is more than the app runs \(d_model <= 1024\); this "
                                              r"app cannot run it"):
        load_checkpoint(run)


def test_the_format_message_names_both_versions_and_never_blames_the_weights(tmp_path):
    run = write_run(tmp_path / "run", changed(format_version=FORMAT_VERSION + 96)(demo_manifest()))
    with pytest.raises(CheckpointError) as refused:
        load_checkpoint(run)
    text = str(refused.value)
    assert f"format {FORMAT_VERSION + 96}" in text and f"reads formats 1 to {FORMAT_VERSION}" in text
    assert "update the dashboard's code" in text and "retrain" in text
    assert "corrupt" not in text and "weights" not in text


@pytest.mark.parametrize("text, message", [
    ("{not json", r"is not valid JSON"),
    ("[1, 2]", r"must be a JSON object, got list"),
    ("", r"is not valid JSON"),
    (b"\xff\xfe\x00garbage", r"is not valid JSON"),
    ("[" * 100_000, r"is not valid JSON"),
])
def test_a_manifest_that_is_not_a_json_object_is_refused(text, message, tmp_path):
    with pytest.raises(CheckpointError, match=message):
        load_checkpoint(write_run(tmp_path / "run", text))


def test_a_manifest_that_is_not_a_regular_file_or_too_large_is_refused_without_reading_it(tmp_path, monkeypatch):
    run = write_run(tmp_path / "run")
    (run / MANIFEST_FILE).unlink()
    os.mkfifo(run / MANIFEST_FILE)  # opening it would block forever
    with pytest.raises(CheckpointError, match="manifest.json is not a regular file"):
        load_checkpoint(run)
    (run / MANIFEST_FILE).unlink()
    (run / MANIFEST_FILE).write_text(json.dumps(demo_manifest()))
    monkeypatch.setattr(ck, "MAX_MANIFEST_BYTES", 1000)
    with pytest.raises(CheckpointError, match=r"manifest.json is [\d,]+ bytes, more than a checkpoint's 1,000"):
        load_checkpoint(run)


def test_a_checkpoint_without_a_scaler_reads_but_does_not_load(tmp_path):
    run = write_run(tmp_path / "run", changed(scaler={})(demo_manifest()))
    assert read_manifest(run).scaler == {}
    with pytest.raises(CheckpointError, match="records no feature scaler"):
        load_checkpoint(run)


# ----- weights ---------------------------------------------------------------------------------------------------


def with_weights(change):
    weights = demo_weights()
    change(weights)
    return weights


HOSTILE_WEIGHTS = {
    "NaN": (lambda w: w["layers.0.A_log"].view(-1).__setitem__(7, float("nan")),
            r"tensor layers.0.A_log holds 1 NaN or infinite value\(s\) of 1,536"),
    "infinity": (lambda w: w["heads.proj.bias"].fill_(float("inf")), r"tensor heads.proj.bias holds 90 NaN"),
    "missing tensor": (lambda w: w.pop("final_norm.weight"), r"missing tensor\(s\) final_norm.weight"),
    "extra tensor": (lambda w: w.__setitem__("backdoor.weight", torch.zeros(3)),
                     r"unexpected tensor\(s\) backdoor.weight"),
    "other shape": (lambda w: w.__setitem__("layers.0.A_log", torch.zeros(192, 16)),
                    r"tensor layers.0.A_log has shape \(192, 16\), the config builds \(192, 8\)"),
    "integer tensor": (lambda w: w.__setitem__("layers.0.D", torch.zeros(3, 64, dtype=torch.int64)),
                       r"tensor layers.0.D is I64, not a float type"),
}


@pytest.mark.parametrize("name", list(HOSTILE_WEIGHTS))
def test_weights_are_checked_tensor_by_tensor(name, tmp_path):
    change, message = HOSTILE_WEIGHTS[name]
    run = write_run(tmp_path / "run", weights=with_weights(change))
    with pytest.raises(CheckpointError, match=message):
        load_model(run)


@pytest.mark.parametrize("blob, message", [
    (b"", r"damaged or not a safetensors file"),
    (b"\x00" * 64, r"damaged or not a safetensors file"),
    ((FIXED_CHECKPOINT / WEIGHTS_FILE).read_bytes()[:5000], r"damaged or not a safetensors file"),
    (b"\x01" * (3 * 2**20), r"weights.safetensors is [\d,]+ bytes, more than the weights of the model its manifest "
                            r"describes can take"),
])
def test_a_damaged_weights_file_is_named_as_such(blob, message, tmp_path):
    with pytest.raises(CheckpointError, match=message):
        load_checkpoint(write_run(tmp_path / "run", weights=blob))


def test_the_shipped_demo_loads_and_the_estimates_match_the_model():
    model, manifest = load_model(DEMO_CHECKPOINT_DIR)
    assert manifest.run_id == "demo-1h" and model.num_parameters() == manifest.training["n_parameters"]
    for settings in ({}, {"shared_ssm": True}, {"point_head": False, "lead_path": False},
                     {"n_assets": 5, "d_model": 48, "n_heads": 3, "layer_pattern": ("attn", "ssm", "ssm")},
                     {"lead_features": None, "horizons": (1, 2), "quantiles": (0.2, 0.5, 0.8), "dt_rank": 5,
                      "d_conv": 3, "expand": 3}):
        config = ModelConfig(**settings)
        with torch.device("meta"):
            assert config.estimated_parameters() == HybridModel(config).num_parameters(), settings
        config.check_app_limits()
    assert MAX_D_MODEL == 1024


# ----- one atomic publish ---------------------------------------------------------------------------------------


def version_manifest(run_id: str) -> Manifest:
    return Manifest.from_json(json.dumps({**demo_manifest(), "run_id": run_id}))


def version_weights(k: int) -> dict[str, torch.Tensor]:
    """The demo's weights, marked: final_norm.weight[0, 0] holds k."""
    weights = demo_weights()
    weights["final_norm.weight"][0, 0] = float(k)
    return weights


def read_pair(run: Path) -> tuple[str, int]:
    weights, manifest = load_checkpoint(run)
    return manifest.run_id, int(weights["final_norm.weight"][0, 0])


class Killed(BaseException):
    """A kill: no handler of the code under test runs (it catches Exception at most)."""


def kill_at(monkeypatch, name: str, *, after: bool = False, call: int = 1):
    """Make the `call`-th call of checkpoint.<name> die, before it acts or right after."""
    original, calls = getattr(ck, name), []

    def dying(*args, **kwargs):
        calls.append(1)
        if len(calls) == call:
            if after:
                original(*args, **kwargs)
            raise Killed(name)
        return original(*args, **kwargs)

    monkeypatch.setattr(ck, name, dying)


def pointer(run: Path) -> str:
    return (run / POINTER_FILE).read_text().strip()


def no_links(run: Path) -> bool:
    return not any(os.path.islink(path) for path in [run, *run.rglob("*")])


def symlink_layout(run: Path, run_id: str, k: int, version: str = "ckpt-20261201T000000Z-0000abcd") -> Path:
    """A run folder as the symlink layout (this module before the pointer file) wrote it."""
    (run / version).mkdir(parents=True)
    save_file(version_weights(k), str(run / version / WEIGHTS_FILE))
    (run / version / MANIFEST_FILE).write_text(version_manifest(run_id).to_json())
    os.symlink(version, run / CURRENT_LINK)
    for name in (MANIFEST_FILE, WEIGHTS_FILE):
        os.symlink(f"{CURRENT_LINK}/{name}", run / name)
    return run


@pytest.mark.parametrize("step, after, call, expected", [
    ("_write_synced", False, 1, "v1"),  # before the weights are written
    ("_write_synced", True, 1, "v1"),  # new weights written, no manifest beside them yet
    ("_write_synced", True, 2, "v1"),  # the new version is complete but not published
    ("_write_synced", True, 3, "v1"),  # the pointer's temporary is written, not yet renamed
    ("_replace", False, 1, "v1"),  # just before the one rename
    ("_replace", True, 1, "v2"),  # just after it
    ("_fsync_dir", False, 2, "v2"),  # renamed, the run directory not yet fsync'd
    ("_remove_stale", False, 1, "v2"),
])
def test_a_kill_at_any_step_of_a_publish_leaves_a_consistent_pair(step, after, call, expected, tmp_path,
                                                                    monkeypatch):
    run = tmp_path / "run"
    save_checkpoint(run, version_weights(1), version_manifest("v1"))
    kill_at(monkeypatch, step, after=after, call=call)
    with pytest.raises(Killed):
        save_checkpoint(run, version_weights(2), version_manifest("v2"))
    monkeypatch.undo()
    assert read_pair(run) == (expected, int(expected[1]))
    # what published_files names agrees with what load_checkpoint reads
    manifest_path, weights_path = published_files(run)
    assert json.loads(manifest_path.read_text())["run_id"] == expected
    assert int(load_file(str(weights_path))["final_norm.weight"][0, 0]) == int(expected[1])
    save_checkpoint(run, version_weights(3), version_manifest("v3"))  # the next publish cleans up after the kill
    assert read_pair(run) == ("v3", 3)
    assert [p.name for p in run.iterdir() if p.name.startswith("ckpt-")] == [pointer(run)]
    assert not [p for p in run.iterdir() if p.name.endswith(".tmp")]
    assert no_links(run)


def test_a_kill_while_an_old_run_folder_moves_to_the_published_layout_leaves_a_consistent_pair(tmp_path,
                                                                                               monkeypatch):
    run = tmp_path / "run"
    write_run(run, json.loads(version_manifest("old").to_json()), weights=version_weights(1))
    assert read_pair(run) == ("old", 1)
    kill_at(monkeypatch, "_remove_stale")  # published, but the old plain files are still in place
    with pytest.raises(Killed):
        save_checkpoint(run, version_weights(2), version_manifest("v2"))
    monkeypatch.undo()
    assert (run / MANIFEST_FILE).is_file() and (run / WEIGHTS_FILE).is_file()
    assert read_pair(run) == ("v2", 2)  # the pointer wins over the plain files
    update_manifest_scores(run, {"horizon": 1})
    assert not (run / MANIFEST_FILE).exists() and not (run / WEIGHTS_FILE).exists()  # the old layout is gone
    assert read_pair(run) == ("v2", 2)


def test_the_published_layout_and_a_scores_update(tmp_path):
    run = tmp_path / "run"
    save_checkpoint(run, version_weights(1), version_manifest("v1"))
    current = pointer(run)
    assert current.startswith("ckpt-") and (run / POINTER_FILE).read_bytes() == f"{current}\n".encode()
    assert sorted((run / current).iterdir()) == [run / current / MANIFEST_FILE, run / current / WEIGHTS_FILE]
    assert published_files(run) == (run / current / MANIFEST_FILE, run / current / WEIGHTS_FILE)
    before = published_files(run)[1].read_bytes()
    update_manifest_scores(run, {"horizon": 1})
    assert pointer(run) != current and not (run / current).exists()
    assert read_manifest(run).scores == {"horizon": 1}
    assert published_files(run)[1].read_bytes() == before
    assert read_pair(run) == ("v1", 1)


def test_save_checkpoint_creates_no_symlink_and_a_copied_or_zipped_run_still_loads(tmp_path):
    run = tmp_path / "run"
    save_checkpoint(run, version_weights(1), version_manifest("v1"))
    update_manifest_scores(run, {"horizon": 1})
    assert no_links(run)
    assert {p.name for p in run.iterdir()} <= {POINTER_FILE, pointer(run), ck.PUBLISH_LOCK}
    expected = load_checkpoint(run)
    copied = Path(shutil.copytree(run, tmp_path / "copied"))
    archive = shutil.make_archive(str(tmp_path / "run"), "zip", root_dir=run)
    shutil.unpack_archive(archive, tmp_path / "unzipped")
    for other in (copied, tmp_path / "unzipped"):
        weights, manifest = load_checkpoint(other)
        assert manifest == expected[1] and weights.keys() == expected[0].keys()
        assert all(torch.equal(weights[name], expected[0][name]) for name in weights)
        assert published_files(other)[0].parent.parent == other  # read from the copy, not through the original
    save_checkpoint(copied, version_weights(2), version_manifest("v2"))  # a copy publishes on its own
    assert read_pair(copied) == ("v2", 2) and read_pair(run) == ("v1", 1)


def test_a_pointer_naming_anything_but_its_own_version_is_refused(tmp_path):
    run = tmp_path / "run"
    save_checkpoint(run, version_weights(1), version_manifest("v1"))
    name = pointer(run)
    (run / POINTER_FILE).write_bytes(f"{name}\r\n".encode())  # rewritten with a Windows line end: still read
    assert read_pair(run) == ("v1", 1)
    for text, message in (("../../etc\n", "names '../../etc', not one of its own ckpt-"),
                          (f"{name}\n{name}\n", "not one of its own ckpt-"),
                          ("", "names '', not one of its own ckpt-"),
                          ("ckpt-" + "x" * 300, "is not a one-line file naming its published version"),
                          ("ckpt-gone\n", "published version ckpt-gone is incomplete or missing")):
        (run / POINTER_FILE).write_text(text)
        with pytest.raises(CheckpointError, match=message):
            load_checkpoint(run)


@pytest.mark.skipif(not hasattr(os, "symlink") or os.name == "nt", reason="the symlink layout was POSIX only")
def test_a_run_folder_of_the_symlink_layout_is_read_and_its_next_publish_drops_the_links(tmp_path):
    run = symlink_layout(tmp_path / "run", "linked", 1)
    assert read_pair(run) == ("linked", 1) and read_manifest(run).run_id == "linked"
    assert checkpoint_written(run)[0] == "linked"
    followed = Path(shutil.copytree(run, tmp_path / "followed"))  # a copy that followed the links: `current` a dir
    assert (followed / CURRENT_LINK).is_dir() and read_pair(followed) == ("linked", 1)
    for folder, update in ((run, False), (followed, True)):
        if update:
            update_manifest_scores(folder, {"horizon": 1})
        else:
            save_checkpoint(folder, version_weights(2), version_manifest("v2"))
        assert no_links(folder) and not os.path.lexists(folder / CURRENT_LINK)
        assert not os.path.lexists(folder / MANIFEST_FILE) and not os.path.lexists(folder / WEIGHTS_FILE)
        assert [p.name for p in folder.iterdir() if p.name.startswith("ckpt-")] == [pointer(folder)]
    assert read_pair(run) == ("v2", 2) and read_pair(followed) == ("linked", 1)
    bad = symlink_layout(tmp_path / "bad", "linked", 1)
    os.remove(bad / CURRENT_LINK)
    os.symlink("../../etc", bad / CURRENT_LINK)
    with pytest.raises(CheckpointError, match="its current link names '../../etc', not one of its own ckpt-"):
        load_checkpoint(bad)
    os.remove(bad / CURRENT_LINK)
    os.symlink("ckpt-gone", bad / CURRENT_LINK)
    with pytest.raises(CheckpointError, match="published version ckpt-gone is incomplete or missing"):
        load_checkpoint(bad)


def test_a_reader_never_sees_a_mixed_pair_while_a_writer_publishes(tmp_path):
    run = tmp_path / "run"
    save_checkpoint(run, version_weights(0), version_manifest("v0"))
    done, seen, errors = threading.Event(), [], []

    def reader():
        while not done.is_set():
            try:
                seen.append(read_pair(run))
            except CheckpointError as error:  # "kept changing": allowed, never a mixed pair
                errors.append(str(error))

    thread = threading.Thread(target=reader)
    thread.start()
    for k in range(1, 25):
        save_checkpoint(run, version_weights(k), version_manifest(f"v{k}"))
    done.set()
    thread.join()
    assert seen and all(run_id == f"v{k}" for run_id, k in seen), [p for p in seen if p[0] != f"v{p[1]}"][:3]
    assert all("kept changing" in e for e in errors), errors[:3]


KILLER = """
import json, os, sys
sys.path.insert(0, {repo!r})
from safetensors.torch import load_file
from engine.model import checkpoint as ck
manifest = json.loads((ck.DEMO_CHECKPOINT_DIR / ck.MANIFEST_FILE).read_text())
weights = load_file(str(ck.DEMO_CHECKPOINT_DIR / ck.WEIGHTS_FILE))
weights["final_norm.weight"][0, 0] = 2.0
original = ck._replace
def replace(source, target):
    if {after}:
        original(source, target)
    os._exit(9)
ck._replace = replace
ck.save_checkpoint(sys.argv[1], weights, ck.Manifest.from_json(json.dumps({{**manifest, "run_id": "v2"}})))
"""


@pytest.mark.parametrize("after, expected", [(False, ("v1", 1)), (True, ("v2", 2))])
def test_a_real_kill_of_the_writing_process(after, expected, tmp_path):
    run = tmp_path / "run"
    save_checkpoint(run, version_weights(1), version_manifest("v1"))
    child = subprocess.run([sys.executable, "-c", KILLER.format(repo=str(REPO), after=after), str(run)],
                           capture_output=True, text=True, timeout=120)
    assert child.returncode == 9, child.stderr
    assert read_pair(run) == expected


# ----- the registry ---------------------------------------------------------------------------------------------


def register(runs: Path, run: Path, **entry) -> None:
    register_run(runs, read_manifest(run), run)
    if entry:  # rewrite the line just appended with the given fields
        lines = (runs / REGISTRY_FILE).read_text().splitlines()
        lines[-1] = json.dumps({**json.loads(lines[-1]), **entry})
        (runs / REGISTRY_FILE).write_text("\n".join(lines) + "\n")


def test_a_forged_registry_date_never_makes_the_default_run(tmp_path):
    runs = tmp_path / "runs"
    honest = write_run(tmp_path / "honest", changed(run_id="honest")(demo_manifest()))
    forged = write_run(tmp_path / "forged", changed(run_id="forged")(demo_manifest()))
    garbled = write_run(tmp_path / "garbled", changed(run_id="garbled")(demo_manifest()))
    register(runs, honest, created_at="2026-11-30T10:00:00Z")
    register(runs, forged, created_at="2099-01-01T00:00:00Z")
    register(runs, garbled, created_at=12345)
    listed = list_runs(runs)
    assert [run["run_id"] for run in listed][0] == "honest"
    assert listed[-1].get("demo")
    by_id = {run["run_id"]: run for run in listed}
    assert by_id["honest"]["date_trusted"] and "created_at_note" not in by_id["honest"]
    for name, why in (("forged", "is in the future"), ("garbled", "is not an ISO timestamp")):
        entry = by_id[name]
        assert not entry["date_trusted"] and why in entry["created_at_note"]
        mtime = datetime.fromtimestamp(published_files(tmp_path / name)[0].stat().st_mtime, timezone.utc)
        assert entry["created_at"] == mtime.strftime("%Y-%m-%dT%H:%M:%SZ")


def test_registry_dates_within_the_clock_skew_are_believed():
    now = datetime(2026, 12, 3, 12, 0, tzinfo=timezone.utc)
    assert checked_created_at("2026-12-03T12:04:00Z", 0.0, now) == ("2026-12-03T12:04:00Z", None)
    assert checked_created_at("2026-12-03 12:00:00", 0.0, now)[1] is None  # naive: UTC
    late, note = checked_created_at((now + timedelta(hours=2)).isoformat(), 0.0, now)
    assert late == "1970-01-01T00:00:00Z" and "in the future" in note


def test_malformed_registry_lines_are_skipped_or_made_safe(tmp_path):
    runs = tmp_path / "runs"
    run = write_run(tmp_path / "run")
    runs.mkdir()
    good = {"run_id": "ok", "path": str(run), "created_at": "2026-12-01T00:00:00Z", "symbols": ["BTC", "SPY", "AAPL"],
            "interval": "1h", "scores": [1]}
    lines = [json.dumps(good), "not json", json.dumps([1, 2]), json.dumps({**good, "run_id": None}),
             json.dumps({**good, "symbols": "BTC"}), json.dumps({**good, "path": str(tmp_path / "nowhere")}),
             json.dumps({**good, "interval": 60}), "[" * 50_000]
    (runs / REGISTRY_FILE).write_text("\n".join(lines) + "\n")
    listed = list_runs(runs, include_demo=False)
    assert [entry["run_id"] for entry in listed] == ["ok"] and listed[0]["scores"] == {}
    # the fields the Model page reads keep their types
    demo_scores = demo_manifest()["scores"]
    lines = [json.dumps({**good, "scores": demo_scores, "span": [1, 2], "device": 7}),
             json.dumps({**good, "run_id": "bad-scores",
                         "scores": {"assets": {"BTC": {"vs_zero": {"dm_p_mse": "x"}}}}}),
             json.dumps({**good, "run_id": "line\nbreak"})]
    (runs / REGISTRY_FILE).write_text("\n".join(lines) + "\n")
    listed = {entry["run_id"]: entry for entry in list_runs(runs, include_demo=False)}
    assert set(listed) == {"ok", "bad-scores"}
    assert listed["ok"]["scores"] == demo_scores and listed["ok"]["span"] == [] and listed["ok"]["device"] == ""
    assert listed["bad-scores"]["scores"] == {}


# ----- check_fits still names the misfit ------------------------------------------------------------------------


def test_check_fits_still_refuses_another_panel():
    _, manifest = load_checkpoint(DEMO_CHECKPOINT_DIR)
    with pytest.raises(CheckpointError, match="trained on 1h bars but the panel is 1d"):
        check_fits(manifest, symbols=("BTC", "SPY", "AAPL"), interval="1d", feature_names=manifest.feature_names)


# ----- --resume on a finished run -------------------------------------------------------------------------------


def test_resume_on_a_finished_run_refuses_instead_of_training_again(tmp_path, capsys):
    from engine import train
    from engine.training.config import TrainingError
    from engine.training.loop import train_walk_forward
    from engine.training.presets import quick_config
    from storage.panel import demo_panel

    run = tmp_path / "finished"
    save_checkpoint(run, demo_weights(), version_manifest("finished-run"))
    assert checkpoint_written(run) == ("finished-run", "2026-12-01T23:02:39Z")
    loaded = demo_panel("1d")
    expected = (r"run finished-run is finished \(checkpoint written at 2026-12-01T23:02:39Z in .*\): nothing to "
                r"resume; choose another --out to train again")
    with pytest.raises(TrainingError, match=expected):
        train_walk_forward(loaded.panel, quick_config("1d"), interval="1d", fingerprint=loaded.fingerprint(),
                           run_dir=run, resume=True)
    assert train.main(["--demo", "1d", "--out", str(run), "--resume", "--no-register", "--no-evaluate"]) == 2
    assert "nothing to resume; choose another --out" in capsys.readouterr().err
    assert read_pair(run) == ("finished-run", int(demo_weights()["final_norm.weight"][0, 0]))  # untouched
    assert checkpoint_written(tmp_path / "nothing") is None
