"""Does the look-back move with the memory the data rewards? The Lookback page's claim, on any market.

A model's effective look-back (the SSM's Δ half-life) differing between regimes is only worth stating when the data
itself rewards a different memory there; when it does not, no model could learn to move its memory with the
regime, and the honest sentence is that the look-back does not change with the regime. Per asset and regime
labelling (the page's found regimes, or the planted ones of a synthetic market):

  rewarded   the model-free memory probe (engine.diagnostics.planted_memory) on the asset's own bars inside the
             chosen rows, for both memories it knows: a drift's ("mean": the EMA of past returns against the next
             return) and volatility clustering's ("volatility": the EMA of past |gap-normalised returns| against
             the next one). Two regimes differ in rewarded memory when both of their best correlations are above
             noise and their ranges of tied half-lives (within one standard error of the best) do not overlap.
  model      LookbackTest (engine.diagnostics.lookback_test): the regimes' median look-back, with intervals and a
             Holm-corrected circular-shift test of each pair.
  verdict    - the data rewards a longer memory in A than in B, and the look-back is significantly longer in A:
               "the look-back moves with the memory the data rewards";
             - it rewards a different memory, and the look-back does not move that way (no significant difference,
               or the opposite one): said, with both numbers;
             - it rewards no different memory in any pair: "the look-back does not change with the regime", and a
               measured difference of the look-back, if any, is named as one that follows no rewarded memory.
"""
from __future__ import annotations

from dataclasses import dataclass
from itertools import combinations
from collections.abc import Sequence

import numpy as np
import pandas as pd

from engine.diagnostics.lookback_test import LookbackTest
from engine.diagnostics.planted_memory import MemoryProbeConfig, memory_probe_series
from engine.diagnostics.regime_tests import gap_normalised

TARGETS = ("volatility", "mean")
MIN_REGIME_BARS = 200  # a regime with fewer own bars in the rows is not probed (its correlation is noise)


@dataclass(frozen=True)
class MemoryDifference:
    """Regime `longer` rewards a longer memory than `shorter` (the probe's tied ranges do not overlap)."""

    target: str
    longer: int
    shorter: int
    longer_half_life: int
    shorter_half_life: int


@dataclass(frozen=True)
class RewardedMemory:
    symbol: str
    probe: pd.DataFrame  # memory_probe_series rows for every target (column "target"), regime = the label index
    differences: tuple[MemoryDifference, ...]  # every pair the data tells apart, for any target


def rewarded_memory(symbol: str, returns: np.ndarray, gap_hours: np.ndarray, open_bars: np.ndarray,
                    labels: np.ndarray, rows: range, n_regimes: int,
                    half_lives: tuple[int, ...] = (1, 2, 4, 8, 16, 32, 64, 128, 256)) -> RewardedMemory:
    """ONE asset's own-bar returns, gap hours, open bars and regime labels, each (T,) on the panel's clock ->
    the probe per regime and target over `rows`, and the pairs of regimes whose rewarded memories differ."""
    normalised = gap_normalised(np.asarray(returns, dtype=float)[None], np.asarray(gap_hours, dtype=float)[None])[0]
    own = np.asarray(open_bars, dtype=bool) & np.isfinite(normalised)
    own[: rows.start] = own[rows.stop:] = False
    series, regime = normalised[own], np.asarray(labels)[own]
    names = [str(k) for k in range(n_regimes)]
    frames = [memory_probe_series(series, regime, names, MemoryProbeConfig(half_lives=half_lives, horizons=(1,),
                                                                           target=target))
              for target in TARGETS] if len(series) > 2 else []
    probe = pd.concat(frames, ignore_index=True) if frames else pd.DataFrame(
        columns=["regime", "target", "horizon", "n_bars", "best_half_life", "best_corr", "se", "tied_from",
                 "tied_to", "above_noise"])
    probe["regime"] = probe["regime"].astype(int)
    differences = []
    for target, rows_of_target in probe.groupby("target", sort=False):
        usable = rows_of_target[(rows_of_target["n_bars"] >= MIN_REGIME_BARS) & rows_of_target["above_noise"]]
        for (_, a), (_, b) in combinations(usable.iterrows(), 2):
            if a["tied_to"] < b["tied_from"]:
                longer, shorter = b, a
            elif b["tied_to"] < a["tied_from"]:
                longer, shorter = a, b
            else:
                continue
            differences.append(MemoryDifference(str(target), int(longer["regime"]), int(shorter["regime"]),
                                                int(longer["best_half_life"]), int(shorter["best_half_life"])))
    return RewardedMemory(symbol, probe, tuple(differences))


def lookback_difference(tested: LookbackTest, symbol: str, longer: int, shorter: int) -> float | None:
    """The look-back of `longer` minus that of `shorter` when the test supports a difference, else None."""
    table = tested.differences
    for row in table[(table["symbol"] == symbol) & table["significant"]].itertuples():
        if {row.regime_a, row.regime_b} == {longer, shorter}:
            return float(row.difference if row.regime_b == longer else -row.difference)
    return None


def memory_verdict(rewarded: RewardedMemory, tested: LookbackTest, regime_names: Sequence[str]) -> str:
    """One sentence for the page: does the look-back move with the memory the data rewards?"""
    symbol = rewarded.symbol
    name = {k: str(n) for k, n in enumerate(regime_names)}.get
    found = tested.differences[(tested.differences["symbol"] == symbol) & tested.differences["significant"]]
    if not rewarded.differences:
        moved = ("" if found.empty else " Its measured differences between regimes follow no memory the data "
                 "rewards.")
        return (f"{symbol}: the data rewards the same memory in every regime (the memory probe's best half-lives "
                f"overlap, for the drift and for the volatility): the look-back does not change with the "
                f"regime.{moved}")
    parts = []
    for d in rewarded.differences:
        what = f"the data rewards a longer {d.target} memory in {name(d.longer, d.longer)} " \
               f"(~{d.longer_half_life} bars) than in {name(d.shorter, d.shorter)} (~{d.shorter_half_life} bars)"
        gap = lookback_difference(tested, symbol, d.longer, d.shorter)
        if gap is not None and gap > 0:
            parts.append(f"{what}, and the look-back moves that way (+{gap:.3g} bars, beyond its interval)")
        elif gap is not None:
            parts.append(f"{what}, but the look-back moves the other way ({gap:+.3g} bars)")
        else:
            parts.append(f"{what}, but the look-back does not move that way (no difference beyond chance)")
    return f"{symbol}: " + "; ".join(parts) + "."


def memory_verdicts(symbols: Sequence[str], returns: np.ndarray, gap_hours: np.ndarray, open_bars: np.ndarray,
                    labels: np.ndarray, rows: range, tested: LookbackTest,
                    regime_names: Sequence[str]) -> list[str]:
    """Every asset: returns, gap_hours, open_bars (A, T); labels (T,) shared or (A, T) per asset."""
    labels = np.asarray(labels)
    per_asset = np.broadcast_to(labels, np.asarray(open_bars).shape) if labels.ndim == 1 else labels
    n_regimes = max(int(per_asset.max()) + 1, len(regime_names)) if per_asset.size else 0
    return [memory_verdict(rewarded_memory(symbol, returns[a], gap_hours[a], open_bars[a], per_asset[a], rows,
                                           n_regimes), tested, regime_names)
            for a, symbol in enumerate(symbols)]
