"""Figures to files: PNG/SVG through kaleido (which drives Debian's chromium), HTML through plotly alone.

Static images need a real browser. None is ever downloaded: kaleido is pointed at the installed chromium
(BROWSER_PATH, else /usr/bin/chromium or chromium on the PATH), and without one the caller gets `NoBrowserError`
with what to install, and can ask `browser_unavailable_reason()` first to show that instead of a button.

A kaleido cold start costs seconds, so a batch shares one kaleido server (`static_images`). The server is a
process-wide singleton and Streamlit runs download callbacks on their own threads, so batches take turns on a lock.
"""
from __future__ import annotations

import os
import shutil
import threading
import warnings
from collections.abc import Iterable, Mapping
from contextlib import contextmanager

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


def figure_html(fig: go.Figure) -> bytes:
    """A standalone HTML page of the figure with plotly.js inlined, so it opens offline (about 5 MB)."""
    return pio.to_html(fig, include_plotlyjs=True, full_html=True, config={"displaylogo": False}).encode("utf-8")


def figure_bytes(fig: go.Figure, fmt: str) -> bytes:
    """PNG, SVG or HTML bytes of a figure (the download buttons call this)."""
    return figure_html(fig) if fmt == "html" else figure_image(fig, fmt)
