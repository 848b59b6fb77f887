"""Backtest charts and the metrics table: strategy against buy-and-hold, always on the same bars.

Every time series chart shades the out-of-sample span (where each forecast came from a fit on earlier bars only)
so an in-sample stretch can never pass for a result. Returns are the portfolio's net returns: costs included.
"""
from __future__ import annotations

import math

import numpy as np
import pandas as pd
import plotly.graph_objects as go

from engine.backtest import metrics
from engine.backtest.engine import BacktestResult
from engine.backtest.sweep import SweepResult
from engine.backtest.tearsheet import Tearsheet
from engine.figures.style import (
    BENCHMARK_COLOUR,
    COLORBAR_RIGHT,
    LOSS_COLOUR,
    LOSS_FILL,
    ONE_PASS_BOTTOM,
    ONE_PASS_LEFT,
    ONE_PASS_RIGHT,
    OUT_OF_SAMPLE_FILL,
    STRATEGY_COLOUR,
    TIME_AXIS_TITLE,
    base_layout,
    display_rows,
    label_synthetic,
    plain_times,
)

# Points per time chart on the Backtest page, which redraws all of them on every slider move: each bucket of bars
# keeps both curves' extremes (display_rows), and ~300 buckets across a chart ~1,100 px wide keep every visible peak
# and trough; 2,000 points a chart sent ~450 KB per move for the three time charts.
BACKTEST_DISPLAY_POINTS = 1_200
STRATEGY_NAME = "strategy (net of costs)"
BENCHMARK_NAME = "buy and hold"
MONTH_NAMES = ("Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec")


def result_times(result: BacktestResult) -> pd.DatetimeIndex:
    """The backtest's bar times as a UTC DatetimeIndex (the inputs keep naive UTC datetime64)."""
    return pd.DatetimeIndex(result.inputs.ts).tz_localize("UTC")


def shade_out_of_sample(fig: go.Figure, times: pd.DatetimeIndex, out_of_sample_start) -> go.Figure:
    """Shade [out_of_sample_start, last bar] and label it; nothing when the start is unknown or after the data."""
    if out_of_sample_start is None or len(times) == 0:
        return fig
    start = pd.Timestamp(out_of_sample_start)
    start = start.tz_localize("UTC") if start.tzinfo is None else start.tz_convert("UTC")
    if start > times[-1]:
        return fig
    # a plain shape and annotation: add_vrect does the same through Plotly's subplot bookkeeping, ~5x slower
    x0 = max(start, times[0])
    fig.add_shape(type="rect", xref="x", yref="paper", x0=x0, x1=times[-1], y0=0, y1=1, fillcolor=OUT_OF_SAMPLE_FILL,
                  line_width=0, layer="below")
    fig.add_annotation(text="out of sample", xref="x", yref="paper", x=x0, y=1, xanchor="left", yanchor="top",
                       showarrow=False, font={"size": 10})
    return fig


# The three time panels of the Backtest page's performance chart, top to bottom: (y axis, its title, share of the
# plot's height). One chart, not three: the panels share one time axis (a zoom moves all three), and a slider move
# redraws one Plotly chart instead of three (with the heatmap, 4 charts -> 2: a move 0.52 -> 0.435 s, chromium).
PERFORMANCE_PANELS = (("y", "equity (start = 1)", 0.42), ("y2", "drawdown", 0.25), ("y3", "rolling Sharpe", 0.25))
PANEL_GAP = 0.04  # of the plot's height, between two panels


def _panel_domains() -> dict[str, list[float]]:
    """y axis name -> [bottom, top] in paper units, the first panel on top."""
    domains, top = {}, 1.0
    for axis, _, share in PERFORMANCE_PANELS:
        domains[axis] = [round(top - share, 6), round(top, 6)]
        top -= share + PANEL_GAP
    return domains


def performance_chart(result: BacktestResult, window: int, out_of_sample_start=None, *,
                      synthetic: bool) -> go.Figure:
    """Equity (start = 1), drawdown and trailing-window annualised Sharpe ratio of the strategy and of buy-and-hold,
    stacked on one time axis, the out-of-sample span shaded across all three.

    Each panel's curves are thinned for display together (display_rows keeps every bucket's extremes)."""
    times = result_times(result)
    plain = plain_times(times)
    year = result.metrics.periods_per_year
    sharpe = (rolling_sharpe(result.benchmark.net_returns, window, year),
              rolling_sharpe(result.portfolio_net_returns, window, year))
    panels = (("y", (result.benchmark.equity, result.equity)), ("y2", (result.benchmark.drawdown, result.drawdown)),
              ("y3", sharpe))
    fig = go.Figure()
    for axis, (benchmark, strategy) in panels:
        rows = display_rows([benchmark, strategy], BACKTEST_DISPLAY_POINTS)
        first = axis == "y"  # one legend entry per curve, from the equity panel
        strategy_style = (dict(fill="tozeroy", fillcolor=LOSS_FILL, line=dict(color=LOSS_COLOUR, width=1.0))
                          if axis == "y2" else dict(line=dict(color=STRATEGY_COLOUR, width=1.6 if first else 1.4)))
        fig.add_trace(go.Scatter(x=plain[rows], y=benchmark[rows], mode="lines", name=BENCHMARK_NAME, yaxis=axis,
                                 legendgroup="benchmark", showlegend=first,
                                 line=dict(color=BENCHMARK_COLOUR, width=1.3 if first else 1.0)))
        fig.add_trace(go.Scatter(x=plain[rows], y=strategy[rows], mode="lines", name=STRATEGY_NAME, yaxis=axis,
                                 legendgroup="strategy", showlegend=first, **strategy_style))
    title = (f"Equity, drawdown and rolling Sharpe ratio: strategy vs buy and hold · {', '.join(_selected(result))}"
             f"<br><sup>Sharpe over a trailing {window:,}-bar window, annualised with {year:,.0f} bars/year</sup>")
    base_layout(fig, title, height=720)
    domains = _panel_domains()
    fig.update_layout(
        margin={"l": ONE_PASS_LEFT, "b": ONE_PASS_BOTTOM, "t": 80},  # drawn in one pass (style.ONE_PASS_LEFT)
        xaxis={"title": {"text": TIME_AXIS_TITLE}, "anchor": "y3", "domain": [0.0, 1.0]},
        **{("yaxis" if axis == "y" else f"yaxis{axis[1:]}"): {"domain": domains[axis], "title": {"text": name},
                                                                "anchor": "x"}
           for axis, name, _ in PERFORMANCE_PANELS},
    )
    fig.update_layout(yaxis2_tickformat=".0%")
    fig.add_shape(type="line", xref="paper", yref="y3", x0=0, x1=1, y0=0.0, y1=0.0,
                  line={"width": 0.8, "color": "#999999"})  # Sharpe 0 (add_hline, without its bookkeeping)
    shade_out_of_sample(fig, times, out_of_sample_start)
    return label_synthetic(fig, synthetic)


def rolling_sharpe(returns: np.ndarray, window: int, periods_per_year: float) -> np.ndarray:
    """(T,) annualised Sharpe of the trailing `window` bars (sample std); NaN until the window is full or while
    the window has no variance (a flat strategy has no Sharpe ratio, not zero)."""
    if window < 2:
        raise ValueError(f"rolling_sharpe: window must be at least 2 bars, got {window}")
    series = pd.Series(np.asarray(returns, dtype=np.float64))
    mean = series.rolling(window).mean()
    std = series.rolling(window).std(ddof=1)
    with np.errstate(divide="ignore", invalid="ignore"):
        sharpe = (mean / std.where(std > 1e-12)) * math.sqrt(periods_per_year)
    return sharpe.to_numpy()


def monthly_returns(result: BacktestResult) -> pd.DataFrame:
    """Compounded net strategy return per calendar month (UTC): years as rows, Jan..Dec as columns, NaN = no bars."""
    returns = pd.Series(result.portfolio_net_returns, index=result_times(result))
    grouped = (1.0 + returns).groupby([returns.index.year, returns.index.month]).prod() - 1.0
    table = grouped.unstack()
    table = table.reindex(columns=range(1, 13))
    table.index.name, table.columns = "year", list(MONTH_NAMES)
    return table


def monthly_returns_heatmap(result: BacktestResult, *, synthetic: bool) -> go.Figure:
    table = monthly_returns(result)
    values = table.to_numpy()
    text = _cell_text(values, "{:+.1%}")
    limit = float(np.nanmax(np.abs(values))) if np.isfinite(values).any() else 0.01
    fig = go.Figure(go.Heatmap(
        z=values, x=list(table.columns), y=[str(y) for y in table.index], text=text, texttemplate="%{text}",
        colorscale="RdYlGn", zmid=0.0, zmin=-limit, zmax=limit, colorbar=dict(title="return", tickformat=".0%"),
        hovertemplate="%{y} %{x}: %{z:.2%}<extra></extra>",
    ))
    base_layout(fig, "Monthly net returns of the strategy (UTC months)", height=max(260, 60 + 34 * len(table)))
    fig.update_layout(margin={"l": ONE_PASS_LEFT, "r": COLORBAR_RIGHT})
    fig.update_yaxes(autorange="reversed", type="category", title_text="year")
    return label_synthetic(fig, synthetic)


def sweep_heatmap(result: SweepResult, metric: str = "sharpe", *, synthetic: bool) -> go.Figure:
    """One metric over the grid of two parameters; every cell is a trial counted by the deflated Sharpe ratio."""
    if metric not in result.metrics:
        raise ValueError(f"sweep_heatmap: the sweep computed {sorted(result.metrics)}, not {metric!r}")
    grid = result.metrics[metric]  # (len(values_y), len(values_x))
    x = [_tick(v) for v in result.values_x]
    y = [_tick(v) for v in result.values_y] if result.param_y is not None else [""]
    fig = go.Figure(go.Heatmap(
        z=grid, x=x, y=y, colorscale="Viridis", colorbar=dict(title=metric),
        text=_cell_text(grid, "{:.2f}"),
        texttemplate="%{text}",
        hovertemplate=f"{result.param_x}=%{{x}}<br>{result.param_y}=%{{y}}<br>{metric}=%{{z:.3f}}<extra></extra>",
    ))
    title = f"Sweep: {metric} over {result.param_x} x {result.param_y} ({result.n_settings} settings, all counted as trials)"
    base_layout(fig, title, height=460)
    fig.update_xaxes(title_text=result.param_x, type="category")
    fig.update_yaxes(title_text=result.param_y or "", type="category")
    return label_synthetic(fig, synthetic)


def sweep_table(result: SweepResult) -> pd.DataFrame:
    """Every cell of a sweep as a row: the two swept values and every metric computed (for download)."""
    rows = []
    for iy, y in enumerate(result.values_y):
        for ix, x in enumerate(result.values_x):
            row = {result.param_x: x} | ({} if result.param_y is None else {result.param_y: y})
            rows.append(row | {name: float(grid[iy, ix]) for name, grid in result.metrics.items()})
    return pd.DataFrame(rows)


def _cell_text(values: np.ndarray, template: str) -> np.ndarray:
    """Heatmap cell labels; empty where the value is undefined."""
    return np.where(np.isnan(values), "", np.vectorize(template.format)(np.nan_to_num(values)))


def _tick(value) -> str:
    if value is None:
        return "off"
    if isinstance(value, float):
        return f"{value:g}"
    return str(value)


def _selected(result: BacktestResult) -> list[str]:
    return list(result.asset_metrics) or list(result.inputs.symbols)


# --------------------------------------------------------------------------------------------- metrics table
# (field of PerformanceSummary, label, how to format, what it means). Annualised rows say which clock they used.
METRIC_ROWS: tuple[tuple[str, str, str, str], ...] = (
    ("total_return", "Total return", "pct", "Compounded net return over the span."),
    ("cagr", "CAGR", "pct", "Compound annual growth rate, annualised with {year}."),
    ("annualised_volatility", "Volatility (annual)", "pct", "Sample std of bar returns x sqrt({year})."),
    ("sharpe", "Sharpe ratio", "num", "Mean / std of bar returns x sqrt({year}); risk-free rate 0."),
    ("sortino", "Sortino ratio", "num", "Mean / downside deviation x sqrt({year})."),
    ("max_drawdown", "Max drawdown", "pct", "Deepest fall of compounded equity from its running peak."),
    ("max_drawdown_duration_bars", "Longest drawdown (bars)", "int", "Most bars spent below a previous peak."),
    ("calmar", "Calmar ratio", "num", "CAGR / |max drawdown|."),
    ("probabilistic_sharpe", "PSR (vs 0)", "pct", "Probability that the true Sharpe ratio exceeds 0 (Bailey & "
     "Lopez de Prado), from the bar returns' skew and kurtosis."),
    ("turnover", "Turnover (annual)", "num", "Sum of |position change| per year, {year}."),
    ("exposure", "Exposure", "pct", "Share of bars with a position in any selected asset."),
    ("n_trades", "Trades", "int", "Runs of same-side positions, over all assets."),
    ("win_rate", "Win rate", "pct", "Share of trades with a positive net return."),
    ("profit_factor", "Profit factor", "num", "Sum of winning trade returns / |sum of losing ones|."),
    ("average_trade", "Average trade", "pct", "Mean net return per trade."),
)


def format_metric(value, kind: str) -> str:
    if value is None or (isinstance(value, float) and not math.isfinite(value)):
        return "n/a"
    if kind == "pct":
        return f"{value:.2%}"
    if kind == "int":
        return f"{int(value):,}"
    return f"{value:.3f}"


def metric_help(periods_per_year: float) -> dict[str, str]:
    """Label -> tooltip text, with the annualisation filled in."""
    year = f"{periods_per_year:,.0f} bars/year"
    return {label: text.format(year=year) for _, label, _, text in METRIC_ROWS}


def metrics_table(result: BacktestResult, trials: metrics.TrialCounter | int | None = None) -> pd.DataFrame:
    """Strategy and buy-and-hold side by side, formatted; with `trials`, the deflated Sharpe ratio as the last row.

    Columns: metric, strategy, buy and hold, meaning (the tooltip text, with the annualisation used).
    """
    help_text = metric_help(result.metrics.periods_per_year)
    strategy, benchmark = result.metrics.as_dict(), result.benchmark.metrics.as_dict()
    rows = [
        {"metric": label, "strategy": format_metric(strategy[name], kind),
         "buy and hold": format_metric(benchmark[name], kind), "meaning": help_text[label]}
        for name, label, kind, _ in METRIC_ROWS
    ]
    if trials is not None:
        n_trials = trials.n_trials if isinstance(trials, metrics.TrialCounter) else int(trials)
        benchmark_trials = 1  # buy and hold is one fixed rule, tried once
        rows.append({
            "metric": f"DSR ({n_trials} trials)",
            "strategy": format_metric(result.deflated_sharpe(trials), "pct"),
            "buy and hold": format_metric(metrics.deflated_sharpe_ratio(result.benchmark.net_returns,
                                                                        benchmark_trials), "pct"),
            "meaning": (f"Deflated Sharpe ratio: the PSR against the best Sharpe ratio {n_trials} skill-less trials "
                        "would show by luck; every distinct setting ever tried on this checkpoint, data and span "
                        "counts as a trial."),
        })
    return pd.DataFrame(rows)


def trades_table(result: BacktestResult, zone: str = "UTC") -> pd.DataFrame:
    """The trade list for the screen, newest first: side as a word, times in `zone` (named in the column titles),
    the return a number (the page shows it as a percentage, losses red)."""
    frame = result.trades_frame().sort_values("entry_ts", ascending=False, ignore_index=True)
    return pd.DataFrame({
        "symbol": frame["symbol"],
        "side": frame["side"].map({1: "long", -1: "short"}),
        f"entry ({zone})": format_times(frame["entry_ts"], zone),
        f"exit ({zone})": format_times(frame["exit_ts"], zone),
        "bars held": frame["bars_held"],
        "size": frame["size"],
        "return": frame["return"],
        "status": np.where(frame["open"], "open", "closed"),
    })


def trades_csv(result: BacktestResult) -> pd.DataFrame:
    """The trade list for download: ISO UTC times, full-precision numbers, oldest first."""
    frame = result.trades_frame().sort_values("entry_ts", ignore_index=True)
    frame["side"] = frame["side"].map({1: "long", -1: "short"})
    for column in ("entry_ts", "exit_ts"):
        frame[column] = frame[column].map(lambda t: t.isoformat())
    return frame


def equity_csv(result: BacktestResult) -> pd.DataFrame:
    """Per bar: time (UTC), the strategy's and buy-and-hold's net return, equity and drawdown, and each position."""
    frame = pd.DataFrame({
        "ts_utc": [t.isoformat() for t in result_times(result)],
        "strategy_net_return": result.portfolio_net_returns, "strategy_equity": result.equity,
        "strategy_drawdown": result.drawdown,
        "buy_and_hold_net_return": result.benchmark.net_returns, "buy_and_hold_equity": result.benchmark.equity,
        "buy_and_hold_drawdown": result.benchmark.drawdown,
    })
    for a, symbol in enumerate(result.inputs.symbols):
        frame[f"position_{symbol}"] = result.positions[:, a]
    return frame


# ------------------------------------------------------------------------------------------------- tearsheet
def return_distribution_chart(sheet: Tearsheet, *, synthetic: bool) -> go.Figure:
    """Histograms of the strategy's and the benchmark's returns (per day for intraday bars), on shared bins."""
    frame = sheet.distribution
    values = frame.to_numpy().ravel()
    values = values[np.isfinite(values)]
    fig = go.Figure()
    if values.size:
        lo, hi = float(values.min()), float(values.max())
        size = (hi - lo) / 60 if hi > lo else 0.001
        bins = {"start": lo, "end": hi + size, "size": size}
        for column, name, colour in (("benchmark", BENCHMARK_NAME, BENCHMARK_COLOUR),
                                     ("strategy", STRATEGY_NAME, STRATEGY_COLOUR)):
            fig.add_trace(go.Histogram(x=frame[column], name=name, xbins=bins, marker_color=colour, opacity=0.6,
                                       hovertemplate="%{x:.2%}: %{y} " + sheet.distribution_period + "s<extra></extra>"))
    fig.add_vline(x=0.0, line_width=1.0, line_color="#444444")
    period = "Daily" if sheet.distribution_period == "day" else "Per-bar"
    note = "bars compounded per UTC day" if sheet.distribution_period == "day" else "one count per bar"
    base_layout(fig, f"{period} net returns<br><sup>{note}</sup>", height=380)
    # Half a page wide: the legend goes under the plot, clear of the demo stamp over its top right corner.
    fig.update_layout(barmode="overlay", margin={"l": ONE_PASS_LEFT, "r": ONE_PASS_RIGHT, "t": 70, "b": 100},
                      legend={"orientation": "h", "yanchor": "top", "y": -0.25, "xanchor": "left", "x": 0.0})
    fig.update_xaxes(title_text=f"return per {sheet.distribution_period}", tickformat=".1%")
    fig.update_yaxes(title_text=f"number of {sheet.distribution_period}s")
    return label_synthetic(fig, synthetic)


def yearly_returns_chart(sheet: Tearsheet, *, synthetic: bool) -> go.Figure:
    """Compounded return per calendar year, strategy beside buy-and-hold; losses drawn red."""
    table = sheet.yearly
    years = [str(year) for year in table.index]
    strategy = table["strategy"].to_numpy()
    fig = go.Figure()
    fig.add_trace(go.Bar(x=years, y=table["benchmark"], name=BENCHMARK_NAME, marker_color=BENCHMARK_COLOUR,
                         hovertemplate="%{x}: %{y:+.2%}<extra>" + BENCHMARK_NAME + "</extra>"))
    fig.add_trace(go.Bar(x=years, y=strategy, name=STRATEGY_NAME,
                         marker_color=np.where(strategy < 0, LOSS_COLOUR, STRATEGY_COLOUR).tolist(),
                         hovertemplate="%{x}: %{y:+.2%}<extra>" + STRATEGY_NAME + "</extra>"))
    fig.add_hline(y=0.0, line_width=0.8, line_color="#999999")
    base_layout(fig, "Yearly net returns<br><sup>UTC calendar years; a losing year of the strategy in red</sup>",
                height=380)
    fig.update_layout(barmode="group", margin={"l": ONE_PASS_LEFT, "r": ONE_PASS_RIGHT, "t": 70, "b": 100},
                      legend={"orientation": "h", "yanchor": "top", "y": -0.25, "xanchor": "left", "x": 0.0})
    fig.update_xaxes(title_text="year", type="category")
    fig.update_yaxes(title_text="return", tickformat=".0%")
    return label_synthetic(fig, synthetic)


RELATIVE_ROWS: tuple[tuple[str, str, str, str], ...] = (
    ("alpha", "Alpha (annual)", "pct", "Mean bar return not explained by beta x the benchmark's, x {year}."),
    ("beta", "Beta", "num", "cov(strategy, buy and hold) / var(buy and hold), on the same bars."),
    ("correlation", "Correlation", "num", "Pearson correlation of bar returns with buy and hold."),
    ("information_ratio", "Information ratio", "num",
     "Mean / std of (strategy - buy and hold) bar returns x sqrt({year}) (quantstats does not annualise it)."),
    ("tracking_error", "Tracking error (annual)", "pct", "Std of (strategy - buy and hold) bar returns x sqrt({year})."),
)


def relative_table(sheet: Tearsheet) -> pd.DataFrame:
    """Alpha, beta, correlation, information ratio, tracking error: value (a number) and meaning, one row each."""
    year = f"{sheet.periods_per_year:,.0f} bars/year"
    rel = sheet.relative
    return pd.DataFrame([
        {"statistic": label, "value": getattr(rel, name), "kind": kind, "meaning": text.format(year=year)}
        for name, label, kind, text in RELATIVE_ROWS
    ])


def drawdowns_table(sheet: Tearsheet, zone: str = "UTC") -> pd.DataFrame:
    """The worst drawdowns with times in `zone` (the zone named in the column titles)."""
    frame = sheet.drawdowns.copy()
    for column in ("start", "trough", "recovery"):
        frame[column] = frame[column].map(lambda t: format_time(t, zone, empty="not yet"))
    frame["length"] = frame["length"].map(format_duration)
    return frame.rename(columns={c: f"{c} ({zone})" for c in ("start", "trough", "recovery")})


def yearly_table(sheet: Tearsheet) -> pd.DataFrame:
    table = sheet.yearly.reset_index()
    table["year"] = table["year"].astype(str)
    return table.rename(columns={"benchmark": BENCHMARK_NAME, "strategy": STRATEGY_NAME})


def format_times(values: pd.Series, zone: str = "UTC", empty: str = "") -> pd.Series:
    """format_time over a column at once (a trade list of thousands of rows on every slider move)."""
    stamps = pd.to_datetime(values, utc=True)
    return stamps.dt.tz_convert(zone).dt.strftime("%Y-%m-%d %H:%M").fillna(empty).astype(object)


def format_time(value, zone: str = "UTC", empty: str = "") -> str:
    """A UTC timestamp as 'YYYY-MM-DD HH:MM' in `zone`; `empty` for a missing one."""
    if value is None or pd.isna(value):
        return empty
    stamp = pd.Timestamp(value)
    stamp = stamp.tz_localize("UTC") if stamp.tzinfo is None else stamp
    return f"{stamp.tz_convert(zone):%Y-%m-%d %H:%M}"


def format_duration(value) -> str:
    """A Timedelta in words an analyst reads at a glance: '3 d 4 h', '5 h', '0 h'."""
    if value is None or pd.isna(value):
        return ""
    delta = pd.Timedelta(value)
    days, hours = delta.days, delta.seconds // 3600
    if days and hours:
        return f"{days:,} d {hours} h"
    return f"{days:,} d" if days else f"{hours} h"
