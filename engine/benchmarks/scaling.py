"""Data-parallel training throughput for 1, 2 and 4 processes under torchrun, on a 50-asset SYNTHETIC universe.

Each run starts `torchrun --standalone --nproc-per-node P` on this module's worker, which takes the real training
step (engine.training.train_step: DDP, the globally normalised loss, clipping, AdamW) on windows of 512 bars x 50
assets. Weak scaling: every rank takes the same per-rank batch, so the global batch grows with P, and

    scaling efficiency = throughput(P) / (P * throughput(1)).

On GPUs each process takes one GPU (NCCL). On a CPU (gloo) every process takes ONE thread, the 1-process baseline
too, so each process brings the same resource (one core) and the efficiency means what it means on GPUs. (Before,
the baseline ran one process with every core's threads, and two one-thread processes beat it by 20%: intra-op
threads on small tensors scale worse than processes, so the ">100% efficiency" measured the baseline's threading,
not the data parallelism.) The 1-process row with all cores' threads is printed too, marked as not a baseline.
Each run reports the median ms per step with its spread over the timed steps, and the efficiency is given with the
range its steps' interquartile ranges allow. NVLink multicast stays off (NCCL_NVLS_ENABLE=0,
TORCH_SYMM_MEM_DISABLE_MULTICAST=1): the lender's machines require it.

    python -m engine.benchmarks.scaling --device cuda --procs 1 2 4     # on a machine with 4 GPUs
    python -m engine.bench --only scaling                                # as many processes as there are GPUs
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

from engine.benchmarks._measure import Timing
from engine.runtime import configure_cpu_threads, device_label

N_ASSETS = 50
WINDOW = 512
PER_RANK_BATCH = 8
WARMUP_STEPS = 3
TIMED_STEPS = 20
MULTICAST_OFF = {"NCCL_NVLS_ENABLE": "0", "TORCH_SYMM_MEM_DISABLE_MULTICAST": "1"}


def worker(out: Path, device: str, per_rank_batch: int, steps: int, n_assets: int) -> None:
    """One rank: build the universe and the model, take warm-up and timed steps, rank 0 writes the timing."""
    from engine.features import build_feature_set
    from engine.model.config import ModelConfig
    from engine.model.hybrid import HybridModel
    from engine.targets import compute_targets
    from engine.training.config import TrainConfig
    from engine.training.dataset import make_windows
    from engine.training.distributed import barrier, init_distributed, shutdown
    from engine.training.head_scale import scale_heads_for_training, target_scale
    from engine.training.loop import data_parallel, resident, train_step
    from storage.sources.synthetic_universe import synthetic_universe

    ctx = init_distributed(device)
    try:
        n_windows = per_rank_batch * ctx.world_size * 4
        panel = synthetic_universe(n_assets, WINDOW + n_windows * 64 + 64, seed=1)
        rows = range(len(panel.ts))
        features = build_feature_set(panel, rows)
        model_config = ModelConfig(n_assets=n_assets, n_features=features.values.shape[2], point_head=False,
                                   lead_path=False)
        config = TrainConfig(model=model_config, batch_size=per_rank_batch * ctx.world_size, window=WINDOW,
                             stride=64, min_train=WINDOW)
        targets = compute_targets(panel, model_config.horizons)
        windows = resident(make_windows(features, targets, rows, WINDOW, 64), ctx.device)  # as training does
        torch.manual_seed(0)
        model = HybridModel(model_config).to(ctx.device)
        scale = target_scale(targets, features, rows)
        scale_heads_for_training(model, scale)
        scale_t = torch.as_tensor(scale, dtype=torch.float32, device=ctx.device)  # (A, H)
        optimizer = torch.optim.AdamW(model.parameters(), lr=config.lr)
        train_model = data_parallel(model, ctx)
        generator = torch.Generator().manual_seed(0)

        def step() -> None:
            batch = torch.randperm(windows.x.shape[0], generator=generator)[: config.batch_size]
            train_step(train_model, optimizer, windows, batch, scale_t, config.loss_weights, config, ctx,
                       lambda: False)

        for _ in range(WARMUP_STEPS):
            step()
        if ctx.device.type == "cuda":
            torch.cuda.synchronize(ctx.device)
        barrier(ctx)
        started = time.perf_counter()
        step_times = []
        for _ in range(steps):
            t0 = time.perf_counter()
            step()
            if ctx.device.type == "cuda":
                torch.cuda.synchronize(ctx.device)
            step_times.append(time.perf_counter() - t0)
        barrier(ctx)
        seconds = time.perf_counter() - started
        if ctx.is_main:
            out.write_text(json.dumps({
                "processes": ctx.world_size, "backend": ctx.backend or "none", "device": device_label(ctx.device),
                "parameters": model.num_parameters(), "global_batch": config.batch_size,
                "s_per_step": seconds / steps, "windows_per_s": config.batch_size * steps / seconds,
                "threads": torch.get_num_threads(), "assets": n_assets, "step_times": step_times,
            }))
    finally:
        shutdown(ctx)


def run_processes(procs: int, device: str, per_rank_batch: int = PER_RANK_BATCH, steps: int = TIMED_STEPS,
                  n_assets: int = N_ASSETS, threads: int = 1) -> dict:
    """torchrun with `procs` processes of `threads` CPU threads each on this machine -> rank 0's timing."""
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "timing.json"
        command = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={procs}",
                   "-m", "engine.benchmarks.scaling", "--worker", "--out", str(out), "--device", device,
                   "--per-rank-batch", str(per_rank_batch), "--steps", str(steps), "--assets", str(n_assets)]
        env = {**os.environ, **MULTICAST_OFF, "OMP_NUM_THREADS": str(threads)}
        result = subprocess.run(command, env=env, capture_output=True, text=True, check=False)
        if result.returncode != 0 or not out.exists():
            raise RuntimeError(f"torchrun with {procs} processes failed:\n{result.stderr[-4000:]}")
        return json.loads(out.read_text())


def table(timings: list[dict]) -> list[dict]:
    """One row per run; the efficiency against the 1-process run with the same threads per process."""
    def per_step(t: dict) -> Timing:
        return Timing(tuple(1e3 * x for x in t["step_times"]))

    base = next(t for t in timings if t["processes"] == 1 and t.get("baseline", True))
    base_steps = per_step(base)
    rows = []
    for t in timings:
        steps = per_step(t)
        if t.get("baseline", True):
            # throughput ~ global batch / ms per step; the IQRs bound the ratio from both sides.
            scale = t["global_batch"] / (t["processes"] * base["global_batch"])
            efficiency = scale * base_steps.median / steps.median
            low, high = scale * base_steps.q1 / steps.q3, scale * base_steps.q3 / steps.q1
            shown = f"{efficiency:.0%} ({low:.0%}..{high:.0%})"
        else:
            shown = "- (not a baseline: one process with every core's threads)"
        rows.append({
            "processes": t["processes"], "backend": t["backend"], "device": t["device"],
            "threads/process": t["threads"], "assets": t["assets"], "parameters": f"{t['parameters']:,}",
            "global batch (windows of 512 bars)": t["global_batch"], "ms per step": steps.median,
            "spread": steps.spread(), "windows/s": t["global_batch"] / steps.median * 1e3,
            "asset-bars/s (M)": t["global_batch"] / steps.median * 1e3 * WINDOW * t["assets"] / 1e6,
            "scaling efficiency (IQR range)": shown,
        })
    return rows


def available_procs(device: torch.device) -> list[int]:
    limit = torch.cuda.device_count() if device.type == "cuda" else (os.cpu_count() or 1)
    return [p for p in (1, 2, 4) if p <= limit]


def rows(device: torch.device | str) -> list[dict]:
    device = torch.device(device)
    if device.type == "cpu":  # a step of 50 assets takes seconds on a laptop CPU: fewer, smaller steps
        timings = [run_processes(p, "cpu", per_rank_batch=2, steps=6) for p in available_procs(device)[:2]]
        cores = os.cpu_count() or 1
        if cores > 1:
            threaded = run_processes(1, "cpu", per_rank_batch=2, steps=6, threads=cores)
            timings.append({**threaded, "baseline": False})
        return table(timings)
    return table([run_processes(p, device.type) for p in available_procs(device)])


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--procs", type=int, nargs="+", help="process counts (default: 1, 2, 4 up to the GPUs)")
    parser.add_argument("--steps", type=int, default=TIMED_STEPS)
    parser.add_argument("--per-rank-batch", type=int, default=PER_RANK_BATCH)
    parser.add_argument("--assets", type=int, default=N_ASSETS)
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--out", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.worker:
        configure_cpu_threads(int(os.environ.get("OMP_NUM_THREADS", "1")))
        worker(Path(args.out), args.device, args.per_rank_batch, args.steps, args.assets)
        return
    from engine.bench import format_table

    procs = args.procs or available_procs(torch.device(args.device))
    if 1 not in procs:
        procs = [1, *procs]  # the efficiency is measured against one process
    timings = [run_processes(p, args.device, args.per_rank_batch, args.steps, args.assets) for p in procs]
    print(f"# data-parallel scaling, {args.assets} SYNTHETIC assets, {args.per_rank_batch} windows per process "
          f"per step\n")
    print(format_table(table(timings)))


if __name__ == "__main__":
    main()
