"""`python -m engine.export --run RUN --onnx OUT`: the hybrid's step function as an ONNX graph, checked against
PyTorch's step mode.

The exported graph is HybridModel.step for one panel (batch 1): one new bar for every asset in, the forecasts for
that bar out, and the whole StepState as explicit tensors on both sides, so a runtime (ONNX Runtime here, or any
other) holds the state between bars and needs no Python:

    inputs   x (1, A, F) float32 features of the new bar (the checkpoint's scaler applied), mask (1, A) bool (True:
             the asset has a fresh bar; a closed asset's features are ignored), then the state before the bar:
             layer<i>.<field> for every layer's state (SSM: conv_buffer, ssm_state; attention: keys, values,
             key_mask) and lead_path.inputs when the model has a lead path
    outputs  quantiles (1, A, H, Q), direction_logit (1, A, H), log_vol (1, A, H) [, mean (1, A, H)], then the
             state after the bar under the same names prefixed with "next."

The state before the first bar is HybridModel.init_state(1) (zeros and an all-False key mask): `initial_state` gives
it as the named arrays the graph takes, so a runtime starts from that and feeds every "next." output back in.

Before it writes OUT the command runs both over `--bars` bars (1,000 by default) of the run's own data from the
empty state and refuses the export unless every output and state agrees to `--tolerance` (1e-5). onnxruntime (and
onnx, onnxscript, which torch.onnx needs) are optional dependencies: requirements-optional.txt.

    python -m engine.export --run assets/demo_checkpoint --onnx runs/demo_step.onnx
    python -m engine.export --run data/runs/run-... --onnx step.onnx --db data/bars.duckdb --symbols BTC SPY AAPL --interval 1h
"""
from __future__ import annotations

import argparse
import sys
import time
from dataclasses import dataclass, fields
from pathlib import Path

import numpy as np
import torch
from torch import Tensor, nn

from engine.model.hybrid import HybridModel, StepState

OUTPUT_NAMES = ("quantiles", "direction_logit", "log_vol", "mean")
OPSET = 23
DEFAULT_BARS = 1000
DEFAULT_TOLERANCE = 1e-5


@dataclass(frozen=True)
class StateLayout:
    """Where each tensor of a StepState goes in the graph's flat list of inputs: (layer index or "lead_path", the
    state dataclass's field) in order, and the dataclass of every layer."""

    slots: tuple[tuple[int | str, str], ...]
    layer_types: tuple[type, ...]
    lead_type: type | None

    @classmethod
    def of(cls, state: StepState) -> StateLayout:
        slots = [(i, f.name) for i, layer in enumerate(state.layers) for f in fields(layer)]
        if state.lead_path is not None:
            slots += [("lead_path", f.name) for f in fields(state.lead_path)]
        return cls(tuple(slots), tuple(type(layer) for layer in state.layers),
                   None if state.lead_path is None else type(state.lead_path))

    @property
    def names(self) -> list[str]:
        return [f"layer{where}.{name}" if isinstance(where, int) else f"{where}.{name}" for where, name in self.slots]

    def flatten(self, state: StepState) -> list[Tensor]:
        return [getattr(state.layers[where] if isinstance(where, int) else state.lead_path, name)
                for where, name in self.slots]

    def unflatten(self, tensors: list[Tensor] | tuple[Tensor, ...]) -> StepState:
        per_layer: dict[int | str, dict[str, Tensor]] = {}
        for (where, name), tensor in zip(self.slots, tensors):
            per_layer.setdefault(where, {})[name] = tensor
        layers = [kind(**per_layer[i]) for i, kind in enumerate(self.layer_types)]
        lead = None if self.lead_type is None else self.lead_type(**per_layer["lead_path"])
        return StepState(layers, lead)


class StepFunction(nn.Module):
    """HybridModel.step with its state as plain tensors: (x, mask, *state) -> (forecasts..., *next state)."""

    def __init__(self, model: HybridModel):
        super().__init__()
        if not isinstance(model, HybridModel):
            raise TypeError(f"the ONNX export is the hybrid's step; this run holds a {type(model).__name__} "
                             f"(kind {model.config.kind!r})")
        self.model = model.eval()
        self.layout = StateLayout.of(model.init_state(1))
        self.has_mean = bool(model.config.point_head)

    @property
    def output_names(self) -> list[str]:
        heads = [name for name in OUTPUT_NAMES if name != "mean" or self.has_mean]
        return heads + [f"next.{name}" for name in self.layout.names]

    @property
    def input_names(self) -> list[str]:
        return ["x", "mask", *self.layout.names]

    def forward(self, x: Tensor, mask: Tensor, *state: Tensor) -> tuple[Tensor, ...]:
        output, new_state = self.model.step(x, mask, self.layout.unflatten(state))
        heads = [output.quantiles[:, :, 0], output.direction_logit[:, :, 0], output.log_vol[:, :, 0]]
        if self.has_mean:
            heads.append(output.mean[:, :, 0])
        return (*heads, *self.layout.flatten(new_state))


def initial_state(step: StepFunction) -> dict[str, np.ndarray]:
    """The state before the first bar as the graph's named inputs."""
    state = step.model.init_state(1, device="cpu", dtype=torch.float32)
    return {name: tensor.numpy() for name, tensor in zip(step.layout.names, step.layout.flatten(state))}


def export_step(model: HybridModel, path: str | Path) -> StepFunction:
    """Write the model's step function (float32, CPU, batch 1) to `path` as ONNX; returns the wrapper exported."""
    step = StepFunction(model.float().cpu())
    config = step.model.config
    x = torch.zeros(1, config.n_assets, config.n_features)
    mask = torch.ones(1, config.n_assets, dtype=torch.bool)
    state = step.layout.flatten(step.model.init_state(1, device="cpu", dtype=torch.float32))
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    # The step's input checks (shapes, finite features at open bars) are Python that reads tensor values: the
    # exporter cannot trace a branch on data, and the graph has no use for it (the runtime's inputs are typed and
    # shaped by the graph). They are switched off on this instance while it is traced, and nothing else changes.
    step.model._check_inputs = lambda *args, **kwargs: None
    try:
        with torch.no_grad():
            program = torch.onnx.export(step, (x, mask, *state), input_names=step.input_names,
                                        output_names=step.output_names, opset_version=OPSET, dynamo=True,
                                        verbose=False)
        program.save(str(path))
    finally:
        del step.model._check_inputs  # the class's checks again
    return step


def onnx_session(path: str | Path, threads: int = 1):
    """An ONNX Runtime CPU session on `threads` threads (1: how the app would step beside its server)."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    return ort.InferenceSession(str(path), sess_options=options, providers=["CPUExecutionProvider"])


@dataclass(frozen=True)
class StepCheck:
    bars: int
    max_abs_diff: float  # over every output and state tensor, every bar
    worst_output: str
    torch_ms_per_bar: float
    onnx_ms_per_bar: float


def check_against_torch(step: StepFunction, session, x: np.ndarray, mask: np.ndarray) -> StepCheck:
    """Run PyTorch's step mode and the ONNX graph side by side over the bars of x (T, A, F), mask (T, A), each
    from the empty state and each carrying its own state: the largest absolute difference of any output or state
    tensor at any bar, and each one's time per bar."""
    names = step.output_names
    feed_state = initial_state(step)
    torch_state = step.model.init_state(1, device="cpu", dtype=torch.float32)
    worst, worst_name, torch_s, onnx_s = 0.0, "", 0.0, 0.0
    x32 = np.ascontiguousarray(np.nan_to_num(np.where(mask[..., None], x, 0.0)), dtype=np.float32)
    with torch.inference_mode():
        for t in range(len(x)):
            xt, mt = x32[t][None], np.ascontiguousarray(mask[t][None], dtype=bool)
            t0 = time.perf_counter()
            output, torch_state = step.model.step(torch.from_numpy(xt), torch.from_numpy(mt), torch_state)
            torch_s += time.perf_counter() - t0
            expected = [output.quantiles[:, :, 0], output.direction_logit[:, :, 0], output.log_vol[:, :, 0]]
            if step.has_mean:
                expected.append(output.mean[:, :, 0])
            expected += step.layout.flatten(torch_state)
            t0 = time.perf_counter()
            got = session.run(None, {"x": xt, "mask": mt, **feed_state})
            onnx_s += time.perf_counter() - t0
            feed_state = dict(zip(step.layout.names, got[len(names) - len(step.layout.names):]))
            for name, want, have in zip(names, expected, got):
                diff = float(np.max(np.abs(want.numpy().astype(np.float64) - np.asarray(have, dtype=np.float64)),
                                    initial=0.0))
                if diff > worst:
                    worst, worst_name = diff, f"{name} at bar {t}"
    bars = max(len(x), 1)
    return StepCheck(len(x), worst, worst_name, 1e3 * torch_s / bars, 1e3 * onnx_s / bars)


def run_features(run_dir: str | Path, loaded) -> tuple[HybridModel, np.ndarray, np.ndarray]:
    """The run's model and its data's features as it reads them: x (T, A, F), mask (T, A)."""
    from engine.diagnostics.for_run import run_on_panel

    on_panel = run_on_panel(run_dir, loaded)
    return on_panel.model, np.moveaxis(on_panel.features.values, 0, 1), on_panel.features.mask.T


def build_parser() -> argparse.ArgumentParser:
    from engine.evaluate import add_run_and_data_arguments

    parser = argparse.ArgumentParser(prog="python -m engine.export", description=__doc__.split("\n\n")[0])
    add_run_and_data_arguments(parser)
    parser.add_argument("--onnx", required=True, help="where to write the ONNX graph")
    parser.add_argument("--bars", type=int, default=DEFAULT_BARS, help="bars of the run's data to check it on")
    parser.add_argument("--tolerance", type=float, default=DEFAULT_TOLERANCE,
                        help="largest absolute difference from PyTorch's step mode allowed")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        import onnxruntime  # noqa: F401
    except ImportError:
        print("export: onnxruntime is not installed: pip install -r requirements-optional.txt", file=sys.stderr)
        return 2
    from engine.evaluate import panel_from_arguments
    from engine.model.checkpoint import CheckpointError

    torch.set_num_threads(1)
    try:
        model, x, mask = run_features(args.run, panel_from_arguments(args))
        out = Path(args.onnx)
        candidate = out.with_name(out.name + ".checking")
        step = export_step(model, candidate)
        check = check_against_torch(step, onnx_session(candidate), x[: args.bars], mask[: args.bars])
    except (CheckpointError, ValueError) as error:
        print(f"export: {error}", file=sys.stderr)
        return 2
    if not check.max_abs_diff <= args.tolerance:
        candidate.unlink(missing_ok=True)
        print(f"export: refused: the ONNX step differs from PyTorch's by {check.max_abs_diff:.3g} "
              f"({check.worst_output}) over {check.bars} bars, more than {args.tolerance:g}", file=sys.stderr)
        return 1
    candidate.replace(out)
    print(f"wrote {out}: {len(step.input_names)} inputs, {len(step.output_names)} outputs; over {check.bars} bars "
          f"the largest difference from PyTorch's step mode is {check.max_abs_diff:.3g} (<= {args.tolerance:g}); "
          f"per bar, one thread: PyTorch {check.torch_ms_per_bar:.3f} ms, ONNX Runtime {check.onnx_ms_per_bar:.3f} ms")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
