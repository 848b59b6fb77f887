"""Checkpoints: safetensors weights plus one JSON manifest, and a registry of runs the app can list.

Nothing here unpickles: weights go through safetensors, everything else is JSON. A checkpoint records the data it
was trained on (a fingerprint) so it can refuse a panel it does not fit and so diagnostics can be cached per
(checkpoint, data) pair.

A checkpoint is read as untrusted input: every manifest field is type- and bound-checked (validate_manifest; the
model's sizes against what the app can run, engine.model.config.MAX_*) before anything is built, and the weights
(check_weights) must be exactly the finite float tensors, names and shapes the config builds. Every failure is a
CheckpointError whose message names the field or tensor, what it holds and what was expected.

On disk (save_checkpoint, one atomic publish; no symlinks, so a run folder is written on Windows without admin
rights and still loads after a copy or a zip):

    <run dir>/ckpt-<UTC time>-<random>/weights.safetensors   one published version: weights and manifest together
    <run dir>/ckpt-<UTC time>-<random>/manifest.json
    <run dir>/CURRENT_VERSION                                one line naming the published version, replaced with
                                                             os.replace of a complete, fsync'd temporary file

Every reader finds the files through published_files(run dir) (read_manifest and load_checkpoint resolve it again
if a concurrent publish removes the version they resolved); nothing opens <run dir>/manifest.json by name. Two older
layouts are read as before and move to this one at their next publish: the two files side by side in the run
directory (the shipped demo checkpoint, which is never rewritten by reading), and a `current` symlink naming the
version, with manifest.json and weights.safetensors linked through it (written by this module before the pointer).
"""
from __future__ import annotations

import json
import math
import os
import re
import secrets
import shutil
import stat
import time
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field, fields
from datetime import datetime, timedelta, timezone
from functools import lru_cache
from numbers import Integral, Real
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
from filelock import FileLock

from engine.features import FeatureConfig, FeatureScaler
from engine.model.config import MAX_PARAMETERS, ModelConfig
from storage.panel import DataFingerprint, asset_name

if TYPE_CHECKING:  # torch is imported where weights are read or written: listing runs and reading manifests
    import torch  # (the app's frame and the fit checks) never pay for it

RUNS_ENV_VAR = "REGIME_RUNS"
DEFAULT_RUNS_DIR = Path("data") / "runs"
DEMO_CHECKPOINT_DIR = Path(__file__).resolve().parents[2] / "assets" / "demo_checkpoint"
WEIGHTS_FILE = "weights.safetensors"
MANIFEST_FILE = "manifest.json"
REGISTRY_FILE = "registry.jsonl"
POINTER_FILE = "CURRENT_VERSION"  # one line: the name of the published ckpt-* directory (see the module docstring)
MAX_POINTER_BYTES = 256
CURRENT_LINK = "current"  # the symlink the previous layout published with: still read, removed at the next publish
VERSION_PREFIX = "ckpt-"
PUBLISH_LOCK = ".checkpoint.lock"
# 2: ModelConfig holds architecture only (loss_weights moved to the training config); point_head, lead_path and
#    lead_features are written by every checkpoint. Older manifests are upgraded on load (see upgrade_manifest).
# 3: the training spans are timestamps: training["fit_span_utc"] (the scaler's fit span: first and last bar open,
#    UTC) beside training["fold_spans_utc"] (every fold's train/val/test), so a checkpoint maps its spans onto any
#    panel by time (engine.diagnostics.for_run); the row ranges stay as the record of the panel it was trained on.
FORMAT_VERSION = 3

# Bounds on what a checkpoint may hold beyond the model's sizes (those are engine.model.config's MAX_*).
MAX_MANIFEST_BYTES = 16 * 2**20
MAX_TEXT = 200  # run_id, device, symbols, feature names, interval, hashes
MAX_FOLDS = 1000
MAX_FEATURE_WINDOW = 100_000  # bars, for engine.features.FeatureConfig's windows and periods
FLOAT_DTYPES = {"F16": 2, "BF16": 2, "F32": 4, "F64": 8}  # safetensors dtype -> bytes per value
MIN_YEAR, MAX_YEAR = 1900, 2200  # timestamps outside are not dates a market had (and overflow pandas after 2262)
# A registry date later than now by more than this is not believed (clocks of two machines differ a little).
CLOCK_SKEW = timedelta(minutes=10)


class CheckpointError(ValueError):
    """A checkpoint that cannot be used: unreadable, corrupt, not fitting the data it is asked to run on, beyond what
    the app runs, or of a format this code does not read. The message says which and what to do."""


RETRAIN = "retrain it (Model page, or python -m engine.train)"


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

    @property
    def cache_id(self) -> str:
        """What results computed from this checkpoint are cached under: the run id and when this checkpoint was
        written. A run re-made under the same id (the demo's command, a resumed run) is another checkpoint; keyed by
        the run id alone, its diagnostics were read from the checkpoint before it."""
        return f"{self.run_id}@{self.created_at}"

    def to_json(self) -> str:
        data = asdict(self)
        return json.dumps(data, indent=1, default=_json_default, allow_nan=False)

    @classmethod
    def from_json(cls, text: str | bytes, where: str = "checkpoint manifest", *, app_limits: bool = False
                  ) -> "Manifest":
        """Parse, upgrade to FORMAT_VERSION and check every field (validate_manifest; with app_limits also the
        model's sizes against what the app runs, as load_checkpoint does); CheckpointError otherwise. `where` names
        the checkpoint in messages."""
        try:
            data = json.loads(text)
        except (json.JSONDecodeError, UnicodeDecodeError, RecursionError) as error:
            raise CheckpointError(f"{where} is not valid JSON ({error}): the file is damaged; restore it or "
                                  f"{RETRAIN}") from error
        if not isinstance(data, dict):
            raise CheckpointError(f"{where} must be a JSON object, got {type(data).__name__}: {RETRAIN}")
        data = upgrade_manifest(data, where)
        validate_manifest(data, where, app_limits=app_limits)
        return cls(**{**data, "fingerprint": DataFingerprint.from_dict(data["fingerprint"])})


# ----- manifest checks -----------------------------------------------------------------------------------------------

_REQUIRED_FIELDS = ("run_id", "model_config", "feature_names", "scaler", "fingerprint", "created_at", "device")
_FINGERPRINT_FIELDS = {"symbols", "interval", "first_ts", "last_ts", "n_rows", "content_hash", "sources"}
_SPAN_NAMES = ("train", "val", "test")


def _short(value: Any, limit: int = 60) -> str:
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


_OMIT = object()


class _Invalid(Exception):
    """One field that fails its check: (field path, its value, what it must be); turned into a CheckpointError."""

    def __init__(self, name: str, value: Any, rule: str):
        shown = "" if value is _OMIT else f" = {_short(value)}"
        super().__init__(f"manifest field {name}{shown}: {rule}" if name else f"manifest {rule}")


def _is_int(value: Any) -> bool:
    return isinstance(value, Integral) and not isinstance(value, bool)


def _text(name: str, value: Any, *, limit: int = MAX_TEXT, empty: bool = False) -> str:
    if not isinstance(value, str):
        raise _Invalid(name, value, "must be a string")
    if len(value) > limit or (not value and not empty) or any(ord(c) < 32 or ord(c) == 127 for c in value):
        raise _Invalid(name, value, f"must be {'' if empty else 'non-empty '}text of at most {limit} printable "
                                    "characters")
    return value


def _texts(name: str, value: Any, *, count: int | None = None, limit: int = MAX_TEXT) -> list[str]:
    if not isinstance(value, list):
        raise _Invalid(name, value, "must be a list of strings")
    if count is not None and len(value) != count:
        raise _Invalid(name, value, f"must hold {count} entries (the model's), not {len(value)}")
    for index, item in enumerate(value):
        _text(f"{name}[{index}]", item, limit=limit)
    return value


def parse_utc(value: Any) -> datetime | None:
    """An ISO 8601 timestamp string -> an aware UTC datetime (naive is read as UTC); None when it is not one or its
    year is outside [MIN_YEAR, MAX_YEAR]."""
    if not isinstance(value, str) or not 0 < len(value) <= 64:
        return None
    try:
        stamp = datetime.fromisoformat(value)
    except ValueError:
        return None
    stamp = stamp.replace(tzinfo=timezone.utc) if stamp.tzinfo is None else stamp.astimezone(timezone.utc)
    return stamp if MIN_YEAR <= stamp.year <= MAX_YEAR else None


def _timestamp(name: str, value: Any, *, empty: bool = False) -> None:
    if empty and value == "":
        return
    if parse_utc(value) is None:
        raise _Invalid(name, value, f"must be an ISO 8601 timestamp between {MIN_YEAR} and {MAX_YEAR}")


def _span(name: str, value: Any) -> None:
    if not isinstance(value, list) or len(value) != 2:
        raise _Invalid(name, value, "must be [first, last] ISO timestamps")
    _timestamp(f"{name}[0]", value[0])
    _timestamp(f"{name}[1]", value[1])
    if parse_utc(value[0]) > parse_utc(value[1]):
        raise _Invalid(name, value, "first must not be after last")


def _rows(name: str, value: Any) -> None:
    if not isinstance(value, list) or len(value) != 2 or not all(_is_int(v) for v in value) \
            or not 0 <= value[0] <= value[1]:
        raise _Invalid(name, value, "must be [start, stop) rows with 0 <= start <= stop")


def _feature_config(name: str, value: Any) -> None:
    if not isinstance(value, dict):
        raise _Invalid(name, value, "must be a JSON object of engine.features.FeatureConfig fields")
    defaults = {f.name: f.default for f in fields(FeatureConfig)}
    unknown = sorted(set(value) - set(defaults))
    if unknown:
        raise _Invalid(name, unknown, f"are not FeatureConfig fields (known: {', '.join(defaults)})")
    for key, item in value.items():
        if key in ("names", "unclipped"):
            strings = item if isinstance(item, list) and all(isinstance(v, str) for v in item) else None
            if strings is None and key == "unclipped":
                raise _Invalid(f"{name}.{key}", item, "must be a list of feature names")
            try:
                FeatureConfig(**({"names": strings or ()} if key == "names" else
                                 {"names": value.get("names", FeatureConfig().names), "unclipped": strings}))
            except (ValueError, TypeError) as error:
                raise _Invalid(f"{name}.{key}", item, str(error)) from None
        elif key == "clip_quantile":
            if not (isinstance(item, Real) and not isinstance(item, bool) and 0 <= item < 0.5):
                raise _Invalid(f"{name}.{key}", item, "must be a number in [0, 0.5)")
        elif isinstance(defaults[key], float):
            if not (isinstance(item, Real) and not isinstance(item, bool) and math.isfinite(item) and 0 < item <= 100):
                raise _Invalid(f"{name}.{key}", item, "must be a number in (0, 100]")
        elif not (_is_int(item) and 1 <= item <= MAX_FEATURE_WINDOW):
            raise _Invalid(f"{name}.{key}", item, f"must be a whole number of bars in 1..{MAX_FEATURE_WINDOW}")


def _training(value: Any) -> None:
    if not isinstance(value, dict):
        raise _Invalid("training", value, "must be a JSON object")
    # Present keys must have their types (the readers use .get(key, default), which a null would defeat).
    if "config" in value:
        config = value["config"]
        if not isinstance(config, dict):
            raise _Invalid("training.config", config, "must be a JSON object (the TrainConfig)")
        if "features" in config:
            _feature_config("training.config.features", config["features"])
    if "fit_span_utc" in value:
        _span("training.fit_span_utc", value["fit_span_utc"])
    for key, check in (("fold_spans_utc", _span), ("folds", _rows)):
        if key not in value:
            continue
        folds = value[key]
        if not isinstance(folds, list) or len(folds) > MAX_FOLDS:
            raise _Invalid(f"training.{key}", folds, f"must be a list of at most {MAX_FOLDS} folds")
        for index, fold in enumerate(folds):
            if not isinstance(fold, dict):
                raise _Invalid(f"training.{key}[{index}]", fold, "must be a JSON object")
            if key == "fold_spans_utc" and "test" not in fold:
                raise _Invalid(f"training.{key}[{index}]", fold, "must have its test span")
            for span in _SPAN_NAMES:
                if span in fold:
                    check(f"training.{key}[{index}].{span}", fold[span])


def _fingerprint(value: Any, n_assets: int) -> None:
    if not isinstance(value, dict):
        raise _Invalid("fingerprint", value, "must be a JSON object")
    unknown = sorted(set(value) - _FINGERPRINT_FIELDS)
    missing = sorted(_FINGERPRINT_FIELDS - set(value) - {"sources"})
    if unknown or missing:
        raise _Invalid("fingerprint", _OMIT, f"has unknown fields {unknown}" if unknown
                       else f"lacks the required fields {missing}")
    _texts("fingerprint.symbols", value["symbols"], count=n_assets)
    _text("fingerprint.interval", value["interval"], limit=16)
    _timestamp("fingerprint.first_ts", value["first_ts"], empty=True)
    _timestamp("fingerprint.last_ts", value["last_ts"], empty=True)
    if not (_is_int(value["n_rows"]) and value["n_rows"] >= 0):
        raise _Invalid("fingerprint.n_rows", value["n_rows"], "must be a whole number >= 0")
    _text("fingerprint.content_hash", value["content_hash"], limit=128, empty=True)
    if "sources" in value:
        _texts("fingerprint.sources", value["sources"])


def validate_manifest(data: dict[str, Any], where: str = "checkpoint manifest", *, app_limits: bool = False
                      ) -> ModelConfig:
    """Check every field of a manifest dict in FORMAT_VERSION before anything is built from it: types, lengths,
    finite numbers, timestamps, and with app_limits the model's sizes against what the app runs
    (ModelConfig.check_app_limits: load_checkpoint asks for it; reading a manifest to score or register a run
    trained for a larger machine does not). Returns the model config; CheckpointError naming the field, its value
    and the bound otherwise."""
    try:
        unknown = sorted(set(data) - {f.name for f in fields(Manifest)})
        missing = [name for name in _REQUIRED_FIELDS if name not in data]
        if unknown or missing:
            raise _Invalid("", _OMIT, f"has unknown fields {unknown}" if unknown
                           else f"lacks the required fields {missing}")
        _text("run_id", data["run_id"])
        if not isinstance(data["model_config"], dict):
            raise _Invalid("model_config", data["model_config"], "must be a JSON object")
        try:
            config = ModelConfig.from_dict(data["model_config"])
        except (ValueError, TypeError) as error:
            raise CheckpointError(f"{where}: manifest field model_config: {error}; {RETRAIN}") from error
        try:
            if app_limits:
                config.check_app_limits()
        except ValueError as error:
            raise CheckpointError(f"{where}: manifest field model_config: {error}; this app cannot run it: "
                                  f"{RETRAIN} within those sizes") from error
        _texts("feature_names", data["feature_names"], count=config.n_features)
        _fingerprint(data["fingerprint"], config.n_assets)
        scaler = data["scaler"]
        if scaler != {}:  # {}: none recorded (load_checkpoint refuses that; a manifest may still be read)
            try:
                parsed = FeatureScaler.from_dict(scaler)
            except ValueError as error:
                raise _Invalid("scaler", _OMIT, str(error)) from error
            if list(parsed.names) != list(data["feature_names"]):
                raise _Invalid("scaler.names", scaler["names"], "must equal feature_names")
            if list(parsed.symbols) != list(data["fingerprint"]["symbols"]):
                raise _Invalid("scaler.symbols", scaler["symbols"], "must equal fingerprint.symbols")
        _timestamp("created_at", data["created_at"])
        _text("device", data["device"], empty=True)
        if not isinstance(data.get("scores", {}), dict):
            raise _Invalid("scores", data["scores"], "must be a JSON object")
        _training(data.get("training", {}))
        if data.get("format_version", FORMAT_VERSION) != FORMAT_VERSION:
            raise _Invalid("format_version", data["format_version"], f"must be {FORMAT_VERSION} after the upgrade")
    except _Invalid as error:
        raise CheckpointError(f"{where}: {error}; {RETRAIN}") from error
    return config


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


def upgrade_manifest(data: dict[str, Any], where: str = "checkpoint manifest") -> dict[str, Any]:
    """A manifest dict of any format this code knows -> the same manifest in FORMAT_VERSION. The input is not
    modified. A format newer than this code, or none at all, is refused with what to do."""
    if not isinstance(data, dict):
        raise CheckpointError(f"{where} must be a JSON object, got {type(data).__name__}: {RETRAIN}")
    version = data.get("format_version")
    if not isinstance(version, int) or isinstance(version, bool) or not 1 <= version:
        raise CheckpointError(f"{where} has no valid format_version (got {_short(version)}): it was not "
                              f"written by this dashboard's engine.model.checkpoint; retrain it")
    if version > FORMAT_VERSION:
        raise CheckpointError(f"checkpoint format {version} is newer than this code reads (format {FORMAT_VERSION}): "
                              f"update the dashboard's code (git pull) to load it, or retrain the checkpoint with "
                              f"this version ({where}; this app reads formats 1 to {FORMAT_VERSION})")
    while version < FORMAT_VERSION:
        try:
            data = MIGRATIONS[version](data)
        except (KeyError, TypeError, AttributeError, ValueError) as error:  # a malformed old manifest
            raise CheckpointError(f"{where} is format {version} but malformed, so it cannot be upgraded to format "
                                  f"{FORMAT_VERSION} ({type(error).__name__}: {_short(str(error), 120)}); "
                                  f"{RETRAIN}") from error
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


# ----- one atomic publish --------------------------------------------------------------------------------------------
#
# Two files cannot be replaced together by renames: a kill between two os.replace calls pairs new weights with an
# old manifest. So a checkpoint is published as one unit. The weights and the manifest are written into a NEW
# directory ckpt-<time>-<random> (each file fsync'd, then the directory), and ONE rename makes it the checkpoint:
# the pointer file CURRENT_VERSION, one line naming that directory, is written complete and fsync'd under a
# temporary name and os.replace'd onto the old pointer (rename(2) on POSIX, MoveFileEx with MOVEFILE_REPLACE_EXISTING
# on Windows: atomic on both, and neither needs a symlink, so a run folder works on a Windows laptop without admin
# rights and survives a copy or a zip). A reader resolves the pointer once (published_files) and reads both files from
# that directory, so it sees the old pair or the new pair, never a mix. Afterwards other ckpt-* directories, the
# temporaries a killed publish left and the files of an older layout are removed. A kill at any point leaves the last
# published pair readable; what it leaves behind is never read and is removed at the next publish (under a file lock,
# so two writers of one run directory take turns). A reader that finds its version removed under it (a publish
# between resolving and reading) resolves the pointer again (_read_published, a bounded number of times).


def save_checkpoint(directory: str | os.PathLike, state_dict: dict[str, torch.Tensor], manifest: Manifest) -> Path:
    """Publish weights and manifest together, atomically (see above); refuse non-finite weights."""
    directory = Path(directory)
    import torch
    from safetensors.torch import save

    bad = [name for name, tensor in state_dict.items() if not torch.isfinite(tensor).all()]
    if bad:
        raise CheckpointError(f"refusing to save weights with NaN or infinite values in: {', '.join(bad[:5])}")
    tensors = {name: t.detach().to("cpu").contiguous() for name, t in state_dict.items()}
    directory.mkdir(parents=True, exist_ok=True)
    with FileLock(str(directory / PUBLISH_LOCK), timeout=60):
        version = _new_version(directory)
        _write_synced(version / WEIGHTS_FILE, save(tensors, metadata={"run_id": manifest.run_id}))
        _write_synced(version / MANIFEST_FILE, manifest.to_json().encode())
        _publish(directory, version)
    return directory


def update_manifest_scores(directory: str | os.PathLike, scores: dict[str, Any]) -> Manifest:
    """Replace the scores in a checkpoint's manifest, publishing a new version with the same weights (a hard link,
    or a copy where links are not possible): atomically, like save_checkpoint."""
    directory = Path(directory)
    with FileLock(str(directory / PUBLISH_LOCK), timeout=60):
        manifest, weights_path = _read_published(directory, lambda manifest_path, weights_path: (
            Manifest.from_json(_read_regular(manifest_path, MAX_MANIFEST_BYTES, directory),
                               f"checkpoint {directory}"), weights_path))
        manifest.scores = scores
        version = _new_version(directory)
        try:
            os.link(weights_path, version / WEIGHTS_FILE)
        except OSError:
            _copy_synced(weights_path, version / WEIGHTS_FILE)
        _write_synced(version / MANIFEST_FILE, manifest.to_json().encode())
        _publish(directory, version)
    return manifest


def _new_version(directory: Path) -> Path:
    name = f"{VERSION_PREFIX}{time.strftime('%Y%m%dT%H%M%SZ', time.gmtime())}-{secrets.token_hex(4)}"
    (directory / name).mkdir()
    return directory / name


def _write_synced(path: Path, data: bytes) -> None:
    with open(path, "xb") as handle:
        handle.write(data)
        handle.flush()
        os.fsync(handle.fileno())


def _copy_synced(source: Path, target: Path) -> None:
    with open(source, "rb") as reader, open(target, "xb") as writer:
        shutil.copyfileobj(reader, writer, 2**20)
        writer.flush()
        os.fsync(writer.fileno())


def _fsync_dir(path: Path) -> None:
    """Make a directory's entries durable (POSIX; Windows cannot open a directory to flush it, and NTFS journals its
    metadata)."""
    if os.name == "nt":
        return
    descriptor = os.open(path, os.O_RDONLY)
    try:
        os.fsync(descriptor)
    finally:
        os.close(descriptor)


def _replace(source: Path, target: Path) -> None:
    """os.replace, retried for a moment where Windows refuses to replace a file a reader holds open."""
    for attempt in range(100):
        try:
            os.replace(source, target)
            return
        except PermissionError:
            if os.name != "nt" or attempt == 99:
                raise
            time.sleep(0.01)


def _publish(directory: Path, version: Path) -> None:
    """The complete version directory becomes the checkpoint: fsync it, write the pointer's temporary, ONE rename of
    it onto the pointer (the commit), then the clean-up, which a kill may skip without harm."""
    _fsync_dir(version)
    temporary = directory / f".{POINTER_FILE}.{secrets.token_hex(4)}.tmp"
    _write_synced(temporary, f"{version.name}\n".encode("ascii"))
    _replace(temporary, directory / POINTER_FILE)  # THE commit
    _fsync_dir(directory)
    _remove_stale(directory, keep=version.name)


def _remove_stale(directory: Path, keep: str) -> None:
    """Versions no longer published, temporaries a killed publish left behind, and an older layout's files: the
    `current` symlink (or the directory a copy made of it), the links or plain files manifest.json and
    weights.safetensors beside it. The pointer is written already, so no reader resolves to any of them again; one
    that was reading them resolves again. Whatever cannot be removed now (a file Windows keeps while a reader has it
    open) is left for the next publish."""
    for child in directory.iterdir():
        try:
            if child.name.startswith(VERSION_PREFIX) and child.name != keep and not child.is_symlink() \
                    and child.is_dir():
                shutil.rmtree(child, ignore_errors=True)
            elif child.name.startswith(".") and child.name.endswith(".tmp") and not child.is_dir():
                child.unlink(missing_ok=True)  # a pointer's temporary, or the symlink layout's temporary link
            elif child.name == CURRENT_LINK and child.is_dir() and not child.is_symlink():
                shutil.rmtree(child, ignore_errors=True)
            elif child.name in (CURRENT_LINK, MANIFEST_FILE, WEIGHTS_FILE) and (child.is_symlink() or child.is_file()):
                child.unlink(missing_ok=True)
        except OSError:
            continue
    _fsync_dir(directory)


class _Moved(Exception):
    """The version being read was unpublished under the reader: resolve the pointer again."""


_VERSION_NAME = re.compile(re.escape(VERSION_PREFIX) + r"[A-Za-z0-9._-]{1,100}")


def _version_named(directory: Path, name: str, by: str) -> Path:
    if not _VERSION_NAME.fullmatch(name):
        raise CheckpointError(f"checkpoint {directory}: {by} names {_short(name)}, not one of its own "
                              f"{VERSION_PREFIX}* versions; {RETRAIN}")
    return directory / name


def _pointer(directory: Path) -> str | None:
    """The version name in the pointer file, None when there is none; CheckpointError when it is not one line of at
    most MAX_POINTER_BYTES in a regular file (a line end written on Windows, CRLF, is accepted)."""
    path = directory / POINTER_FILE
    try:
        info = os.stat(path)
        if not stat.S_ISREG(info.st_mode) or info.st_size > MAX_POINTER_BYTES:
            raise CheckpointError(f"checkpoint {directory}: {POINTER_FILE} is not a one-line file naming its "
                                  f"published version; {RETRAIN}")
        with open(path, "rb") as handle:
            raw = handle.read(MAX_POINTER_BYTES + 1)
    except FileNotFoundError:
        return None
    except OSError as error:
        raise CheckpointError(f"checkpoint {directory}: {POINTER_FILE} cannot be read ({error})") from error
    text = raw.decode("ascii", errors="replace")
    return text[:-1].removesuffix("\r") if text.endswith("\n") else text


def published_files(directory: str | os.PathLike) -> tuple[Path, Path]:
    """(manifest, weights) of the pair published in a run directory: THE way to find a checkpoint's files (nothing
    opens <run dir>/manifest.json by name). Inside the version the pointer file names; in a folder written by the
    symlink layout, inside the version its `current` link names (or `current` itself, where a copy followed the
    link); in a run folder written before either (the shipped demo), the two files side by side. Resolve once and
    read both files from the result; a reader racing a publish may find them removed and resolves again
    (read_manifest and load_checkpoint do). CheckpointError for a pointer or link naming anything but one of the
    run's own versions."""
    directory = Path(directory)
    name = _pointer(directory)
    current = directory / CURRENT_LINK
    if name is not None:
        base = _version_named(directory, name, POINTER_FILE)
    elif current.is_symlink():
        base = _version_named(directory, os.readlink(current), f"its {CURRENT_LINK} link")
    elif current.is_dir():
        base = current
    else:
        base = directory
    return base / MANIFEST_FILE, base / WEIGHTS_FILE


def _published_elsewhere(directory: Path) -> bool:
    """True when the run directory names a published version (a pointer, or the symlink layout's `current`)."""
    return os.path.lexists(directory / POINTER_FILE) or os.path.lexists(directory / CURRENT_LINK)


def _read_regular(path: Path, limit: int, directory: Path) -> bytes:
    """The bytes of a regular file of at most `limit` bytes (a FIFO or a device is never opened)."""
    try:
        info = os.stat(path)
        if not stat.S_ISREG(info.st_mode):
            raise CheckpointError(f"checkpoint {directory}: {path.name} is not a regular file; {RETRAIN}")
        if info.st_size > limit:
            raise CheckpointError(f"checkpoint {directory}: {path.name} is {info.st_size:,} bytes, more than a "
                                  f"checkpoint's {limit:,}; {RETRAIN}")
        with open(path, "rb") as handle:
            return handle.read(limit + 1)[:limit]
    except FileNotFoundError:
        raise _Moved() from None
    except OSError as error:
        raise CheckpointError(f"checkpoint {directory}: {path.name} cannot be read ({error})") from error


def _read_published(directory: Path, read, *, need_weights: bool = True):
    """read(manifest path, weights path) on the published pair, resolved again (a bounded number of times) when the
    version it resolved to is removed under it (read raises _Moved) or, for an old side-by-side folder, when a
    publish converts it while read."""
    vanished = None
    for _ in range(5):
        manifest_path, weights_path = published_files(directory)
        legacy = manifest_path.parent == directory
        if legacy and not (manifest_path.exists() and (weights_path.exists() or not need_weights)):
            if _published_elsewhere(directory):
                continue  # converted to the published layout since it was resolved
            needs = f"{MANIFEST_FILE} and {WEIGHTS_FILE}" if need_weights else MANIFEST_FILE
            raise CheckpointError(f"{directory} is not a checkpoint: it needs {needs}")
        try:
            result = read(manifest_path, weights_path)
        except _Moved:
            if vanished == manifest_path:  # the same version missing twice: not a publish under way
                raise CheckpointError(f"checkpoint {directory}: its published version "
                                      f"{manifest_path.parent.name} is incomplete or missing; {RETRAIN}") from None
            vanished = manifest_path
            continue
        if legacy and _published_elsewhere(directory):
            continue  # published while read: read the published pair
        return result
    raise CheckpointError(f"checkpoint {directory} kept changing while it was read (a training run or evaluation "
                          "writing it?): try again in a moment")


def read_manifest(directory: str | os.PathLike, *, app_limits: bool = False) -> Manifest:
    """The published manifest of a run directory, checked field by field (validate_manifest; with app_limits also
    the model's sizes against what the app runs). CheckpointError when there is none or it fails a check."""
    directory = Path(directory)
    return _read_published(directory, lambda manifest_path, _: Manifest.from_json(
        _read_regular(manifest_path, MAX_MANIFEST_BYTES, directory), f"checkpoint {directory}",
        app_limits=app_limits), need_weights=False)


def load_checkpoint(directory: str | os.PathLike) -> tuple[dict[str, torch.Tensor], Manifest]:
    """(weights, manifest) of the published pair, both checked: the manifest field by field (validate_manifest),
    the weights against what its config builds (check_weights). CheckpointError, saying what and what to do,
    for anything else."""
    directory = Path(directory)

    def read(manifest_path: Path, weights_path: Path) -> tuple[dict[str, torch.Tensor], Manifest]:
        text = _read_regular(manifest_path, MAX_MANIFEST_BYTES, directory)
        manifest = Manifest.from_json(text, f"checkpoint {directory}", app_limits=True)
        if not manifest.scaler:
            raise CheckpointError(f"checkpoint {directory}: its manifest records no feature scaler, so its "
                                  f"inputs cannot be normalised as in training; {RETRAIN}")
        return check_weights(weights_path, ModelConfig.from_dict(manifest.model_config), directory), manifest

    return _read_published(directory, read)


def read_checkpoint_unloaded(directory: str | os.PathLike) -> Manifest:
    """The manifest of the published pair, with everything load_checkpoint checks that needs no model built, so no
    torch: the manifest field by field with the app's limits, its scaler, and the weights file (a regular
    safetensors file of a sane size, float tensors only, every value finite; check_weights_unloaded). The names and
    shapes of the tensors against what the config builds are checked when the weights are loaded (load_checkpoint).
    For a page that shows a checkpoint's cached results and loads its model only to run it live."""
    directory = Path(directory)

    def read(manifest_path: Path, weights_path: Path) -> Manifest:
        text = _read_regular(manifest_path, MAX_MANIFEST_BYTES, directory)
        manifest = Manifest.from_json(text, f"checkpoint {directory}", app_limits=True)
        if not manifest.scaler:
            raise CheckpointError(f"checkpoint {directory}: its manifest records no feature scaler, so its "
                                  f"inputs cannot be normalised as in training; {RETRAIN}")
        check_weights_unloaded(weights_path, directory)
        return manifest

    return _read_published(directory, read)


def checkpoint_written(directory: str | os.PathLike) -> tuple[str, str] | None:
    """(run id, when it was written) of the checkpoint published in `directory`, None when there is none; read
    leniently (the manifest's run_id and created_at when it parses, else the folder's name and the file's time)."""
    directory = Path(directory)
    try:
        manifest_path, weights_path = published_files(directory)
        if not (manifest_path.is_file() and weights_path.is_file()):
            return None
        when = _iso(datetime.fromtimestamp(manifest_path.stat().st_mtime, timezone.utc))
    except (OSError, CheckpointError):
        return None
    try:
        data = json.loads(_read_regular(manifest_path, MAX_MANIFEST_BYTES, directory))
    except (ValueError, RecursionError, _Moved):
        data = None
    if not isinstance(data, dict):
        return directory.name, when
    run_id = data["run_id"] if isinstance(data.get("run_id"), str) else directory.name
    created = parse_utc(data.get("created_at"))
    return run_id, _iso(created) if created is not None else when


def _iso(stamp: datetime) -> str:
    return stamp.astimezone(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


# Below this many parameters (16 MB of float32) the model whose shapes are checked is built on the CPU: milliseconds,
# where the first build on the meta device in a process costs 1.4-2.6 s (torch loads its meta kernels then), once per
# app start. Larger configs (check_app_limits allows up to MAX_PARAMETERS) are built on the meta device: no memory.
CPU_SHAPE_BUILD_PARAMETERS = 4_000_000


def expected_weights(config: ModelConfig) -> dict[str, tuple[int, ...]]:
    """The names and shapes of the weights a config's model has (the hybrid, or the peer config.kind names: a
    manifest written before kinds existed is a hybrid), from a model built for the purpose (on the CPU when small,
    without touching torch's random state; else on the meta device, allocating nothing); the config must have passed
    check_app_limits. Remembered per config, so a page that checks a checkpoint again pays nothing."""
    return dict(_expected_weights(json.dumps(config.to_dict(), sort_keys=True, default=_json_default)))


@lru_cache(maxsize=32)
def _expected_weights(config_json: str) -> tuple[tuple[str, tuple[int, ...]], ...]:
    import torch

    # the model's modules: only when weights are checked
    from engine.model.peers import build_model

    config = ModelConfig.from_dict(json.loads(config_json))
    small = config.estimated_parameters() <= CPU_SHAPE_BUILD_PARAMETERS
    with torch.random.fork_rng(devices=[]), torch.device("cpu" if small else "meta"):
        model = build_model(config)
    return tuple((name, tuple(tensor.shape)) for name, tensor in model.state_dict().items())


def check_weights(path: Path, config: ModelConfig, directory: Path | None = None) -> dict[str, torch.Tensor]:
    """The weights file's tensors, refused (CheckpointError naming the tensor) unless they are exactly the float
    tensors, names and shapes `config` builds, and finite. The header is checked before any tensor is read."""
    import torch
    from safetensors import safe_open

    where = f"checkpoint {directory or path.parent}"
    expected = expected_weights(config)
    largest = sum(math.prod(shape) for shape in expected.values()) * max(FLOAT_DTYPES.values())
    limit = min(largest, MAX_PARAMETERS * 8) + 2**20 + 1024 * len(expected)  # + the JSON header
    _check_regular_size(path, limit, where)
    with _reading_weights(where), safe_open(str(path), framework="pt", device="cpu") as handle:
        header = _checked_header(handle, expected, where)
        weights = {name: handle.get_tensor(name) for name in header}
    for name, tensor in weights.items():
        finite = torch.isfinite(tensor)
        if not finite.all():
            raise _not_finite(where, name, int((~finite).sum()), tensor.numel())
    return weights


@contextmanager
def _reading_weights(where: str):
    """Reading a weights file: anything but a CheckpointError (safetensors' SafetensorError, a header that is not
    JSON, a truncated file) is a damaged file; a file removed under the reader is a publish under way (_Moved)."""
    try:
        yield
    except CheckpointError:
        raise
    except FileNotFoundError:
        raise _Moved() from None
    except Exception as error:
        detail = f"{type(error).__name__}: {_short(str(error), 160)}"
        raise CheckpointError(f"weights file of {where} ({WEIGHTS_FILE}) is damaged or not a safetensors file "
                              f"({detail}); restore it or {RETRAIN}") from error


def _checked_header(handle, expected: dict[str, tuple[int, ...]] | None, where: str) -> dict:
    """{name: (shape, dtype)} of an open safetensors file, refused when it does not fit `expected` (None: only the
    dtypes are checked, against the file's own names and shapes)."""
    header = {name: (tuple(handle.get_slice(name).get_shape()), handle.get_slice(name).get_dtype())
              for name in handle.keys()}  # noqa: SIM118 - a safetensors handle is not iterable
    problems = _weight_problems(header, {n: shape for n, (shape, _) in header.items()} if expected is None
                                else expected)
    if problems:
        raise CheckpointError(f"weights in {where} do not fit the model its manifest describes: "
                              + "; ".join(problems[:5]) + (" ..." if len(problems) > 5 else "")
                              + f"; the manifest and weights do not belong together: {RETRAIN}")
    return header


def _not_finite(where: str, name: str, count: int, size: int) -> CheckpointError:
    return CheckpointError(f"weights in {where}: tensor {name} holds {count:,} NaN or infinite value(s) of "
                           f"{size:,}; the model would forecast nothing meaningful: {RETRAIN}")


def check_weights_unloaded(path: Path, directory: Path | None = None) -> None:
    """check_weights' refusals that need no model built, read with numpy (no torch): a file that is not a regular
    safetensors file of at most MAX_PARAMETERS float64 values, a tensor that is not a float type, a NaN or infinite
    value (BF16 tensors, which numpy does not read, are checked by check_weights when the model is loaded), with
    check_weights' messages. Nothing is kept: the weights are loaded (with torch) only when the model runs."""
    from safetensors import safe_open

    where = f"checkpoint {directory or path.parent}"
    _check_regular_size(path, MAX_PARAMETERS * max(FLOAT_DTYPES.values()) + 2**20, where)
    with _reading_weights(where), safe_open(str(path), framework="np") as handle:
        for name, (_, dtype) in _checked_header(handle, None, where).items():
            if dtype == "BF16":
                continue
            values = handle.get_tensor(name)
            finite = np.isfinite(values)
            if not finite.all():
                raise _not_finite(where, name, int((~finite).sum()), values.size)


def _check_regular_size(path: Path, limit: int, where: str) -> None:
    try:
        info = os.stat(path)
    except FileNotFoundError:
        raise _Moved() from None
    except OSError as error:
        raise CheckpointError(f"{where}: {path.name} cannot be read ({error})") from error
    if not stat.S_ISREG(info.st_mode):
        raise CheckpointError(f"{where}: {path.name} is not a regular file; {RETRAIN}")
    if info.st_size > limit:
        raise CheckpointError(f"{where}: {path.name} is {info.st_size:,} bytes, more than the weights of the model "
                              f"its manifest describes can take ({limit:,}); {RETRAIN}")


def _weight_problems(header: dict[str, tuple[tuple[int, ...], str]], expected: dict[str, tuple[int, ...]]) -> list[str]:
    problems = []
    missing = [name for name in expected if name not in header]
    unexpected = [name for name in header if name not in expected]
    if missing:
        problems.append(f"missing tensor(s) {', '.join(missing[:5])}")
    if unexpected:
        problems.append(f"unexpected tensor(s) {', '.join(unexpected[:5])}")
    for name, (shape, dtype) in header.items():
        if name in expected and shape != expected[name]:
            problems.append(f"tensor {name} has shape {shape}, the config builds {expected[name]}")
        if dtype not in FLOAT_DTYPES:
            problems.append(f"tensor {name} is {dtype}, not a float type ({', '.join(FLOAT_DTYPES)})")
    return problems


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


def misfit(run: dict, symbols, interval: str) -> dict[str, Any]:
    """Why a run (a list_runs entry) does not fit a selection: {"interval": (trained, selected) or None,
    "missing": assets it was trained on that the selection lacks, "extra": selected assets it never saw}."""
    trained, wanted = run_assets(run.get("symbols", ())), run_assets(symbols)
    return {"interval": None if run.get("interval") == interval else (run.get("interval"), interval),
            "missing": [a for a in trained if a not in wanted], "extra": [a for a in wanted if a not in trained]}


def misfit_text(run: dict, symbols, interval: str) -> str:
    """misfit in words, naming which of interval and symbols is the cause ("" when the run fits)."""
    why = misfit(run, symbols, interval)
    parts = []
    if why["interval"]:
        parts.append(f"interval: it was trained on {why['interval'][0]} bars, the selection is {why['interval'][1]}")
    if why["missing"] or why["extra"]:
        words = []
        if why["missing"]:
            words.append(f"the selection lacks {', '.join(why['missing'])}")
        if why["extra"]:
            words.append(f"it never saw {', '.join(why['extra'])}")
        parts.append(f"symbols: it was trained on {', '.join(run_assets(run.get('symbols', ())))}; "
                     + " and ".join(words))
    return "; ".join(parts)


DEFAULT_RUN_FILE = "default_run.json"  # {"run_id": ...}: the checkpoint the user pinned as the default


def pinned_default(runs_dir: str | os.PathLike | None = None) -> str | None:
    """The run id the user pinned as the default checkpoint ("Use as default" on the Model page), or None."""
    path = resolve_runs_dir(runs_dir) / DEFAULT_RUN_FILE
    try:
        data = json.loads(path.read_text(encoding="utf-8")) if path.is_file() and path.stat().st_size < 4096 else {}
    except (OSError, ValueError):
        return None
    run_id = data.get("run_id") if isinstance(data, dict) else None
    return run_id if isinstance(run_id, str) and 0 < len(run_id) <= MAX_TEXT and run_id.isprintable() else None


def pin_default(run_id: str | None, runs_dir: str | os.PathLike | None = None) -> None:
    """Pin `run_id` as the default checkpoint (None: unpin, the demo rule applies again); written atomically."""
    directory = resolve_runs_dir(runs_dir)
    path = directory / DEFAULT_RUN_FILE
    if run_id is None:
        path.unlink(missing_ok=True)
        return
    directory.mkdir(parents=True, exist_ok=True)
    temporary = directory / f".{DEFAULT_RUN_FILE}.{os.getpid()}.tmp"
    temporary.write_text(json.dumps({"run_id": run_id, "pinned_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}),
                         encoding="utf-8")
    os.replace(temporary, path)


def default_run(fitting: list[dict], pinned: str | None) -> tuple[dict | None, str]:
    """The checkpoint shown before the user (or a link) picks one, among the runs that fit, and why.

    The rule the user sets, never recency: the pinned run when it fits; else the shipped demo checkpoint when it
    fits; else the first run registered for this universe (by its trusted date, oldest first), so a new run,
    a one-fold toy from the Model page included, never takes over as the default by being new. Runs whose registry
    date is not believable come last."""
    if not fitting:
        return None, "no checkpoint fits"
    for run in fitting:
        if pinned is not None and run.get("run_id") == pinned:
            return run, "pinned as the default"
    for run in fitting:
        if run.get("demo"):
            return run, "the shipped demo checkpoint (no default pinned)"
    first = min(fitting, key=lambda run: (not run.get("date_trusted", True), str(run.get("created_at", ""))))
    return first, "the first run trained on this universe (no default pinned)"


def checked_created_at(value: Any, file_time: float, now: datetime | None = None) -> tuple[str, str | None]:
    """A registry date -> (ISO UTC date to use, None) when it is an ISO timestamp not later than now (plus
    CLOCK_SKEW); otherwise (the file system's time of the checkpoint, a note saying why it replaced the date)."""
    now = now or datetime.now(timezone.utc)
    stamp = parse_utc(value)
    if stamp is not None and stamp <= now + CLOCK_SKEW:
        return _iso(stamp), None
    reason = "is in the future" if stamp is not None else "is not an ISO timestamp"
    file_stamp = datetime.fromtimestamp(file_time, timezone.utc)
    return _iso(file_stamp), (f"registry date {_short(value)} {reason}; shown with its file's time "
                              f"{_iso(file_stamp)} instead, and never the default checkpoint")


def _registry_entry(entry: Any, now: datetime) -> dict | None:
    """A registry line made safe for the pages, or None when it cannot name a checkpoint: run_id, path, symbols
    and interval of the right types; created_at checked (checked_created_at: "date_trusted" False and a
    "created_at_note" when replaced); scores a dict."""
    if not isinstance(entry, dict):
        return None
    run_id, path, symbols, interval = (entry.get(key) for key in ("run_id", "path", "symbols", "interval"))
    if not (isinstance(run_id, str) and 0 < len(run_id) <= MAX_TEXT and run_id.isprintable()
            and isinstance(path, str) and path and isinstance(interval, str) and isinstance(symbols, list) and symbols
            and all(isinstance(symbol, str) for symbol in symbols)):
        return None
    try:
        file_time = published_files(path)[0].stat().st_mtime
    except (OSError, ValueError, CheckpointError):
        return None
    created_at, note = checked_created_at(entry.get("created_at"), file_time, now)
    span, device = entry.get("span"), entry.get("device")
    clean = {**entry, "created_at": created_at, "date_trusted": note is None, "scores": _listed_scores(entry),
             "span": span if isinstance(span, list) and all(isinstance(s, str) for s in span) else [],
             "device": device if isinstance(device, str) else "", "assets": list(run_assets(symbols))}
    if note:
        clean["created_at_note"] = note
    return clean


def _listed_scores(entry: dict) -> dict:
    """The registry's copy of a run's score summary when it has the shape the Model page reads (a dict; its
    "assets" a dict of dicts, each vs_<baseline> a dict of numbers or null), else {} (the page says 'not scored')."""
    scores = entry.get("scores")
    if not isinstance(scores, dict):
        return {}
    assets = scores.get("assets", {})
    if not isinstance(assets, dict) or not all(isinstance(a, dict) for a in assets.values()):
        return {}
    for per_asset in assets.values():
        for key, versus in per_asset.items():
            if key.startswith("vs_") and not (isinstance(versus, dict) and all(
                    value is None or (isinstance(value, Real) and not isinstance(value, bool))
                    for value in versus.values())):
                return {}
    return scores


def list_runs(runs_dir: str | os.PathLike | None = None, include_demo: bool = True) -> list[dict]:
    """Registered runs, newest first, then the shipped demo checkpoint; unreadable lines are skipped.

    Each entry has the run's symbols as trained and "assets": their asset names in the model's order. A registry
    date that is not an ISO timestamp, or lies in the future, is replaced by the checkpoint file's time and noted
    ("date_trusted" False, "created_at_note"); such runs come after the runs with trusted dates, so a forged date
    never makes a run the first (default) one.
    """
    now = datetime.now(timezone.utc)
    runs: list[dict] = []
    registry = resolve_runs_dir(runs_dir) / REGISTRY_FILE
    try:
        lines = registry.read_text(encoding="utf-8", errors="replace").splitlines() if registry.exists() else []
    except OSError:
        lines = []
    for line in lines:
        try:
            entry = _registry_entry(json.loads(line), now)
        except (json.JSONDecodeError, RecursionError):
            continue
        if entry is not None:
            runs.append(entry)
    runs.sort(key=lambda e: (e["date_trusted"], e["created_at"]), reverse=True)
    if include_demo:
        demo = _demo_entry()
        if demo is not None:
            runs.append(demo)
    return runs


def _demo_entry() -> dict | None:
    try:
        manifest = read_manifest(DEMO_CHECKPOINT_DIR)
    except CheckpointError:
        return None  # the pages then say that no checkpoint fits, and the demo's own page errors stay away
    return {
        "run_id": manifest.run_id, "path": str(DEMO_CHECKPOINT_DIR), "created_at": manifest.created_at,
        "device": manifest.device, "symbols": list(manifest.fingerprint.symbols),
        "interval": manifest.fingerprint.interval,
        "span": [manifest.fingerprint.first_ts, manifest.fingerprint.last_ts],
        "data_hash": manifest.fingerprint.content_hash, "scores": manifest.scores, "demo": True,
        "date_trusted": True, "assets": list(run_assets(manifest.fingerprint.symbols)),
    }


# ----- resumable training state (weights + AdamW moments), same rules: safetensors and JSON only ---------------------

TRAINING_STATE_TENSORS = "state.safetensors"
TRAINING_STATE_JSON = "state.json"


def save_training_state(directory: str | os.PathLike, weights: dict[str, torch.Tensor], optimizer: torch.optim.Optimizer,
                        best_weights: dict[str, torch.Tensor], meta: dict[str, Any]) -> Path:
    """Everything an epoch boundary needs to continue: current and best weights, the optimiser's per-parameter
    tensors, and JSON for the rest (counters, the optimiser's hyper-parameters). Non-finite weights are refused."""
    import torch
    from safetensors.torch import save_file

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
    import torch
    from safetensors.torch import load_file

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
