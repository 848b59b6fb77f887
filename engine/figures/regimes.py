"""Regimes view charts: the PCA scatter of an asset's regime embeddings, the regime ribbon under its price (with
the demo's planted regimes as a second ribbon), explained variance, and the regime transition matrix.

Inputs are plain arrays on the panel's union clock (T rows), one asset at a time: what
engine.diagnostics.RegimeResult holds for asset a is projections[a] (T, C), labels[a] (T,) and the mask row (T,).
Only the asset's open bars are drawn: a closed bar repeats the last open bar's state, so it would stack copies.
Cluster numbers are arbitrary (renumbered by the first principal coordinate), so a found regime's colour says
nothing about which planted regime it matches; the adjusted Rand index is the comparison that ignores numbering.
"""
from __future__ import annotations

from typing import Sequence

import numpy as np
import pandas as pd
import plotly.graph_objects as go
from plotly.subplots import make_subplots

from engine.diagnostics.regimes import NO_LABEL
from engine.figures.spans import shade_test_spans
from engine.figures.style import (
    TIME_AXIS_TITLE,
    asset_colour,
    base_layout,
    display_rows,
    label_synthetic,
)

# Regime colours are not asset colours (those stay one per asset on every page): a separate qualitative set.
REGIME_COLOURS = ("#4C78A8", "#E45756", "#54A24B", "#B279A2", "#EECA3B", "#72B7B2", "#FF9DA6", "#9D755D")
# The demo's planted regimes get a palette of their own (greys, never a found regime's hue), so a found regime
# that happens to share a planted one's number can never pass for a match by colour.
PLANTED_COLOURS = ("#3B3B3B", "#8C8C8C", "#C9C9C9", "#5E5E5E", "#ABABAB", "#242424", "#747474", "#DADADA")
PALETTES = {"found": REGIME_COLOURS, "planted": PLANTED_COLOURS}
COLOUR_BY = ("regime", "date")


def regime_colour(regime: int, palette: str = "found") -> str:
    colours = PALETTES[palette]
    return colours[regime % len(colours)]


def regime_name(regime: int, names: Sequence[str] | None) -> str:
    if regime < 0:
        return "none"
    return names[regime] if names is not None and regime < len(names) else f"regime {regime}"


def _rows(rows: range | None, n: int) -> np.ndarray:
    """Boolean (n,) of the rows drawn."""
    keep = np.zeros(n, dtype=bool)
    keep[slice(None) if rows is None else slice(rows.start, rows.stop)] = True
    return keep


def _check_clock(ts: pd.DatetimeIndex, **arrays: np.ndarray) -> None:
    for name, array in arrays.items():
        if array is not None and len(array) != len(ts):
            raise ValueError(f"{name} has {len(array)} rows but the clock has {len(ts)}: pass one asset's row")


# ----------------------------------------------------------------------------------------------- the PCA scatter


SCATTER_MAX_POINTS = 5_000  # a 480-pixel scatter shows no more; the hover file stays well under 500 KB


def regime_scatter(
    projections: np.ndarray,
    labels: np.ndarray,
    open_bars: np.ndarray,
    ts: pd.DatetimeIndex,
    closes: np.ndarray,
    symbol: str,
    *,
    colour_by: str = "regime",
    regime_names: Sequence[str] | None = None,
    explained: np.ndarray | None = None,
    rows: range | None = None,
    max_points: int = SCATTER_MAX_POINTS,
    synthetic: bool,
) -> go.Figure:
    """PC1 against PC2 of one asset's embeddings (projections (T, C), labels/open_bars/closes (T,)), one point per
    open bar in `rows`, coloured by regime (one trace each) or by date; hover shows the bar's date and price.

    More than `max_points` bars are thinned to every k-th bar in time (the title says so): 26k hourly points drew
    one overplotted cloud in a 480-pixel chart and made a 1.4 MB chart file, mostly hover text."""
    projections, labels = np.asarray(projections), np.asarray(labels)
    _check_clock(ts, projections=projections, labels=labels, open_bars=open_bars, closes=closes)
    if colour_by not in COLOUR_BY:
        raise ValueError(f"regime_scatter: colour_by must be one of {COLOUR_BY}, got {colour_by!r}")
    keep = np.asarray(open_bars, dtype=bool) & (labels != NO_LABEL) & _rows(rows, len(ts))
    n_bars = int(keep.sum())
    step = max(1, -(-n_bars // max_points))  # ceil: at most max_points drawn
    if step > 1:
        kept_rows = np.flatnonzero(keep)
        keep = np.zeros_like(keep)
        keep[kept_rows[::step]] = True
    x = projections[keep, 0].astype(np.float32)
    y = (projections[keep, 1] if projections.shape[1] > 1 else np.zeros(int(keep.sum()))).astype(np.float32)
    when = pd.DatetimeIndex(ts[keep])
    # the hover's date and price, in a compact form (date text and a price of 6 significant digits)
    prices = [float(f"{price:.6g}") for price in np.asarray(closes, dtype=float)[keep]]
    custom = np.array(list(zip(when.strftime("%Y-%m-%d %H:%M"), prices)), dtype=object).reshape(-1, 2)
    hover = "%{customdata[0]} UTC<br>price %{customdata[1]:,.2f}<br>PC1 %{x:.2f}, PC2 %{y:.2f}"
    fig = go.Figure()
    if colour_by == "regime":
        for regime in np.unique(labels[keep]):
            where = labels[keep] == regime
            name = regime_name(int(regime), regime_names)
            fig.add_trace(go.Scattergl(
                x=x[where], y=y[where], mode="markers", name=name, customdata=custom[where],
                marker=dict(size=5, color=regime_colour(int(regime)), opacity=0.7),
                hovertemplate=hover + f"<br>{name}<extra></extra>",
            ))
    else:
        seconds = when.asi8 / 1e9 if len(when) else np.array([])
        ticks = pd.DatetimeIndex(np.linspace(seconds.min(), seconds.max(), 5) * 1e9, tz="UTC") if len(when) else []
        fig.add_trace(go.Scattergl(
            x=x, y=y, mode="markers", name="bars by date", customdata=custom, hovertemplate=hover + "<extra></extra>",
            marker=dict(size=5, color=seconds, colorscale="Viridis", opacity=0.7, colorbar=dict(
                title="date (UTC)", tickvals=[t.timestamp() for t in ticks],
                ticktext=[f"{t:%Y-%m-%d}" for t in ticks])),
        ))
    # Two lines: the scatter sits in three fifths of the page, where one line was cut.
    drawn = (f"{len(x):,} open bars" if step == 1 else
             f"{len(x):,} of {n_bars:,} open bars drawn (one in {step})")
    base_layout(fig, f"{symbol}: regime embeddings<br><sup>first two principal components, {drawn}</sup>", 480)
    fig.update_layout(margin={"l": 50, "r": 20, "t": 90, "b": 40})
    fig.update_xaxes(title_text=_component_title(0, explained))
    fig.update_yaxes(title_text=_component_title(1, explained))
    return label_synthetic(fig, synthetic)


def _component_title(component: int, explained: np.ndarray | None) -> str:
    if explained is None or component >= len(explained):
        return f"PC{component + 1}"
    return f"PC{component + 1} ({explained[component]:.0%} of training variance)"


# ------------------------------------------------------------------------------------------- ribbon under price


def regime_runs(labels: np.ndarray) -> list[tuple[int, int, int]]:
    """labels (T,) -> (regime, first row, last row) of every run of one label; rows without a label are skipped."""
    labels = np.asarray(labels)
    if labels.size == 0:
        return []
    starts = np.flatnonzero(np.concatenate([[True], labels[1:] != labels[:-1]]))
    stops = np.concatenate([starts[1:], [len(labels)]]) - 1
    return [(int(labels[a]), int(a), int(b)) for a, b in zip(starts, stops) if labels[a] != NO_LABEL]


def add_regime_bands(fig: go.Figure, ts: pd.DatetimeIndex, labels: np.ndarray, names: Sequence[str] | None, *,
                     row: int, height: float = 1.0, opacity: float = 1.0, legend: bool = True,
                     palette: str = "found") -> None:
    """Fill 0..height over every run of a regime, one trace per regime drawn from the runs' corners only.
    palette: "found" (the model's regimes) or "planted" (the demo's truth, in greys).

    A run of rows i..j covers ts[i] to ts[j + 1] (so neighbouring runs touch). Six points per run instead of one
    per bar: 26k hourly bars in a few dozen runs cost a few hundred points, not 26k per regime."""
    by_regime: dict[int, tuple[list, list]] = {}
    for regime, first, last in regime_runs(labels):
        x, y = by_regime.setdefault(regime, ([], []))
        end = ts[min(last + 1, len(ts) - 1)]  # the next bar's open (the last bar's own at the end): runs touch
        # A closed rectangle per run; "toself" fills each None-separated segment on its own ("tozeroy" would
        # fill across the gaps and tint the whole row).
        x += [ts[first], end, end, ts[first], ts[first], None]
        y += [0.0, 0.0, height, height, 0.0, None]
    for regime in sorted(by_regime):
        x, y = by_regime[regime]
        fig.add_trace(go.Scatter(
            x=x, y=y, mode="lines", line=dict(width=0), fill="toself", hoveron="fills",
            fillcolor=_with_opacity(regime_colour(regime, palette), opacity),
            name=regime_name(regime, names),
            legendgroup=f"{palette}-regime-{regime}", showlegend=legend, hoverinfo="name",
        ), row=row, col=1)


def _with_opacity(hex_colour: str, opacity: float) -> str:
    red, green, blue = (int(hex_colour[i : i + 2], 16) for i in (1, 3, 5))
    return f"rgba({red}, {green}, {blue}, {opacity})"


def regime_timeline(
    ts: pd.DatetimeIndex,
    closes: np.ndarray,
    labels: np.ndarray,
    symbol: str,
    *,
    regime_names: Sequence[str] | None = None,
    planted: np.ndarray | None = None,
    planted_names: Sequence[str] | None = None,
    rows: range | None = None,
    out_of_sample: Sequence[tuple] = (),
    synthetic: bool,
) -> go.Figure:
    """The asset's close (T,) with the found regime ribbon (T,) under it and, on the demo, the planted one."""
    _check_clock(ts, closes=closes, labels=labels, planted=planted)
    keep = _rows(rows, len(ts))
    ts, closes, labels = pd.DatetimeIndex(ts[keep]), np.asarray(closes)[keep], np.asarray(labels)[keep]
    n_ribbons = 1 if planted is None else 2
    fig = make_subplots(rows=1 + n_ribbons, cols=1, shared_xaxes=True, vertical_spacing=0.03,
                        row_heights=[0.7] + [0.3 / n_ribbons] * n_ribbons)
    drawn = display_rows([closes])  # long histories keep each stretch's extremes: the shape, not 26k points
    fig.add_trace(go.Scatter(x=ts[drawn], y=closes[drawn], mode="lines", name=f"{symbol} close",
                             line=dict(color=asset_colour(symbol), width=1.2)), row=1, col=1)
    add_regime_bands(fig, ts, labels, regime_names, row=2)
    fig.update_yaxes(title_text="found", range=[0, 1], showticklabels=False, showgrid=False, row=2, col=1)
    if planted is not None:
        add_regime_bands(fig, ts, np.asarray(planted)[keep], planted_names, row=3, palette="planted")
        fig.update_yaxes(title_text="planted", range=[0, 1], showticklabels=False, showgrid=False, row=3, col=1)
    base_layout(fig, f"{symbol}: price and regimes" + (" (found vs planted)" if planted is not None else ""), 500)
    fig.update_layout(margin=dict(t=110))  # room for a two-row legend (found and planted names) under the title
    fig.update_yaxes(title_text="price", row=1, col=1)
    fig.update_xaxes(title_text=TIME_AXIS_TITLE, row=1 + n_ribbons, col=1)
    shade_test_spans(fig, out_of_sample, ts, on_subplots=True)
    return label_synthetic(fig, synthetic)


# ------------------------------------------------------------------------------------ variance and transitions


def explained_variance_chart(explained: np.ndarray, symbols: Sequence[str], *, synthetic: bool) -> go.Figure:
    """explained (A, C): each asset's share of training-span variance per principal component, grouped bars."""
    explained = np.asarray(explained)
    if explained.ndim != 2 or explained.shape[0] != len(symbols):
        raise ValueError(f"explained must be (assets, components) = ({len(symbols)}, C), got {explained.shape}")
    components = [f"PC{c + 1}" for c in range(explained.shape[1])]
    fig = go.Figure()
    for asset, symbol in enumerate(symbols):
        fig.add_trace(go.Bar(x=components, y=explained[asset], name=symbol, marker_color=asset_colour(symbol, symbols),
                             text=[f"{v:.0%}" for v in explained[asset]], textposition="outside",
                             hovertemplate=f"{symbol} %{{x}}: %{{y:.1%}}<extra></extra>"))
    base_layout(fig, "Explained variance of the regime embeddings (fitted on the training span)", 340)
    fig.update_layout(barmode="group")
    fig.update_yaxes(title_text="share of variance", tickformat=".0%", rangemode="tozero")
    return label_synthetic(fig, synthetic)


def transition_heatmap(
    matrix: np.ndarray, counts: np.ndarray, symbol: str, *, regime_names: Sequence[str] | None = None,
    synthetic: bool,
) -> go.Figure:
    """matrix (K, K): P(next open bar's regime = column | this bar's = row); counts (K, K) in the hover."""
    matrix, counts = np.asarray(matrix, dtype=float), np.asarray(counts)
    if matrix.ndim != 2 or matrix.shape[0] != matrix.shape[1] or counts.shape != matrix.shape:
        raise ValueError(f"transition matrix {matrix.shape} and counts {counts.shape} must both be (K, K)")
    names = [regime_name(k, regime_names) for k in range(matrix.shape[0])]
    text = np.where(np.isnan(matrix), "", np.vectorize("{:.2f}".format)(np.nan_to_num(matrix)))
    fig = go.Figure(go.Heatmap(
        z=matrix, x=names, y=names, zmin=0.0, zmax=1.0, colorscale="Blues", text=text, texttemplate="%{text}",
        customdata=counts, colorbar=dict(title="P(next)"),
        hovertemplate="from %{y}<br>to %{x}<br>P = %{z:.3f} (%{customdata:,} bars)<extra></extra>",
    ))
    # Two short title lines: the chart sits in a narrow column, where one long line was cut.
    base_layout(fig, f"{symbol}: regime transitions<br><sup>between consecutive open bars</sup>", 400)
    fig.update_layout(margin={"l": 50, "r": 20, "t": 90, "b": 40})
    fig.update_xaxes(title_text="next regime", type="category")
    fig.update_yaxes(title_text="regime now", type="category", autorange="reversed")
    return label_synthetic(fig, synthetic)


# --------------------------------------------------------------------------------- found vs planted (the demo)


def planted_on_clock(ts: pd.DatetimeIndex, planted: pd.Series) -> np.ndarray:
    """The planted regime (truth.regimes, indexed by UTC ts) at every row of `ts`; NO_LABEL where it has none."""
    values = planted.reindex(ts).to_numpy(dtype=float)
    return np.where(np.isnan(values), NO_LABEL, values).astype(np.int64)


def adjusted_rand_index(first: np.ndarray, second: np.ndarray) -> float:
    """The adjusted Rand index of two labellings of the same points, from the pair counts as sklearn.metrics.
    adjusted_rand_score computes it (1.0 when neither splits a pair the other keeps), in numpy: importing sklearn
    takes seconds, and the Regimes page needs only this."""
    _, first = np.unique(np.asarray(first), return_inverse=True)
    _, second = np.unique(np.asarray(second), return_inverse=True)
    n = len(first)
    table = np.bincount(first.ravel() * (int(second.max(initial=0)) + 1) + second.ravel()).astype(np.int64)
    rows, cols = np.bincount(first).astype(np.int64), np.bincount(second).astype(np.int64)
    squares = int((table ** 2).sum())
    both = squares - n  # ordered pairs together in both
    only_second = int((rows ** 2).sum()) - squares  # together in the first only
    only_first = int((cols ** 2).sum()) - squares  # together in the second only
    neither = n * n - only_first - only_second - squares
    if only_first == 0 and only_second == 0:
        return 1.0
    return 2.0 * (both * neither - only_second * only_first) / (
        (both + only_second) * (only_second + neither) + (both + only_first) * (only_first + neither))


def adjusted_rand_by_asset(
    labels: np.ndarray, planted: np.ndarray, open_bars: np.ndarray, symbols: Sequence[str], rows: range | None = None,
) -> pd.DataFrame:
    """labels, open_bars (A, T), planted (T,) -> symbol, n_bars, adjusted Rand index over the asset's open bars in
    `rows` where both have a label (1 = the same partition, about 0 = no better than chance)."""
    labels, open_bars, planted = np.asarray(labels), np.asarray(open_bars, dtype=bool), np.asarray(planted)
    if labels.shape != open_bars.shape or labels.shape != (len(symbols), len(planted)):
        raise ValueError(f"labels {labels.shape}, open_bars {open_bars.shape} must be (assets, time) = "
                         f"({len(symbols)}, {len(planted)})")
    span = _rows(rows, len(planted))
    records = []
    for asset, symbol in enumerate(symbols):
        use = open_bars[asset] & span & (labels[asset] >= 0) & (planted >= 0)
        ari = adjusted_rand_index(planted[use], labels[asset, use]) if use.sum() > 1 else float("nan")
        records.append({"symbol": symbol, "n_bars": int(use.sum()), "adjusted_rand_index": float(ari)})
    return pd.DataFrame.from_records(records)


# ------------------------------------------------------------------------ the regimes the tests support, per asset


def regime_levels_chart(levels: pd.DataFrame, *, level: float = 0.95, synthetic: bool) -> go.Figure:
    """Each asset's regimes, as chosen on the data (engine.diagnostics.findings: Findings.regime_levels_table):
    next-bar volatility (top) and mean return (bottom) per regime with their block-bootstrap intervals as error bars.
    An asset with one regime has one point: its whole history."""
    fig = make_subplots(rows=2, cols=1, shared_xaxes=True, vertical_spacing=0.08,
                        subplot_titles=("next-bar volatility (gap-normalised)", "next-bar mean log return"))
    if levels.empty:
        base_layout(fig, "Regimes chosen on the data: none to show", 420)
        return label_synthetic(fig, synthetic)
    counts = levels["asset"].value_counts()
    labels = [f"{row.asset} · one regime" if counts[row.asset] == 1 else f"{row.asset} · regime {row.regime}"
              for row in levels.itertuples()]
    colours = [regime_colour(int(r)) for r in levels["regime"]]
    for row_index, (value, low, high) in enumerate((("volatility", "volatility low", "volatility high"),
                                                    ("mean return", "mean low", "mean high")), start=1):
        y = levels[value].to_numpy(dtype=float)
        fig.add_trace(go.Scatter(
            x=labels, y=y, mode="markers", marker=dict(size=10, color=colours), showlegend=False, name=value,
            error_y=dict(type="data", symmetric=False, array=levels[high].to_numpy(dtype=float) - y,
                         arrayminus=y - levels[low].to_numpy(dtype=float), color="#555555"),
            customdata=np.stack([levels["bars"], levels["share"]], axis=1),
            hovertemplate="%{x}<br>" + value + " %{y:.3g}<br>%{customdata[0]:,} bars (%{customdata[1]:.0%})"
                          "<extra></extra>",
        ), row=row_index, col=1)
    fig.add_hline(y=0.0, line_width=1, line_color="#999999", row=2, col=1)
    base_layout(fig, f"Regimes chosen on the data, per asset, with {level:.0%} intervals", 520)
    return label_synthetic(fig, synthetic)


# --------------------------------------------------------------------------------------------- per-regime table
def spell_time_text(hours: float) -> str:
    """A spell's length in words: hours below two days, days above ('5.0 h', '3.4 d'); '' when undefined."""
    if hours is None or not np.isfinite(hours):
        return ""
    return f"{hours:.1f} h" if hours < 48 else f"{hours / 24:.1f} d"


REGIME_TABLE_HELP = {
    "regime": "The regime's name (found regimes are numbered along the first principal component).",
    "share of time": "Share of the asset's open, labelled bars in this regime.",
    "annual return": "Mean simple return of the next open bar after a bar in this regime, x bars/year.",
    "annual volatility": "Sample std of those next-bar returns, x sqrt(bars/year).",
    "spells": "Runs of consecutive open bars in this regime.",
    "mean spell (bars)": "Mean length of a spell, in open bars.",
    "median spell (bars)": "Median length of a spell, in open bars.",
    "mean spell (time)": "Mean wall-clock length of a spell (closed hours inside it count).",
    "median spell (time)": "Median wall-clock length of a spell.",
}


def regime_table_display(table: pd.DataFrame) -> pd.DataFrame:
    """engine.diagnostics.regimes.regime_table's frame with readable column names; durations in hours or days.
    Numbers stay numbers (the page formats them: percentages, losses red)."""
    return pd.DataFrame({
        "regime": table["regime_name"],
        "share of time": table["share_of_time"],
        "annual return": table["annual_return"],
        "annual volatility": table["annual_volatility"],
        "spells": table["n_spells"],
        "mean spell (bars)": table["mean_spell_bars"],
        "median spell (bars)": table["median_spell_bars"],
        "mean spell (time)": [spell_time_text(h) for h in table["mean_spell_hours"]],
        "median spell (time)": [spell_time_text(h) for h in table["median_spell_hours"]],
    })
