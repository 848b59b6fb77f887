"""Fused lead-lag attention on CUDA (Triton): LeadLagAttention's forward and backward without its materialised tensors.

Imported only when CUDA and Triton are present (engine.model.attention dispatches here for a CUDA forward with no
state, no readout and more than one bar; everything else keeps the torch code).

What it computes is the torch path's (engine.model.attention), for the queries, keys and values of one projection
qkv (B, T, A, 3M): at bar t the query of target i, head h, scaled by 1/sqrt(dh), scores the key of every source j at
bar t - l (l = 0..K) plus the lag embedding of l and the source embedding of j; keys at a closed bar or before the
first bar are left out of the softmax (weight exactly 0); the softmax runs jointly over (source, lag); a closed
target gets no weights (its output is 0). The output is the weighted sum of the values, (B, T, A, M) with the heads
side by side, ready for out_proj.

How (flash-style: no key windows and no scores tensor in HBM). One program per (batch, head, block of BT
consecutive bars). Its tile has R = BT x AP rows (bar of the block, target asset; AP = the assets padded to a power
of two) and as many key columns (bar of the block, source asset). The loop runs over the lag l = 0..K: the columns
then hold the keys of bar (the column's bar - l), so one lag's embedding is added to the whole key tile, as the torch
path adds it to the key windows, and a query sees only the columns of its own bar (block-diagonal when BT > 1; BT is
1 from 16 assets up, and only small asset counts pack several bars so that the tile has the 16 rows tl.dot needs).
An online softmax carries the row max, the row sum and the weighted values across lags; the forward saves the row's
logsumexp for the backward.

The backward recomputes the scores from the logsumexp, in two kernels and without atomics: a query-major one (the
forward's loop) writes dq, the rows' D = rowsum(dO * O) and per-program partial sums of the lag embedding's gradient
(the gradient of a lag's embedding is the sum of that lag's key gradients, sum_r rowsum(dS)[r] q[r]); a key-major one
(one program per block of key bars, looping over the K+1 query bars that see them) writes dk, dv and per-program
partial sums of the source embedding's gradient. dq, dk and dv land in one (B, T, A, 3M) gradient of qkv.

Precision: qkv may be float32, bfloat16 or float16 (loaded and converted in registers); scores, the softmax and
every sum are float32. The products are float32-accurate: three TF32 tensor-core products per dot ("tf32x3": each
operand split into a TF32 part and its remainder), or IEEE float32 products (PRECISION = "ieee"); with torch's
allow_tf32 on they are plain TF32, as the torch path's matmuls then are. The output and the gradient of qkv come
back in qkv's dtype, the embeddings' gradients in theirs.
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl
from torch import Tensor

# Measured on an H200 (torch 2.11, Triton 3.6, 2026-12-03; the layer's training pass at 50 assets x 512 bars x
# batch 8, L2 flushed): IEEE float32 products 15.8 ms, "tf32x3" (three TF32 products, float32's accuracy: the GPU
# tests' 1e-5 against float64 pass) 8.4 ms, and 7.8 ms with num_stages 1; 8 warps are slower (22.5 / 16.5 ms), and
# so are 2. When torch lets float32 matmuls use TF32 (torch.backends.cuda.matmul.allow_tf32) the torch path's
# products are TF32, and so are the kernel's ("tf32": 5.1 ms).
WARPS = 4  # per program at 64 rows; fewer for smaller tiles (two at 16 rows)
PRECISION = "tf32x3"  # tl.dot's input precision when TF32 is not allowed ("ieee": plain float32 products)
STAGES = 1  # num_stages for the kernels' lag loop (None: Triton's default)
BARS = None  # bars per program for assets < 16 (None: the fewest that fill 16 rows)
KERNEL_DTYPES = (torch.float32, torch.bfloat16, torch.float16)
HEAD_DIMS = (16, 32, 64, 128)  # tl.dot needs an inner dimension of 16 at least, and powers of two


def tiles(assets: int) -> tuple[int, int]:
    """(AP, BT): the assets padded to a power of two, and the bars a program takes (R = AP x BT >= 16 rows: the
    fewest that tl.dot takes; each extra bar would multiply the block-diagonal tile's work)."""
    padded = triton.next_power_of_2(assets)
    return padded, (BARS or max(1, 16 // padded)) if padded < 16 else 1


@triton.jit
def _program(H: tl.constexpr, DH: tl.constexpr, AP: tl.constexpr, BT: tl.constexpr):
    """This program's batch, head and first bar, and its tile's rows: (bar of the block, asset), and the head's dims."""
    pid, pid_bh = tl.program_id(0), tl.program_id(1)
    r = tl.arange(0, BT * AP)
    return pid_bh // H, pid_bh % H, pid * BT, r // AP, r % AP, tl.arange(0, DH)


@triton.jit
def _tile(base, bars, asset, d, ok, s_t, s_a):
    """(R, DH) float32: the head's slice of q, k or v (base points at it) at rows (bars, asset); 0 where not ok."""
    return tl.load(base + bars[:, None] * s_t + asset[:, None] * s_a + d[None, :], mask=ok[:, None], other=0.0
                   ).to(tl.float32)


@triton.jit
def _is_open(mask_ptr, b, bars, asset, ok, m_b, m_t, m_a):
    return tl.load(mask_ptr + b * m_b + bars * m_t + asset * m_a, mask=ok, other=0) != 0


@triton.jit
def _embedding(ptr, index, ok, h, d, M: tl.constexpr, DH: tl.constexpr):
    """(R, DH): rows `index` of an embedding laid out (n, H, DH), the head's slice; 0 where not ok."""
    return tl.load(ptr + index[:, None] * M + h * DH + d[None, :], mask=ok[:, None], other=0.0)


@triton.jit
def _fwd_kernel(
    qkv_ptr, mask_ptr, lag_ptr, src_ptr, out_ptr, lse_ptr,
    T, A, s_b, s_t, s_a, m_b, m_t, m_a, scale,
    H: tl.constexpr, DH: tl.constexpr, K: tl.constexpr, AP: tl.constexpr, BT: tl.constexpr, PREC: tl.constexpr,
):
    R: tl.constexpr = BT * AP
    M: tl.constexpr = H * DH
    b, h, t0, bar, asset, d = _program(H, DH, AP, BT)  # rows (bar, target); columns (bar, source)
    t = t0 + bar
    row_ok = (t < T) & (asset < A)
    base = qkv_ptr + b * s_b + h * DH
    q = _tile(base, t, asset, d, row_ok, s_t, s_a) * scale
    target_open = _is_open(mask_ptr, b, t, asset, row_ok, m_b, m_t, m_a)
    src = _embedding(src_ptr, asset, asset < A, h, d, M, DH)
    same_bar = bar[:, None] == bar[None, :]

    m_i = tl.full([R], float("-inf"), tl.float32)
    l_i = tl.zeros([R], tl.float32)
    acc = tl.zeros([R, DH], tl.float32)
    for lag in range(K + 1):
        ks = t - lag  # the columns' key bar
        col_ok = (ks >= 0) & (t < T) & (asset < A)
        key = _tile(base + M, ks, asset, d, col_ok, s_t, s_a) + src + tl.load(lag_ptr + lag * M + h * DH + d)[None, :]
        val = _tile(base + 2 * M, ks, asset, d, col_ok, s_t, s_a)
        valid = same_bar & _is_open(mask_ptr, b, ks, asset, col_ok, m_b, m_t, m_a)[None, :]
        s = tl.dot(q, tl.trans(key), input_precision=PREC)
        s = tl.where(valid, s, float("-inf"))
        m_new = tl.maximum(m_i, tl.max(s, axis=1))
        m_safe = tl.where(m_new == float("-inf"), 0.0, m_new)
        p = tl.exp(s - m_safe[:, None])
        alpha = tl.exp(m_i - m_safe)
        l_i = l_i * alpha + tl.sum(p, axis=1)
        acc = acc * alpha[:, None] + tl.dot(p, val, input_precision=PREC)
        m_i = m_new
    live = row_ok & target_open  # an open target always has its own bar's key: l_i >= 1
    out = tl.where(live[:, None], acc / tl.where(live, l_i, 1.0)[:, None], 0.0)
    row = (b * T + t) * A + asset
    tl.store(out_ptr + row[:, None] * M + h * DH + d[None, :], out.to(out_ptr.dtype.element_ty), mask=row_ok[:, None])
    lse = tl.where(live, m_i + tl.log(tl.where(live, l_i, 1.0)), 0.0)
    tl.store(lse_ptr + row * H + h, lse, mask=row_ok)


@triton.jit
def _bwd_dq_kernel(
    qkv_ptr, mask_ptr, lag_ptr, src_ptr, out_ptr, lse_ptr, dout_ptr, dqkv_ptr, delta_ptr, dlag_ptr,
    T, A, n_blocks, s_b, s_t, s_a, m_b, m_t, m_a, scale,
    H: tl.constexpr, DH: tl.constexpr, K: tl.constexpr, AP: tl.constexpr, BT: tl.constexpr, PREC: tl.constexpr,
):
    R: tl.constexpr = BT * AP
    M: tl.constexpr = H * DH
    b, h, t0, bar, asset, d = _program(H, DH, AP, BT)
    t = t0 + bar
    row_ok = (t < T) & (asset < A)
    base = qkv_ptr + b * s_b + h * DH
    q = _tile(base, t, asset, d, row_ok, s_t, s_a) * scale
    live = row_ok & _is_open(mask_ptr, b, t, asset, row_ok, m_b, m_t, m_a)
    row = (b * T + t) * A + asset
    cell = row[:, None] * M + h * DH + d[None, :]
    dout = tl.load(dout_ptr + cell, mask=row_ok[:, None], other=0.0).to(tl.float32)
    out = tl.load(out_ptr + cell, mask=row_ok[:, None], other=0.0).to(tl.float32)
    delta = tl.sum(dout * out, axis=1)
    tl.store(delta_ptr + row * H + h, delta, mask=row_ok)
    lse = tl.load(lse_ptr + row * H + h, mask=row_ok, other=0.0)
    src = _embedding(src_ptr, asset, asset < A, h, d, M, DH)
    same_bar = bar[:, None] == bar[None, :]

    dq = tl.zeros([R, DH], tl.float32)
    part = dlag_ptr + ((b * n_blocks + t0 // BT) * H + h) * (K + 1) * DH
    for lag in range(K + 1):
        ks = t - lag
        col_ok = (ks >= 0) & (t < T) & (asset < A)
        key = _tile(base + M, ks, asset, d, col_ok, s_t, s_a) + src + tl.load(lag_ptr + lag * M + h * DH + d)[None, :]
        val = _tile(base + 2 * M, ks, asset, d, col_ok, s_t, s_a)
        valid = same_bar & live[:, None] & _is_open(mask_ptr, b, ks, asset, col_ok, m_b, m_t, m_a)[None, :]
        s = tl.dot(q, tl.trans(key), input_precision=PREC)
        p = tl.where(valid, tl.exp(s - lse[:, None]), 0.0)
        dp = tl.dot(dout, tl.trans(val), input_precision=PREC)
        ds = p * (dp - delta[:, None])
        dq += tl.dot(ds, key, input_precision=PREC)
        # this lag's embedding was added to every key of the tile: its gradient is the sum of their gradients
        tl.store(part + lag * DH + d, tl.sum(tl.sum(ds, axis=1)[:, None] * q, axis=0))
    dq = dq * scale
    tl.store(dqkv_ptr + row[:, None] * (3 * M) + h * DH + d[None, :], dq.to(dqkv_ptr.dtype.element_ty),
             mask=row_ok[:, None])


@triton.jit
def _bwd_dkv_kernel(
    qkv_ptr, mask_ptr, lag_ptr, src_ptr, lse_ptr, dout_ptr, dqkv_ptr, delta_ptr, dsrc_ptr,
    T, A, n_blocks, s_b, s_t, s_a, m_b, m_t, m_a, scale,
    H: tl.constexpr, DH: tl.constexpr, K: tl.constexpr, AP: tl.constexpr, BT: tl.constexpr, PREC: tl.constexpr,
):
    R: tl.constexpr = BT * AP
    M: tl.constexpr = H * DH
    b, h, s0, bar, asset, d = _program(H, DH, AP, BT)  # columns (bar, source): this program's keys; rows: queries
    ks = s0 + bar
    col_ok = (ks < T) & (asset < A)
    base = qkv_ptr + b * s_b + h * DH
    key0 = _tile(base + M, ks, asset, d, col_ok, s_t, s_a) + _embedding(src_ptr, asset, asset < A, h, d, M, DH)
    val = _tile(base + 2 * M, ks, asset, d, col_ok, s_t, s_a)
    key_open = _is_open(mask_ptr, b, ks, asset, col_ok, m_b, m_t, m_a)
    same_bar = bar[:, None] == bar[None, :]

    dk = tl.zeros([R, DH], tl.float32)
    dv = tl.zeros([R, DH], tl.float32)
    for lag in range(K + 1):
        t = ks + lag  # the rows' query bar
        row_ok = (t < T) & (asset < A)
        q = _tile(base, t, asset, d, row_ok, s_t, s_a) * scale
        target_open = _is_open(mask_ptr, b, t, asset, row_ok, m_b, m_t, m_a)
        row = (b * T + t) * A + asset
        dout = tl.load(dout_ptr + row[:, None] * M + h * DH + d[None, :], mask=row_ok[:, None], other=0.0)
        dout = dout.to(tl.float32)
        lse = tl.load(lse_ptr + row * H + h, mask=row_ok, other=0.0)
        delta = tl.load(delta_ptr + row * H + h, mask=row_ok, other=0.0)
        key = key0 + tl.load(lag_ptr + lag * M + h * DH + d)[None, :]
        valid = same_bar & (row_ok & target_open)[:, None] & key_open[None, :]
        s = tl.dot(q, tl.trans(key), input_precision=PREC)
        p = tl.where(valid, tl.exp(s - lse[:, None]), 0.0)
        dv += tl.dot(tl.trans(p), dout, input_precision=PREC)
        dp = tl.dot(dout, tl.trans(val), input_precision=PREC)
        ds = p * (dp - delta[:, None])
        dk += tl.dot(tl.trans(ds), q, input_precision=PREC)
    cell = ((b * T + ks) * A + asset)[:, None] * (3 * M) + h * DH + d[None, :]
    tl.store(dqkv_ptr + cell + M, dk.to(dqkv_ptr.dtype.element_ty), mask=col_ok[:, None])
    tl.store(dqkv_ptr + cell + 2 * M, dv.to(dqkv_ptr.dtype.element_ty), mask=col_ok[:, None])
    # the source embedding was added to every key of its source: its gradient sums theirs (over the block's bars)
    per_source = tl.sum(tl.reshape(dk, (BT, AP, DH)), axis=0)
    j = tl.arange(0, AP)
    part = dsrc_ptr + ((b * n_blocks + s0 // BT) * H + h) * A * DH
    tl.store(part + j[:, None] * DH + d[None, :], per_source, mask=(j < A)[:, None])


def precision() -> str:
    return "tf32" if torch.backends.cuda.matmul.allow_tf32 else PRECISION


class _LeadLagAttention(torch.autograd.Function):
    """qkv (B, T, A, 3M) contiguous in its last dim; open_bars (B, T, A) uint8; lag (K+1, H, dh), src (A, H, dh)
    float32 contiguous -> attended (B, T, A, M)."""

    @staticmethod
    def forward(ctx, qkv, open_bars, lag, src, heads):
        batch, length, assets, width = qkv.shape
        M, K = width // 3, lag.shape[0] - 1
        dh = M // heads
        AP, BT = tiles(assets)
        n_blocks = triton.cdiv(length, BT)
        out = qkv.new_empty(batch, length, assets, M)
        lse = qkv.new_empty(batch, length, assets, heads, dtype=torch.float32)
        warps = max(1, min(WARPS, AP * BT // 8))
        meta = {"H": heads, "DH": dh, "K": K, "AP": AP, "BT": BT, "PREC": precision(), "num_warps": warps}
        if STAGES is not None:
            meta["num_stages"] = STAGES
        strides = (*qkv.stride()[:3], *open_bars.stride())
        _fwd_kernel[(n_blocks, batch * heads)](
            qkv, open_bars, lag, src, out, lse, length, assets, *strides, dh ** -0.5, **meta)
        ctx.save_for_backward(qkv, open_bars, lag, src, out, lse)
        ctx.meta, ctx.strides, ctx.n_blocks = meta, strides, n_blocks
        return out

    @staticmethod
    def backward(ctx, grad_out):
        qkv, open_bars, lag, src, out, lse = ctx.saved_tensors
        meta, strides, n_blocks = ctx.meta, ctx.strides, ctx.n_blocks
        batch, length, assets, _ = qkv.shape
        H, dh, K = meta["H"], meta["DH"], meta["K"]
        grad_out = grad_out.contiguous()
        grad_qkv = torch.empty(qkv.shape, device=qkv.device, dtype=qkv.dtype)
        delta = torch.empty_like(lse)
        f32 = torch.float32
        lag_part = qkv.new_empty(batch, n_blocks, H, K + 1, dh, dtype=f32)
        src_part = qkv.new_empty(batch, n_blocks, H, assets, dh, dtype=f32)
        grid = (n_blocks, batch * H)
        common = (length, assets, n_blocks, *strides, dh ** -0.5)
        _bwd_dq_kernel[grid](qkv, open_bars, lag, src, out, lse, grad_out, grad_qkv, delta, lag_part, *common,
                             **meta)
        _bwd_dkv_kernel[grid](qkv, open_bars, lag, src, lse, grad_out, grad_qkv, delta, src_part, *common, **meta)
        grad_lag = lag_part.sum((0, 1)).transpose(0, 1).to(lag.dtype)  # (K+1, H, dh)
        grad_src = src_part.sum((0, 1)).transpose(0, 1).to(src.dtype)  # (A, H, dh)
        return grad_qkv, None, grad_lag, grad_src, None


def supported(qkv: Tensor, heads: int) -> bool:
    """Whether lead_lag_attention takes this projection: a dtype the kernel reads and a head width tl.dot takes."""
    return qkv.dtype in KERNEL_DTYPES and (qkv.shape[-1] // 3) // heads in HEAD_DIMS


def lead_lag_attention(qkv: Tensor, open_bars: Tensor, lag_embedding: Tensor, source_embedding: Tensor,
                       heads: int) -> Tensor:
    """LeadLagAttention's attended values with no state before the first bar: qkv (B, T, A, 3M) (queries, keys,
    values side by side, as the layer's projection makes them), open_bars (B, T, A) bool, lag_embedding (K+1, H, dh),
    source_embedding (A, H, dh) -> (B, T, A, M), heads side by side, in qkv's dtype. Differentiable in qkv and both
    embeddings."""
    with torch.autocast(device_type=qkv.device.type, enabled=False):
        if qkv.stride(-1) != 1:
            qkv = qkv.contiguous()
        mask = open_bars.view(torch.uint8) if open_bars.dtype == torch.bool else open_bars.to(torch.uint8)
        lag = lag_embedding.float().contiguous()
        src = source_embedding.float().contiguous()
        return _LeadLagAttention.apply(qkv, mask, lag, src, heads)
