"""Level 1 of the model: one selective-SSM (Mamba-1) block that runs every asset's own stream at once.

Why Mamba-1 and not Mamba-2: Mamba-1 gives every channel its own step Delta_t and every (channel, state) its own
decay A, so the "effective lookback" the dashboard shows exists per channel, and the implicit attention of a
channel is well defined. Mamba-2's scalar-A-per-head form pays off through large matmuls on GPUs, which a
d_inner=128 model on two CPU cores never reaches.

Why one wide layer: the A assets' streams are independent here (cross-asset mixing is the attention's job), so
their channels are stacked into D_total = A * d_inner and every per-asset weight carries a leading asset axis.
One batched matmul per projection, one depthwise conv and ONE scan (B and C in G = A groups, channel d reads group
d // d_inner) then serve all assets instead of A separate layers.

Closed market bars (mask False) carry the stream over unchanged:
  * the block's input there is zeroed, so the causal conv sees zeros for closed bars: its window spans the last
    d_conv bars of the common clock, not the last d_conv bars the asset traded;
  * Delta is forced to 0, so h_t = exp(0 * A) h_{t-1} + 0 = h_{t-1} exactly;
  * the block adds nothing to the residual stream there, so a closed bar's output is its input.

Layout inside the model is (batch, time, asset, feature): (B, T, A, d_inner) reshapes to the scan's (B, T, D_total)
as a free view.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from engine.model.config import ModelConfig
from engine.model.layer import LayerOutput, derived_weights
from engine.model.scan import fused_kernel_available, scan_dtype, selective_scan

LN2 = math.log(2.0)


# ----- the per-asset matmul on CUDA ---------------------------------------------------------------------------------
#
# A window's per-asset projection is A matmuls (rows, in) @ (in, out) with rows = batch x bars. The plain path
# (PerAssetLinear.forward below, what the CPU runs) moves the asset axis to the front, which copies x, and hands
# autograd a bmm whose weight gradient is A products (in, rows) @ (rows, out): an output of a few tiles per asset
# reduced over tens of thousands of rows, so a handful of thread blocks do all the work on a GPU of 132 SMs (the
# profile of issue 18: half the training step's GPU time). On CUDA, _GroupedPerAssetMatmul instead
#   * reads x and writes y in the model's (rows, A, features) layout through the bmm's strides (no copies): the
#     batch stride of asset a is `in` elements, the row stride A * in, which cuBLAS takes as its leading dimension;
#   * computes the weight gradient split over the rows ("split-K"): rows in S slices, A * S products summed over the
#     slices, so the GPU has A * S times more blocks to run;
#   * optionally runs the products in bfloat16 (float32 accumulation, the product rounded to bfloat16 and handed
#     back in x's dtype): PROJECTION_PRECISION below.
# The parameters are the same tensors; only the order of the additions differs from the plain path (float rounding).

# "fp32": the products in the inputs' dtype (TF32 where torch.backends.cuda.matmul allows it); "bf16": in bfloat16
# with float32 accumulation, the result handed back in x's dtype, on CUDA only. Under torch.autocast the autocast
# dtype wins.
PROJECTION_PRECISION = "fp32"
GROUPED_MATMUL = True  # False: CUDA takes the plain path too (the benchmark's "before" rows)
SPLIT_ROWS = 512  # the weight gradient's slices hold at least this many rows
SPLIT_BLOCKS = 1024  # ... and there are at most this many products (assets x slices) in all


def _row_slices(rows: int, assets: int) -> int:
    """How many slices the weight gradient's rows are cut into: a power of two dividing rows, each slice at least
    SPLIT_ROWS rows, at most SPLIT_BLOCKS products in all."""
    slices = 1
    while (rows % (2 * slices) == 0 and rows // (2 * slices) >= SPLIT_ROWS
           and assets * 2 * slices <= SPLIT_BLOCKS):
        slices *= 2
    return slices


class _GroupedPerAssetMatmul(torch.autograd.Function):
    """x (R, A, in) (last stride 1), weight (A, in, out), bias (A, out) or None -> y (R, A, out), contiguous."""

    @staticmethod
    def forward(ctx, x: Tensor, weight: Tensor, bias: Tensor | None) -> Tensor:
        rows, assets, _ = x.shape
        y = x.new_empty(rows, assets, weight.shape[-1])
        torch.bmm(x.transpose(0, 1), weight, out=y.transpose(0, 1))  # (A, R, in) @ (A, in, out), strided
        if bias is not None:
            y += bias
        ctx.save_for_backward(x, weight)
        ctx.has_bias = bias is not None
        return y

    @staticmethod
    def backward(ctx, grad_y: Tensor):
        x, weight = ctx.saved_tensors
        rows, assets, n_in = x.shape
        n_out = weight.shape[-1]
        if grad_y.stride(-1) != 1 or grad_y.stride(-2) != n_out:
            grad_y = grad_y.contiguous()
        grad_x = grad_weight = grad_bias = None
        if ctx.needs_input_grad[0]:
            grad_x = x.new_empty(rows, assets, n_in)
            torch.bmm(grad_y.transpose(0, 1), weight.transpose(1, 2), out=grad_x.transpose(0, 1))
        if ctx.needs_input_grad[1]:
            slices = _row_slices(rows, assets)
            if slices == 1:
                grad_weight = torch.bmm(x.transpose(0, 1).transpose(1, 2), grad_y.transpose(0, 1))
            else:
                # Asset-major copies, so that (asset, slice) is one batch axis of stride rows/slices x features.
                per = rows // slices
                x_s = x.transpose(0, 1).contiguous().view(assets * slices, per, n_in)
                g_s = grad_y.transpose(0, 1).contiguous().view(assets * slices, per, n_out)
                parts = torch.bmm(x_s.transpose(1, 2), g_s).view(assets, slices, n_in, n_out)
                grad_weight = parts.sum(1, dtype=torch.float32).to(weight.dtype)
        if ctx.has_bias and ctx.needs_input_grad[2]:
            grad_bias = grad_y.sum(0, dtype=torch.float32).to(grad_y.dtype)
        return grad_x, grad_weight, grad_bias


def _grouped_matmul_applies(x: Tensor, weight: Tensor) -> bool:
    """CUDA, a window (x (..., T, A, in)), one weight per asset, and not under torch.compile (which traces the plain
    path and plans its own kernels)."""
    return (GROUPED_MATMUL and x.is_cuda and x.dim() >= 4 and weight.shape[0] > 1
            and x.dtype != torch.float64 and not torch.compiler.is_compiling())


def grouped_per_asset_matmul(x: Tensor, weight: Tensor, bias: Tensor | None) -> Tensor:
    """x (..., A, in) @ weight (A, in, out) [+ bias (A, out)] on CUDA: _GroupedPerAssetMatmul in the precision
    PROJECTION_PRECISION (or autocast's) asks for; the result has x's dtype (autocast's under autocast)."""
    lead, (assets, n_in) = x.shape[:-2], x.shape[-2:]
    x3 = x.reshape(-1, assets, n_in)
    if x3.stride(-1) != 1 or x3.stride(-2) != n_in:
        x3 = x3.contiguous()
    out_dtype = x.dtype
    if torch.is_autocast_enabled("cuda"):
        compute = out_dtype = torch.get_autocast_dtype("cuda")
    else:
        compute = torch.bfloat16 if PROJECTION_PRECISION == "bf16" else x.dtype
    with torch.autocast("cuda", enabled=False):
        x3, weight = x3.to(compute), weight.to(compute)  # each on its own: under autocast x may be bf16 already
        bias = None if bias is None else bias.to(compute)
        y = _GroupedPerAssetMatmul.apply(x3, weight, bias)
    y = y if y.dtype == out_dtype else y.to(out_dtype)
    return y.view(*lead, assets, weight.shape[-1])


class PerAssetLinear(nn.Module):
    """y[..., a, :] = x[..., a, :] @ W[a] + b[a]: one weight matrix per asset, applied in one batched matmul.

    With n_assets=1 and shared=True it is an ordinary Linear broadcast over every asset. A window on CUDA takes
    grouped_per_asset_matmul (see above); the CPU and step mode take the plain path.
    """

    def __init__(self, n_assets: int, in_features: int, out_features: int, *, bias: bool = True, shared: bool = False):
        super().__init__()
        n_weights = 1 if shared else n_assets
        bound = 1.0 / math.sqrt(in_features)  # nn.Linear's default init range
        self.weight = nn.Parameter(torch.empty(n_weights, in_features, out_features).uniform_(-bound, bound))
        self.bias = nn.Parameter(torch.empty(n_weights, out_features).uniform_(-bound, bound)) if bias else None

    def forward(self, x: Tensor, *, add_bias: bool = True) -> Tensor:
        # x (..., A, in) -> (..., A, out); add_bias=False leaves the bias to the caller (the fused scan adds it)
        return per_asset_linear(x, self.weight, self.bias if add_bias else None)


def per_asset_linear(x: Tensor, weight: Tensor, bias: Tensor | None = None) -> Tensor:
    """x (..., A, in) @ weight (A or 1, in, out) [+ bias (A or 1, out)] -> (..., A, out): PerAssetLinear's
    arithmetic for any weights (the fused SSM path passes x_proj's and dt_proj's folded into one)."""
    if _grouped_matmul_applies(x, weight):
        return grouped_per_asset_matmul(x, weight, bias)
    if weight.shape[0] == 1:
        y = x @ weight[0]
    elif x.dim() == 3:  # step mode (B, A, in): the asset axis is already next to the front
        by_asset = x.transpose(0, 1)  # (A, B, in)
        if bias is not None:
            return torch.baddbmm(bias.unsqueeze(1), by_asset, weight).transpose(0, 1)
        return torch.bmm(by_asset, weight).transpose(0, 1)
    else:
        # One bmm with the asset axis as its batch: (A, rows, in) @ (A, in, out). Cheaper than einsum's
        # dispatch, which matters in step mode where every op is a few microseconds of overhead.
        by_asset = x.movedim(-2, 0)  # (A, ..., in)
        y = torch.bmm(by_asset.reshape(by_asset.shape[0], -1, by_asset.shape[-1]), weight)
        y = y.view(*by_asset.shape[:-1], y.shape[-1]).movedim(0, -2)
    return y if bias is None else y + bias


class PerAssetRMSNorm(nn.Module):
    """RMSNorm over the last axis with a gain per asset (one shared gain when shared=True)."""

    def __init__(self, n_assets: int, dim: int, *, eps: float = 1e-6, shared: bool = False):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(1 if shared else n_assets, dim))

    def forward(self, x: Tensor) -> Tensor:
        # x (..., A, dim)
        return F.rms_norm(x, (x.shape[-1],), eps=self.eps) * self.weight


@dataclass
class SSMLayerState:
    """What one SSM layer must remember to take the next bar in O(1)."""

    conv_buffer: Tensor  # (B, D_total, d_conv - 1): the last d_conv-1 conv inputs, oldest first
    ssm_state: Tensor  # (B, D_total, N): h after the last bar


@dataclass
class SSMDiagnostics:
    """Per-bar readouts of one SSM layer, in the model's internal (B, T, A, .) layout."""

    embeddings: Tensor  # (B, T, A, 2N + d_inner), see regime_embedding
    delta: Tensor  # (B, T, A, d_inner); 0 at closed bars
    effective_lookback: Tensor  # (B, T, A, d_inner) bars; NaN at closed bars


@dataclass
class ScanInputs:
    """Everything the scan consumes, per asset, before the assets are stacked."""

    u: Tensor  # (B, T, A, d_inner) conv+SiLU output
    delta: Tensor  # (B, T, A, d_inner), clamped, 0 at closed bars
    A: Tensor  # (A_assets * d_inner, N), negative
    B: Tensor  # (B, T, A, N)
    C: Tensor  # (B, T, A, N)
    gate: Tensor  # (B, T, A, d_inner) the z branch, before SiLU


def regime_embedding(h: Tensor) -> Tensor:
    """Summarise an SSM state into a fixed-size regime vector.

    h (..., d_inner, N) -> (..., 2N + d_inner) = concat of
      * mean over channels for each state n   (N):  the signed memory at timescale n (S4D-real init: |A_n| = n+1),
      * RMS over channels for each state n    (N):  how much energy sits at that timescale,
      * mean over states for each channel d   (d_inner): what each channel currently remembers.
    At the defaults (N=16, d_inner=128) that is 160 dims, within the 256 the dashboard's PCA expects.
    """
    per_state_mean = h.mean(dim=-2)
    per_state_rms = h.pow(2).mean(dim=-2).sqrt()
    per_channel_mean = h.mean(dim=-1)
    return torch.cat([per_state_mean, per_state_rms, per_channel_mean], dim=-1)


class SelectiveSSMBlock(nn.Module):
    """Pre-norm residual Mamba-1 mixer over every asset's stream: x + out_proj(SSM(conv(in_proj(norm(x))))*SiLU(z))."""

    def __init__(self, config: ModelConfig):
        super().__init__()
        A, M, Di, N = config.n_assets, config.d_model, config.d_inner, config.d_state
        shared = config.shared_ssm
        n_weights = 1 if shared else A
        self.n_assets, self.d_inner, self.d_state, self.d_conv = A, Di, N, config.d_conv
        self.dt_rank = config.dt_rank
        self.dt_clamp = (config.dt_clamp_min, config.dt_clamp_max)

        self.norm = PerAssetRMSNorm(A, M, shared=shared)
        self.in_proj = PerAssetLinear(A, M, 2 * Di, bias=False, shared=shared)  # main branch u and gate z
        # Depthwise causal conv: one kernel per channel, so per-asset weights come for free in the stacked channels.
        conv_bound = 1.0 / math.sqrt(config.d_conv)
        self.conv_weight = nn.Parameter(torch.empty(n_weights * Di, config.d_conv).uniform_(-conv_bound, conv_bound))
        self.conv_bias = nn.Parameter(torch.empty(n_weights * Di).uniform_(-conv_bound, conv_bound))
        self.x_proj = PerAssetLinear(A, Di, self.dt_rank + 2 * N, bias=False, shared=shared)  # low-rank dt, B, C
        self.dt_proj = PerAssetLinear(A, self.dt_rank, Di, bias=True, shared=shared)
        self._init_dt(config)
        # S4D-real: A_n = -(n+1) for every channel, a ladder of timescales from 1 bar to ~1/N of a bar per unit Delta.
        a_init = torch.arange(1, N + 1, dtype=torch.float32).repeat(n_weights * Di, 1)  # (n_weights*Di, N)
        self.A_log = nn.Parameter(torch.log(a_init))
        self.D = nn.Parameter(torch.ones(n_weights, Di))  # skip connection u -> y
        # The SSM's dynamics, tagged where defined (mamba.py's convention) so the optimiser's groups can be built
        # from the tags (engine.training.loop.parameter_groups): decay would pull A_log toward 0 and Delta's bias
        # toward one timescale for every channel, whatever the data want; D is a skip gain, not a weight matrix.
        self.A_log._no_weight_decay = True
        self.D._no_weight_decay = True
        self.dt_proj.bias._no_weight_decay = True
        self.out_proj = PerAssetLinear(A, Di, M, bias=False, shared=shared)
        self.dropout = config.dropout

    def _init_dt(self, config: ModelConfig) -> None:
        """Mamba's init: softplus(bias) log-uniform in [dt_min, dt_max]: every channel starts at its own timescale."""
        with torch.no_grad():
            dt_std = self.dt_rank**-0.5
            self.dt_proj.weight.uniform_(-dt_std, dt_std)
            u = torch.rand_like(self.dt_proj.bias)
            dt = torch.exp(u * (math.log(config.dt_max) - math.log(config.dt_min)) + math.log(config.dt_min))
            self.dt_proj.bias.copy_(dt + torch.log(-torch.expm1(-dt)))  # inverse of softplus

    # ----- parameters expanded to every asset -------------------------------------------------------------------

    def decay_rates(self) -> Tensor:
        """A = -exp(A_log), (A_assets * d_inner, N): negative by construction, whatever the optimiser does."""
        A = -torch.exp(self.A_log)
        return A.repeat(self.n_assets, 1) if A.shape[0] != self.n_assets * self.d_inner else A

    def _conv_params(self) -> tuple[Tensor, Tensor]:
        repeats = self.n_assets * self.d_inner // self.conv_weight.shape[0]
        if repeats == 1:
            return self.conv_weight, self.conv_bias
        return self.conv_weight.repeat(repeats, 1), self.conv_bias.repeat(repeats)

    # ----- the pieces of the forward pass -----------------------------------------------------------------------

    def _selection(self, u: Tensor, open_bars: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """Input-dependent Delta, B, C. u (..., A, Di), open_bars (..., A, 1) -> (..., A, Di), (..., A, N) x2."""
        dt_low, B, C = self.x_proj(u).split([self.dt_rank, self.d_state, self.d_state], dim=-1)
        # softplus keeps Delta > 0; the clamp keeps exp(Delta*A) well away from 0/1 underflow and the scan stable.
        delta = F.softplus(self.dt_proj(dt_low)).clamp(*self.dt_clamp)
        return delta * open_bars, B, C

    def _causal_conv(self, u_in: Tensor, state: SSMLayerState | None) -> tuple[Tensor, Tensor]:
        """Depthwise causal conv over time. u_in (B, T, D_total) -> (conv output (B, T, D_total), new buffer).

        Written as d_conv shifted multiply-adds rather than F.conv1d: the same numbers, but its backward is a few
        elementwise ops, where the CPU backward of a depthwise conv1d took ~40x the forward's time (measured).
        Before the first bar the conv sees zeros, exactly as at closed bars.
        """
        batch, length, channels = u_in.shape
        K = self.d_conv
        if state is not None:
            history = state.conv_buffer.transpose(1, 2).to(u_in.dtype)  # (B, K-1, D)
        else:
            history = u_in.new_zeros(batch, K - 1, channels)
        padded = torch.cat([history, u_in], dim=1)  # (B, K-1+T, D); bar t's window is padded[t : t+K]
        weight, bias = self._conv_params()  # (D, K), (D,)
        out = torch.addcmul(bias, padded[:, K - 1 :], weight[:, K - 1])
        for k in range(K - 1):
            out = torch.addcmul(out, padded[:, k : k + length], weight[:, k])
        # A copy, not a view: a view would keep the whole (B, K-1+T, D) window alive inside the returned state.
        return out, padded[:, padded.shape[1] - (K - 1) :].transpose(1, 2).clone()

    def _mixer_inputs(self, x: Tensor, mask: Tensor, state: SSMLayerState | None
                      ) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        """The norm, in_proj and the causal conv, shared by both window paths: x (B, T, A, M), mask (B, T, A) ->
        (u (B, T, A, Di) conv+SiLU output, the gate branch z (B, T, A, Di), open bars (B, T, A, 1) 1.0/0.0, the conv
        buffer after the last bar (B, D_total, d_conv-1))."""
        batch, length, A, _ = x.shape
        Di = self.d_inner
        open_bars = mask.unsqueeze(-1).to(x.dtype)  # (B, T, A, 1)
        u_in, z = self.in_proj(self.norm(x)).split(Di, dim=-1)  # (B, T, A, Di) each
        u_in = u_in * open_bars  # closed bars feed zeros to the conv
        conv_out, conv_buffer = self._causal_conv(u_in.reshape(batch, length, A * Di), state)  # (B, T, D_total)
        return F.silu(conv_out).view(batch, length, A, Di), z, open_bars, conv_buffer

    def scan_inputs(self, x: Tensor, mask: Tensor, state: SSMLayerState | None = None) -> tuple[ScanInputs, Tensor]:
        """x (B, T, A, M), mask (B, T, A) -> (ScanInputs, the conv buffer after the last bar (B, D_total, d_conv-1))."""
        u, z, open_bars, conv_buffer = self._mixer_inputs(x, mask, state)
        delta, B, C = self._selection(u, open_bars)
        return ScanInputs(u, delta, self.decay_rates(), B, C, z), conv_buffer

    def init_state(self, batch: int, *, device: torch.device | str | None = None,
                   dtype: torch.dtype | None = None) -> SSMLayerState:
        """Before the first bar: an empty conv window (zeros, as at closed bars) and a zero SSM state."""
        d_total = self.n_assets * self.d_inner
        return SSMLayerState(torch.zeros(batch, d_total, self.d_conv - 1, device=device, dtype=dtype),
                             torch.zeros(batch, d_total, self.d_state, device=device, dtype=dtype))

    def forward(
        self,
        x: Tensor,
        mask: Tensor,
        state: SSMLayerState | None = None,
        *,
        return_state: bool = False,
        readout: bool = False,
    ) -> LayerOutput:
        """x (B, T, A, M), mask (B, T, A) bool -> (x (B, T, A, M), state or None, SSMDiagnostics or None).

        The window's scan is the chunked one (engine.model.scan); readout=True also keeps every bar's SSM state
        for the diagnostics, which costs memory: ask it of one layer only."""
        if self._fused_scan_applies(x, readout):
            return self._forward_fused(x, mask, state, return_state)
        batch, length, A, _ = x.shape
        Di = self.d_inner
        s, conv_buffer = self.scan_inputs(x, mask, state)
        dtype = scan_dtype(s.u)  # float32 under bf16 autocast; float64 stays float64
        with torch.autocast(device_type=x.device.type, enabled=False):
            result = selective_scan(
                s.u.reshape(batch, length, A * Di).to(dtype),
                s.delta.reshape(batch, length, A * Di).to(dtype),
                s.A.to(dtype),
                s.B.to(dtype),  # (B, T, G=A, N): channel d reads asset d // d_inner
                s.C.to(dtype),
                None if state is None else state.ssm_state.to(dtype),
                return_states=readout,
            )
        y = result.y.reshape(batch, length, A, Di).to(x.dtype) + s.u * self.D  # (B, T, A, Di)
        out = self.out_proj(y * F.silu(s.gate)) * mask.unsqueeze(-1).to(x.dtype)  # nothing added at closed bars
        new_state = None
        if return_state:
            new_state = SSMLayerState(conv_buffer, result.last_state)
        diagnostics = None
        if readout:
            h = result.states.reshape(batch, length, A, Di, self.d_state)  # (B, T, A, Di, N)
            diagnostics = self._diagnostics(h, s.delta, mask)
        return LayerOutput(x + F.dropout(out, self.dropout, self.training), new_state, diagnostics)

    # ----- the window on CUDA: the scan with its glue fused (engine.model.scan_triton.selective_scan_fused) -------

    def _fused_scan_applies(self, x: Tensor, readout: bool) -> bool:
        """The fused kernel runs the window's scan on CUDA in float32/bf16 unless every bar's state is asked for."""
        return not readout and x.is_cuda and x.dtype != torch.float64 and fused_kernel_available()

    def _forward_fused(self, x: Tensor, mask: Tensor, state: SSMLayerState | None, return_state: bool) -> LayerOutput:
        """forward() with softplus(dt + bias), the clamp, the closed-bar mask, the D skip and the SiLU gate done
        inside the scan kernel: the same arithmetic as scan_inputs + selective_scan + the gate, fewer passes."""
        from engine.model.scan_triton import selective_scan_fused

        batch, length, A, _ = x.shape
        Di, N, r = self.d_inner, self.d_state, self.dt_rank
        u, z, open_bars, conv_buffer = self._mixer_inputs(x, mask, state)
        # x_proj's dt columns and dt_proj folded into one (Di, Di) weight per asset, beside x_proj's B and C columns:
        # one matmul of u instead of two, the second of which (rank dt_rank, 4 at the defaults) ran on cuBLAS's
        # matrix-vector kernels at a fraction of the memory speed. The same parameters, the additions reordered.
        w = self.x_proj.weight  # (A or 1, Di, dt_rank + 2N)
        folded = torch.cat([w[..., :r] @ self.dt_proj.weight, w[..., r:]], dim=-1)  # (A or 1, Di, Di + 2N)
        dt, B, C = per_asset_linear(u, folded).split([Di, N, N], dim=-1)  # dt without its bias: the kernel adds it
        gated, last_state = selective_scan_fused(
            u.reshape(batch, length, A * Di), dt.reshape(batch, length, A * Di),
            self.dt_proj.bias.expand(A, Di).reshape(A * Di), self.decay_rates(), B, C,
            self.D.expand(A, Di).reshape(A * Di), z.reshape(batch, length, A * Di),
            mask.to(torch.float32), None if state is None else state.ssm_state, dt_clamp=self.dt_clamp,
        )
        out = self.out_proj(gated.view(batch, length, A, Di)) * open_bars  # nothing added at closed bars
        new_state = SSMLayerState(conv_buffer, last_state) if return_state else None
        return LayerOutput(x + F.dropout(out, self.dropout, self.training), new_state, None)

    # ----- one bar at a time ------------------------------------------------------------------------------------
    #
    # The same block as one step of its recurrence: the conv at its newest position from the last d_conv-1 inputs
    # kept in the state, then h_t = exp(Delta_t A) h_{t-1} + Delta_t B_t u_t and y_t = C_t h_t + D u_t. O(1) per
    # bar whatever the history's length, and the same numbers as forward over the whole window (tested).

    def step(
        self,
        x: Tensor,
        mask: Tensor,
        state: SSMLayerState | None = None,
        *,
        return_state: bool = True,
        readout: bool = False,
    ) -> LayerOutput:
        """One new bar in O(1): x (B, 1, A, M), mask (B, 1, A) -> (x (B, 1, A, M), state, diagnostics (B, 1, A, .))."""
        if x.shape[1] != 1:
            raise ValueError(f"SelectiveSSMBlock.step takes one bar, got a window of {x.shape[1]}")
        if state is None:
            state = self.init_state(x.shape[0], device=x.device, dtype=x.dtype)
        # One bar as (B, A, .): PerAssetLinear's step form, a few microseconds less per op than the window's.
        x, mask = x[:, 0], mask[:, 0]  # (B, A, M), (B, A)
        batch, A, _ = x.shape
        Di, N = self.d_inner, self.d_state
        open_bars = mask.unsqueeze(-1).to(x.dtype)  # (B, A, 1)
        u_in, z = self.in_proj(self.norm(x)).split(Di, dim=-1)  # (B, A, Di)
        window = torch.cat([state.conv_buffer, (u_in * open_bars).reshape(batch, A * Di, 1)], dim=-1)  # (B, D, d_conv)
        weight, bias = self._conv_params()
        u = F.silu((window * weight).sum(-1) + bias).view(batch, A, Di)  # the conv at its newest position
        delta, B, C = self._selection(u, open_bars)  # (B, A, Di), (B, A, N), (B, A, N)
        # One step of the recurrence. Only elementwise ops (which autocast leaves alone), in the scan's dtype.
        dtype = scan_dtype(u)
        if u.dtype != dtype:  # under bf16 autocast the recurrence still runs in float32
            u, delta, B, C = (t.to(dtype) for t in (u, delta, B, C))
        h = state.ssm_state.view(batch, A, Di, N)
        decay = torch.exp(delta.unsqueeze(-1) * self.decay_rates().view(A, Di, N))
        h = torch.addcmul(decay * h, (delta * u).unsqueeze(-1), B.unsqueeze(-2))  # (B, A, Di, N)
        y = (h * C.unsqueeze(-2)).sum(-1) + u * self.D  # (B, A, Di)
        out = self.out_proj(y * F.silu(z)) * open_bars
        new_state = SSMLayerState(window[..., 1:], h.reshape(batch, A * Di, N)) if return_state else None
        diagnostics = self._diagnostics(h.unsqueeze(1), delta.unsqueeze(1), mask.unsqueeze(1)) if readout else None
        return LayerOutput((x + F.dropout(out, self.dropout, self.training)).unsqueeze(1), new_state, diagnostics)

    # ----- the batch-1 fast path (engine.model.layer) ------------------------------------------------------------

    def _step_weights(self) -> dict[str, Tensor]:
        """The parameters as the fast step reads them, per asset (A, ...) even when shared; cached until one changes.
        The norm's gain is folded into in_proj: rms_norm(x) * g @ W = rms_norm(x) @ (g[:, None] * W)."""
        def build() -> dict[str, Tensor]:
            A, Di, N = self.n_assets, self.d_inner, self.d_state

            def per_asset(w: Tensor) -> Tensor:
                return w.expand(A, *w.shape[1:]).contiguous()

            conv_weight, conv_bias = self._conv_params()
            return {
                "in": per_asset(self.norm.weight.unsqueeze(-1) * self.in_proj.weight),  # (A, M, 2 Di)
                "conv_weight": conv_weight.unsqueeze(0).contiguous(),  # (1, D_total, d_conv)
                "conv_bias": conv_bias.unsqueeze(0).contiguous(),  # (1, D_total)
                "x": per_asset(self.x_proj.weight),  # (A, Di, dt_rank + 2N)
                "dt": per_asset(self.dt_proj.weight),  # (A, dt_rank, Di)
                "dt_bias": per_asset(self.dt_proj.bias.unsqueeze(1)),  # (A, 1, Di)
                "A": self.decay_rates().view(A, Di, N).contiguous(),
                "D": per_asset(self.D.unsqueeze(1)),  # (A, 1, Di)
                "out": per_asset(self.out_proj.weight),  # (A, Di, M)
            }

        return derived_weights(self, build, lambda: (
            self.norm.weight, self.in_proj.weight, self.conv_weight, self.conv_bias, self.x_proj.weight,
            self.dt_proj.weight, self.dt_proj.bias, self.A_log, self.D, self.out_proj.weight))

    def step_fast(self, x: Tensor, open_bars: Tensor, state: SSMLayerState) -> tuple[Tensor, SSMLayerState]:
        """step() for batch 1 in inference, float32/float64: x (A, 1, M) (the bar's (1, A, M) stream viewed asset
        first), open_bars (A, 1, 1) 1.0/0.0 -> (x (A, 1, M), state). The same arithmetic as step in fewer ops."""
        w = self._step_weights()
        A, Di, N, r = self.n_assets, self.d_inner, self.d_state, self.dt_rank
        uz = torch.bmm(F.rms_norm(x, (x.shape[-1],), eps=self.norm.eps), w["in"])  # (A, 1, 2 Di)
        u_in = uz[..., :Di] * open_bars  # closed bars feed zeros to the conv
        window = torch.cat([state.conv_buffer, u_in.view(1, A * Di, 1)], dim=-1)  # (1, D, d_conv)
        u = F.silu(torch.linalg.vecdot(window, w["conv_weight"]) + w["conv_bias"]).view(A, 1, Di)
        selection = torch.bmm(u, w["x"])  # (A, 1, dt_rank + 2N): low-rank dt, B, C
        delta = F.softplus(torch.baddbmm(w["dt_bias"], selection[..., :r], w["dt"])).clamp_(*self.dt_clamp)
        delta = delta.mul_(open_bars)  # (A, 1, Di)
        h = state.ssm_state.view(A, Di, N)
        decay = torch.exp(delta.view(A, Di, 1) * w["A"])
        h = torch.addcmul(decay * h, (delta * u).view(A, Di, 1), selection[..., r : r + N])  # (A, Di, N)
        y = (h * selection[..., r + N :]).sum(-1).view(A, 1, Di) + u * w["D"]
        out = torch.bmm(y * F.silu(uz[..., Di:]), w["out"]) * open_bars
        return x + out, SSMLayerState(window[..., 1:], h.view(1, A * Di, N))

    def _diagnostics(self, h: Tensor, delta: Tensor, mask: Tensor) -> SSMDiagnostics:
        """h (B, T, A, Di, N), delta (B, T, A, Di), mask (B, T, A) -> readouts in (B, T, A, .) layout."""
        # Half-life of each channel's SLOWEST state (smallest |A|): the longest memory that channel can hold if
        # Delta stayed at its current value. Closed bars take no step, so the half-life is undefined there (NaN).
        slowest = self.decay_rates().abs().amin(dim=-1).view(self.n_assets, self.d_inner)  # (A, Di)
        with torch.autocast(device_type=delta.device.type, enabled=False):
            delta = delta.to(scan_dtype(delta))
            lookback = LN2 / (delta * slowest.to(delta.dtype))
            lookback = torch.where(mask.unsqueeze(-1), lookback, torch.full_like(lookback, float("nan")))
            return SSMDiagnostics(regime_embedding(h), delta, lookback)

    def implicit_attention(self, x: Tensor, mask: Tensor, asset: int) -> Tensor:
        """The SSM's hidden attention of the LAST bar t = T-1 over bars s <= t, for one asset.

        alpha[d, s] = sum_n C_t[n] * exp(A[d, n] * sum_{r=s+1..t} Delta_r[d]) * B_s[n] * Delta_s[d],
        so that y_t[d] = sum_s alpha[d, s] * u_s[d] (the scan output from a zero state). The decay is taken in log
        space: the exponent is A (negative) times a suffix sum of Delta (non-negative), so exp only ever sees
        non-positive numbers and cannot overflow, however long the sequence.
        x (B, T, A, M), mask (B, T, A) -> alpha (B, d_inner, T)
        """
        s, _ = self.scan_inputs(x, mask)
        dtype = scan_dtype(s.u)
        delta = s.delta[:, :, asset].to(dtype)  # (B, T, Di)
        B = s.B[:, :, asset].to(dtype)  # (B, T, N)
        C_t = s.C[:, -1, asset].to(dtype)  # (B, N)
        A = s.A.view(self.n_assets, self.d_inner, self.d_state)[asset].to(dtype)  # (Di, N)
        # suffix[s] = sum_{r=s+1..t} Delta_r, built as a reversed cumulative sum shifted by one (no cancellation).
        through_end = delta.flip(1).cumsum(1).flip(1)  # (B, T, Di): sum_{r=s..t}
        suffix = torch.cat([through_end[:, 1:], torch.zeros_like(through_end[:, :1])], dim=1)
        log_decay = suffix.unsqueeze(-1) * A  # (B, T, Di, N), all <= 0
        alpha = torch.einsum("bn,btdn,btn->bdt", C_t, torch.exp(log_decay), B) * delta.transpose(1, 2)
        return alpha  # (B, Di, T)
