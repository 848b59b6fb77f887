"""engine.benchmarks.claims: the table's columns, the Wilson interval's arithmetic and the threshold's rule, on a tiny
run (2 members per group, model-free test only: no training) and on made-up member results for the attention rows."""
from __future__ import annotations

import math

import pytest

from engine.benchmarks import claims
from storage.sources.planted_family import family_split


def test_wilson_interval_at_the_edges_and_inside():
    z2 = 1.959963984540054 ** 2
    low, high = claims.wilson_interval(0, 50)
    assert low == 0.0 and high == pytest.approx(z2 / (50 + z2), abs=1e-12)  # 0.0713
    assert high == pytest.approx(0.0713, abs=1e-4)
    low, high = claims.wilson_interval(50, 50)
    assert high == 1.0 and low == pytest.approx(50 / (50 + z2), abs=1e-12)  # 0.9287
    assert low == pytest.approx(0.9287, abs=1e-4)
    low, high = claims.wilson_interval(5, 50)  # textbook value for 10%: 4.35% .. 21.36%
    assert (low, high) == (pytest.approx(0.0435, abs=1e-4), pytest.approx(0.2136, abs=1e-4))
    assert all(math.isnan(x) for x in claims.wilson_interval(0, 0))


def test_tasks_keep_validation_and_held_out_apart():
    tasks = claims.tasks_for(5, "1h", 3000, "cpu", attention=True)
    split = family_split(5)
    held = {t.seed for t in tasks if t.split == "held_out"}
    validation = {t.seed for t in tasks if t.split == "validation"}
    assert held == set(split["held_out"]) and validation == set(split["validation"]) and not held & validation
    assert {t.kind for t in tasks if t.split == "validation"} == {"null"}
    assert sorted(t.kind for t in tasks if t.split == "held_out") == ["lead"] * 5 + ["null"] * 5


def test_tiny_model_free_run_prints_the_columns():
    table, record = claims.measure(2, "cpu", workers=1, n_bars=1500, attention=False)
    assert [row["claim"].split(":")[0] for row in table] == ["model-free test", "model-free test"]
    for row in table:
        assert tuple(row) == claims.COLUMNS
        assert row["members"] == 2 and 0 <= row["hits"] <= 2
        assert row["pass"] in ("PASS", "FAIL")
    assert record["members_per_group"] == 2 and record["tasks"] == 4
    assert {"machine", "torch", "device", "seconds"} <= set(record)


def _result(split, kind, top_excess, top_claim=("C0", "C1", 2), planted=(), **extra):
    base = {"split": split, "kind": kind, "top_excess": top_excess, "top_claim": top_claim, "seconds": 1.0,
            "planted": list(planted)}
    if split == "held_out":
        base.update(any_lead=False, all_planted_declared=bool(planted))
    return {**base, **extra}


def test_attention_rows_use_the_validation_threshold_only():
    planted = [("C0", "C1", 2)]
    results = [_result("validation", "null", x) for x in (0.01, 0.02, 0.03, 0.04, 0.05)]
    results += [_result("held_out", "null", 0.045), _result("held_out", "null", 0.001)]
    results += [
        _result("held_out", "lead", 0.2, ("C0", "C1", 2), planted, agreement_n=1, agreement_hits=1),  # detected
        _result("held_out", "lead", 0.2, ("C0", "C1", 3), planted, agreement_n=2, agreement_hits=0),  # wrong lag
        _result("held_out", "lead", 0.01, ("C0", "C1", 2), planted),  # right key, below the threshold
    ]
    table, record = claims.summarise(results, attention=True)
    assert record["threshold"] == pytest.approx(0.048)  # 95% quantile of the 5 validation values, linear
    rows = {row["claim"].split(" (")[0]: row for row in table}
    assert rows["attention: false positives"]["hits"] == 0  # 0.045 < 0.048: held-out nulls never set it
    assert rows["attention: detection"]["hits"] == 1 and rows["attention: detection"]["members"] == 3
    assert "VALIDATION null" in rows["attention: detection"]["rule"]
    assert rows["attention: top excess is a planted pair at the planted lag, no threshold"]["hits"] == 2
    agreement = next(row for row in table if row["claim"].startswith("attention agrees"))
    assert (agreement["hits"], agreement["members"]) == (1, 3)
    assert all(tuple(row) == claims.COLUMNS for row in table)
