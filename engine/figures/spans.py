"""Shading of the walk-forward test spans on time charts of the model views.

A model view draws the whole cached history, most of it the model's own training data; the shaded spans are the
bars each fold scored out of sample, so an in-sample stretch cannot pass for a result. (The backtest shades one
span from its first out-of-sample bar on: engine/figures/backtest.shade_out_of_sample.)
"""
from __future__ import annotations

from typing import Iterable

import pandas as pd
import plotly.graph_objects as go

from engine.figures.style import OUT_OF_SAMPLE_FILL


def _utc(value) -> pd.Timestamp:
    stamp = pd.Timestamp(value)
    return stamp.tz_localize("UTC") if stamp.tzinfo is None else stamp.tz_convert("UTC")


def visible_spans(spans: Iterable[tuple], first, last) -> list[tuple[pd.Timestamp, pd.Timestamp]]:
    """The test spans clipped to [first, last] (what is on the chart); spans outside it are dropped."""
    first, last = _utc(first), _utc(last)
    clipped = []
    for start, end in spans:
        start, end = max(_utc(start), first), min(_utc(end), last)
        if start <= end:
            clipped.append((start, end))
    return clipped


def shade_test_spans(fig: go.Figure, spans: Iterable[tuple], times: pd.DatetimeIndex, *,
                     on_subplots: bool = False) -> go.Figure:
    """Shade every walk-forward test span inside `times` (on every row when `fig` comes from make_subplots);
    one "out of sample" label sits over the first shaded span."""
    if len(times) == 0:
        return fig
    shown = visible_spans(spans, times[0], times[-1])
    for start, end in shown:
        fig.add_vrect(x0=start, x1=end, fillcolor=OUT_OF_SAMPLE_FILL, line_width=0, layer="below",
                      **(dict(row="all", col="all") if on_subplots else {}))
    if shown:
        fig.add_annotation(x=shown[0][0], xref="x", y=1.0, yref="paper", yanchor="bottom", xanchor="left",
                           text="out of sample", showarrow=False, font=dict(size=10, color="#1F77B4"))
    return fig
