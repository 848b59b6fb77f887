"""The lead path: the sources' raw input features, read through the first attention layer's weights.

Why it exists: through the residual stream a leader's bar return reaches the heads as one of n_features inputs
under a random value projection, diluted by every other slot and rescaled by the final norm. The lead path hands
the heads the raw feature itself, summed over (source, lag) with the weights the attention already put on each
source's bar, so a lead-lag the attention has found becomes one input whose coefficient the data can fit
(engine.model.heads.ForecastHeads.lead maps it to a location shift of the fan and the mean). Its gradient, through
the weights, also sharpens the attention on that slot.

    x (B, T, A, F) features --first lead_features, zeros at closed bars-->  (B, T, A_src, F_read)
      --the last K bars prepended (the state, or zeros before the first bar), windows of lags 0..K-->
                                                                          (B, T, A_src, F_read, K+1)
      --summed with the weights (B, T, A_tgt, heads, A_src, K+1)-->       attended (B, T, A_tgt, heads * F_read)

With ModelConfig.skip_paths it also hands the heads, after `attended`, the inputs of their linear skip paths
(engine.model.heads.SkipPaths): every source's ret_1 (feature 0) at lags 0..K, the same for every target
(B, T, A_tgt, A_src * (K+1)), and each asset's own volatility-skip features at the bar (B, T, A, V).

Like an attention layer it runs over a window or one bar with the same call, and carries the last K bars' features
as its state from one call to the next; the attention weights are 0 at closed bars and before the first bar, so the
zeros put there are never read. ModelConfig.lead_path=False: the model has no LeadPath at all.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor, nn

from engine.model.config import ModelConfig


@dataclass
class LeadPathState:
    """The last K bars of every asset's features the lead path reads, oldest first."""

    inputs: Tensor  # (B, K, A, F_read)


class LeadPath(nn.Module):
    """Sources' features summed with the first attention layer's per-head weights. No weights of its own."""

    def __init__(self, config: ModelConfig, reads_layer: int):
        super().__init__()
        self.reads_layer = reads_layer  # the index of the attention layer whose weights it reads
        self.max_lag, self.n_assets, self.n_read = config.max_lag, config.n_assets, config.lead_input_width
        self.skip_paths = bool(config.skip_paths)
        self.vol_features = tuple(config.vol_skip_features)
        # The state must hold ret_1 (feature 0) for the mean skip: it always does, n_read >= 1 reads it first.

    def init_state(self, batch: int, *, device: torch.device | str | None = None,
                   dtype: torch.dtype | None = None) -> LeadPathState:
        """Before the first bar: zeros, which the attention gives weight 0 (masked keys)."""
        return LeadPathState(torch.zeros(batch, self.max_lag, self.n_assets, self.n_read, device=device, dtype=dtype))

    def forward(self, x: Tensor, mask: Tensor, weights: Tensor, state: LeadPathState | None = None, *,
                return_state: bool = False) -> tuple[Tensor, LeadPathState | None]:
        """x (B, T, A, F), mask (B, T, A) bool, weights (B, T, A_tgt, heads, A_src, K+1), lag 0 first
        -> (attended (B, T, A_tgt, heads * F_read [+ A_src * (K+1) + V with skip paths]), state after the last bar
        or None)."""
        K = self.max_lag
        zero = torch.zeros((), dtype=x.dtype, device=x.device)
        own = torch.where(mask.unsqueeze(-1), x[..., list(self.vol_features)], zero) if self.skip_paths else None
        x = x[..., : self.n_read]
        inputs = torch.where(mask.unsqueeze(-1), x, zero)  # (B, T, A, F)
        past = state.inputs if state is not None else inputs.new_zeros(inputs.shape[0], K, *inputs.shape[2:])
        history = torch.cat([past, inputs], dim=1)  # (B, K+T, A, F)
        windows = history.unfold(1, K + 1, 1).flip(-1)  # (B, T, A_src, F, K+1), lag 0 first
        attended = torch.einsum("btihsk,btsfk->btihf", weights.to(windows.dtype), windows)  # (B, T, A, heads, F)
        new_state = LeadPathState(history[:, history.shape[1] - K :].clone()) if return_state else None
        attended = attended.flatten(-2)
        if self.skip_paths:
            lagged = windows[:, :, :, 0, :].flatten(-2)  # (B, T, A_src * (K+1)): ret_1, lag 0 first per source
            lagged = lagged.unsqueeze(2).expand(-1, -1, attended.shape[2], -1)  # the same for every target
            attended = torch.cat([attended, lagged.to(attended.dtype), own.to(attended.dtype)], dim=-1)
        return attended, new_state
