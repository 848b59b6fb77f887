"""The deflated Sharpe ratio's trials persist with the run: on disk, per data span, across sessions."""
from __future__ import annotations

import json
from concurrent.futures import ThreadPoolExecutor

import pytest

from engine.backtest.engine import StrategyConfig
from engine.backtest.metrics import TrialCounter, deflated_sharpe_ratio
from engine.backtest.trials import TrialLog, trial_scope, trials_path
from engine.model.checkpoint import DEMO_CHECKPOINT_DIR


def test_a_new_log_on_the_same_file_and_scope_sees_every_trial_recorded_before(tmp_path):
    path = tmp_path / "trials.jsonl"
    first = TrialLog(path, "scope-a")
    first.with_context(horizon=1).record(StrategyConfig(threshold=0.02), 0.01)
    first.with_context(horizon=1).record(StrategyConfig(threshold=0.05), 0.02)
    first.with_context(horizon=5).record(StrategyConfig(threshold=0.02), -0.01)  # another horizon: another trial
    first.with_context(horizon=1).record(StrategyConfig(threshold=0.02), 0.01)  # tried before: not a new trial
    assert first.n_trials == 3

    again = TrialLog(path, "scope-a")  # a new session
    assert again.n_trials == 3
    assert again.sharpe_variance() == pytest.approx(first.sharpe_variance())
    assert TrialLog(path, "scope-b").n_trials == 0  # other data or span: counted apart


def test_a_log_counts_like_a_counter_in_the_deflated_sharpe_ratio(tmp_path):
    returns = [0.01, -0.005, 0.02, 0.0, -0.01, 0.015, 0.005, -0.002] * 10
    counter, log = TrialCounter(), TrialLog(tmp_path / "t.jsonl", "s")
    for i, sharpe in enumerate((0.1, 0.05, -0.02, 0.2)):
        counter.record(("setting", i), sharpe)
        log.record({"setting": i}, sharpe)
    assert deflated_sharpe_ratio(returns, log) == pytest.approx(deflated_sharpe_ratio(returns, counter))


def test_refresh_picks_up_another_sessions_trials_and_torn_lines_are_skipped(tmp_path):
    path = tmp_path / "t.jsonl"
    mine, theirs = TrialLog(path, "s"), TrialLog(path, "s")
    theirs.record({"threshold": 0.1}, 0.3)
    with open(path, "a") as handle:
        handle.write('{"scope": "s", "setting": {"threshold"')  # a torn write
    mine.refresh()
    assert mine.n_trials == 1


def test_concurrent_appends_lose_no_trial(tmp_path):
    path = tmp_path / "t.jsonl"
    logs = [TrialLog(path, "s") for _ in range(4)]

    def record(worker: int) -> None:
        for i in range(25):
            logs[worker].record({"worker": worker, "i": i}, 0.01 * i)

    with ThreadPoolExecutor(4) as pool:
        list(pool.map(record, range(4)))
    assert TrialLog(path, "s").n_trials == 100
    assert all(json.loads(line)["scope"] == "s" for line in path.read_text().splitlines())


def test_the_shipped_demo_checkpoint_is_never_written_to(tmp_path):
    assert trials_path(DEMO_CHECKPOINT_DIR, "run-demo", tmp_path) == tmp_path / "trials" / "run-demo.jsonl"
    run = tmp_path / "runs" / "run-1"
    run.mkdir(parents=True)
    assert trials_path(run, "run-1", tmp_path) == run / "backtest_trials.jsonl"
    assert trials_path(None, "forecaster-logistic baseline", tmp_path).name == "forecaster-logistic_baseline.jsonl"


def test_the_scope_changes_with_the_data_the_span_and_the_forecaster():
    base = trial_scope("model", "abc", ("BTC",), "1h", ("2024-01-01", None))
    assert base == trial_scope("model", "abc", ("BTC",), "1h", ("2024-01-01", None))
    assert base != trial_scope("model", "abd", ("BTC",), "1h", ("2024-01-01", None))
    assert base != trial_scope("model", "abc", ("BTC",), "1h", ("2024-02-01", None))
    assert base != trial_scope("logistic", "abc", ("BTC",), "1h", ("2024-01-01", None))
