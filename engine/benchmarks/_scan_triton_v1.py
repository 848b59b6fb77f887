# ruff: noqa  (a verbatim copy of the previous kernel, kept as a benchmark peer)
"""The PREVIOUS fused Triton scan (three kernels: chunk summaries, a cross-chunk combine, outputs), kept only as the
benchmark's "before" peer for engine/model/scan_triton.py's one-pass kernel. Not used by the model.

Fused selective scan on CUDA (Triton): forward and backward, imported only when CUDA and Triton are present.

Same contract as engine.model.scan.selective_scan (Mamba-1 decay per (d, n), grouped B/C). The sequence is cut into chunks
of CHUNK bars and every chunk runs as a parallel scan (tl.associative_scan) in registers, so the work is spread over
(batch, channel block, chunk) programs instead of one long sequential loop per channel:

  forward   1. per chunk, from a zero state: the chunk's total decay and its end state        (_chunk_summary_kernel)
            2. per (batch, channel block), across chunks: the true end state of every chunk   (_chunk_combine_kernel)
            3. per chunk, from the true start state: y (and every state if asked)             (_chunk_output_kernel)
  backward  the same three steps for the reverse recurrence of dLoss/dh, the last one also recomputing the states
            and writing every input's gradient (_chunk_grad_summary_kernel, _chunk_combine_kernel, _chunk_grad_kernel)

Backwards-in-time recurrences are forward scans over tiles loaded in reversed time order. associative_scan's
reverse=True has been reported wrong for this non-commutative combine (triton-lang/triton#4362); on Triton 3.6 it
passed these tests but was no faster, so nothing relies on its argument order.

The scan element is (decay, drive) with the combine (a1, x1) . (a2, x2) = (a1·a2, a2·x1 + x2): products of decays
<= 1 only, so nothing can overflow whatever delta is (no exp of a positive cumulative sum anywhere).
Memory: besides inputs and outputs, only per-chunk summaries (batch, L / CHUNK, D, N) are stored.
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl
from torch import Tensor

# Tile sizes: CHUNK bars × CHANNEL_BLOCK channels × the state (padded to a power of two) per program; small tiles keep
# every operand of the in-register scan in registers. Picked by a sweep on an H100 at (8, 4096, 128, 16): CHUNK 16-32,
# blocks of 8-16 channels, 2-8 warps; the forward varied 0.15-0.37 ms, forward + backward 1.0-3.0 ms.
CHUNK = 16
CHANNEL_BLOCK = 16
COMBINE_ROWS = 64  # chunks per step of the cross-chunk scan (it loops for longer sequences)
SCAN_WARPS = 2  # warps per program of the per-chunk forward and summary kernels
GRAD_WARPS = 4  # the gradient kernel holds the most tiles at once


@triton.jit
def _linear_combine(a1, x1, a2, x2):
    # Apply (a1, x1) then (a2, x2) to a state h: a2·(a1·h + x1) + x2.
    return a1 * a2, a2 * x1 + x2


@triton.jit
def _pick_row(tile, row_ids, row):
    """tile[row] of a (rows, ...) tile as a reduction: register tiles cannot be indexed."""
    return tl.sum(tl.where((row_ids == row)[:, None, None], tile, 0.0), axis=0)


@triton.jit
def _chunk_summary_kernel(
    u_ptr, delta_ptr, A_ptr, B_ptr, decay_out_ptr, state_out_ptr,
    L, D, G, N, Dg, NC,
    CHUNK: tl.constexpr, BD: tl.constexpr, NP: tl.constexpr,
):
    pid_c, pid_d, pid_b = tl.program_id(0), tl.program_id(1), tl.program_id(2).to(tl.int64)
    rows = tl.arange(0, CHUNK)
    t = pid_c * CHUNK + rows  # (T,)
    d = pid_d * BD + tl.arange(0, BD)  # (BD,)
    n = tl.arange(0, NP)  # (NP,)
    g = (pid_d * BD) // Dg  # a channel block never straddles two groups (BD divides Dg)
    t_ok, n_ok = t < L, n < N

    td = pid_b * L * D + t[:, None] * D + d[None, :]  # (T, BD)
    delta = tl.load(delta_ptr + td, mask=t_ok[:, None], other=0.0)  # padded bars: delta 0 = identity step
    u = tl.load(u_ptr + td, mask=t_ok[:, None], other=0.0)
    A = tl.load(A_ptr + d[:, None] * N + n[None, :], mask=n_ok[None, :], other=0.0)  # (BD, NP)
    B = tl.load(B_ptr + (pid_b * L + t[:, None]) * G * N + g * N + n[None, :],
                mask=t_ok[:, None] & n_ok[None, :], other=0.0)  # (T, NP)

    decay = tl.exp(delta[:, :, None] * A[None, :, :])  # (T, BD, NP)
    drive = (delta * u)[:, :, None] * B[:, None, :]
    decay_cum, h = tl.associative_scan((decay, drive), 0, _linear_combine)

    out = ((pid_b * NC + pid_c) * D + d[:, None]) * N + n[None, :]  # (BD, NP)
    tl.store(decay_out_ptr + out, _pick_row(decay_cum, rows, CHUNK - 1), mask=n_ok[None, :])
    tl.store(state_out_ptr + out, _pick_row(h, rows, CHUNK - 1), mask=n_ok[None, :])


@triton.jit
def _chunk_combine_kernel(
    decay_ptr, state_ptr, h0_ptr, out_ptr,
    D, N, NC,
    HAS_H0: tl.constexpr, BACKWARDS: tl.constexpr,
    ROWS: tl.constexpr, BD: tl.constexpr, NP: tl.constexpr,
):
    """out[c] = decay[c]·out[c-1] + state[c] over chunks c, out[-1] = h0; with BACKWARDS, from the last chunk to the
    first (out[c] = decay[c]·out[c+1] + state[c])."""
    pid_d, pid_b = tl.program_id(0), tl.program_id(1).to(tl.int64)
    rows = tl.arange(0, ROWS)
    d = pid_d * BD + tl.arange(0, BD)
    n = tl.arange(0, NP)
    n_ok = n < N
    if HAS_H0:
        carry = tl.load(h0_ptr + (pid_b * D + d[:, None]) * N + n[None, :], mask=n_ok[None, :], other=0.0)
    else:
        carry = tl.zeros((BD, NP), dtype=tl.float32)
    for first in range(0, NC, ROWS):
        k = first + rows
        if BACKWARDS:
            c = NC - 1 - k
        else:
            c = k
        ok = (k < NC)[:, None, None] & n_ok[None, None, :]
        off = ((pid_b * NC + c[:, None, None]) * D + d[None, :, None]) * N + n[None, None, :]
        decay = tl.load(decay_ptr + off, mask=ok, other=1.0)  # padding: the identity element (1, 0)
        state = tl.load(state_ptr + off, mask=ok, other=0.0)
        state = tl.where((rows == 0)[:, None, None], decay * carry[None, :, :] + state, state)
        _, h = tl.associative_scan((decay, state), 0, _linear_combine)
        tl.store(out_ptr + off, h, mask=ok)
        carry = _pick_row(h, rows, ROWS - 1)


@triton.jit
def _chunk_start_state(chunk_end_ptr, h0_ptr, pid_b, pid_c, d, n, n_ok, D, N, NC, HAS_H0: tl.constexpr):
    """The state entering chunk pid_c: the previous chunk's end state, or h0 (or zeros) for the first chunk."""
    prev = tl.maximum(pid_c - 1, 0)
    h = tl.load(chunk_end_ptr + ((pid_b * NC + prev) * D + d[:, None]) * N + n[None, :],
                mask=n_ok[None, :] & (pid_c > 0), other=0.0)
    if HAS_H0:
        h += tl.load(h0_ptr + (pid_b * D + d[:, None]) * N + n[None, :], mask=n_ok[None, :] & (pid_c == 0), other=0.0)
    return h


@triton.jit
def _chunk_output_kernel(
    u_ptr, delta_ptr, A_ptr, B_ptr, C_ptr, chunk_end_ptr, h0_ptr, y_ptr, states_ptr,
    L, D, G, N, Dg, NC,
    HAS_H0: tl.constexpr, STORE_STATES: tl.constexpr,
    CHUNK: tl.constexpr, BD: tl.constexpr, NP: tl.constexpr,
):
    pid_c, pid_d, pid_b = tl.program_id(0), tl.program_id(1), tl.program_id(2).to(tl.int64)
    rows = tl.arange(0, CHUNK)
    t = pid_c * CHUNK + rows
    d = pid_d * BD + tl.arange(0, BD)
    n = tl.arange(0, NP)
    g = (pid_d * BD) // Dg
    t_ok, n_ok = t < L, n < N

    td = pid_b * L * D + t[:, None] * D + d[None, :]
    delta = tl.load(delta_ptr + td, mask=t_ok[:, None], other=0.0)
    u = tl.load(u_ptr + td, mask=t_ok[:, None], other=0.0)
    A = tl.load(A_ptr + d[:, None] * N + n[None, :], mask=n_ok[None, :], other=0.0)
    tgn = (pid_b * L + t[:, None]) * G * N + g * N + n[None, :]
    tn_ok = t_ok[:, None] & n_ok[None, :]
    B = tl.load(B_ptr + tgn, mask=tn_ok, other=0.0)
    C = tl.load(C_ptr + tgn, mask=tn_ok, other=0.0)
    h_start = _chunk_start_state(chunk_end_ptr, h0_ptr, pid_b, pid_c, d, n, n_ok, D, N, NC, HAS_H0)

    decay = tl.exp(delta[:, :, None] * A[None, :, :])
    drive = (delta * u)[:, :, None] * B[:, None, :]
    drive = tl.where((rows == 0)[:, None, None], decay * h_start[None, :, :] + drive, drive)
    _, h = tl.associative_scan((decay, drive), 0, _linear_combine)  # (T, BD, NP)

    y = tl.sum(h * C[:, None, :], axis=2)  # (T, BD)
    tl.store(y_ptr + td, y, mask=t_ok[:, None])
    if STORE_STATES:
        tdn = ((pid_b * L + t[:, None, None]) * D + d[None, :, None]) * N + n[None, None, :]
        tl.store(states_ptr + tdn, h, mask=t_ok[:, None, None] & n_ok[None, None, :])


@triton.jit
def _grad_state_terms(
    delta_ptr, A, C_ptr, gy_ptr, glast_ptr, gstates_ptr, pid_b, t, d, n, g, t_ok, n_ok,
    L, D, G, N,
    HAS_GLAST: tl.constexpr, HAS_GSTATES: tl.constexpr,
):
    """The reverse recurrence's elements at bars t: (decay of the NEXT bar, direct gradient dLoss/dh_t from y,
    from the states output and, at the last bar, from last_state). Returns the tiles and C."""
    td = pid_b * L * D + t[:, None] * D + d[None, :]
    next_ok = (t + 1) < L
    delta_next = tl.load(delta_ptr + td + D, mask=next_ok[:, None], other=0.0)
    decay_next = tl.exp(delta_next[:, :, None] * A[None, :, :])  # (T, BD, NP); 1 past the end
    gy = tl.load(gy_ptr + td, mask=t_ok[:, None], other=0.0)
    C = tl.load(C_ptr + (pid_b * L + t[:, None]) * G * N + g * N + n[None, :],
                mask=t_ok[:, None] & n_ok[None, :], other=0.0)
    direct = gy[:, :, None] * C[:, None, :]
    tdn_ok = t_ok[:, None, None] & n_ok[None, None, :]
    if HAS_GSTATES:
        tdn = ((pid_b * L + t[:, None, None]) * D + d[None, :, None]) * N + n[None, None, :]
        direct += tl.load(gstates_ptr + tdn, mask=tdn_ok, other=0.0)
    if HAS_GLAST:
        is_last = (t == L - 1)[:, None, None] & n_ok[None, None, :]
        glast = tl.load(glast_ptr + (pid_b * D + d[None, :, None]) * N + n[None, None, :], mask=is_last, other=0.0)
        direct += glast
    return decay_next, direct, gy, C


@triton.jit
def _chunk_grad_summary_kernel(
    delta_ptr, A_ptr, C_ptr, gy_ptr, glast_ptr, gstates_ptr, decay_out_ptr, grad_out_ptr,
    L, D, G, N, Dg, NC,
    HAS_GLAST: tl.constexpr, HAS_GSTATES: tl.constexpr,
    CHUNK: tl.constexpr, BD: tl.constexpr, NP: tl.constexpr,
):
    pid_c, pid_d, pid_b = tl.program_id(0), tl.program_id(1), tl.program_id(2).to(tl.int64)
    rows = tl.arange(0, CHUNK)
    t = pid_c * CHUNK + (CHUNK - 1 - rows)  # bars in REVERSED order: a forward scan then runs backwards in time
    d = pid_d * BD + tl.arange(0, BD)
    n = tl.arange(0, NP)
    g = (pid_d * BD) // Dg
    t_ok, n_ok = t < L, n < N
    A = tl.load(A_ptr + d[:, None] * N + n[None, :], mask=n_ok[None, :], other=0.0)
    decay_next, direct, _, _ = _grad_state_terms(
        delta_ptr, A, C_ptr, gy_ptr, glast_ptr, gstates_ptr, pid_b, t, d, n, g, t_ok, n_ok, L, D, G, N,
        HAS_GLAST, HAS_GSTATES)
    # grad_h[t] = direct[t] + decay[t+1]·grad_h[t+1], from the chunk's end with zero coming in.
    decay_cum, grad_h = tl.associative_scan((decay_next, direct), 0, _linear_combine)
    out = ((pid_b * NC + pid_c) * D + d[:, None]) * N + n[None, :]
    tl.store(decay_out_ptr + out, _pick_row(decay_cum, rows, CHUNK - 1), mask=n_ok[None, :])  # the chunk's first bar
    tl.store(grad_out_ptr + out, _pick_row(grad_h, rows, CHUNK - 1), mask=n_ok[None, :])


@triton.jit
def _chunk_grad_kernel(
    u_ptr, delta_ptr, A_ptr, B_ptr, C_ptr, chunk_end_ptr, h0_ptr, gy_ptr, glast_ptr, gstates_ptr, grad_start_ptr,
    grad_u_ptr, grad_delta_ptr, grad_A_part_ptr, grad_B_part_ptr, grad_C_part_ptr,
    L, D, G, N, Dg, NC, NDB,
    HAS_H0: tl.constexpr, HAS_GLAST: tl.constexpr, HAS_GSTATES: tl.constexpr,
    CHUNK: tl.constexpr, BD: tl.constexpr, NP: tl.constexpr,
):
    pid_c, pid_d, pid_b = tl.program_id(0), tl.program_id(1), tl.program_id(2).to(tl.int64)
    rows = tl.arange(0, CHUNK)
    d = pid_d * BD + tl.arange(0, BD)
    n = tl.arange(0, NP)
    g = (pid_d * BD) // Dg
    n_ok = n < N
    A = tl.load(A_ptr + d[:, None] * N + n[None, :], mask=n_ok[None, :], other=0.0)

    # 1. States h[t-1] in time order, by a scan over the previous bars' elements with the chunk's start state
    #    standing in at row 0. (Recovering h[t-1] as (h[t] - drive[t]) / decay[t] would cancel catastrophically
    #    when the drive dominates.)
    t_fwd = pid_c * CHUNK + rows
    prev_ok = (t_fwd < L) & (rows > 0)
    td_prev = pid_b * L * D + (t_fwd[:, None] - 1) * D + d[None, :]
    delta_prev = tl.load(delta_ptr + td_prev, mask=prev_ok[:, None], other=0.0)
    u_prev = tl.load(u_ptr + td_prev, mask=prev_ok[:, None], other=0.0)
    B_prev = tl.load(B_ptr + (pid_b * L + t_fwd[:, None] - 1) * G * N + g * N + n[None, :],
                     mask=prev_ok[:, None] & n_ok[None, :], other=0.0)
    h_start = _chunk_start_state(chunk_end_ptr, h0_ptr, pid_b, pid_c, d, n, n_ok, D, N, NC, HAS_H0)
    decay_prev = tl.exp(delta_prev[:, :, None] * A[None, :, :])
    drive_prev = tl.where((rows == 0)[:, None, None], h_start[None, :, :],
                          (delta_prev * u_prev)[:, :, None] * B_prev[:, None, :])
    _, h_prev = tl.associative_scan((decay_prev, drive_prev), 0, _linear_combine)  # (T, BD, NP), time order

    # 2. Everything else in reversed time order, loaded that way, h_prev flipped to match: a forward scan then runs
    #    the backwards recurrence.
    h_prev = tl.flip(h_prev, 0)
    t = pid_c * CHUNK + (CHUNK - 1 - rows)
    t_ok = t < L
    td = pid_b * L * D + t[:, None] * D + d[None, :]
    delta = tl.load(delta_ptr + td, mask=t_ok[:, None], other=0.0)
    u = tl.load(u_ptr + td, mask=t_ok[:, None], other=0.0)
    B = tl.load(B_ptr + (pid_b * L + t[:, None]) * G * N + g * N + n[None, :],
                mask=t_ok[:, None] & n_ok[None, :], other=0.0)
    decay = tl.exp(delta[:, :, None] * A[None, :, :])
    h = decay * h_prev + (delta * u)[:, :, None] * B[:, None, :]

    # dLoss/dh over the chunk, the gradient entering from the next chunk folded into the chunk's last bar (row 0).
    decay_next, direct, gy, C = _grad_state_terms(
        delta_ptr, A, C_ptr, gy_ptr, glast_ptr, gstates_ptr, pid_b, t, d, n, g, t_ok, n_ok, L, D, G, N,
        HAS_GLAST, HAS_GSTATES)
    nxt = tl.minimum(pid_c + 1, NC - 1)
    carry = tl.load(grad_start_ptr + ((pid_b * NC + nxt) * D + d[:, None]) * N + n[None, :],
                    mask=n_ok[None, :] & (pid_c + 1 < NC), other=0.0)
    direct = tl.where((rows == 0)[:, None, None], direct + decay_next * carry[None, :, :], direct)
    _, grad_h = tl.associative_scan((decay_next, direct), 0, _linear_combine)  # (T, BD, NP), reversed order

    # 3. Through the decay exp(delta·A) (its log's gradient) and the drive delta·u·B (whose gradient is grad_h).
    grad_log_decay = grad_h * decay * h_prev
    grad_delta_u = tl.sum(grad_h * B[:, None, :], axis=2)  # (T, BD)
    grad_delta = tl.sum(grad_log_decay * A[None, :, :], axis=2) + grad_delta_u * u
    tl.store(grad_u_ptr + td, grad_delta_u * delta, mask=t_ok[:, None])
    tl.store(grad_delta_ptr + td, grad_delta, mask=t_ok[:, None])
    # Partial sums, finished by the caller: over (batch, chunk) for A, over channel blocks for B and C.
    grad_A = tl.sum(grad_log_decay * delta[:, :, None], axis=0)  # (BD, NP)
    tl.store(grad_A_part_ptr + ((pid_b * NC + pid_c) * D + d[:, None]) * N + n[None, :], grad_A, mask=n_ok[None, :])
    grad_B = tl.sum(grad_h * (delta * u)[:, :, None], axis=1)  # (T, NP)
    grad_C = tl.sum(h * gy[:, :, None], axis=1)
    part = ((pid_b * L + t[:, None]) * NDB + pid_d) * N + n[None, :]
    tl.store(grad_B_part_ptr + part, grad_B, mask=t_ok[:, None] & n_ok[None, :])
    tl.store(grad_C_part_ptr + part, grad_C, mask=t_ok[:, None] & n_ok[None, :])


def _channel_block(per_group: int) -> int:
    """Largest power of two <= CHANNEL_BLOCK dividing the group width, so that a block reads one group's B and C."""
    block = CHANNEL_BLOCK
    while per_group % block:
        block //= 2
    return block


def _combine_block(channels: int, state_pad: int) -> int:
    """Channels per program in the cross-chunk scan: a power of two dividing D, tiles of at most ~1024 elements."""
    block = 1
    while block * 2 * COMBINE_ROWS * state_pad <= 1024 and channels % (block * 2) == 0:
        block *= 2
    return block


class _Geometry:
    """Sizes and launch grids shared by the forward and backward kernels."""

    def __init__(self, u: Tensor, A: Tensor, B: Tensor):
        self.batch, self.length, self.channels = u.shape
        self.groups, self.state = B.shape[2], B.shape[3]
        self.per_group = self.channels // self.groups
        self.state_pad = triton.next_power_of_2(self.state)
        self.block = _channel_block(self.per_group)
        self.n_blocks = self.channels // self.block
        self.n_chunks = triton.cdiv(self.length, CHUNK)
        self.grid = (self.n_chunks, self.n_blocks, self.batch)
        self.combine_block = _combine_block(self.channels, self.state_pad)
        self.combine_grid = (self.channels // self.combine_block, self.batch)

    def summary_buffers(self, like: Tensor) -> tuple[Tensor, Tensor]:
        shape = (self.batch, self.n_chunks, self.channels, self.state)
        return like.new_empty(shape), like.new_empty(shape)

    def combine(self, decay: Tensor, state: Tensor, h0: Tensor | None, backwards: bool) -> Tensor:
        out = torch.empty_like(state)
        _chunk_combine_kernel[self.combine_grid](
            decay, state, h0 if h0 is not None else state, out, self.channels, self.state, self.n_chunks,
            HAS_H0=h0 is not None, BACKWARDS=backwards, ROWS=COMBINE_ROWS, BD=self.combine_block, NP=self.state_pad,
        )
        return out


class _TritonSelectiveScan(torch.autograd.Function):
    """Contiguous float32 CUDA tensors in the user's layout: u, delta (b, L, D); A (D, N); B, C (b, L, G, N)."""

    @staticmethod
    def forward(ctx, u, delta, A, B, C, h0, return_states: bool):
        geo = _Geometry(u, A, B)
        dims = (geo.length, geo.channels, geo.groups, geo.state, geo.per_group, geo.n_chunks)
        tiles = dict(CHUNK=CHUNK, BD=geo.block, NP=geo.state_pad)
        chunk_decay, chunk_state = geo.summary_buffers(u)
        _chunk_summary_kernel[geo.grid](
            u, delta, A, B, chunk_decay, chunk_state, *dims, num_warps=SCAN_WARPS, **tiles)
        chunk_end = geo.combine(chunk_decay, chunk_state, h0, backwards=False)  # (b, NC, D, N)
        y = torch.empty_like(u)
        states = u.new_empty(geo.batch, geo.length, geo.channels, geo.state) if return_states else None
        _chunk_output_kernel[geo.grid](
            u, delta, A, B, C, chunk_end, h0 if h0 is not None else u, y, states if states is not None else y,
            *dims, HAS_H0=h0 is not None, STORE_STATES=return_states, num_warps=SCAN_WARPS, **tiles,
        )
        ctx.save_for_backward(u, delta, A, B, C, h0, chunk_end)
        ctx.geo = geo
        ctx.set_materialize_grads(False)
        return y, chunk_end[:, -1].clone(), states

    @staticmethod
    def backward(ctx, grad_y, grad_last, grad_states):
        u, delta, A, B, C, h0, chunk_end = ctx.saved_tensors
        geo = ctx.geo
        dims = (geo.length, geo.channels, geo.groups, geo.state, geo.per_group, geo.n_chunks)
        tiles = dict(CHUNK=CHUNK, BD=geo.block, NP=geo.state_pad)
        grad_y = torch.zeros_like(u) if grad_y is None else grad_y.contiguous().float()
        flags = dict(HAS_GLAST=grad_last is not None, HAS_GSTATES=grad_states is not None)
        glast = grad_last.contiguous().float() if grad_last is not None else u
        gstates = grad_states.contiguous().float() if grad_states is not None else u

        chunk_decay, chunk_grad = geo.summary_buffers(u)
        _chunk_grad_summary_kernel[geo.grid](
            delta, A, C, grad_y, glast, gstates, chunk_decay, chunk_grad, *dims, **flags, num_warps=SCAN_WARPS,
            **tiles)
        grad_start = geo.combine(chunk_decay, chunk_grad, None, backwards=True)  # dLoss/dh at each chunk's first bar

        grad_u, grad_delta = torch.empty_like(u), torch.empty_like(delta)
        grad_A_part = u.new_empty(geo.batch, geo.n_chunks, geo.channels, geo.state)
        grad_B_part = u.new_empty(geo.batch, geo.length, geo.n_blocks, geo.state)
        grad_C_part = torch.empty_like(grad_B_part)
        _chunk_grad_kernel[geo.grid](
            u, delta, A, B, C, chunk_end, h0 if h0 is not None else u, grad_y, glast, gstates, grad_start,
            grad_u, grad_delta, grad_A_part, grad_B_part, grad_C_part,
            *dims, geo.n_blocks, HAS_H0=h0 is not None, **flags, num_warps=GRAD_WARPS, **tiles,
        )
        blocks_per_group = geo.n_blocks // geo.groups
        part_shape = (geo.batch, geo.length, geo.groups, blocks_per_group, geo.state)
        grad_B = grad_B_part.view(part_shape).sum(3)
        grad_C = grad_C_part.view(part_shape).sum(3)
        grad_A = grad_A_part.sum((0, 1))
        # h_0 = decay_0·h0 + drive_0, so dLoss/dh0 = decay_0 · dLoss/dh_0.
        grad_h0 = None
        if h0 is not None:
            grad_h0 = torch.exp(delta[:, 0, :, None] * A) * grad_start[:, 0]
        return grad_u, grad_delta, grad_A, grad_B, grad_C, grad_h0, None


def selective_scan_triton(
    u: Tensor, delta: Tensor, A: Tensor, B: Tensor, C: Tensor, h0: Tensor | None = None, *, return_states: bool = False
) -> tuple[Tensor, Tensor, Tensor | None]:
    """(y, last_state, states) in float32; shapes as engine.model.scan.selective_scan. Inputs are cast and made contiguous."""
    with torch.autocast(device_type=u.device.type, enabled=False):
        u, delta, A, B, C = (t.float().contiguous() for t in (u, delta, A, B, C))
        h0 = None if h0 is None else h0.float().contiguous()
        return _TritonSelectiveScan.apply(u, delta, A, B, C, h0, return_states)
