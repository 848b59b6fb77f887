"""The model's results for the current selection, loaded once and shared by the model views.

Regimes, Lead-lag, Lookback, Forecasts and Overview all read the same thing: the selected checkpoint run over the
selected symbols' cached bars. `model_view()` loads it (engine.diagnostics.for_run: checkpoint checks, features
with the checkpoint's own scaler, the on-disk diagnostics cache), keeps it in st.cache_resource (one read-only
copy per process: the arrays are large and never written to) and, when there is nothing to show, says why on the
page and stops it: no checkpoint, a checkpoint that does not fit, a busy cache.

The model always runs over the whole cached history (its state needs the warm-up); the sidebar's date range only
chooses what is drawn (`ModelView.rows`). It reads the panel in the checkpoint's asset order (a model's assets are
fixed), whatever order the sidebar lists them in, and every page names the assets it shows.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import streamlit as st

from engine.diagnostics import DiagnosticsBundle
from engine.diagnostics.cache import load_or_compute_diagnostics
from engine.diagnostics.findings import PARTS, Findings, findings_for_run
from engine.diagnostics.for_run import RunOnPanel, run_on_panel
from engine.model.checkpoint import CheckpointError
from storage.locks import CacheBusyError
from storage.panel import LoadedPanel, PlantedTruth, cached_panel
from views.frame import Selection, model_order


@dataclass(frozen=True)
class ModelView:
    loaded: LoadedPanel
    run: RunOnPanel  # model, manifest, features (for the hidden attention of one bar)
    bundle: DiagnosticsBundle
    cache_status: str  # "cached" or "computed: why"
    rows: range  # the union-clock rows inside the sidebar's date range
    out_of_sample: list[tuple[pd.Timestamp, pd.Timestamp]]  # every walk-forward test span, UTC

    @property
    def truth(self) -> PlantedTruth | None:
        """The demo's planted structure when every asset is demo data (it comes with the panel)."""
        return self.loaded.truth

    @property
    def ts(self) -> pd.DatetimeIndex:
        return self.bundle.inference.ts

    @property
    def run_id(self) -> str:
        return self.run.manifest.run_id


@st.cache_resource(max_entries=4, show_spinner=False)
def _load(run_path: str, db_path: str, symbols: tuple[str, ...], interval: str, freshness: str):
    del freshness  # only keys the cache: new bars mean new results
    loaded = cached_panel(symbols, interval, db_path=db_path)
    run = run_on_panel(Path(run_path), loaded)
    bundle, status = load_or_compute_diagnostics(
        run.model, run.features, run.fit_rows, run_id=run.manifest.run_id, fingerprint=loaded.fingerprint(),
    )
    return loaded, run, bundle, status


def _test_spans(manifest) -> list[tuple[pd.Timestamp, pd.Timestamp]]:
    spans = []
    for fold in manifest.training.get("fold_spans_utc", []):
        first, last = fold["test"]
        spans.append((pd.Timestamp(first), pd.Timestamp(last)))
    return spans


def _rows_in_range(ts: pd.DatetimeIndex, selection: Selection) -> range:
    start = 0 if selection.start is None else int(ts.searchsorted(selection.start))
    stop = len(ts) if selection.end is None else int(ts.searchsorted(selection.end))
    return range(start, max(stop, start + 1)) if start < len(ts) else range(max(len(ts) - 1, 0), len(ts))


def model_view(selection: Selection) -> ModelView:
    """The results for the selection, or a message on the page saying why there are none (and the page stops)."""
    if not selection.symbols:
        st.info("Choose symbols in the sidebar.")
        st.stop()
    if selection.checkpoint is None:
        st.info(
            f"No checkpoint fits {', '.join(selection.symbols)} at {selection.interval}: a model runs on the symbols "
            "and interval it was trained on. Choose the demo universe (BTC, SPY, AAPL) or train a model for this "
            "selection on the Model page."
        )
        st.stop()
    freshness = f"{selection.last_bar}"
    name = _plain(str(selection.checkpoint.get("run_id", "?")))
    # Only the errors a checkpoint or the data can cause are caught, each shown as a message that names the
    # checkpoint and what to do; engine.model.checkpoint turns every problem of a checkpoint's files (unreadable,
    # hostile, beyond what the app runs, another format) into a CheckpointError. Anything else is a bug to see.
    try:
        with st.spinner("Running the model over the cached history (once per checkpoint and data)…"):
            loaded, run, bundle, status = _load(selection.checkpoint["path"], selection.db_path,
                                                model_order(selection.checkpoint, list(selection.symbols)),
                                                selection.interval, freshness)
    except CheckpointError as error:
        st.error(f"Checkpoint **{name}** cannot be used here: {_plain(str(error))}\n\nChoose another checkpoint "
                 "in the sidebar, or train a new one on the Model page. The Data page still shows the prices and "
                 "their quality.", icon=":material/error:")
        st.stop()
    except CacheBusyError as error:
        st.warning(f"The cache is busy ({_plain(str(error))}); try again in a moment.")
        st.stop()
    except ValueError as error:
        st.error(f"Checkpoint **{name}** could not run on this selection: {_plain(str(error))}")
        st.stop()
    ts = bundle.inference.ts
    if run.span_text():  # the spans are found on this data by time (engine.diagnostics.for_run)
        st.caption(f"Model `{run.manifest.run_id}`. {run.span_text()}")
    return ModelView(loaded, run, bundle, status, _rows_in_range(ts, selection), _test_spans(run.manifest))


def _plain(text: str) -> str:
    """Text from a file or an error, shown literally by st.error/st.warning (which read Markdown and $...$ math)."""
    return "".join("\\" + char if char in "\\`*_[]<>$~#|{}" else char for char in text)


def asset_closes(view: ModelView, symbol: str) -> np.ndarray:
    """(T,) close prices on the union clock (carried while the market is closed)."""
    return np.asarray(view.loaded.panel.fields["close"])[:, view.loaded.symbols.index(symbol)]


# --- the findings: what the pages claim, tested (engine.diagnostics.findings, shared with python -m engine.findings)


@st.cache_resource(max_entries=8, show_spinner=False)
def _findings(run_path: str, db_path: str, symbols: tuple[str, ...], interval: str, freshness: str,
              parts: tuple[str, ...], _loaded: LoadedPanel, _bundle: DiagnosticsBundle) -> Findings:
    del db_path, symbols, interval, freshness  # only key the cache, with the run and the parts
    return findings_for_run(Path(run_path), _loaded, _bundle, parts=parts)


def model_findings(view: ModelView, selection: Selection, parts: tuple[str, ...] = PARTS) -> Findings:
    """The findings of the selected checkpoint on the selection's data (the parts a page states), computed once per
    checkpoint and data and cached on disk beside the diagnostics; a failure is said on the page and stops it."""
    name = _plain(view.run_id)
    try:
        with st.spinner("Testing what the model shows against its nulls (once per checkpoint and data)…"):
            return _findings(selection.checkpoint["path"], selection.db_path, tuple(view.loaded.symbols),
                             selection.interval, f"{selection.last_bar}", tuple(parts), view.loaded, view.bundle)
    except CacheBusyError as error:
        st.warning(f"The cache is busy ({_plain(str(error))}); try again in a moment.")
        st.stop()
    except (CheckpointError, ValueError) as error:
        st.error(f"The findings of checkpoint **{name}** could not be computed: {_plain(str(error))}")
        st.stop()
