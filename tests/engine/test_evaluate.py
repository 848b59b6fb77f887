"""Evaluating a run: model vs every baseline on the run's own test spans, written where the app reads it; a
checkpoint refuses data it does not fit."""
from __future__ import annotations

import json

import numpy as np
import pytest

from engine.evaluation.baselines import BASELINES
from engine.evaluation.run_scores import (
    SCORES_CSV,
    SCORES_JSON,
    check_same_data,
    evaluate_run,
    read_manifest,
    wide_table,
)
from engine.features import FEATURE_NAMES
from engine.model.checkpoint import CheckpointError, check_fits
from engine.runtime import configure_cpu_threads
from storage.panel import LoadedPanel, demo_panel
from tests.engine.test_training import small_panel, tiny_config, train


@pytest.fixture(scope="module")
def trained_run(tmp_path_factory):
    configure_cpu_threads(1)
    run_dir = tmp_path_factory.mktemp("run")
    panel = small_panel()
    train(panel, tiny_config(max_epochs=1), run_dir)
    return run_dir, LoadedPanel(panel, "1d", (), "demo 1d, first rows (SYNTHETIC)", synthetic=True)


def test_evaluate_writes_a_table_whose_rows_include_the_model_and_every_baseline(trained_run):
    run_dir, loaded = trained_run
    table = evaluate_run(run_dir, loaded)
    assert set(table["model"]) == {"model", *BASELINES}
    assert {"pinball", "coverage_10_90", "brier", "log_loss", "ece", "qlike", "hit_rate", "dm_p_mse",
            "dm_p_pinball"} <= set(table["metric"])
    # the model and the baselines are scored on the same rows: the same count of scorable forecasts
    n = table[(table["metric"] == "n") & (table["horizon"] == 1) & (table["asset"] == "SPY")]
    by_model = n.set_index("model")["value"]
    assert by_model["model"] == by_model["zero"] == by_model["ar1"] > 50
    # DM rows belong to the baselines (the model against each of them), never to the model itself
    dm = table[table["metric"] == "dm_p_mse"]
    assert "model" not in set(dm["model"]) and {"zero", "ar1", "historical_mean"} <= set(dm["model"])

    written = json.loads((run_dir / SCORES_JSON).read_text())
    assert {row["model"] for row in written["rows"]} == {"model", *BASELINES}
    assert (run_dir / SCORES_CSV).read_text().startswith("model,asset,horizon,metric,value")
    scores = read_manifest(run_dir).scores
    assert set(scores["assets"]) == {"BTC", "SPY", "AAPL"}
    assert "dm_p_mse" in scores["assets"]["SPY"]["vs_ar1"]
    assert not wide_table(table, horizon=1).empty


def test_a_checkpoint_refuses_a_panel_it_does_not_fit_and_says_why(trained_run):
    run_dir, loaded = trained_run
    manifest = read_manifest(run_dir)
    with pytest.raises(CheckpointError, match=r"trained on symbols BTC, SPY, AAPL but the panel has BTC, SPY"):
        check_fits(manifest, symbols=("BTC", "SPY"), interval="1d", feature_names=FEATURE_NAMES)
    with pytest.raises(CheckpointError, match=r"trained on 1d bars but the panel is 1h"):
        check_fits(manifest, symbols=("BTC", "SPY", "AAPL"), interval="1h", feature_names=FEATURE_NAMES)
    # the same symbols and interval but other numbers: the stored forecasts do not belong to this data
    other = demo_panel("1d")
    with pytest.raises(CheckpointError, match=r"was trained on data \w+ .* but this panel is \w+"):
        check_same_data(manifest, other)
    with pytest.raises(CheckpointError, match="trained on data"):
        evaluate_run(run_dir, other, write=False)
    check_same_data(manifest, loaded)  # the data it was trained on fits


def test_evaluate_of_a_folder_that_is_no_run_says_so(tmp_path):
    with pytest.raises(CheckpointError, match="not a checkpoint"):
        evaluate_run(tmp_path)


def test_the_scores_the_model_gets_are_its_own_stored_forecasts(trained_run):
    from engine.evaluation.predictions import load_predictions
    from engine.evaluation.scores import score_table
    from engine.targets import compute_targets

    run_dir, loaded = trained_run
    predictions, _, _ = load_predictions(run_dir)
    direct = score_table({"model": predictions}, compute_targets(loaded.panel, predictions.horizons))
    table = evaluate_run(run_dir, loaded, baselines=("zero",), write=False)
    model_rows = table[table["model"] == "model"].reset_index(drop=True)
    assert np.allclose(model_rows["value"], direct["value"], equal_nan=True)
