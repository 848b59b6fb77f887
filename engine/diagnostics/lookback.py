"""Effective look-back summarised per regime: does the model's memory move with the market's regime?

The per-bar numbers come from engine/model/inference.py: for each asset and bar, quantiles over channels of the half-life
ln 2 / (Delta * |A_slowest|) in bars. Here they are grouped by a regime label per bar (the planted truth of the demo,
or the labels found in the embeddings) over the asset's open bars.
"""
from __future__ import annotations

from typing import Sequence

import numpy as np
import pandas as pd


def checked_lookback_inputs(lookback_median, open_bars, labels, symbols: Sequence[str], rows: range | None):
    """-> (lookback_median (A, T) float, open_bars (A, T) bool, labels (A, T), span (T,) bool of `rows`), or
    ValueError saying which shapes disagree. Labels (T,) are shared by every asset."""
    lookback_median, open_bars = np.asarray(lookback_median, dtype=float), np.asarray(open_bars, dtype=bool)
    n_assets, n_rows = lookback_median.shape
    if open_bars.shape != (n_assets, n_rows) or len(symbols) != n_assets:
        raise ValueError(
            f"lookback {lookback_median.shape}, open_bars {open_bars.shape} and {len(symbols)} symbols must agree"
        )
    labels = np.asarray(labels)
    if labels.shape == (n_rows,):
        labels = np.broadcast_to(labels, (n_assets, n_rows))
    if labels.shape != (n_assets, n_rows):
        raise ValueError(f"labels must be (time,) = ({n_rows},) or (assets, time), got {labels.shape}")
    span = np.zeros(n_rows, dtype=bool)
    span[slice(None) if rows is None else slice(rows.start, rows.stop)] = True
    return lookback_median, open_bars, labels, span


def lookback_by_regime(
    lookback_median: np.ndarray,
    open_bars: np.ndarray,
    labels: np.ndarray,
    symbols: Sequence[str],
    regime_names: Sequence[str] | None = None,
    rows: range | None = None,
) -> pd.DataFrame:
    """lookback_median (A, T) bars, open_bars (A, T) bool, labels (T,) shared or (A, T) per asset, -1 = none.

    -> one row per (asset, regime): n_bars, median, p25 and p75 (over bars) of the per-bar median half-life.
    """
    lookback_median, open_bars, labels, span = checked_lookback_inputs(
        lookback_median, open_bars, labels, symbols, rows)
    n_regimes = int(labels.max()) + 1 if labels.size else 0
    records = []
    for asset, symbol in enumerate(symbols):
        usable = open_bars[asset] & span & np.isfinite(lookback_median[asset])
        for regime in range(n_regimes):
            values = lookback_median[asset, usable & (labels[asset] == regime)]
            p25, median, p75 = np.percentile(values, [25, 50, 75]) if len(values) else (np.nan,) * 3
            records.append({
                "symbol": symbol,
                "regime": regime,
                "regime_name": regime_names[regime] if regime_names is not None else str(regime),
                "n_bars": int(len(values)),
                "median": float(median),
                "p25": float(p25),
                "p75": float(p75),
            })
    return pd.DataFrame.from_records(records)
