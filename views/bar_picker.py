"""A slider over the bars of the chosen date range that returns a row of the panel's clock.

Used by the Lead-lag (where a trailing window ends) and Lookback (which bar's hidden attention) pages. A datetime
slider rather than a list of every bar: 26k hourly options would all travel to the browser on every rerun. The
chosen bar is in the URL (key=the query parameter), default included.
"""
from __future__ import annotations

from datetime import timedelta

import pandas as pd
import streamlit as st

from storage.config import INTERVAL_SECONDS
from views.url_state import url_widget


def _naive(t: pd.Timestamp):
    """The slider shows UTC wall time (a naive datetime)."""
    return t.tz_convert("UTC").tz_localize(None).to_pydatetime()


def pick_bar(label: str, ts: pd.DatetimeIndex, rows: range, interval: str, *, key: str, default: int | None = None,
             disabled: bool = False, help: str | None = None) -> int:
    """The row (of `ts`, inside `rows`) of the bar at or before the time chosen on a UTC datetime slider."""
    first, last = ts[rows.start], ts[rows.stop - 1]
    if first == last:
        return rows.start
    start = ts[rows.stop - 1 if default is None else default]
    # Bound to the URL with its default (views.url_state): a link reopens the same bar.
    chosen = url_widget(st.slider, f"{label} (UTC)", key=key, default=_naive(start), min_value=_naive(first),
                        max_value=_naive(last), step=timedelta(seconds=INTERVAL_SECONDS.get(interval, 86400)),
                        format="YYYY-MM-DD HH:mm", disabled=disabled, help=help)
    row = int(ts.searchsorted(pd.Timestamp(chosen, tz="UTC"), side="right")) - 1
    return min(max(row, rows.start), rows.stop - 1)
