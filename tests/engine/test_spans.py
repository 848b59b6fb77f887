"""shade_test_spans sets at once the shapes Plotly's add_vrect makes one call at a time (the same figure JSON)."""
from __future__ import annotations

import numpy as np
import pandas as pd
import plotly.graph_objects as go
import pytest
from plotly.subplots import make_subplots

from engine.figures.spans import shade_test_spans, visible_spans
from engine.figures.style import OUT_OF_SAMPLE_FILL

TS = pd.date_range("2024-01-01", periods=500, freq="h", tz="UTC")
SPANS = [(TS[100], TS[199]), (TS[300], TS[399]), (TS[450], TS[-1] + pd.Timedelta(days=9)),
         (TS[0] - pd.Timedelta(days=30), TS[0] - pd.Timedelta(days=20))]  # one clipped, one off the chart


def _figure(rows: int, filled: tuple[int, ...]) -> go.Figure:
    fig = make_subplots(rows=rows, cols=1, shared_xaxes=True) if rows else go.Figure()
    for row in filled:
        fig.add_trace(go.Scatter(x=TS, y=np.arange(len(TS), dtype=float)), **({"row": row, "col": 1} if rows else {}))
    return fig


def _by_add_vrect(fig: go.Figure, on_subplots: bool) -> go.Figure:
    shown = visible_spans(SPANS, TS[0], TS[-1])
    for start, end in shown:
        fig.add_vrect(x0=start, x1=end, fillcolor=OUT_OF_SAMPLE_FILL, line_width=0, layer="below",
                      **({"row": "all", "col": "all"} if on_subplots else {}))
    fig.add_annotation(x=shown[0][0], xref="x", y=1.0, yref="paper", yanchor="bottom", xanchor="left",
                       text="out of sample", showarrow=False, font={"size": 10, "color": "#1F77B4"})
    return fig


@pytest.mark.parametrize(("rows", "filled", "on_subplots"), [
    (0, (0,), False), (2, (1, 2), True), (3, (1, 3), True), (2, (1, 2), False)])
def test_the_shading_is_what_add_vrect_draws(rows, filled, on_subplots):
    fig = _figure(rows, filled)
    fig.add_shape(type="line", x0=TS[0], x1=TS[-1], y0=0, y1=0)  # a shape already there stays first
    expected = _by_add_vrect(_figure(rows, filled), on_subplots)
    expected.layout.shapes = (fig.layout.shapes[0], *expected.layout.shapes)
    shade_test_spans(fig, SPANS, TS, on_subplots=on_subplots)
    assert fig.to_plotly_json()["layout"] == expected.to_plotly_json()["layout"]
    assert len(fig.layout.shapes) == 1 + 3 * (len(filled) if rows else 1)  # every subplot with data, row="all" or not
