"""The one interface every bar source implements, and the frame they all return."""
from __future__ import annotations

from typing import Protocol

import pandas as pd

# Every source returns exactly these columns: ts is the bar open as a UTC
# timestamp (datetime64[.., UTC]); prices and volume are float64; rows are
# sorted by ts, unique, and closed bars only.
BAR_COLUMNS: tuple[str, ...] = ("ts", "open", "high", "low", "close", "volume")


class SourceError(RuntimeError):
    """A fetch that failed: says which symbol, why, and what to try."""

    def __init__(self, symbol: str, reason: str, hint: str = ""):
        self.symbol = symbol
        self.reason = reason
        self.hint = hint
        message = f"{symbol}: {reason}"
        if hint:
            message += f" ({hint})"
        super().__init__(message)


class BarSource(Protocol):
    name: str

    def fetch(
        self,
        symbol: str,
        interval: str,
        start: pd.Timestamp | None = None,
        end: pd.Timestamp | None = None,
    ) -> pd.DataFrame:
        """Closed bars for symbol with ts in [start, end), as BAR_COLUMNS."""
        ...
