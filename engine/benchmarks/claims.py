"""Issue 14's acceptance numbers: do the lead-lag claims hold their error rates over the planted family (SYNTHETIC)?

Two claims, each measured on held-out members of the planted family (storage.sources.planted_family) that nothing
was chosen on, with 95% Wilson intervals:

  model-free test   engine.diagnostics.lead_lag_test.lead_lag_findings (HAC regressions, Benjamini-Hochberg at 5%
                    over every pair and lag 0..MAX_LAG). False-positive rate: share of NULL members where any lead
                    (lag >= 1) is declared; nominal 5% (BH keeps P(any discovery) <= fdr under the complete null).
                    Detection rate: share of LEAD members where every planted (target, source, lag) is declared.
  attention map     per member a small model is trained quickly (ATTENTION_RECIPE) and its lead-lag map read as
                    excess over the uninformed model's weights (engine.diagnostics.attention_null). The claim is the
                    largest excess over every (target, source != target, key lag) -- every key lag k is a lead of
                    k+1 >= 1 bars -- made only when that excess exceeds a threshold: the 95th percentile of the top
                    excess over VALIDATION null members (family_split's other half; never the held-out ones).
                    False-positive rate on held-out nulls; detection rate = the claim is made AND it is a planted
                    (target, source) at the planted lag; agreement = attention_agreement's `agrees` over the leads
                    the model-free test declared on the held-out lead members.

Members: family_member(seed, kind, interval, n_bars, n_assets=3); a seed's "null" and "lead" members share their
assets, volatilities and shocks (a paired negative control). Members run in separate processes (--workers), one
torch thread each.

Run: python -m engine.benchmarks.claims [--members N] [--device cuda] [--workers W] [--interval 1h] [--bars B]
     [--no-attention]
`python -m engine.bench` runs it with BENCH_MEMBERS members per group so the whole bench stays short.
"""
from __future__ import annotations

import argparse
import dataclasses
import math
import os
import platform
import tempfile
import time
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from multiprocessing import get_context

import numpy as np

MAX_LAG = 6  # the model-free scan's lags 0..6: the family plants leads of 1..6 rows
FDR = 0.05
NOMINAL_FP = 0.05
TARGET_DETECTION = 0.80  # stated target for the detection rates: the Wilson lower bound should reach it
THRESHOLD_LEVEL = 0.95  # the attention threshold: this quantile of the validation nulls' top excess
N_ASSETS = 3
DEFAULT_MEMBERS = 50
BENCH_MEMBERS = 3
DEFAULT_BARS = 3000
LEAD_KIND = "lead"

# The attention model's recipe: quick_config("1h") (the demo's recipe cut short) sized for ~3,000 bars, one fold.
# max_lag 5: key lags 0..5 are leads of 1..6 bars, every lag the family plants.
ATTENTION_RECIPE = dict(n_folds=1, min_train=2000, val_size=300, test_size=400, stride=16, batch_size=16,
                        max_epochs=8, patience=3)
ATTENTION_MAX_LAG = 5

COLUMNS = ("claim", "members", "hits", "rate", "wilson_95", "nominal_or_target", "pass", "rule")


def wilson_interval(hits: int, n: int, z: float = 1.959963984540054) -> tuple[float, float]:
    """The Wilson score interval for a binomial proportion hits / n (95% by default); (nan, nan) when n == 0."""
    if n <= 0:
        return math.nan, math.nan
    p = hits / n
    denom = 1.0 + z * z / n
    centre = (p + z * z / (2 * n)) / denom
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / denom
    low = 0.0 if hits == 0 else max(0.0, centre - half)  # exactly 0 and 1 at the edges (no float residue)
    high = 1.0 if hits == n else min(1.0, centre + half)
    return low, high


@dataclass(frozen=True)
class MemberTask:
    seed: int
    kind: str  # "null" or LEAD_KIND
    split: str  # "validation" or "held_out"
    interval: str
    n_bars: int
    device: str
    attention: bool
    recipe: tuple = tuple(sorted(ATTENTION_RECIPE.items()))


def _recipe_config(task: MemberTask):
    from engine.training.presets import quick_config

    config = quick_config(task.interval, **dict(task.recipe), device=task.device, threads=1, seed=task.seed % 10_000)
    return dataclasses.replace(config, model=dataclasses.replace(config.model, max_lag=ATTENTION_MAX_LAG))


def run_member(task: MemberTask) -> dict:
    """One member: the model-free test's declared leads and, when asked, the trained model's top attention excess."""
    import torch

    torch.set_num_threads(1)
    from engine.diagnostics.lead_lag_test import lead_lag_findings
    from storage.sources.planted_family import family_member

    started = time.perf_counter()
    member = family_member(task.seed, kind=task.kind, interval=task.interval, n_bars=task.n_bars, n_assets=N_ASSETS)
    planted = [(lead.target, lead.source, int(lead.lag_bars)) for lead in member.truth.leads]
    out: dict = {"seed": task.seed, "kind": task.kind, "split": task.split, "planted": planted}
    if task.split == "held_out":
        findings = lead_lag_findings(member.panel, MAX_LAG, fdr=FDR)
        leads = findings.leads
        declared = {(row.target, row.source, int(row.lag_bars)) for row in leads.itertuples()}
        out.update(declared=sorted(declared), any_lead=bool(declared),
                   all_planted_declared=bool(planted) and all(p in declared for p in planted))
    if task.attention:
        out.update(_attention(member, task, leads if task.split == "held_out" else None))
    out["seconds"] = time.perf_counter() - started
    return out


def _attention(member, task: MemberTask, declared_leads) -> dict:
    from engine.diagnostics.attention_null import attention_agreement, excess_map, null_lead_lag_map
    from engine.diagnostics.for_run import run_on_panel
    from engine.model.inference import run_inference
    from engine.training.loop import train_panel

    config = _recipe_config(task)
    with tempfile.TemporaryDirectory(prefix="claims-") as folder:
        run_dir = os.path.join(folder, "run")
        result = train_panel(member, config, run_dir, run_id=f"claims-{task.kind}-{task.seed}")
        if result.outcome != "finished":
            return {"attention_error": result.message}
        on_panel = run_on_panel(run_dir, member)
    inference = run_inference(on_panel.model, on_panel.features)
    weights = inference.lead_lag  # (A, A, K+1): the whole span's map over each target's open bars
    null = null_lead_lag_map(inference.mask, weights.shape[2] - 1)
    excess = excess_map(weights, null)
    cross = excess.copy()
    for asset in range(cross.shape[0]):
        cross[asset, asset] = np.nan  # a target's own keys are not a cross-asset lead
    target, source, key = np.unravel_index(np.nanargmax(cross), cross.shape)
    symbols = list(inference.symbols)
    out = {"top_excess": float(cross[target, source, key]),
           "top_claim": (symbols[target], symbols[source], int(key) + 1),  # key lag k is a lead of k+1 bars
           "epochs": [f.epochs_run for f in result.folds]}
    if declared_leads is not None and not declared_leads.empty:
        table = attention_agreement(weights, null, symbols, declared_leads)
        out.update(agreement_n=len(table), agreement_hits=int(table["agrees"].sum()))
    return out


def _row(claim: str, flags: list[bool], reference: str, passed: bool | None, rule: str) -> dict:
    hits, n = int(sum(flags)), len(flags)
    low, high = wilson_interval(hits, n)
    return {"claim": claim, "members": n, "hits": hits, "rate": f"{hits / n:.1%}" if n else "-",
            "wilson_95": f"{low:.1%} .. {high:.1%}" if n else "-", "nominal_or_target": reference,
            "pass": "-" if passed is None else ("PASS" if passed else "FAIL"), "rule": rule}


def _fp_row(claim: str, flags: list[bool], rule_extra: str = "") -> dict:
    n = len(flags)
    low, _ = wilson_interval(int(sum(flags)), n)
    passed = None if not n else bool(low <= NOMINAL_FP)
    return _row(claim, flags, f"nominal {NOMINAL_FP:.0%}", passed,
                "PASS when the Wilson interval reaches down to the nominal rate (not shown to exceed it)" + rule_extra)


def _detection_row(claim: str, flags: list[bool], rule_extra: str = "") -> dict:
    n = len(flags)
    low, _ = wilson_interval(int(sum(flags)), n)
    passed = None if not n else bool(low >= TARGET_DETECTION)
    return _row(claim, flags, f"target {TARGET_DETECTION:.0%}", passed,
                "PASS when the Wilson lower bound reaches the target" + rule_extra)


def summarise(results: list[dict], attention: bool) -> tuple[list[dict], dict]:
    """Member results -> the table's rows and the attention threshold's record."""
    held_null = [r for r in results if r["split"] == "held_out" and r["kind"] == "null"]
    held_lead = [r for r in results if r["split"] == "held_out" and r["kind"] != "null"]
    rows = [
        _fp_row(f"model-free test: false positives (any lead declared on a null member; BH {FDR:.0%}, lags "
                f"0..{MAX_LAG})", [r["any_lead"] for r in held_null]),
        _detection_row("model-free test: detection (every planted (target, source, lag) declared on a lead member)",
                       [r["all_planted_declared"] for r in held_lead]),
    ]
    record: dict = {}
    if not attention:
        return rows, record
    validation = [r["top_excess"] for r in results if r["split"] == "validation" and "top_excess" in r]
    failed = [r for r in results if "attention_error" in r]
    threshold = float(np.quantile(validation, THRESHOLD_LEVEL)) if validation else math.inf
    record = {"threshold": threshold, "validation_nulls": len(validation), "failed": len(failed)}
    chosen = (f"; threshold {threshold:.4f} = {THRESHOLD_LEVEL:.0%} quantile of the top excess of "
              f"{len(validation)} VALIDATION null members")
    null_trained = [r for r in held_null if "top_excess" in r]
    lead_trained = [r for r in held_lead if "top_excess" in r]
    rows.append(_fp_row("attention: false positives (top excess > threshold on a null member)",
                        [r["top_excess"] > threshold for r in null_trained], chosen))

    def detected(r: dict) -> bool:
        return r["top_excess"] > threshold and tuple(r["top_claim"]) in {tuple(p) for p in r["planted"]}

    rows.append(_detection_row("attention: detection (claim made AND it is a planted pair at the planted lag)",
                               [detected(r) for r in lead_trained], chosen))
    rows.append(_row("attention: top excess is a planted pair at the planted lag, no threshold (lead members)",
                     [tuple(r["top_claim"]) in {tuple(p) for p in r["planted"]} for r in lead_trained], "-", None,
                     "chance: 1 of 6 ordered pairs x 6 lags = 1/36 per planted lead"))
    agreements = [r for r in lead_trained if r.get("agreement_n")]
    n_agree = sum(r["agreement_hits"] for r in agreements)
    n_leads = sum(r["agreement_n"] for r in agreements)
    low, high = wilson_interval(n_agree, n_leads)
    rows.append({"claim": "attention agrees with the model-free test's declared leads (attention_agreement, lead "
                          f"members; per declared lead, {len(agreements)} members)",
                 "members": n_leads, "hits": n_agree, "rate": f"{n_agree / n_leads:.1%}" if n_leads else "-",
                 "wilson_95": f"{low:.1%} .. {high:.1%}" if n_leads else "-", "nominal_or_target": "-", "pass": "-",
                 "rule": "agrees: excess > 0 and the pair's best key lag is the lead's; leads counted, not members"})
    return rows, record


def recipe_for(n_bars: int, **overrides) -> dict:
    """ATTENTION_RECIPE with the one fold's training span sized to the member (n_bars - 1,000 rows: validation,
    test and the purges take the rest), then `overrides` (e.g. max_epochs, patience)."""
    return {**ATTENTION_RECIPE, "min_train": max(n_bars - 1000, 500), **overrides}


def tasks_for(n_members: int, interval: str, n_bars: int, device: str, attention: bool,
              recipe: dict | None = None) -> list[MemberTask]:
    """Held-out null and lead members (the same seeds: paired), and validation nulls for the threshold."""
    from storage.sources.planted_family import family_split

    recipe = tuple(sorted((recipe or recipe_for(n_bars)).items()))

    split = family_split(n_members)
    assert not set(split["validation"]) & set(split["held_out"]), "validation and held-out seeds overlap"
    tasks = [MemberTask(seed, kind, "held_out", interval, n_bars, device, attention, recipe)
             for seed in split["held_out"] for kind in ("null", LEAD_KIND)]
    if attention:
        tasks += [MemberTask(seed, "null", "validation", interval, n_bars, device, True, recipe)
                  for seed in split["validation"]]
    return tasks


def run_members(tasks: list[MemberTask], workers: int) -> list[dict]:
    if workers <= 1:
        return [run_member(task) for task in tasks]
    with ProcessPoolExecutor(max_workers=workers, mp_context=get_context("spawn"),
                             initializer=_init_worker) as pool:
        return list(pool.map(run_member, tasks, chunksize=1))


def _init_worker() -> None:
    os.environ["OMP_NUM_THREADS"] = "1"
    import torch

    torch.set_num_threads(1)


def measure(n_members: int, device: str, workers: int, interval: str = "1h", n_bars: int = DEFAULT_BARS,
            attention: bool = True, recipe: dict | None = None) -> tuple[list[dict], dict]:
    """-> the claims table's rows and a record of the run (machine, torch, device, N, seconds, threshold)."""
    import torch

    started = time.perf_counter()
    recipe = recipe or recipe_for(n_bars)
    tasks = tasks_for(n_members, interval, n_bars, device, attention, recipe)
    results = run_members(tasks, workers)
    rows, record = summarise(results, attention)
    epochs = [e for r in results for e in r.get("epochs", [])]
    record.update(
        machine=f"{platform.node()} ({platform.machine()}, {os.cpu_count()} CPUs)", torch=torch.__version__,
        device=_device_name(device), members_per_group=n_members, tasks=len(tasks), workers=workers,
        interval=interval, bars=n_bars, assets=N_ASSETS, seconds=round(time.perf_counter() - started, 1),
        mean_member_seconds=round(float(np.mean([r["seconds"] for r in results])), 1),
        mean_epochs=round(float(np.mean(epochs)), 1) if epochs else None, recipe=recipe,
    )
    return rows, record


def _device_name(device: str) -> str:
    import torch

    if device.startswith("cuda") and torch.cuda.is_available():
        return f"{device} ({torch.cuda.get_device_name(0)})"
    return "cpu (1 torch thread per worker)"


def recipe_text(recipe: dict) -> str:
    settings = ", ".join(f"{k}={v}" for k, v in recipe.items())
    return (f"attention model: quick_config('1h') (demo recipe cut short: lead path, d_model 32, 4 heads, SSM + "
            f"attention) with {settings}, max_lag={ATTENTION_MAX_LAG} (leads 1..{ATTENTION_MAX_LAG + 1} bars); "
            "map over every bar, excess over null_lead_lag_map")


def rows(device) -> list[dict]:
    """`python -m engine.bench`: BENCH_MEMBERS members per group, one worker per core (at most 4)."""
    device = str(device)
    workers = min(os.cpu_count() or 1, 4)
    table, record = measure(BENCH_MEMBERS, device, workers)
    note = (f"N={BENCH_MEMBERS} per group (smoke size; run `python -m engine.benchmarks.claims --members 60` for the "
            f"acceptance numbers), {record['seconds']} s, torch {record['torch']}")
    return table + [{"claim": "run", "members": record["tasks"], "rule": note}]


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--members", type=int, default=DEFAULT_MEMBERS, help="held-out members per group (and "
                        "validation nulls for the threshold)")
    parser.add_argument("--device", default=None, help="cpu or cuda (default: cuda when present)")
    parser.add_argument("--workers", type=int, default=None, help="processes (default: CPU count, at most 16)")
    parser.add_argument("--interval", default="1h", choices=("1h", "1d"))
    parser.add_argument("--bars", type=int, default=DEFAULT_BARS)
    parser.add_argument("--max-epochs", type=int, default=ATTENTION_RECIPE["max_epochs"])
    parser.add_argument("--patience", type=int, default=ATTENTION_RECIPE["patience"])
    parser.add_argument("--no-attention", action="store_true", help="the model-free test only (no training)")
    args = parser.parse_args(argv)

    from engine.bench import format_table
    from engine.runtime import pick_device

    device = str(pick_device(args.device))
    workers = args.workers or min(os.cpu_count() or 1, 16)
    attention = not args.no_attention
    recipe = recipe_for(args.bars, max_epochs=args.max_epochs, patience=args.patience)
    table, record = measure(args.members, device, workers, args.interval, args.bars, attention, recipe)
    print("# claims benchmark: issue 14's acceptance numbers on the planted family (SYNTHETIC)\n")
    print(format_table(table))
    print()
    print(f"- members: {args.members} held-out null + {args.members} held-out {LEAD_KIND} (same seeds, paired)"
          + (f" + {args.members} validation null (threshold only)" if attention else "")
          + f"; family_split({args.members}); {args.interval}, {args.bars} bars, {N_ASSETS} assets")
    if attention:
        print(f"- {recipe_text(recipe)}")
        print(f"- attention threshold {record['threshold']:.4f} from {record['validation_nulls']} validation nulls; "
              f"failed trainings: {record['failed']}; mean epochs run {record['mean_epochs']}")
    print(f"- machine {record['machine']}, torch {record['torch']}, device {record['device']}, workers {workers}, "
          f"{record['tasks']} members in {record['seconds']} s (mean {record['mean_member_seconds']} s per member)")


if __name__ == "__main__":
    main()
