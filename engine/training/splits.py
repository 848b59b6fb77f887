"""Walk-forward folds: train on the past, choose on a later validation span, score on a still later test span.

Targets look h bars ahead, so a training row near the end of its span would be scored against prices inside the
validation span. A purge gap of at least the largest horizon between train and val, and again between val and test,
keeps every target inside the span that owns it. On a mixed-calendar panel h own bars of an equity can cover more
union rows than h (weekends): use `Targets.max_reach()` as the purge there, and `Targets.until(stop)` as the second
line of defence.

Folds are anchored at the END of the data: the last test span ends on the last row, each earlier fold steps back
by one test span, and whatever is left over goes to the first training span.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from engine.targets import DEFAULT_HORIZONS

Mode = Literal["expanding", "rolling"]


@dataclass(frozen=True)
class Fold:
    index: int
    train: range
    val: range
    test: range
    purge: int

    def __post_init__(self):
        for name in ("train", "val", "test"):
            span = getattr(self, name)
            if span.step != 1 or len(span) == 0:
                raise ValueError(f"fold {self.index}: {name} span {span} must be a non-empty contiguous range")
        if self.val.start - self.train.stop < self.purge or self.test.start - self.val.stop < self.purge:
            raise ValueError(
                f"fold {self.index}: gaps train->val {self.val.start - self.train.stop} and val->test "
                f"{self.test.start - self.val.stop} must both be >= purge {self.purge}"
            )


def walk_forward(
    n_rows: int,
    n_folds: int,
    min_train: int,
    val_size: int,
    test_size: int,
    purge: int,
    mode: Mode = "expanding",
    max_horizon: int = max(DEFAULT_HORIZONS),
) -> list[Fold]:
    """Folds over rows [0, n_rows).

    expanding: every train span starts at row 0 (the first has at least min_train rows).
    rolling:   every train span has exactly min_train rows and ends where the expanding one would.
    """
    for name, value in (("n_rows", n_rows), ("n_folds", n_folds), ("min_train", min_train),
                        ("val_size", val_size), ("test_size", test_size), ("max_horizon", max_horizon)):
        if not isinstance(value, int) or value < 1:
            raise ValueError(f"{name} must be a positive integer, got {value!r}")
    if not isinstance(purge, int) or purge < max_horizon:
        raise ValueError(
            f"purge {purge!r} must be an integer >= the largest horizon {max_horizon}: otherwise training targets "
            "would be scored on validation prices"
        )
    if mode not in ("expanding", "rolling"):
        raise ValueError(f"mode must be 'expanding' or 'rolling', got {mode!r}")
    needed = min_train + purge + val_size + purge + n_folds * test_size
    if needed > n_rows:
        raise ValueError(
            f"{n_rows} rows are too few for {n_folds} folds: need min_train {min_train} + 2 x purge {purge} + "
            f"val {val_size} + {n_folds} x test {test_size} = {needed}"
        )

    folds = []
    for k in range(n_folds):
        test_start = n_rows - (n_folds - k) * test_size
        val_start = test_start - purge - val_size
        train_stop = val_start - purge
        train_start = 0 if mode == "expanding" else train_stop - min_train
        folds.append(
            Fold(
                index=k,
                train=range(train_start, train_stop),
                val=range(val_start, val_start + val_size),
                test=range(test_start, test_start + test_size),
                purge=purge,
            )
        )
    return folds
