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
