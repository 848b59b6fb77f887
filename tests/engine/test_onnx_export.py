"""The ONNX export of the hybrid's step: the state as explicit inputs and outputs, equal to PyTorch's step mode."""
from __future__ import annotations

import numpy as np
import pytest
import torch

pytest.importorskip("onnxscript")
onnx = pytest.importorskip("onnx")
pytest.importorskip("onnxruntime")

from engine.diagnostics.for_run import load_model
from engine.export import StepFunction, check_against_torch, export_step, onnx_session
from engine.model.checkpoint import DEMO_CHECKPOINT_DIR
from engine.model.config import ModelConfig
from engine.model.peers import build_model


@pytest.mark.slow  # ~7 s idle on two cores (the dynamo export is most of it), twice that under load
def test_the_demo_step_exports_with_its_state_explicit_and_matches_pytorch_over_1000_bars(tmp_path):
    torch.manual_seed(0)
    model, _ = load_model(DEMO_CHECKPOINT_DIR)
    path = tmp_path / "step.onnx"
    step = export_step(model, path)

    graph = onnx.load(str(path)).graph
    inputs, outputs = [i.name for i in graph.input], [o.name for o in graph.output]
    # SSM (conv window, state), attention (last K keys, values, their mask), the lead path's last K features
    state = ["layer0.conv_buffer", "layer0.ssm_state", "layer1.keys", "layer1.values", "layer1.key_mask",
             "lead_path.inputs"]
    assert inputs == ["x", "mask", *state]
    assert outputs == ["quantiles", "direction_logit", "log_vol", "mean", *[f"next.{name}" for name in state]]

    # 1,000 bars of standardised-scale features, closed bars (NaN features) on 30% of the asset-bars
    rng = np.random.default_rng(1)
    x = rng.standard_normal((1000, 3, model.config.n_features)).astype(np.float32)
    mask = rng.random((1000, 3)) > 0.3
    x[~mask] = np.nan
    check = check_against_torch(step, onnx_session(path), x, mask)
    assert check.bars == 1000
    assert check.max_abs_diff <= 1e-5, check.worst_output


def test_only_the_hybrid_exports():
    config = ModelConfig(n_assets=2, n_features=4, d_model=8, n_heads=2, lead_path=False, kind="lstm")
    with pytest.raises(TypeError, match="hybrid's step"):
        StepFunction(build_model(config))
