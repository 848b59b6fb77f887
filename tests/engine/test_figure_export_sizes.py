"""Chart files an analyst downloads stay small (issue 17: chart HTML export <= 500 KB): the Regimes scatter of a
long hourly history carried 26k hover rows as text (1,367 KB); it now draws at most SCATTER_MAX_POINTS bars, one in k
in time, and says so in its title."""
from __future__ import annotations

import numpy as np
import pandas as pd

from engine.figures.export import figure_bytes
from engine.figures.regimes import SCATTER_MAX_POINTS, regime_scatter

HTML_BUDGET_BYTES = 500_000


def long_history(n: int = 26_000):
    rng = np.random.default_rng(0)
    ts = pd.date_range("2022-01-01", periods=n, freq="h", tz="UTC")
    projections = rng.standard_normal((n, 3))
    labels = rng.integers(0, 3, n)
    open_bars = np.ones(n, dtype=bool)
    open_bars[::7] = False  # closed bars are never drawn
    closes = 100 * np.exp(np.cumsum(0.01 * rng.standard_normal(n)))
    return ts, projections, labels, open_bars, closes


def test_the_regime_scatter_of_a_long_history_is_thinned_in_time_said_in_its_title_and_exports_small():
    ts, projections, labels, open_bars, closes = long_history()
    for colour_by in ("regime", "date"):
        fig = regime_scatter(projections, labels, open_bars, ts, closes, "BTC", colour_by=colour_by, synthetic=True)
        drawn = sum(len(trace.x) for trace in fig.data)
        assert SCATTER_MAX_POINTS // 2 < drawn <= SCATTER_MAX_POINTS
        n_open = int(open_bars.sum())
        assert f"{drawn:,} of {n_open:,} open bars drawn (one in 5)" in fig.layout.title.text
        size = len(figure_bytes(fig, "html"))
        assert size <= HTML_BUDGET_BYTES, f"{colour_by}: {size:,} bytes"
    # the points kept are every k-th open bar in time, with their own date and price on hover
    fig = regime_scatter(projections, labels, open_bars, ts, closes, "BTC", colour_by="date", synthetic=False)
    kept = np.flatnonzero(open_bars)[::5]
    assert np.allclose(np.asarray(fig.data[0].x, dtype=float), projections[kept, 0], atol=1e-6)
    first = fig.data[0].customdata[0]
    assert first[0] == f"{ts[kept[0]]:%Y-%m-%d %H:%M}" and abs(first[1] - closes[kept[0]]) < 1e-4 * closes[kept[0]]


def test_a_short_history_is_drawn_whole():
    ts, projections, labels, open_bars, closes = long_history(600)
    fig = regime_scatter(projections, labels, open_bars, ts, closes, "BTC", synthetic=False)
    assert sum(len(trace.x) for trace in fig.data) == int(open_bars.sum())
    assert f"{int(open_bars.sum()):,} open bars</sup>" in fig.layout.title.text
