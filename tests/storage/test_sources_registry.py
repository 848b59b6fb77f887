"""get_source: one entry point for the fetching sources, with the slow libraries imported only on demand."""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from storage.sources import FETCH_SOURCE_NAMES, get_source

ROOT = Path(__file__).parents[2]


def test_each_fetching_source_is_built_by_name():
    assert FETCH_SOURCE_NAMES == ("demo", "yfinance", "ccxt")
    for name in FETCH_SOURCE_NAMES:
        assert get_source(name).name == name


def test_options_reach_the_source():
    source = get_source("ccxt", exchange="binance", quote="USDC")
    assert source.pair("BTC") == "BTC/USDC" and source.page_size == 1000
    assert get_source("demo", variant="null", seed=3).variant == "null"


def test_unknown_names_and_options_are_clear_errors():
    with pytest.raises(ValueError, match="not known: choose one of demo, yfinance, ccxt"):
        get_source("bloomberg")
    with pytest.raises(ValueError, match="file import.*read_bar_file"):
        get_source("csv")
    with pytest.raises(ValueError, match="does not accept options"):
        get_source("demo", exchange="bybit")


def test_the_demo_path_never_imports_yfinance_or_ccxt():
    script = (
        "import sys\n"
        "from storage.sources import get_source, read_bar_file, DemoSource\n"
        "get_source('demo').fetch('BTC', '1d')\n"
        "print(sorted(m for m in ('yfinance', 'ccxt') if m in sys.modules))\n"
    )
    result = subprocess.run([sys.executable, "-c", script], cwd=ROOT, capture_output=True, text=True, check=True)
    assert result.stdout.strip() == "[]"
