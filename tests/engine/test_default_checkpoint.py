"""The default checkpoint is a rule the user sets (pinned, else the demo, else the first run of the universe), never
the newest; a misfit names its cause (interval or symbols, and which)."""
from __future__ import annotations

from engine.model.checkpoint import (
    default_run,
    misfit_text,
    pin_default,
    pinned_default,
)

DEMO = {"run_id": "demo-1h", "demo": True, "symbols": ["BTC", "SPY", "AAPL"], "interval": "1h"}
OLD = {"run_id": "old", "symbols": ["BTC", "SPY", "AAPL"], "interval": "1h", "created_at": "2026-01-01T00:00:00Z"}
NEW = {"run_id": "new", "symbols": ["BTC", "SPY", "AAPL"], "interval": "1h", "created_at": "2026-12-01T00:00:00Z"}
FORGED = {**NEW, "run_id": "forged", "created_at": "1970-01-01T00:00:00Z", "date_trusted": False}


def test_the_rule_is_pinned_then_demo_then_first_never_newest():
    assert default_run([NEW, OLD, DEMO], None)[0]["run_id"] == "demo-1h"
    assert default_run([NEW, OLD, DEMO], "new")[0]["run_id"] == "new"
    assert default_run([NEW, OLD], None)[0]["run_id"] == "old"  # the newest never wins by being new
    assert default_run([NEW, OLD], "gone")[0]["run_id"] == "old"  # a pinned run that is not here
    assert default_run([FORGED, NEW], None)[0]["run_id"] == "new"  # an unbelievable date comes last
    assert default_run([], "new") == (None, "no checkpoint fits")


def test_pinning_is_stored_beside_the_registry(tmp_path):
    assert pinned_default(tmp_path) is None
    pin_default("old", tmp_path)
    assert pinned_default(tmp_path) == "old"
    (tmp_path / "default_run.json").write_text("{not json")
    assert pinned_default(tmp_path) is None  # a broken file is no pin, never an error
    pin_default("new", tmp_path)
    pin_default(None, tmp_path)
    assert pinned_default(tmp_path) is None


def test_the_misfit_names_its_cause():
    assert misfit_text(DEMO, ["BTC", "SPY", "AAPL"], "1d") == (
        "interval: it was trained on 1h bars, the selection is 1d")
    assert misfit_text(DEMO, ["BTC", "SPY"], "1h") == (
        "symbols: it was trained on BTC, SPY, AAPL; the selection lacks AAPL")
    both = misfit_text(DEMO, ["BTC-USD", "SPY", "MSFT"], "1d")
    assert "interval:" in both and "lacks AAPL" in both and "never saw MSFT" in both and "BTC" not in both.split(";")[-1]
    assert misfit_text(DEMO, ["AAPL", "BTC-USD", "SPY"], "1h") == ""  # fits: any order, any spelling
