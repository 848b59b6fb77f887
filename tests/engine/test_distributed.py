"""Training under torchrun on CPU (gloo): several processes step exactly like one, only rank 0 writes, and a failing
rank ends the run with its error and no checkpoint. Each test starts real processes through torchrun
(tests/engine/distributed_worker.py is one rank)."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from engine.evaluation.predictions import PREDICTIONS_FILE
from engine.features import build_feature_set
from engine.model.checkpoint import list_runs, published_files
from engine.runtime import configure_cpu_threads
from engine.targets import compute_targets
from engine.training.dataset import make_windows
from engine.training.loop import make_folds, train_walk_forward
from engine.training.resume import FOLDS_DIR, RESUME_DIR
from storage.panel import panel_fingerprint
from tests.engine.distributed_worker import small_panel, tiny_config

ROOT = Path(__file__).resolve().parents[2]
WORKER = Path(__file__).with_name("distributed_worker.py")

pytestmark = pytest.mark.skipif(not torch.distributed.is_available() or not torch.distributed.is_gloo_available(),
                                reason="this torch build has no gloo backend")


def torchrun(*args: str, nproc: int = 2, env: dict | None = None) -> subprocess.CompletedProcess:
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={nproc}", *args]
    python_path = os.pathsep.join(p for p in (str(ROOT), os.environ.get("PYTHONPATH", "")) if p)
    environment = {**os.environ, "PYTHONPATH": python_path, "OMP_NUM_THREADS": "1", **(env or {})}
    return subprocess.run(command, cwd=ROOT, env=environment, capture_output=True, text=True, timeout=300)


def one_process_reference(run_dir: Path, device: str = "cpu") -> Path:
    configure_cpu_threads(1)
    panel = small_panel()
    train_walk_forward(panel, tiny_config(device=device), interval="1d", fingerprint=panel_fingerprint(panel, "1d"),
                       run_dir=run_dir, run_id="distributed-test")
    return run_dir


def max_weight_difference(a: Path, b: Path) -> float:
    first, second = load_file(str(published_files(a)[1])), load_file(str(published_files(b)[1]))
    assert first.keys() == second.keys()
    return max(float((first[k] - second[k]).abs().max()) for k in first)


def predictions(run_dir: Path) -> dict[str, np.ndarray]:
    with np.load(run_dir / PREDICTIONS_FILE, allow_pickle=False) as data:
        return {k: data[k] for k in data.files}


@pytest.fixture(scope="module")
def reference(tmp_path_factory) -> Path:
    return one_process_reference(tmp_path_factory.mktemp("one_process") / "run")


def test_the_tiny_run_exercises_uneven_and_empty_shards():
    # Guards the next test's power: batch 7 over 2 ranks cuts shards of 4 and 3 windows (different valid counts,
    # which a plain mean of the ranks' losses would weigh wrongly), and a last batch of 1 leaves rank 1 nothing.
    panel, config = small_panel(), tiny_config()
    targets = compute_targets(panel, config.model.horizons)
    fold = make_folds(len(panel.ts), targets, config)[0]
    windows = make_windows(build_feature_set(panel, fold.train, config.features), targets, fold.train,
                           config.window, config.stride)
    assert windows.x.shape[0] % config.batch_size == 1


@pytest.mark.slow  # default-suite budget: the torchrun command and a failing rank stay in it
def test_two_gloo_ranks_train_the_same_weights_as_one_process_with_the_same_global_batch(reference, tmp_path):
    result = torchrun(str(WORKER), str(tmp_path / "run"), "--parallel", "data")
    assert result.returncode == 0, result.stderr[-3000:]
    # float32 sums in another order: equal to within rounding (a loss normalised per rank instead of by the global
    # valid count moves them by ~1e-2 on this run)
    assert max_weight_difference(reference, tmp_path / "run") < 1e-5
    np.testing.assert_allclose(predictions(tmp_path / "run")["point"], predictions(reference)["point"],
                               atol=1e-6, rtol=1e-4, equal_nan=True)
    assert not (tmp_path / "run" / RESUME_DIR).exists() and not (tmp_path / "run" / FOLDS_DIR).exists()


@pytest.mark.slow  # default-suite budget
def test_one_fold_per_rank_gathers_every_fold_into_rank_0s_checkpoint(reference, tmp_path):
    result = torchrun(str(WORKER), str(tmp_path / "run"), "--parallel", "folds")
    assert result.returncode == 0, result.stderr[-3000:]
    # each fold is trained by one process with the same seeds as in a single run: the same numbers
    assert max_weight_difference(reference, tmp_path / "run") < 1e-6
    mine, theirs = predictions(tmp_path / "run"), predictions(reference)
    assert np.array_equal(mine["fold"], theirs["fold"]) and set(mine["fold"]) == {0, 1}
    np.testing.assert_allclose(mine["point"], theirs["point"], atol=1e-7, equal_nan=True)


def test_a_failing_rank_ends_the_run_with_its_error_and_leaves_no_checkpoint_and_resume_finishes_it(
        reference, tmp_path):
    run_dir = tmp_path / "run"
    # rank 1 fails in the second fold, after rank 0 has saved the first fold's state
    result = torchrun(str(WORKER), str(run_dir), "--fail-rank", "1", "--fail-after", "12")
    assert result.returncode != 0
    assert "rank 1: RuntimeError: injected failure" in result.stderr
    assert "ChildFailedError" in result.stderr  # torchrun's own summary names the failed rank
    assert not published_files(run_dir)[1].exists() and not published_files(run_dir)[0].exists()
    assert not (run_dir / PREDICTIONS_FILE).exists()
    assert (run_dir / FOLDS_DIR / "fold_0").exists()  # finished work is kept for --resume
    resumed = torchrun(str(WORKER), str(run_dir), "--resume")
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert max_weight_difference(reference, run_dir) < 1e-5  # as if it had never failed


def test_ranks_that_see_different_data_refuse_to_train(tmp_path):
    result = torchrun(str(WORKER), str(tmp_path / "run"), "--perturb-rank", "1")
    assert result.returncode != 0
    assert "the training data or config differs between ranks" in result.stderr
    assert not (tmp_path / "run").exists()


def test_more_ranks_than_gpus_under_nccl_is_refused_with_the_count(monkeypatch):
    from engine.training.distributed import DistributedError, init_distributed

    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    for name, value in {"WORLD_SIZE": "2", "RANK": "1", "LOCAL_RANK": "1", "LOCAL_WORLD_SIZE": "2"}.items():
        monkeypatch.setenv(name, value)
    with pytest.raises(DistributedError, match="2 processes on this node but only 1 GPU"):
        init_distributed("cuda")
    monkeypatch.setenv("REGIME_DIST_BACKEND", "mpi")
    with pytest.raises(DistributedError, match="use 'gloo' or 'nccl'"):
        init_distributed("cuda")


def test_the_train_command_under_torchrun_writes_and_registers_one_run_from_rank_0(tmp_path):
    from engine.train import main

    args = ["--demo", "1d", "--folds", "2", "--epochs", "1", "--min-train", "300", "--val-size", "80",
            "--test-size", "80", "--window", "64", "--stride", "128", "--threads", "1", "--no-evaluate",
            "--device", "cpu", "--runs-dir", str(tmp_path / "runs"), "--run-id", "ranked"]
    result = torchrun("-m", "engine.train", *args, "--out", str(tmp_path / "ranked"), "--parallel", "folds")
    assert result.returncode == 0, result.stderr[-3000:]
    assert "torchrun: 2 processes, gloo, parallel over folds" in result.stderr
    listed = list_runs(tmp_path / "runs", include_demo=False)
    assert [entry["run_id"] for entry in listed] == ["ranked"]  # registered once, by rank 0
    configure_cpu_threads(1)
    assert main([*args[:-4], "--no-register", "--out", str(tmp_path / "alone")]) == 0
    assert max_weight_difference(tmp_path / "alone", tmp_path / "ranked") < 1e-6


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_two_ranks_on_a_gpu_train_the_same_weights_as_one_process_on_it(tmp_path):
    # The GPU path of the code (model, DDP and collectives on CUDA tensors) with the ranks sharing one GPU over
    # gloo, since NCCL refuses two ranks on one GPU; NCCL itself needs a machine with two GPUs.
    reference = one_process_reference(tmp_path / "alone", device="cuda")
    result = torchrun(str(WORKER), str(tmp_path / "run"), "--device", "cuda",
                      env={"REGIME_DIST_BACKEND": "gloo"})
    assert result.returncode == 0, result.stderr[-3000:]
    assert max_weight_difference(reference, tmp_path / "run") < 1e-4
