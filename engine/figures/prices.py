"""Price charts of cached bars."""
from __future__ import annotations

import pandas as pd
import plotly.graph_objects as go

from engine.figures.style import TIME_AXIS_TITLE, asset_colour, base_layout, display_rows, label_synthetic

# Beyond this many bars a candlestick is unreadable and slow to draw: show the close as a line instead.
MAX_CANDLES = 2_000


def price_chart(bars: pd.DataFrame, symbol: str, interval: str, *, synthetic: bool, source: str) -> go.Figure:
    """Candlesticks (or a close line for long spans) of one symbol's bars; ts is UTC and the axis says so."""
    fig = go.Figure()
    if len(bars) <= MAX_CANDLES:
        fig.add_trace(go.Candlestick(
            x=bars["ts"], open=bars["open"], high=bars["high"], low=bars["low"], close=bars["close"],
            name=symbol,
        ))
        fig.update_layout(xaxis_rangeslider_visible=False)
    else:
        rows = display_rows([bars["high"].to_numpy(), bars["low"].to_numpy()])  # every bucket's high and low kept
        fig.add_trace(go.Scattergl(
            x=bars["ts"].iloc[rows], y=bars["close"].iloc[rows], mode="lines", name=f"{symbol} close",
            line=dict(color=asset_colour(symbol), width=1.2),
        ))
    base_layout(fig, f"{symbol} · {interval} · source: {source}")
    fig.update_xaxes(title_text=TIME_AXIS_TITLE)
    fig.update_yaxes(title_text="price")
    return label_synthetic(fig, synthetic)
