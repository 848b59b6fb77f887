"""The Forecasts page, run through the real app on the seeded demo with the shipped hourly checkpoint."""
from __future__ import annotations

import pytest

from engine.model.checkpoint import DEMO_CHECKPOINT_DIR, published_files
from tests.app.conftest import figure_specs, open_page

PAGE = "views/forecasts.py"

pytestmark = pytest.mark.skipif(not published_files(DEMO_CHECKPOINT_DIR)[0].exists(),
                                reason="no demo checkpoint shipped")


def walk_forward_titles(at) -> list[str]:
    return [spec["layout"]["title"]["text"] for spec in figure_specs(at)
            if "walk-forward forecasts vs outcome" in spec["layout"]["title"]["text"]]


def test_one_walk_forward_fan_at_a_time_with_every_assets_coverage_and_the_calibration_of_all(seeded_db):
    at = open_page(PAGE, interval="1h")
    assert not at.exception, at.exception
    picker = at.segmented_control(key="fc_past_asset")
    assert picker.value == "BTC" and picker.options == ["BTC", "SPY", "AAPL"]
    assert at.query_params["fc_past_asset"] == "BTC"  # in the link, default included
    (title,) = walk_forward_titles(at)
    assert title.startswith("BTC")
    captions = " ".join(c.value for c in at.caption)
    for symbol in ("BTC", "SPY", "AAPL"):  # each asset's coverage is stated whichever fan is drawn
        assert f"{symbol}: " in captions and "scored forecasts; band coverage" in captions
    calibration = next(spec for spec in figure_specs(at) if "alibration" in spec["layout"]["title"]["text"])
    assert {trace.get("name", "") for trace in calibration["data"]} >= {"BTC", "SPY", "AAPL"}
    at.segmented_control(key="fc_past_asset").set_value("AAPL").run()
    assert not at.exception, at.exception
    (title,) = walk_forward_titles(at)
    assert title.startswith("AAPL") and at.query_params["fc_past_asset"] == "AAPL"
