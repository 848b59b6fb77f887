"""Command line: train the hybrid model walk-forward, write a checkpoint, score it against the baselines.

The shipped demo checkpoint (assets/demo_checkpoint) is made by exactly this command (SYNTHETIC data):

    .venv/bin/python -m engine.train --demo 1h --out assets/demo_checkpoint --run-id demo-1h --no-register

Cached real data:

    .venv/bin/python -m engine.train --db data/bars.duckdb --symbols BTC SPY AAPL --interval 1d --folds 4

When the symbols' histories start at dates so far apart that the full history cannot be trained on (SPY from 1993,
BTC from 2014), it trains on their common span, from the latest first bar on, and says so.

A cancelled run (Ctrl-C) keeps its last finished epoch: run the same command with --resume to continue.

The same command runs as several processes under torchrun (engine/training/distributed.py): NCCL on GPUs, gloo on CPUs.

    torchrun --standalone --nproc-per-node 2 -m engine.train --demo 1h --out runs/ddp          # 2 GPUs (or 2 CPU ranks)
    torchrun --standalone --nproc-per-node 2 -m engine.train --demo 1h --parallel folds ...    # one fold per rank

Only rank 0 writes the checkpoint and the registry and scores the run; every rank reads the cache read-only.
Training details (folds, purge, early stopping, seeds, the final model) are in engine/training/loop.py.
"""
from __future__ import annotations

import argparse
import dataclasses
import os
import sys
import threading
from pathlib import Path

from engine.model.checkpoint import (
    CheckpointError,
    new_run_id,
    resolve_runs_dir,
)
from engine.runtime import configure_cpu_threads
from engine.training.config import TrainConfig, TrainingError
from engine.training.distributed import (
    PARALLEL_MODES,
    DistContext,
    DistributedError,
    broadcast_bytes,
    init_distributed,
    launched_by_torchrun,
    local_world_size,
    shutdown,
)
from engine.training.peer_presets import PRESETS, apply_preset
from engine.training.presets import demo_config, general_config

# --recipe: the general recipe (chosen on the planted family's validation members) is what every run gets, the
# shipped demo checkpoint included; "demo" is the recipe tuned on the demo market alone, kept for comparison
RECIPES = {"general": general_config, "demo": demo_config}
from engine.training.progress import ConsoleProgressBar
from engine.training.run import run_training
from engine.training.settings import on_training_span

# command-line name -> TrainConfig field; every one defaults to the base config (the --recipe's)
CONFIG_OPTIONS = {
    "folds": "n_folds", "mode": "fold_mode", "min_train": "min_train", "val_size": "val_size",
    "test_size": "test_size", "epochs": "max_epochs", "patience": "patience", "lr": "lr",
    "batch_size": "batch_size", "window": "window", "stride": "stride", "seed": "seed", "device": "device",
}


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m engine.train", description=__doc__.split("\n\n")[0])
    data = p.add_argument_group("data (one of --demo or --symbols/--interval)")
    data.add_argument("--demo", choices=("1d", "1h"), help="train on the synthetic demo market at this interval")
    data.add_argument("--variant", default="planted", choices=("planted", "null"), help="demo variant")
    data.add_argument("--demo-seed", type=int, default=7, help="demo market seed")
    data.add_argument("--db", help="DuckDB bar cache (default: the app's cache)")
    data.add_argument("--symbols", nargs="+")
    data.add_argument("--interval")
    data.add_argument("--start")
    data.add_argument("--end")
    run = p.add_argument_group("training")
    run.add_argument("--preset", choices=tuple(PRESETS), default="hybrid",
                     help="the model: the hybrid, or a peer trained by the same recipe (engine/training/peer_presets.py)")
    run.add_argument("--recipe", choices=tuple(RECIPES), default="general",
                     help="general (default): the recipe chosen on the planted family, for any data and the demo "
                          "checkpoint; demo: the one tuned on the demo market alone (for comparison)")
    run.add_argument("--folds", type=int)
    run.add_argument("--mode", choices=("expanding", "rolling"))
    run.add_argument("--min-train", type=int, help="rows in the first training span")
    run.add_argument("--val-size", type=int)
    run.add_argument("--test-size", type=int)
    run.add_argument("--epochs", type=int, help="most epochs per fold")
    run.add_argument("--patience", type=int)
    run.add_argument("--lr", type=float)
    run.add_argument("--batch-size", type=int)
    run.add_argument("--window", type=int)
    run.add_argument("--stride", type=int)
    run.add_argument("--seed", type=int)
    run.add_argument("--device", help="cpu or cuda (default: cuda when present)")
    run.add_argument("--threads", type=int, help="torch CPU threads (default: all cores, at most 4; under torchrun "
                                                 "the cores shared between this node's processes)")
    run.add_argument("--parallel", choices=PARALLEL_MODES, default="data",
                     help="under torchrun: 'data' trains every fold on all ranks (DistributedDataParallel, the "
                          "global batch is --batch-size), 'folds' trains one fold per rank")
    out = p.add_argument_group("output")
    out.add_argument("--out", help="run directory (default: <runs dir>/<run id>)")
    out.add_argument("--run-id")
    out.add_argument("--runs-dir", help="registry directory (default: $REGIME_RUNS or data/runs)")
    out.add_argument("--no-register", action="store_true", help="do not list the run in the registry")
    out.add_argument("--no-evaluate", action="store_true", help="skip scoring against the baselines")
    out.add_argument("--resume", action="store_true", help="continue an unfinished run in --out")
    return p


def config_from_args(args: argparse.Namespace, loaded=None) -> TrainConfig:
    """The base config, with every option given on the command line applied. The base: the tuned demo config for
    --demo; for cached data the folds sized to the panel's length, as the app's Model page does
    (engine.training.settings.settings_for_panel)."""
    recipe = RECIPES[getattr(args, "recipe", "general")]
    if args.demo:
        base = recipe(args.demo)
    elif loaded is not None:
        from engine.training.settings import settings_for_panel

        # sized to the assets' common span when their histories start too far apart for the full one
        base = settings_for_panel(loaded.panel, loaded.interval, n_folds=args.folds or 3, recipe=recipe)
    else:
        base = TrainConfig()
    given = {field: getattr(args, option) for option, field in CONFIG_OPTIONS.items()
             if getattr(args, option) is not None}
    threads = args.threads
    if threads is None and launched_by_torchrun():  # the node's cores split between its processes
        threads = max(1, min((os.cpu_count() or 1) // local_world_size(), 4))
    config = dataclasses.replace(base, **given, threads=configure_cpu_threads(threads))
    return apply_preset(config, getattr(args, "preset", "hybrid"))  # after --window: the transformer's context


def load_data(args: argparse.Namespace):
    from storage.panel import cached_panel, demo_panel

    if args.demo and (args.symbols or args.interval or args.db):
        raise ValueError("choose --demo OR --symbols/--interval (cached data), not both")
    if args.demo:
        return demo_panel(args.demo, args.variant, args.demo_seed)
    if not (args.symbols and args.interval):
        raise ValueError("no data chosen: pass --demo 1d, or --symbols ... --interval ... [--db PATH]")
    return cached_panel(args.symbols, args.interval, db_path=args.db, start=args.start, end=args.end)


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.resume and not args.out:
        print("train: --resume needs --out (the run directory to continue)", file=sys.stderr)
        return 2
    cancel = threading.Event()
    ctx = DistContext.single("cpu")
    try:
        ctx = init_distributed(args.device)
        loaded = load_data(args)  # every rank reads the cache, read-only
        config = config_from_args(args, loaded)
        loaded, span_note = on_training_span(loaded, config)  # run_training would do the same; said here first
        if span_note and ctx.is_main:
            print(f"train: {span_note}", file=sys.stderr)
        # One run id for all ranks (rank 0's), so they agree on the run directory.
        run_id = broadcast_bytes(ctx, (args.run_id or new_run_id("demo" if args.demo else "run")).encode()
                                 if ctx.is_main else None, src=0).decode()
        run_dir = Path(args.out) if args.out else resolve_runs_dir(args.runs_dir) / run_id
        if loaded.synthetic and ctx.is_main:
            print(f"training on {loaded.label}", file=sys.stderr)
        if ctx.active and ctx.is_main:
            print(f"torchrun: {ctx.world_size} processes, {ctx.backend}, parallel over {args.parallel}",
                  file=sys.stderr)
        try:
            run = run_training(loaded, config, run_dir, evaluate=not args.no_evaluate,
                               register=not args.no_register, runs_dir=args.runs_dir, is_main=ctx.is_main,
                               run_id=run_id, progress=ConsoleProgressBar() if ctx.is_main else None,
                               cancel=cancel, resume=args.resume, dist=ctx, parallel=args.parallel)
        except KeyboardInterrupt:
            # The loop only sees Ctrl-C between steps through this flag when run in a thread; here the interrupt
            # lands mid-step, and the last finished epoch is what --resume continues from.
            print(f"\ninterrupted: rerun with --resume --out {run_dir} to continue", file=sys.stderr)
            return 130
        if not run.finished:
            print(run.result.message, file=sys.stderr)
            return 1
        if not ctx.is_main:  # rank 0 alone scores, registers and reports the run
            return 0
        print(run.result.message, file=sys.stderr)
        if run.scores is not None:
            from engine.evaluation.run_scores import wide_table

            print(wide_table(run.scores, horizon=1).to_string(float_format="{:.4g}".format))
    except (TrainingError, CheckpointError, DistributedError, ValueError) as error:
        where = f" (rank {ctx.rank} of {ctx.world_size})" if ctx.active else ""
        print(f"train{where}: {error}", file=sys.stderr)
        return 2
    finally:
        shutdown(ctx)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
