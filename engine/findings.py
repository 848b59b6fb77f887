"""What a checkpoint's results claim, each claim tested against a null, in words or as JSON: the same findings the
app's pages state (engine.diagnostics.findings.findings_for_run).

    python -m engine.findings                                   # the shipped demo checkpoint on its demo data
    python -m engine.findings --demo null                       # the same checkpoint on the demo's null variant
    python -m engine.findings --run data/runs/run-... --db data/bars.duckdb --symbols BTC SPY AAPL --interval 1d
    python -m engine.findings --json                            # {"lead_lag": [...], "forecast_skill": [...], "regimes": {...}}
    python -m engine.findings --run assets/demo_checkpoint --ship  # store them with the run (the shipped demo's)

Without data options the panel is the demo a demo run was trained on (engine.evaluate.panel_for_run). The findings
are cached beside the diagnostics ($REGIME_DIAGNOSTICS, default data/diagnostics), so the app and this command
share the work; --no-cache computes them afresh without storing them.
"""
from __future__ import annotations

import argparse
import json
import sys

from engine.diagnostics.findings import findings_for_run
from engine.evaluate import add_run_and_data_arguments
from engine.model.checkpoint import CheckpointError, read_manifest
from storage.panel import cached_panel, demo_panel


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m engine.findings", description=__doc__.split("\n\n")[0])
    add_run_and_data_arguments(parser)
    parser.add_argument("--demo", choices=("planted", "null"),
                        help="run on this variant of the demo market (the run's symbols and interval) instead")
    parser.add_argument("--json", action="store_true", help="print the findings as JSON")
    parser.add_argument("--no-cache", action="store_true", help="compute afresh; store nothing")
    parser.add_argument("--ship", action="store_true",
                        help="also store the findings with the run (RUN/findings/), for the data it was trained on: "
                             "readers with the same key (the app's first start on the demo) take them from there")
    return parser


def main(argv: list[str] | None = None) -> int:
    from engine.evaluate import panel_for_run
    from engine.runtime import configure_cpu_threads

    args = build_parser().parse_args(argv)
    configure_cpu_threads()
    try:
        manifest = read_manifest(args.run)
        if args.db or args.symbols or args.interval:
            if args.demo:
                raise ValueError("--demo reads the demo market: leave out --db, --symbols and --interval")
            if not (args.symbols and args.interval):
                raise ValueError("cached data needs --symbols and --interval (and --db unless the default cache)")
            loaded = cached_panel(args.symbols, args.interval, db_path=args.db, start=args.start, end=args.end)
        elif args.demo:
            loaded = demo_panel(manifest.fingerprint.interval, args.demo, symbols=tuple(manifest.fingerprint.symbols))
        else:
            loaded = panel_for_run(manifest)
        if args.ship and args.no_cache:
            raise ValueError("--ship stores the findings: leave out --no-cache")
        findings = findings_for_run(args.run, loaded, use_cache=not args.no_cache, ship=args.ship)
    except (CheckpointError, ValueError) as error:
        print(f"findings: {error}", file=sys.stderr)
        return 2
    if args.json:
        print(json.dumps(findings.to_json(), indent=1, allow_nan=False))
    else:
        print(findings.report())
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
