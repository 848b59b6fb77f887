"""Lead-lag view charts: for each target asset a source x lag heatmap of the cross-asset attention, and how a
target's attention on each source moves over time.

A lead-lag map is weights (A_tgt, A_src, K+1): the mean attention of target i on source j's bar `lag` bars back,
over the target's open bars (engine.diagnostics.lead_lag). Each target's row sums to 1 over sources and lags, so a
weight means nothing alone: given the uninformed model's map (engine.diagnostics.attention_null.null_lead_lag_map),
the heatmaps draw the excess over it (above 0: the model looks there more than a model that knows nothing would),
on a scale centred at 0. The leads a model-free test found (engine.diagnostics.findings) are outlined. On the
demo the planted lead (truth.leader moves truth.followers truth.lag_bars bars later) is boxed on the heatmap, so
the reader can see whether the weight sits where it was planted. The map is read at the forecast origin, for the
next bar's return, so a lead of L bars shows at key lag L-1 (engine.diagnostics.lead_lag.key_lag_of_lead). Lags
are rows of the panel's clock; given the clock's step, they are labelled with their duration ("lag 2 (2h)").
"""
from __future__ import annotations

from typing import Sequence

import numpy as np
import pandas as pd
import plotly.graph_objects as go
from plotly.subplots import make_subplots

from engine.diagnostics.lead_lag import key_lag_of_lead, lag_label
from engine.figures.spans import shade_test_spans
from engine.figures.style import (
    TIME_AXIS_TITLE,
    asset_colour,
    base_layout,
    label_synthetic,
)

PLANTED_MARK_COLOUR = "#D62728"
PLANTED_MARK_NAME = "planted lead"  # the name every planted box carries (tests and the legend look for it)
FOUND_MARK_COLOUR = "#111111"
FOUND_MARK_NAME = "lead found (model-free)"


def _check_map(weights: np.ndarray, symbols: Sequence[str]) -> np.ndarray:
    weights = np.asarray(weights, dtype=float)
    if weights.ndim != 3 or weights.shape[:2] != (len(symbols), len(symbols)):
        raise ValueError(f"weights must be (targets, sources, lags) = ({len(symbols)}, {len(symbols)}, K+1) for "
                         f"{list(symbols)}, got {weights.shape}")
    return weights


def planted_cells(truth, symbols: Sequence[str], max_lag: int) -> list[tuple[str, str, int]]:
    """(target, source, key lag) of every planted lead that the map can show: both assets present, lag within 0..K."""
    if truth is None or truth.lag_bars is None or truth.leader not in symbols:
        return []
    lag = key_lag_of_lead(truth.lag_bars)
    return [(follower, truth.leader, lag) for follower in truth.followers if follower in symbols and lag <= max_lag]


def lead_lag_heatmaps(
    weights: np.ndarray,
    symbols: Sequence[str],
    *,
    truth=None,
    hide_self: bool = False,
    span_text: str = "",
    step: pd.Timedelta | None = None,
    null: np.ndarray | None = None,
    leads: Sequence[tuple[str, str, int]] = (),
    synthetic: bool,
) -> go.Figure:
    """One heatmap per target (columns of subplots): sources down, lags across, one colour scale for all.

    hide_self blanks each target's attention on itself, which dominates every map, so the cross-asset cells get
    the colour range; truth (the demo's PlantedTruth) boxes the planted (follower, leader, lag) cells; step (the
    panel's Panel.clock_step) labels each lag with its duration. null (same shape): draw weights - null, the excess
    over an uninformed model, on a diverging scale centred at 0. leads: (target, source, lead in bars) the
    model-free test found, outlined at key lag lead - 1."""
    weights = _check_map(weights, symbols)
    n_assets, n_lags = len(symbols), weights.shape[2]
    excess = null is not None
    if excess:
        null = np.asarray(null, dtype=float)
        if null.shape != weights.shape:
            raise ValueError(f"null {null.shape} must have the map's shape {weights.shape}")
    shown = weights - null if excess else weights.copy()
    if hide_self:
        shown[np.arange(n_assets), np.arange(n_assets)] = np.nan
    top = float(np.nanmax(np.abs(shown) if excess else shown)) if np.isfinite(shown).any() else 1.0
    top = top if top > 0 else 1.0
    custom = np.empty((n_assets, n_assets, n_lags, 3), dtype=object)  # lag label, weight, null
    fig = make_subplots(rows=1, cols=n_assets, shared_yaxes=True, horizontal_spacing=0.04,
                        subplot_titles=[f"target {s}" for s in symbols])
    lags = list(range(n_lags))
    labels = [lag_label(lag, step) for lag in lags]
    hover_lags = np.tile(np.array(labels, dtype=object), (n_assets, 1))  # (sources, lags)
    number = "{:+.3f}" if excess else "{:.3f}"
    for target, symbol in enumerate(symbols):
        text = np.where(np.isnan(shown[target]), "", np.vectorize(number.format)(np.nan_to_num(shown[target])))
        if excess:
            custom[target, :, :, 0] = hover_lags
            custom[target, :, :, 1] = np.vectorize("{:.4f}".format)(weights[target])
            custom[target, :, :, 2] = np.vectorize("{:.4f}".format)(null[target])
            hover = (f"target {symbol}<br>source %{{y}}, %{{customdata[0]}}<br>weight %{{customdata[1]}}, uninformed "
                     f"%{{customdata[2]}}<br>excess %{{z:+.4f}}<extra></extra>")
        else:
            hover = f"target {symbol}<br>source %{{y}}, %{{customdata}}<br>weight %{{z:.4f}}<extra></extra>"
        fig.add_trace(go.Heatmap(
            z=shown[target], x=lags, y=list(symbols), coloraxis="coloraxis", text=text, texttemplate="%{text}",
            name=f"target {symbol}", customdata=custom[target] if excess else hover_lags, hovertemplate=hover,
        ), row=1, col=target + 1)
        # One axis title, under the middle map: repeated under every map they ran into each other.
        middle = target == (n_assets - 1) // 2
        fig.update_xaxes(title_text="lag (clock rows before the forecast origin)" if middle else None,
                         tickmode="array", tickvals=lags, ticktext=labels, row=1, col=target + 1)
    for follower, leader, lag in planted_cells(truth, symbols, n_lags - 1):
        column = list(symbols).index(follower) + 1
        source = list(symbols).index(leader)
        axis = "" if column == 1 else str(column)
        fig.add_shape(type="rect", x0=lag - 0.5, x1=lag + 0.5, y0=source - 0.5, y1=source + 0.5,
                      xref=f"x{axis}", yref=f"y{axis}", line=dict(color=PLANTED_MARK_COLOUR, width=3),
                      name=PLANTED_MARK_NAME)
        fig.add_annotation(x=lag, y=source, xref=f"x{axis}", yref=f"y{axis}", yshift=-14, showarrow=False,
                           text=f"planted lead {truth.lag_bars}", font=dict(size=10, color=PLANTED_MARK_COLOUR),
                           name=PLANTED_MARK_NAME)
    for target, source, lead in leads:
        if target not in symbols or source not in symbols or not 1 <= lead <= n_lags:
            continue
        column, row, key = list(symbols).index(target) + 1, list(symbols).index(source), key_lag_of_lead(lead)
        axis = "" if column == 1 else str(column)
        fig.add_shape(type="rect", x0=key - 0.42, x1=key + 0.42, y0=row - 0.42, y1=row + 0.42, xref=f"x{axis}",
                      yref=f"y{axis}", line=dict(color=FOUND_MARK_COLOUR, width=2, dash="dot"), name=FOUND_MARK_NAME)
    if truth is not None and truth.lag_bars is not None and key_lag_of_lead(truth.lag_bars) > n_lags - 1:
        fig.add_annotation(text=f"planted lead {truth.lag_bars} bars (key lag {key_lag_of_lead(truth.lag_bars)}) is "
                                f"beyond the model's largest lag {n_lags - 1}",
                           xref="paper", yref="paper", x=0.0, y=-0.25, showarrow=False, xanchor="left")
    title = "Cross-asset attention by source and lag"
    subtitle = " · ".join(part for part in ("above an uninformed model's weights" if excess else "",
                                            span_text, "self-attention hidden" if hide_self else "") if part)
    base_layout(fig, title + (f"<br><sup>{subtitle}</sup>" if subtitle else ""), 420)
    # The title's two lines, then the demo stamp on a line of its own over the "target ..." subplot titles.
    fig.update_layout(margin={"l": 50, "r": 20, "t": 110, "b": 40})
    fig.update_yaxes(title_text="source", type="category", autorange="reversed", row=1, col=1)
    if excess:
        fig.update_layout(coloraxis=dict(colorscale="RdBu", reversescale=True, cmin=-top, cmax=top,
                                         colorbar=dict(title="weight −<br>uninformed")))
    else:
        fig.update_layout(coloraxis=dict(colorscale="Viridis", cmin=0.0, cmax=top, colorbar=dict(title="weight")))
    return label_synthetic(fig, synthetic, yshift=24)


def attention_over_time(
    rolling: np.ndarray,
    ts: pd.DatetimeIndex,
    symbols: Sequence[str],
    target: str,
    *,
    window: int,
    target_open: np.ndarray | None = None,
    rows: range | None = None,
    marked_time=None,
    out_of_sample: Sequence[tuple] = (),
    synthetic: bool,
) -> go.Figure:
    """rolling (T, A_src, K+1), the target's trailing-window map at every bar
    (engine.diagnostics.DiagnosticsBundle.rolling_lead_lag_of) -> its attention on each source, summed over lags
    (its share of the target's attention), as one line per source over time.

    With target_open (T,), only the target's open bars are drawn: the trailing map changes only there. Bars with no
    map (NaN: before the kept attention rows of a wide universe) are left out."""
    rolling = np.asarray(rolling)
    if rolling.ndim != 3 or rolling.shape[0] != len(ts) or rolling.shape[1] != len(symbols):
        raise ValueError(f"rolling must be the target's (time, sources, lags) = ({len(ts)}, {len(symbols)}, K+1), "
                         f"got {rolling.shape}")
    if target not in symbols:
        raise ValueError(f"target {target!r} is not one of {list(symbols)}")
    span = slice(None) if rows is None else slice(rows.start, rows.stop)
    drawn = np.ones(len(ts), dtype=bool) if target_open is None else np.asarray(target_open, dtype=bool)
    drawn = drawn[span] & np.isfinite(rolling[span]).all(axis=(1, 2))
    times = pd.DatetimeIndex(ts[span])[drawn]
    share = rolling[span].sum(axis=-1)[drawn]  # (n, A_src)
    fig = go.Figure()
    for source, symbol in enumerate(symbols):
        fig.add_trace(go.Scatter(x=times, y=share[:, source], mode="lines", name=f"on {symbol}",
                                 line=dict(color=asset_colour(symbol, symbols), width=1.3),
                                 hovertemplate=f"%{{x|%Y-%m-%d %H:%M}} UTC<br>on {symbol}: %{{y:.3f}}<extra></extra>"))
    if marked_time is not None:
        fig.add_vline(x=pd.Timestamp(marked_time), line_width=1, line_dash="dash", line_color="#444444")
    base_layout(fig, f"Attention of {target} on each source over time (trailing {window}-bar window, all lags)")
    fig.update_xaxes(title_text=TIME_AXIS_TITLE)
    fig.update_yaxes(title_text="share of attention", rangemode="tozero")
    shade_test_spans(fig, out_of_sample, times)
    return label_synthetic(fig, synthetic)


def attention_map_frame(weights: np.ndarray, null: np.ndarray | None, symbols: Sequence[str],
                        step: pd.Timedelta | None = None) -> pd.DataFrame:
    """The lead-lag map as rows (target, source, lag, lag as time, weight, uninformed, excess), for download."""
    weights = _check_map(weights, symbols)
    null = np.full_like(weights, np.nan) if null is None else np.asarray(null, dtype=float)
    targets, sources, lags = np.meshgrid(np.arange(len(symbols)), np.arange(len(symbols)),
                                         np.arange(weights.shape[2]), indexing="ij")
    names = np.asarray(symbols, dtype=object)
    return pd.DataFrame({
        "target": names[targets.ravel()], "source": names[sources.ravel()], "lag": lags.ravel(),
        "lag as time": [lag_label(int(lag), step) for lag in lags.ravel()],
        "weight": weights.ravel(), "uninformed": null.ravel(), "excess": (weights - null).ravel(),
    })
