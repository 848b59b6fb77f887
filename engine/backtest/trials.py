"""The trials the deflated Sharpe ratio counts, kept on disk with the run, not in a browser session.

Every distinct setting tried on one checkpoint (or baseline forecaster) and one data span is a trial, whoever tried
it and whenever: a new session, a shared link or a restart sees the same count. The log is a JSON lines file, one
trial a line:

    {"scope": "<hash>", "setting": {...}, "sharpe": <per-period Sharpe or null>, "at": "<UTC time>"}

`scope` hashes what the trials were tried on: the forecaster, the data fingerprint (symbols, interval, a hash of
every value) and the backtested span. Lines of other scopes are kept and ignored, so a run's one file holds the
trials of every data span it was backtested on.

Where the file lives: in the run's own folder when that folder is writable and not the shipped demo checkpoint
(which is never written to); otherwise under the runs folder, `trials/<name>.jsonl`. Appends take a file lock, so
two sessions recording at once do not interleave; a line that does not parse (a torn write, an edit) is skipped.
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import os
import re
from collections.abc import Hashable, Mapping
from datetime import UTC, datetime
from pathlib import Path

from filelock import FileLock

from engine.backtest.metrics import TrialCounter

TRIALS_FILE = "backtest_trials.jsonl"
SHARED_TRIALS_FOLDER = "trials"
LOCK_TIMEOUT_S = 10


def trials_path(run_path: str | os.PathLike | None, name: str, runs_dir: str | os.PathLike | None = None) -> Path:
    """The trial log of a run (run_path: its folder) or, with run_path None, of the forecaster called `name`."""
    # Imported here: the checkpoint module brings torch, which only a run's log needs.
    from engine.model.checkpoint import DEMO_CHECKPOINT_DIR, resolve_runs_dir

    if run_path is not None:
        folder = Path(run_path)
        shipped = folder.resolve() == DEMO_CHECKPOINT_DIR.resolve()
        if not shipped and folder.is_dir() and os.access(folder, os.W_OK):
            return folder / TRIALS_FILE
    safe = re.sub(r"[^A-Za-z0-9_.-]+", "_", name).strip("_")[:100] or "trials"
    return resolve_runs_dir(runs_dir) / SHARED_TRIALS_FOLDER / f"{safe}.jsonl"


def trial_scope(forecaster: str, data_hash: str, symbols, interval: str, span: tuple) -> str:
    """A short hash of what the trials were tried on (see the module docstring)."""
    described = {"forecaster": forecaster, "data": data_hash, "symbols": list(symbols), "interval": interval,
                 "span": [None if t is None else str(t) for t in span]}
    return hashlib.sha256(json.dumps(described, sort_keys=True).encode()).hexdigest()[:16]


def setting_record(setting) -> object:
    """A setting as plain JSON data (dataclasses as dicts, tuples as lists), so equal settings compare equal."""
    if dataclasses.is_dataclass(setting) and not isinstance(setting, type):
        return setting_record(dataclasses.asdict(setting))
    if isinstance(setting, Mapping):
        return {str(k): setting_record(v) for k, v in setting.items()}
    if isinstance(setting, (list, tuple)):
        return [setting_record(v) for v in setting]
    if hasattr(setting, "item"):  # numpy scalars
        return setting.item()
    return setting


def setting_key(setting) -> str:
    return json.dumps(setting_record(setting), sort_keys=True)


class TrialLog(TrialCounter):
    """A TrialCounter whose trials are read from and appended to a JSON lines file (one scope of it)."""

    def __init__(self, path: str | os.PathLike, scope: str) -> None:
        super().__init__()
        self.path = Path(path)
        self.scope = scope
        self._read_size = -1
        self.refresh()

    def refresh(self) -> None:
        """Re-read the file when it changed (another session may have recorded trials)."""
        try:
            size = self.path.stat().st_size
        except OSError:
            return
        if size == self._read_size:
            return
        with open(self.path, encoding="utf-8", errors="replace") as handle:
            for line in handle:
                trial = _parse(line)
                if trial is not None and trial["scope"] == self.scope:
                    self.sharpes[setting_key(trial["setting"])] = trial["sharpe"]
        self._read_size = size

    def record(self, setting: Hashable, sharpe_per_period: float | None) -> None:
        key = setting_key(setting)
        if key in self.sharpes:
            return  # tried before: the same setting on the same data is the same trial
        sharpe = None if sharpe_per_period is None or not math.isfinite(sharpe_per_period) else float(sharpe_per_period)
        self.sharpes[key] = sharpe
        line = json.dumps({"scope": self.scope, "setting": json.loads(key), "sharpe": sharpe,
                           "at": datetime.now(UTC).isoformat(timespec="seconds")}, sort_keys=True)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with FileLock(str(self.path) + ".lock", timeout=LOCK_TIMEOUT_S), open(self.path, "a", encoding="utf-8") as out:
            out.write(line + "\n")

    def reset(self) -> None:
        raise TypeError("TrialLog: a trial, once tried, stays counted (that is the point of the deflated Sharpe)")

    def with_context(self, **context) -> ContextTrials:
        """A recorder that adds `context` (e.g. the forecast horizon) to every setting it records."""
        return ContextTrials(self, context)


@dataclasses.dataclass(frozen=True)
class ContextTrials:
    """Records `setting` as {**context, **setting}: what a sweep records is then the page's own setting key."""

    counter: TrialCounter
    context: dict

    def record(self, setting, sharpe_per_period: float | None) -> None:
        record = setting_record(setting)
        if not isinstance(record, dict):
            record = {"setting": record}
        self.counter.record({**self.context, **record}, sharpe_per_period)


def _parse(line: str) -> dict | None:
    try:
        trial = json.loads(line)
    except ValueError:
        return None
    if not isinstance(trial, dict) or not isinstance(trial.get("scope"), str) or "setting" not in trial:
        return None
    sharpe = trial.get("sharpe")
    if sharpe is not None and not (isinstance(sharpe, (int, float)) and math.isfinite(sharpe)):
        return None
    return trial


def trials_for_backtest(panel, interval: str, forecaster: str, span: tuple, run_path: str | os.PathLike | None = None,
                        run_id: str | None = None, runs_dir: str | os.PathLike | None = None) -> TrialLog:
    """The trial log of backtests of `forecaster` (the run's forecasts when run_path is given) on this panel and
    span (start, end)."""
    from storage.panel import panel_fingerprint

    fingerprint = panel_fingerprint(panel, interval)
    # The run id is part of the scope: a run retrained in the same folder is another checkpoint, with trials of its own.
    tried_with = forecaster if run_id is None else f"{forecaster} | {run_id}"
    scope = trial_scope(tried_with, fingerprint.content_hash, fingerprint.symbols, interval, span)
    name = f"forecaster-{forecaster}" if run_path is None else f"run-{run_id or Path(run_path).name}"
    return TrialLog(trials_path(run_path, name, runs_dir), scope)
