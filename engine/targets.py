"""What the model (and every baseline) is asked to forecast, per asset and horizon.

Horizons count the asset's OWN bars: for an equity on a union clock that also holds a 24/7 asset, "t+5" is the fifth
equity bar after t, so a Friday forecast at h=1 is scored against Monday's close, never against a forward-filled
Saturday copy. Targets look forward by design; `end_row` records exactly how far (the union row of bar t+h) so a
training span can drop every target that reaches past its end (see `Targets.until`).
"""
from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Sequence

import numpy as np

from storage.panel import Panel, check_panel, own_bars

DEFAULT_HORIZONS: tuple[int, ...] = (1, 5, 20)


@dataclass(frozen=True)
class Targets:
    symbols: tuple[str, ...]  # (A,)
    horizons: tuple[int, ...]  # (H,)
    log_return: np.ndarray  # float64 (A, T, H): log(c_{t+h} / c_t) on own bars; NaN where invalid
    direction: np.ndarray  # bool (A, T, H): log_return > 0; False where invalid
    realised_vol: np.ndarray  # float64 (A, T, H): sqrt(sum of squared own-bar log returns over (t, t+h]); NaN where invalid
    valid: np.ndarray  # bool (A, T, H): own bar at t and bar t+h exists
    end_row: np.ndarray  # int64 (A, T, H): union row of bar t+h; -1 where invalid

    def max_reach(self) -> int:
        """Largest end_row - t over valid targets: the smallest safe purge gap, in union rows, for this panel."""
        if not self.valid.any():
            return 0
        rows = np.arange(self.valid.shape[1])[None, :, None]
        return int((self.end_row - rows)[self.valid].max())

    def until(self, stop: int) -> "Targets":
        """The same targets with every one that needs a bar at row >= stop marked invalid (training-span purge)."""
        keep = self.valid & (self.end_row < stop)
        return replace(
            self,
            log_return=np.where(keep, self.log_return, np.nan),
            direction=self.direction & keep,
            realised_vol=np.where(keep, self.realised_vol, np.nan),
            valid=keep,
            end_row=np.where(keep, self.end_row, -1),
        )


def compute_targets(panel: Panel, horizons: Sequence[int] = DEFAULT_HORIZONS) -> Targets:
    check_panel(panel)
    horizons = tuple(int(h) for h in horizons)
    if not horizons or min(horizons) < 1 or len(set(horizons)) != len(horizons):
        raise ValueError(f"horizons must be distinct positive bar counts, got {horizons}")
    n_assets, n_rows, n_horizons = len(panel.symbols), len(panel.ts), len(horizons)
    log_return = np.full((n_assets, n_rows, n_horizons), np.nan)
    realised_vol = np.full((n_assets, n_rows, n_horizons), np.nan)
    end_row = np.full((n_assets, n_rows, n_horizons), -1, dtype=np.int64)
    for asset in range(n_assets):
        rows, bars = own_bars(panel, asset)
        log_close = np.log(bars["close"].to_numpy())  # (n,)
        # cumulative squared own-bar returns: sum over (k, k+h] = cum[k+h] - cum[k]
        cum_squared = np.concatenate([[0.0], np.cumsum(np.diff(log_close) ** 2)])  # (n,)
        for j, h in enumerate(horizons):
            n_valid = len(rows) - h
            if n_valid <= 0:
                continue
            origin = rows[:n_valid]
            log_return[asset, origin, j] = log_close[h:] - log_close[:n_valid]
            realised_vol[asset, origin, j] = np.sqrt(np.maximum(cum_squared[h:] - cum_squared[:n_valid], 0.0))
            end_row[asset, origin, j] = rows[h:]
    valid = end_row >= 0
    return Targets(
        symbols=tuple(panel.symbols),
        horizons=horizons,
        log_return=log_return,
        direction=valid & (np.nan_to_num(log_return) > 0),
        realised_vol=realised_vol,
        valid=valid,
        end_row=end_row,
    )
