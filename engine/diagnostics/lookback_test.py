"""Effective look-back per regime with intervals, and a test of the difference between regimes.

lookback.lookback_by_regime gives each (asset, regime) the median over its bars of the per-bar median half-life.
Those bars are far from independent: the half-life comes from a slowly moving state, and regimes come in spells, so
a spread over bars (p25-p75) says nothing about how sure the median is.

  interval    moving-block bootstrap: runs of `block` consecutive own bars (label and look-back together) are
              resampled, the block at least as long as the labels' mean spell and twice the look-back series'
              decorrelation length (first lag where its autocorrelation falls below 1/e), at least sqrt(n), at most
              n/4. With a state this slow there are only a handful of independent stretches in a few thousand bars,
              and a block bootstrap then runs narrow: read the intervals as a lower bound on the uncertainty.
  difference  the gap between two regimes' medians against the same gap with the label sequence circularly
              shifted relative to the look-back series (each keeps its own dependence; only their alignment is
              broken), two-sided, Holm-corrected over every pair of every asset. Measured on a smooth look-back
              (AR(1), phi 0.995) with independent persistent labels (mean spell 200 bars), 2,000 bars, at 5%: the
              block bootstrap's own test declared a difference in 14% of 200 seeds, this shift test in 7% (it is
              exact for a circular series; the one seam of a line costs the rest). With a planted gap of 1.7 standard
              deviations of the look-back it finds the difference in 35 of 40 seeds.

A ranking of regimes by look-back is stated only where the tests say so (LookbackTest.ranking); otherwise "no
difference found".
"""
from __future__ import annotations

import warnings
from dataclasses import dataclass
from itertools import combinations
from typing import Sequence

import numpy as np
import pandas as pd

from engine.diagnostics.lookback import checked_lookback_inputs
from engine.diagnostics.resampling import circular_shifts, moving_block_indices, percentile_interval


def decorrelation_bars(values: np.ndarray) -> int:
    """The first lag at which the autocorrelation of `values` falls below 1/e (len(values) if it never does)."""
    x = np.asarray(values, dtype=float) - np.mean(values)
    n = len(x)
    if n < 3 or not np.any(x):
        return 1
    spectrum = np.fft.rfft(x, 2 * n)
    acf = np.fft.irfft(spectrum * np.conj(spectrum))[:n]
    below = np.flatnonzero(acf / acf[0] < np.exp(-1))
    return int(below[0]) if len(below) else n


def mean_spell_bars(labels: np.ndarray) -> float:
    """Mean length of the runs of equal labels."""
    labels = np.asarray(labels)
    return len(labels) / (1 + np.count_nonzero(labels[1:] != labels[:-1])) if len(labels) else 0.0


def automatic_block(labels: np.ndarray, values: np.ndarray) -> int:
    n = len(values)
    block = max(np.sqrt(n), mean_spell_bars(labels), 2 * decorrelation_bars(values))
    return int(max(1, min(round(block), n // 4 if n >= 4 else n)))


def _shifted_medians(values: np.ndarray, labels: np.ndarray, n_regimes: int, n_shifts: int,
                     rng: np.random.Generator) -> np.ndarray:
    """(n_shifts, K) per-regime medians of `values` with the labels circularly shifted."""
    n = len(values)
    offsets = circular_shifts(n, n_shifts, rng)
    rolled = labels[(np.arange(n)[None, :] - offsets[:, None]) % n]  # (S, n)
    out = np.full((len(offsets), n_regimes), np.nan)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        for regime in range(n_regimes):
            out[:, regime] = np.nanmedian(np.where(rolled == regime, values[None, :], np.nan), axis=1)
    return out


@dataclass(frozen=True)
class LookbackTest:
    intervals: pd.DataFrame  # symbol, regime, regime_name, n_bars, median, low, high, block_bars
    differences: pd.DataFrame  # symbol, regime_a, regime_b, difference (b - a), low, high (bootstrap), p (shifts),
    #                             q (Holm over all pairs), significant
    alpha: float

    def ranking(self, symbol: str) -> str:
        """The regimes' look-back order in words, claimed only for the differences the tests support."""
        found = self.differences[(self.differences["symbol"] == symbol) & self.differences["significant"]]
        names = self.intervals[self.intervals["symbol"] == symbol].set_index("regime")["regime_name"]
        if found.empty:
            return (f"{symbol}: no difference in effective look-back between regimes found "
                    f"(no pair passes Holm-corrected {self.alpha:.0%}).")
        parts = []
        for row in found.itertuples():
            if row.difference > 0:
                longer, shorter, size, low, high = row.regime_b, row.regime_a, row.difference, row.low, row.high
            else:
                longer, shorter, size, low, high = row.regime_a, row.regime_b, -row.difference, -row.high, -row.low
            parts.append(f"{names[longer]} longer than {names[shorter]} by {size:.3g} bars "
                         f"[{low:.3g}, {high:.3g}], q {row.q:.2g}")
        return f"{symbol}: look-back " + "; ".join(parts) + "."


def lookback_regime_test(
    lookback_median: np.ndarray,
    open_bars: np.ndarray,
    labels: np.ndarray,
    symbols: Sequence[str],
    regime_names: Sequence[str] | None = None,
    rows: range | None = None,
    *,
    n_boot: int = 500,
    n_shifts: int = 199,
    block_bars: int | None = None,
    level: float = 0.95,
    alpha: float = 0.05,
    seed: int = 0,
) -> LookbackTest:
    """lookback_median (A, T) bars, open_bars (A, T), labels (T,) shared or (A, T) per asset (-1: none) ->
    per-regime median look-back with a block-bootstrap interval, and every pair of regimes' difference with a
    bootstrap interval and a circular-shift p. Arguments as lookback.lookback_by_regime; block_bars None:
    automatic_block per asset."""
    from statsmodels.stats.multitest import multipletests

    lookback_median, open_bars, labels, span = checked_lookback_inputs(
        lookback_median, open_bars, labels, symbols, rows)
    n_assets, n_rows = lookback_median.shape
    n_regimes = int(labels.max()) + 1 if labels.size else 0
    rng = np.random.default_rng(seed)
    intervals, differences = [], []
    for asset, symbol in enumerate(symbols):
        usable = open_bars[asset] & span & np.isfinite(lookback_median[asset]) & (labels[asset] >= 0)
        values, lab = lookback_median[asset, usable], labels[asset, usable]
        n = len(values)
        block = (block_bars or automatic_block(lab, values)) if n else 0
        boot = np.full((n_boot, n_regimes), np.nan)
        if n:
            index = moving_block_indices(n, block, n_boot, rng)
            resampled_values, resampled_labels = values[index], lab[index]
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", RuntimeWarning)  # a resample without a regime's bars: NaN
                for regime in range(n_regimes):
                    boot[:, regime] = np.nanmedian(np.where(resampled_labels == regime, resampled_values, np.nan),
                                                   axis=1)
        estimate = np.array([np.median(values[lab == r]) if np.any(lab == r) else np.nan for r in range(n_regimes)])
        low, high = percentile_interval(boot, level)
        for regime in range(n_regimes):
            intervals.append({
                "symbol": symbol, "regime": regime,
                "regime_name": regime_names[regime] if regime_names is not None else str(regime),
                "n_bars": int(np.sum(lab == regime)), "median": float(estimate[regime]), "low": float(low[regime]),
                "high": float(high[regime]), "block_bars": int(block),
            })
        shifted = _shifted_medians(values, lab, n_regimes, n_shifts, rng) if n else None  # (S, K)
        for a, b in combinations(range(n_regimes), 2):
            if not (np.isfinite(estimate[a]) and np.isfinite(estimate[b])):
                continue
            observed = estimate[b] - estimate[a]
            spread = boot[:, b] - boot[:, a]
            d_low, d_high = percentile_interval(spread[np.isfinite(spread)], level) if np.isfinite(spread).any() \
                else (np.nan, np.nan)
            null = np.abs(shifted[:, b] - shifted[:, a])
            null = null[np.isfinite(null)]
            p = (1 + np.sum(null >= abs(observed) - 1e-12)) / (1 + len(null))
            differences.append({"symbol": symbol, "regime_a": a, "regime_b": b, "difference": float(observed),
                                "low": float(d_low), "high": float(d_high), "p": float(p)})
    table = pd.DataFrame.from_records(differences, columns=["symbol", "regime_a", "regime_b", "difference", "low",
                                                            "high", "p"])
    table["q"] = multipletests(table["p"], method="holm")[1] if len(table) else []
    table["significant"] = table["q"] <= alpha
    return LookbackTest(pd.DataFrame.from_records(intervals), table, alpha)
