"""Every model page states its verdict in words, from the findings (engine.diagnostics.findings), on three markets:

- the demo (planted lead: BTC leads SPY and AAPL by 3 bars at 1h), where the Lead-lag page lists that lead;
- the demo's null variant (no lead, one regime) with the same shipped checkpoint, where it says "No lead-lag found";
- real-looking daily vendor downloads with a model trained on them (the README walkthrough's cache and run).

The findings are computed once per checkpoint and data and cached beside the diagnostics, so the pages of one market
share them (the first page of the demo pays ~40 s on one core: scoring the shipped run against every baseline).
"""
from __future__ import annotations

import shutil

import pytest
import streamlit as st

from engine.diagnostics.findings import NO_LEAD_LAG, ONE_REGIME
from engine.model.checkpoint import DEMO_CHECKPOINT_DIR, published_files
from storage.refresh import RefreshRequest, run_refresh
from storage.sources.demo import DEMO_SYMBOLS
from tests.app.conftest import open_page, sampled
from tests.app.test_real_data_walkthrough import app_on_the_cache  # noqa: F401 (fixture)

MODEL_PAGES = ("views/overview.py", "views/forecasts.py", "views/lead_lag.py", "views/regimes.py",
               "views/lookback.py", "views/model.py")
SKILL_WORDS = ("edge", "no edge", "worse", "not scored", "No verdict on the forecasts' skill")
REGIME_WORDS = (ONE_REGIME, "regimes with different volatility", "distinct regimes", "volatility regimes")
LOOKBACK_WORDS = ("no difference in effective look-back between regimes found", ": look-back ")

pytestmark = pytest.mark.skipif(not published_files(DEMO_CHECKPOINT_DIR)[0].exists(),
                                reason="no demo checkpoint shipped")


def page_text(at) -> str:
    parts = [e.value for kind in ("markdown", "caption", "info", "success", "warning", "error", "subheader")
             for e in getattr(at, kind)]
    parts += [table.value.to_string() for table in at.table]
    return "\n".join(str(p) for p in parts)


def open_clean(page: str, **query):
    st.cache_data.clear()  # the frame caches the run list and the summary; each market is a new cache
    st.cache_resource.clear()
    at = open_page(page, **query)
    assert not at.exception, [e.value for e in at.exception]
    return at


def assert_states_a_verdict(at, page: str) -> str:
    text = page_text(at)
    if page == "views/overview.py":
        assert "Regimes tested on the data:" in text
        assert any(word in text for word in SKILL_WORDS)
    elif page == "views/forecasts.py":
        assert "Does the model beat the baselines?" in text
        assert "-bar: " in text or "No verdict on the forecasts' skill" in text
    elif page == "views/lead_lag.py":
        assert NO_LEAD_LAG in text or "lead(s) found" in text
        assert "a lead of k bars shows at key lag k − 1" in text  # the convention, said once
    elif page == "views/regimes.py":
        assert any(word in text for word in REGIME_WORDS)
        assert "A heavy diagonal means persistent regimes" not in text
    elif page == "views/lookback.py":
        assert any(word in text for word in LOOKBACK_WORDS)
    elif page == "views/model.py":
        runs = at.dataframe[-1].value
        assert "1-bar skill vs the best baseline" in runs.columns
        assert not any("p=" in str(value) for value in runs["1-bar skill vs the best baseline"])
    return text


# ----- the demo --------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("page", MODEL_PAGES)
def test_every_page_states_its_verdict_on_the_demo(seeded_db, page):
    at = open_clean(page)
    text = assert_states_a_verdict(at, page)
    if page == "views/lead_lag.py":
        found = at.table[0].value
        planted = found[(found["leader"] == "BTC") & (found["lead (bars)"].astype(int) == 3)]
        assert set(planted["follower"]) == {"SPY", "AAPL"}, found
        assert NO_LEAD_LAG not in text
        heatmaps = [c for c in at.get("plotly_chart") if "above an uninformed model" in c.proto.spec]
        assert heatmaps, "the map is drawn as excess over the uninformed model"
    if page == "views/forecasts.py":
        assert "one-sided" in text and "DM p" not in text
        assert_the_score_table_is_split_narrow(at)


def assert_the_score_table_is_split_narrow(at) -> None:
    """The score table against the baselines, which scrolled sideways at 1280 px as one table of fifteen columns
    (tests/browser/test_overflow.py), comes as two tables of losses of at most six columns, every loss in one of them,
    and the comparisons in words in a static table without repeating the row's forecaster."""
    boards = [frame.value for frame in at.dataframe if list(frame.value.columns[:1]) == ["forecaster"]]
    assert len(boards) == 2 and all(len(board.columns) <= 6 for board in boards), [list(b.columns) for b in boards]
    losses = {column for board in boards for column in board.columns}
    assert {"pinball", "mse", "brier", "qlike", "coverage_10_90"} <= losses
    assert all(board["forecaster"].iloc[0] == "model" for board in boards)
    words = next(table.value for table in at.table if "forecaster" in table.value.columns)
    assert "model" not in set(words["forecaster"]) and {"MSE", "Brier", "QLIKE", "pinball"} <= set(words.columns)
    for _, row in words.iterrows():
        cells = [str(row[column]) for column in ("MSE", "Brier", "QLIKE", "pinball")]
        assert not any(f" than {row['forecaster']}," in cell for cell in cells), cells
        assert all(cell.startswith(("better", "worse", "no ", "–")) or cell == "" for cell in cells), cells


# ----- the null demo ---------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def null_cache_template(tmp_path_factory):
    path = tmp_path_factory.mktemp("null-demo") / "bars.duckdb"
    report = run_refresh(RefreshRequest(symbols=DEMO_SYMBOLS, interval="1h", source="demo", db_path=path,
                                        source_options={"variant": "null"}))
    assert all(r.outcome == "ok" for r in report.results), report
    return path


@pytest.fixture
def null_db(null_cache_template, tmp_path, diagnostics_dir, monkeypatch):
    path = tmp_path / "bars.duckdb"
    shutil.copy(null_cache_template, path)
    monkeypatch.setenv("REGIME_DB", str(path))
    monkeypatch.setenv("REGIME_RUNS", str(tmp_path / "runs"))
    monkeypatch.setenv("REGIME_DIAGNOSTICS", str(diagnostics_dir))
    return path


@pytest.mark.parametrize("page", sampled(MODEL_PAGES))
def test_every_page_states_its_verdict_on_the_null_demo(null_db, page):
    at = open_clean(page)
    text = assert_states_a_verdict(at, page)
    if page == "views/lead_lag.py":
        assert NO_LEAD_LAG in text and not at.table
    if page in ("views/overview.py", "views/forecasts.py"):
        # the shipped run's forecasts were made on the planted data: no verdict is claimed on this one
        assert "No verdict on the forecasts' skill" in text


# ----- real-looking daily data -----------------------------------------------------------------------------------


@pytest.mark.parametrize("page", sampled(MODEL_PAGES))
def test_every_page_states_its_verdict_on_real_daily_data(app_on_the_cache, page):  # noqa: F811
    at = open_clean(page)
    assert not any("Synthetic demo data" in w.value for w in at.warning)
    assert_states_a_verdict(at, page)
