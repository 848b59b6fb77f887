"""Resampling for the diagnostics' intervals and nulls: moving blocks of bars, circular shifts.

Bars are not independent (volatility clusters; a model's state and the labels drawn from it move slowly), so an
interval from resampling single bars would be far too narrow. A moving-block bootstrap resamples runs of
`block` consecutive bars (Kunsch 1989) and keeps the dependence within each run; a circular shift moves one
sequence against another and keeps each one's own dependence whole. When both sequences are slow compared with
their length, few shifts differ from each other and a shift test has little power: that is what the data allow.
"""
from __future__ import annotations

import warnings

import numpy as np


def default_block(n: int) -> int:
    """sqrt(n) bars, at least 1: long enough for dependence that dies out within tens of bars at n in the
    thousands; a caller with slower dependence (a smooth state) passes a longer block."""
    return max(1, int(round(np.sqrt(n))))


def moving_block_indices(n: int, block: int, n_boot: int, rng: np.random.Generator) -> np.ndarray:
    """(n_boot, n) indices into a sequence of n bars: each row is ceil(n / block) runs of `block` consecutive bars
    starting anywhere in 0..n-block, cut to n."""
    if n < 1:
        raise ValueError("moving_block_indices: no bars to resample")
    block = int(min(max(block, 1), n))
    n_blocks = -(-n // block)
    starts = rng.integers(0, n - block + 1, size=(n_boot, n_blocks))
    return (starts[:, :, None] + np.arange(block)).reshape(n_boot, -1)[:, :n]


def circular_shifts(n: int, n_shifts: int, rng: np.random.Generator) -> np.ndarray:
    """(n_shifts,) offsets drawn uniformly from 1..n-1: the whole group of rotations but the identity.

    Short shifts are kept on purpose. With two slow sequences, shifts near 0 (and near n) give statistics close to
    the observed one; leaving them out removes the observed value's own neighbourhood from the null and makes it look
    extreme: measured on a smooth series (AR(1), phi 0.995) against independent labels with spells of 200 bars, 2,000
    bars, shifts restricted to [n/10, 9n/10] declared a difference at 5% in 15% of 200 seeds."""
    if n < 2:
        raise ValueError("circular_shifts: at least two bars are needed to shift")
    return rng.integers(1, n, size=n_shifts)


def percentile_interval(samples: np.ndarray, level: float = 0.95, axis: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """(low, high) percentile interval of bootstrap samples along `axis`, ignoring NaN (a resample without a
    regime's bars)."""
    tail = 100 * (1 - level) / 2
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # all-NaN slices: NaN, said by the caller
        return np.nanpercentile(samples, tail, axis=axis), np.nanpercentile(samples, 100 - tail, axis=axis)
