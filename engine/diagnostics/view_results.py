"""What the model pages compute beyond the diagnostics bundle, kept on disk beside it, and their default views
computed ahead.

The Lookback page draws, for one picked bar, the SSM's hidden attention (which runs the model: torch and the
checkpoint's weights), and tests the look-back's differences between regimes (statsmodels); the Regimes page tests
its clusters of one asset (arch, scipy.stats). Each result is computed by the same engine function as before and
kept in the diagnostics entry's folder (engine.diagnostics.cache.load_or_compute_view_result), keyed by what it is
computed from, so a page shows it again, after a restart too, without the model or those imports. The results of
the pages' DEFAULT views (the last bar of the whole span, the found regimes over the whole span, the shipped number
of clusters) are computed ahead by `warm_default_views`, which the app starts in a separate process at the lowest
CPU priority once the diagnostics are on disk (start_warm_up): a first visit then reads them, and only a user who
picks another bar loads the model.

No Streamlit here; nothing here imports torch, statsmodels or arch until a result is computed.
"""
from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
import threading
from collections.abc import Callable, Sequence
from dataclasses import asdict
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd

from engine.diagnostics.cache import inputs_digest, load_or_compute_view_result

if TYPE_CHECKING:
    from engine.diagnostics.bundle import DiagnosticsBundle
    from engine.diagnostics.for_run import RunOnPanel
    from engine.diagnostics.lookback_test import LookbackTest
    from storage.panel import LoadedPanel

_LOG = logging.getLogger(__name__)
MAX_LAG_KEPT = 500  # rows of a bar's hidden attention kept on disk, newest first (the Lookback page shows <= 500)


# --- frames as plain arrays (exact: numbers keep their dtype and bits, text goes through JSON) ---------------------


def frame_arrays(prefix: str, frame: pd.DataFrame) -> dict[str, np.ndarray]:
    """A frame with a RangeIndex or a DatetimeIndex -> arrays that np.savez stores without pickling."""
    out = {f"{prefix}.columns": np.asarray(json.dumps([str(c) for c in frame.columns]))}
    for i, column in enumerate(frame.columns):
        values = frame[column].to_numpy()
        if values.dtype == object:  # text (pandas' str or object dtype): JSON, with the dtype to restore
            out[f"{prefix}.text.{i}"] = np.asarray(json.dumps([
                [str(frame[column].dtype)], [None if v is None or v is pd.NA or (isinstance(v, float) and np.isnan(v))
                                             else str(v) for v in values]]))
        else:
            out[f"{prefix}.col.{i}"] = values
    if isinstance(frame.index, pd.DatetimeIndex):
        out[f"{prefix}.index_us"] = frame.index.as_unit("us").asi8
        out[f"{prefix}.index_name"] = np.asarray(json.dumps([frame.index.name, str(frame.index.tz),
                                                             frame.index.unit]))
    elif not (isinstance(frame.index, pd.RangeIndex) and frame.index.start == 0 and frame.index.step == 1):
        raise TypeError("frame_arrays keeps a RangeIndex from 0 or a DatetimeIndex only")
    return out


def frame_from_arrays(prefix: str, arrays: dict[str, np.ndarray]) -> pd.DataFrame:
    columns = json.loads(str(arrays[f"{prefix}.columns"]))
    data = {}
    for i, column in enumerate(columns):
        if f"{prefix}.text.{i}" in arrays:
            (dtype,), values = json.loads(str(arrays[f"{prefix}.text.{i}"]))
            data[column] = pd.Series(values, dtype=object).astype(dtype)
        else:
            data[column] = pd.Series(arrays[f"{prefix}.col.{i}"])
    frame = pd.DataFrame(data, columns=columns)
    if f"{prefix}.index_us" in arrays:
        name, tz, unit = json.loads(str(arrays[f"{prefix}.index_name"]))
        index = pd.DatetimeIndex(pd.to_datetime(arrays[f"{prefix}.index_us"], unit="us", utc=True)).as_unit(unit)
        index = index.tz_localize(None) if tz == "None" else index.tz_convert(tz)
        frame.index = pd.DatetimeIndex(index, name=name)
    return frame


# --- Lookback: one bar's hidden attention -------------------------------------------------------------------------


def bar_attention(entry: Path | None, run: RunOnPanel, ts: pd.DatetimeIndex, symbol: str,
                  at: int) -> tuple[pd.DataFrame, float]:
    """engine.diagnostics.hidden_attention of `symbol` at bar `at` -> (its frame's newest MAX_LAG_KEPT + 1 rows,
    the half-mass lag of the whole frame: half_mass_lag). Read from the entry when kept there; else the model runs
    (loaded on first use) and the result is kept. ValueError as hidden_attention raises it."""
    key = {"result": "hidden_attention", "run_id": run.manifest.run_id, "symbol": symbol, "at": int(at),
           "bar": ts[int(at)].isoformat(), "kept": MAX_LAG_KEPT}

    def compute() -> dict[str, np.ndarray]:
        from engine.diagnostics.hidden_attention import half_mass_lag, hidden_attention

        frame = hidden_attention(run.model, run.features, symbol, int(at))
        return {**frame_arrays("frame", frame.iloc[: MAX_LAG_KEPT + 1]),
                "half_mass": np.asarray([half_mass_lag(frame)], dtype=float)}

    arrays = load_or_compute_view_result(entry, f"hidden-attention-{symbol}", key, compute)
    return frame_from_arrays("frame", arrays), float(arrays["half_mass"][0])


def model_is_loaded(run: RunOnPanel) -> bool:
    """Whether run.model has been loaded in this process (a bar not on disk then costs no torch import)."""
    return "_model" in run.__dict__


# --- Lookback: the look-back per regime, tested, and the memory the data rewards ---------------------------------


def lookback_per_regime(entry: Path | None, loaded: LoadedPanel, bundle: DiagnosticsBundle, labels: np.ndarray,
                        names: Sequence[str], rows: range) -> tuple[LookbackTest, list[str]]:
    """(lookback_test.lookback_regime_test of the look-back on `labels` over `rows`, memory_claim.memory_verdicts
    with it): the Lookback page's per-regime section, kept in the entry keyed by the labels, names and rows."""
    inference = bundle.inference
    key = {"result": "lookback_per_regime", "names": list(names), "rows": [rows.start, rows.stop],
           "inputs": inputs_digest(inference.lookback_median, inference.mask, np.asarray(labels))}

    def compute() -> dict[str, np.ndarray]:
        from engine.diagnostics.lookback_test import lookback_regime_test
        from engine.diagnostics.memory_claim import memory_verdicts
        from engine.diagnostics.regime_tests import hours_since_previous_bar
        from storage.panel import own_bar_log_returns

        tested = lookback_regime_test(inference.lookback_median, inference.mask, labels, bundle.symbols, names,
                                      rows)
        panel = loaded.panel
        memory = memory_verdicts(panel.symbols, own_bar_log_returns(panel), hours_since_previous_bar(panel),
                                 inference.mask, labels, rows, tested, names)
        return {**frame_arrays("intervals", tested.intervals), **frame_arrays("differences", tested.differences),
                "alpha": np.asarray([tested.alpha], dtype=float), "memory": np.asarray(json.dumps(memory))}

    from engine.diagnostics.lookback_test import LookbackTest

    arrays = load_or_compute_view_result(entry, "lookback-per-regime", key, compute)
    tested = LookbackTest(frame_from_arrays("intervals", arrays), frame_from_arrays("differences", arrays),
                          float(arrays["alpha"][0]))
    return tested, list(json.loads(str(arrays["memory"])))


def found_regime_names(bundle: DiagnosticsBundle) -> list[str]:
    """The names the Lookback page gives the found regimes."""
    return [f"regime {k}" for k in range(int(bundle.regimes.labels.max()) + 1)]


# --- Regimes: the page's clusters of one asset, tested ------------------------------------------------------------


def clusters_tested(entry: Path | None, loaded: LoadedPanel, labels: np.ndarray, mask: np.ndarray,
                    symbol: str) -> str:
    """findings.cluster_evidence(...).text: the regime tests on the page's clusters of one asset, kept in the entry
    keyed by that asset's labels and open bars."""
    from engine.diagnostics.regime_tests import RegimeTestConfig

    asset = list(loaded.symbols).index(symbol)
    key = {"result": "cluster_evidence", "symbol": symbol, "config": asdict(RegimeTestConfig()),
           "inputs": inputs_digest(np.asarray(labels)[asset], np.asarray(mask)[asset])}

    def compute() -> dict[str, np.ndarray]:
        from engine.diagnostics.findings import cluster_evidence

        return {"text": np.asarray(cluster_evidence(loaded, labels, mask, symbol).text)}

    return str(load_or_compute_view_result(entry, f"cluster-evidence-{symbol}", key, compute)["text"])


# --- the default views, ahead --------------------------------------------------------------------------------------


def default_view_steps(entry: Path | None, run: RunOnPanel, loaded: LoadedPanel,
                       bundle: DiagnosticsBundle) -> list[Callable[[], object]]:
    """What the pages' default views compute beyond the bundle, one call each: Regimes' cluster test of its default
    asset (the first) at the shipped number of clusters, Lookback's per-regime section on the found regimes over the
    whole span, and Lookback's hidden attention of every asset at the last bar (the model runs here)."""
    ts, last = bundle.inference.ts, len(bundle.inference.ts) - 1
    whole = range(len(ts))
    labels, mask = bundle.regimes.labels, bundle.inference.mask
    steps: list[Callable[[], object]] = [lambda: clusters_tested(entry, loaded, labels, mask, bundle.symbols[0])]
    steps.append(lambda: lookback_per_regime(entry, loaded, bundle, labels, found_regime_names(bundle), whole))
    steps += [lambda s=s: bar_attention(entry, run, ts, s, last) for s in bundle.symbols]
    return steps


WARM_MARKER = ".warm"  # in the entry's views folder: the default views were computed ahead (or tried)
WARM_ENV_VAR = "REGIME_WARM_VIEWS"  # "0": the app does not start the warm-up (tests that count processes or CPU)


def warm_default_views(entry: Path | None, run: RunOnPanel, loaded: LoadedPanel, bundle: DiagnosticsBundle) -> None:
    """Compute (or find on disk) every result default_view_steps lists, then leave WARM_MARKER in the entry. A step
    that fails is left to the page, which computes it again and says why."""
    for step in default_view_steps(entry, run, loaded, bundle):
        try:
            step()
        except Exception:  # noqa: BLE001 - the page computes it again and shows the error itself
            _LOG.warning("a default view's result was not computed ahead", exc_info=True)
    if entry is not None and (entry / "views").is_dir():
        (entry / "views" / WARM_MARKER).touch()


def warm_default_views_for_run(run_dir: str | Path, loaded: LoadedPanel, cache_dir: str | Path | None = None) -> Path:
    """The checkpoint's diagnostics on `loaded` (from the cache or computed, as the app reads them) and its default
    views computed ahead, in the same cache -> the entry's folder (what the app's first start leaves on disk)."""
    from engine.diagnostics.for_run import cached_diagnostics, run_on_panel

    run = run_on_panel(Path(run_dir), loaded, lazy=True)
    bundle, _, entry = cached_diagnostics(run, loaded, cache_dir=cache_dir)
    warm_default_views(entry, run, loaded, bundle)
    return entry


def is_warm(entry: Path | None) -> bool:
    return entry is not None and (entry / "views" / WARM_MARKER).exists()


_started: dict[str, subprocess.Popen] = {}
_started_lock = threading.Lock()


def start_warm_up(run_dir: str | Path, db_path: str | Path, symbols: Sequence[str], interval: str,
                  entry: Path | None, cache_dir: str | Path | None = None) -> subprocess.Popen | None:
    """Compute the default views of (checkpoint, cached bars) ahead, in a separate process at the lowest CPU
    priority (`python -m engine.diagnostics.view_results`), unless the entry holds them already, one is running
    for it, or this process started one -> the process, or None.

    A process, not a thread: it needs no share of the app's interpreter (a thread beside the page being drawn
    slowed a first start by seconds on two cores), it runs on what CPU the app and the browser leave, and it
    finishes after the app is stopped. A page asking for a result it is computing waits for that result (its file
    lock) rather than computing it twice."""
    if entry is None or is_warm(entry) or not entry.is_dir() or os.environ.get(WARM_ENV_VAR, "1") == "0":
        return None
    with _started_lock:
        if str(entry) in _started:
            return None
        if _locked_elsewhere(entry):
            return None
        views = entry / "views"
        views.mkdir(exist_ok=True)
        # absolute paths: the process runs from the repository's root, the app from wherever it was started
        argv = [sys.executable, "-m", "engine.diagnostics.view_results", str(Path(run_dir).resolve()),
                "--db", str(Path(db_path).resolve()), "--interval", interval, "--symbols", *symbols,
                "--cache-dir", str(Path(cache_dir).resolve() if cache_dir is not None else entry.parent.resolve())]
        with open(views / "warm-up.log", "ab") as log:
            process = subprocess.Popen(argv, cwd=str(Path(__file__).resolve().parents[2]), stdin=subprocess.DEVNULL,
                                       stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
                                       env={**os.environ, "OMP_NUM_THREADS": "1"})
        _started[str(entry)] = process
    return process


def wait_for_warm_ups(timeout: float | None = None) -> None:
    """Wait for the warm-up processes this process started (tests)."""
    with _started_lock:
        pending = list(_started.values())
    for process in pending:
        process.wait(timeout)


def _warm_lock(entry: Path):
    """One warm-up per entry at a time, across processes: the warm-up holds this file lock while it runs."""
    from filelock import FileLock

    return FileLock(str(entry / "views" / ".warm.lock"))


def _locked_elsewhere(entry: Path) -> bool:
    """Whether a warm-up holds the entry's lock now (no views folder yet: nobody does)."""
    from filelock import Timeout

    lock = _warm_lock(entry)
    try:
        lock.acquire(timeout=0)
    except Timeout:
        return True
    except OSError:
        return False
    lock.release()
    return False


def _lowest_priority() -> None:
    """Run on what the app and the browser leave. The process leads its own session, and with Linux's autogroup
    scheduling a session is a group that gets an equal share of the CPU against the app's whatever its threads'
    nice values: the group's own nice value (/proc/self/autogroup) is what lowers it. Measured on the 2-core box
    before this: the warm-up slowed a first start by ~2 s."""
    try:
        os.nice(19)
    except (AttributeError, OSError):
        pass
    try:
        with open("/proc/self/autogroup", "w") as autogroup:
            autogroup.write("19")
    except OSError:  # no autogroup (other kernels, other systems): the nice value above is what counts
        pass


def main(argv: list[str] | None = None) -> int:
    """`python -m engine.diagnostics.view_results RUN_DIR --db DB --interval 1h --symbols BTC SPY AAPL`: the
    default views of the checkpoint on the cached bars, computed into the diagnostics cache (what the app starts)."""
    import argparse

    from filelock import Timeout

    from storage.panel import cached_panel

    parser = argparse.ArgumentParser(description=main.__doc__.splitlines()[0])
    parser.add_argument("run_dir")
    parser.add_argument("--db", required=True)
    parser.add_argument("--interval", required=True)
    parser.add_argument("--symbols", nargs="+", required=True)
    parser.add_argument("--cache-dir", default=None)
    args = parser.parse_args(argv)
    _lowest_priority()
    from engine.diagnostics.for_run import (
        cached_diagnostics,
        diagnostics_entry,
        run_on_panel,
    )

    loaded = cached_panel(tuple(args.symbols), args.interval, db_path=args.db)
    run = run_on_panel(Path(args.run_dir), loaded, lazy=True)
    fingerprint = loaded.fingerprint()
    entry = diagnostics_entry(run, fingerprint, cache_dir=args.cache_dir)
    if is_warm(entry):
        return 0
    (entry / "views").mkdir(parents=True, exist_ok=True)
    lock = _warm_lock(entry)
    try:
        lock.acquire(timeout=0)
    except Timeout:
        return 0  # another process is at it
    try:
        bundle, _, _ = cached_diagnostics(run, loaded, cache_dir=args.cache_dir, fingerprint=fingerprint)
        warm_default_views(entry, run, loaded, bundle)
    finally:
        lock.release()
    return 0


if __name__ == "__main__":
    sys.exit(main())
