"""Backtest charts show what the result holds: strategy and buy-and-hold on the same bars, out-of-sample shaded."""
from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from engine.backtest.engine import StrategyConfig, run_backtest
from engine.backtest.sweep import sweep
from engine.figures import backtest as charts
from engine.figures.style import SYNTHETIC_NOTE
from tests.engine.test_backtest import make_inputs, random_inputs


@pytest.fixture(scope="module")
def result():
    return run_backtest(random_inputs(seed=3, n_bars=24 * 90), StrategyConfig(threshold=0.01))


def notes(fig) -> list[str]:
    return [a.text for a in fig.layout.annotations]


def by_panel(fig) -> dict[tuple[str, str], object]:
    """(y axis, curve name) -> trace of the stacked performance chart."""
    return {(trace.yaxis, trace.name): trace for trace in fig.data}


def test_performance_chart_stacks_equity_drawdown_and_sharpe_on_one_time_axis_shaded_out_of_sample(result):
    times = charts.result_times(result)
    fig = charts.performance_chart(result, 500, times[500], synthetic=True)
    traces = by_panel(fig)
    assert set(traces) == {(axis, name) for axis in ("y", "y2", "y3")
                           for name in (charts.STRATEGY_NAME, charts.BENCHMARK_NAME)}
    assert all(trace.xaxis in (None, "x") for trace in fig.data)  # one time axis: a zoom moves every panel
    # Long curves are thinned for display, keeping every bucket's extremes, the first and the last bar.
    strategy = np.asarray(traces["y", charts.STRATEGY_NAME].y)
    assert len(strategy) <= charts.BACKTEST_DISPLAY_POINTS + 2 < len(result.equity)  # thinned
    assert strategy[0] == result.equity[0] and strategy[-1] == result.equity[-1]
    assert strategy.max() == np.nanmax(result.equity) and strategy.min() == np.nanmin(result.equity)
    drawn_times = pd.DatetimeIndex(traces["y", charts.STRATEGY_NAME].x).tz_localize("UTC")  # drawn as UTC values
    np.testing.assert_allclose(strategy, result.equity[times.get_indexer(drawn_times)])
    benchmark = np.asarray(traces["y", charts.BENCHMARK_NAME].y)
    np.testing.assert_allclose(benchmark, result.benchmark.equity[times.get_indexer(drawn_times)])
    drawdown = traces["y2", charts.STRATEGY_NAME]
    assert np.asarray(drawdown.y).min() == np.nanmin(result.drawdown) and max(np.nanmax(t.y) for t in fig.data
                                                                               if t.yaxis == "y2") <= 0
    year = result.metrics.periods_per_year
    sharpe = charts.rolling_sharpe(result.portfolio_net_returns, 500, year)
    drawn = traces["y3", charts.STRATEGY_NAME]
    rows = charts.result_times(result).get_indexer(pd.DatetimeIndex(drawn.x).tz_localize("UTC"))
    np.testing.assert_allclose(np.asarray(drawn.y, dtype=float), sharpe[rows])
    # the panels are stacked top to bottom without overlapping, the time axis under the lowest
    domains = [fig.layout.yaxis.domain, fig.layout.yaxis2.domain, fig.layout.yaxis3.domain]
    assert all(upper[0] > lower[1] for upper, lower in zip(domains, domains[1:]))
    assert fig.layout.xaxis.anchor == "y3"
    assert sum(trace.showlegend is not False for trace in fig.data) == 2  # one legend entry per curve
    shade = next(shape for shape in fig.layout.shapes if shape.type == "rect")
    assert pd.Timestamp(shade.x0) == times[500] and pd.Timestamp(shade.x1) == times[-1] and shade.yref == "paper"
    assert "out of sample" in notes(fig) and SYNTHETIC_NOTE.upper() in notes(fig)
    assert "500-bar window" in fig.layout.title.text


def test_no_shading_when_the_out_of_sample_start_is_unknown_and_no_label_on_real_data(result):
    fig = charts.performance_chart(result, 100, None, synthetic=False)
    assert not [shape for shape in fig.layout.shapes if shape.type == "rect"]
    assert SYNTHETIC_NOTE.upper() not in notes(fig)


def test_rolling_sharpe_matches_a_direct_computation_and_is_undefined_while_flat():
    rng = np.random.default_rng(0)
    returns = rng.normal(0.001, 0.01, 300)
    returns[:50] = 0.0
    rolled = charts.rolling_sharpe(returns, 30, 252)
    window = returns[200:230]
    assert rolled[229] == pytest.approx(window.mean() / window.std(ddof=1) * np.sqrt(252))
    assert np.isnan(rolled[:29]).all() and np.isnan(rolled[49])  # not full yet; a flat window has no Sharpe
    with pytest.raises(ValueError, match="at least 2 bars"):
        charts.rolling_sharpe(returns, 1, 252)


def test_monthly_returns_compound_the_bars_of_each_utc_month():
    n_bars = 24 * 70  # hourly from 2024-01-01: January, February, part of March
    returns = np.full(n_bars, 0.0)
    returns[5] = 0.10  # January
    returns[24 * 31 + 3] = -0.05  # February
    inputs = make_inputs(returns, prob_up=np.full(n_bars, 0.9), **{})
    result = run_backtest(inputs, StrategyConfig(commission_bps=0.0, slippage_bps=0.0, threshold=0.0))
    table = charts.monthly_returns(result)
    net = pd.Series(result.portfolio_net_returns, index=charts.result_times(result))
    assert table.loc[2024, "Jan"] == pytest.approx((1 + net["2024-01"]).prod() - 1)
    assert table.loc[2024, "Feb"] == pytest.approx(-0.05)
    assert np.isnan(table.loc[2024, "Apr"])
    fig = charts.monthly_returns_heatmap(result, synthetic=False)
    assert fig.data[0].type == "heatmap" and list(fig.data[0].x)[:3] == ["Jan", "Feb", "Mar"]


def test_sweep_heatmap_lays_the_grid_out_with_values_as_ticks():
    inputs = random_inputs(seed=1)
    grid = sweep(inputs, StrategyConfig(), "threshold", [0.0, 0.05], "vol_target", [None, 0.2, 0.4])
    fig = charts.sweep_heatmap(grid, "sharpe", synthetic=False)
    heat = fig.data[0]
    assert list(heat.x) == ["0", "0.05"] and list(heat.y) == ["off", "0.2", "0.4"]
    np.testing.assert_array_equal(np.asarray(heat.z, dtype=float), grid.metrics["sharpe"])
    with pytest.raises(ValueError, match="not 'sortino'"):
        charts.sweep_heatmap(grid, "sortino", synthetic=False)


def test_metrics_table_puts_buy_and_hold_beside_the_strategy_and_states_the_annualisation(result):
    table = charts.metrics_table(result, trials=5).set_index("metric")
    assert table.loc["Sharpe ratio", "strategy"] == f"{result.metrics.sharpe:.3f}"
    assert table.loc["Sharpe ratio", "buy and hold"] == f"{result.benchmark.metrics.sharpe:.3f}"
    assert "8,760 bars/year" in table.loc["Sharpe ratio", "meaning"]
    assert table.loc["DSR (5 trials)", "strategy"] == f"{result.deflated_sharpe(5):.2%}"
    assert charts.format_metric(None, "pct") == "n/a"


def test_trades_table_names_sides_and_zone_and_lists_newest_first(result):
    trades = charts.trades_table(result, zone="America/New_York")
    assert set(trades["side"]) <= {"long", "short"} and len(trades) == len(result.trades)
    first = pd.Timestamp(result.trades_frame()["entry_ts"].max())
    assert trades["entry (America/New_York)"].iloc[0] == f"{first.tz_convert('America/New_York'):%Y-%m-%d %H:%M}"
    assert "+00:00" not in trades["entry (America/New_York)"].iloc[0]
    assert set(trades["status"]) <= {"open", "closed"}
    csv = charts.trades_csv(result)
    assert csv["entry_ts"].iloc[0].endswith("+00:00") and len(csv) == len(trades)


def test_drawdown_is_red_and_losses_are_styled_red(result):
    from engine.figures.style import LOSS_COLOUR, red_losses

    fig = charts.performance_chart(result, 100, None, synthetic=False)
    strategy = next(t for t in fig.data if t.name == charts.STRATEGY_NAME and t.yaxis == "y2")  # the drawdown
    assert strategy.line.color == LOSS_COLOUR
    frame = pd.DataFrame({"return": [0.01, -0.02], "text": ["1.00%", "-2.00%"]})
    html = red_losses(frame, percent=["return"]).to_html()
    css = html.split("</style>")[0]
    assert LOSS_COLOUR in css and "row1_col0" in css and "row1_col1" in css and "row0" not in css  # the losses
    assert "+1.00%" in html and "-2.00%" in html


def test_equity_csv_holds_every_bar_of_both_curves(result):
    frame = charts.equity_csv(result)
    assert len(frame) == len(result.equity)
    np.testing.assert_allclose(frame["strategy_equity"], result.equity)
    np.testing.assert_allclose(frame["buy_and_hold_drawdown"], result.benchmark.drawdown)


def test_tearsheet_figures_and_tables(result):
    from engine.backtest.tearsheet import tearsheet_of

    sheet = tearsheet_of(result)
    fig = charts.return_distribution_chart(sheet, synthetic=True)
    assert [t.type for t in fig.data] == ["histogram", "histogram"] and "Daily" in fig.layout.title.text
    assert sum(len(t.x) for t in fig.data) == 2 * len(sheet.distribution)
    years = charts.yearly_returns_chart(sheet, synthetic=False)
    assert list(years.data[1].y) == pytest.approx(list(sheet.yearly["strategy"]))
    table = charts.drawdowns_table(sheet, zone="Asia/Tokyo")
    assert "start (Asia/Tokyo)" in table.columns and len(table) == min(5, len(sheet.drawdowns))
    relative = charts.relative_table(sheet).set_index("statistic")
    assert relative.loc["Beta", "value"] == pytest.approx(sheet.relative.beta)
    assert "8,760 bars/year" in relative.loc["Alpha (annual)", "meaning"]


def test_display_thinning_keeps_every_buckets_extremes():
    from engine.figures.style import display_rows

    rng = np.random.default_rng(3)
    series = np.cumsum(rng.normal(size=20_000))
    series[12_345] = series.max() + 5  # a spike a uniform stride would miss
    rows = display_rows([series], max_points=500)
    assert len(rows) <= 502 and rows[0] == 0 and rows[-1] == len(series) - 1
    assert 12_345 in rows and np.argmin(series) in rows
    assert np.array_equal(display_rows([series[:300]], max_points=500), np.arange(300))  # short: untouched


def test_sweep_table_has_a_row_per_cell_with_every_metric():
    grid = sweep(random_inputs(seed=1), StrategyConfig(), "threshold", [0.0, 0.05], "vol_target", [None, 0.2, 0.4])
    table = charts.sweep_table(grid)
    assert len(table) == 6 and list(table.columns[:2]) == ["threshold", "vol_target"]
    row = table[(table["threshold"] == 0.05) & (table["vol_target"] == 0.2)].iloc[0]
    assert row["sharpe"] == pytest.approx(grid.metrics["sharpe"][1, 1])
