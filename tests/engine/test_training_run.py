"""run_training: the one sequence (train, score, register) behind both the command line and the Model page."""
from __future__ import annotations

import json

from engine.evaluation.run_scores import SCORES_CSV
from engine.model.checkpoint import REGISTRY_FILE
from engine.training.run import run_training
from storage.panel import demo_panel
from tests.engine.test_training import tiny_config


def test_a_finished_run_is_scored_against_the_baselines_and_registered(tmp_path):
    loaded = demo_panel("1d")
    run = run_training(loaded, tiny_config(), tmp_path / "run", runs_dir=tmp_path / "runs", run_id="run-x")
    assert run.finished
    assert (tmp_path / "run" / SCORES_CSV).exists()
    assert {"model", "zero", "garch11"} <= set(run.scores["model"])
    entries = [json.loads(line) for line in (tmp_path / "runs" / REGISTRY_FILE).read_text().splitlines()]
    assert [e["run_id"] for e in entries] == ["run-x"] and run.registered_in == tmp_path / "runs"
    assert entries[0]["scores"]["horizon"] == 1  # the registry carries the score summary evaluate wrote


def test_a_cancelled_run_is_neither_scored_nor_registered(tmp_path):
    run = run_training(demo_panel("1d"), tiny_config(), tmp_path / "run", runs_dir=tmp_path / "runs",
                       cancel=lambda: True)
    assert not run.finished and run.scores is None and run.registered_in is None
    assert not (tmp_path / "runs" / REGISTRY_FILE).exists()


def test_other_ranks_train_but_leave_scoring_and_the_registry_to_rank_0(tmp_path):
    run = run_training(demo_panel("1d"), tiny_config(), tmp_path / "run", runs_dir=tmp_path / "runs",
                       is_main=False)
    assert run.finished and run.scores is None and not (tmp_path / "runs").exists()
