"""Selective scan (Mamba-1 form, grouped B/C): the sequential reference, the fast chunked PyTorch path, and
`selective_scan`, which picks the fast path for the device (the fused Triton kernel of engine/scan_triton.py on CUDA).

    h_t = exp(delta_t * A) * h_{t-1} + delta_t * B_t * u_t        (per channel d, state n)
    y_t = sum_n C_t[n] * h_t[n]

Channel d reads group d // (D // G) of B and C, so several assets' streams run as one wide scan. delta == 0 freezes
the state (closed-market bars). The D skip and the gate belong to the block, not here.
"""
from __future__ import annotations

import functools
import math
from typing import NamedTuple

import torch
from torch import Tensor

LOG2_E = 1.0 / math.log(2.0)  # exp(x) = exp2(x·log2 e): the fast path's decay uses exp2


class ScanResult(NamedTuple):
    y: Tensor  # (batch, L, D)
    last_state: Tensor  # (batch, D, N)
    states: Tensor | None  # (batch, L, D, N) when return_states else None


def validate_scan_inputs(u: Tensor, delta: Tensor, A: Tensor, B: Tensor, C: Tensor, h0: Tensor | None) -> int:
    """Check shapes and return the number of groups G; raise ValueError naming the argument at fault."""
    if u.dim() != 3:
        raise ValueError(f"selective_scan: u must be (batch, L, D), got shape {tuple(u.shape)}")
    batch, length, channels = u.shape
    if length < 1:
        raise ValueError(f"selective_scan: u has no bars (L = 0), shape {tuple(u.shape)}")
    if delta.shape != u.shape:
        raise ValueError(f"selective_scan: delta must match u {tuple(u.shape)}, got {tuple(delta.shape)}")
    if A.dim() != 2 or A.shape[0] != channels:
        raise ValueError(f"selective_scan: A must be (D={channels}, N), got {tuple(A.shape)}")
    state = A.shape[1]
    for name, t in (("B", B), ("C", C)):
        if t.dim() != 4 or t.shape[0] != batch or t.shape[1] != length or t.shape[3] != state:
            raise ValueError(
                f"selective_scan: {name} must be (batch={batch}, L={length}, G, N={state}), got {tuple(t.shape)}"
            )
    if B.shape != C.shape:
        raise ValueError(f"selective_scan: B {tuple(B.shape)} and C {tuple(C.shape)} must have the same shape")
    groups = B.shape[2]
    if groups < 1 or channels % groups != 0:
        raise ValueError(f"selective_scan: D={channels} channels cannot be split into G={groups} equal groups")
    if h0 is not None and tuple(h0.shape) != (batch, channels, state):
        raise ValueError(f"selective_scan: h0 must be (batch={batch}, D={channels}, N={state}), got {tuple(h0.shape)}")
    named = {"u": u, "delta": delta, "A": A, "B": B, "C": C} | ({} if h0 is None else {"h0": h0})
    for name, t in named.items():
        if not t.is_floating_point():
            raise ValueError(f"selective_scan: {name} must be a floating-point tensor, got {t.dtype}")
        if t.device != u.device:
            raise ValueError(f"selective_scan: {name} is on {t.device} but u is on {u.device}")
    return groups


def expand_groups(x: Tensor, channels: int) -> Tensor:
    """(batch, L, G, N) -> (batch, L, D, N): each group's row repeated for its D // G channels (a view)."""
    batch, length, groups, state = x.shape
    per_group = channels // groups
    return x.unsqueeze(3).expand(batch, length, groups, per_group, state).reshape(batch, length, channels, state)


def scan_dtype(*tensors: Tensor) -> torch.dtype:
    """float64 stays float64 (the reference's exactness check); everything else computes in float32."""
    return torch.float64 if any(t.dtype == torch.float64 for t in tensors) else torch.float32


def selective_scan_reference(
    u: Tensor,
    delta: Tensor,
    A: Tensor,
    B: Tensor,
    C: Tensor,
    h0: Tensor | None = None,
    *,
    return_states: bool = False,
) -> ScanResult:
    """The plain sequential loop: slow, obviously right, the yardstick for every fast path."""
    validate_scan_inputs(u, delta, A, B, C, h0)
    dtype = scan_dtype(u, delta, A, B, C)
    with torch.autocast(device_type=u.device.type, enabled=False):
        u, delta, A, B, C = (t.to(dtype) for t in (u, delta, A, B, C))
        batch, _, channels = u.shape
        state = A.shape[1]
        B_full = expand_groups(B, channels)  # (batch, L, D, N)
        C_full = expand_groups(C, channels)
        h = u.new_zeros(batch, channels, state) if h0 is None else h0.to(dtype)
        ys, hs = [], []
        # unbind (not x[:, t]) keeps autograd's backward linear in L.
        for u_t, d_t, B_t, C_t in zip(u.unbind(1), delta.unbind(1), B_full.unbind(1), C_full.unbind(1)):
            decay = torch.exp(d_t.unsqueeze(-1) * A)  # (batch, D, N)
            h = decay * h + (d_t * u_t).unsqueeze(-1) * B_t
            ys.append((h * C_t).sum(-1))  # (batch, D)
            if return_states:
                hs.append(h)
        y = torch.stack(ys, dim=1)
        states = torch.stack(hs, dim=1) if return_states else None
    return ScanResult(y, h, states)


# ----------------------------------------------------------------------------------------------------------------------
# Fast path (CPU, or any device without the fused kernel): a custom autograd.Function.
#
# Why this shape: with a decay per (d, n), the SSD "matmul inside a chunk" trick needs either exp(+cumsum) factors,
# which overflow for large delta, or a (T, T, D, N) tensor per chunk, which costs T times the work. Instead, per chunk
# of T bars the O(T·b·D·N) work is done by a few bulk tensor ops (the decay's exp, the input term, the readout as a
# batched matmul) and only the recurrence itself stays sequential: ONE in-place addcmul per bar on a contiguous
# state slice. The backward is the hand-written reverse scan; it recomputes each chunk's states from the state saved
# at the chunk's start, so neither pass keeps (batch, L, D, N) alive. Every factor is exp(delta·A) <= 1: nothing can
# overflow, whatever delta is.
#
# Internal layout: time-major, and the state axis BEFORE the channel axis, state (T, b, G, N, Dg) with Dg = D // G.
# Then the readout y = C·h is a vector-matrix product (1×N)@(N×Dg), which is fast, where (Dg×N)@(N×1) is not, and
# the sums over n in the backward reduce a non-innermost axis, which vectorises along the channels.
# ----------------------------------------------------------------------------------------------------------------------


def _chunk_decay_and_drive(
    delta_u: Tensor, delta: Tensor, A_log2: Tensor, B: Tensor, decay: Tensor, drive: Tensor
) -> None:
    """Write one chunk's per-bar decay exp(delta·A) and input term delta·u·B into `decay` and `drive`.

    delta_u, delta: (T, b, G, Dg); A_log2 = A·log2(e): (G, N, Dg); B: (T, b, G, N); decay, drive: (T, b, G, N, Dg).
    """
    # exp2 rather than exp: ~2.7x faster in PyTorch's CPU kernels (measured), and the exp is the largest bulk op.
    torch.mul(delta.unsqueeze(-2), A_log2, out=decay).exp2_()
    torch.mul(delta_u.unsqueeze(-2), B.unsqueeze(-1), out=drive)


def _scan_chunk_inplace(decay: Tensor, drive: Tensor, h_start: Tensor) -> Tensor:
    """Turn `drive` (T, ...) into this chunk's states h_0..h_{T-1} in place and return it; h_start: one bar's shape."""
    decays = decay.unbind(0)  # views made once: indexing per bar would build a view per step
    steps = drive.unbind(0)
    steps[0].addcmul_(decays[0], h_start)
    for t in range(1, len(steps)):
        steps[t].addcmul_(decays[t], steps[t - 1])
    return drive


def _reverse_scan_inplace(decay: Tensor, grad_h: Tensor, carry: Tensor) -> None:
    """grad_h[t] += decay[t+1]·grad_h[t+1] from the end, with `carry` (the gradient from after the chunk) added to
    the last bar first. In place on grad_h (T, ...); then `carry` becomes the one for the chunk before,
    decay[0]·grad_h[0]."""
    decays = decay.unbind(0)
    steps = grad_h.unbind(0)
    steps[-1].add_(carry)
    for t in range(len(steps) - 2, -1, -1):
        steps[t].addcmul_(decays[t + 1], steps[t + 1])
    torch.mul(decays[0], steps[0], out=carry)


def _readout(C: Tensor, hs: Tensor, out: Tensor) -> None:
    """out[t,b,g,:] = C[t,b,g,:] @ hs[t,b,g] . C: (T, b, G, N), hs: (T, b, G, N, Dg), out: (T, b, G, Dg)."""
    torch.matmul(C.unsqueeze(-2), hs, out=out.unsqueeze(-2))


# About 256K state elements (1 MB in float32, one core's L2 here) per chunk buffer: a chunk's four or five buffers then
# stay in cache. Measured on this 2-core CPU: at 16K state elements per bar (b 8, D 128, N 16) chunks of 16-32 bars
# beat 64 by 1.3x; at 1K per bar, 128 bars was best (fewer, larger ops).
_CHUNK_ELEMENTS = 1 << 18
_MIN_CHUNK, _MAX_CHUNK = 16, 128


def auto_chunk_size(batch: int, channels: int, state: int) -> int:
    """Bars per chunk for the CPU path: a power of two near _CHUNK_ELEMENTS / (batch·D·N), within [16, 128]."""
    per_bar = max(1, batch * channels * state)
    size = _MIN_CHUNK
    while size < _MAX_CHUNK and (2 * size) * per_bar <= _CHUNK_ELEMENTS:
        size *= 2
    return size


def _chunk_bounds(length: int, chunk_size: int) -> list[tuple[int, int]]:
    return [(start, min(start + chunk_size, length)) for start in range(0, length, chunk_size)]


def _to_user_layout(x_nd: Tensor) -> Tensor:
    """(..., G, N, Dg) -> (..., D, N): a permuted view, reshaped (copied only where it must be)."""
    *lead, groups, state, per_group = x_nd.shape
    return x_nd.transpose(-1, -2).reshape(*lead, groups * per_group, state)


def _to_internal_layout(x: Tensor, groups: int) -> Tensor:
    """(..., D, N) -> (..., G, N, Dg), contiguous."""
    *lead, channels, state = x.shape
    return x.reshape(*lead, groups, channels // groups, state).transpose(-1, -2).contiguous()


def _chunk_buffers(like: Tensor, chunk_size: int, state: int, count: int) -> list[Tensor]:
    """`count` work buffers (min(chunk_size, L), b, G, N, Dg) for inputs `like` (L, b, G, Dg).

    Allocated once per call and reused by every chunk: allocating them per chunk cost more than the arithmetic once
    the allocator handed out fresh pages (measured 2-3x slower, most of it system time).
    """
    length, batch, groups, per_group = like.shape
    shape = (min(chunk_size, length), batch, groups, state, per_group)
    return [like.new_empty(shape) for _ in range(count)]


class _ChunkedSelectiveScan(torch.autograd.Function):
    """Internal layout in, see above: u, delta (L, b, G, Dg); A_nd (G, N, Dg); B, C (L, b, G, N); h0 (b, G, N, Dg).

    Returns y (L, b, G, Dg), the last state (b, G, N, Dg) and, if asked, all states written straight into the
    user's layout (b, L, D, N) so that the largest tensor is never copied.
    """

    @staticmethod
    def forward(ctx, u, delta, A_nd, B, C, h0, chunk_size: int, return_states: bool):
        length, batch, groups, per_group = u.shape
        state = A_nd.shape[1]
        bounds = _chunk_bounds(length, chunk_size)
        y = u.new_empty(length, batch, groups, per_group)
        states = u.new_empty(batch, length, groups, per_group, state) if return_states else None
        # The state entering each chunk (and the last one): all the backward needs to recompute a chunk.
        chunk_starts = u.new_zeros(len(bounds) + 1, batch, groups, state, per_group)
        if h0 is not None:
            chunk_starts[0] = h0
        delta_u = delta * u
        A_log2 = A_nd * LOG2_E
        decay_buf, state_buf = _chunk_buffers(u, chunk_size, state, 2)
        for index, (start, stop) in enumerate(bounds):
            decay, hs = decay_buf[: stop - start], state_buf[: stop - start]
            _chunk_decay_and_drive(delta_u[start:stop], delta[start:stop], A_log2, B[start:stop], decay, hs)
            _scan_chunk_inplace(decay, hs, chunk_starts[index])  # hs: the chunk's states (T, b, G, N, Dg)
            _readout(C[start:stop], hs, y[start:stop])
            if states is not None:
                states[:, start:stop] = hs.permute(1, 0, 2, 4, 3)
            chunk_starts[index + 1] = hs[-1]
        ctx.save_for_backward(u, delta, A_nd, B, C, chunk_starts[:-1])
        ctx.chunk_size = chunk_size
        ctx.h0_given = h0 is not None
        ctx.set_materialize_grads(False)  # unused outputs (often last_state, states) give None: skip their work
        if states is not None:
            states = states.view(batch, length, groups * per_group, state)
        return y, chunk_starts[-1].clone(), states

    @staticmethod
    def backward(ctx, grad_y, grad_last, grad_states):
        u, delta, A_nd, B, C, chunk_starts = ctx.saved_tensors
        length, batch, groups, per_group = u.shape
        state = A_nd.shape[1]
        grad_u = torch.empty_like(u)
        grad_delta = torch.empty_like(delta)
        grad_B = torch.empty_like(B)
        grad_C = torch.zeros_like(C)
        grad_A = torch.zeros_like(A_nd)
        # carry: dLoss/dh at the last bar of the chunk being processed, from everything after it.
        carry = grad_last.clone() if grad_last is not None else u.new_zeros(batch, groups, state, per_group)
        if grad_states is not None:
            grad_states = grad_states.view(batch, length, groups, per_group, state)
        delta_u = delta * u
        A_log2 = A_nd * LOG2_E
        buffers = _chunk_buffers(u, ctx.chunk_size, state, 5)
        small = u.new_empty(2, *buffers[0].shape[:3], per_group)  # two (T, b, G, Dg) results
        bounds = _chunk_bounds(length, ctx.chunk_size)
        for index in range(len(bounds) - 1, -1, -1):
            start, stop = bounds[index]
            decay, hs, grad_h, grad_log_decay, scratch = (buf[: stop - start] for buf in buffers)
            grad_delta_u, grad_delta_c = small[0, : stop - start], small[1, : stop - start]
            h_start = chunk_starts[index]
            delta_c, delta_u_c, B_c, C_c = delta[start:stop], delta_u[start:stop], B[start:stop], C[start:stop]
            _chunk_decay_and_drive(delta_u_c, delta_c, A_log2, B_c, decay, hs)
            _scan_chunk_inplace(decay, hs, h_start)  # the chunk's states again (T, b, G, N, Dg)

            # grad_h[t] = dLoss/dh_t = C_t·grad_y_t (+ grad of states_t) + decay[t+1]·grad_h[t+1]
            if grad_y is not None:
                g_y = grad_y[start:stop].unsqueeze(-2)  # (T, b, G, 1, Dg)
                torch.mul(g_y, C_c.unsqueeze(-1), out=grad_h)
                torch.sum(torch.mul(hs, g_y, out=scratch), -1, out=grad_C[start:stop])
            else:
                grad_h.zero_()
            if grad_states is not None:
                grad_h += grad_states[:, start:stop].permute(1, 0, 2, 4, 3)
            _reverse_scan_inplace(decay, grad_h, carry)

            # Through the decay exp(delta·A): its log's gradient is grad_h[t]·h[t-1]·decay[t].
            torch.mul(grad_h[1:], hs[:-1], out=grad_log_decay[1:])
            torch.mul(grad_h[0], h_start, out=grad_log_decay[0])
            grad_log_decay.mul_(decay)  # (T, b, G, N, Dg)
            grad_A += torch.mul(grad_log_decay, delta_c.unsqueeze(-2), out=scratch).sum((0, 1))
            torch.sum(torch.mul(grad_log_decay, A_nd, out=scratch), -2, out=grad_delta_c)  # (T, b, G, Dg)

            # Through the drive delta·u·B, whose gradient is grad_h itself.
            _readout(B_c, grad_h, grad_delta_u)  # sum_n B·grad_h: (T, b, G, Dg)
            torch.sum(torch.mul(grad_h, delta_u_c.unsqueeze(-2), out=scratch), -1, out=grad_B[start:stop])
            torch.mul(grad_delta_u, delta_c, out=grad_u[start:stop])
            torch.addcmul(grad_delta_c, grad_delta_u, u[start:stop], out=grad_delta[start:stop])
        grad_h0 = carry if ctx.h0_given else None
        return grad_u, grad_delta, grad_A, grad_B, grad_C, grad_h0, None, None


def selective_scan_chunked(
    u: Tensor,
    delta: Tensor,
    A: Tensor,
    B: Tensor,
    C: Tensor,
    h0: Tensor | None = None,
    *,
    return_states: bool = False,
    chunk_size: int | None = None,
) -> ScanResult:
    """The fast PyTorch path (any device): chunked bulk ops, one in-place step per bar, hand-written backward.
    chunk_size: bars per chunk; None picks auto_chunk_size."""
    groups = validate_scan_inputs(u, delta, A, B, C, h0)
    if chunk_size is None:
        chunk_size = auto_chunk_size(u.shape[0], u.shape[2], A.shape[1])
    if chunk_size < 1:
        raise ValueError(f"selective_scan: chunk_size must be >= 1, got {chunk_size}")
    dtype = scan_dtype(u, delta, A, B, C)
    batch, length, channels = u.shape
    per_group = channels // groups
    with torch.autocast(device_type=u.device.type, enabled=False):
        # Small re-layouts (no N axis, or no batch/time axes) so that every bar's state is one contiguous block.
        u_i, delta_i = (
            t.to(dtype).transpose(0, 1).reshape(length, batch, groups, per_group).contiguous() for t in (u, delta)
        )
        B_i, C_i = (t.to(dtype).transpose(0, 1).contiguous() for t in (B, C))
        A_nd = _to_internal_layout(A.to(dtype), groups)
        h0_nd = None if h0 is None else _to_internal_layout(h0.to(dtype), groups)
        y, last, states = _ChunkedSelectiveScan.apply(u_i, delta_i, A_nd, B_i, C_i, h0_nd, chunk_size, return_states)
    y = y.view(length, batch, channels).transpose(0, 1)
    return ScanResult(y, _to_user_layout(last), states)


@functools.cache
def fused_kernel_available() -> bool:
    """True when the Triton kernel can run: CUDA present and triton importable (checked once per process)."""
    if not torch.cuda.is_available():
        return False
    try:
        import engine.model.scan_triton  # noqa: F401  (imports triton)
    except ImportError:
        return False
    return True


def selective_scan(
    u: Tensor,
    delta: Tensor,
    A: Tensor,
    B: Tensor,
    C: Tensor,
    h0: Tensor | None = None,
    *,
    return_states: bool = False,
    chunk_size: int | None = None,
) -> ScanResult:
    """Selective scan (see the module docstring), on the fastest path for the tensors' device.

    u, delta: (batch, L, D), delta >= 0 (0 freezes the state); A: (D, N), negative;
    B, C: (batch, L, G, N), channel d reads group d // (D // G); h0: (batch, D, N) or None.
    Returns ScanResult(y (batch, L, D), last_state (batch, D, N), states (batch, L, D, N) or None), float32
    (float64 if the inputs are float64), differentiable in every input. Under autocast it still computes in float32.
    CUDA float32/bf16/fp16 inputs run the fused Triton kernel (its own chunk length); everything else the chunked
    PyTorch path with `chunk_size` bars per chunk (None: auto_chunk_size, sized for the CPU's cache).
    """
    validate_scan_inputs(u, delta, A, B, C, h0)
    if u.is_cuda and scan_dtype(u, delta, A, B, C) != torch.float64 and fused_kernel_available():
        from engine.model.scan_triton import selective_scan_triton

        return ScanResult(*selective_scan_triton(u, delta, A, B, C, h0, return_states=return_states))
    return selective_scan_chunked(u, delta, A, B, C, h0, return_states=return_states, chunk_size=chunk_size)
