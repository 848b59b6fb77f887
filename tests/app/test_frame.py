"""The shared frame: selections that live in the URL, a reset, and a status line on every page."""
from __future__ import annotations

from tests.app.conftest import figure_specs, open_page

DATA_PAGE = "views/data.py"  # the page whose price charts follow the selection


def _chart_titles(at) -> list[str]:
    return [spec["layout"]["title"]["text"] for spec in figure_specs(at)]


def test_a_shared_link_restores_symbols_and_interval(seeded_db):
    at = open_page(DATA_PAGE, symbols=["SPY"], interval="1h")
    assert at.sidebar.multiselect(key="symbols").value == ["SPY"]
    assert at.sidebar.selectbox(key="interval").value == "1h"
    assert [title.split("<br>")[0] for title in _chart_titles(at)] == ["SPY · 1h · source: demo"]


def test_reset_to_defaults_restores_the_demo_universe(seeded_db):
    # AppTest does not write widget values back into the URL (the browser test covers that), so the selection
    # is changed through the widget here rather than through a link.
    at = open_page()
    at.sidebar.multiselect(key="symbols").set_value(["SPY"]).run()
    at.sidebar.button[0].click().run()
    assert sorted(at.sidebar.multiselect(key="symbols").value) == ["AAPL", "BTC", "SPY"]
    # defaults are in the URL too: a link keeps its meaning when a default changes later
    assert sorted(at.query_params.get_all("symbols") if hasattr(at.query_params, "get_all")
                  else at.query_params["symbols"]) == ["AAPL", "BTC", "SPY"]


def test_status_line_names_source_checkpoint_and_device(seeded_db):
    at = open_page()
    status = next(c.value for c in at.caption if c.value.startswith("data: "))
    assert "BTC (demo)" in status and "checkpoint:" in status and "device: " in status


def test_the_date_range_narrows_what_is_shown(seeded_db):
    import datetime as dt

    at = open_page(DATA_PAGE, symbols=["BTC"], interval="1d")
    at.sidebar.date_input(key="dates").set_value((dt.date(2024, 1, 1), dt.date(2024, 1, 31))).run()
    assert not at.exception
    spec = figure_specs(at)[0]
    xs = spec["data"][0]["x"]
    assert xs[0].startswith("2024-01-01") and xs[-1].startswith("2024-01-31")


# --- the default selection follows what the cache holds -----------------------------------------------------------


def _summary(rows):
    import pandas as pd

    from storage.symbols import asset_name

    frame = pd.DataFrame(rows, columns=["symbol", "source", "interval", "rows"])
    return frame.assign(asset=[asset_name(s) for s in frame["symbol"]])


DEMO_ROWS = [(s, "demo", i, n) for s in ("BTC", "SPY", "AAPL") for i, n in (("1h", 26_000), ("1d", 1_096))]
DEMO_RUNS = [{"run_id": "demo", "interval": "1h", "demo": True}]


def _default(rows):
    from views.frame import _default_selection

    summary = _summary(rows)
    assets = sorted(set(summary["asset"]))
    intervals = [i for i in ("1h", "1d") if i in set(summary["interval"])]
    return _default_selection(summary, DEMO_RUNS, assets, intervals)


def test_without_real_data_the_default_is_the_demo_universe_at_the_demo_checkpoint_s_interval():
    assert _default(DEMO_ROWS) == (["BTC", "SPY", "AAPL"], "1h")


def test_real_data_is_preselected_at_the_interval_holding_most_of_the_usual_assets():
    real = [("BTC-USD", "yfinance", "1d", 3_000), ("SPY", "yfinance", "1d", 2_000), ("AAPL", "csv", "1d", 2_000),
            ("ETHUSDT", "csv", "1h", 40_000)]
    assert _default(DEMO_ROWS + real) == (["BTC", "SPY", "AAPL"], "1d")


def test_real_data_without_the_usual_assets_preselects_the_ones_with_most_bars():
    real = [("ETH-USD", "yfinance", "1d", 3_000), ("MSFT", "csv", "1d", 2_000), ("QQQ", "csv", "1d", 2_500),
            ("NVDA", "csv", "1d", 100), ("NEWCOIN", "ccxt", "1h", 0)]  # a failed fetch stores nothing
    assert _default(real) == (["ETH", "QQQ", "MSFT"], "1d")
    only_btc = [("BTCUSDT", "csv", "1h", 9_000), ("MSFT", "csv", "1h", 700)]
    assert _default(DEMO_ROWS + only_btc) == (["BTC", "MSFT"], "1h")
