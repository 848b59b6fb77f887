"""Level 2: cross-asset lead-lag attention.

At bar t a query from target asset i attends to the keys of EVERY source asset j at bars t-k, k = 0..K. The
softmax runs jointly over (source, lag), so alpha[target, source, lag] is a lead-lag map: "to read asset i now,
look at asset j k bars ago". Nothing at a bar later than t is ever visible (strictly causal).

Masking:
  * a key at a closed bar of its market (mask False), or before the first bar, gets weight exactly 0;
  * a target whose market is closed at t gets NO weights (all zeros) and the layer adds nothing to its stream
    there: a closed bar's output is its input, the same rule as the SSM block's.
An open target always has at least one valid key (its own bar at lag 0), so its weights sum to 1.

Keys learn two additive embeddings, a lag embedding (so lag 0 and lag 5 of the same asset are told apart) and a
source-asset embedding; they are added while the unfolded keys are copied into the head-major layout anyway.

Implementation: the last K bars are prepended (zeros, or the step state's cache), then unfold gives K+1 shifted
views of K and V; window slot w holds bar t-K+w, i.e. lag K-w. Step mode is this same forward with T=1 and the
cache as history, so the two modes cannot drift apart. The layer keeps engine.model.layer's interface, and its
readout is the weights (AttentionWeights).

On CUDA, a forward with no state before it, none asked for, no readout and more than one bar (training, and
inference over a window) runs the fused Triton kernel of engine.model.attention_triton instead: the same
arithmetic without the key windows and the scores tensor (FUSED_ON_CUDA switches it off, for the benchmarks'
before rows). The CPU path, step mode and the readout are this module's torch code.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from engine.model.config import ModelConfig
from engine.model.layer import LayerOutput, derived_weights
from engine.model.scan import fused_kernel_available
from engine.model.ssm import PerAssetRMSNorm

FUSED_ON_CUDA = True  # the fused Triton attention for a CUDA forward that needs no state and no readout


@dataclass
class AttentionLayerState:
    """The last K bars an attention layer must see again at the next bar, oldest first."""

    keys: Tensor  # (B, K, A, M)
    values: Tensor  # (B, K, A, M)
    key_mask: Tensor  # (B, K, A) bool; False = closed bar or before the first bar


@dataclass
class AttentionWeights:
    """alpha[target, source, lag], lag 0 = the same bar."""

    mean: Tensor  # (B, T, A_tgt, A_src, K+1) averaged over heads
    per_head: Tensor  # (B, T, A_tgt, heads, A_src, K+1), a view of the weights the mean was taken over


class LeadLagAttention(nn.Module):
    """Pre-norm residual multi-head attention across assets and the last K bars."""

    def __init__(self, config: ModelConfig):
        super().__init__()
        M, H = config.d_model, config.n_heads
        if M % H != 0:
            raise ValueError(f"LeadLagAttention: d_model={M} must be divisible by n_heads={H}")
        self.n_heads, self.head_dim, self.max_lag = H, M // H, config.max_lag
        self.n_assets, self.d_model = config.n_assets, M
        self.norm = PerAssetRMSNorm(config.n_assets, M, shared=True)  # one gain for all assets: weights are shared
        self.qkv = nn.Linear(M, 3 * M, bias=False)
        self.out_proj = nn.Linear(M, M, bias=False)
        # Small random init: lags and sources start nearly interchangeable and the data decides.
        self.lag_embedding = nn.Parameter(0.02 * torch.randn(config.max_lag + 1, H, self.head_dim))  # (K+1, H, dh)
        self.source_embedding = nn.Parameter(0.02 * torch.randn(config.n_assets, H, self.head_dim))  # (A, H, dh)
        self.dropout = config.dropout

    def init_state(self, batch: int, *, device: torch.device | str | None = None,
                   dtype: torch.dtype | None = None) -> AttentionLayerState:
        """Before the first bar: K cached bars of zeros, every one masked, so they get weight exactly 0."""
        K = self.max_lag
        zeros = torch.zeros(batch, K, self.n_assets, self.d_model, device=device, dtype=dtype)
        no_bars = torch.zeros(batch, K, self.n_assets, dtype=torch.bool, device=device)
        return AttentionLayerState(zeros, zeros.clone(), no_bars)

    def forward(
        self,
        x: Tensor,
        mask: Tensor,
        state: AttentionLayerState | None = None,
        *,
        return_state: bool = False,
        readout: bool = False,
    ) -> LayerOutput:
        """x (B, T, A, M), mask (B, T, A) bool -> (x (B, T, A, M), state or None, AttentionWeights or None)."""
        batch, length, A, M = x.shape
        H, dh, K = self.n_heads, self.head_dim, self.max_lag
        projected = self.qkv(self.norm(x))  # (B, T, A, 3M): queries, keys, values
        if (state is None and not return_state and not readout and length > 1 and x.is_cuda and FUSED_ON_CUDA
                and fused_kernel_available()):  # CUDA and Triton, as for the fused scan
            from engine.model.attention_triton import lead_lag_attention, supported

            if supported(projected, H):
                attended = lead_lag_attention(projected, mask, self.lag_embedding, self.source_embedding, H)
                out = self.out_proj(attended)  # closed targets' rows are exactly 0, as below
                return LayerOutput(x + F.dropout(out, self.dropout, self.training), None, None)
        q, k, v = projected.split(M, dim=-1)  # (B, T, A, M) each
        if state is None:
            state = self.init_state(batch, device=x.device, dtype=k.dtype)
        keys = torch.cat([state.keys, k], dim=1)  # (B, K+T, A, M)
        values = torch.cat([state.values, v], dim=1)
        key_mask = torch.cat([state.key_mask, mask], dim=1)  # (B, K+T, A)

        # K+1 shifted views: slot w of bar t holds bar t-K+w (lag K-w). Heads go in front so that scores and the
        # weighted sum are two batched matmuls over (B, T, H).
        W = K + 1
        key_windows = keys.unfold(1, W, 1).view(batch, length, A, H, dh, W).permute(0, 1, 3, 4, 2, 5)
        keys_h = (key_windows + self._key_embeddings()).reshape(batch, length, H, dh, A * W)  # (B, T, H, dh, A_src*W)
        value_windows = values.unfold(1, W, 1).view(batch, length, A, H, dh, W).permute(0, 1, 3, 2, 5, 4)
        values_h = value_windows.reshape(batch, length, H, A * W, dh)  # (B, T, H, A_src*W, dh)
        key_valid = key_mask.unfold(1, W, 1).reshape(batch, length, 1, 1, A * W)  # (B, T, 1, 1, A_src*W)

        q_h = q.view(batch, length, A, H, dh).transpose(2, 3) / math.sqrt(dh)  # (B, T, H, A_tgt, dh)
        scores = q_h @ keys_h  # (B, T, H, A_tgt, A_src*W)
        # Softmax in float32 even under bf16 autocast. finfo.min (not -inf) keeps a row with no valid key finite;
        # exp(min - max) is exactly 0 whenever the row has a valid key, so masked keys get exactly 0.
        softmax_dtype = torch.float64 if scores.dtype == torch.float64 else torch.float32
        scores = torch.where(key_valid, scores.to(softmax_dtype), torch.finfo(softmax_dtype).min)
        weights = F.softmax(scores, dim=-1)  # jointly over (source, lag)
        weights = weights * mask[:, :, None, :, None]  # closed targets attend to nothing
        attended = (weights if weights.dtype == values_h.dtype else weights.to(values_h.dtype)) @ values_h
        # attended (B, T, H, A_tgt, dh) is exactly 0 at closed targets and out_proj has no bias, so the layer adds
        # exactly nothing to a closed bar's stream without another mask multiply.
        out = self.out_proj(attended.transpose(2, 3).reshape(batch, length, A, M))

        new_state = None
        if return_state:
            new_state = AttentionLayerState(*(_last_bars(t, K) for t in (keys, values, key_mask)))
        attention = None
        if readout:
            in_lag_order = weights.view(batch, length, H, A, A, W).flip(-1)  # (B, T, H, A_tgt, A_src, K+1), lag 0 first
            attention = AttentionWeights(in_lag_order.mean(dim=2), in_lag_order.transpose(2, 3))
        return LayerOutput(x + F.dropout(out, self.dropout, self.training), new_state, attention)

    def step(
        self,
        x: Tensor,
        mask: Tensor,
        state: AttentionLayerState | None = None,
        *,
        return_state: bool = True,
        readout: bool = False,
    ) -> LayerOutput:
        """One new bar: forward with T=1 and the K cached bars as history. x (B, 1, A, M), mask (B, 1, A)."""
        if x.shape[1] != 1:
            raise ValueError(f"LeadLagAttention.step takes one bar, got a window of {x.shape[1]}")
        return self(x, mask, state, return_state=return_state, readout=readout)

    # ----- the batch-1 fast path (engine.model.layer) ------------------------------------------------------------

    def _step_weights(self) -> dict[str, Tensor]:
        """qkv with the norm's gain folded in and the queries' 1/sqrt(head_dim) too, and the key embeddings laid
        out like the bar's keys, (K+1, A_src, M) with slot w = lag K-w; cached until a parameter changes."""
        def build() -> dict[str, Tensor]:
            M = self.d_model
            qkv = self.qkv.weight * self.norm.weight.view(1, M)  # (3M, M): F.linear reads x @ W.T
            qkv = torch.cat([qkv[:M] / math.sqrt(self.head_dim), qkv[M:]])
            embeddings = self._key_embeddings().permute(3, 2, 0, 1).reshape(self.max_lag + 1, self.n_assets, M)
            return {"qkv": qkv.contiguous(), "keys": embeddings.contiguous(), "out": self.out_proj.weight}

        return derived_weights(self, build, lambda: (
            self.qkv.weight, self.norm.weight, self.lag_embedding, self.source_embedding, self.out_proj.weight))

    def step_fast(self, x: Tensor, mask: Tensor, state: AttentionLayerState, *, readout: bool = False
                  ) -> tuple[Tensor, AttentionLayerState, AttentionWeights | None]:
        """step() for batch 1 in inference, float32/float64: x (A, 1, M) (the bar's stream viewed asset first),
        mask (1, A) bool -> (x (A, 1, M), state, the weights or None). The same arithmetic as forward with T = 1,
        with the keys in (lag slot, source) order inside the softmax instead of (source, lag slot)."""
        w = self._step_weights()
        A, M, H, dh, W = self.n_assets, self.d_model, self.n_heads, self.head_dim, self.max_lag + 1
        qkv = F.linear(F.rms_norm(x.view(A, M), (M,), eps=self.norm.eps), w["qkv"])  # (A, 3M)
        keys = torch.cat([state.keys, qkv[:, M : 2 * M].view(1, 1, A, M)], dim=1)  # (1, K+1, A, M)
        values = torch.cat([state.values, qkv[:, 2 * M :].view(1, 1, A, M)], dim=1)
        key_mask = torch.cat([state.key_mask, mask.view(1, 1, A)], dim=1)  # (1, K+1, A)
        keys_h = (keys[0] + w["keys"]).view(W * A, H, dh).permute(1, 2, 0)  # (H, dh, (K+1) * A_src)
        scores = torch.matmul(qkv[:, :M].view(A, H, dh).transpose(0, 1), keys_h)  # (H, A_tgt, (K+1) * A_src)
        scores = torch.where(key_mask.view(W * A), scores, torch.finfo(scores.dtype).min)
        weights = torch.softmax(scores, dim=-1) * mask.view(1, A, 1)  # closed targets attend to nothing
        attended = torch.matmul(weights, values[0].view(W * A, H, dh).transpose(0, 1))  # (H, A_tgt, dh)
        out = F.linear(attended.transpose(0, 1).reshape(A, M), w["out"])
        new_state = AttentionLayerState(keys[:, 1:], values[:, 1:], key_mask[:, 1:])
        attention = None
        if readout:  # forward's layout: (1, 1, A_tgt, H, A_src, K+1), lag 0 first
            per_head = weights.view(H, A, W, A).permute(1, 0, 3, 2).flip(-1).unsqueeze(0).unsqueeze(0)
            attention = AttentionWeights(per_head.mean(dim=3), per_head)
        return x + out.view(A, 1, M), new_state, attention

    def _key_embeddings(self) -> Tensor:
        """Lag + source-asset embeddings laid out like the key windows: (H, dh, A_src, K+1), slot w = lag K-w."""
        lag = self.lag_embedding.flip(0).permute(1, 2, 0)  # (H, dh, W)
        source = self.source_embedding.permute(1, 2, 0)  # (H, dh, A)
        return source.unsqueeze(-1) + lag.unsqueeze(-2)


def _last_bars(history: Tensor, n: int) -> Tensor:
    """history (B, n+T, ...) -> its last n bars. Copied after a long window, so the state does not keep the whole
    window alive; a view in step mode (T=1), where the window is only n+1 bars and every op counts."""
    tail = history[:, history.shape[1] - n :]
    return tail.clone() if history.shape[1] > n + 1 else tail
