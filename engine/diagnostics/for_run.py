"""From a checkpoint folder and a panel to the diagnostics the app shows: load, check, featurise, cache.

The training span that PCA and the clusters may see is the one the checkpoint's feature scaler was fitted on (the
final model's training rows): the only rows the model has learnt from, so nothing later leaks into the regimes.
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from engine.diagnostics.bundle import DiagnosticsBundle, DiagnosticsConfig
from engine.diagnostics.cache import load_or_compute_diagnostics
from engine.features import FeatureConfig, FeatureScaler, FeatureSet, build_feature_set
from engine.model.checkpoint import (
    CheckpointError,
    Manifest,
    check_fits,
    load_checkpoint,
)
from engine.model.config import ModelConfig
from engine.model.hybrid import HybridModel
from storage.panel import LoadedPanel


@dataclass(frozen=True)
class RunOnPanel:
    model: HybridModel  # eval mode
    manifest: Manifest
    features: FeatureSet  # normalised with the checkpoint's own scaler
    fit_rows: range  # the final model's training rows


def load_model(run_dir: str | os.PathLike) -> tuple[HybridModel, Manifest]:
    """The checkpoint's model (eval mode) and manifest; safetensors + JSON only."""
    weights, manifest = load_checkpoint(run_dir)
    model = HybridModel(ModelConfig.from_dict(manifest.model_config))
    try:
        model.load_state_dict(weights)
    except RuntimeError as error:
        raise CheckpointError(f"weights in {run_dir} do not fit the model its manifest describes: {error}") from error
    return model.eval(), manifest


def run_on_panel(run_dir: str | os.PathLike, loaded: LoadedPanel) -> RunOnPanel:
    """Load the checkpoint and the panel's features as the model was trained to read them; refuse a misfit."""
    model, manifest = load_model(run_dir)
    check_fits(manifest, symbols=loaded.symbols, interval=loaded.interval, feature_names=manifest.feature_names)
    feature_config = FeatureConfig(**manifest.training.get("config", {}).get("features", {}))
    scaler = FeatureScaler.from_dict(manifest.scaler)
    fit_rows = range(*scaler.fit_rows)
    if fit_rows.stop > len(loaded.panel.ts):
        raise CheckpointError(
            f"checkpoint {manifest.run_id} was fitted on rows {fit_rows.start}..{fit_rows.stop - 1}, but the panel "
            f"has only {len(loaded.panel.ts)} rows: load at least the span it was trained on"
        )
    features = build_feature_set(loaded.panel, fit_rows, feature_config, scaler=scaler)
    if list(features.names) != list(manifest.feature_names):
        raise CheckpointError(f"checkpoint {manifest.run_id} reads other features than computed now: retrain it")
    return RunOnPanel(model, manifest, features, fit_rows)


def diagnostics_for_run(
    run_dir: str | os.PathLike,
    loaded: LoadedPanel,
    config: DiagnosticsConfig = DiagnosticsConfig(),
    cache_dir: str | os.PathLike | None = None,
) -> tuple[DiagnosticsBundle, str]:
    """The diagnostics of checkpoint `run_dir` on `loaded`, from the cache when sound -> (bundle, status)."""
    run = run_on_panel(Path(run_dir), loaded)
    return load_or_compute_diagnostics(run.model, run.features, run.fit_rows, run_id=run.manifest.run_id,
                                       fingerprint=loaded.fingerprint(), config=config, cache_dir=cache_dir)
