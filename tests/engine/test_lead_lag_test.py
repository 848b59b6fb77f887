"""Model-free lead-lag tests: the lag convention, the bars counted, lag 0 never a lead, the false-positive rate on
independent random walks and the recovery of a planted lead (markets in tests/engine/lead_lag_markets.py)."""
from __future__ import annotations

import numpy as np
import pytest
from scipy.stats import binom

from engine.diagnostics.lead_lag_test import (
    benjamini_hochberg,
    findings_on_returns,
    lead_lag_findings,
    lead_lag_tests_on_returns,
)
from storage.panel import own_bar_log_returns
from tests.engine.lead_lag_markets import detection_rates, false_positive_rate, market


def _row(table, target, source, lag):
    rows = table[(table["target"] == target) & (table["source"] == source) & (table["lag_bars"] == lag)]
    assert len(rows) == 1
    return rows.iloc[0]


def test_lag_k_means_the_source_k_bars_before_the_target():
    rng = np.random.default_rng(0)
    source = rng.standard_normal(500)
    target = np.full(500, np.nan)
    target[3:] = 0.5 * source[:-3] + 0.1 * rng.standard_normal(497)
    table = lead_lag_tests_on_returns(np.stack([target, source]), ["T", "S"], 5)
    hit = _row(table, "T", "S", 3)
    assert hit["significant"] and hit["kind"] == "lead"
    assert hit["beta"] == pytest.approx(0.5, abs=0.02) and hit["corr"] > 0.95
    assert not _row(table, "S", "T", 3)["significant"]  # the other direction is not a lead
    assert table[table["significant"]].shape[0] == 1


def test_only_bars_where_the_target_is_open_and_the_source_was_open_lag_bars_earlier_count():
    panel = market(3, 400, session="leader")
    returns = own_bar_log_returns(panel)
    table = lead_lag_tests_on_returns(returns, panel.symbols, 4)
    observed = np.asarray(panel.observed).T  # (A, T)
    has_return = observed.copy()
    has_return[np.arange(3), observed.argmax(axis=1)] = False  # an asset's first bar has no return
    for lag in range(5):
        expected = int((has_return[1, lag:] & has_return[0, : 400 - lag]).sum())
        assert _row(table, "FOLLOW", "LEAD", lag)["n"] == expected
    assert _row(table, "FOLLOW", "LEAD", 1)["n"] < _row(table, "FOLLOW", "OTHER", 1)["n"]  # LEAD's closed days


def test_q_values_are_benjamini_hochberg_over_every_test():
    p = np.array([0.001, 0.04, 0.03, np.nan, 0.5])
    finite = np.array([0.001, 0.04, 0.03, 0.5])
    order = np.argsort(finite)
    raw = finite[order] * len(finite) / np.arange(1, len(finite) + 1)
    expected = np.empty(4)
    expected[order] = np.minimum.accumulate(raw[::-1])[::-1]
    q = benjamini_hochberg(p)
    assert np.isnan(q[3])
    np.testing.assert_allclose(q[[0, 1, 2, 4]], expected)
    table = lead_lag_findings(market(1, 600), 3).table
    np.testing.assert_allclose(table["q"], benjamini_hochberg(table["p"].to_numpy()))
    assert len(table) == 3 * 2 * 4  # every pair, every lag 0..3, in one family


def test_same_bar_comovement_is_reported_and_never_called_a_lead():
    rng = np.random.default_rng(1)
    common = rng.standard_normal(800)
    returns = np.stack([common + 0.5 * rng.standard_normal(800), common + 0.5 * rng.standard_normal(800)])
    findings = findings_on_returns(returns, ["A", "B"], 3)
    assert not findings.found and findings.top is None and findings.leads.empty
    assert set(findings.comovement["lag_bars"]) == {0} and len(findings.comovement) == 2
    text = findings.summary()
    assert text.startswith("No lead-lag found") and "co-movement (lag 0, not a lead)" in text


def test_no_lead_found_is_a_result_in_words():
    findings = lead_lag_findings(market(5, 1000), 4)
    assert not findings.found and findings.n_tests == 30
    assert findings.summary().startswith("No lead-lag found: none of the 24 lead tests (lags 1..4 bars)")


def _allowed_false_positives(seeds: int, rate: float = 0.05) -> int:
    """The nominal rate plus sampling slack: a calibrated test exceeds this count once in a thousand runs."""
    return int(binom.ppf(0.999, seeds, rate))


def test_random_walks_declare_a_lead_in_at_most_the_nominal_share_of_seeds():
    seeds = 20  # 3 assets x 2,000 bars each, ~2 s
    assert false_positive_rate(seeds) * seeds <= _allowed_false_positives(seeds)


@pytest.mark.slow
def test_random_walks_declare_a_lead_in_at_most_the_nominal_share_of_seeds_many_seeds():
    seeds = 200  # measured: 5.5% of 400 seeds declare something (any lag), every test's p < 0.05 in 5.1%
    assert false_positive_rate(seeds, first_seed=1000) * seeds <= _allowed_false_positives(seeds)


@pytest.mark.parametrize("session", ["leader", "follower"])
def test_a_planted_lead_is_declared_and_is_the_top_pair(session):
    detected, top = detection_rates(5, lag=2, beta=0.15, session=session)
    assert detected == 1.0 and top == 1.0


@pytest.mark.slow
def test_a_planted_lead_is_found_in_nearly_every_seed():
    detected, top = detection_rates(50, lag=3, beta=0.15, first_seed=20_000)
    assert detected >= 0.95 and top >= 0.95
