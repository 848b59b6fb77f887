"""The shared frame every page shows: sidebar selections (bound to the URL) and the data status line.

Pages read the current selection with `current_selection()`; nothing here computes anything worth testing
on its own, it only calls storage and lays out widgets.
"""
from __future__ import annotations

from dataclasses import dataclass

import pandas as pd
import streamlit as st

from storage.cache import cache_summary
from storage.locks import CacheBusyError
from storage.refresh import seed_demo_if_empty
from storage.config import INTERVAL_SECONDS, resolve_db_path
from storage.sources.demo import DEMO_SYMBOLS

DEFAULT_INTERVAL = "1d"
SUMMARY_TTL_SECONDS = 30


@dataclass(frozen=True)
class Selection:
    symbols: tuple[str, ...]
    interval: str
    db_path: str


@st.cache_data(ttl=SUMMARY_TTL_SECONDS, show_spinner=False)
def load_summary(db_path: str) -> pd.DataFrame:
    return cache_summary(db_path=db_path)


def clear_cached_reads() -> None:
    """After a write (refresh, import) every cached read is out of date."""
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


def render_frame() -> Selection:
    db_path = str(resolve_db_path())
    try:
        _seed_once(db_path)
        summary = load_summary(db_path)
    except CacheBusyError as error:
        st.warning(f"The cache is busy: {error}. The page will show data once the writer finishes.")
        summary = pd.DataFrame()

    known_symbols = sorted(set(summary["symbol"])) if not summary.empty else list(DEMO_SYMBOLS)
    known_intervals = [i for i in INTERVAL_SECONDS if summary.empty or i in set(summary["interval"])]
    default_symbols = [s for s in DEMO_SYMBOLS if s in known_symbols] or known_symbols[:3]

    with st.sidebar:
        st.markdown("### Selection")
        symbols = st.multiselect(
            "Symbols", options=known_symbols, default=default_symbols, key="symbols", bind="query-params",
            help="Assets to show; add more with the Data page (import or fetch).",
        )
        interval = st.selectbox(
            "Interval", options=known_intervals or [DEFAULT_INTERVAL],
            index=(known_intervals.index(DEFAULT_INTERVAL) if DEFAULT_INTERVAL in known_intervals else 0),
            key="interval", bind="query-params",
        )
        st.caption(f"Cache: `{db_path}`")

    selection = Selection(tuple(symbols), interval, db_path)
    st.session_state["selection"] = selection
    _status_line(summary, selection)
    return selection


def _status_line(summary: pd.DataFrame, selection: Selection) -> None:
    if st.session_state.pop("_seeded_demo", False):
        st.info("The cache was empty, so it was seeded with the **synthetic demo market** (BTC, SPY, AAPL). "
                "Import files or fetch real data on the Data page.")
    if summary.empty:
        return
    shown = summary[summary["symbol"].isin(selection.symbols) & (summary["interval"] == selection.interval)]
    if shown.empty:
        return
    sources = sorted(set(shown["source"]))
    newest = shown["last_ts"].max()
    label = ", ".join(sources)
    if "demo" in sources:
        st.warning("**Synthetic demo data**: generated with planted regimes and a planted lead-lag; not market prices.",
                   icon=":material/science:")
    st.caption(f"Data source: {label} · last bar {newest:%Y-%m-%d %H:%M} UTC")


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
