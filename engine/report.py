"""The current view as one self-contained report: HTML that opens offline, and a PDF of the same where chromium exists.

The report holds exactly the figures the page drew (the same builder functions), the metrics tables, the slider
values, which data it covers and how fresh it is, the checkpoint (or forecaster) behind it, and the URL that
reopens the view. The HTML inlines plotly.js once (about 5 MB) so the file needs no internet; the PDF prints the
same page with every chart as a static SVG, because a printed page cannot run JavaScript reliably.
"""
from __future__ import annotations

import base64
import html
import subprocess
import tempfile
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd
import plotly.graph_objects as go
import plotly.io as pio

from engine.figures.export import (
    HEADLESS_CHROMIUM_ARGS,
    compact_figure,
    require_browser,
    static_images,
)
from engine.figures.style import SYNTHETIC_NOTE

PDF_TIMEOUT_SECONDS = 120

_STYLE = """
body { font-family: -apple-system, "Segoe UI", Roboto, Helvetica, Arial, sans-serif; margin: 24px auto;
       max-width: 1100px; color: #222; }
h1 { margin-bottom: 4px; } h2 { margin-top: 28px; border-bottom: 1px solid #ddd; padding-bottom: 4px; }
table { border-collapse: collapse; font-size: 13px; margin: 8px 0; }
th, td { border: 1px solid #ddd; padding: 4px 8px; text-align: left; vertical-align: top; }
th { background: #f4f4f4; }
.synthetic { background: #fdecea; color: #b00020; padding: 8px 12px; border-radius: 4px; font-weight: 600; }
.meta { color: #555; font-size: 13px; }
.chart { page-break-inside: avoid; margin: 12px 0; }
.chart img { width: 100%; }
"""


@dataclass(frozen=True)
class ReportContent:
    """Everything one report shows, in the order it shows it."""

    title: str
    figures: Mapping[str, go.Figure]  # heading -> figure
    tables: Mapping[str, pd.DataFrame]  # heading -> table (metrics, trades...)
    settings: Mapping[str, object]  # slider name -> value
    data_spans: pd.DataFrame  # per series: symbol, source, interval, first/last bar, freshness
    synthetic: bool
    checkpoint_id: str | None = None  # None: no model checkpoint drove the view (say what did in `notes`)
    share_url: str | None = None
    notes: Sequence[str] = ()  # e.g. the forecaster, the annualisation
    generated_at: pd.Timestamp = field(default_factory=lambda: pd.Timestamp.now(tz="UTC"))

    def __post_init__(self) -> None:
        if not self.title.strip():
            raise ValueError("ReportContent.title is empty")
        for name, fig in self.figures.items():
            if not isinstance(fig, go.Figure):
                raise ValueError(f"ReportContent.figures[{name!r}] is a {type(fig).__name__}, not a plotly Figure")
        for name, table in self.tables.items():
            if not isinstance(table, pd.DataFrame):
                raise ValueError(f"ReportContent.tables[{name!r}] is a {type(table).__name__}, not a DataFrame")


def report_html(content: ReportContent) -> bytes:
    """The report as one HTML file with plotly.js inlined: it opens, and its charts stay interactive, offline."""
    charts = []
    for i, (heading, fig) in enumerate(content.figures.items()):
        # plotly.js once, inline, with the first chart; the others reuse it.
        div = pio.to_html(compact_figure(fig), full_html=False, include_plotlyjs=(i == 0),
                          config={"displaylogo": False})
        charts.append(f'<div class="chart"><h3>{html.escape(heading)}</h3>{div}</div>')
    return _page(content, charts).encode("utf-8")


def report_pdf(content: ReportContent) -> bytes:
    """The same report as a PDF, printed by headless chromium with the charts as SVG. Raises NoBrowserError."""
    chromium = require_browser()
    images = static_images(content.figures, ("svg",))
    charts = [
        f'<div class="chart"><h3>{html.escape(heading)}</h3><img alt="{html.escape(heading)}" '
        f'src="data:image/svg+xml;base64,{base64.b64encode(images[(heading, "svg")]).decode("ascii")}"></div>'
        for heading in content.figures
    ]
    with tempfile.TemporaryDirectory(prefix="regime-report-") as workdir:
        page, pdf = Path(workdir) / "report.html", Path(workdir) / "report.pdf"
        page.write_text(_page(content, charts), encoding="utf-8")
        command = [
            chromium, *HEADLESS_CHROMIUM_ARGS, f"--user-data-dir={Path(workdir) / 'profile'}",
            "--no-pdf-header-footer", f"--print-to-pdf={pdf}", page.as_uri(),
        ]
        completed = subprocess.run(command, capture_output=True, text=True, timeout=PDF_TIMEOUT_SECONDS)
        if completed.returncode != 0 or not pdf.exists() or pdf.stat().st_size == 0:
            tail = (completed.stderr or completed.stdout).strip().splitlines()[-3:]
            raise RuntimeError(f"report_pdf: {chromium} exited {completed.returncode} without a PDF: {' | '.join(tail)}")
        return pdf.read_bytes()


def _page(content: ReportContent, charts: list[str]) -> str:
    escape = html.escape
    parts = [
        "<!DOCTYPE html>", '<html lang="en"><head><meta charset="utf-8">',
        f"<title>{escape(content.title)}</title><style>{_STYLE}</style></head><body>",
        f"<h1>{escape(content.title)}</h1>",
        f'<p class="meta">Generated {content.generated_at:%Y-%m-%d %H:%M} UTC</p>',
    ]
    if content.synthetic:
        parts.append(f'<p class="synthetic">{escape(SYNTHETIC_NOTE.upper())}: generated with planted regimes and a '
                     "planted lead-lag; not market prices.</p>")
    parts.append("<h2>Provenance</h2><table>")
    checkpoint = content.checkpoint_id or "none (no model checkpoint drove this view)"
    parts.append(f"<tr><th>checkpoint</th><td>{escape(checkpoint)}</td></tr>")
    if content.share_url:
        url = escape(content.share_url, quote=True)
        parts.append(f'<tr><th>shareable URL</th><td><a href="{url}">{url}</a></td></tr>')
    for note in content.notes:
        parts.append(f"<tr><th>note</th><td>{escape(note)}</td></tr>")
    parts.append("</table>")
    parts.append("<h2>Settings</h2>" + _key_values(content.settings))
    parts.append("<h2>Data spans and freshness</h2>" + _table(content.data_spans))
    for heading, table in content.tables.items():
        parts.append(f"<h2>{escape(heading)}</h2>" + _table(table))
    parts.append("<h2>Charts</h2>")
    parts.extend(charts)
    parts.append("</body></html>")
    return "\n".join(parts)


def _key_values(values: Mapping[str, object]) -> str:
    rows = "".join(f"<tr><th>{html.escape(str(k))}</th><td>{html.escape(str(v))}</td></tr>" for k, v in values.items())
    return f"<table>{rows}</table>"


def _table(frame: pd.DataFrame) -> str:
    if frame.empty:
        return "<p>(none)</p>"
    return frame.to_html(index=False, escape=True, na_rep="", border=0)
