"""The shared frame every page shows: sidebar selections (bound to the URL) and the status line.

The sidebar holds symbols, interval, date range and checkpoint. Each widget is bound to the URL's query
parameters, so a view can be shared as a link; "Reset to defaults" clears them.

Symbols are asset names (storage.symbols): BTC stored as BTC-USD or BTCUSDT is the one asset BTC, read from the
spelling and source storage prefers (real data over the demo). The default selection follows the cache: the real
data's usual assets and busiest interval when there is real data, the demo otherwise. A checkpoint fits the same
set of assets at the interval in any order; when one is chosen, `Selection.symbols` is in the model's order, so
every page lays the assets out the way the model reads them. The status line says where the
data comes from, how fresh it is, which checkpoint and device are in use, and, loudly, when the data is the
synthetic demo. Pages read the selection with `current_selection()`; nothing here computes anything worth testing
on its own: it only calls storage and engine and lays out widgets.
"""
from __future__ import annotations

import sys
from dataclasses import dataclass, field

import numpy as np
import pandas as pd
import streamlit as st

from engine.model.checkpoint import (
    default_run,
    fitting_runs,
    list_runs,
    misfit_text,
    pinned_default,
)
from storage.cache import SOURCE_PREFERENCE, cache_summary
from storage.config import INTERVAL_SECONDS, resolve_db_path
from storage.importing import latest_import_reports
from storage.locks import CacheBusyError
from storage.refresh import seed_demo_if_empty
from storage.sources.demo import DEMO_SYMBOLS
from storage.symbols import choose_stored
from views.url_state import url_widget
from views.view_charts import start_view

DEFAULT_INTERVAL = "1d"
SUMMARY_TTL_SECONDS = 30
SELECTION_KEYS = ("symbols", "interval", "dates", "checkpoint")
TIME_ZONES = ("UTC", "America/New_York", "America/Chicago", "Europe/London", "Europe/Berlin", "Asia/Tokyo",
              "Asia/Hong_Kong", "Asia/Singapore", "Australia/Sydney")
SYNTHETIC_BANNER = ("**Synthetic demo data**: generated with planted regimes and a planted lead-lag "
                    "(see storage/sources/DEMO.md); not market prices.")


@dataclass(frozen=True)
class Selection:
    symbols: tuple[str, ...]  # asset names; in the checkpoint's order when one is chosen
    interval: str
    db_path: str
    start: pd.Timestamp | None = None  # UTC, inclusive
    end: pd.Timestamp | None = None  # UTC, exclusive (the day after the last chosen date)
    checkpoint: dict | None = None  # a run entry from engine.model.checkpoint.list_runs (path, run_id, symbols, ...)
    sources: dict[str, str] = field(default_factory=dict)  # asset -> the source its bars are read from
    stored: dict[str, str] = field(default_factory=dict)  # asset -> the stored symbol read (BTC -> BTC-USD)
    synthetic: bool = False  # any shown series comes from the demo market
    last_bar: pd.Timestamp | None = None
    # When no checkpoint fits: the one the user would otherwise see (the link's, the pinned default or the demo),
    # so the model pages can state why it does not fit and offer its universe or training this one.
    unfit: dict | None = None
    zone: str = "UTC"  # the time zone tables show times in (named in their column titles); data stay in UTC

    @property
    def device(self) -> str:
        """The device a model runs on ('CPU (2 threads)', a GPU's name); asking imports torch (engine.runtime)."""
        return load_device_label()


@st.cache_data(ttl=SUMMARY_TTL_SECONDS, show_spinner=False)
def load_summary(db_path: str) -> pd.DataFrame:
    return cache_summary(db_path=db_path)


@st.cache_data(ttl=SUMMARY_TTL_SECONDS, show_spinner=False)
def load_import_reports(db_path: str) -> pd.DataFrame:
    return latest_import_reports(db_path=db_path)


@st.cache_data(ttl=SUMMARY_TTL_SECONDS, show_spinner=False)
def load_runs(runs_marker: str) -> list[dict]:
    del runs_marker  # only part of the cache key: a new run (Model page) clears this cache
    return list_runs()


@st.cache_data(ttl=SUMMARY_TTL_SECONDS, show_spinner=False)
def load_pinned_default(runs_marker: str) -> str | None:
    del runs_marker  # "Use as default" on the Model page bumps it
    return pinned_default()


@st.cache_resource(show_spinner=False)
def load_device_label() -> str:
    # imports torch: only where a page runs a model or asks for the device
    from engine.runtime import device_label

    return device_label()


def _torch_loaded() -> bool:
    return "torch" in sys.modules


def clear_cached_reads() -> None:
    """After a write (refresh, import, training) every cached read is out of date."""
    st.cache_data.clear()


def _seed_once(db_path: str) -> None:
    # The check is one short read; the seeding itself takes the refresh lock, so two browser sessions
    # opening an empty cache at once seed it once.
    if st.session_state.get("_seed_checked") == db_path:
        return
    with st.spinner("Preparing the cache: seeding the synthetic demo market…"):
        seeded = seed_demo_if_empty(db_path=db_path)
    st.session_state["_seed_checked"] = db_path
    if seeded:
        st.session_state["_seeded_demo"] = True
        clear_cached_reads()


def _reset_selection(defaults: dict) -> None:
    # Bound widgets own their query parameters, so the reset sets the widgets (and through them the URL) rather
    # than clearing the URL; what was not chosen explicitly follows from the new symbols and interval.
    for key in SELECTION_KEYS:
        st.session_state.pop(key, None)
    for key, value in defaults.items():
        st.session_state[key] = value


def _default_interval(runs: list[dict], known_intervals: list[str]) -> str:
    """The shipped demo checkpoint's interval when the cache has it, so a new user sees the model at once."""
    demo = next((run for run in runs if run.get("demo")), None)
    if demo and demo.get("interval") in known_intervals:
        return demo["interval"]
    return DEFAULT_INTERVAL if DEFAULT_INTERVAL in known_intervals else (known_intervals or [DEFAULT_INTERVAL])[0]


def _real_rows(summary: pd.DataFrame) -> pd.DataFrame:
    return summary[(summary["source"] != "demo") & (summary["rows"].fillna(0) > 0)]


def _default_selection(summary: pd.DataFrame, runs: list[dict], known_assets: list[str],
                       known_intervals: list[str]) -> tuple[list[str], str]:
    """(symbols, interval) to show before the user (or a link) chooses.

    With real (non-demo) bars in the cache: the interval where most of the usual assets (BTC, SPY, AAPL) have
    real bars, then the one with the most real bars; the usual assets with real bars there, filled up to three
    with the other assets that have the most real bars there. Without: the demo universe at the demo checkpoint's
    interval.
    """
    real = _real_rows(summary)
    if real.empty:
        return [s for s in DEMO_SYMBOLS if s in known_assets] or known_assets[:3], _default_interval(runs, known_intervals)

    def score(interval: str) -> tuple[int, float]:
        at = real[real["interval"] == interval]
        return sum(s in set(at["asset"]) for s in DEMO_SYMBOLS), float(at["rows"].sum())

    interval = max((i for i in known_intervals if i in set(real["interval"])), key=score)
    bars = real[real["interval"] == interval].groupby("asset")["rows"].sum()
    usual = [s for s in DEMO_SYMBOLS if s in bars.index]
    others = [a for a in bars.sort_values(ascending=False, kind="stable").index if a not in usual]
    return usual + others[: max(0, len(DEMO_SYMBOLS) - len(usual))], interval


def model_order(checkpoint: dict, symbols: list[str]) -> tuple[str, ...]:
    """The selected assets in the order the checkpoint's model reads them (its "assets", asset names)."""
    order = {asset: i for i, asset in enumerate(checkpoint.get("assets", checkpoint.get("symbols", ())))}
    return tuple(sorted(symbols, key=lambda s: order.get(s, len(order))))


def _run_label(run: dict) -> str:
    tag = "demo checkpoint" if run.get("demo") else run.get("created_at", "")[:16].replace("T", " ")
    if not run.get("date_trusted", True):
        tag += ", date unverified"
    return f"{run['run_id']} ({tag})"


def render_frame() -> Selection:
    start_view()
    db_path = str(resolve_db_path())
    try:
        _seed_once(db_path)
        summary = load_summary(db_path)
    except CacheBusyError as error:
        st.warning(f"The cache is busy: {error}. The page will show data once the writer finishes.")
        summary = pd.DataFrame(columns=["symbol", "source", "interval", "rows", "first_ts", "last_ts"])
    runs = load_runs(str(st.session_state.get("_runs_version", 0)))

    if "asset" not in summary.columns:  # the empty frame of a busy cache
        summary = summary.assign(asset=summary["symbol"])
    known_symbols = sorted(set(summary["asset"])) or list(DEMO_SYMBOLS)
    known_intervals = [i for i in INTERVAL_SECONDS if i in set(summary["interval"])] or [DEFAULT_INTERVAL]
    default_symbols, default_interval = _default_selection(summary, runs, known_symbols, known_intervals)

    pinned = load_pinned_default(str(st.session_state.get("_runs_version", 0)))
    with st.sidebar:
        st.markdown("### Selection")
        symbols = url_widget(
            st.multiselect, "Symbols", key="symbols", default=default_symbols, options=known_symbols,
            help="Assets to show (BTC-USD, BTCUSDT and BTC/USDT are all BTC); add more on the Data page (import or "
                 "fetch). A checkpoint fits when it was trained on the same assets, in any order; the model pages "
                 "then show them in the model's order.",
        )
        interval = url_widget(st.selectbox, "Interval", key="interval", default=default_interval,
                              options=known_intervals)
        shown = _series_read(summary, symbols, interval)
        start, end = _date_range(shown)
        fitting = fitting_runs(runs, tuple(symbols), interval)
        by_id = {run["run_id"]: run for run in runs}
        linked = st.query_params.get("checkpoint") if "checkpoint" not in st.session_state else None
        checkpoint, why_default = None, ""
        if fitting:
            fallback, why_default = default_run(fitting, pinned)
            ids = [run["run_id"] for run in fitting]
            chosen = url_widget(st.selectbox, "Checkpoint", key="checkpoint", default=fallback["run_id"],
                                options=ids, format_func=lambda run_id: _run_label(by_id[run_id]),
                                help="Trained runs that fit these symbols and this interval (Model page). The "
                                     "default is the run pinned with \"Use as default\" on the Model page, else the "
                                     "shipped demo checkpoint; a new run never replaces it on its own.")
            checkpoint = by_id[chosen]
            if linked and linked != chosen and linked in by_id:
                st.caption(f"The link's checkpoint {linked} does not fit this selection "
                           f"({misfit_text(by_id[linked], symbols, interval)}); showing {chosen}.")
            st.caption(f"Default: {why_default}." if chosen == fallback["run_id"] else
                       f"Chosen by you or the link; the default is {fallback['run_id']} ({why_default}).")
            if checkpoint.get("created_at_note"):
                note = checkpoint["created_at_note"]
                st.caption(f"{note[:1].upper()}{note[1:]}.")
            if list(model_order(checkpoint, symbols)) != list(symbols):
                st.caption(f"The model reads its assets in its own order: {', '.join(model_order(checkpoint, symbols))}.")
        else:
            st.caption("No checkpoint fits these symbols at this interval: the model pages say why and offer a "
                       "fitting one or training on the Model page.")
        reference = _reference_run(runs, by_id, linked, pinned) if checkpoint is None else None
        zone = url_widget(st.selectbox, "Time zone of tables", key="tz", default="UTC", options=TIME_ZONES,
                          help="Tables show times in this zone, named in their column titles; the data, the charts' "
                               "axes and the date range stay in UTC.")
        st.button("Reset to defaults", on_click=_reset_selection, icon=":material/restart_alt:",
                  kwargs={"defaults": {"symbols": default_symbols, "interval": default_interval,
                                       "dates": _full_span(summary, default_symbols, default_interval)}})
        st.caption(f"Cache: `{db_path}`")

    ordered = model_order(checkpoint, symbols) if checkpoint else tuple(symbols)
    read = shown.set_index("asset")
    selection = Selection(
        symbols=ordered, interval=interval, db_path=db_path, start=start, end=end, checkpoint=checkpoint,
        sources={a: read.at[a, "source"] for a in ordered if a in read.index},
        stored={a: read.at[a, "symbol"] for a in ordered if a in read.index},
        synthetic="demo" in set(shown["source"]),
        last_bar=shown["last_ts"].max() if not shown.empty else None, unfit=reference, zone=zone,
    )
    st.session_state["selection"] = selection
    _status_line(selection)
    return selection


def _reference_run(runs: list[dict], by_id: dict[str, dict], linked: str | None, pinned: str | None) -> dict | None:
    """When no checkpoint fits: the one the user would otherwise see (the link's, the pinned default, the demo), so
    the model pages can say why it does not fit and offer to switch to its universe."""
    for run_id in (linked, pinned):
        if run_id and run_id in by_id:
            return by_id[run_id]
    return next((run for run in runs if run.get("demo")), runs[-1] if runs else None)


def _date_range(shown: pd.DataFrame) -> tuple[pd.Timestamp | None, pd.Timestamp | None]:
    if shown.empty or shown["first_ts"].isna().all():
        return None, None
    first = shown["first_ts"].min().date()
    last = shown["last_ts"].max().date()
    picked = url_widget(
        st.date_input, "Date range (UTC)", key="dates", default=(first, last), min_value=first, max_value=last,
        help="Charts, forecasts and backtests use the bars in this span; models still warm up on earlier bars.",
    )
    if not isinstance(picked, (tuple, list)) or len(picked) != 2:
        return None, None  # half-picked range while the user clicks: keep the whole span
    lo, hi = picked
    return (pd.Timestamp(lo, tz="UTC"), pd.Timestamp(hi, tz="UTC") + pd.Timedelta(days=1))


def _full_span(summary: pd.DataFrame, symbols: list[str], interval: str):
    rows = _series_read(summary, symbols, interval)
    if rows.empty or rows["first_ts"].isna().all():
        return None
    return (rows["first_ts"].min().date(), rows["last_ts"].max().date())


def _series_read(summary: pd.DataFrame, assets, interval: str) -> pd.DataFrame:
    """The cache summary's row of the stored series each asset is read from at this interval (the spelling and
    source storage.panel.read_panel chooses: storage.symbols.choose_stored), one row per asset that has bars."""
    rows = summary[summary["asset"].isin(list(assets)) & (summary["interval"] == interval)
                   & (summary["rows"].fillna(0) > 0)]
    pairs = list(zip(rows["symbol"], rows["source"]))
    chosen = {choose_stored(asset, pairs, SOURCE_PREFERENCE) for asset in assets}
    return rows.loc[np.array([pair in chosen for pair in pairs], dtype=bool)]


def selection_series(summary: pd.DataFrame, selection: Selection) -> pd.DataFrame:
    """The cache summary's rows of the series the selection reads (one per asset with bars), for tables."""
    return _series_read(summary, selection.symbols, selection.interval)


def _status_line(selection: Selection) -> None:
    if st.session_state.pop("_seeded_demo", False):
        st.info("The cache was empty, so it was seeded with the **synthetic demo market** (BTC, SPY, AAPL). "
                "Import files or fetch real data on the Data page.")
    if selection.synthetic:
        st.warning(SYNTHETIC_BANNER, icon=":material/science:")
    parts = []
    if selection.sources:
        parts.append("data: " + ", ".join(
            f"{asset} ({src})" if selection.stored.get(asset, asset) == asset
            else f"{asset} ({selection.stored[asset]}, {src})" for asset, src in selection.sources.items()))
    if selection.last_bar is not None and not pd.isna(selection.last_bar):
        parts.append(f"last bar {selection.last_bar:%Y-%m-%d %H:%M} UTC")
    parts.append(f"checkpoint: {selection.checkpoint['run_id']}" if selection.checkpoint else "checkpoint: none")
    # The device is named once the page has loaded torch to run a model (finish_status_line, after the page): the
    # frame itself never imports torch, so a page without a model (Data) does not wait 1.5-3 s for it.
    slot = st.empty()
    st.session_state["_status_line"] = (slot, parts)
    slot.caption(" · ".join([*parts, f"device: {selection.device}" if _torch_loaded() else "device: …"]))


# views.model_results sets it when a page shows a model's results: with torch never loaded they came from the cache
MODEL_RESULTS_CACHED = "_model_results_cached"


def finish_status_line() -> None:
    """After the page ran (app.py): the status line names the device the page's model ran on, or says that the page
    ran none."""
    slot, parts = st.session_state.pop("_status_line", (None, None))
    cached = st.session_state.pop(MODEL_RESULTS_CACHED, False)
    if slot is None:
        return
    if _torch_loaded():
        device = f"device: {load_device_label()}"
    elif cached:
        device = "device: none used (the model's results were read from disk)"
    else:
        device = "device: none used (no model on this page)"
    slot.caption(" · ".join([*parts, device]))


def show_refresh_report(report, nothing_stored: str = "Nothing was stored.") -> None:
    """One message per symbol of a refresh or import: success, skipped (info) or failure with its reason."""
    for result in report.results:
        text = f"**{result.symbol}** ({result.interval}, {result.source}): {result.message}"
        if result.outcome == "ok":
            st.success(text)
        elif result.outcome == "skipped":
            st.info(text)
        else:
            st.error(f"{nothing_stored} {text}")


def current_selection() -> Selection:
    return st.session_state["selection"]


def date_span_text(selection: Selection) -> str:
    if selection.start is None:
        return "whole span"
    last_day = (selection.end - pd.Timedelta(days=1)).date()
    return f"{selection.start.date():%Y-%m-%d} .. {last_day:%Y-%m-%d} (UTC)"


