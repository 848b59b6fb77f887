"""The hybrid's peers as presets of the one training recipe: `python -m engine.train --preset NAME ...`.

A preset changes the MODEL of a base TrainConfig (the demo recipe, or the folds sized to a cached panel) and nothing
else: the same walk-forward folds, windows, targets, heads, optimiser, early stopping and seeds, so the runs differ
only in the architecture (or, for cost_aware, the objective) and their out-of-sample forecasts score side by side
(python -m engine.evaluate --run HYBRID --peers PEER...; python -m engine.benchmarks.peers).

    hybrid        the base config as it is
    pure_ssm      the hybrid without its attention layers (and so without the lead path): one SSM stream per asset
    late_fusion   the hybrid's SSM layers first, then cross-asset attention once, as the last layer. A base whose
                  only attention layer is already the last (the 1h demo recipe: ssm, attn) IS its late fusion
    transformer   a per-asset causal Transformer of the same width and depth over the last `window` bars
                  (engine.model.peers.TransformerPeer)
    lstm          a per-asset LSTM of the same width and depth (engine.model.peers.LSTMPeer)
    cost_aware    the hybrid trained with the cost-aware objective added (TrainConfig.cost_aware_weight; see
                  engine.model.losses.cost_aware_loss)

Depth: a peer has as many layers as the base's layer_pattern (engine.model.config: a peer reads its length).
The skip paths of the general recipe (closed-form linear fits, read through the lead path) go with the lead path:
pure_ssm, transformer and lstm train without them, so on a base with skip paths those peers also lack its
statistical starting point (compare on a base without them, as engine.benchmarks.peers does, to isolate the
architecture).
"""
from __future__ import annotations

import dataclasses
from collections.abc import Callable

from engine.training.config import TrainConfig

# The cost-aware preset's weight on the net-return term, next to the statistical losses (standardised units:
# the net return of a unit position is ~N(0, 1) per bar, the other terms are of order 1 too).
COST_AWARE_WEIGHT = 1.0


# The skip paths (engine.model.heads.SkipPaths: closed-form linear fits read through the lead path) need the lead
# path, which only the hybrid's cross-asset attention has: a model without it trains without them.
NO_SKIP_PATHS = {"skip_paths": False, "vol_skip_features": (), "span_feature": None}


def _model(config: TrainConfig, **changes) -> TrainConfig:
    return dataclasses.replace(config, model=dataclasses.replace(config.model, **changes))


def hybrid(config: TrainConfig) -> TrainConfig:
    return config


def pure_ssm(config: TrainConfig) -> TrainConfig:
    pattern = tuple(kind for kind in config.model.layer_pattern if kind == "ssm")
    if not pattern:
        raise ValueError(f"pure_ssm: the base layer_pattern {config.model.layer_pattern} has no SSM layer")
    return _model(config, kind="hybrid", layer_pattern=pattern, lead_path=False, **NO_SKIP_PATHS)


def late_fusion(config: TrainConfig) -> TrainConfig:
    pattern = tuple(kind for kind in config.model.layer_pattern if kind == "ssm") + ("attn",)
    return _model(config, kind="hybrid", layer_pattern=pattern)


def transformer(config: TrainConfig) -> TrainConfig:
    # Context = one training window: the Transformer sees at a bar what a window lets it learn from, no more.
    context = min(config.window, 512)
    return _model(config, kind="transformer", lead_path=False, shared_ssm=False, max_lag=context - 1,
                  **NO_SKIP_PATHS)


def lstm(config: TrainConfig) -> TrainConfig:
    return _model(config, kind="lstm", lead_path=False, shared_ssm=False, **NO_SKIP_PATHS)


def cost_aware(config: TrainConfig) -> TrainConfig:
    return dataclasses.replace(config, cost_aware_weight=COST_AWARE_WEIGHT)


PRESETS: dict[str, Callable[[TrainConfig], TrainConfig]] = {
    "hybrid": hybrid, "pure_ssm": pure_ssm, "late_fusion": late_fusion, "transformer": transformer, "lstm": lstm,
    "cost_aware": cost_aware,
}


def apply_preset(config: TrainConfig, name: str) -> TrainConfig:
    """The base config with the named preset applied; ValueError naming the presets for an unknown one."""
    if name not in PRESETS:
        raise ValueError(f"unknown preset {name!r}: choose one of {', '.join(PRESETS)}")
    return PRESETS[name](config)
