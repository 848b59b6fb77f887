"""Diagnostics cached on disk per (checkpoint, data, settings), so the app shows them without rerunning the model.

An entry is a folder holding arrays.npz (plain numeric arrays; loaded with allow_pickle=False) and meta.json (the
key, the labels that are not arrays, the npz file's SHA-256). Nothing is trusted on the way back in: an entry whose
JSON does not parse, whose key differs, whose hash does not match its arrays, or whose arrays have the wrong shapes
is recomputed and overwritten, never used. Entries are written to a temporary folder and renamed into place under
a file lock, so a reader never sees half an entry and two writers do not interleave.

Live updates: a refresh that appends bars changes the data hash, so the disk entry misses; the process then
advances the last bundle it computed for the same run, weights, fit rows and settings over the new bars only
(engine.diagnostics.live, status "advanced by k bars ..."), when the new features begin with that bundle's rows
unchanged, and computes afresh otherwise. An advanced bundle is returned at once and written to the disk cache by
a background thread under the same lock (wait_for_cache_writes waits for those writes).
"""
from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import tempfile
import threading
import zipfile
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd
from filelock import FileLock

from engine.diagnostics.bundle import (
    DiagnosticsBundle,
    DiagnosticsConfig,
)
from engine.diagnostics.regimes import RegimeResult
from engine.features import FeatureSet
from engine.model.checkpoint import DataFingerprint
from engine.model.inference import InferenceResult

if TYPE_CHECKING:  # torch comes with the model, only when the cache misses: a hit reads numpy arrays and JSON
    from engine.diagnostics.live import LiveDiagnostics
    from engine.model.hybrid import HybridModel

DEFAULT_CACHE_DIR = Path("data") / "diagnostics"
CACHE_ENV_VAR = "REGIME_DIAGNOSTICS"
CACHE_FORMAT = 2  # 2: attention kept for the latest rows only (attention_start)
ARRAYS_FILE = "arrays.npz"
META_FILE = "meta.json"

_INFERENCE_ARRAYS = ("mask", "quantiles", "prob_up", "volatility", "embeddings", "lookback", "attention")
_REGIME_ARRAYS = ("projections", "labels", "explained_variance_ratio", "transition_matrix", "transition_counts")


def resolve_cache_dir(explicit: str | os.PathLike | None = None) -> Path:
    if explicit:
        return Path(explicit)
    return Path(os.environ.get(CACHE_ENV_VAR, DEFAULT_CACHE_DIR))


@dataclass(frozen=True)
class CacheKey:
    run_id: str
    data_hash: str
    fit_rows: tuple[int, int]
    settings: dict

    def as_dict(self) -> dict:
        return {"format": CACHE_FORMAT, "run_id": self.run_id, "data_hash": self.data_hash,
                "fit_rows": list(self.fit_rows), "settings": self.settings}

    def folder_name(self) -> str:
        digest = hashlib.sha256(json.dumps(self.as_dict(), sort_keys=True).encode()).hexdigest()[:12]
        safe_run = re.sub(r"[^A-Za-z0-9_.-]", "_", self.run_id)[:80]
        return f"{safe_run}-{self.data_hash}-{digest}"


def _file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def save_bundle(directory: Path, bundle: DiagnosticsBundle, key: CacheKey) -> None:
    """Write one entry atomically into `directory` (replacing what was there)."""
    inference, regimes = bundle.inference, bundle.regimes
    arrays = {f"inference.{name}": getattr(inference, name) for name in _INFERENCE_ARRAYS}
    arrays |= {f"regimes.{name}": getattr(regimes, name) for name in _REGIME_ARRAYS}
    arrays["lead_lag"] = bundle.lead_lag
    arrays["inference.attention_start"] = np.asarray([inference.attention_start], dtype=np.int64)
    arrays["ts_us"] = inference.ts.as_unit("us").asi8  # epoch microseconds, UTC
    directory.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=".tmp-", dir=directory.parent))
    try:
        np.savez(staging / ARRAYS_FILE, **{name: np.ascontiguousarray(a) for name, a in arrays.items()})
        meta = {
            "key": key.as_dict(),
            "symbols": list(inference.symbols),
            "horizons": list(inference.horizons),
            "quantile_levels": list(inference.quantile_levels),
            "fit_rows": list(regimes.fit_rows),
            "shapes": {name: list(a.shape) for name, a in arrays.items()},
            "arrays_sha256": _file_sha256(staging / ARRAYS_FILE),
        }
        (staging / META_FILE).write_text(json.dumps(meta, indent=1))
        if directory.exists():
            shutil.rmtree(directory)
        os.replace(staging, directory)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise


class CacheMiss(Exception):
    """Why a cache entry could not be used (missing, corrupt, or made for something else)."""


def load_bundle(directory: Path, key: CacheKey) -> DiagnosticsBundle:
    """The entry in `directory`, or CacheMiss saying why it cannot be trusted."""
    meta_path, arrays_path = directory / META_FILE, directory / ARRAYS_FILE
    if not meta_path.exists() or not arrays_path.exists():
        raise CacheMiss("no entry")
    try:
        meta = json.loads(meta_path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as error:
        raise CacheMiss(f"meta.json is unreadable: {error}") from error
    if not isinstance(meta, dict) or meta.get("key") != json.loads(json.dumps(key.as_dict())):
        raise CacheMiss("the entry was made for another checkpoint, data or settings")
    if _file_sha256(arrays_path) != meta.get("arrays_sha256"):
        raise CacheMiss("arrays.npz does not match its recorded hash (corrupt or edited)")
    try:
        with np.load(arrays_path, allow_pickle=False) as stored:
            arrays = {name: stored[name] for name in stored.files}
        shapes = meta["shapes"]
        if set(shapes) != set(arrays) or any(list(arrays[n].shape) != shapes[n] for n in arrays):
            differ = sorted(set(shapes) ^ set(arrays)) or [n for n in arrays if list(arrays[n].shape) != shapes[n]]
            raise CacheMiss(f"array shapes differ from the recorded ones ({', '.join(differ[:3])})")
        inference = InferenceResult(
            ts=pd.DatetimeIndex(pd.to_datetime(arrays["ts_us"], unit="us", utc=True), name="ts"),
            symbols=tuple(meta["symbols"]),
            horizons=tuple(int(h) for h in meta["horizons"]),
            quantile_levels=tuple(float(q) for q in meta["quantile_levels"]),
            **{name: arrays[f"inference.{name}"] for name in _INFERENCE_ARRAYS},
            attention_start=int(arrays["inference.attention_start"][0]), lead_lag=arrays["lead_lag"],
        )
        regimes = RegimeResult(**{name: arrays[f"regimes.{name}"] for name in _REGIME_ARRAYS},
                               fit_rows=tuple(int(r) for r in meta["fit_rows"]))
    except CacheMiss:
        raise
    except (KeyError, TypeError, ValueError, OSError) as error:
        raise CacheMiss(f"the entry is malformed: {error}") from error
    return DiagnosticsBundle(inference, regimes, arrays["lead_lag"])


def load_or_compute_diagnostics(
    model: HybridModel | Callable[[], HybridModel],
    features: FeatureSet | Callable[[], FeatureSet],
    fit_rows: range,
    *,
    run_id: str,
    fingerprint: DataFingerprint,
    config: DiagnosticsConfig = DiagnosticsConfig(),
    cache_dir: str | os.PathLike | None = None,
) -> tuple[DiagnosticsBundle, str]:
    """The cached bundle for (run_id, data, settings) if it is sound, else computed now and cached.

    -> (bundle, "cached") or (bundle, "computed: <why the cache was not used>").

    model, features: each itself, or a function of no arguments that makes it, called only when the cache misses
    (a hit then never imports torch nor runs a feature pass: the app's restart reads a model page's diagnostics
    without either). The fingerprint is checked against the features where they are at hand.
    """
    if hasattr(features, "values"):
        _check_fingerprint(fingerprint, features)
    key = _key(run_id, fingerprint, fit_rows, config)
    root = resolve_cache_dir(cache_dir)
    directory = root / key.folder_name()
    root.mkdir(parents=True, exist_ok=True)
    lock_path = str(root / (key.folder_name() + ".lock"))
    with FileLock(lock_path, timeout=600):
        try:
            return load_bundle(directory, key), "cached"
        except CacheMiss as miss:
            reason = str(miss)
        if not hasattr(features, "values"):
            features = features()
            _check_fingerprint(fingerprint, features)
        bundle, how = _live_or_computed(_the_model(model), features, fit_rows, run_id, config)
        if not how.startswith("advanced"):
            save_bundle(directory, bundle, key)
            return bundle, f"computed: {reason}"
    # A live update shows at once; its entry (O(history) bytes to write and hash) is written behind it.
    _write_behind(directory, bundle, key, lock_path)
    return bundle, how


def _key(run_id: str, fingerprint: DataFingerprint, fit_rows: range, config: DiagnosticsConfig) -> CacheKey:
    return CacheKey(run_id, fingerprint.content_hash, (fit_rows.start, fit_rows.stop), config.identity())


def entry_folder(run_id: str, fingerprint: DataFingerprint, fit_rows: range, config: DiagnosticsConfig | None = None,
                 cache_dir: str | os.PathLike | None = None) -> Path:
    """The folder of the diagnostics entry of (run, data, fit rows, settings: default DiagnosticsConfig()), as
    load_or_compute_diagnostics names it (it may not exist yet); the pages' further results are kept in it
    (load_or_compute_view_result)."""
    key = _key(run_id, fingerprint, fit_rows, DiagnosticsConfig() if config is None else config)
    return resolve_cache_dir(cache_dir) / key.folder_name()


# --- what the pages compute beyond the bundle, kept beside it ------------------------------------------------------
# A page's further results on the same (run, data, settings) (a bar's hidden attention, a test on the bundle's labels)
# are kept in the entry's folder, one .npz per result: plain arrays (allow_pickle=False) with the JSON key they were
# computed for, which must match on the way back in; a file that does not load or match is recomputed and replaced.
# They go with the entry: an entry computed afresh starts without them.
VIEWS_FOLDER = "views"
_VIEW_KEY = "__key__"


def inputs_digest(*parts) -> str:
    """SHA-256 of what a result is computed from: arrays (dtype, shape and bytes) and JSON-able values."""
    digest = hashlib.sha256()
    for part in parts:
        if isinstance(part, np.ndarray) or (hasattr(part, "__array__") and not isinstance(part, (str, bytes))):
            array = np.ascontiguousarray(np.asarray(part))
            digest.update(f"{array.dtype.str}{array.shape}".encode())
            digest.update(array.tobytes() if array.dtype != object else json.dumps(array.tolist()).encode())
        else:
            digest.update(json.dumps(part, sort_keys=True, default=str).encode())
        digest.update(b"|")
    return digest.hexdigest()


def _read_view_result(path: Path, key_text: str) -> dict[str, np.ndarray] | None:
    try:
        with np.load(path, allow_pickle=False) as stored:
            if _VIEW_KEY not in stored.files or str(stored[_VIEW_KEY]) != key_text:
                return None
            return {name: stored[name] for name in stored.files if name != _VIEW_KEY}
    except (OSError, ValueError, KeyError, EOFError, zipfile.BadZipFile):  # missing, partial or edited: a miss
        return None


def load_or_compute_view_result(entry: Path | None, name: str, key: dict,
                                compute: Callable[[], dict[str, np.ndarray]]) -> dict[str, np.ndarray]:
    """The arrays `compute` returns for `key`, read from the entry's folder when it holds them for exactly this key,
    else computed now (once: under a file lock, so the page and a warm-up thread do not both compute it) and kept
    there. entry None, or an entry folder that does not exist (the diagnostics were not cached): computed, not
    kept."""
    if entry is None or not entry.is_dir():
        return compute()
    key_text = json.dumps(key, sort_keys=True)
    stem = f"{re.sub(r'[^A-Za-z0-9_.-]', '_', name)[:60]}-{hashlib.sha256(key_text.encode()).hexdigest()[:16]}"
    folder = entry / VIEWS_FOLDER
    path = folder / f"{stem}.npz"
    found = _read_view_result(path, key_text)
    if found is not None:
        return found
    try:
        folder.mkdir(exist_ok=True)
    except OSError:  # the entry was replaced meanwhile: compute without keeping
        return compute()
    with FileLock(str(folder / f"{stem}.lock"), timeout=600):
        found = _read_view_result(path, key_text)
        if found is not None:
            return found
        arrays = compute()
        staging = None
        try:
            handle, staging = tempfile.mkstemp(prefix=".tmp-", suffix=".npz", dir=folder)
            with os.fdopen(handle, "wb") as out:
                np.savez(out, **{_VIEW_KEY: np.asarray(key_text)}, **arrays)
            os.replace(staging, path)
        except OSError:  # the entry was replaced meanwhile: the result stands, it is just not kept
            if staging is not None and os.path.exists(staging):
                os.unlink(staging)
    return arrays


def _check_fingerprint(fingerprint: DataFingerprint, features: FeatureSet) -> None:
    if tuple(fingerprint.symbols) != tuple(features.symbols) or fingerprint.n_rows != len(features.ts):
        raise ValueError(
            f"the fingerprint describes {list(fingerprint.symbols)} x {fingerprint.n_rows} rows, the features "
            f"{list(features.symbols)} x {len(features.ts)}: pass the fingerprint of this panel (storage.panel.panel_fingerprint)"
        )


def _the_model(model: HybridModel | Callable[[], HybridModel]) -> HybridModel:
    """The model itself, or the one its loader returns (a torch module has a state_dict; a loader has not)."""
    return model if hasattr(model, "state_dict") else model()


_writes: list[threading.Thread] = []


def _write_behind(directory: Path, bundle: DiagnosticsBundle, key: CacheKey, lock_path: str) -> None:
    def write() -> None:
        with FileLock(lock_path, timeout=600):
            save_bundle(directory, bundle, key)

    thread = threading.Thread(target=write, name="diagnostics-cache-write")  # not a daemon: finishes before exit
    thread.start()
    with _live_lock:
        _writes[:] = [t for t in _writes if t.is_alive()] + [thread]


def wait_for_cache_writes() -> None:
    """Block until the disk-cache entries of live updates are written (tests, and a command about to exit)."""
    with _live_lock:
        pending = list(_writes)
    for thread in pending:
        thread.join()


# Live updates: this process keeps, per (run, weights, fit rows, settings), the last bundle it computed with what
# continuing it needs (engine.diagnostics.live). When a refresh appends bars the disk cache misses (new data hash)
# and the bundle is advanced over the new bars only, instead of recomputed over the whole history.
LIVE_ENTRIES = 4  # bundles kept in memory, least recently used dropped (as the app's st.cache_resource keeps 4)
_live: OrderedDict[tuple, LiveDiagnostics] = OrderedDict()
_live_lock = threading.Lock()


def _weights_digest(model: HybridModel) -> str:
    """Which weights: a run id names a checkpoint, but the same name must never continue another model's state."""
    digest = hashlib.sha256()
    for name, tensor in model.state_dict().items():
        digest.update(name.encode())
        digest.update(tensor.detach().cpu().contiguous().numpy().tobytes())
    return digest.hexdigest()[:16]


def _live_or_computed(model: HybridModel, features: FeatureSet, fit_rows: range, run_id: str,
                      config: DiagnosticsConfig) -> tuple[DiagnosticsBundle, str]:
    """-> (bundle, "advanced by k bars ...") when this process holds the bundle of a panel these features extend,
    else (compute_diagnostics' bundle, "computed"), keeping it live either way."""
    from engine.diagnostics.live import advance, start_live  # runs the model: torch

    live_key = (run_id, _weights_digest(model), (fit_rows.start, fit_rows.stop), json.dumps(config.identity()))
    with _live_lock:
        live = _live.get(live_key)
    if live is not None and live.starts(features) and live.fit_rows == fit_rows:
        live, how = advance(model, live, features)
        how = f"{how} from the state kept in memory (live update)"
    else:
        live, how = start_live(model, features, fit_rows, config), "computed"
    with _live_lock:
        _live[live_key] = live
        _live.move_to_end(live_key)
        while len(_live) > LIVE_ENTRIES:
            _live.popitem(last=False)
    return live.bundle, how
