"""The selective SSM's hidden attention for one chosen bar: how much its output draws on each past bar.

For bar t of an asset, input s <= t reaches the output with weight
    alpha[d, s] = C_t . (prod_{r=s+1..t} exp(Delta_r A)) B_s Delta_s       (channel d)
HybridModel.implicit_attention computes it, in log space (the product is exp(A * sum of Delta), an exponent that
is never positive, so no overflow however long the span or large Delta; a tiny weight underflows to an exact 0,
which is its value to float precision). This module only picks the bar by timestamp and lays the result out as a
frame keyed by the past bars' ts, summarised over channels.
"""
from __future__ import annotations

import numpy as np
import pandas as pd
import torch

from engine.features import FeatureSet
from engine.model.hybrid import HybridModel
from engine.model.inference import check_features_fit_model


def bar_index(ts: pd.DatetimeIndex, at: pd.Timestamp | str | int) -> int:
    """Row of `at` (a row number, or a timestamp that must be one of the panel's bars)."""
    if isinstance(at, (int, np.integer)):
        if not 0 <= at < len(ts):
            raise ValueError(f"bar {at} is outside the panel's rows 0..{len(ts) - 1}")
        return int(at)
    stamp = pd.Timestamp(at)
    stamp = stamp.tz_localize("UTC") if stamp.tzinfo is None else stamp.tz_convert("UTC")
    where = ts.get_indexer([stamp])[0]
    if where < 0:
        raise ValueError(f"{stamp} is not a bar of the panel ({ts[0]} .. {ts[-1]})")
    return int(where)


def hidden_attention(
    model: HybridModel,
    features: FeatureSet,
    symbol: str,
    at: pd.Timestamp | str | int,
    *,
    max_lag: int | None = None,
) -> pd.DataFrame:
    """Weights of past bars s <= t on the output of `symbol` at bar `at`, through the last Level-1 SSM layer.

    -> frame indexed by the past bar's ts with columns lag (t - s in union rows), own_lag (the asset's own open
    bars from s to t, 0 at t: the SSM's own clock) and weight (mean |alpha| over channels), newest first; max_lag keeps only the last max_lag + 1 bars (the weights are computed exactly from the
    whole history either way). Closed bars of the asset take no step and come out with weight 0.
    """
    check_features_fit_model(model, features)
    if symbol not in features.symbols:
        raise ValueError(f"symbol {symbol!r} is not in the features ({', '.join(features.symbols)})")
    t = bar_index(features.ts, at)
    asset = features.symbols.index(symbol)
    device = next(model.parameters()).device
    x = torch.from_numpy(np.ascontiguousarray(features.values[:, : t + 1])).unsqueeze(0).to(device)  # (1, A, t+1, F)
    mask = torch.from_numpy(np.ascontiguousarray(features.mask[:, : t + 1])).unsqueeze(0).to(device)  # (1, A, t+1)
    was_training = model.training
    model.eval()
    try:
        weight = model.implicit_attention(x, mask, asset, t, reduce=True)[0].double().cpu().numpy()  # (t+1,)
    finally:
        model.train(was_training)
    lag = t - np.arange(t + 1)
    own_lag = np.cumsum(np.asarray(features.mask[asset, : t + 1])[::-1])[::-1] - 1  # open bars in s..t, minus one
    frame = pd.DataFrame({"lag": lag, "own_lag": np.maximum(own_lag, 0), "weight": weight},
                         index=pd.DatetimeIndex(features.ts[: t + 1], name="ts"))
    frame = frame.iloc[::-1]
    return frame if max_lag is None else frame.iloc[: max_lag + 1]


def half_mass_lag(frame: pd.DataFrame) -> float:
    """hidden_attention's frame (newest first, the whole history: max_lag None) -> the own bars back within which
    half of the weight reaching the output lies: the memory the output actually uses."""
    weight = frame["weight"].to_numpy(dtype=float)
    if not weight.sum() > 0:
        return float("nan")
    return float(frame["own_lag"].iloc[int(_half_reach(weight[None])[0])])


def _half_reach(newest_first: np.ndarray) -> np.ndarray:
    """(b, W) weights, newest first -> (b,) the first position by which half of each row's weight is reached."""
    return np.argmax(np.cumsum(newest_first, axis=1) >= 0.5 * newest_first.sum(axis=1, keepdims=True), axis=1)


def half_mass_lags(
    model: HybridModel,
    features: FeatureSet,
    symbol: str,
    rows: range,
    *,
    window: int = 512,
    n_points: int = 150,
    batch: int = 32,
) -> pd.Series:
    """The memory the SSM output actually uses: at up to n_points of the asset's open bars spread evenly over
    `rows`, the number of the asset's own bars back within which half of the hidden attention's weight lies (lag 0 =
    the bar itself; the weights of hidden_attention, mean |alpha| over channels). The Δ half-life says how fast the
    state COULD forget; this says where the weight that reaches the output sits, B and C included.

    Each bar is traced over its last `window` rows only (one batched pass instead of one pass per bar): weight
    further back is left out, so a half-mass lag near `window` reads "at least". -> Series of lags indexed by ts.
    """
    check_features_fit_model(model, features)
    if symbol not in features.symbols:
        raise ValueError(f"symbol {symbol!r} is not in the features ({', '.join(features.symbols)})")
    asset = features.symbols.index(symbol)
    open_rows = np.flatnonzero(features.mask[asset, rows.start: rows.stop]) + rows.start
    if not len(open_rows):
        return pd.Series(dtype=float, index=pd.DatetimeIndex([], tz="UTC", name="ts"), name="half_mass_lag")
    picked = open_rows[np.unique(np.linspace(0, len(open_rows) - 1, min(n_points, len(open_rows))).round()
                                 .astype(int))]
    # Rows before the data's start are closed rows (mask False: no step, no weight), so a bar near the start is
    # traced over the history it has; no window is longer than the history of the latest bar traced
    window = int(min(window, picked.max() + 1))
    pad = window - 1
    n_assets, _, n_features = features.values.shape
    values = np.concatenate([np.zeros((n_assets, pad, n_features), dtype=features.values.dtype), features.values],
                            axis=1)
    masks = np.concatenate([np.zeros((features.mask.shape[0], pad), dtype=bool), features.mask], axis=1)
    device = next(model.parameters()).device
    offsets = np.arange(-window + 1, 1) + pad  # (W,) oldest first, in padded rows
    lags = np.empty(len(picked))
    was_training = model.training
    model.eval()
    try:
        for start in range(0, len(picked), batch):
            at = picked[start: start + batch][:, None] + offsets[None, :]  # (b, W) rows of each bar's window
            x = torch.from_numpy(np.ascontiguousarray(values[:, at].transpose(1, 0, 2, 3))).to(device)  # (b,A,W,F)
            mask_np = np.ascontiguousarray(masks[:, at].transpose(1, 0, 2))  # (b, A, W)
            mask = torch.from_numpy(mask_np).to(device)
            with torch.no_grad():
                weight = model.implicit_attention(x, mask, asset, window - 1, reduce=True).double().cpu().numpy()
            newest_first = weight[:, ::-1] * mask_np[:, asset, ::-1]  # (b, W) closed rows weigh 0 anyway
            reach = _half_reach(newest_first)  # rows back to the half of the weight
            own_before = np.cumsum(mask_np[:, asset, ::-1], axis=1) - 1  # own bars back at each row back
            lags[start: start + len(at)] = own_before[np.arange(len(at)), reach]
    finally:
        model.train(was_training)
    return pd.Series(lags, index=pd.DatetimeIndex(features.ts[picked], name="ts"), name="half_mass_lag")
