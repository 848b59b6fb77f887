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
    assert _chart_titles(at) == ["SPY · 1h · source: demo"]


def test_reset_to_defaults_restores_the_demo_universe(seeded_db):
    # AppTest does not write widget values back into the URL (the browser test covers that), so the selection
    # is changed through the widget here rather than through a link.
    at = open_page()
    at.sidebar.multiselect(key="symbols").set_value(["SPY"]).run()
    at.sidebar.button[0].click().run()
    assert sorted(at.sidebar.multiselect(key="symbols").value) == ["AAPL", "BTC", "SPY"]
    assert "symbols" not in at.query_params


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
