"""Checkpoints: safetensors weights plus one JSON manifest, and a registry of runs the app can list.

Nothing here unpickles: weights go through safetensors, everything else is JSON. A checkpoint records the data it
was trained on (a fingerprint) so it can refuse a panel it does not fit and so diagnostics can be cached per
(checkpoint, data) pair.
"""
from __future__ import annotations

import json
import math
import os
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from filelock import FileLock
from safetensors.torch import load_file, save_file

from storage.panel import DataFingerprint, asset_name

RUNS_ENV_VAR = "REGIME_RUNS"
DEFAULT_RUNS_DIR = Path("data") / "runs"
DEMO_CHECKPOINT_DIR = Path(__file__).resolve().parents[2] / "assets" / "demo_checkpoint"
WEIGHTS_FILE = "weights.safetensors"
MANIFEST_FILE = "manifest.json"
REGISTRY_FILE = "registry.jsonl"
# 2: ModelConfig holds architecture only (loss_weights moved to the training config); point_head, lead_path and
#    lead_features are written by every checkpoint. Older manifests are upgraded on load (see upgrade_manifest).
# 3: the training spans are timestamps: training["fit_span_utc"] (the scaler's fit span: first and last bar open,
#    UTC) beside training["fold_spans_utc"] (every fold's train/val/test), so a checkpoint maps its spans onto any
#    panel by time (engine.diagnostics.for_run); the row ranges stay as the record of the panel it was trained on.
FORMAT_VERSION = 3


class CheckpointError(ValueError):
    """A checkpoint that cannot be used: unreadable, corrupt, or not fitting the data it is asked to run on."""


@dataclass
class Manifest:
    run_id: str
    model_config: dict[str, Any]
    feature_names: list[str]
    scaler: dict[str, Any]
    fingerprint: DataFingerprint
    created_at: str
    device: str
    scores: dict[str, Any] = field(default_factory=dict)
    training: dict[str, Any] = field(default_factory=dict)
    format_version: int = FORMAT_VERSION

    def to_json(self) -> str:
        data = asdict(self)
        return json.dumps(data, indent=1, default=_json_default, allow_nan=False)

    @classmethod
    def from_json(cls, text: str) -> "Manifest":
        data = upgrade_manifest(json.loads(text))
        data["fingerprint"] = DataFingerprint.from_dict(data["fingerprint"])
        return cls(**data)


# ----- manifest migrations -------------------------------------------------------------------------------------------
#
# A checkpoint's manifest is read as written and upgraded in memory, one format at a time, so an old checkpoint
# loads into today's code without config fields that exist only to describe yesterday's layout. The weights need
# no migration: their names and shapes follow from the upgraded config.

# The model fields format 1 manifests may lack (written before the field existed), with the value that
# reproduces the layout those checkpoints have: no mean head, no lead path.
_V1_MODEL_LAYOUT = {"point_head": False, "lead_path": False, "lead_features": None}


def _v1_model_config(model_config: dict[str, Any]) -> tuple[dict[str, Any], Any]:
    """A format 1 ModelConfig dict -> (the format 2 dict, the loss weights it held or None)."""
    upgraded = {**_V1_MODEL_LAYOUT, **model_config}
    return upgraded, upgraded.pop("loss_weights", None)


def _v1_to_v2(data: dict[str, Any]) -> dict[str, Any]:
    """Format 1 kept the training loss's weights in model_config; format 2 keeps them in the training config
    (manifest.training["config"]["loss_weights"], where TrainConfig reads them) and writes every model field."""
    data = {**data}
    data["model_config"], loss_weights = _v1_model_config(data["model_config"])
    training = dict(data.get("training") or {})
    if isinstance(training.get("config"), dict):
        config = dict(training["config"])
        if isinstance(config.get("model"), dict):
            config["model"], trained_with = _v1_model_config(config["model"])
            loss_weights = trained_with if trained_with is not None else loss_weights
        if loss_weights is not None:
            config.setdefault("loss_weights", loss_weights)
        training["config"] = config
    elif loss_weights is not None:  # no training config to hold them: keep them beside it rather than drop them
        training["loss_weights"] = loss_weights
    data["training"] = training
    return {**data, "format_version": 2}


def _v2_to_v3(data: dict[str, Any]) -> dict[str, Any]:
    """Format 2 recorded the scaler's fit span as rows only; format 3 also as timestamps (training["fit_span_utc"]).
    The training loop fits the checkpoint's scaler on the last fold's training rows, so the fold whose training
    rows are the fit rows gives the span's times (from fold_spans_utc). A manifest without them keeps its rows
    only, and engine.diagnostics.for_run reads those on a panel that starts where the checkpoint's data did."""
    data = {**data}
    training = data.get("training")
    if isinstance(training, dict) and "fit_span_utc" not in training:
        span = _fit_span_from_folds(data.get("scaler"), training)
        if span is not None:
            data["training"] = {**training, "fit_span_utc": span}
    return {**data, "format_version": 3}


def _fit_span_from_folds(scaler: Any, training: dict[str, Any]) -> list[str] | None:
    fit_rows = scaler.get("fit_rows") if isinstance(scaler, dict) else None
    folds, spans = training.get("folds") or [], training.get("fold_spans_utc") or []
    if fit_rows is None or len(folds) != len(spans):
        return None
    for fold, span in zip(folds, spans):
        if list(fold.get("train", ())) == list(fit_rows) and "train" in span:
            return list(span["train"])
    return None


MIGRATIONS = {1: _v1_to_v2, 2: _v2_to_v3}  # format n -> n+1


def upgrade_manifest(data: dict[str, Any]) -> dict[str, Any]:
    """A manifest dict of any format this code knows -> the same manifest in FORMAT_VERSION. The input is not
    modified. A format newer than this code, or none at all, is refused with what to do."""
    version = data.get("format_version")
    if not isinstance(version, int) or isinstance(version, bool) or not 1 <= version:
        raise CheckpointError(f"checkpoint manifest has no valid format_version (got {version!r}): it was not "
                              f"written by this dashboard's engine.model.checkpoint; retrain it")
    if version > FORMAT_VERSION:
        raise CheckpointError(f"checkpoint format {version} is newer than this code reads (format {FORMAT_VERSION}): "
                              f"update the dashboard's code (git pull) to load it, or retrain the checkpoint with "
                              f"this version")
    while version < FORMAT_VERSION:
        data = MIGRATIONS[version](data)
        version = data["format_version"]
    return data


def _json_default(value):
    if isinstance(value, (np.floating, np.integer)):
        value = value.item()
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, (tuple, set)):
        return list(value)
    if isinstance(value, np.ndarray):
        return value.tolist()
    raise TypeError(f"{type(value).__name__} is not JSON-serialisable")


def resolve_runs_dir(explicit: str | os.PathLike | None = None) -> Path:
    if explicit:
        return Path(explicit)
    return Path(os.environ.get(RUNS_ENV_VAR, DEFAULT_RUNS_DIR))


def save_checkpoint(directory: str | os.PathLike, state_dict: dict[str, torch.Tensor], manifest: Manifest) -> Path:
    """Write weights and manifest atomically (temporary names, then os.replace); refuse non-finite weights."""
    directory = Path(directory)
    bad = [name for name, tensor in state_dict.items() if not torch.isfinite(tensor).all()]
    if bad:
        raise CheckpointError(f"refusing to save weights with NaN or infinite values in: {', '.join(bad[:5])}")
    directory.mkdir(parents=True, exist_ok=True)
    tensors = {name: t.detach().to("cpu").contiguous() for name, t in state_dict.items()}
    weights_tmp = directory / (WEIGHTS_FILE + ".tmp")
    manifest_tmp = directory / (MANIFEST_FILE + ".tmp")
    save_file(tensors, str(weights_tmp), metadata={"run_id": manifest.run_id})
    manifest_tmp.write_text(manifest.to_json())
    os.replace(weights_tmp, directory / WEIGHTS_FILE)
    os.replace(manifest_tmp, directory / MANIFEST_FILE)
    return directory


def load_checkpoint(directory: str | os.PathLike) -> tuple[dict[str, torch.Tensor], Manifest]:
    directory = Path(directory)
    manifest_path, weights_path = directory / MANIFEST_FILE, directory / WEIGHTS_FILE
    if not manifest_path.exists() or not weights_path.exists():
        raise CheckpointError(f"{directory} is not a checkpoint: it needs {MANIFEST_FILE} and {WEIGHTS_FILE}")
    try:
        manifest = Manifest.from_json(manifest_path.read_text())
        weights = load_file(str(weights_path), device="cpu")
    except (json.JSONDecodeError, KeyError, TypeError, OSError) as error:
        raise CheckpointError(f"checkpoint {directory} is unreadable: {error}") from error
    except Exception as error:  # safetensors raises its own SafetensorError for corrupt files
        raise CheckpointError(f"checkpoint weights in {weights_path} are corrupt: {error}") from error
    return weights, manifest


def check_fits(manifest: Manifest, *, symbols, interval: str, feature_names) -> None:
    """Refuse, with the reason, a checkpoint whose inputs differ from the panel it is asked to run on.

    Symbols are compared as assets (storage.symbols: BTC-USD is BTC) and in order: the model's asset order is fixed.
    """
    fp = manifest.fingerprint
    problems = []
    assets, trained = run_assets(symbols), run_assets(fp.symbols)
    if assets != trained:
        problem = f"it was trained on symbols {', '.join(fp.symbols)} but the panel has {', '.join(symbols)}"
        if sorted(assets) == sorted(trained):
            problem += f" (read the panel in the checkpoint's order, {', '.join(trained)})"
        problems.append(problem)
    if interval != fp.interval:
        problems.append(f"it was trained on {fp.interval} bars but the panel is {interval}")
    if list(feature_names) != list(manifest.feature_names):
        problems.append("its input features differ from the ones computed now (retrain after a feature change)")
    if problems:
        raise CheckpointError(f"checkpoint {manifest.run_id} does not fit this data: " + "; ".join(problems) + ".")


def new_run_id(prefix: str = "run") -> str:
    return f"{prefix}-{time.strftime('%Y%m%d-%H%M%S', time.gmtime())}-{os.getpid() % 10000:04d}"


def register_run(runs_dir: str | os.PathLike, manifest: Manifest, path: str | os.PathLike) -> None:
    """Append one line per finished run; a file lock keeps concurrent trainers from interleaving lines."""
    runs_dir = Path(runs_dir)
    runs_dir.mkdir(parents=True, exist_ok=True)
    entry = {
        "run_id": manifest.run_id, "path": str(path), "created_at": manifest.created_at, "device": manifest.device,
        "symbols": list(manifest.fingerprint.symbols), "interval": manifest.fingerprint.interval,
        "span": [manifest.fingerprint.first_ts, manifest.fingerprint.last_ts],
        "data_hash": manifest.fingerprint.content_hash, "scores": manifest.scores,
    }
    with FileLock(str(runs_dir / (REGISTRY_FILE + ".lock")), timeout=10):
        with open(runs_dir / REGISTRY_FILE, "a", encoding="utf-8") as handle:
            handle.write(json.dumps(entry, default=_json_default) + "\n")


def run_assets(symbols) -> tuple[str, ...]:
    """The asset names of a model's symbols, in its order (BTC-USD -> BTC)."""
    return tuple(asset_name(symbol) for symbol in symbols)


def fitting_runs(runs: list[dict], symbols, interval: str) -> list[dict]:
    """The runs (list_runs entries) trained on the same SET of assets at this interval, in any order: a model reads
    its assets in its own order (the entry's "assets"), so the caller reads the panel in that order."""
    wanted = sorted(run_assets(symbols))
    return [run for run in runs
            if run.get("interval") == interval and sorted(run_assets(run.get("symbols", ()))) == wanted]


def list_runs(runs_dir: str | os.PathLike | None = None, include_demo: bool = True) -> list[dict]:
    """Registered runs, newest first, then the shipped demo checkpoint; unreadable lines are skipped.

    Each entry has the run's symbols as trained and "assets": their asset names in the model's order.
    """
    runs: list[dict] = []
    registry = resolve_runs_dir(runs_dir) / REGISTRY_FILE
    if registry.exists():
        for line in registry.read_text(encoding="utf-8").splitlines():
            try:
                entry = json.loads(line)
            except json.JSONDecodeError:
                continue
            if Path(entry.get("path", "")).joinpath(MANIFEST_FILE).exists():
                runs.append({**entry, "assets": list(run_assets(entry.get("symbols", ())))})
    runs.sort(key=lambda e: e.get("created_at", ""), reverse=True)
    if include_demo and (DEMO_CHECKPOINT_DIR / MANIFEST_FILE).exists():
        manifest = Manifest.from_json((DEMO_CHECKPOINT_DIR / MANIFEST_FILE).read_text())
        runs.append({
            "run_id": manifest.run_id, "path": str(DEMO_CHECKPOINT_DIR), "created_at": manifest.created_at,
            "device": manifest.device, "symbols": list(manifest.fingerprint.symbols),
            "interval": manifest.fingerprint.interval,
            "span": [manifest.fingerprint.first_ts, manifest.fingerprint.last_ts],
            "data_hash": manifest.fingerprint.content_hash, "scores": manifest.scores, "demo": True,
            "assets": list(run_assets(manifest.fingerprint.symbols)),
        })
    return runs


# ----- resumable training state (weights + AdamW moments), same rules: safetensors and JSON only ---------------------

TRAINING_STATE_TENSORS = "state.safetensors"
TRAINING_STATE_JSON = "state.json"


def save_training_state(directory: str | os.PathLike, weights: dict[str, torch.Tensor], optimizer: torch.optim.Optimizer,
                        best_weights: dict[str, torch.Tensor], meta: dict[str, Any]) -> Path:
    """Everything an epoch boundary needs to continue: current and best weights, the optimiser's per-parameter
    tensors, and JSON for the rest (counters, the optimiser's hyper-parameters). Non-finite weights are refused."""
    directory = Path(directory)
    tensors = {f"model.{k}": v for k, v in weights.items()}
    tensors.update({f"best.{k}": v for k, v in best_weights.items()})
    bad = [name for name, tensor in tensors.items() if not torch.isfinite(tensor).all()]
    if bad:
        raise CheckpointError(f"refusing to save a training state with NaN or infinite values in: {', '.join(bad[:5])}")
    opt = optimizer.state_dict()
    for index, per_param in opt["state"].items():
        for key, value in per_param.items():
            tensors[f"optim.{index}.{key}"] = torch.as_tensor(value)
    directory.mkdir(parents=True, exist_ok=True)
    tmp_tensors, tmp_json = directory / (TRAINING_STATE_TENSORS + ".tmp"), directory / (TRAINING_STATE_JSON + ".tmp")
    save_file({k: v.detach().to("cpu").contiguous() for k, v in tensors.items()}, str(tmp_tensors))
    tmp_json.write_text(json.dumps({"meta": meta, "param_groups": opt["param_groups"]}, default=_json_default,
                                   allow_nan=False))
    os.replace(tmp_tensors, directory / TRAINING_STATE_TENSORS)
    os.replace(tmp_json, directory / TRAINING_STATE_JSON)
    return directory


def load_training_state(directory: str | os.PathLike, optimizer: torch.optim.Optimizer
                        ) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor], dict[str, Any]]:
    """Restore the optimiser in place; return (current weights, best weights, meta)."""
    directory = Path(directory)
    try:
        tensors = load_file(str(directory / TRAINING_STATE_TENSORS), device="cpu")
        saved = json.loads((directory / TRAINING_STATE_JSON).read_text())
    except (OSError, json.JSONDecodeError) as error:
        raise CheckpointError(f"training state in {directory} is unreadable: {error}") from error
    except Exception as error:  # SafetensorError
        raise CheckpointError(f"training state in {directory} is corrupt: {error}") from error
    weights = {k.removeprefix("model."): v for k, v in tensors.items() if k.startswith("model.")}
    best = {k.removeprefix("best."): v for k, v in tensors.items() if k.startswith("best.")}
    per_param: dict[int, dict[str, torch.Tensor]] = {}
    for name, value in tensors.items():
        if name.startswith("optim."):
            _, index, key = name.split(".", 2)
            per_param.setdefault(int(index), {})[key] = value
    device = next((p.device for g in optimizer.param_groups for p in g["params"]), torch.device("cpu"))
    optimizer.load_state_dict({"state": {i: {k: (v if k == "step" else v.to(device)) for k, v in s.items()}
                                         for i, s in per_param.items()},
                               "param_groups": saved["param_groups"]})
    return weights, best, saved["meta"]


def update_manifest_scores(directory: str | os.PathLike, scores: dict[str, Any]) -> Manifest:
    """Replace the scores in a checkpoint's manifest (atomically), leaving the weights untouched."""
    directory = Path(directory)
    manifest = Manifest.from_json((directory / MANIFEST_FILE).read_text())
    manifest.scores = scores
    tmp = directory / (MANIFEST_FILE + ".tmp")
    tmp.write_text(manifest.to_json())
    os.replace(tmp, directory / MANIFEST_FILE)
    return manifest
