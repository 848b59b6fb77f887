"""The attention map's null reference: the weights of a model that knows nothing, and the map's excess over them.

An uninformed model spreads its weight evenly over the keys it may look at. At bar t a target may look at every
(source, lag) key whose source had a bar at t-lag (engine/model/attention.py masks the others, and bars before the
first), so the uninformed weight of an open key is 1 / (number of open keys at t), the same for every target, and 0
for a closed key. Averaged over the target's open bars like engine.diagnostics.lead_lag.lead_lag_map, this is the
null map: on three 24/7 assets with lags 0..2 it is 1/9 everywhere; a key whose source is often closed gets less,
and keys of always-open sources get more than 1/9 on the bars where the others are closed. A map weight is read
against its null (excess = map - null), never against zero or against 1 / (all keys).

attention_agreement then asks, for each lead the model-free test declared (engine.diagnostics.lead_lag_test), whether
the model's attention points there too. A lead of k bars sits at key lag k-1 (lead_lag.key_lag_of_lead: the map is
read at the forecast origin for the next bar); a same-bar co-movement (lag 0) has no key, and is not compared.
"""
from __future__ import annotations

from typing import Sequence

import numpy as np
import pandas as pd

from engine.diagnostics.lead_lag import key_lag_of_lead


def _shifted(mask_t: np.ndarray, lag: int) -> np.ndarray:
    """mask_t (T, A) -> (T, A): row t holds row t-lag, False before the first row."""
    out = np.zeros_like(mask_t)
    out[lag:] = mask_t[: len(mask_t) - lag]
    return out


def open_key_counts(mask: np.ndarray, max_lag: int) -> np.ndarray:
    """mask (A, T) bool, the model's fresh-bar mask -> (T,) number of open (source, lag) keys at each bar."""
    mask_t = np.asarray(mask, dtype=bool).T
    return sum(_shifted(mask_t, lag).sum(axis=1) for lag in range(max_lag + 1))


def null_lead_lag_map(mask: np.ndarray, max_lag: int, rows: range | None = None) -> np.ndarray:
    """mask (A, T) bool -> (A_tgt, A_src, K+1): the uninformed model's weight (1 / open keys at each bar on every
    open key) averaged over the target's open bars in `rows` (panel rows, default all; keys before `rows` count,
    as the model saw them). NaN for a target with no open bar there. Shaped and averaged like lead_lag_map."""
    mask_t = np.asarray(mask, dtype=bool).T  # (T, A)
    if max_lag < 0:
        raise ValueError(f"max_lag must be >= 0, got {max_lag}")
    counts = open_key_counts(mask_t.T, max_lag).astype(np.float64)  # (T,)
    span = slice(None) if rows is None else slice(rows.start, rows.stop)
    per_key = np.divide(1.0, counts, out=np.zeros_like(counts), where=counts > 0)[span]  # (n,)
    target_open = mask_t[span].astype(np.float64)  # (n, A)
    n_open = target_open.sum(axis=0)  # (A,)
    out = np.empty((mask_t.shape[1], mask_t.shape[1], max_lag + 1))
    for lag in range(max_lag + 1):
        key_open = _shifted(mask_t, lag)[span].astype(np.float64)  # (n, A_src)
        out[:, :, lag] = np.einsum("ti,tj,t->ij", target_open, key_open, per_key)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(n_open[:, None, None] > 0, out / n_open[:, None, None], np.nan)


def excess_map(weights: np.ndarray, null: np.ndarray) -> np.ndarray:
    """The lead-lag map minus its null reference, (A, A, K+1): > 0 where the model looks more than chance would."""
    weights, null = np.asarray(weights, dtype=float), np.asarray(null, dtype=float)
    if weights.shape != null.shape:
        raise ValueError(f"map {weights.shape} and null {null.shape} must have the same shape")
    return weights - null


AGREEMENT_COLUMNS = ("target", "source", "lag_bars", "key_lag", "weight", "null_weight", "excess", "ratio",
                     "best_key_lag", "rank_in_target", "in_top_k", "agrees", "note")


def attention_agreement(
    weights: np.ndarray,
    null: np.ndarray,
    symbols: Sequence[str],
    leads: pd.DataFrame,
    *,
    top_k: int = 3,
) -> pd.DataFrame:
    """Does the model's attention agree with each lead the model-free test declared?

    weights, null (A, A, K+1): the lead-lag map and null_lead_lag_map over the same rows. leads: rows with target,
    source, lag_bars (LeadLagFindings.leads; lag 0 rows are left out: co-movement has no key). One row per lead:

      key_lag         lag_bars - 1, where the lead shows in the map
      weight, null_weight, excess, ratio   the map, its null, map - null and map / null at that key
      best_key_lag    the key lag with the largest excess for that (target, source)
      rank_in_target  rank of the excess among all the target's cross-asset keys (1 = largest)
      in_top_k        rank_in_target <= top_k
      agrees          excess > 0 and best_key_lag == key_lag: the model looks at this pair more than chance would,
                      and at this lag more than at its other lags
      note            why a lead could not be compared (its key lies beyond the model's lags)

    An excess is a point estimate from one model: a small positive excess at the right key is agreement in
    direction, not a test of the attention.
    """
    weights, null = np.asarray(weights, dtype=float), np.asarray(null, dtype=float)
    excess = excess_map(weights, null)
    n_assets = len(symbols)
    if weights.ndim != 3 or weights.shape[:2] != (n_assets, n_assets):
        raise ValueError(f"weights must be ({n_assets}, {n_assets}, lags) for symbols {list(symbols)}, "
                         f"got {weights.shape}")
    n_keys = weights.shape[2]
    index = {symbol: i for i, symbol in enumerate(symbols)}
    records = []
    for _, lead in leads[leads["lag_bars"] >= 1].iterrows():
        target, source, lag = index[lead["target"]], index[lead["source"]], int(lead["lag_bars"])
        key = key_lag_of_lead(lag)
        record = {"target": lead["target"], "source": lead["source"], "lag_bars": lag, "key_lag": key}
        if key >= n_keys:
            records.append({**record, "in_top_k": False, "agrees": False,
                            "note": f"key lag {key} is beyond the model's lags 0..{n_keys - 1}"})
            continue
        cross = excess[target].copy()
        cross[target] = np.nan  # the target's own keys are not a cross-asset lead
        flat = np.sort(cross[np.isfinite(cross)])[::-1]
        value = excess[target, source, key]
        rank = int(np.searchsorted(-flat, -value, side="left")) + 1 if np.isfinite(value) else None
        pair = excess[target, source]
        best = int(np.nanargmax(pair)) if np.isfinite(pair).any() else None
        records.append({
            **record,
            "weight": weights[target, source, key], "null_weight": null[target, source, key], "excess": value,
            "ratio": weights[target, source, key] / null[target, source, key] if null[target, source, key] > 0
            else np.nan,
            "best_key_lag": best, "rank_in_target": rank, "in_top_k": rank is not None and rank <= top_k,
            "agrees": bool(np.isfinite(value) and value > 0 and best == key), "note": "",
        })
    return pd.DataFrame.from_records(records, columns=list(AGREEMENT_COLUMNS))
