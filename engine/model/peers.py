"""Neural peers of the hybrid, for the comparison the designs promise ("is the hybrid worth it here?").

Each peer keeps the hybrid's contract, so training, forecasting, evaluation and the backtest run it unchanged:
x (B, A, T, F) features + (B, A, T) mask -> engine.model.hybrid.ModelOutput (quantiles, P(up) logit, log-vol and
mean from the very same engine.model.heads.ForecastHeads), `forward(..., state=, return_state=)` to carry a long
history in chunks, and `step` for one new bar. Every peer is one stream per asset (per-asset weights, as the hybrid's
SSM streams), with no cross-asset mixing:

    TransformerPeer  pre-norm causal Transformer blocks of width d_model over the last max_lag + 1 bars (a sliding
                     window, so a chunked history and step mode give the numbers a window does), a learned bias per
                     head and lag instead of absolute positions, feed-forward 4 x d_model (sized like the hybrid, not
                     nn.TransformerEncoderLayer's 2048)
    LSTMPeer         stacked LSTM layers of hidden size d_model with residual connections

The two other peers are the hybrid itself under other settings (engine.training.peer_presets): the pure SSM (no
attention layer, no lead path) and the late-fusion ablation (cross-asset attention only as the last layer).

Closed bars (mask False) are inert as in the hybrid: their features are ignored, the recurrent state is carried,
the bar is no key for attention, and no layer changes that asset's stream there.

`build_model(config)` builds whichever model a ModelConfig's `kind` names; training (engine.training.loop) and
checkpoint loading (engine.model.checkpoint) construct models through it, so a saved peer reloads as itself.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from engine.model.config import ModelConfig
from engine.model.heads import ForecastHeads
from engine.model.hybrid import HybridModel, ModelOutput
from engine.model.ssm import PerAssetLinear, PerAssetRMSNorm

FEED_FORWARD_MULTIPLE = 4
# Queries per block when a long history runs through the Transformer: its scores then take
# (B, A, heads, block, block + context) floats instead of (..., T, T + context).
QUERY_BLOCK = 512


def build_model(config: ModelConfig) -> nn.Module:
    """The model config.kind names: HybridModel, TransformerPeer or LSTMPeer."""
    if config.kind == "hybrid":
        return HybridModel(config)
    if config.kind == "transformer":
        return TransformerPeer(config)
    if config.kind == "lstm":
        return LSTMPeer(config)
    raise ValueError(f"build_model: no model of kind {config.kind!r}")


@dataclass
class PeerState:
    """What a peer remembers between chunks or bars, one entry per layer.

    Transformer: keys and values (B, A, heads, C, dh) of the last C = max_lag + 1 bars and whether each was an
    open bar (B, A, C). LSTM: h and c (B, A, M)."""

    layers: list[tuple[Tensor, ...]]

    @property
    def batch_size(self) -> int:
        return self.layers[0][0].shape[0]

    def detach(self) -> PeerState:
        return PeerState([tuple(t.detach() for t in layer) for layer in self.layers])


class _PeerBase(nn.Module):
    """What every peer shares: the per-asset input projection, len(layer_pattern) residual blocks of its kind, the
    final norm, the hybrid's heads and the output. A block maps (h (B, T, A, M), mask (B, T, A), its state) to
    (h, its state after the last bar) and has init_state(batch, n_assets, device, dtype)."""

    block: type[nn.Module]

    def __init__(self, config: ModelConfig):
        super().__init__()
        if config.lead_path:
            raise ValueError(f"{type(self).__name__}: a peer has no lead path (ModelConfig.lead_path=False)")
        self.config = config
        A, M = config.n_assets, config.d_model
        self.input_proj = PerAssetLinear(A, config.n_features, M)
        self.final_norm = PerAssetRMSNorm(A, M)
        self.heads = ForecastHeads(config)
        self.layers = nn.ModuleList(self.block(config) for _ in config.layer_pattern)

    @property
    def n_layers(self) -> int:
        return len(self.config.layer_pattern)

    def num_parameters(self) -> int:
        return sum(p.numel() for p in self.parameters())

    def forward(self, x: Tensor, mask: Tensor, *, return_diagnostics: bool = False, attention_per_head: bool = False,
                state: PeerState | None = None, return_state: bool = False) -> ModelOutput:
        """x (B, A, T, F), mask (B, A, T) bool -> ModelOutput over all T bars (no diagnostics: a peer has neither
        SSM states nor lead-lag attention to show). state / return_state as in HybridModel.forward."""
        self._check_inputs(x, mask, state)
        x, mask = x.transpose(1, 2), mask.transpose(1, 2)  # (B, T, A, F), (B, T, A)
        x = torch.where(mask.unsqueeze(-1), x, torch.zeros((), dtype=x.dtype, device=x.device))
        h = self.input_proj(x)  # (B, T, A, M)
        h, new_state = self._layers(h, mask, state)
        quantiles, logit, log_vol, mean = self.heads(self.final_norm(h))
        return ModelOutput(
            quantiles=quantiles.transpose(1, 2), direction_logit=logit.transpose(1, 2),
            log_vol=log_vol.transpose(1, 2), mean=None if mean is None else mean.transpose(1, 2),
            quantile_levels=self.config.quantiles, horizons=self.config.horizons, diagnostics=None,
            state=new_state if return_state else None)

    def step(self, x_t: Tensor, mask_t: Tensor, state: PeerState, *, return_diagnostics: bool = False
             ) -> tuple[ModelOutput, PeerState]:
        """One new bar: x_t (B, A, F), mask_t (B, A) -> (ModelOutput with T = 1, the state after it). The same
        arithmetic as forward over one bar: both peers are exact in chunks by construction."""
        output = self.forward(x_t.unsqueeze(2), mask_t.unsqueeze(2), state=state, return_state=True)
        new_state = output.state
        output.state = None
        return output, new_state

    def _check_inputs(self, x: Tensor, mask: Tensor, state: PeerState | None) -> None:
        c, name = self.config, type(self).__name__
        if x.dim() != 4 or x.shape[1] != c.n_assets or x.shape[3] != c.n_features:
            raise ValueError(f"{name}: x must be (batch, assets={c.n_assets}, time, features={c.n_features}), "
                             f"got {tuple(x.shape)}")
        if mask.dtype != torch.bool or tuple(mask.shape) != tuple(x.shape[:3]):
            raise ValueError(f"{name}: mask must be bool (batch, assets, time) = {tuple(x.shape[:3])}, "
                             f"got {mask.dtype} {tuple(mask.shape)}")
        if state is not None and (len(state.layers) != self.n_layers or state.batch_size != x.shape[0]):
            raise ValueError(f"{name}: the state is for {len(state.layers)} layers and batch {state.batch_size}, "
                             f"the model has {self.n_layers} layers and x batch {x.shape[0]}")

    def init_state(self, batch: int, *, device=None, dtype=None) -> PeerState:
        """The state before the first bar (zeros; no open bar in the Transformer's window)."""
        reference = next(self.parameters())
        device, dtype = device or reference.device, dtype or reference.dtype
        return PeerState([layer.init_state(batch, self.config.n_assets, device, dtype) for layer in self.layers])

    def _layers(self, h: Tensor, mask: Tensor, state: PeerState | None) -> tuple[Tensor, PeerState]:
        state = state or self.init_state(h.shape[0], device=h.device, dtype=h.dtype)
        new_layers = []
        for layer, layer_state in zip(self.layers, state.layers):
            h, layer_state = layer(h, mask, layer_state)
            new_layers.append(layer_state)
        return h, PeerState(new_layers)


# ----- the Transformer ------------------------------------------------------------------------------------------------


class CausalBlock(nn.Module):
    """Pre-norm Transformer block over time, one per-asset stream: x + attn(norm x), then x + ff(norm x).

    Each bar attends to the open bars among itself and the max_lag bars before it, with a learned bias per head and
    lag (a relative position: the same at every bar, so a sliding window over any history is exact)."""

    def __init__(self, config: ModelConfig):
        super().__init__()
        A, M = config.n_assets, config.d_model
        self.n_heads, self.head_dim, self.context = config.n_heads, M // config.n_heads, config.max_lag + 1
        self.norm_attn = PerAssetRMSNorm(A, M)
        self.qkv = PerAssetLinear(A, M, 3 * M)
        self.out = PerAssetLinear(A, M, M)
        self.lag_bias = nn.Parameter(torch.zeros(self.n_heads, self.context))  # (heads, lag 0..max_lag)
        self.norm_ff = PerAssetRMSNorm(A, M)
        self.ff_in = PerAssetLinear(A, M, FEED_FORWARD_MULTIPLE * M)
        self.ff_out = PerAssetLinear(A, FEED_FORWARD_MULTIPLE * M, M)
        self.dropout = nn.Dropout(config.dropout)

    def init_state(self, batch: int, n_assets: int, device, dtype) -> tuple[Tensor, Tensor, Tensor]:
        shape = (batch, n_assets, self.n_heads, self.context, self.head_dim)
        return (torch.zeros(shape, device=device, dtype=dtype), torch.zeros(shape, device=device, dtype=dtype),
                torch.zeros(batch, n_assets, self.context, device=device, dtype=torch.bool))

    def forward(self, h: Tensor, mask: Tensor, state: tuple[Tensor, Tensor, Tensor]
                ) -> tuple[Tensor, tuple[Tensor, Tensor, Tensor]]:
        """h (B, T, A, M), mask (B, T, A), state: the last C bars' keys, values and openness -> (h, new state)."""
        B, T, A, M = h.shape
        C, heads, dh = self.context, self.n_heads, self.head_dim
        q, k, v = self.qkv(self.norm_attn(h)).view(B, T, A, 3, heads, dh).permute(3, 0, 2, 4, 1, 5)  # (B, A, hd, T, dh)
        past_k, past_v, past_open = state
        keys = torch.cat([past_k, k], dim=3)  # (B, A, heads, C + T, dh); key s is bar s - C of this chunk
        values = torch.cat([past_v, v], dim=3)
        key_open = torch.cat([past_open, mask.transpose(1, 2)], dim=2)  # (B, A, C + T)
        outputs = []
        for t0 in range(0, T, QUERY_BLOCK):
            t1 = min(t0 + QUERY_BLOCK, T)
            # query t sees keys s in [t + 1, t + C] (concatenated positions), lag = C + t - s in 0..C-1
            s0, s1 = t0 + 1, t1 + C
            scores = q[:, :, :, t0:t1] @ keys[:, :, :, s0:s1].transpose(-1, -2) / math.sqrt(dh)  # (B, A, hd, n, m)
            lag = C + torch.arange(t0, t1, device=h.device)[:, None] - torch.arange(s0, s1, device=h.device)[None]
            in_window = (lag >= 0) & (lag < C)  # (n, m)
            bias = self.lag_bias[:, lag.clamp(0, C - 1)]  # (heads, n, m)
            allowed = in_window & key_open[:, :, None, s0:s1]  # (B, A, n, m)
            # A finite fill, not -inf: a closed bar with no open bar in reach gets uniform (discarded) weights
            # instead of NaN, whose gradient would poison the rest of the batch.
            scores = (scores + bias).masked_fill(~allowed.unsqueeze(2), -1e9)
            outputs.append(scores.softmax(dim=-1) @ values[:, :, :, s0:s1])  # (B, A, heads, n, dh)
        attended = torch.cat(outputs, dim=3).permute(0, 3, 1, 2, 4).reshape(B, T, A, M)
        keep = mask.unsqueeze(-1)  # a closed bar adds nothing to its stream
        h = h + torch.where(keep, self.dropout(self.out(attended)), torch.zeros((), dtype=h.dtype, device=h.device))
        ff = self.ff_out(F.gelu(self.ff_in(self.norm_ff(h))))
        h = h + torch.where(keep, self.dropout(ff), torch.zeros((), dtype=h.dtype, device=h.device))
        return h, (keys[:, :, :, -C:], values[:, :, :, -C:], key_open[:, :, -C:])


class TransformerPeer(_PeerBase):
    """Per-asset causal Transformer of the hybrid's width, len(layer_pattern) blocks, the hybrid's heads."""

    block = CausalBlock


# ----- the LSTM -------------------------------------------------------------------------------------------------------


class LSTMBlock(nn.Module):
    """x + LSTM(norm x): one LSTM layer per asset (hidden size M), stepped in one loop over time for every asset at
    once; the state is carried unchanged over closed bars, which add nothing to the stream."""

    def __init__(self, config: ModelConfig):
        super().__init__()
        A, M = config.n_assets, config.d_model
        self.norm = PerAssetRMSNorm(A, M)
        self.input_gates = PerAssetLinear(A, M, 4 * M)
        bound = 1.0 / math.sqrt(M)
        self.recurrent = nn.Parameter(torch.empty(A, M, 4 * M).uniform_(-bound, bound))
        with torch.no_grad():  # forget gate bias 1: remember by default at the start of training
            self.input_gates.bias[:, M: 2 * M] += 1.0
        self.dropout = nn.Dropout(config.dropout)

    def init_state(self, batch: int, n_assets: int, device, dtype) -> tuple[Tensor, Tensor]:
        shape = (batch, n_assets, self.recurrent.shape[1])
        return torch.zeros(shape, device=device, dtype=dtype), torch.zeros(shape, device=device, dtype=dtype)

    def forward(self, h: Tensor, mask: Tensor, state: tuple[Tensor, Tensor]) -> tuple[Tensor, tuple[Tensor, Tensor]]:
        """h (B, T, A, M), mask (B, T, A), state (h, c) each (B, A, M) -> (h (B, T, A, M), (h, c) after the last
        bar)."""
        gates_in = self.input_gates(self.norm(h)).permute(1, 2, 0, 3)  # (T, A, B, 4M)
        open_bars = mask.permute(1, 2, 0).unsqueeze(-1)  # (T, A, B, 1)
        h_t, c_t = (s.transpose(0, 1) for s in state)  # (A, B, M)
        outputs = []
        # unbind, not indexing: x[t] in a loop makes autograd's backward quadratic in T
        for g_in, is_open in zip(gates_in.unbind(0), open_bars.unbind(0)):
            gates = torch.baddbmm(g_in, h_t, self.recurrent)  # (A, B, 4M)
            i, f, g, o = gates.chunk(4, dim=-1)
            c_new = torch.sigmoid(f) * c_t + torch.sigmoid(i) * torch.tanh(g)
            h_new = torch.sigmoid(o) * torch.tanh(c_new)
            h_t, c_t = torch.where(is_open, h_new, h_t), torch.where(is_open, c_new, c_t)
            outputs.append(h_t)
        out = torch.stack(outputs, dim=0).permute(2, 0, 1, 3)  # (B, T, A, M)
        h = h + torch.where(mask.unsqueeze(-1), self.dropout(out), torch.zeros((), dtype=h.dtype, device=h.device))
        return h, (h_t.transpose(0, 1), c_t.transpose(0, 1))


class LSTMPeer(_PeerBase):
    """Per-asset stacked LSTM (hidden d_model, len(layer_pattern) residual layers), the hybrid's heads."""

    block = LSTMBlock
