"""Hostile checkpoints registered beside the demo (issue 16): every model page shows a message naming the checkpoint
and what went wrong, never a traceback; the other pages still work; a forged registry date does not make the
default checkpoint.

Each hostile run is a copy of the shipped demo checkpoint (so it fits the seeded demo cache at 1h) with one thing
broken: a model too large to build, a null scaler, a NaN weight, a format from the future; a fifth is sound but
registered with a date in 2099.
"""
from __future__ import annotations

import json
import shutil
from datetime import datetime, timedelta, timezone
from pathlib import Path

import pytest
import streamlit as st
from safetensors.torch import load_file, save_file

from engine.model.checkpoint import DEMO_CHECKPOINT_DIR, MANIFEST_FILE, REGISTRY_FILE, WEIGHTS_FILE
from tests.app.conftest import open_page

MODEL_PAGES = ("views/overview.py", "views/forecasts.py", "views/regimes.py", "views/lead_lag.py",
               "views/lookback.py")
INTERVAL = "1h"


def _huge(manifest, weights_path):
    manifest["model_config"]["d_model"] = 32768


def _null_scaler(manifest, weights_path):
    manifest["scaler"] = None


def _nan_weights(manifest, weights_path):
    weights = load_file(str(weights_path))
    weights["layers.0.A_log"][0, 0] = float("nan")
    save_file(weights, str(weights_path))


def _format_99(manifest, weights_path):
    manifest["format_version"] = 99


# run id -> (how it is broken, what its message says, hours before now it is registered at)
HOSTILE = {
    "huge-dmodel": (_huge, "d_model=32768 is more than the app runs (d_model <= 1024)", 1),
    "null-scaler": (_null_scaler, "manifest field scaler: scaler must be a JSON object, got NoneType", 2),
    "nan-weights": (_nan_weights, "tensor layers.0.A_log holds 1 NaN or infinite value(s)", 3),
    "format-99": (_format_99, "checkpoint format 99 is newer than this code reads (format 3)", 4),
}
FORGED = "forged-date"


@pytest.fixture
def hostile_runs(seeded_db, tmp_path):
    runs = tmp_path / "runs"  # REGIME_RUNS (conftest.seeded_db)
    runs.mkdir()
    now = datetime.now(timezone.utc)
    lines = []
    for run_id, (breaks, _, hours) in {**HOSTILE, FORGED: (lambda m, w: None, "", 0)}.items():
        directory = tmp_path / "checkpoints" / run_id
        shutil.copytree(DEMO_CHECKPOINT_DIR, directory)
        manifest = json.loads((directory / MANIFEST_FILE).read_text())
        manifest["run_id"] = run_id
        breaks(manifest, directory / WEIGHTS_FILE)
        (directory / MANIFEST_FILE).write_text(json.dumps(manifest))
        created = "2099-01-01T00:00:00Z" if run_id == FORGED else (now - timedelta(hours=hours)).isoformat()
        lines.append(json.dumps({"run_id": run_id, "path": str(directory), "created_at": created,
                                 "symbols": ["BTC", "SPY", "AAPL"], "interval": INTERVAL, "device": "cpu",
                                 "span": ["2022-01-01", "2024-12-31"], "scores": {"assets": "nonsense"}}))
    lines += ["{broken json", json.dumps(["not", "an", "entry"]), json.dumps({"run_id": 5, "path": None})]
    (runs / REGISTRY_FILE).write_text("\n".join(lines) + "\n")
    st.cache_data.clear()  # the frame caches the run list: another test's list would hide these
    return runs


def labels(at) -> list[str]:
    return list(at.sidebar.selectbox(key="checkpoint").options)


def label_of(at, run_id: str) -> str:
    return next(label for label in labels(at) if label.startswith(f"{run_id} ("))


def errors(at) -> list[str]:
    # as read: the pages embolden the run id and escape Markdown in text that comes from files
    return [e.value.replace("**", "").replace("\\", "") for e in at.error]


def test_the_default_checkpoint_is_never_the_one_with_a_forged_date(hostile_runs):
    at = open_page("views/data.py", interval=INTERVAL)  # a page that does not run the (sound) forged checkpoint
    assert not at.exception, at.exception
    chosen = at.sidebar.selectbox(key="checkpoint").value
    assert chosen == "demo-1h", labels(at)  # no default pinned: the demo, never the newest (nor a forged date)
    forged = label_of(at, FORGED)
    assert "date unverified" in forged and "2099" not in forged
    assert labels(at)[-1].startswith("demo-1h (demo checkpoint)")
    at.sidebar.selectbox(key="checkpoint").set_value(FORGED).run()
    assert not at.exception, at.exception
    assert any("Registry date '2099-01-01T00:00:00Z' is in the future" in c.value for c in at.sidebar.caption)


@pytest.mark.parametrize("page", MODEL_PAGES)
def test_every_model_page_shows_a_message_for_every_hostile_checkpoint(hostile_runs, page):
    at = open_page(page, interval=INTERVAL)
    for run_id, (_, message, _) in HOSTILE.items():
        at.sidebar.selectbox(key="checkpoint").set_value(run_id).run()
        assert not at.exception, (run_id, at.exception)
        shown = errors(at)
        assert any(f"Checkpoint {run_id} cannot be used here" in e and message in e for e in shown), (run_id, shown)
        assert any("Choose another checkpoint in the sidebar" in e for e in shown)
        assert not any("corrupt" in e for e in shown)


@pytest.mark.parametrize("page", ("views/data.py", "views/model.py", "views/backtest.py"))
def test_the_other_pages_still_work_with_a_hostile_default_checkpoint(hostile_runs, page):
    from engine.model.checkpoint import pin_default

    pin_default("huge-dmodel", hostile_runs)  # the user pinned it ("Use as default" on the Model page)
    at = open_page(page, interval=INTERVAL)
    assert not at.exception, at.exception
    assert at.sidebar.selectbox(key="checkpoint").value == "huge-dmodel"
    if page == "views/data.py":
        assert at.get("plotly_chart"), "the price chart"
    if page == "views/model.py":
        table = at.dataframe[-1].value
        assert {"huge-dmodel", "nan-weights", FORGED}.issubset(set(table["run"]))
        assert set(table.loc[table["run"] == "huge-dmodel", "1-bar skill vs the best baseline"]) == {"not scored"}


def test_the_demo_copies_are_hostile_only_where_intended(hostile_runs):
    """The fixture breaks one thing per copy: the forged-date copy is a sound checkpoint."""
    from engine.model.checkpoint import load_checkpoint

    forged = Path(hostile_runs).parent / "checkpoints" / FORGED
    assert load_checkpoint(forged)[1].run_id == FORGED
