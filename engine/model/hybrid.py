"""The hierarchical hybrid model: per-asset selective-SSM streams, cross-asset lead-lag attention, multi-task heads.

    x (B, A, T, F) --per-asset input projection--> (B, T, A, d_model)
      --layer_pattern, e.g. ssm, attn, ssm, attn-->      Level 1: SSM layers before the first attention, one stream
                                                         per asset; Level 2: the first attention, across assets and
                                                         lags; Level 3: the rest, on the mixed streams
      --final RMSNorm, heads--> quantiles (B, A, T, H, Q), direction_logit (B, A, T, H), log_vol (B, A, T, H)

The same weights run over a whole window (`forward`) or one new bar at a time (`step`, O(1) per bar); both give
the same numbers, and `forward(..., state=s, return_state=True)` continues from and hands back a step state, so a
long history can be processed in chunks or used to warm the state for live stepping.

Closed market bars (mask False) are inert: features there are ignored (NaN allowed), the SSM state is carried,
the bar is not a key for attention, and no layer adds anything to that asset's stream. The heads still emit
numbers at closed bars: those are not forecasts, and the target-valid mask must exclude them.
"""
from __future__ import annotations

from dataclasses import dataclass, fields

import torch
from torch import Tensor, nn

from engine.model.attention import AttentionLayerState, LeadLagAttention
from engine.model.config import ModelConfig
from engine.model.heads import ForecastHeads
from engine.model.ssm import (
    PerAssetLinear,
    PerAssetRMSNorm,
    SelectiveSSMBlock,
    SSMDiagnostics,
    SSMLayerState,
)


@dataclass
class Diagnostics:
    """What the model 'sees', per bar. Asset-major (B, A, T, .) like the forecasts, except attention."""

    embeddings: Tensor | None  # (B, A, T, 2N + d_inner) regime embedding from the last Level-1 SSM layer's h_t
    delta: Tensor | None  # (B, A, T, d_inner) that layer's Delta_t; 0 at closed bars
    effective_lookback: Tensor | None  # (B, A, T, d_inner) half-life in bars of each channel's slowest state
    attention: Tensor | None  # (B, T, A_tgt, A_src, K+1) first attention layer, averaged over heads
    attention_by_layer: dict[int, Tensor]  # layer index -> (B, T, A_tgt, A_src, K+1)
    attention_per_head: dict[int, Tensor] | None = None  # layer index -> (B, T, A_tgt, heads, A_src, K+1)


@dataclass
class StepState:
    """Per-layer memory for step mode, in layer order (SSMLayerState or AttentionLayerState)."""

    layers: list[SSMLayerState | AttentionLayerState]
    # With ModelConfig.lead_path: the last K bars of every asset's input features, oldest first (B, K, A, F)
    lead_inputs: Tensor | None = None

    @property
    def batch_size(self) -> int:
        first = self.layers[0]
        return (first.ssm_state if isinstance(first, SSMLayerState) else first.keys).shape[0]

    def detach(self) -> StepState:
        """The same state cut from autograd (for truncated backprop through long histories)."""
        detached = []
        for layer in self.layers:
            kind = type(layer)
            detached.append(kind(**{f.name: getattr(layer, f.name).detach() for f in fields(layer)}))
        return StepState(detached, None if self.lead_inputs is None else self.lead_inputs.detach())


@dataclass
class ModelOutput:
    quantiles: Tensor  # (B, A, T, H, Q), non-decreasing along Q
    direction_logit: Tensor  # (B, A, T, H)
    log_vol: Tensor  # (B, A, T, H)
    quantile_levels: tuple[float, ...]
    horizons: tuple[int, ...]
    diagnostics: Diagnostics | None = None
    state: StepState | None = None
    mean: Tensor | None = None  # (B, A, T, H) conditional mean of the return; None without config.point_head


class HybridModel(nn.Module):
    """Per-asset input projection -> layers in config.layer_pattern -> final norm -> per-asset heads (see module doc)."""

    def __init__(self, config: ModelConfig):
        super().__init__()
        self.config = config
        A = config.n_assets
        self.input_proj = PerAssetLinear(A, config.n_features, config.d_model)
        # With shared SSM weights the streams would be interchangeable; an asset embedding tells them apart.
        self.asset_embedding = nn.Parameter(torch.zeros(A, config.d_model)) if config.shared_ssm else None
        self.layers = nn.ModuleList(
            SelectiveSSMBlock(config) if kind == "ssm" else LeadLagAttention(config) for kind in config.layer_pattern
        )
        self.final_norm = PerAssetRMSNorm(A, config.d_model)
        self.heads = ForecastHeads(config)
        self.diagnostic_ssm_layer = self._last_level1_ssm(config.layer_pattern)
        self.first_attention_layer = next((i for i, k in enumerate(config.layer_pattern) if k == "attn"), None)

    @staticmethod
    def _last_level1_ssm(pattern: tuple[str, ...]) -> int | None:
        """The last SSM before the first attention (the last SSM of all if the pattern starts with attention)."""
        ssm_layers = [i for i, kind in enumerate(pattern) if kind == "ssm"]
        first_attention = pattern.index("attn") if "attn" in pattern else len(pattern)
        level1 = [i for i in ssm_layers if i < first_attention]
        return (level1 or ssm_layers or [None])[-1]

    def num_parameters(self) -> int:
        return sum(p.numel() for p in self.parameters())

    # ----- full sequence ----------------------------------------------------------------------------------------

    def forward(
        self,
        x: Tensor,
        mask: Tensor,
        *,
        return_diagnostics: bool = False,
        attention_per_head: bool = False,
        state: StepState | None = None,
        return_state: bool = False,
    ) -> ModelOutput:
        """x (B, A, T, F), mask (B, A, T) bool, True = bar observed -> ModelOutput over all T bars.

        state: continue from a StepState (from init_state, step or an earlier forward) instead of an empty past.
        return_state: also hand back the state after the last bar, ready for step() or the next chunk.
        """
        self._check_inputs(x, mask, state, where="forward")
        mask_t = mask.transpose(1, 2)  # (B, T, A)
        h = self._embed(x.transpose(1, 2), mask_t)  # (B, T, A, M)
        new_layers, ssm_diag, attention, per_head, lead_weights = [], None, {}, {}, None
        for i, layer in enumerate(self.layers):
            layer_state = None if state is None else state.layers[i]
            if isinstance(layer, SelectiveSSMBlock):
                want = return_diagnostics and i == self.diagnostic_ssm_layer
                h, new_state, diag = layer(h, mask_t, layer_state, return_state=return_state, return_diagnostics=want)
                ssm_diag = diag if want else ssm_diag
            else:
                reads_lead = self.config.lead_path and i == self.first_attention_layer
                h, new_state, weights = layer(
                    h, mask_t, layer_state, return_state=return_state,
                    need_weights=return_diagnostics or reads_lead, per_head=attention_per_head or reads_lead,
                )
                if weights is not None and return_diagnostics:
                    attention[i] = weights.mean
                    per_head[i] = weights.per_head
                if reads_lead:
                    lead_weights = weights.per_head  # (B, T, A_tgt, heads, A_src, K+1)
            new_layers.append(new_state)
        attended, lead_inputs = self._attended_inputs(x, mask, lead_weights, state, return_state)
        quantiles, direction_logit, log_vol, mean = self.heads(self.final_norm(h), attended)  # (B, T, A, H[, Q])
        return ModelOutput(
            mean=None if mean is None else mean.transpose(1, 2),
            quantiles=quantiles.transpose(1, 2),
            direction_logit=direction_logit.transpose(1, 2),
            log_vol=log_vol.transpose(1, 2),
            quantile_levels=self.config.quantiles,
            horizons=self.config.horizons,
            diagnostics=self._diagnostics(ssm_diag, attention, per_head if attention_per_head else None)
            if return_diagnostics
            else None,
            state=StepState(new_layers, lead_inputs) if return_state else None,
        )

    # ----- one bar at a time ------------------------------------------------------------------------------------

    def init_state(
        self, batch: int, *, device: torch.device | str | None = None, dtype: torch.dtype | None = None
    ) -> StepState:
        """The state before the first bar: empty conv buffers, zero SSM states, no attention history."""
        reference = next(self.parameters())
        device = reference.device if device is None else device
        dtype = reference.dtype if dtype is None else dtype
        c = self.config
        layers: list[SSMLayerState | AttentionLayerState] = []
        for layer in self.layers:
            if isinstance(layer, SelectiveSSMBlock):
                d_total = c.n_assets * c.d_inner
                layers.append(SSMLayerState(
                    torch.zeros(batch, d_total, c.d_conv - 1, device=device, dtype=dtype),
                    torch.zeros(batch, d_total, c.d_state, device=device, dtype=dtype),
                ))
            else:
                layers.append(layer.init_state(batch, c.n_assets, c.d_model, device=device, dtype=dtype))
        lead_inputs = None
        if c.lead_path:  # "before the first bar": zeros, which the attention gives weight 0 (masked keys)
            lead_inputs = torch.zeros(batch, c.max_lag, c.n_assets, c.lead_input_width, device=device, dtype=dtype)
        return StepState(layers, lead_inputs)

    def step(
        self, x_t: Tensor, mask_t: Tensor, state: StepState, *, return_diagnostics: bool = False
    ) -> tuple[ModelOutput, StepState]:
        """One new bar: x_t (B, A, F), mask_t (B, A) bool -> (ModelOutput with T=1, the state after this bar)."""
        self._check_inputs(x_t.unsqueeze(2), mask_t.unsqueeze(2), state, where="step")
        h = self._embed(x_t, mask_t)  # (B, A, M)
        new_layers, ssm_diag, attention, lead_weights = [], None, {}, None
        for i, (layer, layer_state) in enumerate(zip(self.layers, state.layers)):
            if isinstance(layer, SelectiveSSMBlock):
                want = return_diagnostics and i == self.diagnostic_ssm_layer
                h, new_state, diag = layer.step(h, mask_t, layer_state, return_diagnostics=want)
                ssm_diag = diag if want else ssm_diag
            else:
                # Attention's forward with T=1 and the cached K bars IS its step: one code path for both modes.
                reads_lead = self.config.lead_path and i == self.first_attention_layer
                h_seq, new_state, weights = layer(
                    h.unsqueeze(1), mask_t.unsqueeze(1), layer_state, return_state=True,
                    need_weights=return_diagnostics or reads_lead, per_head=reads_lead,
                )
                h = h_seq.squeeze(1)
                if weights is not None and return_diagnostics:
                    attention[i] = weights.mean
                if reads_lead:
                    lead_weights = weights.per_head
            new_layers.append(new_state)
        attended, lead_inputs = self._attended_inputs(x_t.unsqueeze(2), mask_t.unsqueeze(2), lead_weights, state, True)
        attended = None if attended is None else attended.squeeze(1)  # (B, A, heads * F)
        quantiles, direction_logit, log_vol, mean = self.heads(self.final_norm(h), attended)  # (B, A, H[, Q])
        diagnostics = None
        if return_diagnostics:
            if ssm_diag is not None:  # back to the layers' (B, T=1, A, .) layout
                d = ssm_diag
                ssm_diag = SSMDiagnostics(d.embeddings.unsqueeze(1), d.delta.unsqueeze(1),
                                          d.effective_lookback.unsqueeze(1))
            diagnostics = self._diagnostics(ssm_diag, attention, None)
        output = ModelOutput(
            quantiles=quantiles.unsqueeze(2),  # (B, A, T=1, H, Q)
            mean=None if mean is None else mean.unsqueeze(2),
            direction_logit=direction_logit.unsqueeze(2),
            log_vol=log_vol.unsqueeze(2),
            quantile_levels=self.config.quantiles,
            horizons=self.config.horizons,
            diagnostics=diagnostics,
        )
        return output, StepState(new_layers, lead_inputs)

    # ----- the hidden attention of the selective SSM ------------------------------------------------------------

    @torch.no_grad()
    def implicit_attention(self, x: Tensor, mask: Tensor, asset: int, t: int, *, reduce: bool = False) -> Tensor:
        """How much bar t of `asset` draws on each past bar s <= t through the last Level-1 SSM layer.

        x (B, A, T, F), mask (B, A, T) -> alpha (B, d_inner, t+1), or with reduce=True (B, t+1): the mean over
        channels of |alpha|, a per-asset summary for plotting. See SelectiveSSMBlock.implicit_attention.
        """
        self._check_inputs(x, mask, None, where="implicit_attention")
        if not 0 <= asset < self.config.n_assets:
            raise ValueError(f"implicit_attention: asset={asset} is outside 0..{self.config.n_assets - 1}")
        if not 0 <= t < x.shape[2]:
            raise ValueError(f"implicit_attention: t={t} is outside the window 0..{x.shape[2] - 1}")
        if self.diagnostic_ssm_layer is None:
            raise ValueError("implicit_attention: layer_pattern has no SSM layer")
        mask_t = mask[:, :, : t + 1].transpose(1, 2)  # (B, t+1, A)
        h = self._embed(x[:, :, : t + 1].transpose(1, 2), mask_t)
        for layer in self.layers[: self.diagnostic_ssm_layer]:
            h = layer(h, mask_t)[0]
        alpha = self.layers[self.diagnostic_ssm_layer].implicit_attention(h, mask_t, asset)  # (B, Di, t+1)
        return alpha.abs().mean(dim=1) if reduce else alpha

    # ----- helpers ----------------------------------------------------------------------------------------------

    def _attended_inputs(self, x: Tensor, mask: Tensor, weights: Tensor | None, state: StepState | None,
                         return_state: bool) -> tuple[Tensor | None, Tensor | None]:
        """The lead path's input: every source's raw features at lags 0..K, summed with the first attention
        layer's per-head weights -> ((B, T, A_tgt, heads * F) or None, the last K bars' features for the state).

        x (B, A, T, F), mask (B, A, T); weights (B, T, A_tgt, heads, A_src, K+1), lag 0 first. The weights are 0
        at closed bars and before the first bar, so the zeros put there are never read."""
        if weights is None:
            return None, None
        K, n_read = self.config.max_lag, self.config.lead_input_width
        x = x[..., :n_read]
        inputs = torch.where(mask.unsqueeze(-1), x, torch.zeros((), dtype=x.dtype, device=x.device))
        inputs = inputs.transpose(1, 2)  # (B, T, A, F)
        past = state.lead_inputs if state is not None and state.lead_inputs is not None else \
            inputs.new_zeros(inputs.shape[0], K, *inputs.shape[2:])
        history = torch.cat([past, inputs], dim=1)  # (B, K+T, A, F)
        windows = history.unfold(1, K + 1, 1).flip(-1)  # (B, T, A_src, F, K+1), lag 0 first
        attended = torch.einsum("btihsk,btsfk->btihf", weights.to(windows.dtype), windows)  # (B, T, A, heads, F)
        new_past = history[:, history.shape[1] - K:].clone() if return_state else None
        return attended.flatten(-2), new_past

    def _embed(self, x: Tensor, mask: Tensor) -> Tensor:
        """x (..., A, F) features, mask (..., A) -> (..., A, M). Closed bars' features are ignored (NaN allowed)."""
        x = torch.where(mask.unsqueeze(-1), x, torch.zeros((), dtype=x.dtype, device=x.device))
        h = self.input_proj(x)
        return h if self.asset_embedding is None else h + self.asset_embedding

    def _diagnostics(
        self, ssm_diag: SSMDiagnostics | None, attention: dict[int, Tensor], per_head: dict[int, Tensor] | None
    ) -> Diagnostics:
        def asset_major(t: Tensor | None) -> Tensor | None:
            return None if t is None else t.transpose(1, 2)  # (B, T, A, .) -> (B, A, T, .)

        first = attention.get(self.first_attention_layer) if self.first_attention_layer is not None else None
        return Diagnostics(
            embeddings=asset_major(ssm_diag.embeddings) if ssm_diag else None,
            delta=asset_major(ssm_diag.delta) if ssm_diag else None,
            effective_lookback=asset_major(ssm_diag.effective_lookback) if ssm_diag else None,
            attention=first,
            attention_by_layer=attention,
            attention_per_head=per_head,
        )

    def _check_inputs(self, x: Tensor, mask: Tensor, state: StepState | None, *, where: str) -> None:
        """x (B, A, T, F), mask (B, A, T): raise ValueError saying what is wrong and where."""
        c = self.config
        if x.dim() != 4 or x.shape[1] != c.n_assets or x.shape[3] != c.n_features:
            raise ValueError(
                f"HybridModel.{where}: x must be (batch, assets={c.n_assets}, time, features={c.n_features}), "
                f"got {tuple(x.shape)}"
            )
        if not x.is_floating_point():
            raise ValueError(f"HybridModel.{where}: x must be a float tensor, got {x.dtype}")
        if mask.dtype != torch.bool or tuple(mask.shape) != tuple(x.shape[:3]):
            raise ValueError(
                f"HybridModel.{where}: mask must be bool (batch, assets, time) = {tuple(x.shape[:3])}, "
                f"got {mask.dtype} {tuple(mask.shape)}"
            )
        finite = torch.isfinite(x)
        if not finite.all():  # the common all-finite case costs one pass; NaN at closed bars is allowed
            bad = mask.unsqueeze(-1) & ~finite
            if bad.any():
                b, a, t, f = (int(i) for i in bad.nonzero()[0])
                raise ValueError(
                    f"HybridModel.{where}: non-finite feature at an open bar: batch {b}, asset {a}, bar {t}, "
                    f"feature {f} (mark the bar closed in the mask, or fill the feature)"
                )
        if state is not None:
            if len(state.layers) != len(self.layers):
                raise ValueError(f"HybridModel.{where}: state has {len(state.layers)} layers, model {len(self.layers)}")
            if state.batch_size != x.shape[0]:
                raise ValueError(f"HybridModel.{where}: state is for batch {state.batch_size}, x has {x.shape[0]}")
