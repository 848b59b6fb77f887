"""A chart with its PNG / SVG / HTML download buttons underneath, and the "Export report" of a whole view.

The files are rendered only when a button is clicked (Streamlit calls the data callable then, on its own thread),
so drawing a page never waits for chromium. Without chromium the PNG/SVG buttons give way to a note saying why.
Every chart drawn this way is also remembered for the current run, so `report_buttons` at the foot of a page can
export exactly the charts on screen, with the selection, data spans and checkpoint, as one report.
"""
from __future__ import annotations

import re

import plotly.graph_objects as go
import streamlit as st

from engine.figures.export import (
    MIME_TYPES,
    PLOTLY_JS_FILE,
    browser_unavailable_reason,
    figure_bytes,
    plotly_js,
)
from views.frame import date_span_text, load_summary, selection_series
from views.view_charts import view_figures


def _file_stem(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9_-]+", "-", name).strip("-").lower() or "chart"


def chart_with_downloads(fig: go.Figure, key: str, file_stem: str | None = None, *, title: str | None = None) -> None:
    """Draw `fig` as exported (theme=None: the screen matches the file) with download buttons under it."""
    view_figures()[title or fig.layout.title.text or key] = fig
    st.plotly_chart(fig, key=f"chart-{key}", theme=None)
    stem = _file_stem(file_stem or key)
    unavailable = browser_unavailable_reason()
    formats = ("html",) if unavailable else ("png", "svg", "html")
    # One wrapping row of content-wide buttons under the chart's left edge: the labels stay readable in a narrow
    # column, where fixed column ratios would squeeze them to bare icons.
    with st.container(horizontal=True, vertical_alignment="center", gap="small"):
        for fmt in formats:
            st.download_button(
                fmt.upper(), data=lambda fmt=fmt: figure_bytes(fig, fmt), file_name=f"{stem}.{fmt}",
                mime=MIME_TYPES[fmt], key=f"download-{key}-{fmt}", on_click="ignore", icon=":material/download:",
                width="content",
            )
        if unavailable:
            st.caption(unavailable)


VERDICTS_HEADING = "Verdicts (each tested against a null)"


def report_buttons(page_title: str, selection, *, tables: dict | None = None, settings: dict | None = None,
                   notes: list[str] | None = None, verdicts: list[str] | None = None, key: str = "report") -> None:
    """"Export report" (HTML, and PDF where chromium exists) of every chart this page drew in this run.

    verdicts: the page's claims in words (engine.diagnostics.findings), the report's first table, so the exported
    view says what the screen says."""
    import pandas as pd

    from engine.report import ReportContent, report_html, report_pdf

    figures = dict(view_figures())
    summary = load_summary(selection.db_path)
    spans = selection_series(summary, selection)  # the series actually read (BTC may be stored as BTC-USD)
    spans = spans[["symbol", "source", "interval", "rows", "first_ts", "last_ts"]].copy()
    chosen = {"symbols": ", ".join(selection.symbols), "interval": selection.interval,
              "date range": date_span_text(selection), **(settings or {})}
    url = share_url()

    def content() -> ReportContent:
        return ReportContent(
            title=f"{page_title} · {', '.join(selection.symbols)} · {selection.interval}", figures=figures,
            tables={**({VERDICTS_HEADING: pd.DataFrame({"verdict": list(verdicts)})} if verdicts else {}),
                    **{name: table for name, table in (tables or {}).items() if isinstance(table, pd.DataFrame)}},
            settings=chosen, data_spans=spans, synthetic=selection.synthetic,
            checkpoint_id=selection.checkpoint["run_id"] if selection.checkpoint else None, share_url=url,
            notes=[f"device: {selection.device}", *(notes or [])],
        )

    st.divider()
    columns = st.columns([1, 1, 2], vertical_alignment="center")
    stem = _file_stem(page_title)
    columns[0].download_button("Export report (HTML)", data=lambda: report_html(content()),
                               file_name=f"{stem}-report.html", mime="text/html", key=f"{key}_html",
                               on_click="ignore", type="primary", icon=":material/description:")
    reason = browser_unavailable_reason()
    if reason is None:
        columns[1].download_button("Export report (PDF)", data=lambda: report_pdf(content()),
                                   file_name=f"{stem}-report.pdf", mime="application/pdf", key=f"{key}_pdf",
                                   on_click="ignore", icon=":material/picture_as_pdf:")
    else:
        columns[1].caption(reason)
    columns[2].caption(f"{len(figures)} charts of this view, the selection, data spans and the shareable link. "
                       f"A chart's own HTML file loads {PLOTLY_JS_FILE} from its folder: save it there once.")
    columns[2].download_button(f"{PLOTLY_JS_FILE} (for HTML charts)", data=plotly_js, file_name=PLOTLY_JS_FILE,
                               mime="text/javascript", key=f"{key}_plotly_js", on_click="ignore", width="content")


def share_url() -> str:
    """The link that reopens this view: the page's URL with every bound widget's query parameter (views.url_state
    writes them defaults included, the checkpoint by run id), repeated parameters (symbols) kept."""
    return link_to(st.context.url or "", {key: st.query_params.get_all(key) for key in st.query_params})


def link_to(page_url: str, params: dict[str, list[str]]) -> str:
    """page_url (its own query dropped) with params, each value list as repeated parameters."""
    from urllib.parse import urlencode, urlsplit, urlunsplit

    base = urlsplit(page_url)
    return urlunsplit((base.scheme, base.netloc, base.path, urlencode(params, doseq=True), ""))
