"""Small, valid bar frames built in the tests themselves (no network, no demo generator)."""
from __future__ import annotations

import numpy as np
import pandas as pd


def make_bars(n: int, start: str = "2024-01-01", freq: str = "1h", seed: int = 0, price: float = 100.0) -> pd.DataFrame:
    """n consecutive bars every `freq` from `start` (UTC): a random walk with consistent OHLC."""
    rng = np.random.default_rng(seed)
    ts = pd.date_range(start, periods=n, freq=freq, tz="UTC").as_unit("us")
    close = price * np.exp(np.cumsum(rng.normal(0.0, 0.01, n)))
    open_ = np.concatenate([[price], close[:-1]])
    spread = 1.0 + rng.uniform(0.0, 0.01, n)
    return pd.DataFrame(
        {
            "ts": ts,
            "open": open_,
            "high": np.maximum(open_, close) * spread,
            "low": np.minimum(open_, close) / spread,
            "close": close,
            "volume": rng.uniform(1.0, 1000.0, n),
        }
    )


def only_weekdays(frame: pd.DataFrame) -> pd.DataFrame:
    """The bars of a market that is closed on Saturdays and Sundays (UTC)."""
    return frame[frame["ts"].dt.day_of_week < 5].reset_index(drop=True)
