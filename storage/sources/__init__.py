"""Where bars come from: `get_source(name, **options)` for the fetching sources, `read_bar_file` for imports.

yfinance and ccxt take seconds to import, and the app starts on the demo market, so nothing here imports a
source module until it is asked for: get_source imports inside, and the convenience names below
(read_bar_file, DemoSource, demo_market, DEMO_SYMBOLS) load on first access.
"""
from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from storage.sources.base import BAR_COLUMNS, BarSource, SourceError

if TYPE_CHECKING:  # for type checkers and readers only; at run time these load lazily
    from storage.sources.demo import DEMO_SYMBOLS, DemoSource, demo_market
    from storage.sources.files import read_bar_file

# name -> (module, class); the fetching sources get_source can build.
_SOURCE_CLASSES: dict[str, tuple[str, str]] = {
    "demo": ("storage.sources.demo", "DemoSource"),
    "yfinance": ("storage.sources.yfinance_source", "YFinanceSource"),
    "ccxt": ("storage.sources.ccxt_source", "CcxtSource"),
}
FETCH_SOURCE_NAMES: tuple[str, ...] = tuple(_SOURCE_CLASSES)

_LAZY_NAMES: dict[str, str] = {
    "read_bar_file": "storage.sources.files",
    "DemoSource": "storage.sources.demo",
    "demo_market": "storage.sources.demo",
    "DEMO_SYMBOLS": "storage.sources.demo",
}

__all__ = [
    "BAR_COLUMNS",
    "BarSource",
    "SourceError",
    "FETCH_SOURCE_NAMES",
    "get_source",
    *_LAZY_NAMES,
]


def get_source(name: str, **options: Any) -> BarSource:
    """A fresh source by name: "demo" (variant, seed, now), "yfinance", "ccxt" (exchange, quote, ...).

    Files (CSV/Parquet) are not a fetching source: import them with read_bar_file(path_or_bytes, origin=...).
    """
    if name in ("csv", "parquet"):
        raise ValueError(
            f"source {name!r} is a file import, not a fetching source: use read_bar_file(path) "
            "from storage.sources"
        )
    if name not in _SOURCE_CLASSES:
        raise ValueError(f"source {name!r} is not known: choose one of {', '.join(_SOURCE_CLASSES)}")
    module_name, class_name = _SOURCE_CLASSES[name]
    source_class = getattr(importlib.import_module(module_name), class_name)
    try:
        return source_class(**options)
    except TypeError as error:  # an option the source does not take: say which source and what it got
        raise ValueError(f"source {name!r} does not accept options {sorted(options)}: {error}") from error


def __getattr__(name: str) -> Any:
    if name in _LAZY_NAMES:
        return getattr(importlib.import_module(_LAZY_NAMES[name]), name)
    raise AttributeError(f"module 'storage.sources' has no attribute {name!r}")
