"""Did the model find what the demo planted? Four claims, each measured and returned with its numbers.

The demo market (storage/sources/DEMO.md, SYNTHETIC) plants a lead (BTC leads SPY and AAPL by L bars), regimes
shared by all assets, and a drift memory that is longest in the calm regime. Each function below states one claim
precisely, measures it, and says whether it holds; the recovery tests assert them on the shipped checkpoint, and the
negative control (variant="null") asserts that they do NOT hold where nothing was planted.

  1 lead-lag   for each follower, the largest cross-asset weight of the lead-lag map is the leader at key lag L-1,
               i.e. "lead = key lag + 1 equals the planted lag L". The reading: the map is taken at the forecast
               origin t, and the heads there forecast the return of bar t+1, which carries the leader's return at
               t+1-L; that bar sits at key lag L-1 from t. (On the demo, corr(SPY next bar, BTC at key lag L-1) is
               0.29 at 1h and 0.42 at 1d; at key lag L it is 0.06 and 0.08.)
  2 regimes    per asset, the ARI of the embedding labels against the planted regimes is at least the filtered
               Markov-switching baseline's, and above the 95th percentile of ARIs against the planted labels
               circularly shifted (same spells, wrong timing): an ARI "as high as a baseline that finds nothing"
               is not a recovery
  3 look-back  per asset, the median effective look-back is strictly ordered like truth.memory_order; whether the
               data itself rewards that order is measured without a model by engine.diagnostics.planted_memory
  4 forecasts  per follower, the 1-bar forecasts' squared error beats zero and AR(1) out of sample: Diebold-Mariano
               statistic < 0 with p < alpha
"""
from __future__ import annotations

from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Mapping, Sequence

import numpy as np
import pandas as pd
import torch
from sklearn.metrics import adjusted_rand_score

from engine.diagnostics.bundle import (
    DiagnosticsBundle,
    DiagnosticsConfig,
    compute_diagnostics,
)
from engine.diagnostics.for_run import run_on_panel
from engine.diagnostics.lead_lag import strongest_source
from engine.diagnostics.regimes import RegimeConfig
from engine.evaluation.baselines import (
    BaselineConfig,
    BaselineInput,
    MarkovRegime,
    walk_forward_baselines,
)
from engine.evaluation.predictions import forecast_span, load_predictions
from engine.evaluation.scores import Predictions, diebold_mariano, squared_errors
from engine.model.checkpoint import CheckpointError
from engine.targets import Targets, compute_targets
from engine.training.config import TrainConfig
from engine.training.loop import make_folds
from storage.panel import LoadedPanel, PlantedTruth


@dataclass(frozen=True)
class Claim:
    name: str
    holds: bool
    table: pd.DataFrame  # the measured numbers, one row per asset (or asset x comparison)
    detail: dict = field(default_factory=dict)

    def __str__(self) -> str:
        verdict = "HOLDS" if self.holds else "does NOT hold"
        return f"claim {self.name}: {verdict}\n{self.table.to_string(index=False)}"


def lead_lag_claim(
    weights: np.ndarray, symbols: Sequence[str], leader: str, followers: Sequence[str], lead: int
) -> Claim:
    """weights (A, A, K+1) lead-lag map -> is every follower's strongest cross-asset weight the leader's, with
    lead = key lag + 1 equal to `lead` (the planted lag L, in bars)? Key lag = lead - 1 because the map is read at
    the forecast origin t for the return of bar t+1 (see the module docstring)."""
    if lead < 1:
        raise ValueError(f"lead_lag_claim: a lead is at least 1 bar (key lag lead-1 >= 0), got lead={lead}")
    key_lag = lead - 1
    records = []
    for follower in followers:
        source, found_lag, weight = strongest_source(weights, symbols, follower)
        row = weights[list(symbols).index(follower), list(symbols).index(leader)]  # (K+1,)
        records.append({"target": follower, "strongest_source": source, "strongest_key_lag": found_lag,
                        "lead": found_lag + 1, "weight": weight,
                        f"weight_at_{leader}_key_lag{key_lag}": float(row[key_lag]),
                        f"weight_at_{leader}_key_lag{lead}": float(row[lead]) if lead < len(row) else np.nan,
                        "holds": source == leader and found_lag == key_lag})
    table = pd.DataFrame.from_records(records)
    return Claim(f"1 lead-lag (lead = key lag + 1 = {lead})", bool(table["holds"].all()), table)


def hmm_regime_labels(
    data: BaselineInput, train: range, rows: range, n_regimes: int, config: BaselineConfig = BaselineConfig()
) -> np.ndarray:
    """(A, len(rows)) most likely regime per bar from the Markov-switching baseline's FILTERED probabilities (data
    up to each bar only), fitted on `train`; -1 where it makes no forecast (closed market)."""
    baseline = MarkovRegime(replace(config, n_regimes=n_regimes))
    probs = baseline.fit(data, train).predict(data, rows).extras["regime_prob"]  # (A, n, K)
    finite = np.isfinite(probs).all(axis=-1)
    return np.where(finite, np.argmax(np.nan_to_num(probs, nan=-1.0), axis=-1), -1)


def shifted_ari_quantile(truth: np.ndarray, labels: np.ndarray, n_shifts: int, level: float, seed: int) -> float:
    """The `level` quantile of ARI(labels, truth rolled by a random offset): what chance scores with these spells."""
    rng = np.random.default_rng(seed)
    n = len(truth)
    offsets = rng.integers(n // 10, n - n // 10, size=n_shifts) if n >= 20 else np.arange(1, n)
    return float(np.quantile([adjusted_rand_score(np.roll(truth, k), labels) for k in offsets], level))


def regime_claim(
    model_labels: np.ndarray,
    hmm_labels: np.ndarray,
    truth: np.ndarray,
    open_bars: np.ndarray,
    symbols: Sequence[str],
    *,
    n_shifts: int = 200,
    level: float = 0.95,
    seed: int = 0,
) -> Claim:
    """model_labels, hmm_labels, open_bars (A, n) and truth (n,) over the same rows; scored on each asset's open bars
    where both have a label."""
    records = []
    for asset, symbol in enumerate(symbols):
        use = open_bars[asset] & (model_labels[asset] >= 0) & (hmm_labels[asset] >= 0)
        ari_model = adjusted_rand_score(truth[use], model_labels[asset, use])
        ari_hmm = adjusted_rand_score(truth[use], hmm_labels[asset, use])
        chance = shifted_ari_quantile(truth[use], model_labels[asset, use], n_shifts, level, seed)
        records.append({"symbol": symbol, "n_bars": int(use.sum()), "ari_model": ari_model, "ari_hmm": ari_hmm,
                        f"ari_shifted_q{level:g}": chance,
                        "holds": ari_model >= ari_hmm and ari_model > chance})
    table = pd.DataFrame.from_records(records)
    return Claim("2 regimes", bool(table["holds"].all()), table)


def lookback_claim(
    lookback_median: np.ndarray,
    open_bars: np.ndarray,
    truth: np.ndarray,
    regime_names: Sequence[str],
    memory_order: Sequence[str],
    symbols: Sequence[str],
) -> Claim:
    """lookback_median, open_bars (A, n), truth (n,) -> is each asset's median look-back ordered like memory_order?"""
    records = []
    for asset, symbol in enumerate(symbols):
        medians = []
        for name in memory_order:
            values = lookback_median[asset, open_bars[asset] & (truth == list(regime_names).index(name))]
            values = values[np.isfinite(values)]
            medians.append(float(np.median(values)) if len(values) else np.nan)
        ordered = bool(len(medians) > 1 and np.all(np.diff(medians) < 0))
        records.append({"symbol": symbol, **{f"median_{n}": m for n, m in zip(memory_order, medians)},
                        "holds": ordered})
    table = pd.DataFrame.from_records(records)
    return Claim("3 look-back", bool(len(memory_order) > 1 and table["holds"].all()), table)


def forecast_claim(
    model: Predictions,
    baselines: Mapping[str, Predictions],
    targets: Targets,
    followers: Sequence[str],
    *,
    horizon: int = 1,
    alpha: float = 0.05,
) -> Claim:
    """Out-of-sample squared error of the model's point forecast against each baseline's, per follower (DM test)."""
    records = []
    j_model = model.horizons.index(horizon)
    j_true = targets.horizons.index(horizon)
    for name, baseline in baselines.items():
        if not np.array_equal(baseline.rows, model.rows):
            raise ValueError(f"baseline {name!r} forecasts other rows than the model: compare on the same span")
        j_base = baseline.horizons.index(horizon)
        for follower in followers:
            asset = list(targets.symbols).index(follower)
            valid = targets.valid[asset, model.rows, j_true]
            actual = np.where(valid, targets.log_return[asset, model.rows, j_true], np.nan)
            loss_model = squared_errors(actual, model.point[asset, :, j_model])
            loss_base = squared_errors(actual, baseline.point[asset, :, j_base])
            dm = diebold_mariano(loss_model, loss_base, horizon)
            records.append({"symbol": follower, "baseline": name, "n": dm.n, "dm_statistic": dm.statistic,
                            "p_value": dm.p_value, "mse_ratio": float(np.nanmean(loss_model[np.isfinite(loss_base)])
                                                                    / np.nanmean(loss_base[np.isfinite(loss_model)])),
                            "holds": bool(dm.statistic < 0 and dm.p_value < alpha)})
    table = pd.DataFrame.from_records(records)
    return Claim(f"4 forecasts (h={horizon})", bool(len(table) and table["holds"].all()), table)


# ----- all four claims for one training run on a demo panel ------------------------------------------------------


@dataclass(frozen=True)
class RecoveryReport:
    claims: list[Claim]
    bundle: DiagnosticsBundle
    fit_rows: range
    forecast_source: str  # where the out-of-sample forecasts came from

    def __str__(self) -> str:
        return "\n\n".join(str(claim) for claim in self.claims)


def evaluate_recovery(
    run_dir: str | Path, loaded: LoadedPanel, truth: PlantedTruth | None = None, *, lag: int | None = None,
    n_regimes: int = 3,
) -> RecoveryReport:
    """Measure claims 1-4 for the run in run_dir on the demo panel it was trained on.

    truth: the PLANTED truth, by default the one that came with the panel (loaded.truth). For the null control pass
    the planted variant's truth: the structure that was taken out, which the model must not find. lag defaults to
    truth.lag_bars. Regimes (claim 2) and look-back (claim 3)
    are scored on every bar: PCA, clusters and the Markov-switching baseline are all fitted on the final model's
    training span only and applied forward, so both methods are judged alike. Forecasts (claim 4) are the run's
    out-of-sample record: every fold's test span, each forecast by the model of its fold.
    """
    truth = loaded.truth if truth is None else truth
    if truth is None:
        raise ValueError(f"{loaded.label} has no planted truth to recover: recovery is measured on the demo market")
    run = run_on_panel(run_dir, loaded)
    model, manifest, features, fit_rows = run.model, run.manifest, run.features, run.fit_rows
    panel = loaded.panel
    fingerprint = loaded.fingerprint()
    if fingerprint.content_hash != manifest.fingerprint.content_hash:
        raise CheckpointError(
            f"run {manifest.run_id} was trained on data {manifest.fingerprint.content_hash}, this panel is "
            f"{fingerprint.content_hash}: recovery is measured on the training data's own panel"
        )
    train_config = TrainConfig.from_dict(manifest.training["config"])
    bundle = compute_diagnostics(model, features, fit_rows, DiagnosticsConfig(RegimeConfig(n_regimes=n_regimes)))

    symbols = tuple(panel.symbols)
    n_rows = len(panel.ts)
    planted = truth.regimes.reindex(panel.ts).to_numpy()
    if np.isnan(planted.astype(float)).any():
        raise ValueError("the planted regimes do not cover every bar of the panel: is it the demo panel?")
    targets = compute_targets(panel, train_config.model.horizons)
    data = BaselineInput.from_panel(panel, targets)
    hmm = hmm_regime_labels(data, fit_rows, range(0, n_rows), n_regimes)
    open_bars = bundle.inference.mask
    claims = [
        lead_lag_claim(bundle.lead_lag, symbols, truth.leader, truth.followers,
                       truth.lag_bars if lag is None else lag),
        regime_claim(bundle.regimes.labels, hmm, planted, open_bars, symbols),
        lookback_claim(bundle.inference.lookback_median, open_bars, planted, truth.regime_names,
                       truth.memory_order, symbols),
    ]
    folds = make_folds(n_rows, targets, train_config)
    try:
        predictions, _, _ = load_predictions(run_dir)
        source = "the run's per-fold out-of-sample predictions"
        baseline_folds = folds
    except CheckpointError:
        # No record shipped: the final model's own test span is the only span it has not been trained on.
        predictions = forecast_span(model, features, folds[-1].test, torch.device("cpu"), train_config.predict_chunk)
        source = "the final model re-run over its own test span"
        baseline_folds = folds[-1:]
    baselines = walk_forward_baselines(data, baseline_folds, names=("zero", "ar1"))
    claims.append(forecast_claim(predictions, baselines, targets, truth.followers))
    return RecoveryReport(claims, bundle, fit_rows, source)
