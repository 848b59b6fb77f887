"""Issue 15's recovery benchmark (engine.benchmarks.recovery): its oracle, its totals' pass/fail, and, slow, that a
trained null member claims nothing and a lead member is found at its planted lag."""
from __future__ import annotations

import dataclasses
import math

import numpy as np
import pytest

from engine.benchmarks.recovery import (
    MemberJob,
    forecastable_oracle,
    lead_regressors,
    members,
    null_lead_row,
    ols_ceiling,
    run_member,
    summarise,
    with_overrides,
)
from engine.targets import compute_targets
from storage.sources.planted_family import family_member


def test_the_oracle_is_the_truths_conditional_mean_inside_a_session_and_less_across_a_close():
    member = family_member(1000014, "lead+memory", "1h", 2000, n_assets=3)  # C0 leads E1 by 3 rows, E0 by 6
    truth, panel = member.truth, member.panel
    targets = compute_targets(panel, (1,))
    for asset in (1, 2):
        rows = np.flatnonzero(targets.valid[asset, :, 0])
        ends = targets.end_row[asset, rows, 0]
        oracle = forecastable_oracle(truth, panel, ends, rows, asset)
        inside = ends == rows + 1
        np.testing.assert_allclose(oracle[inside], truth.oracle_mean[asset, ends[inside]], atol=1e-15)
        # across a close the overnight source moves are not known yet at the last bar of the day
        across = ~inside
        assert np.abs(oracle[across]).mean() < np.abs(truth.oracle_mean[asset, ends[across]]).mean()
    assert not forecastable_oracle(truth, panel, np.array([5]), np.array([4]), 0).any(), "C0 is led by nothing"
    # before the lag has passed there is no source return to know (a slice to a negative row once summed them all)
    assert not forecastable_oracle(truth, panel, np.array([1, 2]), np.array([0, 1]), 2).any()


def test_the_ols_ceiling_regresses_on_the_planted_sources_per_fold():
    member = family_member(1000014, "lead+memory", "1h", 2000, n_assets=3)  # C0 leads E1 by 3 rows, E0 by 6
    truth, panel = member.truth, member.panel
    targets = compute_targets(panel, (1,))
    asset = 2
    rows = np.flatnonzero(targets.valid[asset, :, 0])
    ends = targets.end_row[asset, rows, 0]
    x = lead_regressors(truth, panel, ends, rows, asset)
    lead = next(lead for lead in truth.leads if lead.target == truth.assets[asset])
    assert x.shape == (len(rows), 1)
    np.testing.assert_allclose(x[:, 0] * lead.beta, forecastable_oracle(truth, panel, ends, rows, asset))
    assert lead_regressors(truth, panel, ends[:5], rows[:5], 0).shape == (5, 0)  # C0 is led by nothing
    # fitted on the rows before each test fold, OLS finds the planted beta and forecasts nothing off the folds
    y = x[:, 0] * lead.beta + 1e-6 * np.random.default_rng(0).standard_normal(len(rows))
    fold = np.where(rows >= rows[len(rows) // 2], 0, -1)
    fitted = ols_ceiling(x, y, np.ones(len(rows)), rows, fold)
    assert np.isnan(fitted[fold < 0]).all()
    np.testing.assert_allclose(fitted[fold == 0], x[fold == 0, 0] * lead.beta, atol=1e-6)


def _result(kind, **extra):
    base = {"seed": 1, "kind": kind, "assets": ["C0", "C1", "E0"], "leads": [], "lead_found": [],
            "declared_leads": [], "regime_claims": [], "edge_claims": [], "qlike": {"model": 1.0, "garch_t": 1.1},
            "seconds": 1.0}
    return {**base, **extra}


def test_totals_pass_only_when_every_target_is_met():
    good = [_result("lead", leads=[["C1", "C0", 2]], lead_found=[True],
                    oracle={"C1": {"share": 0.9, "share_raw": 0.9, "model_rel": 0.9, "oracle_rel": 0.89,
                                   "share_ols": 1.0}}),
            _result("regimes", ari={"C0": {"claim": 0.5, "page": 0.4, "hmm": 0.3}}),
            _result("memory", memory={"C0": {"rewarded": True, "moves": True, "lookback_differs": True},
                                      "C1": {"rewarded": False, "moves": False, "lookback_differs": True}}),
            _result("null")]
    table = {row["measure"]: row for row in summarise(good)}
    assert all(row["pass"] == "pass" for row in table.values()), table
    bad = good + [_result("null", declared_leads=[["C1", "C0", 1]]),
                  _result("lead", leads=[["C1", "C0", 2]], lead_found=[False],
                          oracle={"C1": {"share": -0.1, "share_raw": -0.1, "model_rel": 1.01, "oracle_rel": 0.9}}),
                  _result("memory", memory={"C0": {"rewarded": True, "moves": False, "lookback_differs": False}})]
    table = {row["measure"]: row for row in summarise(bad)}
    assert table["oracle share captured, worst led asset"]["pass"] == "FAIL"
    assert table["planted leads found at the planted lag"]["value"] == 0.5
    assert table["null members with a lead claimed"]["value"] == 0.5
    assert math.isclose(table["1-bar vol QLIKE, model minus GARCH-t (mean)"]["value"], -0.1)
    moves = table["look-back moves with the memory the data rewards (share of such assets)"]
    assert moves["value"] == 0.5 and moves["n"] == 2 and moves["pass"] == "FAIL"
    assert table["look-back differs where no memory is rewarded (share of such assets; reported)"]["value"] == 1.0
    unjudged = [r for r in good if r["kind"] != "memory"]  # no asset where the data rewards a different memory
    moves = {row["measure"]: row for row in summarise(unjudged)}[
        "look-back moves with the memory the data rewards (share of such assets)"]
    assert moves["pass"] == "n/a" and moves["n"] == 0 and math.isnan(moves["value"])


def test_the_model_free_null_lead_rate_passes_at_the_nominal_rate_only():
    assert null_lead_row({"hits": 6, "n": 120})["pass"] == "pass"  # measured on 120 null members: 6
    assert null_lead_row({"hits": 20, "n": 120})["pass"] == "FAIL"
    assert null_lead_row({"hits": 0, "n": 0})["pass"] == "FAIL"


def test_members_cover_every_kind_and_come_from_one_split():
    chosen = members(8, "held_out")
    assert {kind for _, kind in chosen} >= {"null", "lead", "regimes", "memory", "lead+regimes"}
    validation = {seed for seed, _ in members(8, "validation")}
    assert validation.isdisjoint(seed for seed, _ in chosen)


def test_overrides_reach_nested_fields_and_start_an_absent_stop_mix_from_the_loss():
    from engine.training.presets import general_config

    base = general_config()
    changed = with_overrides(base, (("decay_ssm_dynamics", False), ("loss_weights.volatility", 1.0),
                                    ("early_stop_weights.volatility", 2.0), ("model.max_lag", 3)))
    assert changed.decay_ssm_dynamics is False and changed.model.max_lag == 3
    assert changed.loss_weights.volatility == 1.0 and changed.loss_weights.quantile == base.loss_weights.quantile
    assert changed.early_stop_weights.volatility == 2.0
    assert changed.early_stop_weights.point == base.early_stop_weights.point  # the rest of the stop's mix kept
    plain = dataclasses.replace(base, early_stop_weights=None)
    assert with_overrides(plain, (("early_stop_weights.point", 3.0),)).early_stop_weights == \
        dataclasses.replace(base.loss_weights, point=3.0)


@pytest.mark.slow
def test_a_null_member_yields_no_claim_and_a_lead_member_its_lead():
    null = run_member(MemberJob(1000002, "null", n_bars=4000))
    assert null["declared_leads"] == [] and null["edge_claims"] == [] and null["regime_claims"] == []
    lead = run_member(MemberJob(1000000, "lead", n_bars=4000))  # C1 leads C0 by 3 rows
    assert lead["lead_found"] == [True]
    assert lead["oracle"]["C0"]["share"] > 0.5
