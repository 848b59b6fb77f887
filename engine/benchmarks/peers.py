"""Does the hybrid earn its cost? The hybrid against its neural peers, trained by one recipe on the same folds.

Variants (engine.training.peer_presets): the hybrid (per-asset SSM, cross-asset attention, SSM: ssm, attn, ssm, with
the lead path), pure SSM (no attention, no lead path), a per-asset causal Transformer and a per-asset LSTM of the
same width and depth, late fusion (ssm, ssm, attn: attention only as the last layer) and the hybrid trained with the
cost-aware objective. One base recipe (BENCH_RECIPE: the demo recipe cut short, quick_config, with the hybrid's
three-layer pattern and a mean head), its folds sized to each dataset (engine.training.settings.settings_for_panel),
the same seeds; only the model (or the objective) differs.

Datasets: held-out members of the planted family (storage.sources.planted_family, SYNTHETIC, 1h, 3 assets; their
kinds are drawn: lead-lag, regimes, memory or none) and the daily vendor files of tests/fixtures/vendor_downloads.py
(Yahoo-layout daily CSVs of BTC-USD, SPY, AAPL imported through storage.refresh into a scratch cache: the product's
real-file path; their prices are the demo market's, so SYNTHETIC too).

The table, per dataset and variant, on the walk-forward test spans at horizon 1 (the reference chapter's columns):
  mse/zero     mean squared error of the mean forecast / that of the zero forecast (< 1: beats zero), all assets
  pinball      mean pinball loss of the return quantiles;  qlike: the volatility forecast's QLIKE
  brier        direction Brier score (0.25 = a coin)
  sharpe       annualised Sharpe after costs of the Backtest page's default strategy (P(up) threshold 0.02,
               long/short, 1 + 2 bps per unit turnover) on the variant's forecasts; b&h: buy-and-hold's over the same
               bars; dsr: the deflated Sharpe ratio counting every variant as a trial (their Sharpe variance)
  vs hybrid    for mse, brier, qlike: the one-sided Diebold-Mariano test of the variant against the hybrid on the
               asset-averaged loss per bar, in the direction observed ("better p=..."/"worse p=..."), Holm-corrected
               over the dataset's comparisons
  params, s    parameters, and training seconds (all folds)
The pooled rows average the members' scores and Sharpe ratios and test on their bars together.

    python -m engine.benchmarks.peers [--members N] [--device cuda] [--daily-fixture | --no-daily-fixture]
                                      [--workers W] [--bars B] [--epochs E]

Sized for about 10 minutes on a 2-core CPU at the defaults (2 members, 2 folds, at most 6 epochs, 2 workers).
`python -m engine.bench` runs one member and the daily files.
"""
from __future__ import annotations

import argparse
import dataclasses
import math
import os
import tempfile
import time
import warnings
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from multiprocessing import get_context
from pathlib import Path

import numpy as np

VARIANTS = ("hybrid", "pure_ssm", "transformer", "lstm", "late_fusion", "cost_aware")
DEFAULT_MEMBERS = 2
BENCH_MEMBERS = 1
MEMBER_BARS = 3000  # 1h bars per planted member: ~4 months
N_ASSETS = 3
FOLDS = 2
EPOCHS = 6
PATIENCE = 2
STRIDE = 64
HORIZON = 1
TESTED_LOSSES = ("mse", "brier", "qlike")
HYBRID_PATTERN = ("ssm", "attn", "ssm")


def bench_recipe(interval: str):
    """The base every variant shares: quick_config (the demo recipe cut short) with the hybrid's three levels
    (per-asset SSM, cross-asset attention, SSM on the mixed streams) and a mean head. No skip paths: the peers
    cannot have them (they read through the lead path), and the comparison is of architectures."""
    from engine.training.presets import quick_config

    base = quick_config(interval)
    model = dataclasses.replace(base.model, layer_pattern=HYBRID_PATTERN, point_head=True,
                                skip_paths=False, vol_skip_features=(), span_feature=None)
    return dataclasses.replace(base, model=model)


def variant_config(loaded, variant: str, *, epochs: int, device: str, seed: int = 0):
    from engine.training.peer_presets import apply_preset
    from engine.training.settings import settings_for_panel

    sized = settings_for_panel(loaded.panel, loaded.interval, n_folds=FOLDS, max_epochs=epochs, seed=seed,
                               recipe=bench_recipe)
    sized = dataclasses.replace(sized, patience=PATIENCE, stride=max(sized.stride, STRIDE), device=device, threads=1)
    return apply_preset(sized, variant)


# ----- data -----------------------------------------------------------------------------------------------------------


def planted_members(n_members: int, n_bars: int = MEMBER_BARS) -> dict[str, object]:
    """Held-out members of the planted family (never the validation members the recipes were chosen on)."""
    from storage.sources.planted_family import family_member, family_split

    members = {}
    for seed in family_split(n_members)["held_out"]:
        member = family_member(seed, interval="1h", n_bars=n_bars, n_assets=N_ASSETS)
        members[f"planted {seed} ({member.truth.kind})"] = member
    return members


def daily_fixture(folder: Path):
    """The daily vendor downloads (Yahoo layout) imported into a scratch cache through storage.refresh, then read
    back as a panel: the path a user's own files take."""
    from storage.panel import cached_panel
    from storage.refresh import RefreshRequest, run_refresh
    from tests.fixtures.vendor_downloads import DAILY_FILES, write_downloads

    paths = write_downloads(folder / "downloads")
    db = folder / "bars.duckdb"
    for ticker in DAILY_FILES:
        report = run_refresh(RefreshRequest(symbols=(ticker,), interval="1d", source="csv", db_path=db,
                                            path=paths[ticker], command="engine.benchmarks.peers"))
        if not report.ok:
            raise RuntimeError(f"importing {paths[ticker]} failed: {report.failed[0].message}")
    return cached_panel(list(DAILY_FILES), "1d", db_path=db)


# ----- training (one process per task) ----------------------------------------------------------------------------


@dataclass(frozen=True)
class Task:
    dataset: str
    variant: str
    loaded: object  # LoadedPanel
    run_dir: str
    epochs: int
    device: str


def train_task(task: Task) -> dict:
    import torch

    torch.set_num_threads(1)
    from engine.training.loop import train_panel

    config = variant_config(task.loaded, task.variant, epochs=task.epochs, device=task.device)
    started = time.perf_counter()
    result = train_panel(task.loaded, config, task.run_dir)
    return {"dataset": task.dataset, "variant": task.variant, "run_dir": task.run_dir,
            "seconds": time.perf_counter() - started, "params": result.model.num_parameters(),
            "epochs": [f.epochs_run for f in result.folds]}


def _init_worker() -> None:
    os.environ["OMP_NUM_THREADS"] = "1"
    import torch

    torch.set_num_threads(1)


def train_all(tasks: list[Task], workers: int) -> list[dict]:
    # The slowest first (the LSTM steps through time in Python), so two workers finish together.
    order = sorted(tasks, key=lambda t: (t.variant != "lstm", t.variant != "transformer"))
    if workers <= 1:
        return [train_task(task) for task in order]
    with ProcessPoolExecutor(max_workers=workers, mp_context=get_context("spawn"), initializer=_init_worker) as pool:
        return list(pool.map(train_task, order, chunksize=1))


# ----- scoring ------------------------------------------------------------------------------------------------------


@dataclass
class Scored:
    """One variant on one dataset: its pooled losses, its per-bar asset-averaged losses (for the tests), its
    backtest's net returns and Sharpe ratios."""

    losses: dict[str, float]
    per_bar: dict[str, np.ndarray]  # loss -> (T_test,) mean over assets, NaN where no asset was scored
    net_returns: np.ndarray
    sharpe: float | None
    sharpe_per_period: float | None
    buy_and_hold: float | None


def _losses(predictions, targets, horizon: int) -> tuple[dict[str, float], dict[str, np.ndarray]]:
    from engine.evaluation.scores import (
        brier_losses,
        pinball_losses,
        qlike_losses,
        squared_errors,
    )

    j_pred, j_true = predictions.horizons.index(horizon), targets.horizons.index(horizon)
    rows = predictions.rows
    valid = targets.valid[:, rows, j_true]  # (A, n)
    y = np.where(valid, targets.log_return[:, rows, j_true], np.nan)
    per_asset = {
        "mse": squared_errors(y, predictions.point[:, :, j_pred]),
        "zero": squared_errors(y, np.zeros_like(y)),
        "pinball": np.stack([pinball_losses(y[a], predictions.quantiles[a, :, j_pred], predictions.quantile_levels)
                             for a in range(len(y))]),
        "brier": np.where(valid, brier_losses(targets.direction[:, rows, j_true], predictions.prob_up[:, :, j_pred]),
                          np.nan),
        "qlike": qlike_losses(np.where(valid, targets.realised_vol[:, rows, j_true], np.nan),
                              predictions.volatility[:, :, j_pred]),
    }
    per_asset = {k: np.where(np.isfinite(v), v, np.nan) for k, v in per_asset.items()}
    with np.errstate(invalid="ignore"), warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # a bar no asset was scored on: NaN, as wanted
        pooled = {k: float(np.nanmean(v)) for k, v in per_asset.items()}
        per_bar = {k: np.nanmean(v, axis=0) for k, v in per_asset.items() if k in TESTED_LOSSES}
    pooled["mse_ratio"] = pooled["mse"] / pooled.pop("zero")
    return pooled, per_bar


def score_variant(loaded, run_dir: str, targets, interval: str) -> Scored:
    from engine.backtest.engine import StrategyConfig, run_backtest
    from engine.backtest.inputs import backtest_inputs_from_forecasts
    from engine.evaluation.predictions import load_predictions

    predictions, _, _ = load_predictions(run_dir)
    losses, per_bar = _losses(predictions, targets, HORIZON)
    shape = (len(loaded.panel.symbols), len(loaded.panel.ts), len(predictions.horizons))
    prob_up, vol = np.full(shape, np.nan), np.full(shape, np.nan)
    prob_up[:, predictions.rows], vol[:, predictions.rows] = predictions.prob_up, predictions.volatility
    inputs = backtest_inputs_from_forecasts(loaded.panel, prob_up, vol, predictions.horizons, HORIZON, interval)
    result = run_backtest(inputs, StrategyConfig())
    return Scored(losses, per_bar, result.portfolio_net_returns, result.metrics.sharpe, result.sharpe_per_period,
                  result.benchmark.metrics.sharpe)


def deflated_sharpes(scored: dict[str, Scored]) -> dict[str, float | None]:
    """Each variant's deflated Sharpe ratio, every variant counted as a trial (the variance of their Sharpes)."""
    from engine.backtest.metrics import TrialCounter, deflated_sharpe_ratio

    trials = TrialCounter()
    for name, s in scored.items():
        trials.record(name, s.sharpe_per_period)
    return {name: deflated_sharpe_ratio(s.net_returns, trials) for name, s in scored.items()}


def verdicts_against_hybrid(per_bar: dict[str, dict[str, np.ndarray]]) -> dict[tuple[str, str], str]:
    """{(variant, loss): "better p=0.012" / "worse p<0.001" / "-"}: one-sided DM of each variant against the hybrid in
    the direction observed, Holm-corrected over every (variant, loss, direction) of the dataset."""
    from engine.evaluation.scores import diebold_mariano
    from engine.evaluation.skill import adjusted_p_values

    cells, raw = [], []
    for variant, losses in per_bar.items():
        if variant == "hybrid":
            continue
        for loss in TESTED_LOSSES:
            result = diebold_mariano(per_bar["hybrid"][loss], losses[loss], HORIZON)
            # a = hybrid: p_a_worse = "the hybrid's loss is higher" = the variant is better
            cells.append((variant, loss, result.mean_difference))
            raw += [result.p_a_worse, result.p_a_better]
    raw = np.asarray(raw, dtype=float)
    corrected = np.full(len(raw), np.nan)
    usable = np.isfinite(raw)
    if usable.any():
        corrected[usable] = adjusted_p_values(raw[usable], "holm")
    out = {}
    for i, (variant, loss, difference) in enumerate(cells):
        p_better, p_worse = corrected[2 * i], corrected[2 * i + 1]
        if not math.isfinite(difference) or not math.isfinite(p_better):
            out[(variant, loss)] = "-"
        elif difference > 0:  # the hybrid's loss is higher
            out[(variant, loss)] = f"better {_p(p_better)}"
        else:
            out[(variant, loss)] = f"worse {_p(p_worse)}"
    return out


def _p(p: float) -> str:
    return "p<0.001" if p < 1e-3 else f"p={p:.3f}"


def _fmt(value, spec: str = ".4f") -> str:
    """A cell as text (engine.bench's table would print every float with 2 decimals: 3e-5 losses as 0.00)."""
    return "-" if value is None or not math.isfinite(value) else format(float(value), spec)


def dataset_rows(name: str, scored: dict[str, Scored], trained: dict[str, dict]) -> list[dict]:
    dsr = deflated_sharpes(scored)
    tests = verdicts_against_hybrid({v: s.per_bar for v, s in scored.items()})
    rows = []
    for variant, s in scored.items():
        row = {"data": name, "variant": variant, "mse/zero": _fmt(s.losses["mse_ratio"]),
               "pinball": _fmt(s.losses["pinball"], ".3e"), "qlike": _fmt(s.losses["qlike"]),
               "brier": _fmt(s.losses["brier"]), "sharpe": _fmt(s.sharpe, ".2f"), "b&h": _fmt(s.buy_and_hold, ".2f"),
               "dsr": _fmt(dsr[variant], ".3f")}
        for loss in TESTED_LOSSES:
            row[f"{loss} vs hybrid"] = "(reference)" if variant == "hybrid" else tests[(variant, loss)]
        row["params"] = trained[variant]["params"]
        row["s"] = f"{trained[variant]['seconds']:.0f}"
        rows.append(row)
    return rows


def pooled_rows(name: str, per_dataset: dict[str, dict[str, Scored]], trained: dict[str, dict[str, dict]]
                ) -> list[dict]:
    """The members together: mean scores and Sharpes, mean DSR, tests on every member's bars at once."""
    variants = list(next(iter(per_dataset.values())))
    dsrs = {d: deflated_sharpes(scored) for d, scored in per_dataset.items()}
    per_bar = {v: {loss: np.concatenate([per_dataset[d][v].per_bar[loss] for d in per_dataset])
                   for loss in TESTED_LOSSES} for v in variants}
    tests = verdicts_against_hybrid(per_bar)

    def mean(values):
        values = [v for v in values if v is not None and math.isfinite(v)]
        return float(np.mean(values)) if values else None

    rows = []
    for variant in variants:
        scores = [per_dataset[d][variant] for d in per_dataset]
        row = {"data": name, "variant": variant, "mse/zero": _fmt(mean([s.losses["mse_ratio"] for s in scores])),
               "pinball": _fmt(mean([s.losses["pinball"] for s in scores]), ".3e"),
               "qlike": _fmt(mean([s.losses["qlike"] for s in scores])),
               "brier": _fmt(mean([s.losses["brier"] for s in scores])),
               "sharpe": _fmt(mean([s.sharpe for s in scores]), ".2f"),
               "b&h": _fmt(mean([s.buy_and_hold for s in scores]), ".2f"),
               "dsr": _fmt(mean([dsrs[d][variant] for d in per_dataset]), ".3f")}
        for loss in TESTED_LOSSES:
            row[f"{loss} vs hybrid"] = "(reference)" if variant == "hybrid" else tests[(variant, loss)]
        row["params"] = trained[next(iter(per_dataset))][variant]["params"]
        row["s"] = f"{sum(trained[d][variant]['seconds'] for d in per_dataset):.0f}"
        rows.append(row)
    return rows


# ----- the benchmark ----------------------------------------------------------------------------------------------


def measure(n_members: int = DEFAULT_MEMBERS, device: str = "cpu", workers: int = 2, daily: bool = True,
            n_bars: int = MEMBER_BARS, epochs: int = EPOCHS, variants: tuple[str, ...] = VARIANTS
            ) -> tuple[list[dict], dict]:
    """-> the table's rows, and a record of the run (datasets, seconds)."""
    from engine.targets import compute_targets

    started = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="peers-bench-") as scratch:
        datasets = planted_members(n_members, n_bars) if n_members else {}
        if daily:
            datasets["daily vendor files"] = daily_fixture(Path(scratch))
        tasks = [Task(name, variant, loaded, str(Path(scratch) / "runs" / f"{i}-{variant}"), epochs, device)
                 for i, (name, loaded) in enumerate(datasets.items()) for variant in variants]
        results = train_all(tasks, workers)
        trained: dict[str, dict[str, dict]] = {}
        for r in results:
            trained.setdefault(r["dataset"], {})[r["variant"]] = r
        rows, member_scores = [], {}
        for name, loaded in datasets.items():
            targets = compute_targets(loaded.panel, (1, 5, 20))
            scored = {v: score_variant(loaded, trained[name][v]["run_dir"], targets, loaded.interval)
                      for v in variants}
            rows += dataset_rows(name, scored, trained[name])
            if name.startswith("planted"):
                member_scores[name] = scored
        if len(member_scores) > 1:
            rows += pooled_rows(f"planted, {len(member_scores)} members pooled", member_scores, trained)
    record = {"seconds": round(time.perf_counter() - started, 1), "datasets": list(datasets), "workers": workers,
              "epochs": epochs, "folds": FOLDS, "device": device,
              "epochs_run": {f"{r['dataset']}/{r['variant']}": r["epochs"] for r in results}}
    return rows, record


def rows(device) -> list[dict]:
    """`python -m engine.bench`: one planted member and the daily files."""
    table, record = measure(BENCH_MEMBERS, str(device), workers=min(os.cpu_count() or 1, 2))
    return table + [{"data": "run", "variant": f"{record['seconds']} s, {record['workers']} workers; "
                                              f"`python -m engine.benchmarks.peers --members 10` for more members"}]


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m engine.benchmarks.peers", description=__doc__.split("\n\n")[0])
    parser.add_argument("--members", type=int, default=DEFAULT_MEMBERS, help="held-out planted members")
    parser.add_argument("--device", default="cpu", help="cpu or cuda")
    parser.add_argument("--workers", type=int, default=None, help="training processes (default: 2 on CPU, 1 on GPU)")
    parser.add_argument("--bars", type=int, default=MEMBER_BARS, help="1h bars per planted member")
    parser.add_argument("--epochs", type=int, default=EPOCHS, help="most epochs per fold")
    parser.add_argument("--variants", nargs="+", default=list(VARIANTS), choices=VARIANTS)
    daily = parser.add_mutually_exclusive_group()
    daily.add_argument("--daily-fixture", dest="daily", action="store_true", default=True,
                       help="also the daily vendor files (default)")
    daily.add_argument("--no-daily-fixture", dest="daily", action="store_false")
    args = parser.parse_args(argv)
    from engine.bench import format_table

    workers = args.workers or (1 if args.device.startswith("cuda") else min(os.cpu_count() or 1, 2))
    variants = tuple(dict.fromkeys(["hybrid", *args.variants]))  # the tests need the hybrid
    table, record = measure(args.members, args.device, workers, args.daily, args.bars, args.epochs, variants)
    print(f"# The hybrid and its peers (SYNTHETIC data), horizon {HORIZON}, walk-forward test spans\n")
    print(f"{record['seconds']} s on {args.device} with {workers} workers; {FOLDS} folds, at most {args.epochs} epochs; "
          f"datasets: {', '.join(record['datasets'])}\n")
    print(format_table(table))
    print(f"\nepochs run per fold: {record['epochs_run']}")


if __name__ == "__main__":
    main()
