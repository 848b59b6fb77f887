"""No dead ends (issue 17): after each failure an analyst meets, every page still renders something useful.

The failures: a garbage file imported, a new symbol refreshed while offline (both leave a refresh-log row and no
bars), daily bars asked for with the hourly demo checkpoint (`?interval=1d`), and one symbol removed from the
selection. A model page that has no fitting checkpoint shows the selection's prices and data quality, says the
true reason (interval or symbols, and which) and offers one click: the checkpoint's own universe, or training this
one on the Model page.
"""
from __future__ import annotations

import socket

import pytest

from storage.refresh import RefreshRequest, import_uploaded_file, run_refresh
from tests.app.conftest import figure_specs, open_page, sampled

PAGES = ["views/overview.py", "views/forecasts.py", "views/backtest.py", "views/regimes.py", "views/lead_lag.py",
         "views/lookback.py", "views/data.py", "views/model.py"]
MODEL_PAGES = {"views/overview.py", "views/forecasts.py", "views/regimes.py", "views/lead_lag.py",
               "views/lookback.py"}


def _offline(monkeypatch) -> None:
    """No network: every socket connection is refused (as on a laptop in a train), and retries do not wait."""
    def refuse(*args, **kwargs):
        raise OSError(101, "Network is unreachable")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket, "create_connection", refuse)
    from storage.sources.ccxt_source import CcxtSource

    built = CcxtSource.__init__

    def no_waiting(self, *args, **kwargs):
        built(self, *args, **{"sleep": lambda seconds: None, **kwargs})

    monkeypatch.setattr(CcxtSource, "__init__", no_waiting)


@pytest.fixture
def garbage_import(seeded_db):
    report = import_uploaded_file("garbage.csv", b"this,is\nnot,a price file\n\x00\x01\x02", "JUNK", "1h", seeded_db)
    assert [r.outcome for r in report.results] == ["error"]
    return seeded_db


@pytest.fixture
def offline_refresh(seeded_db):
    with pytest.MonkeyPatch.context() as offline:  # the pages then run with the network as it is
        _offline(offline)
        report = run_refresh(RefreshRequest(symbols=("NEWCOIN",), interval="1h", source="ccxt", db_path=seeded_db))
    assert [r.outcome for r in report.results] == ["error"]
    assert "did not answer" in report.results[0].message
    return seeded_db


def _no_exception(at) -> None:
    assert not at.exception, [e.value for e in at.exception]


FAILURES = {"garbage_import": "JUNK", "offline_refresh": "NEWCOIN"}  # fixture -> the symbol left without bars


@pytest.mark.parametrize("failure", FAILURES)
@pytest.mark.parametrize("page", sampled(PAGES, keep=("views/data.py",)))
def test_every_page_renders_after_a_failed_import_or_refresh(request, failure, page):
    request.getfixturevalue(failure)
    at = open_page(page)
    _no_exception(at)
    if page == "views/data.py":
        symbol = FAILURES[failure]
        assert any(symbol in w.value and "no bars" in w.value for w in at.warning), [w.value for w in at.warning]
        assert at.text_input(key="import_symbol") is not None  # the import form is still there


def _fallback_shown(at, reason: str) -> None:
    warnings = [w.value for w in at.warning]
    assert any("No checkpoint fits" in w and reason in w for w in warnings), warnings
    titles = [spec["layout"]["title"]["text"] for spec in figure_specs(at)]
    assert titles and all("·" in title for title in titles), titles  # the selection's price charts
    assert any(list(table.value.columns)[:1] == ["asset"] for table in at.dataframe)  # its data quality


@pytest.mark.parametrize("page", sampled(PAGES, keep=("views/overview.py",)))
def test_daily_bars_with_the_hourly_checkpoint_say_the_interval_is_the_reason(seeded_db, page):
    at = open_page(page, interval="1d")
    _no_exception(at)
    if page in MODEL_PAGES:
        _fallback_shown(at, "interval: it was trained on 1h bars, the selection is 1d")
        assert not any("symbols:" in w.value for w in at.warning)  # the universe is not blamed
        links = [link.proto.label for link in at.get("page_link")]
        assert "Train a model on BTC, SPY, AAPL at 1d" in links, links


@pytest.mark.parametrize("page", sampled(PAGES, keep=("views/lead_lag.py",)))
def test_one_symbol_removed_says_which_symbol_is_missing(seeded_db, page):
    at = open_page(page, symbols=["BTC", "SPY"], interval="1h")
    _no_exception(at)
    if page in MODEL_PAGES:
        _fallback_shown(at, "the selection lacks AAPL")
        assert not any("interval:" in w.value for w in at.warning)


def test_one_click_switches_to_the_checkpoint_s_universe_and_shows_the_model(seeded_db):
    at = open_page("views/overview.py", interval="1d")
    at.button(key="fallback_switch").click().run()
    _no_exception(at)
    assert at.sidebar.selectbox(key="interval").value == "1h"
    assert at.sidebar.selectbox(key="checkpoint").value == "demo-1h"
    assert at.query_params["interval"] == ["1h"] or at.query_params["interval"] == "1h"
    assert not any("No checkpoint fits" in w.value for w in at.warning)
    assert any(m.label == "Last close" for m in at.metric)  # the model's Overview cards


# ----- the default checkpoint is a rule the user sets, never recency -----------------------------------------------


def _register(runs_dir, run_id: str, created_at: str, interval: str) -> None:
    """A registry line for a copy of the demo checkpoint (registered as trained at `interval`)."""
    import json
    import shutil

    from engine.model.checkpoint import (
        DEMO_CHECKPOINT_DIR,
        MANIFEST_FILE,
        REGISTRY_FILE,
    )

    directory = runs_dir.parent / "checkpoints" / run_id
    shutil.copytree(DEMO_CHECKPOINT_DIR, directory)
    manifest = json.loads((directory / MANIFEST_FILE).read_text())
    manifest["run_id"] = run_id
    (directory / MANIFEST_FILE).write_text(json.dumps(manifest))
    runs_dir.mkdir(parents=True, exist_ok=True)
    with open(runs_dir / REGISTRY_FILE, "a") as registry:
        registry.write(json.dumps({"run_id": run_id, "path": str(directory), "created_at": created_at,
                                   "symbols": ["BTC", "SPY", "AAPL"], "interval": interval, "device": "cpu"}) + "\n")


def test_a_new_run_never_becomes_the_default_and_use_as_default_pins_one(seeded_db):
    import streamlit as st

    # Daily runs (the demo checkpoint is hourly, so the rule falls through to the runs of this universe). Their
    # weights are the hourly demo's, so the model pages refuse them at once: the sweep stays cheap.
    runs_dir = seeded_db.parent / "runs"  # REGIME_RUNS
    _register(runs_dir, "first-run", "2026-11-01T10:00:00Z", "1d")
    _register(runs_dir, "toy-run", "2026-12-01T10:00:00Z", "1d")  # newer: a one-fold toy from the Model page
    st.cache_data.clear()
    at = open_page("views/model.py", interval="1d")
    _no_exception(at)
    assert at.sidebar.selectbox(key="checkpoint").value == "first-run"  # never the newest
    at.selectbox(key="pin_choice").set_value("toy-run").run()
    at.button(key="pin_default").click().run()
    _no_exception(at)
    assert at.sidebar.selectbox(key="checkpoint").value == "toy-run"
    assert (runs_dir / "default_run.json").exists()
    fresh = open_page("views/data.py", interval="1d")  # a new session follows the pinned rule
    assert fresh.sidebar.selectbox(key="checkpoint").value == "toy-run"
    assert fresh.query_params["checkpoint"] in ("toy-run", ["toy-run"])  # and its link pins it
    linked = open_page("views/data.py", interval="1d", checkpoint="first-run")  # a link's own run wins
    assert linked.sidebar.selectbox(key="checkpoint").value == "first-run"
    hourly = open_page("views/data.py", interval="1h")  # where the pinned run does not fit: the demo
    assert hourly.sidebar.selectbox(key="checkpoint").value == "demo-1h"
