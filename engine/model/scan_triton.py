"""Fused selective scan on CUDA (Triton): forward and backward, imported only when CUDA and Triton are present.

Same contract as engine.model.scan.selective_scan (Mamba-1 decay per (d, n), grouped B/C), plus an optional fused
form for the SSM block (`selective_scan_fused`): delta = clamp(softplus(dt + dt_bias)) · open, and the output
(y + D·u)·silu(z), so the block's elementwise glue costs no extra pass over memory.

One program per (batch, channel block) walks the whole sequence, carrying the fp32 state h (BD channels × N states)
across chunks of CHUNK bars in registers: per chunk it runs the recurrence over the chunk as a scan over a
(CHUNK, N, BD) tile (tl.associative_scan), the carried state entering through the chunk's first bar, writes y and
carries the chunk's last state on. The loads run two chunks ahead of the arithmetic (their latency hides behind two
chunks of work). No summary or combine kernels, no second pass.

The backward is one program per (batch, channel block) too, walking the chunks from the last to the first, each
program owning its (d, n) states: per chunk it recomputes the forward states from the state saved at the chunk's
start (the forward saves h at every chunk boundary when a gradient will be asked for), runs the reverse recurrence of
dLoss/dh over the chunk with the gradient from the later chunks carried in registers, and writes du, d delta; dA is
accumulated in registers over the whole walk, dB and dC are reduced over the block's channels in the kernel and added
across channel blocks with atomics. dLoss/dy is read through its strides (y.sum()'s broadcast is not copied first).

Where the time goes, and the layout that follows (sm_90 SASS of the loop, per chunk of 8 bars x 8 channels x 16
states on one warp). The time axis lies in each thread's registers, so both scans are sequential per thread and cost
no shuffles. The reverse scan runs over the flipped chunk (tl.flip along an in-register axis is a renaming):
Triton's reverse=True moved every element across lanes instead, 820 of the 1,044 shuffles a chunk had. The
backward's tiles are (T, DL, NP, DH): the channel block split as DL in registers x DH = 4 on the lanes, the states
on the other 8 lanes, so that the sums over channels (dB, dC) are half in registers: 160 shuffles a chunk against
224 with all 8 channels on the lanes. What is left: about 1,130 instructions a chunk (about 20 floating-point
operations per (t, n, d), 5 shuffles, one exp), 2.3 ms of issue at one instruction per clock per scheduler at (32,
8192, 512, 16) against 4.4 ms measured: at 254 registers a thread there are 2 warps per scheduler, too few to hide
the latencies of the sequential scans and the shuffle trees.

Both scans carry a 4-tuple (P, Q, R, S) per bar so that a bar sees both its own state and the one before it without
shifting a register tile: for the map h -> a·h + b of bar t the element is (a, b, 1, 0) and a prefix of bars
composes to h_out = P·h_in + Q and h_before_last = R·h_in + S; the incoming state (or gradient) is folded into the
first bar's element, so Q and S are the outputs and the running products P, R are dead code. Products of decays <= 1
only: nothing can overflow whatever delta is (no exp of a positive cumulative sum anywhere), and no state is ever
recovered by division or subtraction.

Precision: inputs may be float32, bfloat16 or float16 (loaded and converted in registers), the state and every sum
are float32, and y and the input gradients are written in their tensors' dtypes.
"""
from __future__ import annotations

import functools

import torch
import triton
import triton.language as tl
from torch import Tensor

LOG2E = tl.constexpr(1.4426950408889634)

# Tile sizes: CHUNK bars x BLOCK_D channels x the state (padded to a power of two) per program, and warps per program:
# the fastest forward and the fastest forward+backward measured on an H200 at (32, 8192, 512, 16) (2026-12-03,
# L2 flushed: forward 0.99 ms; forward+backward 5.13 ms = 4.85x the byte floor with backward tiles (4, 16, 1), the
# forward keeping its chunk of 8 and storing the backward's chunk starts inside it, against 5.56 ms with (8, 8, 1) in
# the same run; `python -m engine.benchmarks.scan --sweep`). Forward blocks of 32 tie, 8 and 2 warps are slower.
# Slower backward tiles: (4, 8, 1) 6.66 ms, and on the layout before this one blocks of 4, 16 on 2 warps, 32 on 4.
FWD_CHUNK, FWD_BLOCK_D, FWD_WARPS = 8, 16, 1
BWD_CHUNK, BWD_BLOCK_D, BWD_WARPS = 4, 16, 1
# One program per (batch, channel block) leaves SMs idle when batch x channels is small (8 x 128: 64 programs for
# 132 SMs): the block then shrinks until there are at least this many programs per SM (or the block is 2 channels).
MIN_PROGRAMS_PER_SM = 4
# dB, dC across channel blocks: atomics (True) or per-block partial sums added after the kernel. The atomics cost
# nothing measurable (forward+backward 6.57 ms with dB and dC not written against 6.61 ms with them, measured on the
# previous tile layout); the partials cost 0.6 ms more (their buffer is 64 x dB's size at blocks of 8).
BWD_ATOMIC = True


@triton.jit
def _compose(p1, q1, r1, s1, p2, q2, r2, s2):
    # Bar(s) 1 then bar(s) 2: out = p·in + q, the state before the last bar = r·in + s.
    return p2 * p1, p2 * q1 + q2, r2 * p1, r2 * q1 + s2


@triton.jit
def _linear(a1, b1, a2, b2):
    # The map h -> a1·h + b1 then h -> a2·h + b2 (the forward needs no state before a bar).
    return a2 * a1, a2 * b1 + b2


@triton.jit
def _row(tile, rows, k: tl.constexpr):
    """tile[k] of a (rows, ...) tile (register tiles cannot be indexed): a sum of that row and -0.0s, exact."""
    return tl.sum(tl.where((rows == k)[:, None, None], tile, -0.0), axis=0)


@triton.jit
def _softplus(x):
    """log(1 + exp(x)) for x <= 20, x above (torch's threshold); log1p by Kahan's w = 1 + e trick."""
    e = tl.exp(tl.minimum(x, 20.0))
    w = 1.0 + e
    log1p = tl.where(w == 1.0, e, tl.log(w) * (e / (w - 1.0)))
    return tl.where(x > 20.0, x, log1p)


@triton.jit
def _load_delta(delta_ptr, mask_ptr, row0, offs, ok, rows, bias, lo, hi, D, G, g, FUSED: tl.constexpr,
                HAS_MASK: tl.constexpr):
    """delta in float32 at the chunk's offsets `offs` ((T, BD) or (T, DL, DH)), and for the fused form the derivative
    d delta / d dt (else raw again). ok, rows: the bars that exist and their indices, shaped (T, 1) or (T, 1, 1);
    bias: the dt bias shaped to broadcast against offs."""
    raw = tl.load(delta_ptr + row0 * D + offs, mask=ok, other=0.0).to(tl.float32)
    if FUSED:
        x = raw + bias
        soft = _softplus(x)
        inside = (soft >= lo) & (soft <= hi)  # torch's clamp passes the gradient at the bounds
        slope = tl.where(inside, tl.sigmoid(x), 0.0)
        delta = tl.minimum(tl.maximum(soft, lo), hi)
        if HAS_MASK:
            open_ = tl.load(mask_ptr + row0 * G + g + rows * G, mask=ok, other=0.0).to(tl.float32)
            delta = delta * open_
            slope = slope * open_
        delta = tl.where(ok, delta, 0.0)  # padded bars: delta 0 = the identity step
        # float32 whatever lo and hi came as (torch.compile's wrapper passes Python floats as float64): both
        # branches must return one type. A no-op when they are float32 (a plain launch).
        return delta.to(tl.float32), slope.to(tl.float32)
    return raw, raw


@triton.jit
def _chunk_rows(c, pid_b, L, T: tl.constexpr):
    """The first row of chunk c in a (b·L, ...) view (a scalar) and which of its T bars exist (chunk -1, the
    backward's prefetch past the start, has none). Addresses are this scalar base plus the program's loop-invariant
    int32 offsets: no per-element index arithmetic in the loop."""
    rows = tl.arange(0, T)
    tok = (rows < L - c * T) & (c >= 0)
    return pid_b * L + c * T, tok


@triton.jit
def _load_chunk(row0, tok, ok, rows, offs, offs_tn, n_ok, g, bias, u_ptr, delta_ptr, B_ptr, C_ptr, mask_ptr, lo, hi,
                D, G, N, FUSED: tl.constexpr, HAS_MASK: tl.constexpr):
    """A chunk's inputs in float32: delta, d delta/d dt (fused form), u at the channel offsets `offs` ((T, BD) in the
    forward, (T, DL, DH) in the backward; ok, rows, bias shaped to broadcast against them); B, C (T, NP). Past the
    end: zeros."""
    delta, slope = _load_delta(delta_ptr, mask_ptr, row0, offs, ok, rows, bias, lo, hi, D, G, g, FUSED, HAS_MASK)
    u = tl.load(u_ptr + row0 * D + offs, mask=ok, other=0.0).to(tl.float32)
    tn_ok = tok[:, None] & n_ok[None, :]
    gn = (row0 * G + g) * N
    B = tl.load(B_ptr + gn + offs_tn, mask=tn_ok, other=0.0).to(tl.float32)
    C = tl.load(C_ptr + gn + offs_tn, mask=tn_ok, other=0.0).to(tl.float32)
    return delta, slope, u, B, C


@triton.jit
def _load_bars(ptr, row0, ok, offs, D):
    """A (b, L, D) tensor at a chunk's channel offsets in float32; zeros past the end."""
    return tl.load(ptr + row0 * D + offs, mask=ok, other=0.0).to(tl.float32)


@triton.jit
def _program_setup(A_ptr, carry_ptr, bias_ptr, dskip_ptr, D, N, Dg,
                   HAS_CARRY: tl.constexpr, FUSED: tl.constexpr, BD: tl.constexpr, NP: tl.constexpr):
    """This program's batch row and channels, A (NP, BD), the offsets of its (n, d) states in a (b, D, N) tensor, the
    state coming in (carry_ptr's, else zeros) and, for the fused form, the dt bias and D skip of its channels."""
    pid_d, pid_b = tl.program_id(0), tl.program_id(1).to(tl.int64)
    d = pid_d * BD + tl.arange(0, BD)  # (BD,)
    n = tl.arange(0, NP)
    n_ok = n < N
    g = (pid_d * BD) // Dg  # a channel block never straddles two groups (BD divides Dg)
    nd = n[:, None] + d[None, :] * N  # (NP, BD) offsets into (D, N)
    A = tl.load(A_ptr + nd, mask=n_ok[:, None], other=0.0)
    state_off = pid_b * D * N + nd
    if HAS_CARRY:
        carry = tl.load(carry_ptr + state_off, mask=n_ok[:, None], other=0.0).to(tl.float32)
    else:
        carry = tl.zeros((NP, BD), dtype=tl.float32)
    if FUSED:
        bias = tl.load(bias_ptr + d).to(tl.float32)
        dskip = tl.load(dskip_ptr + d).to(tl.float32)
    else:
        bias = tl.zeros((BD,), dtype=tl.float32)
        dskip = bias
    return pid_d, pid_b, d, n, n_ok, g, nd, A, state_off, carry, bias, dskip


@triton.jit
def _scan_fwd_kernel(
    u_ptr, delta_ptr, A_ptr, B_ptr, C_ptr, h0_ptr, y_ptr, last_ptr, states_ptr, bounds_ptr,
    bias_ptr, dskip_ptr, z_ptr, mask_ptr, lo, hi,
    L, D, G, N, Dg, NC, NCB,
    HAS_H0: tl.constexpr, STORE_STATES: tl.constexpr, STORE_BOUNDS: tl.constexpr,
    FUSED: tl.constexpr, HAS_MASK: tl.constexpr,
    T: tl.constexpr, BD: tl.constexpr, NP: tl.constexpr, SUB: tl.constexpr,
):
    # STORE_BOUNDS: the state at the start of each of the backward's NCB chunks, SUB of them a forward chunk.
    # Tiles are (T, NP, BD): the channels on the fastest axis, so that a warp's lanes split the channels first and
    # each thread keeps several states of its channel (the readout's sum over n stays mostly in registers).
    rows = tl.arange(0, T)
    _, pid_b, d, n, n_ok, g, nd, A, state_off, carry, bias, dskip = _program_setup(
        A_ptr, h0_ptr, bias_ptr, dskip_ptr, D, N, Dg, HAS_H0, FUSED, BD, NP)
    A2 = A * LOG2E
    offs_td = rows[:, None] * D + d[None, :]  # (T, BD) offsets from a chunk's first row: loop-invariant
    offs_tn = rows[:, None] * (G * N) + n[None, :]  # (T, NP)
    first = (rows == 0)[:, None, None]
    row0, tok = _chunk_rows(0, pid_b, L, T)
    delta, _, u, B, C = _load_chunk(row0, tok, tok[:, None], rows[:, None], offs_td, offs_tn, n_ok, g, bias[None, :],
                                    u_ptr, delta_ptr, B_ptr, C_ptr, mask_ptr, lo, hi, D, G, N, FUSED, HAS_MASK)
    row0_n, tok_n = _chunk_rows(1, pid_b, L, T)
    delta_n, _, u_n, B_n, C_n = _load_chunk(row0_n, tok_n, tok_n[:, None], rows[:, None], offs_td, offs_tn, n_ok, g,
                                            bias[None, :], u_ptr, delta_ptr, B_ptr, C_ptr, mask_ptr, lo, hi, D, G, N,
                                            FUSED, HAS_MASK)
    if FUSED:
        z = _load_bars(z_ptr, row0, tok[:, None], offs_td, D)
        z_n = _load_bars(z_ptr, row0_n, tok_n[:, None], offs_td, D)
    else:
        z = u
        z_n = u_n
    for c in range(NC):
        # The loads two chunks ahead go out before this chunk's arithmetic: their latency hides behind two chunks.
        row0_nn, tok_nn = _chunk_rows(c + 2, pid_b, L, T)
        delta_nn, _, u_nn, B_nn, C_nn = _load_chunk(row0_nn, tok_nn, tok_nn[:, None], rows[:, None], offs_td, offs_tn,
                                                    n_ok, g, bias[None, :], u_ptr, delta_ptr, B_ptr, C_ptr, mask_ptr,
                                                    lo, hi, D, G, N, FUSED, HAS_MASK)
        if FUSED:
            z_nn = _load_bars(z_ptr, row0_nn, tok_nn[:, None], offs_td, D)
        else:
            z_nn = u_nn
        if STORE_BOUNDS:
            tl.store(bounds_ptr + (pid_b * NCB + c * SUB) * D * N + nd, carry, mask=n_ok[:, None])
        decay = tl.exp2(delta[:, None, :] * A2[None, :, :])  # (T, NP, BD)
        drive = (delta * u)[:, None, :] * B[:, :, None]
        # The carried state enters through the first bar's drive, so the scan's output is h itself: its running
        # product of decays (unused) is dead code when the time axis lies in one thread, as it does here.
        drive = tl.where(first, drive + decay * carry[None, :, :], drive)
        h = tl.associative_scan((decay, drive), 0, _linear)[1]
        y = tl.sum(h * C[:, :, None], axis=1)  # (T, BD)
        if FUSED:
            y = (y + dskip[None, :] * u) * (z * tl.sigmoid(z))
        tl.store(y_ptr + row0 * D + offs_td, y.to(y_ptr.dtype.element_ty), mask=tok[:, None])
        if STORE_STATES:
            tnd = (row0 * D + offs_td[:, None, :]) * N + n[None, :, None]
            tl.store(states_ptr + tnd, h, mask=tok[:, None, None] & n_ok[None, :, None])
        if STORE_BOUNDS:
            for j in tl.static_range(1, SUB):  # the later backward chunks starting inside this one
                tl.store(bounds_ptr + (pid_b * NCB + c * SUB + j) * D * N + nd, _row(h, rows, j * (T // SUB) - 1),
                         mask=n_ok[:, None] & (c * SUB + j < NCB))
        carry = _row(h, rows, T - 1)  # padded bars are identity steps: this is h at the chunk's last real bar
        delta, u, B, C, z, row0, tok = delta_n, u_n, B_n, C_n, z_n, row0_n, tok_n
        delta_n, u_n, B_n, C_n, z_n, row0_n, tok_n = delta_nn, u_nn, B_nn, C_nn, z_nn, row0_nn, tok_nn
    tl.store(last_ptr + state_off, carry, mask=n_ok[:, None])


@triton.jit
def _row4(tile, rows, k: tl.constexpr):
    """tile[k] of a (rows, ...) 4-d tile: a sum of that row and -0.0s, exact."""
    return tl.sum(tl.where((rows == k)[:, None, None, None], tile, -0.0), axis=0)


@triton.jit
def _bwd_setup(A_ptr, carry_ptr, bias_ptr, dskip_ptr, D, N, Dg, HAS_CARRY: tl.constexpr, FUSED: tl.constexpr,
               BD: tl.constexpr, DL: tl.constexpr, DH: tl.constexpr, NP: tl.constexpr):
    """The backward's program: channels as (DL, DH) = d // DH, d % DH within the block (DH on the lanes, DL in
    each thread's registers), states as (DL, NP, DH) tiles."""
    pid_d, pid_b = tl.program_id(0), tl.program_id(1).to(tl.int64)
    dl = tl.arange(0, DL)
    dh = tl.arange(0, DH)
    d2 = pid_d * BD + dl[:, None] * DH + dh[None, :]  # (DL, DH)
    n = tl.arange(0, NP)
    n_ok = n < N
    g = (pid_d * BD) // Dg
    nd = n[None, :, None] + d2[:, None, :] * N  # (DL, NP, DH) offsets into (D, N)
    s_ok = n_ok[None, :, None]
    A = tl.load(A_ptr + nd, mask=s_ok, other=0.0)
    state_off = pid_b * D * N + nd
    if HAS_CARRY:
        carry = tl.load(carry_ptr + state_off, mask=s_ok, other=0.0).to(tl.float32)
    else:
        carry = tl.zeros((DL, NP, DH), dtype=tl.float32)
    if FUSED:
        bias = tl.load(bias_ptr + d2).to(tl.float32)
        dskip = tl.load(dskip_ptr + d2).to(tl.float32)
    else:
        bias = tl.zeros((DL, DH), dtype=tl.float32)
        dskip = bias
    return pid_d, pid_b, d2, n, n_ok, g, nd, s_ok, A, state_off, carry, bias, dskip


@triton.jit
def _scan_bwd_kernel(
    u_ptr, delta_ptr, A_ptr, B_ptr, C_ptr, bounds_ptr, gy_ptr, glast_ptr, gstates_ptr,
    bias_ptr, dskip_ptr, z_ptr, mask_ptr, lo, hi,
    gu_ptr, gdelta_ptr, gA_ptr, gB_ptr, gC_ptr, gh0_ptr, gD_ptr, gz_ptr,
    L, D, G, N, Dg, NC, NDB, gy_sb, gy_sl, gy_sd,
    HAS_GLAST: tl.constexpr, HAS_GSTATES: tl.constexpr, HAS_GY: tl.constexpr, WANT_GH0: tl.constexpr,
    FUSED: tl.constexpr, HAS_MASK: tl.constexpr, ATOMIC: tl.constexpr,
    T: tl.constexpr, BD: tl.constexpr, NP: tl.constexpr, DL: tl.constexpr, DH: tl.constexpr,
):
    # Tiles are (T, DL, NP, DH): time and DL of the block's channels in each thread's registers, the states and DH
    # channels on the lanes (8 x 4 for N = 16, BD = 8), so that the sums over channels (dB, dC) are half in registers.
    rows = tl.arange(0, T)
    pid_d, pid_b, d2, n, n_ok, g, nd, s_ok, A, state_off, carry, bias, dskip = _bwd_setup(
        A_ptr, glast_ptr, bias_ptr, dskip_ptr, D, N, Dg, HAS_GLAST, FUSED, BD, DL, DH, NP)
    A2 = A * LOG2E
    grad_A = tl.zeros((DL, NP, DH), dtype=tl.float32)
    grad_D = tl.zeros((DL, DH), dtype=tl.float32)
    ones = tl.full((T, DL, NP, DH), 1.0, tl.float32)
    # Meant as -0.0 so that S = 1·S + (-0.0) folds away; the PTX still adds +0.0 (32 adds a chunk, about 3%).
    zeros = -tl.zeros((T, DL, NP, DH), dtype=tl.float32)
    first = (rows == 0)[:, None, None, None]
    offs = rows[:, None, None] * D + d2[None, :, :]  # (T, DL, DH)
    offs_tn = rows[:, None] * (G * N) + n[None, :]  # (T, NP)
    # dLoss/dy is read through its strides: a broadcast upstream (y.sum()'s) is not materialised first.
    offs_gy = rows[:, None, None] * gy_sl + d2[None, :, :] * gy_sd
    row0, tok = _chunk_rows(NC - 1, pid_b, L, T)
    rows3 = rows[:, None, None]
    bias3 = bias[None, :, :]
    delta, slope, u, B, C = _load_chunk(row0, tok, tok[:, None, None], rows3, offs, offs_tn, n_ok, g, bias3, u_ptr,
                                        delta_ptr, B_ptr, C_ptr, mask_ptr, lo, hi, D, G, N, FUSED, HAS_MASK)
    h_start = tl.load(bounds_ptr + (pid_b * NC + NC - 1) * D * N + nd, mask=s_ok, other=0.0)
    if HAS_GY:
        gy = _load_bars(gy_ptr + pid_b * gy_sb + (NC - 1) * T * gy_sl, 0, tok[:, None, None], offs_gy, D)
    else:
        gy = tl.zeros((T, DL, DH), dtype=tl.float32)
    if FUSED:
        z = _load_bars(z_ptr, row0, tok[:, None, None], offs, D)
    else:
        z = gy
    for cc in range(NC):
        c = NC - 1 - cc
        row0_n, tok_n = _chunk_rows(c - 1, pid_b, L, T)
        delta_n, slope_n, u_n, B_n, C_n = _load_chunk(row0_n, tok_n, tok_n[:, None, None], rows3, offs, offs_tn, n_ok,
                                                      g, bias3, u_ptr, delta_ptr, B_ptr, C_ptr, mask_ptr, lo, hi, D, G,
                                                      N, FUSED, HAS_MASK)
        h_start_n = tl.load(bounds_ptr + (pid_b * NC + c - 1) * D * N + nd, mask=s_ok & (c > 0), other=0.0)
        if HAS_GY:
            gy_n = _load_bars(gy_ptr + pid_b * gy_sb + (c - 1) * T * gy_sl, 0, tok_n[:, None, None], offs_gy, D)
        else:
            gy_n = gy
        if FUSED:
            z_n = _load_bars(z_ptr, row0_n, tok_n[:, None, None], offs, D)
        else:
            z_n = z
        tn_ok = tok[:, None] & n_ok[None, :]
        B4 = B[:, None, :, None]
        C4 = C[:, None, :, None]

        decay = tl.exp2(delta[:, :, None, :] * A2[None, :, :, :])  # (T, DL, NP, DH)
        delta_u = delta * u
        drive = delta_u[:, :, None, :] * B4
        drive = tl.where(first, drive + decay * h_start[None, :, :, :], drive)
        scanned = tl.associative_scan((decay, drive, ones, tl.where(first, h_start[None, :, :, :], zeros)), 0,
                                      _compose)
        h, h_prev = scanned[1], scanned[3]

        if FUSED:
            sig = tl.sigmoid(z)
            gate = z * sig
            g_out = gy
            y = tl.sum(h * C4, axis=2)
            pre = y + dskip[None, :, :] * u
            gz = g_out * pre * sig * (1.0 + z * (1.0 - sig))
            tl.store(gz_ptr + row0 * D + offs, gz.to(gz_ptr.dtype.element_ty), mask=tok[:, None, None])
            gy = g_out * gate
            grad_D += tl.sum(gy * u, axis=0)

        direct = gy[:, :, None, :] * C4
        if HAS_GSTATES:
            tnd = (row0 * D + offs[:, :, None, :]) * N + n[None, None, :, None]
            direct += tl.load(gstates_ptr + tnd, mask=tok[:, None, None, None] & n_ok[None, None, :, None],
                              other=0.0)
        decay_r = tl.flip(decay, 0)
        direct_r = tl.where(first, tl.flip(direct, 0) + carry[None, :, :, :], tl.flip(direct, 0))
        scanned = tl.associative_scan((decay_r, decay_r * direct_r, ones, direct_r), 0, _compose)
        q_r, grad_h_r = scanned[1], scanned[3]
        grad_h = tl.flip(grad_h_r, 0)
        carry = _row4(q_r, rows, T - 1)

        grad_log_decay = tl.flip(q_r, 0) * h_prev
        grad_A += tl.sum(grad_log_decay * delta[:, :, None, :], axis=0)
        grad_delta_u = tl.sum(grad_h * B4, axis=2)  # (T, DL, DH)
        grad_delta = tl.sum(grad_log_decay * A[None, :, :, :], axis=2) + grad_delta_u * u
        grad_u = grad_delta_u * delta
        if FUSED:
            grad_u += gy * dskip[None, :, :]
            grad_delta = grad_delta * slope
        tl.store(gu_ptr + row0 * D + offs, grad_u.to(gu_ptr.dtype.element_ty), mask=tok[:, None, None])
        tl.store(gdelta_ptr + row0 * D + offs, grad_delta.to(gdelta_ptr.dtype.element_ty), mask=tok[:, None, None])
        # Over the block's channels: DL in registers first, then DH across lanes.
        grad_B = tl.sum(tl.sum(grad_h * delta_u[:, :, None, :], axis=1), axis=2)  # (T, NP)
        grad_C = tl.sum(tl.sum(h * gy[:, :, None, :], axis=1), axis=2)
        if ATOMIC:
            gn = (row0 * G + g) * N
            tl.atomic_add(gB_ptr + gn + offs_tn, grad_B, mask=tn_ok, sem="relaxed")
            tl.atomic_add(gC_ptr + gn + offs_tn, grad_C, mask=tn_ok, sem="relaxed")
        else:
            part = (row0 * NDB + pid_d) * N + rows[:, None] * (NDB * N) + n[None, :]
            tl.store(gB_ptr + part, grad_B, mask=tn_ok)
            tl.store(gC_ptr + part, grad_C, mask=tn_ok)
        delta, slope, u, B, C, h_start, gy, z = delta_n, slope_n, u_n, B_n, C_n, h_start_n, gy_n, z_n
        row0, tok = row0_n, tok_n
    tl.store(gA_ptr + state_off, grad_A, mask=s_ok)
    if WANT_GH0:
        tl.store(gh0_ptr + state_off, carry, mask=s_ok)
    if FUSED:
        tl.store(gD_ptr + pid_b * D + d2, grad_D)


@functools.cache
def _sm_count(device_index: int) -> int:
    return torch.cuda.get_device_properties(device_index).multi_processor_count


def _channel_block(per_group: int, block: int, sequences: int, device: torch.device) -> int:
    """Largest power of two <= block dividing the group width (a block reads one group's B and C), made smaller
    while there are fewer than MIN_PROGRAMS_PER_SM programs per SM for the batch x channels `sequences`."""
    while per_group % block:
        block //= 2
    if device.type == "cuda":
        wanted = MIN_PROGRAMS_PER_SM * _sm_count(device.index if device.index is not None else 0)
        while block > 2 and sequences // block < wanted:
            block //= 2
    return block


class _Geometry:
    """Sizes and launch grids shared by the forward and backward kernels."""

    def __init__(self, u: Tensor, B: Tensor, chunk: int, block: int):
        self.batch, self.length, self.channels = u.shape
        self.groups, self.state = B.shape[2], B.shape[3]
        self.per_group = self.channels // self.groups
        self.state_pad = triton.next_power_of_2(self.state)
        self.chunk = chunk
        self.block = _channel_block(self.per_group, block, self.batch * self.channels, u.device)
        self.n_chunks = triton.cdiv(self.length, chunk)
        self.grid = (self.channels // self.block, self.batch)

    def dims(self) -> tuple[int, ...]:
        return self.length, self.channels, self.groups, self.state, self.per_group, self.n_chunks


# Tile choices a caller (the benchmark's sweep) may override per call; the module defaults otherwise.
TILES = {"fwd": (FWD_CHUNK, FWD_BLOCK_D, FWD_WARPS), "bwd": (BWD_CHUNK, BWD_BLOCK_D, BWD_WARPS),
         "bwd_atomic": BWD_ATOMIC}


class _TritonSelectiveScan(torch.autograd.Function):
    """u, delta (b, L, D); A (D, N) float32; B, C (b, L, G, N); h0 (b, D, N) or None; contiguous CUDA tensors.
    fused: None, or (dt_bias (D,), D_skip (D,), z (b, L, D), open (b, L, G) or None, lo, hi)."""

    @staticmethod
    def forward(ctx, u, delta, A, B, C, h0, dt_bias, dskip, z, open_, lo, hi, fused, return_states, save_bounds,
                out_dtype):
        chunk, block, warps = TILES["fwd"]
        bchunk, bblock, bwarps = TILES["bwd"]
        # The backward's walk restarts at the states saved at its chunk starts: the forward keeps its own chunk when
        # that is a multiple of the backward's (storing `sub` chunk starts a chunk), else runs at the backward's.
        if save_bounds and chunk % bchunk:
            chunk = bchunk
        sub = chunk // bchunk if save_bounds else 1
        geo = _Geometry(u, B, chunk, block)
        n_bchunks = triton.cdiv(geo.length, bchunk)
        y = torch.empty(u.shape, device=u.device, dtype=out_dtype)
        last = u.new_empty(geo.batch, geo.channels, geo.state, dtype=torch.float32)
        states = (u.new_empty(geo.batch, geo.length, geo.channels, geo.state, dtype=torch.float32)
                  if return_states else None)
        bounds = (u.new_empty(geo.batch, n_bchunks, geo.channels, geo.state, dtype=torch.float32)
                  if save_bounds else None)
        dummy = last
        _scan_fwd_kernel[geo.grid](
            u, delta, A, B, C, h0 if h0 is not None else dummy, y, last,
            states if states is not None else dummy, bounds if bounds is not None else dummy,
            dt_bias if fused else dummy, dskip if fused else dummy, z if fused else dummy,
            open_ if open_ is not None else dummy, lo, hi,
            *geo.dims(), n_bchunks, HAS_H0=h0 is not None, STORE_STATES=return_states, STORE_BOUNDS=save_bounds,
            FUSED=fused, HAS_MASK=open_ is not None, T=chunk, BD=geo.block, NP=geo.state_pad, SUB=sub,
            num_warps=warps,
        )
        if save_bounds:
            ctx.save_for_backward(u, delta, A, B, C, bounds, dt_bias, dskip, z, open_)
            ctx.meta = (fused, lo, hi, h0 is not None, bblock, bwarps, bchunk)
        ctx.set_materialize_grads(False)
        return y, last, states

    @staticmethod
    def backward(ctx, grad_y, grad_last, grad_states):
        u, delta, A, B, C, bounds, dt_bias, dskip, z, open_ = ctx.saved_tensors
        fused, lo, hi, has_h0, block, warps, chunk = ctx.meta
        geo = _Geometry(u, B, chunk, block)
        f32 = torch.float32
        grad_u, grad_delta = torch.empty_like(u), torch.empty_like(delta)
        grad_A_part = u.new_empty(geo.batch, geo.channels, geo.state, dtype=f32)
        atomic = TILES["bwd_atomic"]
        n_blocks = geo.channels // geo.block
        if atomic:  # every channel block adds its sums into (b, L, G, N)
            grad_B = torch.zeros(B.shape, device=u.device, dtype=f32)
            grad_C = torch.zeros(C.shape, device=u.device, dtype=f32)
        else:  # one partial sum per channel block, added up below
            grad_B = u.new_empty(geo.batch, geo.length, n_blocks, geo.state, dtype=f32)
            grad_C = torch.empty_like(grad_B)
        grad_h0 = u.new_empty(geo.batch, geo.channels, geo.state, dtype=f32) if has_h0 else None
        grad_D_part = u.new_empty(geo.batch, geo.channels, dtype=f32) if fused else None
        grad_z = torch.empty_like(z) if fused else None
        dummy = grad_A_part
        contiguous = (lambda x: None if x is None else x.contiguous())
        grad_last, grad_states = contiguous(grad_last), contiguous(grad_states)
        gy_strides = grad_y.stride() if grad_y is not None else (0, 0, 0)
        _scan_bwd_kernel[geo.grid](
            u, delta, A, B, C, bounds,
            grad_y if grad_y is not None else dummy, grad_last if grad_last is not None else dummy,
            grad_states if grad_states is not None else dummy,
            dt_bias if fused else dummy, dskip if fused else dummy, z if fused else dummy,
            open_ if open_ is not None else dummy, lo, hi,
            grad_u, grad_delta, grad_A_part, grad_B, grad_C, grad_h0 if has_h0 else dummy,
            grad_D_part if fused else dummy, grad_z if fused else dummy,
            *geo.dims(), n_blocks, *gy_strides, HAS_GLAST=grad_last is not None, HAS_GSTATES=grad_states is not None,
            HAS_GY=grad_y is not None, WANT_GH0=has_h0, FUSED=fused, HAS_MASK=open_ is not None, ATOMIC=atomic,
            T=chunk, BD=geo.block, NP=geo.state_pad, DL=geo.block // min(4, geo.block), DH=min(4, geo.block),
            num_warps=warps,
        )
        grad_A = grad_A_part.sum(0)
        if not atomic:
            part_shape = (geo.batch, geo.length, geo.groups, n_blocks // geo.groups, geo.state)
            grad_B, grad_C = grad_B.view(part_shape).sum(3), grad_C.view(part_shape).sum(3)
        grad_B, grad_C = grad_B.to(B.dtype), grad_C.to(C.dtype)
        grad_bias = grad_D = None
        if fused:
            grad_bias = grad_delta.sum((0, 1), dtype=f32).to(dt_bias.dtype)
            grad_D = grad_D_part.sum(0).to(dskip.dtype)
        return (grad_u, grad_delta, grad_A, grad_B, grad_C, grad_h0, grad_bias, grad_D, grad_z,
                None, None, None, None, None, None, None)


_KERNEL_DTYPES = (torch.float32, torch.bfloat16, torch.float16)


def _prepare(t: Tensor) -> Tensor:
    """Contiguous, and float32 unless already a dtype the kernel reads (bf16/fp16 stay: the kernel converts)."""
    return (t if t.dtype in _KERNEL_DTYPES else t.float()).contiguous()


def _needs_grad(*tensors: Tensor | None) -> bool:
    return torch.is_grad_enabled() and any(t is not None and t.requires_grad for t in tensors)


def selective_scan_triton(
    u: Tensor, delta: Tensor, A: Tensor, B: Tensor, C: Tensor, h0: Tensor | None = None, *,
    return_states: bool = False, out_dtype: torch.dtype = torch.float32,
) -> tuple[Tensor, Tensor, Tensor | None]:
    """(y, last_state, states); shapes as engine.model.scan.selective_scan. u, delta, B, C may be bfloat16 or float16
    (read as such, computed in float32); y comes back in out_dtype, the states in float32."""
    with torch.autocast(device_type=u.device.type, enabled=False):
        u, delta, B, C = (_prepare(t) for t in (u, delta, B, C))
        A = A.float().contiguous()
        h0 = None if h0 is None else h0.float().contiguous()
        save = _needs_grad(u, delta, A, B, C, h0)
        return _TritonSelectiveScan.apply(u, delta, A, B, C, h0, None, None, None, None, 0.0, 0.0, False, return_states,
                                save, out_dtype)


def selective_scan_fused(
    u: Tensor, dt: Tensor, dt_bias: Tensor, A: Tensor, B: Tensor, C: Tensor, D_skip: Tensor, z: Tensor,
    open_bars: Tensor | None = None, h0: Tensor | None = None, *, dt_clamp: tuple[float, float],
    out_dtype: torch.dtype | None = None,
) -> tuple[Tensor, Tensor]:
    """The SSM block's scan with its glue fused: returns ((y + D·u)·silu(z) (b, L, D), last state (b, D, N)) where
    y is the scan of u with delta = clamp(softplus(dt + dt_bias), *dt_clamp) · open_bars[group].

    u, dt, z (b, L, D); dt_bias, D_skip (D,); A (D, N); B, C (b, L, G, N); open_bars (b, L, G) 1/0 or None.
    The output has out_dtype (default: u's dtype). Differentiable in every tensor but open_bars."""
    with torch.autocast(device_type=u.device.type, enabled=False):
        out_dtype = out_dtype or u.dtype
        u, dt, B, C, z = (_prepare(t) for t in (u, dt, B, C, z))
        A = A.float().contiguous()
        dt_bias, D_skip = dt_bias.float().contiguous(), D_skip.float().contiguous()
        open_ = None if open_bars is None else open_bars.to(torch.float32).contiguous()
        h0 = None if h0 is None else h0.float().contiguous()
        save = _needs_grad(u, dt, dt_bias, A, B, C, D_skip, z, h0)
        lo, hi = (float(v) for v in dt_clamp)
        y, last, _ = _TritonSelectiveScan.apply(u, dt, A, B, C, h0, dt_bias, D_skip, z, open_, lo, hi, True, False, save,
                                      out_dtype)
        return y, last
