"""The peers benchmark's verdicts: one-sided tests against the hybrid in the direction observed, Holm-corrected."""
from __future__ import annotations

import numpy as np

from engine.benchmarks.peers import TESTED_LOSSES, verdicts_against_hybrid


def test_a_clearly_better_peer_is_called_better_and_a_clearly_worse_one_worse():
    rng = np.random.default_rng(0)
    hybrid = {loss: 1.0 + 0.1 * rng.standard_normal(500) for loss in TESTED_LOSSES}
    better = {loss: values - 0.2 for loss, values in hybrid.items()}
    worse = {loss: values + 0.2 + 0.01 * rng.standard_normal(500) for loss, values in hybrid.items()}
    same = {loss: values + 0.1 * rng.standard_normal(500) for loss, values in hybrid.items()}
    verdicts = verdicts_against_hybrid({"hybrid": hybrid, "better": better, "worse": worse, "same": same})
    for loss in TESTED_LOSSES:
        assert verdicts[("better", loss)] == "better p<0.001"
        assert verdicts[("worse", loss)] == "worse p<0.001"
        assert float(verdicts[("same", loss)].split("p=")[1]) > 0.05  # no difference: no small corrected p
