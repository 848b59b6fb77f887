"""Backtest speed: one slider move, a first run, the trades table and two 1,000-setting sweeps (3 assets x 50,000 bars).

The backtest is numpy on the CPU whatever the device; `device` is accepted for engine.bench and ignored.
Budgets (from the brief): a full recompute at most 30 ms, a 1,000-setting sweep at most 5 s, on a 2-core CPU.
Run: python -m engine.benchmarks.backtest
"""
from __future__ import annotations

import os
import platform
import time
from collections.abc import Callable

import numpy as np

from engine.backtest.engine import BacktestInputs, StrategyConfig, run_backtest
from engine.backtest.sweep import sweep
from engine.benchmarks._measure import Timing, verdict

N_BARS = 50_000
SYMBOLS = ("BTC", "SPY", "AAPL")


def synthetic_inputs(seed: int = 0) -> BacktestInputs:
    """Hourly bars: one 24/7 asset and two markets open 7 bars a day, noisy forecasts with a little skill."""
    rng = np.random.default_rng(seed)
    n_assets = len(SYMBOLS)
    tradable = np.ones((N_BARS, n_assets), dtype=bool)
    tradable[:, 1:] = ((np.arange(N_BARS) % 24) < 7)[:, None]
    returns = rng.normal(0.0, 0.01, (N_BARS, n_assets)) * tradable
    hint = np.zeros_like(returns)
    hint[:-1] = returns[1:]
    prob_up = np.clip(0.5 + 2.0 * hint + rng.normal(0.0, 0.06, returns.shape), 0.0, 1.0)
    return BacktestInputs(
        ts=np.datetime64("2019-01-01T00:00:00", "us") + np.arange(N_BARS) * np.timedelta64(3600, "s"),
        symbols=SYMBOLS,
        returns=returns,
        prob_up=prob_up,
        pred_vol=0.01 * np.exp(rng.normal(0.0, 0.2, returns.shape)),
        tradable=tradable,
        bars_per_year=np.array([365 * 24, 252 * 7, 252 * 7], dtype=float),
        horizon=1,
    )


def _timed(run: Callable[[int], object], repeats: int) -> tuple[Timing, Timing]:
    """(wall ms, CPU ms of this process) over the repeats: on a shared machine the two differ."""
    wall, cpu = [], []
    for i in range(repeats):
        start_wall, start_cpu = time.perf_counter(), time.process_time()
        run(i)
        wall.append((time.perf_counter() - start_wall) * 1e3)
        cpu.append((time.process_time() - start_cpu) * 1e3)
    return Timing(tuple(wall)), Timing(tuple(cpu))


def machine() -> str:
    model = platform.processor() or "CPU"
    try:
        with open("/proc/cpuinfo") as cpuinfo:
            model = next(line.split(":", 1)[1].strip() for line in cpuinfo if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    # Fresh pages cost ~5 us each in this VM; glibc's defaults hand freed arrays back and fault them in again.
    malloc = "tuned malloc" if "MALLOC_MMAP_THRESHOLD_" in os.environ else "default malloc"
    return f"{model}, {os.cpu_count()} cores, load {load:.1f}, {malloc}"


def rows(device=None) -> list[dict]:
    del device  # numpy on the CPU
    config = StrategyConfig(threshold=0.02, size_by_confidence=True, vol_target=0.2, commission_bps=2.0)
    inputs = synthetic_inputs()
    run_backtest(inputs, config)  # warm: held signals and the benchmark are now reused, as on a slider move
    slider_moves = [StrategyConfig(**{**config.__dict__, "threshold": 0.01 + 0.001 * i}) for i in range(15)]
    fresh = [synthetic_inputs(seed) for seed in range(11)]  # built beforehand: validation is not timed
    result = run_backtest(inputs, config)
    thresholds = np.linspace(0.0, 0.2, 40)
    costs = np.linspace(0.0, 20.0, 25)
    caps = np.linspace(0.1, 2.0, 25)
    where = machine()
    shape = f"{len(SYMBOLS)} x {N_BARS:,}"

    measured = [
        ("run_backtest, slider move (signals + benchmark reused)", 30.0,
         _timed(lambda i: run_backtest(inputs, slider_moves[i]), 15)),
        ("run_backtest, first run on new inputs", 30.0,
         _timed(lambda i: run_backtest(fresh[i], config), len(fresh))),
        (f"trades_frame ({len(result.trades):,} trades, on demand)", None,
         _timed(lambda i: result.trades_frame(), 7)),
        ("sweep threshold x commission, 1,000 settings", 5000.0,
         _timed(lambda i: sweep(inputs, config, "threshold", thresholds, "commission_bps", costs), 3)),
        ("sweep holding horizon (40) x cap (25), 1,000 settings", 5000.0,
         _timed(lambda i: sweep(inputs, config, "holding_horizon", range(1, 41), "max_position", caps), 3)),
    ]
    return [
        {
            "benchmark": name,
            "assets x bars": shape,
            "median ms": wall.median,
            "spread ms": wall.spread(),
            "median cpu ms": cpu.median,
            "budget ms": "" if budget is None else f"{budget:,.0f}",
            "result": "" if budget is None else verdict(wall.median, budget),
            "machine": where,
        }
        for name, budget, (wall, cpu) in measured
    ]


def main() -> None:
    from engine.bench import format_table

    print(f"# backtest benchmark, numpy {np.__version__}, python {platform.python_version()}\n")
    print(format_table(rows()))


if __name__ == "__main__":
    main()
