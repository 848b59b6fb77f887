"""Chart export: real PNG/SVG from chromium through kaleido, offline HTML, and a clear signal without a browser."""
from __future__ import annotations

import re

import plotly.graph_objects as go
import plotly.io as pio
import pytest

from engine.figures import export


def small_figure(title: str = "export test") -> go.Figure:
    return go.Figure(go.Scatter(x=[1, 2, 3], y=[2, 1, 3], name="series"), layout=dict(title=title))


def test_html_loads_plotly_js_once_from_beside_it_and_opens_offline():
    page = export.figure_html(small_figure()).decode("utf-8")
    assert page.startswith("<html>") or page.lower().startswith("<!doctype html")
    assert "export test" in page
    # plotly.js once, from the file beside the chart (nothing from the internet), never inlined per chart
    assert re.findall(r"<script[^>]*src=\"([^\"]+)\"", page) == [export.PLOTLY_JS_FILE]
    assert len(page) < 50_000
    assert export.plotly_js().startswith(b"/**") and len(export.plotly_js()) > 1_000_000
    assert pio.defaults.mathjax is False


@pytest.mark.browser
def test_one_server_renders_a_batch_of_png_and_svg():
    figures = {"a": small_figure("first"), "b": small_figure("second")}
    images = export.static_images(figures, ("png", "svg"))
    assert set(images) == {("a", "png"), ("a", "svg"), ("b", "png"), ("b", "svg")}
    assert images[("a", "png")].startswith(b"\x89PNG\r\n\x1a\n")
    svg = images[("b", "svg")].decode("utf-8")
    assert "<svg" in svg and "second" in svg
    assert export.figure_bytes(small_figure(), "png").startswith(b"\x89PNG")


def test_without_chromium_static_export_says_what_to_install(monkeypatch):
    monkeypatch.setenv("BROWSER_PATH", "/nonexistent/chromium")
    reason = export.browser_unavailable_reason()
    assert reason is not None and "apt-get install chromium" in reason and "/nonexistent/chromium" in reason
    with pytest.raises(export.NoBrowserError, match="HTML export works without it"):
        export.figure_image(small_figure(), "png")
    assert export.figure_bytes(small_figure(), "html")  # HTML still works


@pytest.mark.browser
def test_unknown_formats_are_refused_by_name():
    with pytest.raises(ValueError, match="'gif' is not one of"):
        export.figure_image(small_figure(), "gif")
