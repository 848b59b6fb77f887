"""The Model page trains in the background with progress, can cancel and resume, and lists the checkpoints."""
from __future__ import annotations

import pytest

import time

from engine.model.checkpoint import checkpoint_written
from tests.app.conftest import open_page

MODEL_PAGE = "views/model.py"


def _poll(at, until, seconds: float = 120.0):
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        time.sleep(0.5)
        at.run()
        if until(at):
            return at
    raise AssertionError(f"the page never reached the expected state; errors: {[e.value for e in at.error]}")


def _progress_texts(at) -> list[str]:
    return [bar.proto.text for bar in at.get("progress")]


def _start_training(at, folds: int, epochs: int):
    at.number_input(key="train_folds").set_value(folds)
    at.number_input(key="train_epochs").set_value(epochs)
    at.button(key="FormSubmitter:train-Train").click().run()


def test_training_shows_progress_then_lists_the_new_scored_checkpoint(seeded_db, tmp_path):
    at = open_page(MODEL_PAGE, interval="1d")
    runs = at.dataframe[-1].value
    assert "demo-1h (shipped demo)" in set(runs["run"])  # the shipped checkpoint is always listed
    _start_training(at, folds=1, epochs=2)
    seen: list[str] = []

    def finished(page):
        seen.extend(_progress_texts(page))
        return bool(page.success) or bool(page.error)

    _poll(at, finished)
    assert not at.error, [e.value for e in at.error]
    assert any(text.startswith("fold 1/1 · epoch") for text in seen), seen
    runs = at.dataframe[-1].value
    new = runs[runs["run"].str.startswith("run-")]
    assert len(new) == 1 and new.iloc[0]["interval"] == "1d" and new.iloc[0]["1-bar skill vs the best baseline"] != "not scored"
    assert [r for r in (tmp_path / "runs").glob("run-*") if checkpoint_written(r)]


@pytest.mark.slow  # default-suite budget: resume is tested in tests/engine (training)
def test_a_cancelled_training_can_be_resumed_to_the_end(seeded_db, tmp_path):
    at = open_page(MODEL_PAGE, interval="1d")
    _start_training(at, folds=2, epochs=4)
    _poll(at, lambda page: any("epoch" in text for text in _progress_texts(page)))
    at.button(key="train_cancel").click().run()
    _poll(at, lambda page: any("cancelled" in w.value for w in page.warning))
    assert not [r for r in (tmp_path / "runs").glob("run-*") if checkpoint_written(r)]  # nothing half-trained was saved
    at.button(key="train_resume").click().run()
    _poll(at, lambda page: bool(page.success) or bool(page.error))
    assert not at.error, [e.value for e in at.error]
    assert len([r for r in (tmp_path / "runs").glob("run-*") if checkpoint_written(r)]) == 1
