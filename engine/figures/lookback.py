"""Lookback view charts: an asset's effective look-back under its price, shaded by regime; the look-back's
distribution per regime; and the SSM's hidden attention of one chosen bar over the bars before it.

Effective look-back is the half-life ln 2 / (Delta_t |A|) in bars, the median over channels at each bar
(engine.model.inference.InferenceResult.lookback_median, NaN while the asset's market is closed: no step is taken).
"""
from __future__ import annotations

from typing import Sequence

import numpy as np
import pandas as pd
import plotly.graph_objects as go
from plotly.subplots import make_subplots

from engine.figures.regimes import add_regime_bands
from engine.figures.spans import shade_test_spans
from engine.figures.style import (
    MAX_DISPLAY_POINTS,
    TIME_AXIS_TITLE,
    add_range_selector,
    asset_colour,
    base_layout,
    display_rows,
    label_synthetic,
    plain_times,
)

REGIME_SHADE_OPACITY = 0.18


BAND_QUANTILES = (0.10, 0.90)  # the raw look-back's rolling band behind the smoothed trace
SMOOTHING_WINDOWS = 400  # the smoothing window is about 1/400 of the bars shown (at least 5 bars)


def smoothing_window(n_bars: int) -> int:
    """Bars in the rolling window: odd, at least 5, about n_bars / SMOOTHING_WINDOWS."""
    window = max(5, n_bars // SMOOTHING_WINDOWS)
    return window + 1 - window % 2


def smoothed_lookback(lookback: np.ndarray, window: int,
                      quantiles: tuple[float, float] = BAND_QUANTILES) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(rolling median, rolling low quantile, rolling high quantile) of a look-back series over `window` bars,
    centred; NaN bars (closed market) are skipped and a window needs a third of its bars. (T,) -> 3 x (T,)"""
    series = pd.Series(np.asarray(lookback, dtype=np.float64))
    rolling = series.rolling(window, center=True, min_periods=max(1, window // 3))
    return (rolling.median().to_numpy(), rolling.quantile(quantiles[0]).to_numpy(),
            rolling.quantile(quantiles[1]).to_numpy())


def lookback_chart(
    ts: pd.DatetimeIndex,
    closes: np.ndarray,
    lookback: np.ndarray,
    symbol: str,
    *,
    open_bars: np.ndarray | None = None,
    labels: np.ndarray | None = None,
    regime_names: Sequence[str] | None = None,
    rows: range | None = None,
    marked_time=None,
    out_of_sample: Sequence[tuple] = (),
    synthetic: bool,
    window: int | None = None,
    max_points: int = MAX_DISPLAY_POINTS,
    regime_palette: str = "found",
    half_mass: pd.Series | None = None,
    half_mass_label: str = "half-mass lag (hidden attention)",
) -> go.Figure:
    """Price (T,) on top, effective look-back (T,) in bars under it on the same time axis, the look-back row
    shaded by regime labels (T,) when given (regime_palette "planted" for the demo's truth, "found" for the
    model's); marked_time draws the bar picked for the hidden attention.

    The look-back is drawn smoothed (a centred rolling median over `window` open bars, chosen from the span when
    None) in front of the raw look-back's rolling 10-90 % band over the same window: a per-bar line of 26k hourly
    bars is a solid block of ink. With open_bars (T,), everything is computed on the asset's open bars only (a closed
    bar repeats the last price and has no look-back). Beyond max_points bars the price keeps each stretch's extremes
    and the smooth curves every k-th bar; the title says how many bars are drawn. Zoom buttons
    sit over the price (drag over the plot to zoom further). half_mass: the memory the output actually uses at some
    bars (engine.diagnostics.hidden_attention.half_mass_lags, in own bars, indexed by ts), drawn as markers beside
    the look-back and named by half_mass_label."""
    for name, array in (("closes", closes), ("lookback", lookback), ("labels", labels), ("open_bars", open_bars)):
        if array is not None and len(array) != len(ts):
            raise ValueError(f"{name} has {len(array)} rows but the clock has {len(ts)}: pass one asset's row")
    span = slice(None) if rows is None else slice(rows.start, rows.stop)
    ts, closes, lookback = pd.DatetimeIndex(ts[span]), np.asarray(closes)[span], np.asarray(lookback, float)[span]
    drawn = np.ones(len(ts), dtype=bool) if open_bars is None else np.asarray(open_bars, dtype=bool)[span]
    open_ts, open_closes, open_lookback = ts[drawn], closes[drawn], lookback[drawn]
    window = smoothing_window(int(np.isfinite(open_lookback).sum())) if window is None else int(window)
    median, low, high = smoothed_lookback(open_lookback, window)
    price_rows = display_rows([open_closes], max_points)
    step = max(1, int(np.ceil(len(open_ts) / max_points)))
    curve_rows = np.unique(np.r_[np.arange(0, len(open_ts), step), max(len(open_ts) - 1, 0)])[: len(open_ts)]

    fig = make_subplots(rows=2, cols=1, shared_xaxes=True, vertical_spacing=0.06, row_heights=[0.5, 0.5])
    colour = asset_colour(symbol)
    fig.add_trace(go.Scatter(x=plain_times(open_ts[price_rows]), y=open_closes[price_rows], mode="lines",
                             name=f"{symbol} close",
                             line={"color": colour, "width": 1.2},
                             hovertemplate="%{x|%Y-%m-%d %H:%M} UTC<br>price %{y:,.2f}<extra></extra>"), row=1, col=1)
    finite = high[np.isfinite(high)]  # shade up to the band's top: a raw spike would squash the curves
    if labels is not None and finite.size:
        add_regime_bands(fig, ts, np.asarray(labels)[span], regime_names, row=2, height=float(finite.max()) * 1.05,
                         opacity=REGIME_SHADE_OPACITY, palette=regime_palette)
    x = plain_times(open_ts[curve_rows])
    band = f"raw look-back, rolling {BAND_QUANTILES[0]:.0%}-{BAND_QUANTILES[1]:.0%}"
    fig.add_trace(go.Scatter(x=x, y=high[curve_rows], mode="lines", line={"width": 0}, showlegend=False,
                             hoverinfo="skip", connectgaps=True, name=band), row=2, col=1)
    fig.add_trace(go.Scatter(x=x, y=low[curve_rows], mode="lines", line={"width": 0}, fill="tonexty",
                             fillcolor="rgba(34, 34, 34, 0.18)", connectgaps=True, name=band,
                             hoverinfo="skip"), row=2, col=1)
    fig.add_trace(go.Scatter(x=x, y=median[curve_rows], mode="lines", connectgaps=True,
                             name=f"look-back, rolling median of {window} bars", line={"color": "#222222", "width": 1.4},
                             hovertemplate="%{x|%Y-%m-%d %H:%M} UTC<br>look-back %{y:.1f} bars (rolling median)"
                                           "<extra></extra>"), row=2, col=1)
    if half_mass is not None and len(half_mass):
        fig.add_trace(go.Scatter(x=plain_times(pd.DatetimeIndex(half_mass.index)), y=half_mass.to_numpy(dtype=float),
                                 mode="markers", name=half_mass_label,
                                 marker={"color": "#b45309", "size": 6, "symbol": "diamond"},
                                 hovertemplate="%{x|%Y-%m-%d %H:%M} UTC<br>half of the weight within %{y:.0f} "
                                               "own bars<extra></extra>"), row=2, col=1)
    if marked_time is not None:
        fig.add_vline(x=pd.Timestamp(marked_time), line_width=1, line_dash="dash", line_color="#444444")
    drawn_note = (f"all {len(open_ts):,} open bars drawn" if step == 1 and len(price_rows) == len(open_ts)
                  else f"{len(curve_rows):,} of {len(open_ts):,} open bars drawn")
    title = (f"{symbol}: price and effective look-back<br><sup>median half-life over channels, smoothed: a centred "
             f"rolling median of {window} open bars; band: its rolling {BAND_QUANTILES[0]:.0%}-"
             f"{BAND_QUANTILES[1]:.0%}</sup><br><sup>{drawn_note}</sup>")
    base_layout(fig, title, 640)
    # The legend under the time axis title; over the plot sit the title's lines, the zoom buttons and the demo
    # stamp. Zoom: the buttons, or drag over the plot (a range slider under two stacked rows crowded the legend).
    fig.update_layout(margin={"l": 50, "r": 20, "t": 120, "b": 120},
                      legend={"orientation": "h", "yanchor": "top", "y": -0.16, "xanchor": "left", "x": 0.0})
    fig.update_yaxes(title_text="price", row=1, col=1)
    fig.update_yaxes(title_text="look-back (bars)", rangemode="tozero", row=2, col=1)
    fig.update_xaxes(title_text=TIME_AXIS_TITLE, row=2, col=1)
    add_range_selector(fig, slider=False, row=1)
    shade_test_spans(fig, out_of_sample, ts, on_subplots=True)
    return label_synthetic(fig, synthetic)


def lookback_by_regime_chart(table: pd.DataFrame, symbols: Sequence[str], *, labels_from: str,
                             synthetic: bool) -> go.Figure:
    """Boxes of the look-back per (asset, regime) from engine.diagnostics.lookback_by_regime's table (symbol,
    regime, regime_name, n_bars, p25, median, p75): the box is the middle half of the bars, the line the median."""
    missing = {"symbol", "regime", "regime_name", "n_bars", "p25", "median", "p75"} - set(table.columns)
    if missing:
        raise ValueError(f"lookback_by_regime_chart: the table lacks columns {sorted(missing)}")
    fig = go.Figure()
    for symbol in symbols:
        rows = table[(table["symbol"] == symbol) & (table["n_bars"] > 0)]
        if rows.empty:
            continue
        fig.add_trace(go.Box(
            x=rows["regime_name"], q1=rows["p25"], median=rows["median"], q3=rows["p75"],
            lowerfence=rows["p25"], upperfence=rows["p75"], name=symbol,
            marker_color=asset_colour(symbol, symbols), customdata=rows["n_bars"],
            hovertemplate=f"{symbol} · %{{x}}<br>median %{{median:.1f}} bars<extra></extra>",
        ))
    base_layout(fig, f"Effective look-back per regime ({labels_from}); box = 25-75 % of bars, line = median", 400)
    fig.update_layout(boxmode="group")
    fig.update_xaxes(title_text="regime", type="category")
    fig.update_yaxes(title_text="look-back (bars)", rangemode="tozero")
    return label_synthetic(fig, synthetic)


def lookback_intervals_chart(intervals: pd.DataFrame, symbols: Sequence[str], *, labels_from: str,
                             level: float = 0.95, synthetic: bool) -> go.Figure:
    """The median look-back per (asset, regime) with its block-bootstrap interval, from
    engine.diagnostics.lookback_test.LookbackTest.intervals (symbol, regime_name, n_bars, median, low, high): how
    sure the median is, where the boxes of lookback_by_regime_chart only show the spread over bars."""
    missing = {"symbol", "regime_name", "n_bars", "median", "low", "high"} - set(intervals.columns)
    if missing:
        raise ValueError(f"lookback_intervals_chart: the table lacks columns {sorted(missing)}")
    fig = go.Figure()
    for symbol in symbols:
        rows = intervals[(intervals["symbol"] == symbol) & (intervals["n_bars"] > 0)]
        if rows.empty:
            continue
        median = rows["median"].to_numpy(dtype=float)
        fig.add_trace(go.Scatter(
            x=rows["regime_name"], y=median, mode="markers", name=symbol, marker=dict(size=10,
                                                                                     color=asset_colour(symbol, symbols)),
            error_y=dict(type="data", symmetric=False, array=rows["high"].to_numpy(dtype=float) - median,
                         arrayminus=median - rows["low"].to_numpy(dtype=float)),
            customdata=rows["n_bars"], hovertemplate=f"{symbol} · %{{x}}<br>median %{{y:.1f}} bars<br>"
                                                     "%{customdata:,} bars<extra></extra>",
        ))
    base_layout(fig, f"Median look-back per regime ({labels_from}) with {level:.0%} intervals", 380)
    fig.update_layout(scattermode="group")
    fig.update_xaxes(title_text="regime", type="category")
    fig.update_yaxes(title_text="median look-back (bars)")
    return label_synthetic(fig, synthetic)


def hidden_attention_chart(frame: pd.DataFrame, symbol: str, *, synthetic: bool) -> go.Figure:
    """engine.diagnostics.hidden_attention's frame (index ts of the past bars, columns lag, weight) as bars over the
    lag: how much of the SSM output at the picked bar (lag 0) comes from each earlier bar."""
    if not {"lag", "weight"} <= set(frame.columns) or frame.empty:
        raise ValueError("hidden_attention_chart needs a non-empty frame with columns lag and weight")
    at = pd.DatetimeIndex(frame.index)[frame["lag"].to_numpy().argmin()]
    dates = pd.DatetimeIndex(frame.index).strftime("%Y-%m-%d %H:%M")
    fig = go.Figure(go.Bar(
        x=frame["lag"], y=frame["weight"], customdata=dates, marker_color=asset_colour(symbol), name=symbol,
        hovertemplate="lag %{x} bars (%{customdata} UTC)<br>weight %{y:.3g}<extra></extra>",
    ))
    base_layout(fig, f"{symbol}: which past bars the SSM state draws on at {at:%Y-%m-%d %H:%M} UTC", 360)
    fig.update_xaxes(title_text="lag (bars before the picked bar; hover for the date, UTC)")
    fig.update_yaxes(title_text="hidden attention (mean |weight| over channels)", rangemode="tozero")
    return label_synthetic(fig, synthetic)
