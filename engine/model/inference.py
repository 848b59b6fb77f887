"""Run a trained model over a whole panel and keep what it forecasts and what it "sees", as numpy arrays.

The panel can be far longer than a training window (26k hourly bars of the demo), so it is fed in chunks of
`chunk_size` bars, handing the model's StepState from one chunk to the next. That gives exactly the numbers of one
pass over the whole span (engine/model.py: forward(..., state=s, return_state=True) continues a sequence) while the
activations alive at any time are one chunk's. Only per-bar summaries leave each chunk: the full (T, d_inner) Delta
and look-back tensors are reduced to quantiles over channels at once, so memory stays O(T * embedding_dim).

The attention map is the exception: it is (T, A, A, K+1) per bar, quadratic in the number of assets (50 assets x
26k hourly bars x 5 lags is 1.3 GB in float32). Its whole-span lead-lag map is summed exactly as the chunks pass, and
the per-bar weights (what trailing windows are drawn from) are kept for as many of the LATEST bars as fit
`attention_budget_mb`: every bar for the three-asset demo, the last few thousand for a wide universe.

Live updates: run_inference_with_state also hands back the model's state after the last bar, and extend_inference
continues from it over the bars a refresh appended, so k new bars cost O(k) model work instead of the history's.

Everything here is causal by construction: the model is, and nothing is smoothed afterwards.
"""
from __future__ import annotations

import functools
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd

from engine.features import FeatureSet

if TYPE_CHECKING:  # torch is imported where a model runs: a page that reads cached results never loads it
    import torch

    from engine.model.hybrid import HybridModel, StepState

# Quantiles over channels that summarise the effective look-back per bar: the spread (25/75 %) and the median.
LOOKBACK_LEVELS: tuple[float, ...] = (0.25, 0.5, 0.75)


@dataclass(frozen=True)
class InferenceConfig:
    chunk_size: int = 2048  # bars per forward call: ~1.5 s per 20k bars at 2048 on two cores (1024 is ~2x slower)
    # Most memory the per-bar attention weights may take (float32); older bars beyond it keep only their share of
    # the whole-span map. 3 assets x 26k bars x 5 lags is 4.7 MB; 50 assets reach 512 MB at ~10k bars.
    attention_budget_mb: float = 512.0

    def __post_init__(self) -> None:
        if self.chunk_size < 1:
            raise ValueError(f"InferenceConfig: chunk_size must be >= 1, got {self.chunk_size}")
        if not self.attention_budget_mb > 0:
            raise ValueError(f"InferenceConfig: attention_budget_mb must be > 0, got {self.attention_budget_mb!r}")


def attention_rows_kept(n_rows: int, n_assets: int, n_lags: int, budget_mb: float) -> int:
    """How many of the latest bars' per-bar attention (A x A x n_lags float32 each) fit the budget (at least 1)."""
    per_bar = n_assets * n_assets * n_lags * 4
    return max(1, min(n_rows, int(budget_mb * 2**20 // per_bar)))


@dataclass(frozen=True)
class InferenceResult:
    """The model over one panel. Asset-major (A, T, ...) like FeatureSet, except the attention map."""

    ts: pd.DatetimeIndex  # (T,)
    symbols: tuple[str, ...]  # (A,)
    horizons: tuple[int, ...]  # (H,) bars ahead
    quantile_levels: tuple[float, ...]  # (Q,)
    mask: np.ndarray  # bool (A, T): the model had a fresh bar; forecasts elsewhere are not forecasts
    quantiles: np.ndarray  # float32 (A, T, H, Q): h-bar log-return quantiles, non-decreasing along Q
    prob_up: np.ndarray  # float32 (A, T, H): P(h-bar log return > 0)
    volatility: np.ndarray  # float32 (A, T, H): forecast std of the h-bar log return, exp(log_vol)
    embeddings: np.ndarray  # float32 (A, T, E): regime embedding of the last Level-1 SSM state
    lookback: np.ndarray  # float32 (A, T, len(LOOKBACK_LEVELS)): half-life in bars, quantiles over channels; NaN closed
    attention: np.ndarray  # float32 (T - attention_start, A_tgt, A_src, K+1): first attention layer, head-averaged,
    #                        for rows attention_start.. (all rows unless the budget cut it); 0 at closed targets
    attention_start: int = 0  # the first row whose per-bar attention is kept
    # (A_tgt, A_src, K+1) float64: the whole span's mean attention over each target's open bars (exact, every row)
    lead_lag: np.ndarray | None = None

    @property
    def lookback_median(self) -> np.ndarray:
        """(A, T) median effective look-back over channels, in bars."""
        return self.lookback[..., LOOKBACK_LEVELS.index(0.5)]

    def forecast_frame(self, symbol: str, horizon: int) -> pd.DataFrame:
        """One asset's forecasts for one horizon, keyed by ts (the bar the forecast is made at), open bars only."""
        asset, j = self._asset(symbol), self._horizon(horizon)
        keep = self.mask[asset]
        frame = pd.DataFrame(
            {f"q{level:g}": self.quantiles[asset, keep, j, k] for k, level in enumerate(self.quantile_levels)},
            index=pd.DatetimeIndex(self.ts[keep], name="ts"),
        )
        frame["prob_up"] = self.prob_up[asset, keep, j]
        frame["volatility"] = self.volatility[asset, keep, j]
        return frame

    def _asset(self, symbol: str) -> int:
        if symbol not in self.symbols:
            raise ValueError(f"symbol {symbol!r} is not in this result (it has {', '.join(self.symbols)})")
        return self.symbols.index(symbol)

    def _horizon(self, horizon: int) -> int:
        if horizon not in self.horizons:
            raise ValueError(f"horizon {horizon} is not forecast (the model has {self.horizons})")
        return self.horizons.index(horizon)


def _inference_mode(function):
    """torch.inference_mode() around `function`, importing torch at the call (InferenceResult, read back from the
    diagnostics cache, does not need it)."""
    @functools.wraps(function)
    def run(*args, **kwargs):
        import torch

        with torch.inference_mode():
            return function(*args, **kwargs)

    return run


def check_features_fit_model(model: HybridModel, features: FeatureSet) -> None:
    """Raise ValueError saying what differs when the features cannot be fed to this model."""
    config = model.config
    n_assets, n_rows, n_features = features.values.shape
    if (n_assets, n_features) != (config.n_assets, config.n_features):
        raise ValueError(
            f"features have {n_assets} assets x {n_features} features, the model expects "
            f"{config.n_assets} x {config.n_features}"
        )
    if features.mask.shape != (n_assets, n_rows):
        raise ValueError(f"feature mask has shape {features.mask.shape}, expected {(n_assets, n_rows)}")
    if features.ts is None or len(features.ts) != n_rows:
        raise ValueError("features carry no ts index of the panel's length: build them with build_feature_set")
    if model.diagnostic_ssm_layer is None or model.first_attention_layer is None:
        raise ValueError(
            f"layer_pattern {config.layer_pattern} needs an 'ssm' and an 'attn' layer for regime and lead-lag diagnostics"
        )


@_inference_mode
def run_inference(
    model: HybridModel, features: FeatureSet, config: InferenceConfig = InferenceConfig()
) -> InferenceResult:
    """Forecasts and diagnostics for every bar of the panel, in chunks carrying the model state; the model runs on
    the device it is on (only one chunk at a time is moved there)."""
    return run_inference_with_state(model, features, config)[0]


@_inference_mode
def run_inference_with_state(
    model: HybridModel, features: FeatureSet, config: InferenceConfig = InferenceConfig()
) -> tuple[InferenceResult, StepState]:
    """run_inference, and the model's state after the panel's last bar: what extend_inference continues from when
    a refresh appends bars, so the history is not run again."""
    check_features_fit_model(model, features)
    n_rows = features.values.shape[1]
    n_assets, n_lags = features.values.shape[0], model.config.max_lag + 1
    attention_start = n_rows - attention_rows_kept(n_rows, n_assets, n_lags, config.attention_budget_mb)
    parts, total, count, state = _infer_rows(model, features, range(n_rows), None, attention_start, config)
    return _result(model, features, parts, total, count, attention_start), state


@_inference_mode
def extend_inference(
    model: HybridModel, previous: InferenceResult, end_state: StepState, features: FeatureSet,
    config: InferenceConfig = InferenceConfig(),
) -> tuple[InferenceResult, StepState]:
    """The result of run_inference over `features` from `previous` (over the first len(previous.ts) of its rows)
    and the model's state after them: only the new rows are run, so showing k new bars costs O(k), not the history.

    The numbers are run_inference's over the whole panel (the model is causal and continues from its state; the
    whole-span lead-lag map is un-averaged and summed on, exact to float64 rounding). `previous` and end_state must
    come from run_inference_with_state or extend_inference with this model on these features' first rows: the
    timestamps and symbols are checked, the feature values are the caller's word.
    """
    check_features_fit_model(model, features)
    n_old, n_rows = len(previous.ts), features.values.shape[1]
    if tuple(features.symbols) != tuple(previous.symbols):
        raise ValueError(f"extend_inference: symbols {list(features.symbols)} differ from the previous result's "
                         f"{list(previous.symbols)}")
    if n_rows < n_old or not pd.DatetimeIndex(features.ts[:n_old]).equals(previous.ts):
        raise ValueError("extend_inference: the features do not start with the previous result's bars (a revised or "
                         "shortened history needs run_inference)")
    n_assets, n_lags = features.values.shape[0], model.config.max_lag + 1
    attention_start = n_rows - attention_rows_kept(n_rows, n_assets, n_lags, config.attention_budget_mb)
    parts, total, count, state = _infer_rows(model, features, range(n_old, n_rows), end_state, attention_start,
                                             config)
    import torch

    old_count = previous.mask[:, :n_old].sum(axis=1).astype(np.float64)
    total += torch.from_numpy(np.nan_to_num(previous.lead_lag, nan=0.0) * old_count[:, None, None])
    count += torch.from_numpy(old_count)
    for name in ("quantiles", "prob_up", "volatility", "embeddings", "lookback"):
        parts[name].insert(0, getattr(previous, name))
    kept_before = previous.attention[max(attention_start - previous.attention_start, 0):]
    parts["attention"].insert(0, kept_before)
    return _result(model, features, parts, total, count, attention_start), state


def _infer_rows(
    model: HybridModel, features: FeatureSet, rows: range, state: StepState | None, attention_start: int,
    config: InferenceConfig,
) -> tuple[dict[str, list[np.ndarray]], torch.Tensor, torch.Tensor, StepState | None]:
    """The model over `rows` of the features in chunks from `state` -> (per-output arrays of those rows, the
    lead-lag attention summed over target-open bars (A, A, K+1) float64, the open bars per target (A,), state)."""
    import torch

    device = next(model.parameters()).device
    was_training = model.training
    model.eval()  # no dropout: the same input always gives the same diagnostics
    try:
        x_all = torch.from_numpy(np.ascontiguousarray(features.values)).unsqueeze(0)  # (1, A, T, F)
        mask_all = torch.from_numpy(np.ascontiguousarray(features.mask)).unsqueeze(0)  # (1, A, T)
        levels = torch.tensor(LOOKBACK_LEVELS, dtype=torch.float32)
        parts: dict[str, list[np.ndarray]] = {name: [] for name in
                                              ("quantiles", "prob_up", "volatility", "embeddings", "lookback",
                                               "attention")}
        n_assets, n_lags = x_all.shape[1], model.config.max_lag + 1
        attention_total = torch.zeros((n_assets, n_assets, n_lags), dtype=torch.float64)
        open_count = torch.zeros(n_assets, dtype=torch.float64)
        for start in range(rows.start, rows.stop, config.chunk_size):
            stop = min(start + config.chunk_size, rows.stop)
            x = x_all[:, :, start:stop].to(device)
            mask = mask_all[:, :, start:stop].to(device)
            out = model(x, mask, return_diagnostics=True, state=state, return_state=True)
            state = out.state
            diag = out.diagnostics
            parts["quantiles"].append(out.quantiles[0].float().cpu().numpy())  # (A, t, H, Q)
            parts["prob_up"].append(torch.sigmoid(out.direction_logit[0]).float().cpu().numpy())  # (A, t, H)
            parts["volatility"].append(torch.exp(out.log_vol[0]).float().cpu().numpy())
            parts["embeddings"].append(diag.embeddings[0].float().cpu().numpy())  # (A, t, E)
            # nanquantile over channels: closed bars are all-NaN and stay NaN.
            lookback = diag.effective_lookback[0].float().cpu()  # (A, t, Di)
            parts["lookback"].append(torch.nanquantile(lookback, levels, dim=-1).movedim(0, -1).numpy())
            attention = diag.attention[0].float().cpu()  # (t, A, A, K+1)
            target_open = mask[0].T.cpu().double()  # (t, A)
            attention_total += torch.einsum("tisk,ti->isk", attention.double(), target_open)
            open_count += target_open.sum(dim=0)
            if stop > attention_start:
                parts["attention"].append(attention[max(attention_start - start, 0):].numpy())
    finally:
        model.train(was_training)
    return parts, attention_total, open_count, state


def _result(model: HybridModel, features: FeatureSet, parts: dict[str, list[np.ndarray]], attention_total: torch.Tensor,
            open_count: torch.Tensor, attention_start: int) -> InferenceResult:
    n_assets, n_lags = features.values.shape[0], model.config.max_lag + 1
    empty = {"attention": np.zeros((0, n_assets, n_assets, n_lags), dtype=np.float32)}
    joined = {name: np.concatenate(arrays, axis=0 if name == "attention" else 1) if arrays else empty[name]
              for name, arrays in parts.items()}
    count = open_count.numpy()
    return InferenceResult(
        ts=pd.DatetimeIndex(features.ts),
        symbols=tuple(features.symbols),
        horizons=tuple(model.config.horizons),
        quantile_levels=tuple(model.config.quantiles),
        mask=np.asarray(features.mask, dtype=bool).copy(),
        attention_start=attention_start,
        lead_lag=np.where(count[:, None, None] > 0,
                          attention_total.numpy() / np.maximum(count, 1)[:, None, None], np.nan),
        **joined,
    )
