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

    -> frame indexed by the past bar's ts with columns lag (t - s in union rows) and weight (mean |alpha| over
    channels), newest first; max_lag keeps only the last max_lag + 1 bars (the weights are computed exactly from the
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
    frame = pd.DataFrame({"lag": lag, "weight": weight}, index=pd.DatetimeIndex(features.ts[: t + 1], name="ts"))
    frame = frame.iloc[::-1]
    return frame if max_lag is None else frame.iloc[: max_lag + 1]
