"""A synthetic universe of N assets (SYNTHETIC), for testing and measuring how the model scales past three assets.

Half of the assets trade around the clock, half on weekdays only (their bars are missing, and the panel carries their
last close, on weekends), so the mask logic is exercised at any N. Every asset after the first follows asset 0 with
a one-bar lead and a loading drawn per asset, so a lead-lag exists to be found at any size. It is built straight as
an aligned Panel (no bars in the cache), for the engine's tests and benchmarks.
"""
from __future__ import annotations

import numpy as np
import pandas as pd

from storage.panel import Panel


def synthetic_universe(n_assets: int, n_bars: int, *, freq: str = "h", seed: int = 0) -> Panel:
    if n_assets < 1 or n_bars < 2:
        raise ValueError(f"need at least 1 asset and 2 bars, got {n_assets} assets and {n_bars} bars")
    rng = np.random.default_rng(seed)
    ts = pd.date_range("2023-01-02", periods=n_bars, freq=freq, tz="UTC")
    shocks = rng.standard_t(5, size=(n_bars, n_assets)) * 0.004
    loadings = rng.uniform(0.05, 0.3, size=n_assets)
    returns = shocks.copy()
    returns[1:, 1:] += loadings[1:] * shocks[:-1, :1]  # everyone follows asset 0 by one bar
    close = 100.0 * np.exp(np.cumsum(returns, axis=0))
    open_ = np.vstack([close[:1], close[:-1]])
    spread = np.abs(rng.normal(0, 0.002, size=close.shape)) * close
    high, low = np.maximum(open_, close) + spread, np.minimum(open_, close) - spread
    volume = rng.lognormal(10, 0.5, size=close.shape)
    observed = np.ones((n_bars, n_assets), dtype=bool)
    weekday_only = np.arange(n_assets) % 2 == 1
    weekend = np.asarray(ts.day_of_week >= 5)
    observed[np.ix_(weekend, weekday_only)] = False
    fields = {"open": open_, "high": high, "low": low, "close": close, "volume": volume}
    # Where a market is closed the panel carries its last close and no volume (storage's as-of join does the same).
    for name in ("open", "high", "low", "close"):
        values = fields[name].copy()
        carried = pd.DataFrame(np.where(observed, close, np.nan)).ffill().to_numpy()
        values[~observed] = carried[~observed]
        fields[name] = values
    fields["volume"] = np.where(observed, volume, 0.0)
    first_rows = np.argmax(observed, axis=0)
    for asset, first in enumerate(first_rows):  # no carried value before an asset's first bar
        for name in ("open", "high", "low", "close"):
            fields[name][:first, asset] = np.nan
    symbols = tuple(f"S{i:02d}" for i in range(n_assets))
    return Panel(ts=ts, symbols=symbols, fields=fields, observed=observed)
