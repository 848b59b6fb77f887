"""The training step replayed as a CUDA graph (engine.training.graphed_step) gives the eager step's numbers.

GPU only: skipped where there is no CUDA device (CI has none; the figures in the notes come from an H200)."""
from __future__ import annotations

import copy
import dataclasses

import pytest
import torch

from engine.model.hybrid import HybridModel
from engine.training.config import default_model_config
from engine.training.graphed_step import GRAPHS_ENV_VAR, GraphedLoss
from engine.training.loop import train_walk_forward
from storage.panel import panel_fingerprint
from tests.engine.test_training import small_panel, tiny_config

pytestmark = pytest.mark.gpu


def _model(seed: int = 0) -> HybridModel:
    torch.manual_seed(seed)
    config = dataclasses.replace(default_model_config(), n_assets=3, n_features=6, d_model=16, d_state=4, n_heads=2,
                                 max_lag=2, dropout=0.0)
    return HybridModel(config).cuda()


def _batch(seed: int, batch: int = 4, length: int = 48):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(batch, 3, length, 6, generator=g).cuda()
    mask = (torch.rand(batch, 3, length, generator=g) > 0.1).cuda()
    target = {"y": torch.randn(batch, 3, length, generator=g).cuda()}
    return x, mask, target


def _loss(model, x, mask, targets):
    out = model(x, mask)
    return ((out.quantiles.mean(dim=-1)[..., 0] - targets["y"]) ** 2).mean() + out.log_vol.square().mean()


def _eager_grads(model, x, mask, targets):
    model.zero_grad(set_to_none=True)
    loss = _loss(model, x, mask, targets)
    loss.backward()
    return float(loss.detach()), {n: p.grad.detach().clone() for n, p in model.named_parameters() if p.grad is not None}


def test_replays_give_each_batchs_own_loss_and_gradients_and_other_shapes_fall_back():
    model = _model()
    reference = copy.deepcopy(model)  # the eager twin: the graphed model's .grad must stay the graph's memory
    graphed = GraphedLoss(model, lambda x, m, t: _loss(model, x, m, t))
    for seed in (1, 2, 3):  # the first call captures; each later one must not accumulate the one before
        x, mask, targets = _batch(seed)
        want_loss, want = _eager_grads(reference, x, mask, targets)
        loss = graphed(x, mask, targets)
        assert loss is not None and graphed.active
        assert float(loss) == pytest.approx(want_loss, rel=1e-5)
        got = {n: p.grad for n, p in model.named_parameters() if p.grad is not None}
        assert got.keys() == want.keys()
        for name in want:
            torch.testing.assert_close(got[name], want[name], rtol=1e-4, atol=1e-6, msg=name)
    assert graphed(*_batch(4, batch=3)) is None  # another shape: the caller runs it eagerly


def test_a_fold_trained_through_the_graph_follows_the_eager_folds_losses(tmp_path, monkeypatch):
    panel = small_panel()
    config = tiny_config(device="cuda", model=dataclasses.replace(tiny_config().model, dropout=0.0))
    losses = {}
    for mode in ("0", "1"):
        monkeypatch.setenv(GRAPHS_ENV_VAR, mode)
        events = []
        result = train_walk_forward(panel, config, interval="1d", fingerprint=panel_fingerprint(panel, "1d"),
                                    run_dir=tmp_path / mode, progress=events.append)
        assert result.outcome == "finished"
        losses[mode] = [e.train_loss for e in events if e.phase == "epoch"]
        assert not any("capture failed" in (e.message or "") for e in events)
    assert len(losses["0"]) == len(losses["1"]) > 0
    assert losses["1"] == pytest.approx(losses["0"], rel=1e-3)

