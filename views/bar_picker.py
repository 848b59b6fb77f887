"""A slider over the bars of the chosen date range that returns a row of the panel's clock.

Used by the Lead-lag (where a trailing window ends) and Lookback (which bar's hidden attention) pages. A datetime
slider rather than a list of every bar: 26k hourly options would all travel to the browser on every rerun.
"""
from __future__ import annotations

from datetime import timedelta

import pandas as pd
import streamlit as st

from storage.config import INTERVAL_SECONDS


def pick_bar(label: str, ts: pd.DatetimeIndex, rows: range, interval: str, *, key: str, default: int | None = None,
             disabled: bool = False, help: str | None = None) -> int:
    """The row (of `ts`, inside `rows`) of the bar at or before the time chosen on a UTC datetime slider."""
    first, last = ts[rows.start], ts[rows.stop - 1]
    if first == last:
        return rows.start
    naive = lambda t: t.tz_convert("UTC").tz_localize(None).to_pydatetime()  # noqa: E731 - the slider shows UTC
    start = ts[rows.stop - 1 if default is None else default]
    chosen = st.slider(f"{label} (UTC)", min_value=naive(first), max_value=naive(last), value=naive(start),
                       step=timedelta(seconds=INTERVAL_SECONDS.get(interval, 86400)), format="YYYY-MM-DD HH:mm",
                       key=key, disabled=disabled, help=help)
    row = int(ts.searchsorted(pd.Timestamp(chosen, tz="UTC"), side="right")) - 1
    return min(max(row, rows.start), rows.stop - 1)
