"""Regime verdicts on tiny markets with a known answer: one regime (nothing to find), two volatility regimes, and a
weekend gap that a calendar-aware state would mistake for a regime."""
from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from scipy.stats import binom
from sklearn.metrics import adjusted_rand_score

from engine.diagnostics.regime_tests import (
    NO_LABEL,
    RegimeTestConfig,
    candidate_labels,
    gap_normalised,
    hmm_baseline_labels,
    hours_since_previous_bar,
    regime_evidence,
    regime_verdicts,
    regime_verdicts_for_panel,
)
from storage.panel import Panel, own_bar_log_returns

N_BARS = 2000
FIT = range(0, 1400)


def _ewma(x: np.ndarray, half_life: float) -> np.ndarray:
    weight = 1 - 0.5 ** (1 / half_life)
    out, level = np.empty_like(x), x[0]
    for i, value in enumerate(x):
        level = (1 - weight) * level + weight * value
        out[i] = level
    return out


def _slow_noise(rng: np.random.Generator, n: int, phi: float = 0.99) -> np.ndarray:
    shocks = rng.standard_normal(n) * np.sqrt(1 - phi**2)
    out = np.empty(n)
    out[0] = rng.standard_normal()
    for i in range(1, n):
        out[i] = phi * out[i - 1] + shocks[i]
    return out


def _state(returns: np.ndarray, signal: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """A stand-in for a model's state, (T, 4): recent volatility (it contains this bar's return), a noisy causal
    reading of `signal`, and two slowly wandering dimensions that mean nothing."""
    return np.stack([np.log(_ewma(returns**2, 5) + 1e-12), _ewma(signal, 3) + 0.25 * rng.standard_normal(len(returns)),
                     _slow_noise(rng, len(returns)), _slow_noise(rng, len(returns))], axis=1)


def _t_returns(rng: np.random.Generator, scale: np.ndarray) -> np.ndarray:
    return scale * rng.standard_t(5, len(scale)) / np.sqrt(5 / 3)


def one_regime(seed: int, n: int = N_BARS):
    """Constant volatility; the state's 'signal' is a slow random process unrelated to the returns."""
    rng = np.random.default_rng(seed)
    returns = _t_returns(rng, np.full(n, 0.01))
    return returns, _state(returns, _slow_noise(rng, n, 0.995), rng)


def two_regimes(seed: int, n: int = N_BARS, ratio: float = 2.5, stay: float = 0.995):
    """Volatility 1% or 2.5% in Markov spells (mean 200 bars); the state reads the regime with noise."""
    rng = np.random.default_rng(seed)
    regime = np.zeros(n, dtype=int)
    for i in range(1, n):
        regime[i] = regime[i - 1] if rng.random() < stay else 1 - regime[i - 1]
    returns = _t_returns(rng, 0.01 * np.where(regime == 1, ratio, 1.0))
    return returns, _state(returns, regime.astype(float), rng), regime


def _verdict(returns, state, config=RegimeTestConfig()):
    own = returns.copy()
    own[0] = np.nan  # the first bar has no return
    gaps = np.ones_like(returns)
    gaps[0] = np.nan
    return regime_verdicts(state[None], np.ones((1, len(returns)), bool), own[None], gaps[None], ["X"], FIT,
                           config).verdicts[0]


def _allowed(seeds: int, rate: float = 0.05) -> int:
    """The nominal rate plus sampling slack: a calibrated test exceeds this count once in a thousand runs."""
    return int(binom.ppf(0.999, seeds, rate))


FAST = RegimeTestConfig(n_shifts=99, n_shuffles=19, n_boot=50)


def _one_regime_false_claims(seeds: range) -> int:
    return sum(_verdict(*one_regime(seed), FAST).significant for seed in seeds)


def test_one_regime_data_gives_one_regime_or_none_distinct():
    seeds = range(20)
    verdicts = [_verdict(*one_regime(seed), FAST) for seed in seeds]
    assert sum(v.significant for v in verdicts) <= _allowed(len(seeds))
    assert sum(v.n_regimes == 1 for v in verdicts) >= 15
    quiet = next(v for v in verdicts if not v.significant)
    assert quiet.text.startswith("X: one regime, or none distinct")


def test_three_clusters_of_a_slow_state_persist_on_one_regime_data_and_are_not_distinct():
    returns, state = one_regime(2)
    clusters = candidate_labels(state, np.ones(N_BARS, bool), FIT, FAST)[0][2]  # what a 3-cluster page shows
    own, gaps = returns.copy(), np.ones(N_BARS)
    own[0] = gaps[0] = np.nan
    verdict = regime_evidence(clusters, np.ones(N_BARS, bool), own, gaps, "X", FAST)
    assert verdict.n_regimes == 3 and verdict.stay_share > 0.9 and verdict.persistence_p <= 0.05
    assert not verdict.significant
    assert "none distinct" in verdict.text and "as a slow state's labels do on any data" in verdict.text


@pytest.mark.slow
def test_one_regime_data_gives_one_regime_or_none_distinct_many_seeds():
    seeds = range(100, 160)
    assert _one_regime_false_claims(seeds) <= _allowed(len(seeds))  # measured 2 of 60


def _two_regime_verdicts(seeds: range):
    return [(_verdict(returns, state, FAST), regime) for returns, state, regime in map(two_regimes, seeds)]


def test_two_volatility_regimes_are_found_described_and_separated():
    results = _two_regime_verdicts(range(10))
    assert all(v.n_regimes >= 2 and v.separation_p <= 0.05 for v, _ in results)
    assert sum(v.n_regimes == 2 for v, _ in results) >= 8  # measured 9 of 10 (the other: 3)
    # A claim also needs the regimes to tell more than a one-regime GARCH's forecast: spells of ~200 bars are
    # followed by a persistent GARCH, so only some seeds get there (measured 5 of 10: seeds 1, 4, 5, 8, 9)
    claimed = [v for v, _ in results if v.significant]
    assert 3 <= len(claimed) < len(results)
    assert all(v.beyond_recent_vol_p <= 0.05 for v in claimed)
    verdict, regime = next((v, r) for v, r in results if v.n_regimes == 2)
    calm, turbulent = verdict.regimes.iloc[0], verdict.regimes.iloc[1]
    assert calm["vol_low"] < 0.01 * 1.15 and turbulent["vol_high"] > 0.025 * 0.9
    assert calm["vol_high"] < turbulent["vol_low"]  # the intervals do not overlap
    assert calm["mean_low"] < 0 < calm["mean_high"]  # no drift was planted
    assert adjusted_rand_score(regime, verdict.labels) > 0.5
    assert next(v for v in claimed if v.n_regimes == 2).text.startswith("X: 2 distinct regimes with different vol")
    spells = next(v for v, _ in results if not v.significant)
    assert spells.text.startswith("X: no distinct regimes:") and "a GARCH explains as well" in spells.text


@pytest.mark.slow
def test_two_volatility_regimes_many_seeds():
    results = _two_regime_verdicts(range(100, 150))
    assert np.mean([v.separation_p <= 0.05 for v, _ in results]) >= 0.95  # measured 49 of 50 (seed 122: p 0.10)
    # measured 90%; the others find 3: a middle cluster of bars the state cannot place (a mix of both regimes,
    # with a volatility in between), which is what the data say given that state
    assert np.mean([v.n_regimes == 2 for v, _ in results]) >= 0.8
    assert np.mean([v.significant for v, _ in results]) >= 0.3  # beyond GARCH: measured 28 of 50


def test_given_labels_are_tested_as_they_are():
    returns, state, regime = two_regimes(3)
    own, gaps, open_bars = returns.copy(), np.ones(N_BARS), np.ones(N_BARS, bool)
    own[0] = gaps[0] = np.nan
    # the planted labels separate the next bar's volatility (whether they beat a GARCH is another matter: p 0.09)
    assert regime_evidence(regime, open_bars, own, gaps, "X", FAST).separation_p <= 0.05
    shuffled = np.random.default_rng(0).permutation(regime)  # labels unrelated to the bars they label
    verdict = regime_evidence(shuffled, open_bars, own, gaps, "X", FAST)
    assert not verdict.significant and verdict.n_regimes == 2 and verdict.persistence_p > 0.05
    partial = np.where(np.arange(N_BARS) < 100, NO_LABEL, regime)
    assert regime_evidence(partial, open_bars, own, gaps, "X", FAST).n_bars == N_BARS - 100 - 1


def test_the_hmm_baseline_is_filtered_and_finds_planted_volatility_regimes():
    returns, _, regime = two_regimes(4)
    own = returns.copy()
    own[0] = np.nan
    labels = hmm_baseline_labels(np.abs(own), np.ones(N_BARS, bool), FIT)
    # A Gaussian HMM on |r| with fat tails splits large moves from small ones more than it finds the spells
    # (measured ARI 0.2 here, 0.36 with the Viterbi path that peeks ahead): a weak baseline, but a fair one.
    assert labels[0] == NO_LABEL and adjusted_rand_score(regime[1:], labels[1:]) > 0.1
    assert labels[1:][regime[1:] == 1].mean() > labels[1:][regime[1:] == 0].mean() + 0.2  # 1 = turbulent
    # filtered: changing a later bar leaves earlier states alone
    changed = own.copy()
    changed[1500:] *= 5
    assert (hmm_baseline_labels(np.abs(changed), np.ones(N_BARS, bool), FIT)[:1500] == labels[:1500]).all()


def garch_one_regime(seed: int, n: int = N_BARS, alpha: float = 0.08, beta: float = 0.9):
    """One regime with volatility clustering (GARCH(1,1), the demo's parameters): a state that tracks recent
    volatility predicts the next bar's, with no distinct states to find."""
    rng = np.random.default_rng(seed)
    shocks = rng.standard_t(5, n) / np.sqrt(5 / 3)
    returns, variance = np.empty(n), 1e-4
    for i in range(n):
        returns[i] = np.sqrt(variance) * shocks[i]
        variance = 1e-4 * (1 - alpha - beta) + alpha * returns[i] ** 2 + beta * variance
    return returns, _state(returns, _slow_noise(rng, n, 0.995), rng)


def _clustering_claims(seeds: range) -> tuple[int, int]:
    """(separated: the clusters describe different next-bar volatility, claimed: regimes declared)."""
    verdicts = [_verdict(*garch_one_regime(seed), FAST) for seed in seeds]
    return sum(v.separation_p <= 0.05 for v in verdicts), sum(v.significant for v in verdicts)


def test_volatility_clustering_separates_but_no_regime_is_claimed():
    seeds = range(10)
    separated, claimed = _clustering_claims(seeds)
    assert separated >= 3  # measured 13 of 20 seeds: the state's clusters do track the clustering
    assert claimed <= _allowed(len(seeds))  # measured 0 of 20: the GARCH forecast explains what they track


@pytest.mark.slow
def test_volatility_clustering_claims_no_regime_many_seeds():
    seeds = range(100, 160)
    assert _clustering_claims(seeds)[1] <= _allowed(len(seeds))  # measured 0 of 60 (separated: 38 of 60)


def _weekday_market(seed: int, n_days: int = 2100) -> tuple[Panel, np.ndarray]:
    """An equity on a daily clock with weekends: the first bar after a weekend carries three days of variance, and
    the state knows the calendar (it can tell that the next bar comes after a weekend). One regime."""
    rng = np.random.default_rng(seed)
    observed = (np.arange(n_days) % 7) < 5
    rows = np.flatnonzero(observed)
    gap_days = np.diff(rows, prepend=rows[0] - 1)
    step = _t_returns(rng, 0.01 * np.sqrt(gap_days.astype(float)))
    close = np.full(n_days, np.nan)
    close[rows] = 100 * np.exp(np.cumsum(step))
    close = pd.Series(close).ffill().to_numpy()
    fields = {name: close[:, None].copy() for name in ("open", "high", "low", "close")}
    fields["volume"] = observed[:, None].astype(float)
    panel = Panel(ts=pd.date_range("2021-01-04", periods=n_days, freq="D", tz="UTC"), symbols=("EQ",),
                  fields=fields, observed=observed[:, None].copy(), interval="1d")
    before_weekend = np.zeros(n_days)
    before_weekend[rows[:-1][np.diff(rows) > 1]] = 1.0
    calendar = [before_weekend + 0.1 * rng.standard_normal(n_days) for _ in range(2)]  # say, two calendar features
    state = np.stack([*calendar, _slow_noise(rng, n_days)], axis=1)
    return panel, state[None]


def test_a_weekend_gap_is_not_a_regime_once_returns_are_gap_normalised():
    panel, state = _weekday_market(0)
    hours = hours_since_previous_bar(panel)
    assert set(np.unique(hours[np.isfinite(hours)])) == {24.0, 72.0}
    normalised = gap_normalised(own_bar_log_returns(panel), hours)
    assert np.nanstd(normalised[hours == 72]) == pytest.approx(np.nanstd(normalised[hours == 24]), rel=0.25)
    mask = np.asarray(panel.observed).T
    fit = range(0, 1500)
    verdict = regime_verdicts_for_panel(panel, state, mask, fit, FAST).verdicts[0]
    assert not verdict.significant
    # the same state and returns, read without the gaps: the Friday "regime" is the weekend's variance
    flat = np.where(np.isfinite(hours), 24.0, np.nan)
    raw = regime_verdicts(state, mask, own_bar_log_returns(panel), flat, ["EQ"], fit, FAST).verdicts[0]
    assert raw.significant and raw.n_regimes == 2


def test_verdicts_over_several_assets_are_corrected_together():
    rows = [one_regime(7), two_regimes(8)[:2], one_regime(9)]
    returns = np.stack([r for r, _ in rows])
    returns[:, 0] = np.nan
    states = np.stack([s for _, s in rows])
    gaps = np.where(np.isfinite(returns), 1.0, np.nan)
    tests = regime_verdicts(states, np.ones((3, N_BARS), bool), returns, gaps, ["A", "B", "C"], FIT, FAST,
                            rows=range(FIT.stop, N_BARS))
    table = tests.table()
    assert table["significant"].tolist() == [False, False, False]  # B's 600 test bars: separated, not beyond GARCH
    assert (table["separation_q"] <= 0.05).tolist() == [False, True, False]
    rule = (table["n_regimes"] >= 2) & (table["separation_q"] <= 0.05) & (table["beyond_q"] <= 0.05)
    assert (table["significant"] == rule).all()
    b = tests["B"]
    assert b.separation_q >= b.separation_p and b.beyond_q >= b.beyond_recent_vol_p
    assert b.n_bars == N_BARS - FIT.stop - 1
    assert len(b.embedding_bic) == FAST.max_regimes and len(b.returns_criterion) == FAST.max_regimes
    assert set(tests.regimes_table()["symbol"]) == {"A", "B", "C"}
