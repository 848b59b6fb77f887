"""From a checkpoint folder and a panel to the diagnostics the app shows: load, check, featurise, cache.

The training span that PCA and the clusters may see is the one the checkpoint's feature scaler was fitted on (the
final model's training rows): the only rows the model has learnt from, so nothing later leaks into the regimes.

A checkpoint records its spans as UTC timestamps (manifest.training["fit_span_utc"], ["fold_spans_utc"]), and they
are found on the panel it is given by time: a checkpoint trained on a sub-span (--start/--end, or the common span
of assets that start at different dates) runs on any panel that contains its fit span, with more history before
or after, and refuses one that does not, saying which span it needs.
"""
from __future__ import annotations

import dataclasses
import os
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import pandas as pd

from engine.diagnostics.bundle import DiagnosticsBundle, DiagnosticsConfig
from engine.diagnostics.cache import entry_folder, load_or_compute_diagnostics
from engine.features import FeatureConfig, FeatureScaler, FeatureSet, build_feature_set
from engine.model.checkpoint import (
    CheckpointError,
    Manifest,
    check_fits,
    load_checkpoint,
    read_checkpoint_unloaded,
)
from engine.model.config import ModelConfig
from storage.panel import DataFingerprint, LoadedPanel

if TYPE_CHECKING:  # the model (torch) is loaded on first use: cached diagnostics and findings need none
    from engine.model.hybrid import HybridModel


@dataclass(frozen=True)
class RunOnPanel:
    run_dir: Path  # the checkpoint folder; its model is loaded from there on first use (`model`)
    manifest: Manifest
    fit_rows: range  # the final model's training rows, on this panel
    fit_span: tuple[pd.Timestamp, pd.Timestamp] | None = None  # the same span in UTC (first, last bar open)
    test_spans: tuple[tuple[pd.Timestamp, pd.Timestamp], ...] = ()  # every walk-forward test span, UTC
    # builds the panel's features (normalised with the checkpoint's own scaler) on first use (`features`)
    build_features: Callable[[], FeatureSet] | None = field(default=None, repr=False, compare=False)
    _loading: threading.RLock = field(default_factory=threading.RLock, repr=False, compare=False)

    def _once(self, name: str, make):
        with self._loading:  # one load per run, whichever session asks first
            if name not in self.__dict__:
                object.__setattr__(self, name, make())  # frozen: set once, after construction
            return self.__dict__[name]

    @property
    def model(self) -> HybridModel:
        """The checkpoint's model in eval mode, loaded (torch, every weight checked: load_model) the first time it is
        asked for, once: only what runs the model live asks (a cache miss, the hidden attention, step mode), so a
        page that shows cached diagnostics never imports torch. CheckpointError when the weights do not fit, or
        when the checkpoint was replaced by another since this run was opened."""
        def load():
            model, manifest = load_model(self.run_dir)
            if (manifest.run_id, manifest.model_config) != (self.manifest.run_id, self.manifest.model_config):
                raise CheckpointError(f"checkpoint {self.run_dir} was replaced by another ({manifest.run_id}) "
                                      "while it was shown: reload the page")
            return model

        return self._once("_model", load)

    @property
    def features(self) -> FeatureSet:
        """The panel's features as the model reads them, built on first use (what runs the model needs them)."""
        if self.build_features is None:
            raise ValueError("this run was made without its features")
        return self._once("_features", self.build_features)

    def span_text(self) -> str:
        """'Trained on 2022-01-01 .. 2024-05-27 UTC; tested (walk-forward, out of sample) on 3 spans from ...'."""
        parts = []
        if self.fit_span is not None:
            parts.append(f"Trained on {_when(self.fit_span[0])} .. {_when(self.fit_span[1])} UTC (the final model's "
                         "training span)")
        if self.test_spans:
            count = f"{len(self.test_spans)} walk-forward test spans" if len(self.test_spans) > 1 else "its test span"
            parts.append(f"tested out of sample on {count}, {_when(self.test_spans[0][0])} .. "
                         f"{_when(self.test_spans[-1][1])} UTC")
        return "; ".join(parts) + "." if parts else ""


def _hybrid_only(manifest: Manifest, run_dir: str | os.PathLike) -> ModelConfig:
    config = ModelConfig.from_dict(manifest.model_config)
    if config.kind != "hybrid":  # a neural peer (engine.training.peer_presets): no states or attention to show
        raise CheckpointError(f"run {manifest.run_id} is a {config.kind} peer of the hybrid, trained to compare with "
                              "it: it has no SSM states or lead-lag attention to show. Score it beside the hybrid "
                              f"(python -m engine.evaluate --run HYBRID_RUN --peers {run_dir}); the Backtest page "
                              "trades its forecasts")
    return config


def load_model(run_dir: str | os.PathLike) -> tuple[HybridModel, Manifest]:
    """The checkpoint's model (eval mode) and manifest; safetensors + JSON only. load_checkpoint has checked every
    manifest field (the model's sizes against what the app runs) and the weights (finite floats, exactly the names
    and shapes the config builds) before the model is built; anything left is a CheckpointError too."""
    from engine.model.hybrid import HybridModel

    weights, manifest = load_checkpoint(run_dir)
    config = _hybrid_only(manifest, run_dir)
    try:
        model = HybridModel(config)
        model.load_state_dict(weights)
    except (RuntimeError, ValueError) as error:
        raise CheckpointError(f"weights in {run_dir} do not fit the model its manifest describes: {error}") from error
    return model.eval(), manifest


def run_on_panel(run_dir: str | os.PathLike, loaded: LoadedPanel, *, lazy: bool = False) -> RunOnPanel:
    """The checkpoint, its model and the panel's features as the model was trained to read them; refuse a misfit.

    lazy: load the model and build the features on first use (RunOnPanel.model, .features) instead of now, for a
    page that may show only cached results (no torch then, and no feature pass over the history). What can be
    checked without them (read_checkpoint_unloaded: the manifest, the scaler, the weights' types and values; the
    fit against the panel) is checked here either way, so a broken checkpoint is refused before any cached result
    of it is shown; tensor names and shapes that differ from the config, and feature names that differ from what
    the code computes now, are refused at the first use."""
    model = None
    if lazy:  # the checks that need no model: no torch here
        manifest = read_checkpoint_unloaded(run_dir)
        _hybrid_only(manifest, run_dir)
    else:  # the model now, its weights read and checked once (not a second time by the unloaded check)
        model, manifest = load_model(run_dir)
    check_fits(manifest, symbols=loaded.symbols, interval=loaded.interval, feature_names=manifest.feature_names)
    feature_config = FeatureConfig(**manifest.training.get("config", {}).get("features", {}))
    scaler = FeatureScaler.from_dict(manifest.scaler)
    fit_rows, fit_span = fit_rows_on(manifest, loaded.panel.ts, range(*scaler.fit_rows))
    scaler = dataclasses.replace(scaler, fit_rows=(fit_rows.start, fit_rows.stop))  # its record, on this panel

    def build_features() -> FeatureSet:
        features = build_feature_set(loaded.panel, fit_rows, feature_config, scaler=scaler)
        if list(features.names) != list(manifest.feature_names):
            raise CheckpointError(f"checkpoint {manifest.run_id} reads other features than computed now: retrain it")
        return features

    run = RunOnPanel(Path(run_dir), manifest, fit_rows, fit_span, walk_forward_test_spans(manifest), build_features)
    if model is not None:  # now, as the run is handed out: the model loaded above, and the features
        run._once("_model", lambda: model)
        run.features  # noqa: B018
    return run


def _utc(text: str) -> pd.Timestamp:
    stamp = pd.Timestamp(text)
    return stamp.tz_localize("UTC") if stamp.tzinfo is None else stamp.tz_convert("UTC")


def _when(stamp: pd.Timestamp) -> str:
    return f"{stamp:%Y-%m-%d}" if stamp == stamp.normalize() else f"{stamp:%Y-%m-%d %H:%M}"


def walk_forward_test_spans(manifest: Manifest) -> tuple[tuple[pd.Timestamp, pd.Timestamp], ...]:
    """Every walk-forward test span of the run, UTC (first, last bar open)."""
    return tuple((_utc(fold["test"][0]), _utc(fold["test"][1]))
                 for fold in manifest.training.get("fold_spans_utc", []) if "test" in fold)


def fit_rows_on(manifest: Manifest, ts: pd.DatetimeIndex, recorded: range
                ) -> tuple[range, tuple[pd.Timestamp, pd.Timestamp] | None]:
    """The rows of `ts` that hold the checkpoint's fit span, and the span in UTC; CheckpointError, naming the span
    needed, when the panel does not contain it.

    recorded: the fit rows on the panel it was trained on, used only by a manifest that has no fit_span_utc (made
    before format 3 without fold spans to take it from), and then only on a panel that starts where that data did.
    """
    span = manifest.training.get("fit_span_utc")
    if not span:
        first = _utc(manifest.fingerprint.first_ts) if manifest.fingerprint.first_ts else None
        if first is None or len(ts) == 0 or ts[0] != first or recorded.stop > len(ts):
            since = "an unrecorded start" if first is None else f"{_when(first)} UTC"
            here = "is empty" if len(ts) == 0 else f"starts at {_when(ts[0])} UTC"
            raise CheckpointError(
                f"checkpoint {manifest.run_id} records its training span only as rows {recorded.start}.."
                f"{recorded.stop - 1} of data from {since}; this panel {here}: load the data from that start, or "
                "retrain the checkpoint"
            )
        return recorded, (ts[recorded.start], ts[recorded.stop - 1])
    first, last = _utc(span[0]), _utc(span[1])
    if len(ts) == 0 or first < ts[0] or last > ts[-1]:
        have = "no rows" if len(ts) == 0 else f"{_when(ts[0])} .. {_when(ts[-1])} UTC"
        raise CheckpointError(
            f"checkpoint {manifest.run_id} was trained on {_when(first)} .. {_when(last)} UTC, but this panel covers "
            f"{have}: load data that contains that span (more history before or after is fine)"
        )
    rows = range(int(ts.searchsorted(first, side="left")), int(ts.searchsorted(last, side="right")))
    if len(rows) == 0:
        raise CheckpointError(f"checkpoint {manifest.run_id}: this panel has no rows in its training span "
                              f"{_when(first)} .. {_when(last)} UTC")
    return rows, (first, last)


def diagnostics_for_run(
    run_dir: str | os.PathLike,
    loaded: LoadedPanel,
    config: DiagnosticsConfig = DiagnosticsConfig(),
    cache_dir: str | os.PathLike | None = None,
) -> tuple[DiagnosticsBundle, str]:
    """The diagnostics of checkpoint `run_dir` on `loaded`, from the cache when sound -> (bundle, status)."""
    bundle, status, _ = cached_diagnostics(run_on_panel(Path(run_dir), loaded), loaded, config, cache_dir)
    return bundle, status


def cached_diagnostics(
    run: RunOnPanel,
    loaded: LoadedPanel,
    config: DiagnosticsConfig = DiagnosticsConfig(),
    cache_dir: str | os.PathLike | None = None,
    fingerprint: DataFingerprint | None = None,
) -> tuple[DiagnosticsBundle, str, Path]:
    """The diagnostics of an opened checkpoint on `loaded`, from the cache when sound -> (bundle, status, the cache
    entry's folder, where the pages' further results are kept). Keyed by the checkpoint (Manifest.cache_id: a run
    re-made under the same id is another checkpoint); the model and features are asked of `run` only on a miss, so
    a lazily opened run loads neither when the cache holds the entry. fingerprint: loaded's, when the caller has it
    (it hashes the whole panel)."""
    fingerprint = loaded.fingerprint() if fingerprint is None else fingerprint
    bundle, status = load_or_compute_diagnostics(lambda: run.model, lambda: run.features, run.fit_rows,
                                                 run_id=run.manifest.cache_id, fingerprint=fingerprint,
                                                 config=config, cache_dir=cache_dir)
    return bundle, status, diagnostics_entry(run, fingerprint, config, cache_dir)


def diagnostics_entry(run: RunOnPanel, fingerprint: DataFingerprint,
                      config: DiagnosticsConfig = DiagnosticsConfig(),
                      cache_dir: str | os.PathLike | None = None) -> Path:
    """The folder of the cache entry cached_diagnostics reads or writes for data with this fingerprint (it may
    not exist yet)."""
    return entry_folder(run.manifest.cache_id, fingerprint, run.fit_rows, config, cache_dir)
