"""The charts drawn in the current run of a page, so "Export report" can export exactly what is on screen.

The frame starts a new collection before every full run of a page (`start_view`); `export_widgets` adds each chart it
draws (`view_figures`) and reads them back for the report. It sits apart from both so that the frame, which the
report needs for the selection's data spans, does not import the export widgets back.
"""
from __future__ import annotations

import plotly.graph_objects as go
import streamlit as st


def view_figures() -> dict[str, go.Figure]:
    """The charts of this run of the page, by title."""
    # Keyed by the script run: a rerun starts a fresh collection, so the report never holds a chart no longer shown.
    run = st.session_state.get("_view_run")
    figures = st.session_state.get("_view_figures")
    if figures is None or run != st.session_state.get("_view_run_seen"):
        figures = {}
        st.session_state["_view_figures"] = figures
        st.session_state["_view_run_seen"] = run
    return figures


def start_view() -> None:
    """Called by the frame before every full run of a page: the next charts belong to a new view."""
    st.session_state["_view_run"] = st.session_state.get("_view_run", 0) + 1
