"""Real data first: a cache holding BTC as Yahoo names it (BTC-USD) beside SPY and AAPL, imported as files.

The bars are the demo market's hourly bars stored again under source "csv" (so the shipped demo checkpoint, trained
on those bars, fits them), beside the seeded demo itself. The sidebar must show BTC as one asset, preselect the real
data, find the checkpoint in any order of the symbols, and the model pages must run it in the checkpoint's order.
"""
from __future__ import annotations

import pytest

from storage.cache import upsert_bars
from storage.sources.demo import demo_market
from tests.app.conftest import open_page

STORED_AS = {"BTC": "BTC-USD", "SPY": "SPY", "AAPL": "AAPL"}


@pytest.fixture
def real_named_db(seeded_db):
    for asset, bars in demo_market("1h").bars.items():
        upsert_bars(bars, STORED_AS[asset], "csv", "1h", db_path=seeded_db)
    return seeded_db


def status_line(at) -> str:
    return next(c.value for c in at.caption if c.value.startswith("data: "))


def test_the_sidebar_preselects_the_real_btc_spy_aapl_and_the_demo_checkpoint_fits(real_named_db):
    at = open_page()
    assert not at.exception, at.exception
    symbols = at.sidebar.multiselect(key="symbols")
    assert symbols.value == ["BTC", "SPY", "AAPL"]
    assert "BTC-USD" not in symbols.options  # one asset, however it is stored
    assert at.sidebar.selectbox(key="interval").value == "1h"  # the interval with real bars
    assert at.sidebar.selectbox(key="checkpoint").value == "demo-1h"  # by run id (the URL pins it so)
    assert not any("No checkpoint fits" in c.value for c in at.sidebar.caption)
    status = status_line(at)
    assert "BTC (BTC-USD, csv)" in status and "SPY (csv)" in status and "AAPL (csv)" in status
    assert not any("Synthetic demo data" in w.value for w in at.warning)  # real data over the demo


@pytest.mark.parametrize("page", ["views/overview.py", "views/backtest.py"])
def test_the_model_pages_render_on_the_real_named_data(real_named_db, page):
    at = open_page(page)
    assert not at.exception, [e.value for e in at.exception]
    assert not at.error, [e.value for e in at.error]


def test_the_backtest_states_its_span_and_ends_with_the_last_forecast(real_named_db):
    at = open_page("views/backtest.py")
    assert at.selectbox(key="bt_forecaster").value == "model (walk-forward)"
    span = next(c.value for c in at.caption if c.value.startswith("**Backtested span:**"))
    assert "the bars with out-of-sample forecasts" in span
    assert "2023-12-23 00:00 .. 2024-12-31 23:00 UTC" in span  # the demo checkpoint's walk-forward test spans


def test_symbols_picked_in_another_order_still_find_the_checkpoint_and_run_it_in_its_order(real_named_db):
    at = open_page("views/overview.py", symbols=["SPY", "AAPL", "BTC"], interval="1h")
    assert not at.exception, [e.value for e in at.exception]
    assert at.sidebar.multiselect(key="symbols").value == ["SPY", "AAPL", "BTC"]
    assert at.sidebar.selectbox(key="checkpoint").value == "demo-1h"  # by run id (the URL pins it so)
    assert any("own order: BTC, SPY, AAPL" in c.value for c in at.sidebar.caption)
    cards = [m.value for m in at.markdown if m.value.startswith("#### ")]
    assert cards == ["#### BTC", "#### SPY", "#### AAPL"]

    at.sidebar.multiselect(key="symbols").set_value(["AAPL", "BTC", "SPY"]).run()
    assert not at.exception, [e.value for e in at.exception]
    assert at.sidebar.selectbox(key="checkpoint").value == "demo-1h"  # by run id (the URL pins it so)


def test_the_last_close_shown_is_the_stored_series(real_named_db):
    at = open_page("views/overview.py")
    last_close = next(m.value for m in at.metric if m.label == "Last close")  # the first card: BTC
    btc = demo_market("1h").bars["BTC"]
    assert last_close == f"{btc['close'].iloc[-1]:,.2f}"
