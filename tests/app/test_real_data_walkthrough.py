"""The README's walkthrough, run as written: vendor downloads -> imports -> a model trained on a sub-span -> every
page of the app on the longer cache.

The files are written in the vendors' layouts (tests/fixtures/vendor_downloads.py); the commands are read from the
README block between the walkthrough markers, so the README cannot drift from what works. Only the training
budget is cut (one epoch, two folds) to keep the suite quick.
"""
from __future__ import annotations

import os
import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

from tests.app.conftest import open_page
from tests.fixtures.vendor_downloads import write_downloads

ROOT = Path(__file__).resolve().parents[2]
PAGES = ["views/overview.py", "views/forecasts.py", "views/backtest.py", "views/regimes.py", "views/lead_lag.py",
         "views/lookback.py", "views/data.py", "views/model.py"]
QUICK_TRAINING = ["--epochs", "1", "--folds", "2"]


def readme_walkthrough() -> list[list[str]]:
    text = (ROOT / "README.md").read_text()
    block = re.search(r"<!-- walkthrough.*?```bash\n(.*?)```\n<!-- /walkthrough -->", text, re.S)
    assert block, "README.md lost its walkthrough block"
    return [shlex.split(line) for line in block.group(1).splitlines() if line.strip()]


@pytest.fixture(scope="module")
def walked_through(tmp_path_factory):
    """Run the README's commands on downloads in a fresh folder -> (cache, runs dir, outputs)."""
    home = tmp_path_factory.mktemp("walkthrough")
    downloads = write_downloads(home / "Downloads")
    env = {**os.environ, "REGIME_DB": str(home / "bars.duckdb"), "REGIME_RUNS": str(home / "runs"),
           "REGIME_DIAGNOSTICS": str(home / "diagnostics"), "OMP_NUM_THREADS": "1"}
    outputs = []
    for command in readme_walkthrough():
        if command[:2] == ["streamlit", "run"]:
            continue  # the pages are opened below through AppTest
        assert command[:2] == ["python", "-m"], command
        argv = [sys.executable, *command[1:]] + (QUICK_TRAINING if command[2] == "engine.train" else [])
        argv = [arg.replace("~/Downloads", str(downloads["SPY"].parent)) for arg in argv]
        done = subprocess.run(argv, cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
        assert done.returncode == 0, f"{' '.join(command)} failed:\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}"
        outputs.append(done.stdout + done.stderr)
    return home, outputs


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
