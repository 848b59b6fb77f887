"""engine.figures.style, made faster, draws the same. display_rows (numpy, one pass per series) keeps exactly the
rows of the plain per-bucket loop it replaced: per bucket each series' first minimum and maximum among its finite
values, the bucket's first row where it has none, and the first and last rows. base_layout's template is the one
update_layout(template="plotly_white") sets; the trade list's times are format_time's, a column at once."""
from __future__ import annotations

from itertools import pairwise

import numpy as np

from engine.figures.style import display_rows


def per_bucket(series: list, max_points: int) -> np.ndarray:
    n = len(series[0])
    if n <= max_points:
        return np.arange(n)
    edges = np.linspace(0, n, max(max_points // (2 * len(series)), 1) + 1).astype(int)
    keep = {0, n - 1}
    for values in series:
        filled = np.where(np.isfinite(values), values, np.nan)
        for lo, hi in pairwise(edges):
            chunk = filled[lo:hi]
            if hi > lo and np.isfinite(chunk).any():
                keep |= {lo + int(np.nanargmin(chunk)), lo + int(np.nanargmax(chunk))}
            elif hi > lo:
                keep.add(lo)
    return np.array(sorted(keep))


def test_the_same_rows_as_the_per_bucket_loop():
    rng = np.random.default_rng(1)
    for trial in range(120):
        n, k = int(rng.integers(1, 20_000)), int(rng.integers(1, 4))
        max_points = int(rng.choice([10, 100, 1_200, 3_000]))
        series = []
        for _ in range(k):
            values = rng.standard_normal(n).cumsum()
            if trial % 2:
                values[rng.random(n) < 0.3] = np.nan
            if trial % 5 == 0:
                values[rng.random(n) < 0.01] = np.inf
            if trial % 7 == 0:
                values[: n // 2] = np.nan  # buckets with nothing finite
            series.append(np.round(values) if trial % 3 == 0 else values)  # ties: the first one, as nanargmin
        assert np.array_equal(display_rows(series, max_points), per_bucket(series, max_points)), trial


def test_base_layout_gives_the_figure_plotly_white_as_update_layout_does():
    import json

    import plotly.graph_objects as go
    import plotly.io as pio

    from engine.figures.style import base_layout

    fig = base_layout(go.Figure(go.Scatter(x=[1, 2], y=[3, 4])), "title", 300)
    expected = go.Figure(go.Scatter(x=[1, 2], y=[3, 4])).update_layout(
        title={"text": "title", "x": 0.0, "xanchor": "left"}, height=300, margin={"l": 50, "r": 20, "t": 60, "b": 40},
        legend={"orientation": "h", "yanchor": "bottom", "y": 1.0, "xanchor": "left", "x": 0.0},
        template="plotly_white")
    assert json.loads(fig.to_json()) == json.loads(expected.to_json())
    fig.layout.template.layout.paper_bgcolor = "red"  # the figure's own copy: the registered one stays white
    assert pio.templates["plotly_white"].layout.paper_bgcolor == "white"


def test_format_times_formats_a_column_as_format_time_does_each_value():
    import pandas as pd

    from engine.figures.backtest import format_time, format_times

    rng = np.random.default_rng(0)
    times = pd.Series(pd.to_datetime(rng.integers(1_500_000_000, 1_700_000_000, 500), unit="s", utc=True))
    times[::7] = pd.NaT
    for column in (times, times.dt.tz_localize(None)):  # aware, and naive UTC
        for zone in ("UTC", "America/New_York", "Asia/Kolkata"):
            assert format_times(column, zone).tolist() == [format_time(t, zone) for t in column]
