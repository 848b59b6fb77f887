"""The attention map's null reference: exactly what an uninformed attention layer gives, and the agreement check."""
from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import torch

from engine.diagnostics.attention_null import (
    attention_agreement,
    excess_map,
    null_lead_lag_map,
    open_key_counts,
)
from engine.diagnostics.lead_lag import lead_lag_map
from engine.model.attention import LeadLagAttention
from engine.model.config import ModelConfig


def _session_mask(n_rows: int = 200, seed: int = 0) -> np.ndarray:
    """(3, T): a 24/7 asset, a weekday-only asset and one with random missing bars, all starting at row 0."""
    rng = np.random.default_rng(seed)
    mask = np.ones((3, n_rows), dtype=bool)
    mask[1] = np.arange(n_rows) % 7 < 5
    mask[2] = rng.random(n_rows) > 0.3
    mask[:, 0] = True
    return mask


def _uninformed_attention(mask: np.ndarray, max_lag: int) -> np.ndarray:
    """The weights of a layer that cannot tell keys apart: its query is zero, so every open key scores the same."""
    n_assets, n_rows = mask.shape
    layer = LeadLagAttention(ModelConfig(n_assets=n_assets, d_model=8, n_heads=2, max_lag=max_lag)).double().eval()
    with torch.no_grad():
        layer.qkv.weight.zero_()
        x = torch.randn(1, n_rows, n_assets, 8, dtype=torch.float64)
        out = layer(x, torch.from_numpy(mask.T.copy()).unsqueeze(0), readout=True)
    return out.readout.mean[0].numpy()  # (T, A, A, K+1)


def test_the_null_is_the_map_of_a_layer_that_cannot_tell_keys_apart():
    mask, max_lag = _session_mask(), 3
    attention = _uninformed_attention(mask, max_lag)
    np.testing.assert_allclose(null_lead_lag_map(mask, max_lag), lead_lag_map(attention, mask), atol=1e-12)
    rows = range(50, 120)
    np.testing.assert_allclose(null_lead_lag_map(mask, max_lag, rows), lead_lag_map(attention, mask, rows),
                               atol=1e-12)


def test_the_null_is_uniform_when_every_market_is_open_and_less_on_a_source_that_closes():
    mask = np.ones((3, 500), dtype=bool)
    null = null_lead_lag_map(mask, 2, range(2, 500))
    np.testing.assert_allclose(null, 1 / 9)
    assert open_key_counts(mask, 2)[:3].tolist() == [3, 6, 9]  # no keys before the first bar
    mask[1] = np.arange(500) % 7 < 5
    null = null_lead_lag_map(mask, 2)
    assert (null[0, 1] < 1 / 9).all() and (null[0, 0] > 1 / 9).all()  # BTC-like targets: fewer keys on weekends
    np.testing.assert_allclose(null.sum(axis=(1, 2)), 1.0)  # an open target's weights sum to 1 at every bar


def test_excess_is_the_map_minus_its_null():
    mask = _session_mask()
    assert np.abs(excess_map(lead_lag_map(_uninformed_attention(mask, 2), mask), null_lead_lag_map(mask, 2))).max() \
        < 1e-12
    with pytest.raises(ValueError, match="same shape"):
        excess_map(np.zeros((2, 2, 3)), np.zeros((2, 2, 2)))


def test_agreement_reads_a_lead_of_k_bars_at_key_lag_k_minus_1():
    symbols = ["LEAD", "FOLLOW", "OTHER"]
    null = np.full((3, 3, 4), 1 / 12)
    weights = null.copy()
    weights[1, 0, 1] += 0.05  # FOLLOW looks at LEAD one bar before the origin: a 2-bar lead
    weights[1, 1, 0] -= 0.05
    leads = pd.DataFrame({"target": ["FOLLOW", "FOLLOW", "OTHER", "FOLLOW", "FOLLOW"],
                          "source": ["LEAD", "LEAD", "LEAD", "LEAD", "OTHER"], "lag_bars": [2, 1, 2, 9, 0]})
    table = attention_agreement(weights, null, symbols, leads, top_k=1)
    assert len(table) == 4  # the lag-0 row is co-movement: no key to compare
    right, wrong_lag, wrong_pair, beyond = (table.iloc[i] for i in range(4))
    assert right["agrees"] and right["key_lag"] == 1 and right["rank_in_target"] == 1 and right["in_top_k"]
    assert right["excess"] == pytest.approx(0.05) and right["ratio"] == pytest.approx(1.6)
    assert not wrong_lag["agrees"] and wrong_lag["best_key_lag"] == 1
    assert not wrong_pair["agrees"]  # OTHER's map is its null: no excess anywhere
    assert not beyond["agrees"] and "beyond the model's lags 0..3" in beyond["note"]
