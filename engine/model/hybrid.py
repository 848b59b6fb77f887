"""The hierarchical hybrid model: per-asset selective-SSM streams, cross-asset lead-lag attention, multi-task heads.

    x (B, A, T, F) --per-asset input projection--> h (B, T, A, M), time-major inside the model
      --layers in config.layer_pattern, e.g. ssm, attn-->  Level 1: SSM layers before the first attention, one stream
                                                           per asset; Level 2: the first attention, across assets and
                                                           lags; Level 3: the rest, on the mixed streams
      --final RMSNorm, heads--> quantiles (B, A, T, H, Q), direction_logit (B, A, T, H), log_vol (B, A, T, H)
                                and, with a point head, mean (B, A, T, H)
      the lead path (optional): the sources' features through the first attention layer's weights, to the heads
                                as a location shift of the fan and the mean (engine.model.lead_path)

One loop runs the layers in both modes. Every layer keeps engine.model.layer's interface, (stream, mask, state)
-> (stream, state, readout), with the same call for a window and for one bar, so `forward` (a window) and `step`
(one new bar, O(1)) differ only in which of a layer's two methods `_run_layers` calls. Both give the same numbers,
and `forward(..., state=s, return_state=True)` continues from and hands back a step state, so a long history can
be processed in chunks or used to warm the state for live stepping.

Closed market bars (mask False) are inert: features there are ignored (NaN allowed), the SSM state is carried,
the bar is not a key for attention, and no layer adds anything to that asset's stream. The heads still emit
numbers at closed bars: those are not forecasts, and the target-valid mask must exclude them.
"""
from __future__ import annotations

from dataclasses import dataclass, fields

import torch
from torch import Tensor, nn

from engine.model.attention import (
    AttentionLayerState,
    AttentionWeights,
    LeadLagAttention,
)
from engine.model.config import ModelConfig
from engine.model.heads import ForecastHeads
from engine.model.layer import fast_step_applies
from engine.model.lead_path import LeadPath, LeadPathState
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
    """What step mode remembers: each layer's state in layer order (SSMLayerState or AttentionLayerState), and the
    lead path's when the model has one."""

    layers: list[SSMLayerState | AttentionLayerState]
    lead_path: LeadPathState | None = None

    @property
    def batch_size(self) -> int:
        first = self.layers[0]
        return (first.ssm_state if isinstance(first, SSMLayerState) else first.keys).shape[0]

    def detach(self) -> StepState:
        """The same state cut from autograd (for truncated backprop through long histories)."""
        def cut(state):  # every state is a dataclass of tensors
            return None if state is None else type(state)(**{f.name: getattr(state, f.name).detach()
                                                              for f in fields(state)})

        return StepState([cut(layer) for layer in self.layers], cut(self.lead_path))


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
        # Weightless (its coefficients are heads.lead): a module for its state and its one job, not for parameters.
        self.lead_path = LeadPath(config, reads_layer=self.first_attention_layer) if config.lead_path else None

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
        x, mask = x.transpose(1, 2), mask.transpose(1, 2)  # (B, T, A, F), (B, T, A)
        h = self._embed(x, mask)  # (B, T, A, M)
        h, readouts, attended, new_state = self._run_layers(
            h, x, mask, state, stepping=False, return_state=return_state, diagnostics=return_diagnostics)
        forecasts = self.heads(self.final_norm(h), attended)  # (B, T, A, H[, Q]) each
        return self._output(*forecasts, readouts=readouts if return_diagnostics else None,
                            attention_per_head=attention_per_head, state=new_state)

    # ----- one bar at a time ------------------------------------------------------------------------------------
    #
    # step() is the same model one bar at a time: the layers' own O(1) steps in the same loop, each carrying its
    # state (the SSM's conv window and h, the attention's last K keys and values, the lead path's last K features)
    # in a StepState. New bars advance a model warmed on the history without recomputing it.

    def init_state(
        self, batch: int, *, device: torch.device | str | None = None, dtype: torch.dtype | None = None
    ) -> StepState:
        """The state before the first bar: empty conv buffers, zero SSM states, no attention history."""
        reference = next(self.parameters())
        device = reference.device if device is None else device
        dtype = reference.dtype if dtype is None else dtype
        layers = [layer.init_state(batch, device=device, dtype=dtype) for layer in self.layers]
        lead = None if self.lead_path is None else self.lead_path.init_state(batch, device=device, dtype=dtype)
        return StepState(layers, lead)

    def step(
        self, x_t: Tensor, mask_t: Tensor, state: StepState, *, return_diagnostics: bool = False
    ) -> tuple[ModelOutput, StepState]:
        """One new bar: x_t (B, A, F), mask_t (B, A) bool -> (ModelOutput with T=1, the state after this bar).

        Live stepping (batch 1, inference, no diagnostics) takes the fast path, _step_fast: the same numbers in
        fewer ops. Everything else (training, diagnostics, batches, autocast, tracing or export) takes this loop.
        """
        self._check_inputs(x_t.unsqueeze(2), mask_t.unsqueeze(2), state, where="step")
        if not return_diagnostics and x_t.dtype in (torch.float32, torch.float64) and fast_step_applies(self, x_t):
            return self._step_fast(x_t, mask_t, state)
        x, mask = x_t.unsqueeze(1), mask_t.unsqueeze(1)  # (B, T=1, A, F), (B, 1, A)
        # The per-asset projections around the layers see one bar as (B, A, .): PerAssetLinear's one-bar form.
        h = self._embed(x_t, mask_t).unsqueeze(1)  # (B, 1, A, M)
        h, readouts, attended, new_state = self._run_layers(
            h, x, mask, state, stepping=True, return_state=True, diagnostics=return_diagnostics)
        forecasts = self.heads(self.final_norm(h[:, 0]), None if attended is None else attended[:, 0])  # (B, A, H[, Q])
        forecasts = [None if f is None else f.unsqueeze(1) for f in forecasts]  # (B, 1, A, H[, Q])
        output = self._output(*forecasts, readouts=readouts if return_diagnostics else None, attention_per_head=False,
                              state=None)
        return output, new_state

    def _step_fast(self, x_t: Tensor, mask_t: Tensor, state: StepState | None) -> tuple[ModelOutput, StepState]:
        """step() for batch 1 in inference: each layer's step_fast on the bar's stream viewed asset first (A, 1, M),
        which for batch 1 is the same memory as (1, A, M), so the per-asset matmuls need no transposes."""
        if state is None:
            state = self.init_state(1, device=x_t.device, dtype=x_t.dtype)
        A, M = self.config.n_assets, self.config.d_model
        h = self._embed(x_t, mask_t).view(A, 1, M)
        open_bars = mask_t.view(A, 1, 1).to(h.dtype)
        reads = None if self.lead_path is None else self.lead_path.reads_layer
        new_layer_states, weights = [], None
        for i, (layer, layer_state) in enumerate(zip(self.layers, state.layers)):
            if isinstance(layer, SelectiveSSMBlock):
                h, layer_state = layer.step_fast(h, open_bars, layer_state)
            else:
                h, layer_state, readout = layer.step_fast(h, mask_t, layer_state, readout=i == reads)
                weights = readout.per_head if i == reads else weights
            new_layer_states.append(layer_state)
        attended, lead_state = None, None
        if self.lead_path is not None:
            attended, lead_state = self.lead_path(x_t.unsqueeze(1), mask_t.unsqueeze(1), weights, state.lead_path,
                                                  return_state=True)
            attended = attended[:, 0]
        forecasts = self.heads(self.final_norm(h.view(1, A, M)), attended)  # (1, A, H[, Q])
        forecasts = [None if f is None else f.unsqueeze(1) for f in forecasts]  # (1, 1, A, H[, Q])
        output = self._output(*forecasts, readouts=None, attention_per_head=False, state=None)
        return output, StepState(new_layer_states, lead_state)

    # ----- the one loop -----------------------------------------------------------------------------------------

    def _run_layers(
        self, h: Tensor, x: Tensor, mask: Tensor, state: StepState | None, *, stepping: bool, return_state: bool,
        diagnostics: bool,
    ) -> tuple[Tensor, dict[int, SSMDiagnostics | AttentionWeights], Tensor | None, StepState | None]:
        """Every layer in order, then the lead path, in either mode.

        h (B, T, A, M) the embedded stream, x (B, T, A, F) the raw features (the lead path reads them), mask
        (B, T, A); stepping: T = 1 and each layer takes its O(1) step (engine.model.layer).
        -> (h (B, T, A, M), {layer index: readout}, the lead path's input (B, T, A, heads * F_read) or None,
            the StepState after the last bar or None)
        """
        wanted = self._readouts_wanted(diagnostics)
        layer_states = [None] * len(self.layers) if state is None else state.layers
        new_layer_states, readouts = [], {}
        for i, (layer, layer_state) in enumerate(zip(self.layers, layer_states)):
            run = layer.step if stepping else layer
            h, layer_state, readout = run(h, mask, layer_state, return_state=return_state, readout=i in wanted)
            new_layer_states.append(layer_state)
            if readout is not None:
                readouts[i] = readout
        attended, lead_state = None, None
        if self.lead_path is not None:
            weights = readouts[self.lead_path.reads_layer].per_head  # (B, T, A_tgt, heads, A_src, K+1)
            attended, lead_state = self.lead_path(x, mask, weights, None if state is None else state.lead_path,
                                                  return_state=return_state)
        return h, readouts, attended, StepState(new_layer_states, lead_state) if return_state else None

    def _readouts_wanted(self, diagnostics: bool) -> set[int]:
        """The layers whose readout is needed: for diagnostics, the last Level-1 SSM (its states cost memory, so
        that one only) and every attention layer; for the lead path, the attention layer it reads."""
        wanted = set()
        if diagnostics:
            wanted |= {i for i, kind in enumerate(self.config.layer_pattern) if kind == "attn"}
            wanted |= {self.diagnostic_ssm_layer} - {None}
        if self.lead_path is not None:
            wanted.add(self.lead_path.reads_layer)
        return wanted

    def _output(
        self, quantiles: Tensor, direction_logit: Tensor, log_vol: Tensor, mean: Tensor | None, *,
        readouts: dict[int, SSMDiagnostics | AttentionWeights] | None, attention_per_head: bool,
        state: StepState | None,
    ) -> ModelOutput:
        """The heads' outputs (B, T, A, H[, Q]) -> a ModelOutput, asset-major (B, A, T, H[, Q]); readouts None:
        no diagnostics."""
        return ModelOutput(
            mean=None if mean is None else mean.transpose(1, 2),
            quantiles=quantiles.transpose(1, 2),
            direction_logit=direction_logit.transpose(1, 2),
            log_vol=log_vol.transpose(1, 2),
            quantile_levels=self.config.quantiles,
            horizons=self.config.horizons,
            diagnostics=None if readouts is None else self._diagnostics(readouts, attention_per_head),
            state=state,
        )

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

    def _embed(self, x: Tensor, mask: Tensor) -> Tensor:
        """x (..., A, F) features, mask (..., A) -> (..., A, M). Closed bars' features are ignored (NaN allowed)."""
        x = torch.where(mask.unsqueeze(-1), x, torch.zeros((), dtype=x.dtype, device=x.device))
        h = self.input_proj(x)
        return h if self.asset_embedding is None else h + self.asset_embedding

    def _diagnostics(self, readouts: dict[int, SSMDiagnostics | AttentionWeights], per_head: bool) -> Diagnostics:
        def asset_major(t: Tensor | None) -> Tensor | None:
            return None if t is None else t.transpose(1, 2)  # (B, T, A, .) -> (B, A, T, .)

        ssm = readouts.get(self.diagnostic_ssm_layer)  # SSMDiagnostics (B, T, A, .) or None
        weights = {i: r for i, r in readouts.items() if isinstance(r, AttentionWeights)}
        attention = {i: w.mean for i, w in weights.items()}
        return Diagnostics(
            embeddings=asset_major(ssm.embeddings) if ssm else None,
            delta=asset_major(ssm.delta) if ssm else None,
            effective_lookback=asset_major(ssm.effective_lookback) if ssm else None,
            attention=attention.get(self.first_attention_layer),
            attention_by_layer=attention,
            attention_per_head={i: w.per_head for i, w in weights.items()} if per_head else None,
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
        # Inside a CUDA graph capture (graphed_training_step) the value check would wait on the GPU, which a capture
        # forbids: it ran on the eager warm-up steps, and a replay reads new values into the same buffers unchecked.
        capturing = x.is_cuda and torch.cuda.is_current_stream_capturing()
        finite = None if capturing else torch.isfinite(x)
        if finite is not None and not finite.all():  # the all-finite case costs one pass; NaN at closed bars is allowed
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


class GraphedTrainingStep:
    """A training step's forward and backward captured once as a CUDA graph and replayed (CUDA only).

    A step of the default model launches some 440 kernels, most of them small: eager PyTorch spends longer issuing
    them from Python than the GPU spends running them (issue 18: 10.6 ms of kernels in a 20 ms step at 3 assets x
    512 bars x batch 32). A replay issues the whole step at once. torch.compile(mode="reduce-overhead") does the same
    with its own kernels, at a compile of minutes; this is the capture alone, of the eager kernels.

        step = GraphedTrainingStep(model, loss_fn, x, mask)   # warms up, then captures loss_fn(x, mask).backward()
        loss = step(x_new, mask_new)                          # copies into the captured inputs and replays

    loss_fn(*inputs) returns the scalar loss. After each call the parameters' .grad hold that step's gradients:
    fresh values, not accumulated (the grads are None at capture, so the backward writes them inside the graph).
    Do not set them to None afterwards (the graph keeps writing where they were): optimizer.zero_grad is not
    needed. after_backward (e.g. an optimizer's step with capturable=True) is captured too when given. Inputs
    must keep the captured shapes and dtypes; replays do not run HybridModel's finiteness check (warm-ups did).
    Dropout draws new numbers at every replay (the CUDA generator's graph-safe offsets).
    """

    def __init__(self, module: nn.Module, loss_fn, *example_inputs: Tensor, after_backward=None, warmup: int = 3):
        if not example_inputs or not all(t.is_cuda for t in example_inputs):
            raise ValueError("GraphedTrainingStep: inputs must be CUDA tensors (a CUDA graph is a CUDA-only capture)")
        self.static_inputs = [t.detach().clone() for t in example_inputs]
        side = torch.cuda.Stream()
        side.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(side):  # warm-ups off the default stream, as torch.cuda.graph asks
            for _ in range(warmup):
                module.zero_grad(set_to_none=True)
                loss_fn(*self.static_inputs).backward()
                if after_backward is not None:
                    after_backward()
        torch.cuda.current_stream().wait_stream(side)
        module.zero_grad(set_to_none=True)
        self.graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(self.graph):
            self.loss = loss_fn(*self.static_inputs)
            self.loss.backward()
            if after_backward is not None:
                after_backward()

    def __call__(self, *inputs: Tensor) -> Tensor:
        for static, new in zip(self.static_inputs, inputs):
            if new is not static:
                static.copy_(new)
        self.graph.replay()
        return self.loss
