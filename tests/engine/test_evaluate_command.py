"""python -m engine.evaluate: scoring the shipped demo checkpoint never changes the files the app ships."""
from __future__ import annotations

import hashlib

from engine import evaluate
from engine.model.checkpoint import DEMO_CHECKPOINT_DIR


def _digests(folder) -> dict[str, str]:
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(folder.iterdir()) if p.is_file()}


def test_the_default_run_is_scored_and_printed_but_the_shipped_checkpoint_is_left_as_it_was(capsys):
    before = _digests(DEMO_CHECKPOINT_DIR)
    assert evaluate.main(["--baselines", "zero", "--horizon", "1"]) == 0
    out = capsys.readouterr().out
    assert "SYNTHETIC" in out and "zero" in out
    assert "nothing written: a checkpoint shipped in assets/" in out
    assert _digests(DEMO_CHECKPOINT_DIR) == before


def test_only_checkpoints_inside_assets_count_as_shipped(tmp_path):
    assert evaluate.ships_with_the_app(DEMO_CHECKPOINT_DIR)
    assert not evaluate.ships_with_the_app(tmp_path / "run-1")
