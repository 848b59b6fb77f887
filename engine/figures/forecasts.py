"""Forecast charts: the out-of-sample fan against what happened, the latest multi-horizon fan, and calibration."""
from __future__ import annotations

import numpy as np
import pandas as pd
import plotly.graph_objects as go

from engine.evaluation.forecast_review import LatestForecast, PastForecasts
from engine.figures.backtest import shade_out_of_sample
from engine.figures.style import (
    ONE_PASS_BOTTOM,
    ONE_PASS_LEFT,
    ONE_PASS_RIGHT,
    TIME_AXIS_TITLE,
    add_range_selector,
    asset_colour,
    base_layout,
    display_rows,
    label_synthetic,
    plain_times,
)


def _rgba(hex_colour: str, alpha: float) -> str:
    r, g, b = (int(hex_colour[i:i + 2], 16) for i in (1, 3, 5))
    return f"rgba({r}, {g}, {b}, {alpha})"


# Forecasts drawn per chart; beyond this each bucket keeps its band extremes and outcomes (and the title says so).
# 1,500 rows make 250 buckets (the band's two edges, lowest and highest, and the outcome's) across a plot ~900 px
# wide at 1440 px: a bucket is about one 3 px marker wide, so no visible extreme is lost. All 8,999 hourly BTC
# forecasts made a 1.5 MB chart and a Forecasts page that took 7-8 s to draw; 3,000 rows, every one a marker, a
# 370 KB chart of ~130 ms to draw (chromium, this box).
MAX_FAN_POINTS = 1_500
MIN_CALIBRATION_COUNT = 30  # a calibration bin with fewer forecasts than this is not drawn


def past_fan_chart(past: PastForecasts, *, synthetic: bool, max_points: int = MAX_FAN_POINTS) -> go.Figure:
    """The h-bar log-return band (outer quantiles), the median, and the realised return at every origin bar, over
    the whole out-of-sample history, with zoom buttons (1 month, 3 months, 1 year, all; drag to zoom further).

    Every point is a walk-forward forecast, so the whole chart is out of sample. Beyond max_points forecasts the
    chart draws, per bucket of neighbouring bars, the band (and its median) at the rows holding the band's lowest
    lower and highest upper edge, and the outcomes at the rows holding their lowest and highest value: two thirds
    of max_points for the band, one third for the outcomes, on the same buckets. The title says how many were drawn.
    Each outcome is an SVG marker styled one by one (~45 µs each in chromium here), so the interior outcomes that
    the band-extreme rows used to add as markers are left out.
    """
    levels = past.quantile_levels
    lo, mid, hi = f"q{levels[0]:g}", f"q{levels[len(levels) // 2]:g}", f"q{levels[-1]:g}"
    n = len(past.frame)
    if n <= max_points:
        band_rows = outcome_rows = np.arange(n)
    else:  # both on max_points // 6 buckets: four band rows and two outcome rows a bucket at most
        buckets = max(max_points // 6, 1)
        band_rows = display_rows([past.frame[lo].to_numpy(), past.frame[hi].to_numpy()], 4 * buckets)
        outcome_rows = display_rows([past.frame["realised"].to_numpy()], 2 * buckets)
    band, outcomes = past.frame.iloc[band_rows], past.frame.iloc[outcome_rows]
    drawn = len(np.union1d(band_rows, outcome_rows))
    colour = asset_colour(past.symbol)
    fig = go.Figure()
    times = plain_times(band.index)

    def values(column: str, frame: pd.DataFrame = band) -> np.ndarray:  # float32: 7 digits are more than a chart shows
        return frame[column].to_numpy(np.float32)

    fig.add_trace(go.Scatter(x=times, y=values(hi), mode="lines", line={"width": 0}, showlegend=False,
                             hoverinfo="skip", name=f"{hi}"))
    fig.add_trace(go.Scatter(
        x=times, y=values(lo), mode="lines", line={"width": 0}, fill="tonexty",
        fillcolor=_rgba(colour, 0.22), name=f"{levels[0]:.0%}-{levels[-1]:.0%} band",
    ))
    fig.add_trace(go.Scatter(x=times, y=values(mid), mode="lines", line={"color": colour, "width": 1.2},
                             name=f"median ({levels[len(levels) // 2]:.0%})"))
    # SVG markers, and no range slider (the zoom buttons and a drag do its job): a WebGL trace cost ~350 ms a chart
    # to set up in chromium without a GPU, and the range slider's copy of every trace doubled the SVG.
    fig.add_trace(go.Scatter(x=plain_times(outcomes.index), y=values("realised", outcomes), mode="markers",
                             marker={"size": 3, "color": "#222222"}, name="what happened"))
    title = f"{past.symbol} · {past.horizon}-bar log return: walk-forward forecasts vs outcome"
    if drawn < n:
        title += f"<br><sup>{drawn:,} of {n:,} forecasts drawn (each stretch's extremes kept)</sup>"
    else:
        title += f"<br><sup>all {len(past.frame):,} out-of-sample forecasts</sup>"
    base_layout(fig, title, height=480)
    fig.update_layout(margin={"l": ONE_PASS_LEFT, "r": 20, "t": 110, "b": ONE_PASS_BOTTOM},
                      legend={"orientation": "h", "yanchor": "bottom", "y": 1.08, "xanchor": "right", "x": 1.0})
    fig.update_xaxes(title_text=TIME_AXIS_TITLE)
    fig.update_yaxes(title_text=f"{past.horizon}-bar log return")
    add_range_selector(fig, slider=False)
    if n:
        shade_out_of_sample(fig, pd.DatetimeIndex(band.index), band.index[0])
    return label_synthetic(fig, synthetic)


def latest_fan_chart(latest: LatestForecast, recent: pd.Series, bar: pd.Timedelta, *, synthetic: bool) -> go.Figure:
    """Recent closes, then the price quantiles at each horizon ahead of the last bar (a fan over the horizons)."""
    colour = asset_colour(latest.symbol)
    levels = [c[len("price_q"):] for c in latest.table.columns if c.startswith("price_q")]
    horizons = latest.table.index.to_numpy()
    ahead = [latest.made_at + int(h) * bar for h in horizons]
    x = [latest.made_at, *ahead]
    fig = go.Figure()
    fig.add_trace(go.Scatter(x=recent.index, y=recent.to_numpy(), mode="lines", line=dict(color=colour, width=1.4),
                             name=f"{latest.symbol} close"))
    lo, hi, mid = levels[0], levels[-1], levels[len(levels) // 2]
    fig.add_trace(go.Scatter(x=x, y=[latest.last_close, *latest.table[f"price_q{hi}"]], mode="lines",
                             line=dict(width=0), showlegend=False, hoverinfo="skip"))
    fig.add_trace(go.Scatter(x=x, y=[latest.last_close, *latest.table[f"price_q{lo}"]], mode="lines",
                             line=dict(width=0), fill="tonexty", fillcolor=_rgba(colour, 0.22),
                             name=f"{float(lo):.0%}-{float(hi):.0%} of price"))
    fig.add_trace(go.Scatter(x=x, y=[latest.last_close, *latest.table[f"price_q{mid}"]], mode="lines+markers",
                             line=dict(color=colour, dash="dot"), name="median path",
                             text=[""] + [f"{h} bars: P(up) {p:.0%}" for h, p in zip(horizons, latest.table["prob_up"])],
                             hovertemplate="%{x}<br>%{y:.2f}<br>%{text}<extra></extra>"))
    # Two short lines: a card on the Overview is a third of the page wide.
    base_layout(fig, f"{latest.symbol} forecast<br><sup>from {latest.made_at:%Y-%m-%d %H:%M} UTC</sup>", height=420)
    # Under the plot, so the chart still reads in a narrow Overview card.
    # The time axis's ticks wrap to two lines in a narrow card: the legend sits well below its title.
    fig.update_layout(legend={"orientation": "h", "yanchor": "top", "y": -0.34, "xanchor": "left", "x": 0.0},
                      margin={"l": ONE_PASS_LEFT, "r": ONE_PASS_RIGHT, "t": 70, "b": 156}, height=420)
    fig.update_xaxes(title_text=TIME_AXIS_TITLE)
    fig.update_yaxes(title_text="price")
    return label_synthetic(fig, synthetic)


def calibration_chart(tables: dict[str, pd.DataFrame], horizon: int, *, synthetic: bool,
                      min_count: int = MIN_CALIBRATION_COUNT) -> go.Figure:
    """Reliability diagram: forecast P(up) per bin against how often the return was up; the diagonal is perfect.

    Bins holding fewer than min_count forecasts are left out (their frequency is mostly noise); the title says so."""
    fig = go.Figure()
    fig.add_trace(go.Scatter(x=[0, 1], y=[0, 1], mode="lines", line=dict(color="#999999", dash="dash"),
                             name="perfectly calibrated"))
    for symbol, table in tables.items():
        used = table[table["count"] >= max(min_count, 1)]
        fig.add_trace(go.Scatter(
            x=used["mean_prob"], y=used["frequency"], mode="lines+markers", name=symbol,
            line=dict(color=asset_colour(symbol)), marker=dict(size=np.clip(np.sqrt(used["count"]) * 1.5, 5, 18)),
            customdata=used["count"], hovertemplate="P(up) %{x:.2f}<br>up %{y:.2f}<br>%{customdata} bars<extra></extra>",
        ))
    title = (f"Calibration of P(up), {horizon}-bar horizon (out of sample)<br><sup>bins with fewer than {min_count} "
             "forecasts are not drawn</sup>")
    base_layout(fig, title, height=400)
    fig.update_layout(margin={"l": ONE_PASS_LEFT, "r": 20, "t": 80, "b": ONE_PASS_BOTTOM})
    fig.update_xaxes(title_text="forecast P(up)", range=[0, 1])
    fig.update_yaxes(title_text="observed frequency of up", range=[0, 1])
    return label_synthetic(fig, synthetic)
