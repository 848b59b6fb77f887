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
from engine.diagnostics.findings import PARTS, Findings, findings_for_run
from engine.diagnostics.for_run import RunOnPanel, cached_diagnostics, run_on_panel
from engine.diagnostics.view_results import start_warm_up
from engine.model.checkpoint import CheckpointError, misfit_text
from storage.locks import CacheBusyError
from storage.panel import LoadedPanel, PlantedTruth, cached_panel
from views.frame import MODEL_RESULTS_CACHED, Selection, model_order


@dataclass(frozen=True)
class ModelView:
    loaded: LoadedPanel
    run: RunOnPanel  # manifest, features, and the model loaded on first use (the hidden attention of one bar)
    bundle: DiagnosticsBundle
    cache_status: str  # "cached" or "computed: why"
    rows: range  # the union-clock rows inside the sidebar's date range
    out_of_sample: list[tuple[pd.Timestamp, pd.Timestamp]]  # every walk-forward test span, UTC
    entry: Path | None = None  # the diagnostics' cache folder: the pages' further results are kept there

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
    run = run_on_panel(Path(run_path), loaded, lazy=True)  # torch only if the cache misses or a page runs the model
    bundle, status, entry = cached_diagnostics(run, loaded)
    # the model pages' default views (Lookback's traced bar and tests, Regimes' cluster test) computed ahead, in a
    # low-priority process, so that their first visit reads them from disk (once per checkpoint and data)
    start_warm_up(run_path, db_path, symbols, interval, entry)
    return loaded, run, bundle, status, entry


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
    """The results for the selection; when there are none, the page still shows the selection's prices and data
    quality, says the true reason and offers one click onward (`no_model_fallback`), then stops."""
    if not selection.symbols:
        st.info("Choose symbols in the sidebar.")
        st.stop()
    if selection.checkpoint is None:
        no_model_fallback(selection)
    freshness = f"{selection.last_bar}"
    name = _plain(str(selection.checkpoint.get("run_id", "?")))
    # Only the errors a checkpoint or the data can cause are caught, each shown as a message that names the
    # checkpoint and what to do; engine.model.checkpoint turns every problem of a checkpoint's files (unreadable,
    # hostile, beyond what the app runs, another format) into a CheckpointError. Anything else is a bug to see.
    try:
        with st.spinner("Running the model over the cached history (once per checkpoint and data)…"):
            loaded, run, bundle, status, entry = _load(selection.checkpoint["path"], selection.db_path,
                                                model_order(selection.checkpoint, list(selection.symbols)),
                                                selection.interval, freshness)
    except CheckpointError as error:
        st.error(f"Checkpoint **{name}** cannot be used here: {_plain(str(error))}\n\nChoose another checkpoint "
                 "in the sidebar, or train a new one on the Model page. The prices and their quality follow.",
                 icon="⛔")
        _train_link(selection)
        selection_prices(selection)
        st.stop()
    except CacheBusyError as error:
        st.warning(f"The cache is busy ({_plain(str(error))}); try again in a moment.")
        st.stop()
    except ValueError as error:
        st.error(f"Checkpoint **{name}** could not run on this selection: {_plain(str(error))}")
        _train_link(selection)
        selection_prices(selection)
        st.stop()
    st.session_state[MODEL_RESULTS_CACHED] = True  # the status line: no device used means read from disk
    ts = bundle.inference.ts
    if run.span_text():  # the spans are found on this data by time (engine.diagnostics.for_run)
        st.caption(f"Model `{run.manifest.run_id}`. {run.span_text()}")
    return ModelView(loaded, run, bundle, status, _rows_in_range(ts, selection), _test_spans(run.manifest), entry)


# --- no dead ends: what a model page shows when no checkpoint fits the selection ----------------------------------


def no_model_fallback(selection: Selection) -> None:
    """No checkpoint fits: the true reason (interval or symbols, which), one click onward (switch to the universe of
    the checkpoint the user would otherwise see, or train this one on the Model page), then the selection's prices
    and data quality. Stops the page."""
    reference = selection.unfit
    chosen = f"{', '.join(selection.symbols)} at {selection.interval}"
    if reference is None:
        st.warning(f"No model has been trained yet, so there is nothing to show for {chosen} but its prices: train "
                   "one on the Model page.", icon="🧠")
    else:
        why = misfit_text(reference, selection.symbols, selection.interval)
        st.warning(f"No checkpoint fits {chosen}. The checkpoint you would see, **{_plain(reference['run_id'])}**, "
                   f"does not fit: {why}. A model runs only on the assets and interval it was trained on.",
                   icon="🧩")
    columns = st.columns(2)
    with columns[0]:
        if reference is not None and _universe_available(selection, reference):
            assets = list(reference.get("assets") or reference.get("symbols", []))
            st.button(f"Show {reference['run_id']}: switch to {', '.join(assets)} at {reference['interval']}",
                      key="fallback_switch", type="primary", on_click=_switch_to, args=(reference,),
                      help="Changes the sidebar's symbols and interval to the ones this checkpoint was trained on.")
    with columns[1]:
        _train_link(selection)
    selection_prices(selection)
    st.stop()


def _universe_available(selection: Selection, run: dict) -> bool:
    from views.frame import load_summary

    summary = load_summary(selection.db_path)
    have = set(summary.loc[(summary["interval"] == run.get("interval")) & (summary["rows"].fillna(0) > 0), "asset"])
    return all(asset in have for asset in (run.get("assets") or run.get("symbols", [])))


def _switch_to(run: dict) -> None:
    """Button callback: the sidebar's selection becomes the run's universe (its widgets read these keys)."""
    st.session_state["symbols"] = list(run.get("assets") or run.get("symbols", []))
    st.session_state["interval"] = run["interval"]
    st.session_state["checkpoint"] = run["run_id"]
    st.session_state.pop("dates", None)


def _train_link(selection: Selection) -> None:
    """A link to the Model page with this selection in its URL; the page opens with it and a Train button."""
    query = {key: st.query_params.get_all(key) for key in ("symbols", "interval", "dates") if key in st.query_params}
    st.page_link("views/model.py", label=f"Train a model on {', '.join(selection.symbols)} at {selection.interval}",
                 icon="🧠", query_params=query)


def selection_prices(selection: Selection) -> None:
    """The selection's price charts and data quality (what every page can show without a model)."""
    from engine.figures.prices import price_chart
    from storage.cache import read_bars
    from views.frame import load_summary, selection_series

    summary = load_summary(selection.db_path)
    series = selection_series(summary, selection)
    st.subheader("Data quality")
    if series.empty:
        st.info(f"No {selection.interval} bars are cached for {', '.join(selection.symbols)}: fetch or import them on "
                "the Data page.")
        return
    table = series.assign(freshness=np.where(series["source"] == "demo", "synthetic, fixed span",
                                             np.where(series["stale"].fillna(False).astype(bool), "stale", "fresh")))
    missing = [a for a in selection.symbols if a not in set(series["asset"])]
    if missing:
        st.warning(f"No {selection.interval} bars cached for {', '.join(missing)}.")
    st.dataframe(
        table[["asset", "symbol", "source", "rows", "first_ts", "last_ts", "freshness"]], hide_index=True,
        width="stretch",
        column_config={
            "asset": st.column_config.TextColumn("Asset"), "symbol": st.column_config.TextColumn(
                "Stored as", help="The spelling and source the cache holds this asset's bars under."),
            "source": st.column_config.TextColumn("Source"),
            "rows": st.column_config.NumberColumn("Bars", format="localized"),
            "first_ts": st.column_config.DatetimeColumn(f"First bar ({selection.zone})", format="YYYY-MM-DD HH:mm",
                                                        timezone=selection.zone),
            "last_ts": st.column_config.DatetimeColumn(f"Last bar ({selection.zone})", format="YYYY-MM-DD HH:mm",
                                                       timezone=selection.zone),
            "freshness": st.column_config.TextColumn("Freshness", help="fresh, stale (behind the interval's "
                                                     "expected last bar), or the demo's fixed synthetic span"),
        },
    )
    st.subheader("Prices")
    for row in series.itertuples():
        try:
            bars = read_bars(row.symbol, selection.interval, start=selection.start, end=selection.end,
                             db_path=selection.db_path)
        except CacheBusyError as error:
            st.warning(str(error))
            continue
        st.plotly_chart(price_chart(bars, row.symbol, selection.interval, synthetic=(row.source == "demo"),
                                    source=row.source), key=f"fallback-price-{row.symbol}", theme=None)


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
