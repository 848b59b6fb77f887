"""The README's walkthrough, run as written: vendor downloads -> imports -> a model trained on a sub-span -> every
page of the app on the longer cache.

The files are written in the vendors' layouts (tests/fixtures/vendor_downloads.py); the commands are read from the
README block between the walkthrough markers, so the README cannot drift from what works. Only the training
budget is cut (one epoch, two folds) to keep the suite quick.
"""
from __future__ import annotations

from pathlib import Path

import pytest

# walked_through (the README's commands, run once per session) is tests/app/conftest.py's
from tests.app.conftest import open_page

ROOT = Path(__file__).resolve().parents[2]
PAGES = ["views/overview.py", "views/forecasts.py", "views/backtest.py", "views/regimes.py", "views/lead_lag.py",
         "views/lookback.py", "views/data.py", "views/model.py"]
def test_the_imports_report_what_the_vendor_files_needed(walked_through):
    _, outputs = walked_through
    spy = next(o for o in outputs if "SPY" in o and "import report" in o)
    assert "rows repaired" in spy and "OHLC off by float rounding" in spy  # yfinance auto_adjust's one-ulp rows
    assert "moved to their session date" in spy  # New York midnight stamps -> the session date


@pytest.fixture
def app_on_the_cache(walked_through, monkeypatch):
    home, _ = walked_through
    monkeypatch.setenv("REGIME_DB", str(home / "bars.duckdb"))
    monkeypatch.setenv("REGIME_RUNS", str(home / "runs"))
    monkeypatch.setenv("REGIME_DIAGNOSTICS", str(home / "diagnostics"))
    import streamlit as st

    st.cache_data.clear()  # the frame caches the run list for 30 s: an earlier module's list would hide the new run
    return home


def test_the_app_opens_on_the_real_data_with_the_new_checkpoint(app_on_the_cache):
    at = open_page()
    assert not at.exception, [e.value for e in at.exception]
    assert sorted(at.sidebar.multiselect(key="symbols").value) == ["AAPL", "BTC", "SPY"]
    assert at.sidebar.selectbox(key="interval").value == "1d"
    assert at.sidebar.selectbox(key="checkpoint").value is not None  # the run trained above fits this selection
    assert not any("Synthetic demo data" in w.value for w in at.warning)


@pytest.mark.parametrize("page", PAGES)
def test_every_page_renders_the_sub_span_checkpoint_on_the_longer_cache(app_on_the_cache, page):
    at = open_page(page)
    assert not at.exception, [e.value for e in at.exception]
    assert not any("fresh bars in the training rows" in e.value for e in at.error), [e.value for e in at.error]
