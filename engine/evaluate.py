"""Score a training run's out-of-sample forecasts against every baseline on the SAME walk-forward test spans.

    python -m engine.evaluate                                   # the shipped demo checkpoint on its demo data
    python -m engine.evaluate --run data/runs/run-... --db data/bars.duckdb --symbols BTC SPY AAPL --interval 1d

The model's forecasts are the ones the run kept (predictions.npz: each fold's model on its own test span); every
baseline (engine.evaluation.baselines.BASELINES: zero, historical mean, AR(1), DLinear ridge, logistic, GARCH(1,1), HAR,
Markov regime) is refitted on each fold's training span and run over the same test span. The table
(engine.evaluation.scores.score_table: pinball, 10-90 coverage, MSE, Brier, log loss, ECE, hit rate, QLIKE, and the
Diebold-Mariano test of the model against each baseline) is written as scores.csv and scores.json into the run
directory, and a per-asset summary at horizon 1 goes into the manifest's scores, where the app's run list reads it.

The data must be the data the run was trained on (same fingerprint hash): the stored forecasts were made on it.

The hybrid's neural peers (python -m engine.train --preset pure_ssm|transformer|lstm|late_fusion|cost_aware, on the
same data and settings, hence the same folds) score beside the baselines, with the same one-sided tests, as
forecasters named "peer: NAME"; the Forecasts page lists them from the scores this writes:

    python -m engine.evaluate --run runs/hybrid --peers lstm=runs/lstm transformer=runs/transformer ...
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import pandas as pd

from engine.evaluation.baselines import BASELINES
from engine.evaluation.run_scores import (
    SCORES_CSV,
    SCORES_JSON,
    evaluate_run,
    read_manifest,
    wide_table,
)
from engine.model.checkpoint import (
    DEMO_CHECKPOINT_DIR,
    MANIFEST_FILE,
    CheckpointError,
    Manifest,
)
from storage.panel import LoadedPanel, cached_panel, demo_panel


def panel_for_run(manifest: Manifest) -> LoadedPanel:
    """The demo panel a demo run was trained on (its sources say 'demo:<variant>:<seed>')."""
    sources = manifest.fingerprint.sources
    if not sources or not all(s.startswith("demo:") for s in sources):
        raise CheckpointError(f"run {manifest.run_id} was trained on cached data: pass --db, --symbols and --interval")
    _, variant, seed = sources[0].split(":")
    return demo_panel(manifest.fingerprint.interval, variant, int(seed), tuple(manifest.fingerprint.symbols))


def add_run_and_data_arguments(parser: argparse.ArgumentParser) -> None:
    """--run and the data to run it on (the demo it was trained on by default, or the cache): shared by the
    commands that read a run (evaluate, findings)."""
    parser.add_argument("--run", default=str(DEMO_CHECKPOINT_DIR), help="run directory (default: the demo checkpoint)")
    parser.add_argument("--db", help="DuckDB cache to read the panel from (default: the demo the run was trained on)")
    parser.add_argument("--symbols", nargs="+", help="symbols, in the run's order")
    parser.add_argument("--interval", help="bar interval, e.g. 1d")
    parser.add_argument("--start")
    parser.add_argument("--end")


def panel_from_arguments(args: argparse.Namespace) -> LoadedPanel:
    """The panel add_run_and_data_arguments' options choose: the cache (--db, --symbols, --interval, --start,
    --end), or by default the demo panel the run in --run was trained on."""
    if args.db or args.symbols or args.interval:
        if not (args.symbols and args.interval):
            raise ValueError("cached data needs --symbols and --interval (and --db unless the default cache)")
        return cached_panel(args.symbols, args.interval, db_path=args.db, start=args.start, end=args.end)
    return panel_for_run(read_manifest(args.run))


def parse_peers(values) -> dict[str, Path]:
    """["lstm=runs/a", "runs/b"] -> {"lstm": runs/a, "b": runs/b}; ValueError on a name given twice."""
    peers: dict[str, Path] = {}
    for value in values:
        name, _, path = value.rpartition("=") if "=" in value else ("", "", value)
        name = name or Path(path).name
        if name in peers:
            raise ValueError(f"--peers names {name!r} twice")
        peers[name] = Path(path)
    return peers


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m engine.evaluate", description=__doc__.split("\n\n")[0])
    add_run_and_data_arguments(parser)
    parser.add_argument("--baselines", nargs="+", choices=sorted(BASELINES), help="default: all of them")
    parser.add_argument("--peers", nargs="+", metavar="NAME=RUN",
                        help="other runs on the same data and folds (e.g. python -m engine.train --preset lstm) to "
                             "score beside the baselines as 'peer: NAME' (NAME= optional: the folder's name)")
    parser.add_argument("--horizon", type=int, help="print only this horizon")
    parser.add_argument("--no-write", action="store_true", help="print only; do not write scores into the run")
    parser.add_argument("--write-shipped", action="store_true",
                        help="also write into a checkpoint the app ships (assets/): off by default, so scoring the "
                             "demo never changes tracked files")
    return parser


def ships_with_the_app(run_dir: str | Path) -> bool:
    """True for a checkpoint inside the app's own assets/ folder (tracked files, e.g. the demo checkpoint)."""
    return Path(run_dir).resolve().is_relative_to(DEMO_CHECKPOINT_DIR.parent)


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        loaded = panel_from_arguments(args)
        write = not args.no_write and (args.write_shipped or not ships_with_the_app(args.run))
        table = evaluate_run(args.run, loaded, tuple(args.baselines) if args.baselines else None, write=write,
                             peers=parse_peers(args.peers or ()))
    except (CheckpointError, ValueError) as error:
        print(f"evaluate: {error}", file=sys.stderr)
        return 2
    manifest = read_manifest(args.run)
    if all(s.startswith("demo:") for s in manifest.fingerprint.sources):
        print("SYNTHETIC demo data (storage/sources/DEMO.md)")
    with pd.option_context("display.max_rows", None, "display.width", 200, "display.float_format", "{:.4g}".format):
        print(wide_table(table, args.horizon).to_string())
    if not write:
        reason = "--no-write" if args.no_write else "a checkpoint shipped in assets/ (--write-shipped to update it)"
        print(f"\nnothing written: {reason}")
    else:
        print(f"\nwrote {Path(args.run) / SCORES_CSV} and {SCORES_JSON}; summary in {MANIFEST_FILE}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
