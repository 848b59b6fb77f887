"""`python -m engine.bench`: every engine benchmark on whatever device this machine has, as one markdown table.

Each module in engine/benchmarks/ exposes rows(device) -> list[dict]; this script only collects and prints them,
so a benchmark lives next to nothing but its own measurement code.
"""
from __future__ import annotations

import argparse
import importlib
import pkgutil
import platform
import sys

from engine.benchmarks._measure import machine_line
from engine.runtime import configure_cpu_threads, device_label, pick_device


def format_table(rows: list[dict]) -> str:
    if not rows:
        return "(no rows)"
    columns: list[str] = []
    for row in rows:
        for key in row:
            if key not in columns:
                columns.append(key)
    lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    for row in rows:
        cells = []
        for col in columns:
            value = row.get(col, "")
            cells.append(f"{value:,.2f}" if isinstance(value, float) else str(value))
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def run_single(title: str, rows, description: str | None, argv: list[str] | None = None) -> None:
    """The command line of one benchmark module (`python -m engine.benchmarks.NAME [--device cpu|cuda]`): its
    rows(device) as one table under a heading naming the device."""
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--device", default=None, help="cpu or cuda (default: cuda when present)")
    parser.add_argument("--threads", type=int, default=None,
                        help="torch CPU threads (default: all cores, <= 4; 1 on a CPU that others share)")
    args = parser.parse_args(argv)
    configure_cpu_threads(args.threads)
    device = pick_device(args.device)
    print(f"# {title} on {device_label(device)}\n\n{machine_line(device)}\n")
    print(format_table(rows(device)))


def main(argv: list[str] | None = None) -> int:
    from engine import benchmarks

    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--only", nargs="*", help="benchmark modules to run (default: all)")
    parser.add_argument("--device", default=None, help="cpu or cuda (default: cuda when present)")
    parser.add_argument("--threads", type=int, default=None,
                        help="torch CPU threads (default: all cores, <= 4; 1 on a CPU that others share)")
    args = parser.parse_args(argv)

    configure_cpu_threads(args.threads)
    device = pick_device(args.device)
    print(f"# engine benchmarks on {device_label(device)}; python {platform.python_version()}, {platform.machine()}")
    print(f"\n{machine_line(device)}")
    # A leading underscore marks a helper (engine.benchmarks._measure: timing, spread, the machine), not a benchmark.
    names = [m.name for m in pkgutil.iter_modules(benchmarks.__path__) if not m.name.startswith("_")]
    for name in names:
        if args.only and name not in args.only:
            continue
        module = importlib.import_module(f"engine.benchmarks.{name}")
        print(f"\n## {name}\n")
        print(format_table(module.rows(device)), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
