"""Assets whose histories start at different dates: the train command and the Model page's path train on their
common span, from the latest first bar on, and say which span and why, instead of refusing."""
from __future__ import annotations

import dataclasses

import numpy as np
import pandas as pd
import pytest

from engine import train as train_command
from engine.diagnostics.for_run import run_on_panel
from engine.runtime import configure_cpu_threads
from engine.targets import compute_targets
from engine.training.loop import make_folds, train_walk_forward
from engine.training.presets import demo_config
from engine.training.run import run_training
from engine.training.settings import panel_rows, settings_for_panel, training_span
from storage import cache
from storage.panel import LoadedPanel, demo_panel, panel_fingerprint
from storage.sources.demo import demo_market
from tests.engine.test_training import tiny_config

LATE = 1450  # BTC's first row: after the first training span that settings_for_panel gives the full history


def with_late_btc(loaded: LoadedPanel, first_row: int = LATE) -> LoadedPanel:
    """The demo's 1d panel as if BTC's history started `first_row` rows after SPY's and AAPL's."""
    panel = loaded.panel
    btc = panel.symbols.index("BTC")
    fields = {name: np.array(values) for name, values in panel.fields.items()}
    observed = np.array(panel.observed)
    for values in fields.values():
        values[:first_row, btc] = np.nan
    observed[:first_row, btc] = False
    return dataclasses.replace(loaded, panel=dataclasses.replace(panel, fields=fields, observed=observed),
                               truth=None)


@pytest.fixture(autouse=True)
def one_thread():
    configure_cpu_threads(1)


def quick(config):
    """The settings' folds with a tiny model and one epoch."""
    return dataclasses.replace(config, model=tiny_config().model, max_epochs=1, patience=1, threads=1)


def test_the_full_history_is_refused_without_the_common_span(tmp_path):
    panel = with_late_btc(demo_panel("1d")).panel
    sized_for_the_full_history = quick(settings_for_panel(demo_panel("1d").panel, "1d"))  # what it was given before
    with pytest.raises(ValueError, match="BTC has no warmed-up bars in the fit rows 0.."):
        train_walk_forward(panel, sized_for_the_full_history, interval="1d",
                           fingerprint=panel_fingerprint(panel, "1d"), run_dir=tmp_path)


def test_settings_size_the_folds_to_the_common_span_and_say_why():
    panel = with_late_btc(demo_panel("1d")).panel
    config = settings_for_panel(panel, "1d", n_folds=3)
    span = training_span(panel, config)

    assert span.rows == range(LATE, len(panel.ts)) and not span.is_full
    assert span.reason.startswith(f"trained on the common span {panel.ts[LATE]:%Y-%m-%d %H:%M} .. ")
    assert "BTC's history starts there (SPY's on 2019-01-01)" in span.reason and "warmed-up BTC bar" in span.reason
    common = panel_rows(panel, span.rows)
    folds = make_folds(len(common.ts), compute_targets(common, config.model.horizons), config)
    assert len(folds) == 3 and folds[-1].test.stop == len(common.ts)
    assert training_span(common, config).is_full


def test_a_history_every_fold_can_train_on_is_used_in_full():
    for interval in ("1d", "1h"):
        panel = demo_panel(interval).panel
        config = settings_for_panel(panel, interval)
        assert training_span(panel, config).is_full and training_span(panel, demo_config(interval)).is_full
    # a late start that the first training span still covers is trained on in full, as before
    early_late = with_late_btc(demo_panel("1d"), first_row=100).panel
    assert training_span(early_late, settings_for_panel(early_late, "1d")).is_full


def test_run_training_trains_on_the_common_span_and_the_checkpoint_runs_on_the_full_panel(tmp_path):
    loaded = with_late_btc(demo_panel("1d"))
    config = quick(settings_for_panel(loaded.panel, "1d", n_folds=3))
    run = run_training(loaded, config, tmp_path / "run", evaluate=True, register=False)

    assert run.finished and run.span_note is not None
    assert run.result.message.startswith(f"Trained on the common span {loaded.panel.ts[LATE]:%Y-%m-%d %H:%M} .. ")
    manifest = run.result.manifest
    assert manifest.fingerprint.first_ts == str(loaded.panel.ts[LATE].tz_localize(None).to_datetime64())
    assert run.scores is not None  # scored on the same (common-span) panel it was trained on
    full = run_on_panel(tmp_path / "run", loaded)  # the whole history, as the app loads it
    assert full.fit_rows.start == LATE + manifest.scaler["fit_rows"][0]


def test_the_train_command_says_which_span_and_why(db_path, monkeypatch, capsys):
    bars = demo_market("1d").bars
    cut = pd.Timestamp(bars["SPY"]["ts"].iloc[0]) + pd.Timedelta(days=1700)  # BTC from row ~1214 of ~1704
    for symbol, frame in bars.items():
        cache.upsert_bars(frame[frame["ts"] >= cut] if symbol == "BTC" else frame, symbol, "demo", "1d", db_path)
    trained = {}

    def stand_in(loaded, config, run_dir, **kwargs):
        trained["loaded"] = loaded
        raise KeyboardInterrupt  # stop before training: what is said and passed on is the point

    monkeypatch.setattr(train_command, "run_training", stand_in)
    code = train_command.main(["--db", str(db_path), "--symbols", "BTC", "SPY", "AAPL", "--interval", "1d",
                               "--out", str(db_path.parent / "run"), "--no-register"])
    said = capsys.readouterr().err

    assert code == 130 and "train: trained on the common span" in said and "BTC's history starts there" in said
    assert trained["loaded"].panel.ts[0] == trained["loaded"].panel.ts[trained["loaded"].panel.observed[:, 0]][0]
    assert "(common span)" in trained["loaded"].label


@pytest.fixture
def db_path(tmp_path):
    return tmp_path / "cache" / "bars.duckdb"
