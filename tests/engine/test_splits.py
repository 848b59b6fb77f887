"""Walk-forward folds: train before val before test, purged gaps, test spans that march forward without overlap."""
from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from engine.training.splits import Fold, walk_forward


def check_fold_invariants(folds: list[Fold], n_rows: int, purge: int) -> None:
    for fold in folds:
        assert fold.train.stop + purge <= fold.val.start
        assert fold.val.stop + purge <= fold.test.start
        assert 0 <= fold.train.start and fold.test.stop <= n_rows
    for earlier, later in zip(folds, folds[1:]):
        assert earlier.test.stop <= later.test.start  # no overlap, forward only
        assert earlier.train.stop < later.train.stop


def test_expanding_folds_share_row_zero_and_end_on_the_last_row():
    folds = walk_forward(1000, n_folds=4, min_train=300, val_size=50, test_size=100, purge=20)
    assert [fold.train.start for fold in folds] == [0, 0, 0, 0]
    assert folds[-1].test.stop == 1000
    assert [len(fold.test) for fold in folds] == [100] * 4
    assert [fold.test.start for fold in folds] == [600, 700, 800, 900]
    assert folds[0].train == range(0, 510) and folds[0].val == range(530, 580)
    assert len(folds[0].train) >= 300
    check_fold_invariants(folds, 1000, 20)


def test_rolling_folds_keep_a_fixed_training_length():
    folds = walk_forward(1000, n_folds=4, min_train=300, val_size=50, test_size=100, purge=20, mode="rolling")
    assert [len(fold.train) for fold in folds] == [300] * 4
    assert [fold.train.stop for fold in folds] == [510, 610, 710, 810]
    check_fold_invariants(folds, 1000, 20)


def test_a_purge_shorter_than_the_longest_horizon_is_refused():
    with pytest.raises(ValueError, match="purge 5 must be an integer >= the largest horizon 20"):
        walk_forward(1000, 3, 300, 50, 100, purge=5)
    assert walk_forward(1000, 3, 300, 50, 100, purge=5, max_horizon=5)[0].purge == 5


def test_too_little_data_says_how_much_is_needed():
    with pytest.raises(ValueError, match=r"500 rows are too few for 4 folds: .* = 790"):
        walk_forward(500, n_folds=4, min_train=300, val_size=50, test_size=100, purge=20)


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"n_folds": 0}, "n_folds must be a positive integer"),
        ({"test_size": -1}, "test_size must be a positive integer"),
        ({"mode": "sliding"}, "mode must be 'expanding' or 'rolling'"),
    ],
)
def test_bad_arguments_are_named(kwargs, message):
    arguments = dict(n_rows=1000, n_folds=3, min_train=300, val_size=50, test_size=100, purge=20) | kwargs
    with pytest.raises(ValueError, match=message):
        walk_forward(**arguments)


def test_a_fold_without_its_purge_gap_cannot_be_built():
    with pytest.raises(ValueError, match="must both be >= purge 20"):
        Fold(index=0, train=range(0, 100), val=range(110, 150), test=range(170, 200), purge=20)


@settings(max_examples=150, deadline=None)
@given(
    n_folds=st.integers(1, 8),
    min_train=st.integers(1, 500),
    val_size=st.integers(1, 200),
    test_size=st.integers(1, 200),
    purge=st.integers(20, 60),
    slack=st.integers(0, 300),
    mode=st.sampled_from(["expanding", "rolling"]),
)
def test_any_feasible_request_gives_ordered_purged_forward_folds(
    n_folds, min_train, val_size, test_size, purge, slack, mode
):
    n_rows = min_train + 2 * purge + val_size + n_folds * test_size + slack
    folds = walk_forward(n_rows, n_folds, min_train, val_size, test_size, purge, mode=mode)
    assert len(folds) == n_folds
    check_fold_invariants(folds, n_rows, purge)
    assert all(len(fold.train) >= min_train for fold in folds)
    if mode == "rolling":
        assert all(len(fold.train) == min_train for fold in folds)
