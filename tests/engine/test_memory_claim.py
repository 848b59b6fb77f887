"""The Lookback page's memory claim (engine/diagnostics/memory_claim.py) and the memory the output uses
(hidden_attention.half_mass_lag/half_mass_lags): a planted memory difference is found, a null market rewards the
same memory in every regime, and the sentence follows the look-back test."""
from __future__ import annotations

import dataclasses

import numpy as np
import pandas as pd
import pytest

from engine.diagnostics.hidden_attention import (
    half_mass_lag,
    half_mass_lags,
    hidden_attention,
)
from engine.diagnostics.lookback_test import LookbackTest
from engine.diagnostics.memory_claim import (
    memory_verdict,
    memory_verdicts,
    rewarded_memory,
)
from engine.diagnostics.regime_tests import hours_since_previous_bar
from storage.panel import own_bar_log_returns
from storage.sources.planted_family import family_member, family_split

SEEDS = family_split(3)["validation"]


def _member(seed: int, kind: str):
    member = family_member(seed, kind=kind)
    panel = member.panel
    return member.truth, panel, own_bar_log_returns(panel), hours_since_previous_bar(panel), \
        np.asarray(panel.observed).T


def _test_rows(panel) -> range:
    return range(int(len(panel.ts) * 0.55), len(panel.ts))


def test_a_planted_volatility_memory_difference_is_found_in_the_right_order():
    truth, panel, returns, gaps, observed = _member(SEEDS[0], "memory")
    labels = np.asarray(truth.regimes)[0]  # the 24/7 asset's planted regime per row
    found = rewarded_memory(panel.symbols[0], returns[0], gaps[0], observed[0], labels, _test_rows(panel),
                            len(truth.regime_names))
    assert found.differences, found.probe
    longest = truth.regime_names.index(truth.memory_order[0])
    shortest = truth.regime_names.index(truth.memory_order[-1])
    assert any(d.target == "volatility" and d.longer == longest and d.shorter == shortest for d in found.differences)
    assert all(d.longer_half_life > d.shorter_half_life for d in found.differences)


@pytest.mark.parametrize("seed", SEEDS[:2])
def test_on_a_null_market_every_regime_rewards_the_same_memory(seed):
    _, panel, returns, gaps, observed = _member(seed, "null")
    spells = (np.arange(len(panel.ts)) // 500) % 2  # regimes of nothing: alternating spells of 500 rows
    for asset, symbol in enumerate(panel.symbols):
        found = rewarded_memory(symbol, returns[asset], gaps[asset], observed[asset], spells, _test_rows(panel), 2)
        assert not found.differences, found.probe


def _lookback_test(symbol: str, difference: float, significant: bool) -> LookbackTest:
    intervals = pd.DataFrame({"symbol": [symbol] * 2, "regime": [0, 1], "regime_name": ["a", "b"], "n_bars": [9, 9],
                              "median": [5.0, 5.0 + difference], "low": [4.0, 4.0], "high": [6.0, 6.0],
                              "block_bars": [3, 3]})
    differences = pd.DataFrame({"symbol": [symbol], "regime_a": [0], "regime_b": [1], "difference": [difference],
                                "low": [difference - 1], "high": [difference + 1], "p": [0.01], "q": [0.01],
                                "significant": [significant]})
    return LookbackTest(intervals, differences, 0.05)


def test_the_sentence_follows_the_probe_and_the_lookback_test():
    truth, panel, returns, gaps, observed = _member(SEEDS[0], "memory")
    labels = np.asarray(truth.regimes)[0]
    names = list(truth.regime_names)
    found = rewarded_memory("C0", returns[0], gaps[0], observed[0], labels, _test_rows(panel), len(names))
    d = found.differences[0]
    sign = 1.0 if d.longer == 1 else -1.0  # regime_b (1) minus regime_a (0)
    moves = memory_verdict(found, _lookback_test("C0", 7.0 * sign, True), names)
    assert "and the look-back moves that way (+7 bars" in moves
    assert "but the look-back moves the other way" in memory_verdict(found, _lookback_test("C0", -7.0 * sign, True),
                                                                       names)
    assert "does not move that way" in memory_verdict(found, _lookback_test("C0", 7.0 * sign, False), names)
    null = _member(SEEDS[1], "null")
    spells = (np.arange(len(null[1].ts)) // 500) % 2
    lines = memory_verdicts(null[1].symbols, null[2], null[3], null[4], spells, _test_rows(null[1]),
                            _lookback_test(null[1].symbols[0], 3.0, True), ["a", "b"])
    assert all("the look-back does not change with the regime" in line for line in lines)
    assert "follow no memory the data rewards" in lines[0]  # the look-back test's difference is named as such


def test_half_mass_lag_counts_own_bars_to_half_the_weight():
    frame = pd.DataFrame({"lag": [0, 1, 2, 3, 4], "own_lag": [0, 1, 1, 2, 3], "weight": [0.1, 0.0, 0.3, 0.4, 0.2]})
    assert half_mass_lag(frame) == 2.0  # 0.1, 0.1, 0.4, 0.8 >= 0.5 at row 3 (own lag 2)
    assert np.isnan(half_mass_lag(frame.assign(weight=0.0)))


def test_the_windowed_trace_is_the_hidden_attention_of_the_same_window():
    from engine.diagnostics.for_run import run_on_panel
    from engine.model.checkpoint import DEMO_CHECKPOINT_DIR, published_files
    from storage.panel import demo_panel

    if not published_files(DEMO_CHECKPOINT_DIR)[0].exists():
        pytest.skip("no demo checkpoint shipped")
    run = run_on_panel(DEMO_CHECKPOINT_DIR, demo_panel("1h"))
    window, end = 300, len(run.features.ts)
    trace = half_mass_lags(run.model, run.features, "SPY", range(end - 400, end), window=window, n_points=3)
    assert len(trace) == 3 and (trace >= 0).all() and (trace < window).all()
    for ts, lag in trace.items():
        t = run.features.ts.get_loc(ts)
        cut = dataclasses.replace(run.features, values=run.features.values[:, t - window + 1: t + 1],
                                  mask=run.features.mask[:, t - window + 1: t + 1],
                                  ts=run.features.ts[t - window + 1: t + 1])
        assert half_mass_lag(hidden_attention(run.model, cut, "SPY", window - 1)) == lag
