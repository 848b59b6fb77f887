"""Diagnostics kept live: when a refresh appends bars, advance them over the new bars only.

compute_diagnostics runs the model over the whole history and refits the regimes: seconds for 3 x 20,000 hourly
bars, to show one new bar. Here the bundle is kept together with what continuing it needs:

  * the model's state after the last bar (engine.model.inference.run_inference_with_state), so the model takes
    only the new bars (extend_inference: the numbers of one pass over everything);
  * the fitted regime transforms (standardiser, PCA, clusterer and the renumbering, per asset) that
    engine.diagnostics.regimes.fit_regimes fitted on the training rows, so a new bar is projected and labelled
    without a refit, and the transition counts are carried on from the last labelled open bar;
  * the features the bundle was computed on, so `advance` can check that the new panel extends them (the same
    rows, bit for bit, plus new ones) and falls back to a full compute when a refresh revised the history.

The result equals compute_diagnostics over the whole panel (tests/engine/test_live_diagnostics.py). The cost of
`advance` is O(new bars) in the model and the regimes; checking the prefix is one comparison of the stored
feature arrays (a millisecond at 20,000 bars). Building the features of the new panel is the caller's (pandas over
the panel: engine.features is not incremental).
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd

from engine.diagnostics.bundle import DiagnosticsBundle, DiagnosticsConfig
from engine.diagnostics.regimes import (
    NO_LABEL,
    RegimeConfig,
    RegimeResult,
    fit_regimes,
    row_normalise,
    transition_counts,
)
from engine.features import FeatureSet
from engine.model.hybrid import HybridModel, StepState
from engine.model.inference import extend_inference, run_inference_with_state


@dataclass(frozen=True)
class AssetRegimeFit:
    """One asset's fitted regime transforms (fit_regimes's, kept)."""

    scaler: object  # sklearn StandardScaler
    pca: object  # sklearn PCA
    clusterer: object  # KMeans or GaussianMixture
    renumber: np.ndarray  # (K,) raw cluster -> regime number (ordered by the centre's first coordinate)
    cluster_dims: int  # the leading coordinates the clusters see


def fit_regimes_kept(embeddings: np.ndarray, mask: np.ndarray, fit_rows: range,
                     config: RegimeConfig | None = None) -> tuple[RegimeResult, tuple[AssetRegimeFit, ...]]:
    """fit_regimes, and its fitted transforms, to label later bars without a refit."""
    fitted: list = []
    result = fit_regimes(embeddings, mask, fit_rows, config or RegimeConfig(), fitted=fitted)
    return result, tuple(AssetRegimeFit(*parts) for parts in fitted)


def extend_regimes(previous: RegimeResult, fits: tuple[AssetRegimeFit, ...], embeddings: np.ndarray,
                   mask: np.ndarray, n_regimes: int) -> RegimeResult:
    """previous (over the first T_old rows) carried on over the rows after them: embeddings (A, T, E) and mask
    (A, T) of the whole panel; only rows T_old.. are transformed and labelled."""
    n_old = previous.labels.shape[1]
    new_projections, new_labels = [], []
    counts = previous.transition_counts.copy()
    for asset, fit in enumerate(fits):
        coords = fit.pca.transform(fit.scaler.transform(embeddings[asset, n_old:])).astype(np.float32)
        raw = fit.clusterer.predict(coords[:, : fit.cluster_dims])
        started = (np.cumsum(mask[asset, n_old:]) > 0) | bool(mask[asset, :n_old].any())
        labels = np.where(started, fit.renumber[raw], NO_LABEL)
        # The transitions of the new open bars, joined to the last labelled open bar before them.
        old_seen = np.flatnonzero(mask[asset, :n_old] & (previous.labels[asset] >= 0))
        head = previous.labels[asset, old_seen[-1:]]
        counts[asset] += transition_counts(np.concatenate([head, labels]),
                                           np.concatenate([np.ones(len(head), bool), mask[asset, n_old:]]), n_regimes)
        new_projections.append(coords)
        new_labels.append(labels)
    return RegimeResult(
        np.concatenate([previous.projections, np.stack(new_projections)], axis=1),
        np.concatenate([previous.labels, np.stack(new_labels)], axis=1),
        previous.explained_variance_ratio, row_normalise(counts), counts, previous.fit_rows)


@dataclass(frozen=True)
class LiveDiagnostics:
    """A bundle and what continuing it needs (see the module doc)."""

    bundle: DiagnosticsBundle
    state: StepState  # the model's state after the bundle's last bar
    fits: tuple[AssetRegimeFit, ...]
    features: FeatureSet  # the features the bundle was computed on
    fit_rows: range
    config: DiagnosticsConfig

    def starts(self, features: FeatureSet) -> bool:
        """Whether `features` begin with this bundle's rows, unchanged (the same symbols, features, times, mask and
        values, bit for bit): then only the rows after them are new."""
        old = self.features
        n_old = old.values.shape[1]
        return (tuple(features.symbols) == tuple(old.symbols) and tuple(features.names) == tuple(old.names)
                and features.values.shape[1] >= n_old
                and pd.DatetimeIndex(features.ts[:n_old]).equals(pd.DatetimeIndex(old.ts))
                and np.array_equal(features.mask[:, :n_old], old.mask)
                and np.array_equal(features.values[:, :n_old], old.values, equal_nan=True))


def start_live(model: HybridModel, features: FeatureSet, fit_rows: range,
               config: DiagnosticsConfig | None = None) -> LiveDiagnostics:
    """compute_diagnostics, keeping what `advance` continues from."""
    config = config or DiagnosticsConfig()
    inference, state = run_inference_with_state(model, features, config.inference)
    regimes, fits = fit_regimes_kept(inference.embeddings, inference.mask, fit_rows, config.regimes)
    bundle = DiagnosticsBundle(inference, regimes, inference.lead_lag)
    return LiveDiagnostics(bundle, state, fits, features, fit_rows, config)


def advance(model: HybridModel, live: LiveDiagnostics, features: FeatureSet) -> tuple[LiveDiagnostics, str]:
    """The diagnostics of `features`: over the new rows only when they extend live's, else computed afresh.
    -> (LiveDiagnostics, "advanced by k bars", "unchanged" or "computed: <why>")."""
    if not live.starts(features):
        fresh = start_live(model, features, live.fit_rows, live.config)
        return fresh, "computed: the panel is not the previous one plus new bars (a revised or other history)"
    n_new = features.values.shape[1] - live.features.values.shape[1]
    if n_new == 0:
        return live, "unchanged"
    inference, state = extend_inference(model, live.bundle.inference, live.state, features, live.config.inference)
    regimes = extend_regimes(live.bundle.regimes, live.fits, inference.embeddings, inference.mask,
                             live.config.regimes.n_regimes)
    bundle = DiagnosticsBundle(inference, regimes, inference.lead_lag)
    return LiveDiagnostics(bundle, state, live.fits, features, live.fit_rows, live.config), f"advanced by {n_new} bars"
