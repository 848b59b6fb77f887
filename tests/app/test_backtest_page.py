"""The Backtest page, run through the real app (navigation and frame) on the seeded demo cache."""
from __future__ import annotations

import pytest

from tests.app.conftest import figure_specs, open_page

PAGE = "views/backtest.py"


@pytest.fixture
def page(seeded_db):
    # Daily bars: no shipped checkpoint fits them (the demo checkpoint is hourly), so the baseline drives the page.
    at = open_page(PAGE, interval="1d")
    assert not at.exception, at.exception
    return at


def metric_values(at) -> dict[str, str]:
    return {m.label: m.value for m in at.metric}


def test_the_page_says_which_forecaster_drives_it_and_that_the_data_is_synthetic(page):
    captions = " ".join(c.value for c in page.caption)
    assert "logistic regression" in captions and "out-of-sample" in captions
    titles = [spec["layout"]["title"]["text"] for spec in figure_specs(page)]
    assert any(t.startswith("Equity, drawdown and rolling Sharpe") for t in titles)
    assert any(t.startswith("Monthly") for t in titles)
    for spec in figure_specs(page):
        notes = [a.get("text", "") for a in spec["layout"].get("annotations", [])]
        assert "SYNTHETIC DEMO DATA" in notes, spec["layout"]["title"]["text"]


def test_metrics_state_the_annualisation_and_count_each_distinct_setting_as_a_trial(page):
    sharpe = next(m for m in page.metric if m.label == "Sharpe ratio")
    assert "365 bars/year" in sharpe.help  # daily BTC sets the panel clock
    assert "DSR (1 trials)" in metric_values(page)
    before = metric_values(page)["Sharpe ratio"]
    page.slider(key="bt_threshold").set_value(0.1).run()
    assert not page.exception, page.exception
    values = metric_values(page)
    assert "DSR (2 trials)" in values
    assert values["Sharpe ratio"] != before
    page.slider(key="bt_threshold").set_value(0.02).run()  # back to a setting already tried: no new trial
    assert "DSR (2 trials)" in metric_values(page)


def section_titles(at) -> list[str]:
    return [spec["layout"]["title"]["text"] for spec in figure_specs(at)]


def test_one_section_is_drawn_at_a_time_and_every_csv_stays_downloadable(page):
    # Charts (the default): the stacked performance chart and the monthly heatmap; no tearsheet, no trades table
    assert page.segmented_control(key="bt_section").value == "Charts"
    assert page.query_params["bt_section"] == "Charts"  # defaults included: a link reopens the same section
    labels = [b.label for b in page.get("download_button")]
    assert labels.count("HTML") == 2 and "Export report (HTML)" in labels
    assert not page.table and not any("side" in frame.value.columns for frame in page.dataframe)
    for name in ("Trades", "Equity", "Metrics", "Worst drawdowns", "Yearly returns", "Monthly returns",
                 "Against buy and hold"):
        assert f"{name} (CSV)" in labels  # built on click, whichever section is open
    page.segmented_control(key="bt_section").set_value("Metrics and tearsheet").run()
    assert not page.exception, page.exception
    titles = section_titles(page)
    assert any(t.startswith("Per-bar net returns") for t in titles) and not any(t.startswith("Equity") for t in titles)
    assert page.table and page.query_params["bt_section"] == "Metrics and tearsheet"
    page.segmented_control(key="bt_section").set_value("Trades").run()
    assert not figure_specs(page) and any("side" in frame.value.columns for frame in page.dataframe)
    linked = open_page(PAGE, interval="1d", bt_section="Trades")  # the section comes back from a link
    assert not linked.exception, linked.exception
    assert linked.segmented_control(key="bt_section").value == "Trades"


def test_costs_lower_the_strategy_and_every_chart_has_download_buttons(seeded_db):
    page = open_page(PAGE, interval="1d", bt_section="Metrics and tearsheet")
    low_cost = page.table[0].value  # the metrics table
    page.slider(key="bt_commission").set_value(20.0).run()
    high_cost = page.table[0].value
    total = lambda table: float(table.set_index("metric").loc["Total return", "strategy"].rstrip("%"))
    assert total(high_cost) < total(low_cost)
    labels = [b.label for b in page.get("download_button")]
    assert labels.count("HTML") == 2 and "Export report (HTML)" in labels  # the tearsheet's 2 charts


def test_benchmark_values_carry_no_arrow_and_the_tearsheet_and_trades_follow_the_chosen_zone(seeded_db):
    from streamlit.proto.Metric_pb2 import Metric

    page = open_page(PAGE, interval="1d", bt_section="Metrics and tearsheet")
    benchmark = [m for m in page.metric if m.proto.delta.startswith("B&H")]
    assert len(benchmark) == 3
    assert all(m.proto.direction == Metric.NONE and m.proto.color == Metric.GRAY for m in benchmark)
    titles = [spec["layout"]["title"]["text"] for spec in figure_specs(page)]
    assert any(t.startswith("Per-bar net returns") for t in titles) and any(t.startswith("Yearly") for t in titles)
    page.sidebar.selectbox(key="tz").set_value("America/New_York").run()  # the frame's "Time zone of tables"
    assert not page.exception, page.exception
    columns = [list(table.value.columns) for table in page.table]
    assert any("start (America/New_York)" in c for c in columns)
    # the worst drawdowns' depths are shown as percentages (a second Styler.format call once reset them to decimals)
    drawdowns = next(table for table in page.table if "depth" in table.value.columns)
    shown = displayed(drawdowns)
    assert len(shown) and all(text.endswith("%") and text.startswith(("-", "−", "+0.00")) for text in shown), shown
    page.segmented_control(key="bt_section").set_value("Trades").run()
    assert any("entry (America/New_York)" in list(frame.value.columns) for frame in page.dataframe)


def displayed(table, column: str = "depth") -> list[str]:
    """The texts a styled st.table shows in `column` (AppTest's .value holds the numbers before formatting)."""
    import pyarrow as pa

    values = pa.ipc.open_stream(table.proto.arrow_data.styler.display_values).read_all().to_pandas()
    return [str(text) for text in values[column] if str(text) not in ("", "None", "nan")]


def dsr_trials(at) -> int:
    return int(next(label for label in metric_values(at) if label.startswith("DSR")).split("(")[1].split()[0])


def test_a_sweep_draws_a_heatmap_and_counts_its_cells_as_trials_in_later_sessions_too(page):
    page.button(key="bt_run_sweep").click().run()
    assert not page.exception, page.exception
    heatmaps = [s for s in figure_specs(page) if s["layout"]["title"]["text"].startswith("Sweep")]
    assert len(heatmaps) == 1 and heatmaps[0]["data"][0]["type"] == "heatmap"
    page.slider(key="bt_threshold").set_value(0.035).run()
    assert dsr_trials(page) == 7 * 6 + 1  # the 7 x 6 grid of threshold x max_position (the default setting is
    # one of its cells) and 0.035 tried by hand
    later = open_page(PAGE, interval="1d")  # a new session (a shared link, a restart) on the same data
    assert not later.exception, later.exception
    assert dsr_trials(later) == 7 * 6 + 1
    later.slider(key="bt_threshold").set_value(0.045).run()
    assert dsr_trials(later) == 7 * 6 + 2


def test_the_selected_checkpoint_drives_the_backtest_with_its_walk_forward_forecasts(seeded_db):
    at = open_page(PAGE, interval="1h", bt_section="Trades")
    assert not at.exception, at.exception
    assert at.selectbox(key="bt_forecaster").value == "model (walk-forward)"
    captions = " ".join(c.value for c in at.caption)
    assert "model: walk-forward out-of-sample forecasts" in captions
    sharpe = next(m for m in at.metric if m.label == "Sharpe ratio")
    assert "8,760 bars/year" in sharpe.help  # hourly BTC sets the panel clock
    model_sharpe = sharpe.value
    # hourly bars trade often: the page's table holds the newest 100 trades and says how many the CSV holds
    shown = next(frame.value for frame in at.dataframe if "side" in frame.value.columns)
    captions = " ".join(c.value for c in at.caption)
    assert len(shown) == 100 and "The latest 100 of " in captions, (len(shown), captions[-300:])
    at.selectbox(key="bt_forecaster").set_value("logistic baseline").run()
    assert "logistic regression" in " ".join(c.value for c in at.caption)
    assert next(m for m in at.metric if m.label == "Sharpe ratio").value != model_sharpe
