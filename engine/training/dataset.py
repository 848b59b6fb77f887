"""Training windows: slices of the feature tensor and the targets, as torch tensors the model reads directly.

A window is `window` consecutive union-clock rows of every asset at once, so the cross-asset attention sees all
assets on the same bars. The loss mask (`targets['valid']`) is True only where the target exists, reaches no row at or
past the end of `index_range` (the purge that keeps training targets out of the validation span), and the asset had a
fresh, warmed-up bar at t (its inputs are not a carried copy).
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from engine.features import FeatureSet
from engine.targets import Targets


@dataclass(frozen=True)
class Windows:
    x: torch.Tensor  # float32 (N, A, W, F)
    mask: torch.Tensor  # bool (N, A, W): fresh, warmed-up own bar
    targets: dict[str, torch.Tensor]  # 'log_return', 'realised_vol', 'direction' float32 (N, A, W, H); 'valid' bool
    rows: torch.Tensor  # int64 (N, W): union-clock row of each window position
    horizons: tuple[int, ...]

    @property
    def nbytes(self) -> int:
        tensors = [self.x, self.mask, self.rows, *self.targets.values()]
        return sum(t.element_size() * t.numel() for t in tensors)

    def to(self, device: torch.device | str) -> "Windows":
        return Windows(self.x.to(device), self.mask.to(device), {k: v.to(device) for k, v in self.targets.items()},
                       self.rows.to(device), self.horizons)


def window_starts(index_range: range, window: int, stride: int) -> np.ndarray:
    """Window starts stepping by stride; one more window flush with the end if the stride leaves rows uncovered."""
    last = index_range.stop - window
    starts = np.arange(index_range.start, last + 1, stride)
    if starts[-1] != last:
        starts = np.append(starts, last)
    return starts


def make_windows(
    feature_set: FeatureSet,
    targets: Targets,
    index_range: range,
    window: int = 512,
    stride: int | None = None,
) -> Windows:
    """Windows of `window` rows inside index_range, `stride` apart (default: window, no overlap)."""
    n_assets, n_rows, _ = feature_set.values.shape
    if targets.valid.shape[:2] != (n_assets, n_rows):
        raise ValueError(f"targets cover {targets.valid.shape[:2]} (assets, rows), features {(n_assets, n_rows)}")
    if tuple(targets.symbols) != tuple(feature_set.symbols):
        raise ValueError(f"targets are for {list(targets.symbols)}, features for {list(feature_set.symbols)}")
    if index_range.step != 1 or not 0 <= index_range.start < index_range.stop <= n_rows:
        raise ValueError(f"index_range {index_range} must be a contiguous range inside [0, {n_rows})")
    stride = window if stride is None else stride
    if window < 1 or stride < 1:
        raise ValueError(f"window ({window}) and stride ({stride}) must be positive")
    if len(index_range) < window:
        raise ValueError(
            f"index_range has {len(index_range)} rows, fewer than one window of {window}: use a shorter window"
        )

    rows = window_starts(index_range, window, stride)[:, None] + np.arange(window)[None, :]  # (N, W)
    purged = targets.until(index_range.stop)
    valid = purged.valid & feature_set.mask[:, :, None]  # (A, T, H)

    def gather(array: np.ndarray) -> np.ndarray:
        """(A, T, ...) -> (N, A, W, ...)"""
        return np.moveaxis(array[:, rows], 1, 0)

    def as_float(array: np.ndarray) -> torch.Tensor:
        # zeros, not NaN, under the mask: a NaN times a zero weight is still NaN in a loss
        return torch.from_numpy(np.where(gather(valid), np.nan_to_num(gather(array)), 0.0).astype(np.float32))

    return Windows(
        x=torch.from_numpy(np.ascontiguousarray(gather(feature_set.values))),
        mask=torch.from_numpy(np.ascontiguousarray(gather(feature_set.mask))),
        targets={
            "log_return": as_float(purged.log_return),
            "realised_vol": as_float(purged.realised_vol),
            "direction": as_float(purged.direction.astype(np.float32)),
            "valid": torch.from_numpy(np.ascontiguousarray(gather(valid))),
        },
        rows=torch.from_numpy(rows.astype(np.int64)),
        horizons=targets.horizons,
    )
