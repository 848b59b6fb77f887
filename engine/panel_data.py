"""Getting an aligned panel to train or evaluate on: the DuckDB cache, or the synthetic demo market directly.

Both roads end in the same shape (engine.features.PanelLike) plus what a checkpoint must remember about it: the
interval, the sources and a fingerprint of the exact numbers. The demo market is aligned with the cache's own
as-of join (storage.cache.align_as_of), so a demo panel read straight from the generator is identical to the one
the app would read back from a cache filled by `storage.refresh` with the demo source.
"""
from __future__ import annotations

import os
from dataclasses import dataclass

import numpy as np
import pandas as pd

from engine.features import PANEL_FIELDS, ArrayPanel, PanelLike, check_panel
from engine.model.checkpoint import DataFingerprint
from storage.cache import align_as_of, read_panel
from storage.sources.demo import DEMO_INTERVALS, DEMO_SYMBOLS, VARIANTS, demo_market


@dataclass(frozen=True)
class LoadedPanel:
    """A panel plus what it is: enough to label it on screen and to fingerprint it for a checkpoint."""

    panel: PanelLike
    interval: str
    sources: tuple[str, ...]  # one per symbol ("demo:planted", "yfinance", ...)
    label: str  # e.g. "demo 1d, planted (SYNTHETIC)"
    synthetic: bool

    @property
    def symbols(self) -> tuple[str, ...]:
        return tuple(self.panel.symbols)

    def fingerprint(self) -> DataFingerprint:
        return panel_fingerprint(self.panel, self.interval, self.sources)


def panel_fingerprint(panel: PanelLike, interval: str, sources=()) -> DataFingerprint:
    """Symbols, interval, span and a hash of every OHLCV value and the observed mask."""
    arrays = {name: np.asarray(panel.fields[name]) for name in PANEL_FIELDS}
    arrays["observed"] = np.asarray(panel.observed).astype(np.float64)
    return DataFingerprint.of(symbols=panel.symbols, interval=interval, ts=panel.ts, arrays=arrays, sources=sources)


def demo_panel(interval: str = "1d", variant: str = "planted", seed: int = 7,
               symbols: tuple[str, ...] = DEMO_SYMBOLS) -> LoadedPanel:
    """The demo market (SYNTHETIC) aligned on the union clock, without a database."""
    if interval not in DEMO_INTERVALS:
        raise ValueError(f"the demo has no {interval!r} bars: choose one of {', '.join(DEMO_INTERVALS)}")
    if variant not in VARIANTS:
        raise ValueError(f"demo variant {variant!r} is not known: choose one of {', '.join(VARIANTS)}")
    unknown = [s for s in symbols if s not in DEMO_SYMBOLS]
    if unknown or not symbols:
        raise ValueError(f"the demo market has {', '.join(DEMO_SYMBOLS)}; got {list(symbols)}")
    market = demo_market(interval, variant, seed)
    frames = [market.bars[symbol] for symbol in symbols]
    asset = np.concatenate([np.full(len(f), a, dtype=np.int64) for a, f in enumerate(frames)])
    ts_us = np.concatenate([pd.DatetimeIndex(f["ts"]).as_unit("us").asi8 for f in frames])  # epoch microseconds
    values = {name: np.concatenate([f[name].to_numpy(dtype=np.float64) for f in frames]) for name in PANEL_FIELDS}
    clock, fields, observed = align_as_of(asset, ts_us, values, len(symbols), None)
    ts = pd.DatetimeIndex(clock.view("datetime64[us]"), name="ts").tz_localize("UTC")
    panel = ArrayPanel(ts=ts, symbols=tuple(symbols), fields=fields, observed=observed)
    check_panel(panel)
    return LoadedPanel(panel, interval, tuple(f"demo:{variant}:{seed}" for _ in symbols),
                       f"demo {interval}, {variant}, seed {seed} (SYNTHETIC)", synthetic=True)


def cached_panel(symbols, interval: str, *, db_path: str | os.PathLike | None = None,
                 sources=None, start=None, end=None) -> LoadedPanel:
    """A panel read from the DuckDB bar cache (storage.cache.read_panel); refuses a symbol with no bars."""
    panel = read_panel(symbols, interval, sources=sources, start=start, end=end, db_path=db_path)
    empty = [s for s, source in zip(panel.symbols, panel.sources) if source is None]
    if empty:
        raise ValueError(
            f"the cache has no {interval} bars for {', '.join(empty)}"
            + (f" between {start} and {end}" if start or end else "")
            + ": refresh them first (python -m storage.refresh)"
        )
    check_panel(panel)
    synthetic = "demo" in panel.sources  # the demo market seeded into the cache is still synthetic
    label = f"{', '.join(panel.symbols)} {interval} from the cache" + (" (SYNTHETIC demo data)" if synthetic else "")
    return LoadedPanel(panel, interval, tuple(panel.sources), label, synthetic=synthetic)
