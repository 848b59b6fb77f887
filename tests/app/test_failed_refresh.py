"""A failed import or refresh for a symbol with no bars leaves a refresh_log row and no bars: every page must still
render, and the Data page's forms must stay reachable (it once raised on formatting the missing last bar)."""
from __future__ import annotations

import pandas as pd
import pytest

from storage.cache import RefreshLogEntry, log_refresh
from tests.app.conftest import open_page, sampled

PAGES = ["views/overview.py", "views/forecasts.py", "views/backtest.py", "views/regimes.py", "views/lead_lag.py",
         "views/lookback.py", "views/data.py", "views/model.py"]


@pytest.fixture
def failed_refresh(seeded_db):
    now = pd.Timestamp.now(tz="UTC")
    log_refresh(RefreshLogEntry(now, now, "tester", "refresh --source ccxt --symbols NEWCOIN", "error",
                                symbol="NEWCOIN", source="ccxt", interval="1h", error="network unreachable"),
                db_path=seeded_db)
    return seeded_db


@pytest.mark.parametrize("page", sampled(PAGES, keep=("views/overview.py", "views/data.py", "views/lead_lag.py",
                                                     "views/backtest.py")))
def test_every_page_renders_after_a_failed_refresh_of_a_symbol_without_bars(failed_refresh, page):
    at = open_page(page)
    assert not at.exception, [e.value for e in at.exception]


def test_the_data_page_keeps_its_import_form_and_names_the_failure(failed_refresh):
    at = open_page("views/data.py")
    assert not at.exception, [e.value for e in at.exception]
    assert at.text_input(key="import_symbol") is not None
    assert any("NEWCOIN" in w.value and "no bars" in w.value for w in at.warning), [w.value for w in at.warning]


def test_picking_the_symbol_without_bars_says_so_instead_of_failing(failed_refresh):
    at = open_page("views/data.py", interval="1h")
    assert "NEWCOIN" in at.sidebar.multiselect(key="symbols").options  # the log row makes it a known symbol
    at.sidebar.multiselect(key="symbols").set_value(["NEWCOIN"]).run()
    assert not at.exception, [e.value for e in at.exception]
    assert any("No 1h bars cached for NEWCOIN" in i.value for i in at.info), [i.value for i in at.info]
