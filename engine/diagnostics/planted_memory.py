"""How much memory the demo's data itself rewards in each planted regime: a model-free reference for recovery
claim 3 ("the effective look-back moves with the planted regimes").

Claim 3 expects the model's look-back to be ordered like the generator's drift half-lives (truth.memory_order).
That expectation only means something if the data rewards that order: if no fixed memory predicts better in one
regime than in another, no model can learn to move its memory with the regimes. This probe measures it without any
model. For each asset, regime and horizon h, it correlates a causal EMA of the asset's own past bar returns (half-life
H bars, counted in the asset's own open bars, as the SSM counts them: closed bars take no step) with the sum of its
next h returns, over the bars of that regime. The H with the largest correlation is the memory the data rewards
there; its standard error says whether that correlation is above noise, and which other half-lives the data cannot
tell from it ("tied": within one standard error of the best correlation).

Standard error: 1 / sqrt(n / h). Sums over h overlapping bars share their terms, so n bars carry about n / h
independent forward sums (for a correlation near 0 under the null of no predictability).

Two memories (MemoryProbeConfig.target):
  mean        the EMA of past returns against the next h returns' sum (a drift's memory: the demo's planted kind);
  volatility  the EMA of past ABSOLUTE returns against the mean absolute return of the next h bars (volatility
              clustering's memory: the planted family's memory members). Absolute rather than squared returns:
              with Student-t tails of 4 degrees of freedom a squared return has no finite variance, and a
              correlation of squares is then ruled by a handful of bars. Under no volatility memory the same
              standard error holds; with clustering every half-life correlates above noise, and the question is
              which one correlates best, and whether two regimes' best half-lives (with their ties) are apart.
Pass gap-normalised returns for the volatility memory of an asset with closing hours (its first bar after a close
carries the overnight move: engine.diagnostics.regime_tests.gap_normalised).
"""
from __future__ import annotations

import argparse
from dataclasses import dataclass
from typing import Sequence

import numpy as np
import pandas as pd

from storage.panel import own_bar_log_returns

DEFAULT_HALF_LIVES = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512)


@dataclass(frozen=True)
class MemoryProbeConfig:
    half_lives: tuple[int, ...] = DEFAULT_HALF_LIVES  # bars of the asset's own; the grid the best one is picked from
    horizons: tuple[int, ...] = (1, 20)  # forward sums of this many bars
    significance: float = 2.0  # a best correlation below this many standard errors is "noise"
    target: str = "mean"  # "mean": a drift's memory; "volatility": the memory of |returns| (see the module notes)

    def __post_init__(self) -> None:
        if self.target not in ("mean", "volatility"):
            raise ValueError(f"MemoryProbeConfig.target must be 'mean' or 'volatility', not {self.target!r}")


def causal_ema(returns: np.ndarray, half_life: float) -> np.ndarray:
    """(n,) returns -> (n,) exponential average of returns[0..t], weight 0.5 per `half_life` bars back."""
    return pd.Series(returns).ewm(halflife=half_life, adjust=False).mean().to_numpy()


def forward_sums(returns: np.ndarray, horizon: int) -> np.ndarray:
    """(n,) -> (n,) sum of returns[t+1 .. t+horizon]; NaN where fewer than `horizon` bars follow."""
    cumulative = np.concatenate([[0.0], np.cumsum(returns)])  # cumulative[k] = sum of returns[:k]
    out = np.full(len(returns), np.nan)
    n_full = len(returns) - horizon
    if n_full > 0:
        out[:n_full] = cumulative[1 + horizon : len(returns) + 1] - cumulative[1 : n_full + 1]
    return out


def memory_probe_series(
    returns: np.ndarray, regimes: np.ndarray, regime_names: Sequence[str], config: MemoryProbeConfig = MemoryProbeConfig()
) -> pd.DataFrame:
    """One asset's own-bar returns (n,) and the regime index at each of those bars (n,) -> one row per
    (regime, horizon): the best half-life, its correlation, the standard error, and every half-life's correlation."""
    if returns.shape != regimes.shape or returns.ndim != 1:
        raise ValueError(f"returns {returns.shape} and regimes {regimes.shape} must be the same 1-d length")
    if not np.isfinite(returns).all():
        raise ValueError("memory_probe_series takes an asset's open bars only: its returns must all be finite")
    series = np.abs(returns) if config.target == "volatility" else returns
    averages = {h: causal_ema(series, h) for h in config.half_lives}
    records = []
    for horizon in config.horizons:
        ahead = forward_sums(series, horizon)
        for k, name in enumerate(regime_names):
            # The EMA at bar t has seen bars <= t only; the target starts at t+1. Rows are the bars t in this regime;
            # a forward sum may run into the next spell, which spells of hundreds of bars make rare.
            rows = (regimes == k) & np.isfinite(ahead)
            n = int(rows.sum())
            correlations = [float(np.corrcoef(averages[h][rows], ahead[rows])[0, 1]) if n > 2 else np.nan
                            for h in config.half_lives]
            best = int(np.nanargmax(correlations)) if np.isfinite(correlations).any() else 0
            se = float(1.0 / np.sqrt(max(n / horizon, 1.0)))
            # Half-lives the data cannot tell from the best one: their correlation is within one standard error.
            tied = [h for h, c in zip(config.half_lives, correlations) if c >= correlations[best] - se]
            records.append({"regime": name, "target": config.target, "horizon": horizon, "n_bars": n,
                            "best_half_life": config.half_lives[best], "best_corr": correlations[best], "se": se,
                            "tied_from": min(tied, default=np.nan), "tied_to": max(tied, default=np.nan),
                            "above_noise": bool(correlations[best] > config.significance * se),
                            **{f"corr_hl{h}": c for h, c in zip(config.half_lives, correlations)}})
    return pd.DataFrame.from_records(records)


def memory_probe(panel, regimes_on_clock: np.ndarray, regime_names: Sequence[str],
                 config: MemoryProbeConfig = MemoryProbeConfig()) -> pd.DataFrame:
    """Every asset of a storage.panel.Panel; regimes_on_clock (T,) the planted regime per panel row."""
    returns = own_bar_log_returns(panel)  # (A, T), NaN where closed and at each asset's first bar
    frames = []
    for asset, symbol in enumerate(panel.symbols):
        own = np.isfinite(returns[asset])
        frame = memory_probe_series(returns[asset, own], regimes_on_clock[own], regime_names, config)
        frames.append(frame.assign(symbol=symbol))
    table = pd.concat(frames, ignore_index=True)
    return table[["symbol", *[c for c in table.columns if c != "symbol"]]]


def main(argv: Sequence[str] | None = None) -> None:
    # The command line reads the demo market; the probe above takes any panel it is handed.
    from storage.panel import demo_panel

    parser = argparse.ArgumentParser(description="Which EMA memory the SYNTHETIC demo's data rewards per planted "
                                                 "regime (model-free reference for recovery claim 3).")
    parser.add_argument("--interval", default="1h", choices=("1h", "1d"))
    args = parser.parse_args(argv)
    loaded = demo_panel(args.interval, variant="planted")
    truth = loaded.truth
    planted = truth.regimes.reindex(loaded.panel.ts).to_numpy()
    table = memory_probe(loaded.panel, planted, truth.regime_names)
    print(f"SYNTHETIC demo, {args.interval}: planted memory, longest first: {' > '.join(truth.memory_order)}")
    print(table[["symbol", "horizon", "regime", "n_bars", "best_half_life", "tied_from", "tied_to",
                 "best_corr", "se", "above_noise"]]
          .to_string(index=False, float_format=lambda v: f"{v:.3f}"))


if __name__ == "__main__":
    main()
