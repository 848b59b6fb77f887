"""One rank of a small training run under torchrun, for tests/engine/test_distributed.py (and runnable alone:
without torchrun it is the one-process reference).

    torchrun --standalone --nproc-per-node 2 tests/engine/distributed_worker.py RUN_DIR [--parallel data|folds]
        [--fail-rank R --fail-after N]   rank R raises inside the model's forward pass on its N-th call
        [--perturb-rank R]               rank R trains on slightly different data (the ranks must refuse)
        [--resume]                       continue the run in RUN_DIR
"""
from __future__ import annotations

import argparse
import dataclasses
import sys

from engine.model.checkpoint import WEIGHTS_FILE, published_files
from engine.model.hybrid import HybridModel
from engine.runtime import configure_cpu_threads
from engine.training.config import TrainConfig, default_model_config
from engine.training.distributed import init_distributed, shutdown
from engine.training.loop import train_walk_forward
from storage.panel import Panel, demo_panel, panel_fingerprint

N_ROWS = 720


def tiny_config(**overrides) -> TrainConfig:
    """Two folds of 15 (then more) windows an epoch: batch 7 over 2 ranks gives shards of 4 and 3 windows, and the
    first fold's last batch of 1 window leaves rank 1 an empty shard. No dropout: its draws depend on how the batch is cut."""
    model = dataclasses.replace(default_model_config(), d_model=8, d_state=4, n_heads=2, max_lag=2, dropout=0.0)
    base = dict(model=model, n_folds=2, min_train=300, val_size=80, test_size=80, window=64, stride=26,
                batch_size=7, max_epochs=2, patience=2, threads=1)
    return TrainConfig(**{**base, **overrides})


def small_panel(perturb: bool = False) -> Panel:
    panel = demo_panel("1d").panel
    fields = {k: v[:N_ROWS].copy() for k, v in panel.fields.items()}
    if perturb:
        fields["close"][100] *= 1.01
    return Panel(ts=panel.ts[:N_ROWS], symbols=panel.symbols, fields=fields,
                      observed=panel.observed[:N_ROWS].copy())


def inject_failure(after_calls: int) -> None:
    """The model's forward pass raises on its `after_calls`-th call in this process (a stand-in for an
    out-of-memory error or a device fault on one rank)."""
    original, calls = HybridModel.forward, [0]

    def failing_forward(self, *args, **kwargs):
        calls[0] += 1
        if calls[0] >= after_calls:
            raise RuntimeError(f"injected failure in forward call {calls[0]}")
        return original(self, *args, **kwargs)

    HybridModel.forward = failing_forward


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("run_dir")
    parser.add_argument("--parallel", default="data")
    parser.add_argument("--fail-rank", type=int)
    parser.add_argument("--fail-after", type=int, default=3)
    parser.add_argument("--perturb-rank", type=int)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--resume", action="store_true")
    args = parser.parse_args(argv)
    configure_cpu_threads(1)
    ctx = init_distributed(args.device)
    try:
        if args.fail_rank == ctx.rank:
            inject_failure(args.fail_after)
        panel = small_panel(perturb=args.perturb_rank == ctx.rank)
        result = train_walk_forward(panel, tiny_config(), interval="1d", fingerprint=panel_fingerprint(panel, "1d"),
                                    run_dir=args.run_dir, run_id="distributed-test", dist=ctx,
                                    parallel=args.parallel, resume=args.resume)
        # Every rank returns only once rank 0 has written the checkpoint (a rank that left earlier and tore down
        # its process group while rank 0 still took in its last fold aborted at exit under CPU load).
        if result.outcome == "finished" and not published_files(args.run_dir)[1].exists():
            raise RuntimeError(f"returned before rank 0 wrote {WEIGHTS_FILE}")
    except Exception as error:  # the message torchrun's log shows for this rank
        print(f"rank {ctx.rank}: {type(error).__name__}: {error}", file=sys.stderr, flush=True)
        return 3
    finally:
        shutdown(ctx)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
