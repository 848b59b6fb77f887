"""Training spans are timestamps: the manifest records every fold's spans and the scaler's fit span in UTC, and a
checkpoint runs on any panel that contains its fit span (more history before or after), found by time, not row."""
from __future__ import annotations

import json
from pathlib import Path

import pytest

from engine.diagnostics.bundle import compute_diagnostics
from engine.diagnostics.for_run import run_on_panel
from engine.model.checkpoint import (
    FORMAT_VERSION,
    MANIFEST_FILE,
    CheckpointError,
    published_files,
    upgrade_manifest,
)
from engine.runtime import configure_cpu_threads
from engine.training.loop import train_walk_forward
from storage.panel import LoadedPanel, Panel, demo_panel, panel_fingerprint
from tests.engine.test_training import tiny_config

SUB_SPAN = slice(200, 920)  # the rows of the demo's 1d panel the checkpoint is trained on


def rows_of(loaded: LoadedPanel, rows: slice) -> LoadedPanel:
    panel = loaded.panel
    cut = Panel(ts=panel.ts[rows], symbols=panel.symbols, fields={k: v[rows] for k, v in panel.fields.items()},
                observed=panel.observed[rows], sources=panel.sources, interval=panel.interval)
    return LoadedPanel(cut, loaded.interval, loaded.sources, loaded.label, loaded.synthetic)


@pytest.fixture(scope="module")
def sub_span_run(tmp_path_factory):
    configure_cpu_threads(1)
    trained_on = rows_of(demo_panel("1d"), SUB_SPAN)
    run_dir = tmp_path_factory.mktemp("sub_span") / "run"
    result = train_walk_forward(trained_on.panel, tiny_config(), interval="1d",
                                fingerprint=panel_fingerprint(trained_on.panel, "1d"), run_dir=run_dir)
    assert result.outcome == "finished", result.message
    return run_dir, trained_on, result.manifest


def test_the_manifest_records_the_fit_span_and_every_fold_s_spans_in_utc(sub_span_run):
    _, trained_on, manifest = sub_span_run
    ts = trained_on.panel.ts
    fit = range(*manifest.scaler["fit_rows"])
    assert manifest.format_version == FORMAT_VERSION == 3
    assert manifest.training["fit_span_utc"] == [str(ts[fit.start]), str(ts[fit.stop - 1])]
    for fold, spans in zip(manifest.training["folds"], manifest.training["fold_spans_utc"]):
        for name in ("train", "val", "test"):
            start, stop = fold[name]
            assert spans[name] == [str(ts[start]), str(ts[stop - 1])]


def test_a_checkpoint_trained_on_a_sub_span_runs_on_a_longer_panel(sub_span_run):
    run_dir, trained_on, manifest = sub_span_run
    longer = demo_panel("1d")  # history before and after the span it was trained on
    run = run_on_panel(run_dir, longer)

    fit = range(*manifest.scaler["fit_rows"])
    assert run.fit_rows == range(fit.start + SUB_SPAN.start, fit.stop + SUB_SPAN.start)
    assert longer.panel.ts[run.fit_rows.start] == trained_on.panel.ts[fit.start]
    assert longer.panel.ts[run.fit_rows.stop - 1] == trained_on.panel.ts[fit.stop - 1]
    assert run.features.scaler.fit_rows == (run.fit_rows.start, run.fit_rows.stop)
    assert run.span_text().startswith(f"Trained on {trained_on.panel.ts[fit.start]:%Y-%m-%d} .. ")
    assert "tested out of sample on 2 walk-forward test spans" in run.span_text()
    compute_diagnostics(run.model, run.features, run.fit_rows)  # the regimes fit on the mapped training rows


def test_a_panel_that_does_not_contain_the_fit_span_is_refused_with_the_span_it_needs(sub_span_run):
    run_dir, trained_on, manifest = sub_span_run
    first, last = (trained_on.panel.ts[row] for row in (manifest.scaler["fit_rows"][0], manifest.scaler["fit_rows"][1] - 1))
    too_late = rows_of(demo_panel("1d"), slice(SUB_SPAN.start + 50, None))
    with pytest.raises(CheckpointError, match=f"was trained on {first:%Y-%m-%d} .. {last:%Y-%m-%d} UTC, but this "
                                              f"panel covers {too_late.panel.ts[0]:%Y-%m-%d} .. "):
        run_on_panel(run_dir, too_late)


def test_a_format_2_manifest_gets_its_fit_span_from_the_fold_that_fitted_the_scaler(sub_span_run, tmp_path):
    run_dir, trained_on, manifest = sub_span_run
    written = json.loads(published_files(run_dir)[0].read_text())
    old = {**written, "format_version": 2, "training": dict(written["training"])}
    del old["training"]["fit_span_utc"]
    assert upgrade_manifest(old)["training"]["fit_span_utc"] == written["training"]["fit_span_utc"]

    # Without fold spans only the rows are known: they are used on a panel that starts where the data did.
    del old["training"]["fold_spans_utc"]
    assert "fit_span_utc" not in upgrade_manifest(old)["training"]
    for name in ("weights.safetensors",):
        (tmp_path / name).write_bytes(published_files(run_dir)[1].read_bytes())
    (tmp_path / MANIFEST_FILE).write_text(json.dumps(old))
    assert run_on_panel(tmp_path, trained_on).fit_rows == range(*manifest.scaler["fit_rows"])
    with pytest.raises(CheckpointError, match="records its training span only as rows"):
        run_on_panel(tmp_path, demo_panel("1d"))


FORMAT_1_DEMO = Path(__file__).resolve().parents[1] / "fixtures" / "checkpoints" / "format1_demo_1h"


def test_a_format_1_demo_manifest_upgrades_to_the_span_of_its_last_fold():
    """The demo as shipped before the general recipe (format 1 on disk, kept as a fixture)."""
    on_disk = json.loads(published_files(FORMAT_1_DEMO)[0].read_text())
    upgraded = upgrade_manifest(on_disk)
    assert on_disk["format_version"] == 1 and "fit_span_utc" not in on_disk["training"]
    assert upgraded["training"]["fit_span_utc"] == ["2022-01-01 00:00:00+00:00", "2024-05-27 17:00:00+00:00"]
