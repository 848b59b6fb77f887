"""Figures to files: PNG/SVG through kaleido (which drives Debian's chromium), HTML through plotly alone.

Static images need a real browser. None is ever downloaded: kaleido is pointed at the installed chromium
(BROWSER_PATH, else /usr/bin/chromium or chromium on the PATH), and without one the caller gets `NoBrowserError`
with what to install, and can ask `browser_unavailable_reason()` first to show that instead of a button.

A kaleido cold start costs seconds, so a batch shares one kaleido server (`static_images`). The server is a
process-wide singleton and Streamlit runs download callbacks on their own threads, so batches take turns on a lock.
"""
from __future__ import annotations

import datetime as _dt
import os
import shutil
import threading
import warnings
from collections.abc import Iterable, Mapping
from contextlib import contextmanager

import numpy as np
import pandas as pd
import plotly.graph_objects as go
import plotly.io as pio

# No MathJax: it would be fetched from a CDN, and nothing is downloaded at run time.
pio.defaults.mathjax = False

STATIC_FORMATS = ("png", "svg")
MIME_TYPES = {"png": "image/png", "svg": "image/svg+xml", "html": "text/html", "pdf": "application/pdf"}
DEBIAN_CHROMIUM = "/usr/bin/chromium"
# How this project starts chromium itself (report PDFs, the browser tests): headless, no GPU, and nothing that
# reaches the network on its own (component updates, sync, first-run fetches).
HEADLESS_CHROMIUM_ARGS = (
    "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
    "--disable-sync", "--no-first-run",
)
_DEFAULT_SCALE = 2  # PNGs at twice the on-screen size read well in slides

_server_lock = threading.Lock()


class NoBrowserError(RuntimeError):
    """Static export asked for, but no chromium is installed."""


def browser_path() -> str | None:
    """The chromium that static export drives, or None when there is none."""
    explicit = os.environ.get("BROWSER_PATH")
    if explicit:
        return explicit if os.access(explicit, os.X_OK) else None
    if os.access(DEBIAN_CHROMIUM, os.X_OK):
        return DEBIAN_CHROMIUM
    return shutil.which("chromium") or shutil.which("chromium-browser")


def browser_unavailable_reason() -> str | None:
    """None when PNG/SVG/PDF export can run; else one sentence saying why not and what to install."""
    if browser_path() is not None:
        return None
    explicit = os.environ.get("BROWSER_PATH")
    where = f"BROWSER_PATH={explicit} is not an executable" if explicit else f"no chromium at {DEBIAN_CHROMIUM} or on the PATH"
    return (f"PNG, SVG and PDF export need a headless chromium ({where}): install Debian's chromium "
            "(apt-get install chromium) or set BROWSER_PATH. HTML export works without it.")


def require_browser() -> str:
    path = browser_path()
    if path is None:
        raise NoBrowserError(browser_unavailable_reason())
    # kaleido (choreographer) reads BROWSER_PATH: set it so it never looks for, or fetches, another browser.
    os.environ["BROWSER_PATH"] = path
    return path


@contextmanager
def kaleido_server():
    """One kaleido server (one chromium) for everything rendered inside the block."""
    require_browser()
    import kaleido

    with _server_lock:
        kaleido.start_sync_server(silence_warnings=True)
        try:
            yield
        finally:
            kaleido.stop_sync_server(silence_warnings=True)


def _render(fig: go.Figure, fmt: str, scale: float) -> bytes:
    if fmt not in STATIC_FORMATS + ("pdf",):
        raise ValueError(f"static export: format {fmt!r} is not one of {STATIC_FORMATS + ('pdf',)}")
    with warnings.catch_warnings():
        # plotly passes its default kaleido options along and warns that a running server ignores them.
        warnings.filterwarnings("ignore", message="The kopts argument is ignored")
        return pio.to_image(fig, format=fmt, scale=scale if fmt == "png" else 1)


def static_images(
    figures: Mapping[str, go.Figure], formats: Iterable[str] = STATIC_FORMATS, scale: float = _DEFAULT_SCALE
) -> dict[tuple[str, str], bytes]:
    """{(name, format): bytes} for every figure in every format, on one kaleido server. Raises NoBrowserError."""
    formats = tuple(formats)
    with kaleido_server():
        return {(name, fmt): _render(fig, fmt, scale) for name, fig in figures.items() for fmt in formats}


def figure_image(fig: go.Figure, fmt: str, scale: float = _DEFAULT_SCALE) -> bytes:
    """One figure as PNG or SVG (or PDF). Raises NoBrowserError without chromium."""
    return static_images({"figure": fig}, (fmt,), scale)[("figure", fmt)]


PLOTLY_JS_FILE = "plotly.min.js"
HTML_BUDGET_BYTES = 500_000  # a chart's HTML file; plotly.js (about 4.8 MB) is never copied into each one
_MISSING_PLOTLY = (
    "<script>if (!window.Plotly) {{ document.body.insertAdjacentHTML('afterbegin', '<p style=\"font-family:sans-serif;"
    "color:#b00020\">This chart needs {name} in the same folder (download it once from the app: the "
    "&quot;plotly.js&quot; button beside Export report). The report export inlines it and opens on its own.</p>'); }}"
    "</script>"
)


_DATE_ATTRIBUTES = ("x", "y")


def _as_epoch_ms(values) -> np.ndarray | None:
    """Milliseconds since the epoch (UTC) of an array of timestamps, or None when it is not one."""
    if values is None or isinstance(values, (str, dict)) or len(values) == 0:
        return None
    array = np.asarray(values)
    if np.issubdtype(array.dtype, np.number) or array.dtype == bool:
        return None
    if not np.issubdtype(array.dtype, np.datetime64):
        first = array.flat[0]
        if not isinstance(first, (pd.Timestamp, np.datetime64, _dt.datetime)):
            return None
    try:
        index = pd.DatetimeIndex(pd.to_datetime(array.ravel(), utc=True))
    except (TypeError, ValueError):
        return None
    if index.isna().any():
        return None
    return index.as_unit("ms").asi8.astype(np.float64)


def compact_figure(fig: go.Figure) -> go.Figure:
    """The same chart in fewer bytes for a file: timestamp axes as milliseconds since the epoch (plotly.js reads
    numbers on a date axis as UTC ms, and numpy arrays travel as base64), a regular clock as a start and a step.
    Nothing is dropped or rounded: what the file shows and its hover texts are the screen's."""
    compact = go.Figure(fig)
    axes_of: dict[str, set[str]] = {"x": set(), "y": set()}
    for trace in compact.data:
        for name in _DATE_ATTRIBUTES:
            if name not in trace or getattr(trace, name) is None:
                continue
            ms = _as_epoch_ms(getattr(trace, name))
            if ms is None:
                continue
            steps = np.diff(ms)
            if len(ms) > 2 and np.all(steps == steps[0]) and steps[0] > 0 and f"{name}0" in trace:
                trace.update({name: None, f"{name}0": float(ms[0]), f"d{name}": float(steps[0])})
            else:
                trace.update({name: ms})
            axes_of[name].add(getattr(trace, f"{name}axis", None) or name)
    for letter, axes in axes_of.items():
        for axis in axes:
            key = f"{letter}axis{axis[1:]}" if len(axis) > 1 else f"{letter}axis"
            if compact.layout[key].type in (None, "-"):
                compact.layout[key].type = "date"
    return compact


def figure_html(fig: go.Figure) -> bytes:
    """The figure as an HTML page that loads plotly.js once from plotly.min.js beside it (`plotly_js()`; nothing from
    the internet), so a chart file stays small (HTML_BUDGET_BYTES) however many are saved: inlining plotly.js made
    each one about 5 MB. Without the file beside it, the page says what to do. The report (engine.report) inlines
    plotly.js once for all its charts and opens on its own."""
    page = pio.to_html(compact_figure(fig), include_plotlyjs="directory", full_html=True,
                       config={"displaylogo": False})
    page = page.replace("</body>", _MISSING_PLOTLY.format(name=PLOTLY_JS_FILE) + "</body>", 1)
    return page.encode("utf-8")


def plotly_js() -> bytes:
    """The plotly.js bundle the HTML charts load (the copy plotly ships, the version that drew them)."""
    from plotly.offline import get_plotlyjs

    return get_plotlyjs().encode("utf-8")


def figure_bytes(fig: go.Figure, fmt: str) -> bytes:
    """PNG, SVG or HTML bytes of a figure (the download buttons call this)."""
    return figure_html(fig) if fmt == "html" else figure_image(fig, fmt)
