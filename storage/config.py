"""Where the cache lives and which names may reach SQL.

Everything that ends up inside a SQL string (table and column names) comes from
constants in this package; everything a user types (symbols, intervals) is
checked here first and then only ever travels as a bound parameter.
"""
from __future__ import annotations

import os
import re
from dataclasses import dataclass
from pathlib import Path

DB_ENV_VAR = "REGIME_DB"
DEFAULT_DB_PATH = Path("data") / "bars.duckdb"

# Bar sizes the product understands, with their length in seconds.
INTERVAL_SECONDS: dict[str, int] = {
    "1m": 60,
    "5m": 300,
    "15m": 900,
    "30m": 1800,
    "1h": 3600,
    "4h": 14400,
    "1d": 86400,
}

# Letters, digits and the separators tickers and exchange pairs use
# (BTC-USD, BTC/USDT, BRK.B, ^GSPC, ES=F); at most 32 characters.
SYMBOL_PATTERN = re.compile(r"^[A-Za-z0-9^][A-Za-z0-9.\-_/=^]{0,31}$")
SOURCE_NAMES = ("demo", "yfinance", "ccxt", "csv", "parquet")


class InvalidNameError(ValueError):
    """A symbol, interval or source that is not allowed to reach the cache."""


def check_symbol(symbol: str) -> str:
    if not isinstance(symbol, str) or not SYMBOL_PATTERN.match(symbol):
        raise InvalidNameError(
            f"symbol {symbol!r} is not allowed: use 1-32 letters, digits or . - _ / = ^ "
            "(for example BTC, SPY, BTC/USDT, BRK.B)"
        )
    return symbol


def check_interval(interval: str) -> str:
    if interval not in INTERVAL_SECONDS:
        raise InvalidNameError(
            f"interval {interval!r} is not supported: choose one of {', '.join(INTERVAL_SECONDS)}"
        )
    return interval


def check_source(source: str) -> str:
    if source not in SOURCE_NAMES:
        raise InvalidNameError(
            f"source {source!r} is not known: choose one of {', '.join(SOURCE_NAMES)}"
        )
    return source


def resolve_db_path(explicit: str | os.PathLike | None = None) -> Path:
    """The --db flag wins, then $REGIME_DB, then data/bars.duckdb under the working directory."""
    if explicit:
        return Path(explicit)
    env = os.environ.get(DB_ENV_VAR)
    if env:
        return Path(env)
    return DEFAULT_DB_PATH


@dataclass(frozen=True)
class CacheSettings:
    db_path: Path
    # Readers retry this long on a writer's lock before giving up (seconds).
    lock_retry_seconds: float = 10.0
