"""The one interface every layer of the model's stack keeps, so that HybridModel runs them all in one loop.

A layer (engine.model.ssm.SelectiveSSMBlock, engine.model.attention.LeadLagAttention) maps the residual stream
x (B, T, A, M) to a new stream of the same shape, and says what it saw on the way (its readout). It runs in two
modes with the same call signature and the same result:

    layer(x, mask, state, return_state=..., readout=...)       a window of T bars (training, history)
    layer.step(x, mask, state, return_state=..., readout=...)  one new bar, T = 1, in O(1) from the state

    -> LayerOutput(x (B, T, A, M), state after the last bar or None, readout or None)

Why two methods and not one: a window and a bar want different arithmetic for the same numbers (the SSM's
chunked scan against its one-step recurrence), and a forward call that happens to get one bar must not switch
arithmetic behind the caller's back. Attention's step IS its forward with T = 1 and the cached bars as history.

state None means "before the first bar" (init_state's zeros). readout=True asks for the layer's diagnostics in
the stream's (B, T, A, .) layout: SSMDiagnostics for an SSM block, AttentionWeights for attention. A closed bar
(mask False) is inert in every layer: the layer adds nothing to that asset's stream there.
"""
from __future__ import annotations

from collections.abc import Callable
from typing import Any, NamedTuple, Protocol

import torch
from torch import Tensor


class LayerOutput(NamedTuple):
    output: Tensor  # (B, T, A, M) the residual stream after the layer
    state: Any  # the layer's state after the last bar (a dataclass of tensors), or None when not asked
    readout: Any  # the layer's diagnostics, or None when not asked


class Layer(Protocol):
    def __call__(self, x: Tensor, mask: Tensor, state: Any = None, *, return_state: bool = False,
                 readout: bool = False) -> LayerOutput: ...

    def step(self, x: Tensor, mask: Tensor, state: Any = None, *, return_state: bool = True,
             readout: bool = False) -> LayerOutput: ...

    def init_state(self, batch: int, *, device: torch.device | str | None = None,
                   dtype: torch.dtype | None = None) -> Any: ...


# ----- the batch-1 fast path of step mode ---------------------------------------------------------------------
#
# Live stepping takes one bar of one batch at a time: every op works on a few hundred numbers, so the time is the
# ops' dispatch, not their arithmetic. The fast path does the same arithmetic in fewer ops: weights that only
# depend on parameters (the norm gain folded into the next projection, A = -exp(A_log), the lag and source
# embeddings in the key layout) are derived once and kept until a parameter changes, and batch 1 makes the
# model's (B, A, .) layout and the per-asset matmuls' (A, B, .) layout the same memory, so no transposes.


def fast_step_applies(module: torch.nn.Module, *tensors: Tensor) -> bool:
    """Whether the batch-1 fast path may run: inference (no autograd, eval mode, no autocast), batch 1, plain
    tensors (not a tracer's or an exporter's fake ones: torch.export and the ONNX exporter see the plain path)."""
    if module.training or torch.is_grad_enabled() or torch.jit.is_tracing() or torch.compiler.is_compiling():
        return False
    if any(type(t) is not torch.Tensor for t in tensors) or tensors[0].shape[0] != 1:
        return False
    device_type = tensors[0].device.type
    return not torch.is_autocast_enabled(device_type)


def derived_weights(module: torch.nn.Module, build, sources: Callable[[], tuple[Tensor, ...]]):
    """build() -> tensors derived from the parameters sources() names, cached on `module` until one changes: when
    its version counter moves (an optimiser step, load_state_dict's copy_) or its storage, dtype or device does
    (model.to(...)), or the parameter object itself is replaced (load_state_dict(assign=True)), so a stale
    derivation is never used. The check reads each parameter from its owner's parameter dict, which costs far less
    than looking it up through nn.Module's attributes again."""
    state = module.__dict__.get("_derived_weights")
    if state is not None and not all(slot[name] is t for (slot, name), t in zip(state["slots"], state["sources"])):
        state = None  # a parameter object was replaced: find them again
    if state is None:
        tensors = tuple(sources())
        owners = {id(p): (m._parameters, n) for m in module.modules() for n, p in m._parameters.items()}
        state = {"sources": tensors, "slots": tuple(owners[id(t)] for t in tensors), "key": None, "value": None}
        module.__dict__["_derived_weights"] = state
    key = tuple((t._version, t.data_ptr(), t.dtype, t.device) for t in state["sources"])
    if state["key"] != key:
        with torch.no_grad():
            state["value"] = build()
        state["key"] = key
    return state["value"]
