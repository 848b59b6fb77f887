"""The lead-lag map: cross-asset attention weights alpha[target, source, lag] averaged over time.

Only bars where the TARGET's market is open count: a closed target attends to nothing (its weights are all zero,
see engine/model/attention.py), and averaging those zeros in would make a weekday-only equity look inattentive.
The rolling map is a trailing window of clock rows, so each bar's map uses that bar and earlier ones only.

Lags are counted in rows of the panel's clock (storage.panel.Panel): one row is one interval on the UTC grid and
a bar sits in the row in which it closes, so lag k is k intervals before the forecast origin whatever the
vendor's binning (a :30 equity bar and a :00 crypto bar share a row). `lag_label` says it as time: "lag 2 (2h)".
"""
from __future__ import annotations

from typing import Sequence

import numpy as np
import pandas as pd


def _check(attention: np.ndarray, target_open: np.ndarray) -> None:
    if attention.ndim != 4 or attention.shape[1] != attention.shape[2]:
        raise ValueError(f"attention must be (time, targets, sources, lags) with targets == sources, got {attention.shape}")
    if target_open.shape != (attention.shape[1], attention.shape[0]):
        raise ValueError(
            f"target_open must be (assets, time) = {(attention.shape[1], attention.shape[0])}, got {target_open.shape}"
        )


def lead_lag_map(attention: np.ndarray, target_open: np.ndarray, rows: range | None = None) -> np.ndarray:
    """attention (T, A, A, K+1), target_open (A, T) bool -> (A_tgt, A_src, K+1) mean over the target's open bars
    in `rows` (default: all). NaN for a target with no open bar there."""
    attention, target_open = np.asarray(attention), np.asarray(target_open, dtype=bool)
    _check(attention, target_open)
    span = slice(None) if rows is None else slice(rows.start, rows.stop)
    weights = attention[span].astype(np.float64)  # (n, A, A, K+1)
    open_t = target_open[:, span].T.astype(np.float64)  # (n, A)
    total = np.einsum("tisk,ti->isk", weights, open_t)
    count = open_t.sum(axis=0)  # (A,)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(count[:, None, None] > 0, total / count[:, None, None], np.nan)


def rolling_lead_lag(attention: np.ndarray, target_open: np.ndarray, window: int) -> np.ndarray:
    """(T, A, A, K+1): at row t the mean over the target's open bars among rows t-window+1..t; NaN if none."""
    attention, target_open = np.asarray(attention), np.asarray(target_open, dtype=bool)
    _check(attention, target_open)
    return _trailing_open_mean(attention, target_open.T, window)


def rolling_lead_lag_of(attention: np.ndarray, target_open: np.ndarray, window: int, target: int) -> np.ndarray:
    """One target's rows of rolling_lead_lag, (T, A_src, K+1), without building the others' (A times less memory:
    what the over-time chart of one target needs at any universe size)."""
    attention, target_open = np.asarray(attention), np.asarray(target_open, dtype=bool)
    _check(attention, target_open)
    if not 0 <= target < attention.shape[1]:
        raise ValueError(f"rolling_lead_lag_of: target index {target} is outside 0..{attention.shape[1] - 1}")
    return _trailing_open_mean(attention[:, target : target + 1], target_open[target : target + 1].T, window)[:, 0]


def _trailing_open_mean(attention: np.ndarray, open_t: np.ndarray, window: int) -> np.ndarray:
    """attention (T, a, A, K+1), open_t (T, a) -> (T, a, A, K+1) float32 trailing means over open rows."""
    if window < 1:
        raise ValueError(f"rolling_lead_lag: window must be >= 1 bar, got {window}")
    masked = np.where(open_t[:, :, None, None], attention, 0.0).astype(np.float64)
    # Trailing sums as differences of cumulative sums (float64: 26k rows of values <= 1 lose nothing).
    cumulative = np.concatenate([np.zeros((1,) + masked.shape[1:]), np.cumsum(masked, axis=0)])
    counts = np.concatenate([np.zeros((1, open_t.shape[1])), np.cumsum(open_t, axis=0)])
    end = np.arange(1, len(attention) + 1)
    begin = np.maximum(end - window, 0)
    total = cumulative[end] - cumulative[begin]
    count = (counts[end] - counts[begin])[:, :, None, None]
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(count > 0, total / np.maximum(count, 1), np.nan).astype(np.float32)


def strongest_pairs(
    weights: np.ndarray, symbols: Sequence[str], top: int = 5, *, cross_asset_only: bool = True
) -> pd.DataFrame:
    """The `top` largest entries of a lead-lag map (A, A, K+1) as a table: target, source, lag, weight.

    cross_asset_only: leave out an asset attending to itself, which dominates every map and says nothing of who
    leads whom."""
    weights = np.asarray(weights)
    n_assets = len(symbols)
    if weights.ndim != 3 or weights.shape[:2] != (n_assets, n_assets):
        raise ValueError(f"weights must be ({n_assets}, {n_assets}, lags) for symbols {list(symbols)}, got {weights.shape}")
    target, source, lag = np.meshgrid(np.arange(n_assets), np.arange(n_assets), np.arange(weights.shape[2]),
                                      indexing="ij")
    frame = pd.DataFrame({
        "target": np.asarray(symbols, dtype=object)[target.ravel()],
        "source": np.asarray(symbols, dtype=object)[source.ravel()],
        "lag": lag.ravel(),
        "weight": weights.ravel(),
    })
    if cross_asset_only:
        frame = frame[frame["target"] != frame["source"]]
    frame = frame.dropna(subset=["weight"])
    return frame.sort_values("weight", ascending=False, kind="stable").head(top).reset_index(drop=True)


def strongest_source(weights: np.ndarray, symbols: Sequence[str], target: str) -> tuple[str, int, float]:
    """The (source, lag, weight) with the largest cross-asset weight for one target in a lead-lag map."""
    if target not in symbols:
        raise ValueError(f"target {target!r} is not one of {list(symbols)}")
    i = list(symbols).index(target)
    row = np.array(weights[i], dtype=float)  # (A_src, K+1)
    row[i] = -np.inf  # not itself
    source, lag = np.unravel_index(np.nanargmax(row), row.shape)
    return symbols[source], int(lag), float(row[source, lag])


LAG_CONVENTION = (
    "Lags count rows of the panel's clock: one row is one {step} period on the UTC grid, and every bar sits in the "
    "row in which it closes (a 09:30 ET equity bar and a :00 crypto bar share rows). Lag k is the source's row k "
    "periods before the forecast origin; lag 0 is the same row."
)


def lag_duration(lag: int, step: pd.Timedelta | None) -> str:
    """`lag` clock rows of length `step` as a duration in the step's own unit: "36h" on an hourly clock, "3d" on a
    daily one, "1h 30m" on a 30-minute one; "" when step is None."""
    if step is None:
        return ""
    step_seconds = int(pd.Timedelta(step).total_seconds())
    seconds = int(lag) * step_seconds
    if step_seconds % 86_400 == 0:
        return f"{seconds // 86_400}d"
    if step_seconds % 3_600 == 0:
        return f"{seconds // 3_600}h"
    hours, minutes = divmod(seconds // 60, 60)
    return f"{hours}h {minutes}m" if hours and minutes else f"{hours}h" if hours else f"{minutes}m"


def lag_label(lag: int, step: pd.Timedelta | None) -> str:
    """"lag 2 (2h)" for lag 2 on an hourly clock; "lag 2" when the clock's step is not known."""
    duration = lag_duration(lag, step)
    return f"lag {lag} ({duration})" if duration else f"lag {lag}"


def lag_convention(step: pd.Timedelta | None) -> str:
    """LAG_CONVENTION for a clock of this step, in words."""
    return LAG_CONVENTION.format(step=lag_duration(1, step) or "bar")


def open_key_share(target_open: np.ndarray, max_lag: int, rows: range | None = None) -> np.ndarray:
    """target_open (A, T) bool -> (A_tgt, A_src, K+1): over the target's open rows in `rows`, the share at which
    the source had a bar k rows earlier. Where it is 0 the attention there is exactly 0 by construction (a closed
    key gets no weight, engine.model.attention), not because the model found nothing: the map's open-key
    structure, which the panel's clock decides. NaN for a target with no open row."""
    target_open = np.asarray(target_open, dtype=bool)
    n_assets, n_rows = target_open.shape
    span = range(0, n_rows) if rows is None else rows
    out = np.full((n_assets, n_assets, max_lag + 1), np.nan)
    for target in range(n_assets):
        origins = np.flatnonzero(target_open[target, span.start:span.stop]) + span.start
        if len(origins) == 0:
            continue
        for lag in range(max_lag + 1):
            keys = origins - lag
            known = keys >= 0
            out[target, :, lag] = (target_open[:, keys[known]].sum(axis=1)) / len(origins)
    return out


def key_lag_of_lead(lead_bars: int) -> int:
    """The attention lag at which a lead of `lead_bars` shows, for a model that forecasts the next bar.

    The attention is read at the forecast origin t, and its output forecasts the return of bar t+1. If the
    follower's return at bar s echoes the leader's return at bar s - L, then the follower's NEXT bar (t+1) echoes the
    leader's bar t+1-L: the key the model should look at sits L-1 bars back from the origin.
    """
    if lead_bars < 1:
        raise ValueError(f"a lead is at least one bar, got {lead_bars}")
    return int(lead_bars) - 1
