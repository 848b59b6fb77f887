"""The training step's forward and backward as one CUDA graph, replayed (issue 18: the eager step is launch-bound).

An eager step of the default model issues some 440 kernels, most of them small; on a GPU the host spends longer
issuing them than the GPU running them. engine.model.hybrid.GraphedTrainingStep captures a loss's forward and
backward once and replays the whole of it per step. Here it carries the training loop's real loss (the
standardised multitask loss, balanced per asset when asked, plus the cost-aware term), and the rest of the step
stays as it was: the finiteness checks on the loss and the gradient norm, clipping and AdamW's step run eagerly
after the replay, so a non-finite step is still skipped and counted.

Used when the step runs in one process on a CUDA device, in the process's main thread (graphs_wanted says why;
REGIME_CUDA_GRAPHS=0 turns it off). One graph per fold, captured at the first batch of the full batch size; other
shapes (the last, shorter batch of an epoch) run eagerly. When the capture fails (an op this torch build cannot
capture), the fold trains eagerly and its first epoch's progress message says why.

What a graph changes, and why it is safe:
  * the gradients live in the graph's memory and every replay overwrites them (not accumulated); the eager steps
    beside it therefore zero them in place instead of setting them to None (a None would leave the graph
    writing where .grad no longer points);
  * HybridModel's input check (finite values, shapes) ran on the capture's warm-ups; replays copy new windows of
    the same shapes into the captured inputs. The windows are cut from one validated feature set;
  * dropout draws new numbers at every replay (the CUDA generator's graph-safe offsets), seeded per epoch as before.
A GPU run is not bit-for-bit the CPU run either way (other kernels); the GPU test compares a graphed fold's loss
trajectory with the eager one's (tests/engine/test_gpu_graphed_training.py).
"""
from __future__ import annotations

import os
import threading
from collections.abc import Callable, Mapping

import torch
from torch import Tensor, nn

from engine.model.hybrid import GraphedTrainingStep

GRAPHS_ENV_VAR = "REGIME_CUDA_GRAPHS"


def graphs_wanted(device: torch.device, distributed: bool) -> bool:
    """Whether a fold on `device` trains through a captured graph: one process on CUDA, training in its main thread,
    unless turned off.

    The main thread only: a capture does not survive another thread of the process working on the same GPU meanwhile
    (on an H200, with the model running in a second thread, the capture was invalidated, in CUDA's "global" and
    "thread_local" capture modes alike). The app's training jobs run in a background thread of the server, beside
    pages that run the model, so they train eagerly; `python -m engine.train` and the benchmarks train in their main
    thread."""
    return (device.type == "cuda" and not distributed and os.environ.get(GRAPHS_ENV_VAR, "1") != "0"
            and threading.current_thread() is threading.main_thread())


class GraphedLoss:
    """loss_of(x, mask, targets) -> scalar, run as a replayed CUDA graph for the shapes it was captured at.

        graphed = GraphedLoss(model, loss_of)
        loss = graphed(x, mask, targets)   # a Tensor with the gradients in .grad, or None: run this step eagerly
    """

    def __init__(self, model: nn.Module, loss_of: Callable[[Tensor, Tensor, Mapping[str, Tensor]], Tensor]):
        self.model, self.loss_of = model, loss_of
        self.step: GraphedTrainingStep | None = None
        self.signature: tuple | None = None
        self.failure: str | None = None  # why the capture failed; the fold then trains eagerly
        self._unreported = True

    def take_failure(self) -> str:
        """Why the capture failed, the first time it is asked (the epoch's progress message), else ""."""
        failure, self._unreported = (self.failure or "") if self._unreported else "", False
        return failure

    @property
    def active(self) -> bool:
        """A graph is captured: the parameters' .grad are its memory and must not be set to None."""
        return self.step is not None

    def __call__(self, x: Tensor, mask: Tensor, targets: Mapping[str, Tensor]) -> Tensor | None:
        keys = tuple(sorted(targets))
        inputs = (x, mask, *(targets[k] for k in keys))
        signature = (keys, *((tuple(t.shape), t.dtype) for t in inputs))
        if self.failure is not None:
            return None
        if self.step is None:
            try:
                self.step = GraphedTrainingStep(
                    self.model, lambda x_, m_, *t_: self.loss_of(x_, m_, dict(zip(keys, t_))), *inputs)
            except RuntimeError as error:  # e.g. an op that synchronises with the host: train eagerly
                self.failure = f"CUDA graph capture failed, training eagerly: {error}"[:300]
                self.model.zero_grad(set_to_none=True)
                torch.cuda.synchronize()
                return None
            self.signature = signature
        elif signature != self.signature:
            return None
        return self.step(*inputs)
