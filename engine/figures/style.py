"""One colour per asset across every page and export, and the labels every time axis carries."""
from __future__ import annotations

import numpy as np
import pandas as pd
import plotly.graph_objects as go
import plotly.io as pio

# Fixed colours for the default universe; further symbols take the next free colour in a stable order.
ASSET_COLOURS = {"BTC": "#F7931A", "SPY": "#1F77B4", "AAPL": "#7F7F7F"}
_EXTRA_COLOURS = ["#2CA02C", "#D62728", "#9467BD", "#8C564B", "#E377C2", "#17BECF", "#BCBD22"]

TIME_AXIS_TITLE = "time (UTC)"

# Margins wide enough for what Plotly's automargin would add (y tick labels and title on the left, the time axis's
# ticks and title at the bottom, a colorbar on the right): when a pushed margin exceeds the layout's, Plotly draws
# the whole chart a second time (doAutoMargin). Measured in chromium at 1440 and 1280 px wide: every Backtest and
# Forecasts chart expanded from 50/20/_/40 (left up to 69, bottom 53, a colorbar's right 103), and a chart drawn
# in one pass took ~45% less time (280 -> 155 ms for the Backtest page's six). automargin stays on: a wider label
# than these still gets its room, at the old cost. tests/browser/test_one_pass_charts.py checks the pages.
ONE_PASS_LEFT = 76
ONE_PASS_RIGHT = 30
ONE_PASS_BOTTOM = 58  # a time axis: tick labels and its title
COLORBAR_RIGHT = 112
SYNTHETIC_NOTE = "synthetic demo data"


def asset_colour(symbol: str, universe: tuple[str, ...] | list[str] = ()) -> str:
    base = symbol.split("/")[0].split("-")[0].upper()
    if base in ASSET_COLOURS:
        return ASSET_COLOURS[base]
    others = sorted(s for s in universe if s.split("/")[0].split("-")[0].upper() not in ASSET_COLOURS)
    index = others.index(symbol) if symbol in others else sum(map(ord, symbol))
    return _EXTRA_COLOURS[index % len(_EXTRA_COLOURS)]


def label_synthetic(fig: go.Figure, synthetic: bool, yshift: int = 0) -> go.Figure:
    """Stamp the demo label onto a chart so an exported image cannot be mistaken for market data.

    It sits over the plot's top right corner; yshift (pixels) lifts it over whatever a chart puts there itself
    (the subplot titles of the lead-lag maps)."""
    if synthetic:
        fig.add_annotation(
            text=SYNTHETIC_NOTE.upper(), xref="paper", yref="paper", x=1.0, y=1.0,
            xanchor="right", yanchor="bottom", showarrow=False, yshift=yshift,
            font=dict(size=11, color="#B00020"),
        )
    return fig


def base_layout(fig: go.Figure, title: str, height: int = 420) -> go.Figure:
    fig.update_layout(
        title=dict(text=title, x=0.0, xanchor="left"),
        height=height,
        margin=dict(l=50, r=20, t=60, b=40),
        legend=dict(orientation="h", yanchor="bottom", y=1.0, xanchor="left", x=0.0),
    )
    return white_template(fig)


def white_template(fig: go.Figure) -> go.Figure:
    """fig with Plotly's registered "plotly_white" template, set as Plotly sets its default template: without
    validating it again (a registered template is valid). The same figure as update_layout(template="plotly_white")
    (a copy of the template, the same JSON), in ~1 ms where the validated copy took 8-20 ms per chart, on every
    chart of every page and slider move."""
    layout = fig.layout
    layout._validate = False
    try:
        layout.template = pio.templates["plotly_white"]
    finally:
        layout._validate = fig._validate
    return fig

# Backtest charts: the strategy against its buy-and-hold benchmark, and the shading of the out-of-sample span.
STRATEGY_COLOUR = "#2CA02C"
LOSS_COLOUR = "#D62728"  # losses and drawdowns, on every chart and table
LOSS_FILL = "rgba(214, 39, 40, 0.25)"
BENCHMARK_COLOUR = "#7F7F7F"
OUT_OF_SAMPLE_FILL = "rgba(31, 119, 180, 0.08)"

# Charts draw at most about this many points per series: a screen is ~1,500 px wide, and a Plotly trace of 13,000
# hourly bars costs ~0.25 s to build and 1.3 MB to ship on every slider move.
MAX_DISPLAY_POINTS = 2_000


def display_rows(series: list, max_points: int = MAX_DISPLAY_POINTS) -> np.ndarray:
    """Row indices to draw so that every series keeps its shape: per bucket of rows, each series' minimum and
    maximum (a drawdown's trough or an equity peak never disappears), plus the first and last row."""
    n = len(series[0]) if series else 0
    if n <= max_points:
        return np.arange(n)
    buckets = max(max_points // (2 * max(len(series), 1)), 1)
    edges = np.linspace(0, n, buckets + 1).astype(int)
    lo, hi = edges[:-1], edges[1:]
    lo, hi = lo[hi > lo], hi[hi > lo]
    # every bucket as a row of one (buckets, widest) table, padded past its end: one argmin/argmax per row in numpy
    offsets = np.arange(int((hi - lo).max()))
    inside = lo[:, None] + offsets[None, :] < hi[:, None]
    where = np.minimum(lo[:, None] + offsets[None, :], n - 1)
    keep = [np.array([0, n - 1])]
    for values in series:
        values = np.asarray(values, dtype=np.float64)[where]
        usable = inside & np.isfinite(values)
        some = usable.any(axis=1)
        lowest = np.where(usable, values, np.inf).argmin(axis=1)  # the first minimum, as np.nanargmin
        highest = np.where(usable, values, -np.inf).argmax(axis=1)
        keep += [np.where(some, lo + lowest, lo), (lo + highest)[some]]
    return np.unique(np.concatenate(keep))


def red_losses(frame, columns=None, percent=(), number=(), scientific=(), missing: str = "n/a", rows=None,
               formats: dict | None = None):
    """A pandas Styler of `frame`: negative values (numbers, or formatted text starting with '-') in red, the
    `percent` columns as +1.23%, `number` as 1.234, `scientific` as 1.23e-04, missing values as `missing`.
    rows: the index labels where a negative value is a loss (default: every row). formats: more column -> format
    string (one Styler.format call: a second one would reset the first's).

    Only pandas: the pages hand it to st.dataframe, the report renders the frame itself."""
    columns = list(frame.columns) if columns is None else list(columns)

    def colour(value) -> str:
        negative = (isinstance(value, str) and value.strip().startswith(("-", "−"))
                    or isinstance(value, (int, float, np.number)) and not isinstance(value, bool) and value < 0)
        return f"color: {LOSS_COLOUR}" if negative else ""

    shown = [c for c in columns if c in frame.columns]
    styler = frame.style.map(colour, subset=shown if rows is None else (list(rows), shown))
    formats = ({c: "{:+.2%}" for c in percent} | {c: "{:.3f}" for c in number} | {c: "{:.2e}" for c in scientific}
               | (formats or {}))
    formats = {c: f for c, f in formats.items() if c in frame.columns}
    return styler.format(formats, na_rep=missing)


def add_range_selector(fig: go.Figure, slider: bool = True, row: int | None = None) -> go.Figure:
    """Zoom buttons (1 month, 3 months, 1 year, all) over a time axis, and a range slider under the chart.

    row: on a figure of stacked subplots sharing the time axis, the buttons go over that row's axis (the top one)
    and the slider under the bottom axis; None: every x axis of a single chart."""
    buttons = {"buttons": [
        {"count": 1, "label": "1m", "step": "month", "stepmode": "backward"},
        {"count": 3, "label": "3m", "step": "month", "stepmode": "backward"},
        {"count": 1, "label": "1y", "step": "year", "stepmode": "backward"},
        {"step": "all", "label": "all"},
    ], "x": 0.0, "xanchor": "left", "y": 1.0, "yanchor": "bottom", "font": {"size": 10}}
    if row is None:
        fig.update_xaxes(rangeselector=buttons, rangeslider={"visible": slider, "thickness": 0.06})
        return fig
    fig.update_xaxes(rangeselector=buttons, row=row, col=1)
    if slider:
        n_rows = len(fig._grid_ref) if getattr(fig, "_grid_ref", None) else 1
        fig.update_xaxes(rangeslider={"visible": True, "thickness": 0.05}, row=n_rows, col=1)
    return fig


def plain_times(times) -> np.ndarray:
    """UTC times as naive datetime64 for a plotly trace (the axis says UTC): tz-aware ones become object arrays of
    Timestamps, which plotly deep-copies one by one (a second for 26k bars)."""
    index = pd.DatetimeIndex(times)
    return (index.tz_convert("UTC").tz_localize(None) if index.tz is not None else index).to_numpy()
