"""Price charts of cached bars: candlesticks with volume under them, zoom buttons, a log scale, regime shading.

A chart of 20k hourly candles is slow to ship and unreadable, so beyond MAX_CANDLES bars the bars are resampled
for display into coarser candles (the first interval in DISPLAY_INTERVALS that fits: open first, high max, low
min, close last, volume summed, UTC buckets) and the title says so. Regimes shade the price panel by the label of
each candle's last bar (the label known at its close).
"""
from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pandas as pd
import plotly.graph_objects as go

from engine.figures.regimes import regime_colour, regime_name, regime_runs
from engine.figures.style import (
    TIME_AXIS_TITLE,
    add_range_selector,
    base_layout,
    label_synthetic,
    plain_times,
)

MAX_CANDLES = 2_000
# Display resolutions tried in order when a span has more than MAX_CANDLES bars (pandas offset aliases).
DISPLAY_INTERVALS = ("2h", "4h", "12h", "1D", "3D", "7D", "30D")
VOLUME_SHARE = 0.22  # of the plot's height, under the price
REGIME_OPACITY = 0.16


def display_bars(bars: pd.DataFrame, max_candles: int = MAX_CANDLES,
                 labels: np.ndarray | None = None) -> tuple[pd.DataFrame, str | None, np.ndarray | None]:
    """(bars to draw, the display interval when resampled else None, labels per drawn bar or None).

    bars: ts (UTC), open, high, low, close, volume. labels: (len(bars),) regime of each bar (-1 = none)."""
    if len(bars) <= max_candles:
        return bars, None, None if labels is None else np.asarray(labels)
    index = pd.DatetimeIndex(bars["ts"])
    utc = index.tz is not None
    # Buckets on naive UTC times: pandas ignores origin= for day buckets of a tz-aware index.
    frame = bars.set_index(index.tz_convert("UTC").tz_localize(None) if utc else index)
    if labels is not None:
        frame = frame.assign(label=np.asarray(labels))
    rule = DISPLAY_INTERVALS[-1]
    for candidate in DISPLAY_INTERVALS:
        if frame.index.floor(candidate).nunique() <= max_candles:
            rule = candidate
            break
    aggregations = {"open": "first", "high": "max", "low": "min", "close": "last", "volume": "sum"}
    if labels is not None:
        aggregations["label"] = "last"
    resampled = frame.resample(rule, origin="epoch").agg(aggregations).dropna(subset=["close"])
    if utc:
        resampled.index = resampled.index.tz_localize("UTC")
    resampled = resampled.rename_axis("ts").reset_index()
    drawn_labels = resampled.pop("label").to_numpy(dtype=np.int64) if labels is not None else None
    return resampled, rule, drawn_labels


def price_chart(bars: pd.DataFrame, symbol: str, interval: str, *, synthetic: bool, source: str,
                log_scale: bool = False, labels: np.ndarray | None = None,
                regime_names: Sequence[str] | None = None, max_candles: int = MAX_CANDLES) -> go.Figure:
    """Candlesticks of one symbol's bars with their volume under them (one time axis, UTC), zoom buttons, an
    optional log price scale, and the price panel shaded by regime when `labels` (one per bar) are given."""
    drawn, rule, drawn_labels = display_bars(bars, max_candles, labels)
    ts = pd.DatetimeIndex(plain_times(drawn["ts"]))  # naive UTC: see style.plain_times
    fig = go.Figure()
    if drawn_labels is not None and len(ts):
        _shade_regimes(fig, ts, drawn_labels, regime_names, drawn)  # first: under the candles
    fig.add_trace(go.Candlestick(
        x=ts, open=drawn["open"], high=drawn["high"], low=drawn["low"], close=drawn["close"], name=symbol,
        increasing_line_color="#2CA02C", decreasing_line_color="#D62728", yaxis="y", showlegend=False,
    ))
    if "volume" in drawn and np.nansum(drawn["volume"].to_numpy(dtype=float)) > 0:
        up = drawn["close"].to_numpy() >= drawn["open"].to_numpy()
        volume = drawn["volume"].to_numpy(dtype=float)
        # Two traces of one colour each: a colour per bar is validated one string at a time (slow on 2,000 bars).
        for side, colour in ((up, "rgba(44, 160, 44, 0.5)"), (~up, "rgba(214, 39, 40, 0.5)")):
            fig.add_trace(go.Bar(
                x=ts[side], y=volume[side], name="volume", yaxis="y2", showlegend=False, marker_color=colour,
                hovertemplate="%{x|%Y-%m-%d %H:%M} UTC<br>volume %{y:,.0f}<extra></extra>",
            ))
    title = f"{symbol} · {interval} · source: {source}"
    if rule is not None:
        title += f"<br><sup>{len(bars):,} {interval} bars resampled to {len(drawn):,} {rule} candles for display</sup>"
    base_layout(fig, title, height=480)
    fig.update_layout(
        margin={"l": 60, "r": 20, "t": 100 if rule else 80, "b": 90},
        yaxis={"domain": [VOLUME_SHARE + 0.04, 1.0], "title": {"text": "price" + (" (log)" if log_scale else "")},
               "type": "log" if log_scale else "linear"},
        yaxis2={"domain": [0.0, VOLUME_SHARE], "title": {"text": "volume"}, "showgrid": False, "rangemode": "tozero"},
        xaxis_rangeslider_visible=False,
        # The regimes' legend under the time axis: over the plot sit the zoom buttons (left) and the demo stamp.
        legend={"orientation": "h", "yanchor": "top", "y": -0.16, "xanchor": "left", "x": 0.0},
    )
    fig.update_xaxes(title_text=TIME_AXIS_TITLE, anchor="y2")  # ticks and title under the volume
    add_range_selector(fig, slider=False)
    return label_synthetic(fig, synthetic, yshift=22)


def _shade_regimes(fig: go.Figure, ts: pd.DatetimeIndex, labels: np.ndarray, names, drawn: pd.DataFrame) -> None:
    """One filled trace per regime over the price panel: its runs as rectangles from the lowest low to the highest
    high."""
    low, high = float(np.nanmin(drawn["low"])), float(np.nanmax(drawn["high"]))
    ends = list(ts[1:]) + [ts[-1]]
    by_regime: dict[int, tuple[list, list]] = {}
    for regime, first, last in regime_runs(labels):
        x, y = by_regime.setdefault(regime, ([], []))
        x += [ts[first], ends[last], ends[last], ts[first], ts[first], None]
        y += [low, low, high, high, low, None]
    traces = []
    for regime in sorted(by_regime):
        x, y = by_regime[regime]
        red, green, blue = (int(regime_colour(regime)[i: i + 2], 16) for i in (1, 3, 5))
        traces.append(go.Scatter(x=x, y=y, mode="lines", line={"width": 0}, fill="toself", hoveron="fills",
                                 fillcolor=f"rgba({red}, {green}, {blue}, {REGIME_OPACITY})",
                                 name=regime_name(regime, names), hoverinfo="name", yaxis="y"))
    fig.add_traces(traces)
