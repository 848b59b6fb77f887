"""The report: one self-contained HTML with every chart, table, setting and the provenance; a PDF of the same."""
from __future__ import annotations

import re

import pandas as pd
import plotly.graph_objects as go
import pytest

from engine.figures.export import NoBrowserError
from engine.report import ReportContent, report_html, report_pdf


def content(**changes) -> ReportContent:
    figures = {
        "Equity vs buy and hold": go.Figure(go.Scatter(y=[1, 1.1, 1.05]), layout=dict(title="equity chart")),
        "Drawdown": go.Figure(go.Scatter(y=[0, -0.02, -0.01]), layout=dict(title="drawdown chart")),
    }
    values = dict(
        title="Backtest · BTC, SPY · 1d",
        figures=figures,
        tables={"Metrics": pd.DataFrame({"metric": ["Sharpe ratio"], "strategy": ["0.812"], "buy and hold": ["1.050"]})},
        settings={"threshold": 0.035, "commission_bps": 2.5},
        data_spans=pd.DataFrame({"symbol": ["BTC"], "source": ["demo"], "last_ts": ["2024-12-31"],
                                 "freshness": ["stale"]}),
        synthetic=True,
        checkpoint_id="run-2026-12-01-abc123",
        share_url="http://localhost:8501/backtest?bt_threshold=0.035&symbols=BTC",
        notes=["P(up) from walk-forward logistic regression <baseline>"],
    )
    return ReportContent(**{**values, **changes})


def test_html_holds_every_part_of_the_view_and_needs_no_internet():
    page = report_html(content()).decode("utf-8")
    for expected in ("Equity vs buy and hold", "Drawdown", "Sharpe ratio", "0.812", "threshold", "0.035",
                     "commission_bps", "run-2026-12-01-abc123", "bt_threshold=0.035", "stale", "SYNTHETIC DEMO DATA"):
        assert expected in page, expected
    assert "&lt;baseline&gt;" in page  # text is escaped, never markup
    assert page.count('class="plotly-graph-div"') == 2
    assert not re.findall(r"<script[^>]*src=", page)  # plotly.js inline: nothing to fetch
    assert page.count("plotly.js v") <= 2  # the bundle once (its banner), not once per chart


def test_real_data_carries_no_synthetic_banner_and_a_missing_checkpoint_is_said():
    page = report_html(content(synthetic=False, checkpoint_id=None)).decode("utf-8")
    assert "SYNTHETIC" not in page and "no model checkpoint" in page


def test_bad_content_is_refused_by_field():
    with pytest.raises(ValueError, match=r"figures\['x'\] is a dict"):
        content(figures={"x": {"data": []}})
    with pytest.raises(ValueError, match="title is empty"):
        content(title="  ")


@pytest.mark.browser
def test_pdf_prints_the_same_report():
    pdf = report_pdf(content())
    assert pdf.startswith(b"%PDF-") and len(pdf) > 10_000


def test_pdf_without_chromium_says_so(monkeypatch):
    monkeypatch.setenv("BROWSER_PATH", "/nonexistent/chromium")
    with pytest.raises(NoBrowserError, match="apt-get install chromium"):
        report_pdf(content())
