"""Model benchmarks: one SSM mixer layer against its sequential-scan self, mambapy's Mamba block and a causal
Transformer layer; step mode per bar; the full model's training step.

`rows(device)` returns one dict per measurement (medians in ms after a warm-up); `python -m engine.benchmarks.model`
prints them as a markdown table. "fwd" is inference (eval mode, no autograd); "fwd+bwd" is a training pass (train
mode, forward, backward of the sum). Every layer is the pre-norm residual block of width 64 (d_inner 128, state 16).
"""
from __future__ import annotations

import argparse
import contextlib
import statistics
import time
from collections.abc import Callable, Iterator
from importlib import metadata

import torch
from torch import nn

import engine.model.ssm as ssm_module
from engine.benchmarks.scan import median_ms
from engine.model.config import ModelConfig
from engine.model.hybrid import HybridModel
from engine.model.scan import selective_scan_reference
from engine.model.ssm import SelectiveSSMBlock
from engine.runtime import configure_cpu_threads, device_label, pick_device

LAYER_BATCH = 8
LAYER_LENGTHS = (1024, 4096)
D_MODEL, D_STATE, EXPAND, N_HEADS = 64, 16, 2, 4
MODEL_BATCH, MODEL_LENGTH, MODEL_ASSETS = 32, 512, 3


def forward_and_backward_ms(layer: nn.Module, run: Callable[[torch.Tensor], torch.Tensor], x: torch.Tensor,
                            device: torch.device, with_backward: bool = True) -> tuple[float, float | str]:
    """(inference ms, training-pass ms or "-") of run(x) -> output tensor."""
    layer.eval()
    with torch.no_grad():
        forward = median_ms(lambda: run(x), device)
    if not with_backward:
        return forward, "-"
    layer.train()
    x_grad = x.detach().requires_grad_(True)

    def train_pass() -> None:
        layer.zero_grad(set_to_none=True)
        run(x_grad).sum().backward()

    return forward, median_ms(train_pass, device)


@contextlib.contextmanager
def sequential_reference_scan() -> Iterator[None]:
    """Run our layer with the plain sequential scan in place of the fast one."""
    fast = ssm_module.selective_scan
    ssm_module.selective_scan = selective_scan_reference
    try:
        yield
    finally:
        ssm_module.selective_scan = fast


def ssm_layer_rows(device: torch.device, length: int, *, reference_backward: bool = True) -> list[dict]:
    torch.manual_seed(0)
    config = ModelConfig(n_assets=1, n_features=D_MODEL, d_model=D_MODEL, d_state=D_STATE, expand=EXPAND, dropout=0.0)
    layer = SelectiveSSMBlock(config).to(device)
    x = torch.randn(LAYER_BATCH, length, 1, D_MODEL, device=device)  # (B, T, A=1, M)
    mask = torch.ones(LAYER_BATCH, length, 1, dtype=torch.bool, device=device)
    rows = []
    fwd, fwd_bwd = forward_and_backward_ms(layer, lambda t: layer(t, mask)[0], x, device)
    rows.append(dict(case="our SSM layer (chunked scan)", length=length, fwd_ms=fwd, fwd_bwd_ms=fwd_bwd))
    with sequential_reference_scan():
        fwd, fwd_bwd = forward_and_backward_ms(layer, lambda t: layer(t, mask)[0], x, device, reference_backward)
    rows.append(dict(case="our SSM layer (sequential reference scan)", length=length, fwd_ms=fwd, fwd_bwd_ms=fwd_bwd))
    return rows


def mambapy_rows(device: torch.device, length: int, *, with_backward: bool = True) -> list[dict]:
    try:
        from mambapy.mamba import MambaConfig, ResidualBlock
        version = metadata.version("mambapy")
    except ImportError:
        return [dict(case="mambapy block", length=length, note="mambapy not installed (pip install mambapy==1.2.0)")]
    x = torch.randn(LAYER_BATCH, length, D_MODEL, device=device)
    rows = []
    for parallel in (True, False):  # mambapy's own switch: Blelloch pscan, or a Python loop over time
        torch.manual_seed(0)
        config = MambaConfig(d_model=D_MODEL, n_layers=1, d_state=D_STATE, expand_factor=EXPAND, pscan=parallel)
        block = ResidualBlock(config).to(device)  # RMSNorm + mixer + residual, the same scope as our layer
        # The sequential mode's training pass is a Python loop under autograd: over a minute at 1024 bars.
        fwd, fwd_bwd = forward_and_backward_ms(block, block, x, device, with_backward and parallel)
        scan = "parallel pscan" if parallel else "sequential"
        rows.append(dict(case=f"mambapy {version} Mamba block ({scan})", length=length, fwd_ms=fwd, fwd_bwd_ms=fwd_bwd))
    return rows


def transformer_rows(device: torch.device, length: int) -> list[dict]:
    torch.manual_seed(0)
    layer = nn.TransformerEncoderLayer(D_MODEL, N_HEADS, batch_first=True).to(device)  # default FF width 2048
    causal = nn.Transformer.generate_square_subsequent_mask(length, device=device)
    x = torch.randn(LAYER_BATCH, length, D_MODEL, device=device)
    fwd, fwd_bwd = forward_and_backward_ms(layer, lambda t: layer(t, src_mask=causal, is_causal=True), x, device)
    return [dict(case="nn.TransformerEncoderLayer, causal", length=length, fwd_ms=fwd, fwd_bwd_ms=fwd_bwd)]


def step_rows(device: torch.device, bars: int = 400) -> list[dict]:
    """Median time per new bar of HybridModel.step, batch 1, in inference mode: with the configured thread count
    and, on CPU, with one thread (a bar's tensors are far too small to split across threads)."""
    torch.manual_seed(0)
    model = HybridModel(ModelConfig(n_assets=MODEL_ASSETS, point_head=False, lead_path=False)).to(device).eval()
    x = torch.randn(bars, 1, MODEL_ASSETS, model.config.n_features, device=device)
    mask = torch.ones(bars, 1, MODEL_ASSETS, dtype=torch.bool, device=device)

    def per_bar_ms() -> float:
        with torch.inference_mode():
            state = model.init_state(1)
            for t in range(20):  # warm-up
                _, state = model.step(x[t], mask[t], state)
            times = []
            for t in range(bars):
                t0 = time.perf_counter()
                _, state = model.step(x[t], mask[t], state)
                if device.type == "cuda":
                    torch.cuda.synchronize(device)
                times.append(time.perf_counter() - t0)
        return statistics.median(times) * 1e3

    case = f"full model step, {MODEL_ASSETS} assets, one new bar"
    result = [dict(case=case, length=1, fwd_ms=per_bar_ms(),
                   note=f"median of {bars} bars, batch 1, {torch.get_num_threads()} threads")]
    if device.type == "cpu" and torch.get_num_threads() > 1:
        threads = torch.get_num_threads()
        torch.set_num_threads(1)
        try:
            one_thread = per_bar_ms()
            result.append(dict(case=case, length=1, fwd_ms=one_thread,
                               note=f"median of {bars} bars, batch 1, 1 thread"))
        finally:
            torch.set_num_threads(threads)
    return result


def full_model_rows(device: torch.device) -> list[dict]:
    torch.manual_seed(0)
    config = ModelConfig(n_assets=MODEL_ASSETS, point_head=False, lead_path=False)
    model = HybridModel(config).to(device)
    x = torch.randn(MODEL_BATCH, MODEL_ASSETS, MODEL_LENGTH, config.n_features, device=device)
    mask = torch.ones(MODEL_BATCH, MODEL_ASSETS, MODEL_LENGTH, dtype=torch.bool, device=device)

    def run(inputs: torch.Tensor) -> torch.Tensor:
        output = model(inputs, mask)
        return output.quantiles.sum() + output.direction_logit.sum() + output.log_vol.sum()

    fwd, fwd_bwd = forward_and_backward_ms(model, run, x, device)
    return [dict(case=f"full model, {MODEL_ASSETS} assets x {MODEL_LENGTH} bars x batch {MODEL_BATCH}",
                 length=MODEL_LENGTH, fwd_ms=fwd, fwd_bwd_ms=fwd_bwd,
                 note=f"{model.num_parameters():,} parameters, pattern {'/'.join(config.layer_pattern)}")]


GROUPS = ("layers", "step", "model")
COLUMNS = ("case", "length", "fwd_ms", "fwd_bwd_ms", "note")


def row_groups(device: torch.device, only: tuple[str, ...] = GROUPS) -> Iterator[list[dict]]:
    """The measurements in groups, so a caller can print each as soon as it is done (the slow ones take minutes)."""
    if "layers" in only:
        for length in LAYER_LENGTHS:
            # mambapy's and the sequential scan's training pass at 4096 take minutes on two cores: forward only there.
            with_backward = length <= 1024
            layer_rows = (
                ssm_layer_rows(device, length, reference_backward=with_backward)
                + mambapy_rows(device, length, with_backward=with_backward)
                + transformer_rows(device, length)
            )
            add_ratios(layer_rows)
            yield layer_rows
    if "step" in only:
        yield step_rows(device)
    if "model" in only:
        yield full_model_rows(device)


def rows(device: torch.device | str) -> list[dict]:
    return [row for group in row_groups(torch.device(device)) for row in group]


def add_ratios(layer_rows: list[dict]) -> None:
    """On our fast layer's row: its time over the Transformer's (target < 1 at 4096, <= 1.5 at 1024) and the
    parallel mambapy block's time over ours (target >= 20)."""
    ours = layer_rows[0]
    by_case = {row["case"]: row for row in layer_rows}
    transformer = by_case.get("nn.TransformerEncoderLayer, causal")
    mambapy = next((row for case, row in by_case.items() if "parallel pscan" in case and "fwd_ms" in row), None)
    notes = []
    if transformer:
        notes.append(f"{ours['fwd_ms'] / transformer['fwd_ms']:.2f}x the Transformer's time fwd, "
                     f"{ours['fwd_bwd_ms'] / transformer['fwd_bwd_ms']:.2f}x fwd+bwd")
    if mambapy:
        notes.append(f"{mambapy['fwd_ms'] / ours['fwd_ms']:.1f}x faster fwd than mambapy's block")
    ours["note"] = "; ".join(notes)


def format_row(row: dict) -> str:
    cells = []
    for column in COLUMNS:
        value = row.get(column, "")
        cells.append(f"{value:,.2f}" if isinstance(value, float) else str(value))
    return "| " + " | ".join(cells) + " |"


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--device", default=None, help="cpu or cuda (default: cuda when present)")
    parser.add_argument("--only", nargs="*", choices=GROUPS, default=list(GROUPS), help="which groups to run")
    args = parser.parse_args(argv)
    configure_cpu_threads()
    device = pick_device(args.device)
    print(f"# model benchmarks on {device_label(device)}, torch {torch.__version__}\n")
    print("| " + " | ".join(COLUMNS) + " |\n|" + "---|" * len(COLUMNS), flush=True)
    for group in row_groups(device, tuple(args.only)):
        for row in group:
            print(format_row(row), flush=True)


if __name__ == "__main__":
    main()
