"""One colour per asset across every page and export, and the labels every time axis carries."""
from __future__ import annotations

import plotly.graph_objects as go

# Fixed colours for the default universe; further symbols take the next free colour in a stable order.
ASSET_COLOURS = {"BTC": "#F7931A", "SPY": "#1F77B4", "AAPL": "#7F7F7F"}
_EXTRA_COLOURS = ["#2CA02C", "#D62728", "#9467BD", "#8C564B", "#E377C2", "#17BECF", "#BCBD22"]

TIME_AXIS_TITLE = "time (UTC)"
SYNTHETIC_NOTE = "synthetic demo data"


def asset_colour(symbol: str, universe: tuple[str, ...] | list[str] = ()) -> str:
    base = symbol.split("/")[0].split("-")[0].upper()
    if base in ASSET_COLOURS:
        return ASSET_COLOURS[base]
    others = sorted(s for s in universe if s.split("/")[0].split("-")[0].upper() not in ASSET_COLOURS)
    index = others.index(symbol) if symbol in others else sum(map(ord, symbol))
    return _EXTRA_COLOURS[index % len(_EXTRA_COLOURS)]


def label_synthetic(fig: go.Figure, synthetic: bool) -> go.Figure:
    """Stamp the demo label onto a chart so an exported image cannot be mistaken for market data."""
    if synthetic:
        fig.add_annotation(
            text=SYNTHETIC_NOTE.upper(), xref="paper", yref="paper", x=1.0, y=1.0,
            xanchor="right", yanchor="bottom", showarrow=False,
            font=dict(size=11, color="#B00020"),
        )
    return fig


def base_layout(fig: go.Figure, title: str, height: int = 420) -> go.Figure:
    fig.update_layout(
        title=dict(text=title, x=0.0, xanchor="left"),
        height=height,
        margin=dict(l=50, r=20, t=60, b=40),
        legend=dict(orientation="h", yanchor="bottom", y=1.0, xanchor="left", x=0.0),
        template="plotly_white",
    )
    return fig

# Backtest charts: the strategy against its buy-and-hold benchmark, and the shading of the out-of-sample span.
STRATEGY_COLOUR = "#2CA02C"
BENCHMARK_COLOUR = "#7F7F7F"
OUT_OF_SAMPLE_FILL = "rgba(31, 119, 180, 0.08)"
