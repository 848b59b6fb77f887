"""Look-back per regime: intervals, the difference test, and a ranking only where the test supports it."""
from __future__ import annotations

import numpy as np
import pytest
from scipy.stats import binom

from engine.diagnostics.lookback import lookback_by_regime
from engine.diagnostics.lookback_test import (
    automatic_block,
    decorrelation_bars,
    lookback_regime_test,
    mean_spell_bars,
)


def _slow(rng: np.random.Generator, n: int, phi: float) -> np.ndarray:
    shocks = rng.standard_normal(n) * np.sqrt(1 - phi**2)
    out = np.empty(n)
    out[0] = rng.standard_normal()
    for i in range(1, n):
        out[i] = phi * out[i - 1] + shocks[i]
    return out


def _spells(rng: np.random.Generator, n: int, stay: float = 0.995) -> np.ndarray:
    labels = np.zeros(n, dtype=int)
    for i in range(1, n):
        labels[i] = labels[i - 1] if rng.random() < stay else 1 - labels[i - 1]
    return labels


def market(seed: int, gap: float = 0.0, n: int = 2000, phi: float = 0.995):
    """A smooth look-back (15 bars + 3 x AR(1)) and persistent labels; `gap` bars added in regime 1."""
    rng = np.random.default_rng(seed)
    labels = _spells(rng, n)
    lookback = 15 + gap * labels + 3 * _slow(rng, n, phi)
    return lookback[None], np.ones((1, n), bool), labels


def test_block_length_follows_the_slowest_dependence():
    rng = np.random.default_rng(0)
    assert decorrelation_bars(rng.standard_normal(5000)) == 1
    assert 100 < decorrelation_bars(_slow(rng, 5000, 0.995)) < 400  # 1/e after ~200 bars
    assert mean_spell_bars(np.array([0, 0, 1, 1, 1, 0])) == 2.0
    labels = np.repeat([0, 1] * 10, 250)  # spells of 250 bars
    assert automatic_block(labels, rng.standard_normal(5000)) == 250
    assert automatic_block(np.arange(400) % 2, rng.standard_normal(400)) == 20  # sqrt(n)
    assert automatic_block(np.zeros(400, int), rng.standard_normal(400)) == 100  # one spell: at most n/4


def test_medians_match_lookback_by_regime_and_get_intervals():
    lookback, open_bars, labels = market(1, gap=5.0)
    result = lookback_regime_test(lookback, open_bars, labels, ["X"], ["calm", "turbulent"], n_boot=200)
    plain = lookback_by_regime(lookback, open_bars, labels, ["X"], ["calm", "turbulent"])
    np.testing.assert_allclose(result.intervals["median"], plain["median"])
    assert (result.intervals["low"] <= result.intervals["median"]).all()
    assert (result.intervals["median"] <= result.intervals["high"]).all()
    assert result.intervals["block_bars"].iloc[0] >= 100  # spells and the look-back's memory, not sqrt(2000)


def test_a_planted_difference_is_found_and_ranked():
    lookback, open_bars, labels = market(1, gap=5.0)
    result = lookback_regime_test(lookback, open_bars, labels, ["X"], ["calm", "turbulent"], n_boot=200)
    row = result.differences.iloc[0]
    assert row["significant"] and row["difference"] > 0 and row["low"] > 0
    assert result.ranking("X").startswith("X: look-back turbulent longer than calm by")


def test_no_difference_no_ranking():
    lookback, open_bars, labels = market(3)
    result = lookback_regime_test(lookback, open_bars, labels, ["X"], n_boot=100)
    assert not result.differences["significant"].any()
    assert result.ranking("X").startswith("X: no difference in effective look-back between regimes found")


def _false_differences(seeds: range) -> int:
    return sum(bool(lookback_regime_test(*market(seed), ["X"], n_boot=20).differences["significant"].iloc[0])
               for seed in seeds)


def test_independent_labels_rarely_show_a_difference():
    seeds = range(15)  # the rate itself is measured on 200 seeds below (slow); this keeps a check in the default suite
    assert _false_differences(seeds) <= int(binom.ppf(0.999, len(seeds), 0.05))


@pytest.mark.slow
def test_independent_labels_rarely_show_a_difference_many_seeds():
    # measured 14 of 200 (7%) on seeds 1000..1199; the block bootstrap's own test: 14%
    seeds = range(1000, 1200)
    assert _false_differences(seeds) <= int(binom.ppf(0.999, len(seeds), 0.05))


def test_several_assets_and_regimes_are_corrected_together():
    rng = np.random.default_rng(5)
    n = 1500
    labels = np.stack([_spells(rng, n), np.minimum(_spells(rng, n) + _spells(rng, n), 2)])
    labels[:, :50] = -1  # no label yet
    lookback = 15 + 3 * np.stack([_slow(rng, n, 0.99), _slow(rng, n, 0.99)])
    open_bars = np.ones((2, n), bool)
    open_bars[1, ::7] = False
    result = lookback_regime_test(lookback, open_bars, labels, ["A", "B"], n_boot=50, rows=range(100, n))
    assert len(result.differences) == 1 + 3  # A has regimes 0 and 1, B has 0, 1 and 2: every pair of each
    assert (result.differences["q"] >= result.differences["p"]).all()
    assert result.intervals.loc[result.intervals["symbol"] == "B", "n_bars"].sum() == open_bars[1, 100:].sum()
