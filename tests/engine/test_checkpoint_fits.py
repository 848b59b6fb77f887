"""Which checkpoints fit a selection: the same set of assets (by asset name, any spelling, any order) at the same
interval; and a model runs only on a panel in its own asset order."""
from __future__ import annotations

import pytest

from engine.model.checkpoint import (
    DEMO_CHECKPOINT_DIR,
    CheckpointError,
    check_fits,
    fitting_runs,
    list_runs,
    load_checkpoint,
)

RUNS = [
    {"run_id": "a", "symbols": ["BTC", "SPY", "AAPL"], "interval": "1h"},
    {"run_id": "b", "symbols": ["BTC-USD", "SPY"], "interval": "1d"},
    {"run_id": "c", "symbols": ["SPY", "AAPL", "BTCUSDT"], "interval": "1d"},
]


def fitting(symbols, interval):
    return [run["run_id"] for run in fitting_runs(RUNS, symbols, interval)]


def test_a_run_fits_the_same_set_of_assets_in_any_order_and_spelling():
    assert fitting(("BTC", "SPY", "AAPL"), "1h") == ["a"]
    assert fitting(("SPY", "AAPL", "BTC"), "1h") == ["a"]
    assert fitting(("AAPL", "BTC-USD", "SPY"), "1d") == ["c"]
    assert fitting(("SPY", "BTC"), "1d") == ["b"]


def test_a_run_does_not_fit_another_set_or_interval():
    assert fitting(("BTC", "SPY"), "1h") == []
    assert fitting(("BTC", "SPY", "AAPL", "ETH"), "1h") == []
    assert fitting(("ETH", "SPY"), "1d") == []


def test_the_demo_checkpoint_is_listed_with_its_assets_in_its_order(tmp_path):
    demo = [run for run in list_runs(tmp_path) if run.get("demo")]
    assert len(demo) == 1 and demo[0]["assets"] == ["BTC", "SPY", "AAPL"]
    assert fitting_runs(demo, ("AAPL", "SPY", "BTC"), demo[0]["interval"]) == demo


def test_check_fits_accepts_any_spelling_in_the_model_s_order_and_says_when_only_the_order_differs():
    _, manifest = load_checkpoint(DEMO_CHECKPOINT_DIR)
    features = manifest.feature_names
    check_fits(manifest, symbols=("BTC-USD", "SPY", "AAPL"), interval="1h", feature_names=features)
    with pytest.raises(CheckpointError, match="read the panel in the checkpoint's order, BTC, SPY, AAPL"):
        check_fits(manifest, symbols=("SPY", "AAPL", "BTC"), interval="1h", feature_names=features)
    with pytest.raises(CheckpointError, match="trained on symbols") as error:
        check_fits(manifest, symbols=("BTC", "SPY"), interval="1h", feature_names=features)
    assert "order" not in str(error.value)
