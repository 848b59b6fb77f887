"""read_checkpoint_unloaded: what load_checkpoint refuses without building the model (no torch), with its messages;
the rest (tensor names and shapes) is refused when the model is loaded, on first use (RunOnPanel.model)."""
from __future__ import annotations

import pytest

from engine.diagnostics.for_run import RunOnPanel, load_model
from engine.model.checkpoint import (
    CheckpointError,
    load_checkpoint,
    read_checkpoint_unloaded,
)
from tests.engine.test_checkpoint_hardening import (
    FIXED_CHECKPOINT,
    HOSTILE_WEIGHTS,
    WEIGHTS_FILE,
    with_weights,
    write_run,
)

REFUSED_UNLOADED = ("NaN", "infinity", "integer tensor")  # the rest need the config's model built


@pytest.mark.parametrize("name", list(HOSTILE_WEIGHTS))
def test_hostile_weights_are_refused_unloaded_or_at_the_first_use_of_the_model(name, tmp_path):
    change, message = HOSTILE_WEIGHTS[name]
    run = write_run(tmp_path / "run", weights=with_weights(change))
    if name in REFUSED_UNLOADED:
        with pytest.raises(CheckpointError, match=message):
            read_checkpoint_unloaded(run)
        return
    manifest = read_checkpoint_unloaded(run)
    lazy = RunOnPanel(run, manifest, fit_rows=range(1))
    with pytest.raises(CheckpointError, match=message):
        lazy.model  # noqa: B018 - the first use loads it


@pytest.mark.parametrize("blob", [b"", b"\x00" * 64, (FIXED_CHECKPOINT / WEIGHTS_FILE).read_bytes()[:5000]])
def test_a_damaged_weights_file_is_named_as_such_unloaded(blob, tmp_path):
    with pytest.raises(CheckpointError, match="damaged or not a safetensors file"):
        read_checkpoint_unloaded(write_run(tmp_path / "run", weights=blob))


def test_a_sound_checkpoint_reads_the_same_manifest_and_its_model_loads_once(tmp_path):
    run = write_run(tmp_path / "run")
    manifest = read_checkpoint_unloaded(run)
    assert manifest == load_checkpoint(run)[1]
    lazy = RunOnPanel(run, manifest, fit_rows=range(1))
    model = lazy.model
    assert lazy.model is model and not model.training
    expected = load_model(run)[0].state_dict()
    assert all((model.state_dict()[name] == tensor).all() for name, tensor in expected.items())
