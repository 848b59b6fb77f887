"""A chart with its PNG / SVG / HTML download buttons underneath.

The files are rendered only when a button is clicked (Streamlit calls the data callable then, on its own thread),
so drawing a page never waits for chromium. Without chromium the PNG/SVG buttons give way to a note saying why.
"""
from __future__ import annotations

import re

import plotly.graph_objects as go
import streamlit as st

from engine.figures.export import MIME_TYPES, browser_unavailable_reason, figure_bytes


def _file_stem(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9_-]+", "-", name).strip("-").lower() or "chart"


def chart_with_downloads(fig: go.Figure, key: str, file_stem: str | None = None) -> None:
    """Draw `fig` as exported (theme=None: the screen matches the file) with download buttons under it."""
    st.plotly_chart(fig, key=f"chart-{key}", theme=None)
    stem = _file_stem(file_stem or key)
    unavailable = browser_unavailable_reason()
    formats = ("html",) if unavailable else ("png", "svg", "html")
    # Narrow button columns and one wide filler, so the buttons sit together under the chart's left edge.
    columns = st.columns([1] * len(formats) + [8], vertical_alignment="center")
    for column, fmt in zip(columns, formats):
        with column:
            st.download_button(
                fmt.upper(), data=lambda fmt=fmt: figure_bytes(fig, fmt), file_name=f"{stem}.{fmt}",
                mime=MIME_TYPES[fmt], key=f"download-{key}-{fmt}", on_click="ignore", icon=":material/download:",
            )
    if unavailable:
        with columns[-1]:
            st.caption(unavailable)
