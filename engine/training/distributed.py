"""Training across processes with torch.distributed: torchrun starts the processes, this module joins them.

One process (plain `python -m engine.train`) never touches torch.distributed: `DistContext.single()` stands for it,
and every helper here is then the identity. Under torchrun (WORLD_SIZE > 1 in the environment) `init_distributed`
joins the process group: NCCL when the ranks run on GPUs (one GPU per local rank), gloo on CPUs.

Two ways to spread the work (engine.training reads `ParallelMode`):
  data   every fold is trained by all ranks together, DistributedDataParallel: each global batch of windows is cut
         into one shard per rank, gradients are averaged by DDP, and the loss is normalised by the GLOBAL count of
         valid targets, so W ranks take the same steps as one process with the same global batch.
  folds  walk-forward folds are independent models: fold k is trained by rank k % W alone, and the finished folds
         are sent to rank 0.
Only rank 0 writes anything (resume state, the checkpoint, the run registry); the other ranks only read.

Everything sent between ranks is a tensor or raw bytes (safetensors, npz without pickle, JSON): no pickled objects,
like everything else the product reads back.
"""
from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass
from datetime import timedelta
from typing import Literal

import torch
import torch.distributed as dist
from torch import Tensor

from engine.runtime import pick_device

ParallelMode = Literal["data", "folds"]
PARALLEL_MODES: tuple[str, ...] = ("data", "folds")

# A rank that waits longer than this in a collective gives up with an error instead of hanging (a peer died in a
# way torchrun did not notice, or the ranks disagree about the work). Long enough for rank 0 to forecast a test
# span and write the checkpoint while the others wait.
DEFAULT_TIMEOUT_S = 600
# "gloo" forces gloo on GPUs too (CUDA tensors go through the host): where NCCL is missing, or to let several
# processes share one GPU, which NCCL refuses.
BACKEND_ENV_VAR = "REGIME_DIST_BACKEND"


class DistributedError(RuntimeError):
    """The ranks cannot work together; the message says what differs or what is missing."""


@dataclass(frozen=True)
class DistContext:
    rank: int
    world_size: int
    local_rank: int
    local_world_size: int
    device: torch.device
    backend: str | None  # None: one process, no process group

    @classmethod
    def single(cls, device: torch.device | str | None = None) -> "DistContext":
        return cls(rank=0, world_size=1, local_rank=0, local_world_size=1, device=pick_device(device), backend=None)

    @property
    def active(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def describe(self) -> str:
        if not self.active:
            return "1 process"
        return f"{self.world_size} processes ({self.backend}, rank {self.rank})"


def launched_by_torchrun() -> bool:
    return int(os.environ.get("WORLD_SIZE", "1")) > 1


def local_world_size() -> int:
    return int(os.environ.get("LOCAL_WORLD_SIZE", "1"))


def init_distributed(device: str | None = None, timeout_s: float = DEFAULT_TIMEOUT_S) -> DistContext:
    """Join torchrun's process group (or stand for one process when not under torchrun).

    device: "cpu", "cuda" or None (CUDA when present). Under torchrun with CUDA each local rank takes the GPU of its
    own number; more local ranks than GPUs is an error under NCCL, which refuses two ranks on one GPU (with
    REGIME_DIST_BACKEND=gloo they share the GPUs round robin)."""
    if not launched_by_torchrun():
        return DistContext.single(device)
    rank, world = int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"])
    local_rank, local_world = int(os.environ.get("LOCAL_RANK", "0")), local_world_size()
    chosen = pick_device(device)
    forced = os.environ.get(BACKEND_ENV_VAR)
    if forced not in (None, "", "gloo", "nccl"):
        raise DistributedError(f"{BACKEND_ENV_VAR}={forced!r}: use 'gloo' or 'nccl'")
    backend = forced or ("nccl" if chosen.type == "cuda" else "gloo")
    if backend == "nccl" and chosen.type != "cuda":
        raise DistributedError(f"{BACKEND_ENV_VAR}=nccl needs GPUs; these processes run on the CPU")
    if chosen.type == "cuda":
        n_gpus = torch.cuda.device_count()
        if local_rank >= n_gpus and backend == "nccl":
            raise DistributedError(f"rank {rank}: {local_world} processes on this node but only {n_gpus} GPU(s); "
                                   f"start at most {n_gpus} with torchrun --nproc-per-node, or pass --device cpu")
        chosen = torch.device("cuda", local_rank % n_gpus)
        torch.cuda.set_device(chosen)
    if not dist.is_initialized():
        dist.init_process_group(backend, timeout=timedelta(seconds=timeout_s),
                                device_id=chosen if backend == "nccl" else None)
    return DistContext(rank=rank, world_size=world, local_rank=local_rank, local_world_size=local_world,
                       device=chosen, backend=backend)


def shutdown(ctx: DistContext) -> None:
    if ctx.active and dist.is_initialized():
        dist.destroy_process_group()


# ----- collectives (identity for one process) -----------------------------------------------------------------------


def all_reduce_sum(ctx: DistContext, tensor: Tensor) -> Tensor:
    """Sum over ranks, returned on the tensor's own device (NCCL needs the collective on the GPU)."""
    if not ctx.active:
        return tensor
    on_device = tensor.to(ctx.device).clone()
    dist.all_reduce(on_device, op=dist.ReduceOp.SUM)
    return on_device.to(tensor.device)


def broadcast_bytes(ctx: DistContext, data: bytes | None, src: int) -> bytes:
    """Rank `src`'s bytes on every rank (data is ignored elsewhere): a length, then the payload."""
    if not ctx.active:
        assert data is not None
        return data
    length = torch.tensor([len(data) if ctx.rank == src else 0], dtype=torch.int64, device=ctx.device)
    dist.broadcast(length, src)
    if ctx.rank == src:
        payload = torch.frombuffer(bytearray(data), dtype=torch.uint8).to(ctx.device)
    else:
        payload = torch.empty(int(length.item()), dtype=torch.uint8, device=ctx.device)
    dist.broadcast(payload, src)
    return data if ctx.rank == src else payload.cpu().numpy().tobytes()


def broadcast_float(ctx: DistContext, value: float | None, src: int = 0) -> float:
    if not ctx.active:
        assert value is not None
        return float(value)
    tensor = torch.tensor([value if ctx.rank == src else 0.0], dtype=torch.float64, device=ctx.device)
    dist.broadcast(tensor, src)
    return float(tensor.item())


def check_same_everywhere(ctx: DistContext, value: str, what: str) -> None:
    """Raise on EVERY rank when `value` differs between ranks (e.g. the data's content hash): ranks that trained
    on different data, or resumed from different states, would average gradients of different problems."""
    if not ctx.active:
        return
    mine = hashlib.sha256(value.encode()).digest()
    reference = broadcast_bytes(ctx, mine, src=0)
    differs = all_reduce_sum(ctx, torch.tensor([float(mine != reference)], dtype=torch.float64))
    if differs.item() > 0:
        raise DistributedError(
            f"{what} differs between ranks (rank {ctx.rank} has {value!r}); every rank must see the same data and run directory (on several nodes: the same cache file and a "
            f"run directory on a filesystem they all see)")


def barrier(ctx: DistContext) -> None:
    if ctx.active:
        dist.barrier()


# ----- sharding ---------------------------------------------------------------------------------------------------


def shard_of(batch: Tensor, ctx: DistContext) -> Tensor:
    """This rank's contiguous share of a global batch of window indices (b,) -> (<= ceil(b / W),); may be empty when
    the batch has fewer windows than there are ranks.

    Why not torch's DistributedSampler: it pads the epoch by repeating windows so that every rank gets as many,
    which weighs some windows twice and breaks "W ranks step exactly like one process"; here every global batch is
    the one a single process would draw from the same seeded permutation, and its shards partition it."""
    if not ctx.active:
        return batch
    return torch.tensor_split(batch, ctx.world_size)[ctx.rank]


def owner_of_fold(fold_index: int, ctx: DistContext) -> int:
    """The rank that trains a fold in ParallelMode 'folds': round robin."""
    return fold_index % ctx.world_size
