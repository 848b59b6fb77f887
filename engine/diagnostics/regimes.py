"""Regimes from the model's per-asset SSM state: PCA for the scatter, clusters for the labels, their transitions.

Everything is fitted on the TRAINING span only (the asset's open bars there) and then applied bar by bar: a bar's
projection and label are functions of that bar's embedding alone, and the embedding is causal, so a label never
uses a later bar (no smoothing, no Viterbi path). A closed bar's embedding is the last open bar's (the SSM state is
carried), so its label is too; bars before an asset's first fresh bar get no label (-1).

Cluster numbers from k-means or a mixture are arbitrary; they are renumbered by the first principal coordinate of
their centre, so the same data always gives the same numbering and colours stay put across reruns.

The clusters are fitted on the leading `cluster_components` coordinates (default: the first alone), not on every
kept one. A regime is one slow categorical state, and the first component is the direction the state moves most;
the next ones can carry variation of their own that is not a regime (on the demo, SPY's second component holds
20 % of the variance and none of the planted regimes: its R^2 on them is 0.007), and k-means in three dimensions
then splits along it. Measured on the demo checkpoint (tests/engine/test_recovery.py): with three components
SPY's labels were at chance (ARI 0.07 against 0.12), with the first alone 0.40. The scatter still shows
`n_components` coordinates.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import numpy as np
import pandas as pd

NO_LABEL = -1


@dataclass(frozen=True)
class RegimeConfig:
    n_regimes: int = 3
    n_components: int = 3  # principal components kept for the scatter
    cluster_components: int | None = 1  # the leading ones the clusters are fitted on; None: all n_components
    method: Literal["kmeans", "gmm"] = "kmeans"
    seed: int = 0
    max_fit_bars: int = 20_000  # cluster fits use at most this many training bars (evenly thinned): bounded cost

    def __post_init__(self) -> None:
        if self.n_regimes < 1:
            raise ValueError(f"RegimeConfig: n_regimes must be >= 1, got {self.n_regimes}")
        if self.n_components < 1:
            raise ValueError(f"RegimeConfig: n_components must be >= 1, got {self.n_components}")
        if self.cluster_components is not None and not 1 <= self.cluster_components <= self.n_components:
            raise ValueError(f"RegimeConfig: cluster_components must be in 1..n_components ({self.n_components}) "
                             f"or None, got {self.cluster_components}")
        if self.method not in ("kmeans", "gmm"):
            raise ValueError(f"RegimeConfig: method must be 'kmeans' or 'gmm', got {self.method!r}")
        if self.max_fit_bars < 1:
            raise ValueError(f"RegimeConfig: max_fit_bars must be >= 1, got {self.max_fit_bars}")


@dataclass(frozen=True)
class RegimeResult:
    projections: np.ndarray  # float32 (A, T, n_components): PCA coordinates of each bar's embedding
    labels: np.ndarray  # int64 (A, T): regime 0..n_regimes-1, NO_LABEL before the asset's first fresh bar
    explained_variance_ratio: np.ndarray  # (A, n_components), on the training span
    transition_matrix: np.ndarray  # (A, K, K): P(label at next open bar = j | label now = i); NaN rows never visited
    transition_counts: np.ndarray  # int64 (A, K, K)
    fit_rows: tuple[int, int]  # [start, stop) of the training rows everything was fitted on


def _check_inputs(embeddings: np.ndarray, mask: np.ndarray, fit_rows: range) -> None:
    if embeddings.ndim != 3:
        raise ValueError(f"embeddings must be (assets, time, dims), got shape {embeddings.shape}")
    if mask.shape != embeddings.shape[:2]:
        raise ValueError(f"mask has shape {mask.shape}, embeddings {embeddings.shape[:2]} (assets, time)")
    if fit_rows.step != 1 or not 0 <= fit_rows.start < fit_rows.stop <= embeddings.shape[1]:
        raise ValueError(f"fit_rows {fit_rows} must be a contiguous range inside [0, {embeddings.shape[1]})")


def _clusterer(config: RegimeConfig):
    if config.method == "kmeans":
        from sklearn.cluster import (
            KMeans,  # scikit-learn costs ~1 s to import: only when regimes are fitted
        )

        return KMeans(n_clusters=config.n_regimes, n_init=4, random_state=config.seed)
    from sklearn.mixture import GaussianMixture

    return GaussianMixture(n_components=config.n_regimes, covariance_type="full", n_init=2,
                           random_state=config.seed, reg_covar=1e-4)


def _thin(rows: np.ndarray, limit: int) -> np.ndarray:
    """At most `limit` rows, evenly spread over the span (the clusters should see the whole training period)."""
    if len(rows) <= limit:
        return rows
    return rows[np.linspace(0, len(rows) - 1, limit).round().astype(int)]


def transition_counts(labels: np.ndarray, open_bars: np.ndarray, n_regimes: int) -> np.ndarray:
    """labels, open_bars (T,) -> (K, K) counts of label i at one open bar followed by label j at the next."""
    seen = labels[open_bars & (labels >= 0)]
    counts = np.zeros((n_regimes, n_regimes), dtype=np.int64)
    np.add.at(counts, (seen[:-1], seen[1:]), 1)
    return counts


def row_normalise(counts: np.ndarray) -> np.ndarray:
    totals = counts.sum(axis=-1, keepdims=True)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(totals > 0, counts / np.maximum(totals, 1), np.nan)


def fit_regimes(
    embeddings: np.ndarray, mask: np.ndarray, fit_rows: range, config: RegimeConfig = RegimeConfig(), *,
    fitted: list | None = None,
) -> RegimeResult:
    """embeddings (A, T, E), mask (A, T) bool fresh bars -> projections, labels and transitions per asset.
    fitted: a list that receives, per asset, (scaler, pca, clusterer, renumber, clustered coordinates), to label
    later bars without a refit (engine.diagnostics.live)."""
    embeddings, mask = np.asarray(embeddings), np.asarray(mask, dtype=bool)
    _check_inputs(embeddings, mask, fit_rows)
    n_assets, n_rows, n_dims = embeddings.shape
    k, n_components = config.n_regimes, min(config.n_components, n_dims)
    projections = np.zeros((n_assets, n_rows, n_components), dtype=np.float32)
    labels = np.full((n_assets, n_rows), NO_LABEL, dtype=np.int64)
    explained = np.zeros((n_assets, n_components))
    counts = np.zeros((n_assets, k, k), dtype=np.int64)
    for asset in range(n_assets):
        train = np.flatnonzero(mask[asset, fit_rows.start : fit_rows.stop]) + fit_rows.start
        if len(train) < max(k, n_components) + 1:
            raise ValueError(
                f"asset {asset} has {len(train)} fresh bars in the training rows {fit_rows.start}..{fit_rows.stop - 1}: "
                f"too few to fit {n_components} components and {k} regimes"
            )
        # Standardise first: embedding dims mix state means and RMS values on different scales.
        from sklearn.decomposition import PCA
        from sklearn.preprocessing import StandardScaler

        scaler = StandardScaler().fit(embeddings[asset, train])
        pca = PCA(n_components=n_components, random_state=config.seed).fit(scaler.transform(embeddings[asset, train]))
        coords = pca.transform(scaler.transform(embeddings[asset])).astype(np.float32)  # (T, n_components)
        used = coords[:, : config.cluster_components or n_components]  # (T, c) what the clusters see
        clusterer = _clusterer(config).fit(used[_thin(train, config.max_fit_bars)])
        raw = clusterer.predict(used)  # (T,)
        centres = clusterer.cluster_centers_ if config.method == "kmeans" else clusterer.means_
        renumber = np.empty(k, dtype=np.int64)
        renumber[np.argsort(centres[:, 0], kind="stable")] = np.arange(k)
        started = np.cumsum(mask[asset]) > 0  # from the first fresh bar on, the state means something
        labels[asset] = np.where(started, renumber[raw], NO_LABEL)
        if fitted is not None:
            fitted.append((scaler, pca, clusterer, renumber, config.cluster_components or n_components))
        projections[asset] = coords
        explained[asset] = pca.explained_variance_ratio_
        counts[asset] = transition_counts(labels[asset], mask[asset], k)
    return RegimeResult(projections, labels, explained, row_normalise(counts), counts,
                        (fit_rows.start, fit_rows.stop))


@dataclass(frozen=True)
class RegimeSpell:
    """The regime an asset is in at its last open bar, and how long it has held (counted in its own open bars)."""

    label: int  # NO_LABEL when the asset has no open bar
    first_row: int | None  # panel row where the spell began, None when there is no open bar
    bars: int  # open bars in the spell, the last one included


def current_spell(labels: np.ndarray, open_bars: np.ndarray) -> RegimeSpell:
    """labels (T,) and open_bars (T,) bool of ONE asset -> its current spell. Closed bars neither end a spell nor
    count in it: a weekend is not a change of regime."""
    open_rows = np.flatnonzero(open_bars)
    if len(open_rows) == 0:
        return RegimeSpell(NO_LABEL, None, 0)
    seen = labels[open_rows]
    now = int(seen[-1])
    changed = np.flatnonzero(seen != now)
    start = changed[-1] + 1 if len(changed) else 0  # index into open_rows of the spell's first bar
    return RegimeSpell(now, int(open_rows[start]), int(len(seen) - start))


# ---------------------------------------------------------------------------------------------- per-regime table
REGIME_TABLE_COLUMNS = ("regime", "regime_name", "share_of_time", "n_bars", "mean_return", "volatility",
                        "annual_return", "annual_volatility", "n_spells", "mean_spell_bars", "median_spell_bars",
                        "mean_spell_hours", "median_spell_hours")


def regime_table(labels: np.ndarray, open_bars: np.ndarray, closes: np.ndarray, ts, periods_per_year: float,
                 regime_names=None) -> pd.DataFrame:
    """One asset's regimes described: share of time, return and volatility, and how long a spell lasts.

    labels, open_bars, closes: (T,) on the panel clock (closed bars carry the last close; they are skipped).
    Over the asset's open, labelled bars:
    - share_of_time: the regime's share of those bars;
    - mean_return, volatility: mean and sample std (ddof=1) of the simple return of the NEXT open bar after a bar in
      the regime (the label is known at the bar's close, so this is what the regime says about what follows, with no
      look-ahead); annual_*: x periods_per_year and x sqrt(periods_per_year) (engine.calendar's convention);
    - spells: runs of consecutive open bars with the same label; their length in bars, and in hours of wall-clock
      time from the spell's first bar to the next spell's first bar (to one bar past the last bar for the final
      spell, one bar being the median spacing of open bars), so a weekend inside an equity spell counts as time.
    NaN where a figure is undefined (no bars, fewer than two returns).
    """
    labels = np.asarray(labels)
    open_bars = np.asarray(open_bars, dtype=bool)
    closes = np.asarray(closes, dtype=np.float64)
    times = pd.DatetimeIndex(ts)
    if not (len(labels) == len(open_bars) == len(closes) == len(times)):
        raise ValueError(f"regime_table: labels {len(labels)}, open_bars {len(open_bars)}, closes {len(closes)} and "
                         f"ts {len(times)} must have one value per bar")
    rows = np.flatnonzero(open_bars & (labels != NO_LABEL))
    lab, close, when = labels[rows], closes[rows], times[rows]
    next_return = np.full(len(rows), np.nan)
    if len(rows) > 1:
        with np.errstate(divide="ignore", invalid="ignore"):
            next_return[:-1] = close[1:] / close[:-1] - 1.0
    bar = (when[1:] - when[:-1]).median() if len(rows) > 1 else pd.Timedelta(0)
    starts = np.flatnonzero(np.r_[True, lab[1:] != lab[:-1]]) if len(rows) else np.array([], dtype=int)
    stops = np.r_[starts[1:], len(rows)]
    spell_bars = stops - starts
    spell_end_time = [when[stop] if stop < len(rows) else when[-1] + bar for stop in stops]
    spell_hours = np.array([(end - when[start]) / pd.Timedelta(hours=1) for start, end in zip(starts, spell_end_time)])
    spell_label = lab[starts]
    n_regimes = int(labels.max()) + 1 if labels.size and labels.max() >= 0 else 0
    records = []
    for regime in range(n_regimes):
        in_regime = lab == regime
        returns = next_return[in_regime]
        returns = returns[np.isfinite(returns)]
        mean = float(returns.mean()) if returns.size else np.nan
        std = float(returns.std(ddof=1)) if returns.size > 1 else np.nan
        spells = spell_label == regime
        records.append({
            "regime": regime,
            "regime_name": str(regime_names[regime]) if regime_names is not None else f"regime {regime}",
            "share_of_time": float(in_regime.mean()) if len(rows) else np.nan,
            "n_bars": int(in_regime.sum()),
            "mean_return": mean, "volatility": std,
            "annual_return": mean * periods_per_year, "annual_volatility": std * np.sqrt(periods_per_year),
            "n_spells": int(spells.sum()),
            "mean_spell_bars": float(spell_bars[spells].mean()) if spells.any() else np.nan,
            "median_spell_bars": float(np.median(spell_bars[spells])) if spells.any() else np.nan,
            "mean_spell_hours": float(spell_hours[spells].mean()) if spells.any() else np.nan,
            "median_spell_hours": float(np.median(spell_hours[spells])) if spells.any() else np.nan,
        })
    return pd.DataFrame(records, columns=list(REGIME_TABLE_COLUMNS))
