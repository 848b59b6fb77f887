"""engine.figures.regimes.adjusted_rand_index (numpy, so the Regimes page does not import sklearn) gives
sklearn's adjusted_rand_score on the same labellings."""
from __future__ import annotations

import numpy as np
import pytest
from sklearn.metrics import adjusted_rand_score

from engine.figures.regimes import adjusted_rand_index


def test_it_equals_sklearn_on_random_and_related_labellings():
    rng = np.random.default_rng(0)
    for trial in range(200):
        n = int(rng.integers(2, 2000))
        first = rng.integers(-1, int(rng.integers(1, 6)), n)  # -1 is a label like any other here
        second = rng.integers(0, int(rng.integers(1, 9)), n)
        if trial % 3 == 0:  # mostly the same partition, renamed
            second = np.where(rng.random(n) < 0.8, 7 - first, second)
        assert adjusted_rand_index(first, second) == pytest.approx(adjusted_rand_score(first, second), abs=1e-12)


@pytest.mark.parametrize("first, second", [([0, 0, 1, 1], [5, 5, 5, 5]), ([0, 1, 2, 3], [3, 2, 1, 0]),
                                           ([1, 1, 1], [2, 2, 2]), ([0, 0, 1, 1], [1, 1, 0, 0])])
def test_degenerate_partitions_as_sklearn(first, second):
    assert adjusted_rand_index(np.array(first), np.array(second)) == adjusted_rand_score(first, second)
