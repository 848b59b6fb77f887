"""Chart HTML export within its budget (issue 17: a chart's HTML was 4.96 MB, plotly.js inlined per chart): a chart
file references plotly.js once, and a report inlines it once for all its charts."""
from __future__ import annotations

import numpy as np
import pandas as pd
import plotly.graph_objects as go

from engine.figures.export import (
    HTML_BUDGET_BYTES,
    PLOTLY_JS_FILE,
    figure_html,
    plotly_js,
)
from engine.report import ReportContent, report_html

PLOTLY_BANNER = b"plotly.js v"  # the licence banner at the top of the bundle

def busy_figure(points: int = 9_000, title: str = "BTC forecasts") -> go.Figure:  # the Forecasts page: 9k bars
    """About as much data as the app's largest drawn chart: a few thousand points in three traces."""
    ts = pd.date_range("2024-01-01", periods=points, freq="h", tz="UTC")
    rng = np.random.default_rng(0)
    y = np.cumsum(rng.normal(size=points))
    return go.Figure([go.Scatter(x=ts, y=y + k, name=f"trace {k}") for k in range(3)], layout={"title": title})

def test_a_chart_s_html_is_under_budget_and_references_plotly_js_once():
    page = figure_html(busy_figure())
    assert len(page) <= HTML_BUDGET_BYTES, f"{len(page) / 1e3:.0f} KB"
    assert page.count(f'src="{PLOTLY_JS_FILE}"'.encode()) == 1
    assert PLOTLY_BANNER not in page  # not inlined

def test_a_report_inlines_plotly_js_once_for_all_its_charts():
    figures = {f"chart {i}": busy_figure(2_000, f"chart {i}") for i in range(4)}
    content = ReportContent(title="size test", figures=figures, tables={}, settings={}, data_spans=pd.DataFrame(),
                            synthetic=False)
    page = report_html(content)
    assert page.count(PLOTLY_BANNER) == plotly_js().count(PLOTLY_BANNER) >= 1  # one copy of the bundle
    assert len(page) < len(plotly_js()) + 4 * HTML_BUDGET_BYTES

def test_compaction_keeps_every_point_and_its_time():
    import json

    import plotly.io as pio

    from engine.figures.export import compact_figure

    irregular = pd.DatetimeIndex(["2024-01-01 09:30", "2024-01-01 10:30", "2024-01-02 09:30"], tz="UTC")
    fig = busy_figure(50)
    fig.add_trace(go.Scatter(x=irregular, y=[1.0, 2.0, 3.0], name="sessions"))
    compact = json.loads(pio.to_json(compact_figure(fig)))
    regular = compact["data"][0]
    assert regular.get("x") is None and regular["x0"] == pd.Timestamp("2024-01-01", tz="UTC").value / 1e6
    assert regular["dx"] == 3_600_000  # hourly, as milliseconds on a date axis
    assert compact["layout"]["xaxis"]["type"] == "date"

    restored = compact_figure(fig).data[3].x
    assert list(restored) == [t.value / 1e6 for t in irregular]
    assert list(compact_figure(fig).data[0].y) == list(fig.data[0].y)  # values untouched
