"""Scoring forecasts against what happened, and testing whether one forecaster really beats another.

Every forecaster (the model, each baseline) hands in a `Predictions`: forecasts made at origin rows t of the union
clock for horizons h, as arrays (A, n, H[, Q]) with NaN where it makes no forecast (market closed). Scores are taken
per asset and horizon over the rows where the target is valid and the forecast exists; comparisons (Diebold-Mariano)
use only rows where BOTH forecasters have a forecast, so they are always on the same span.

Loss conventions: lower is better for every loss; a negative DM statistic means the reference model's loss is lower.
A two-sided DM p says only that the losses differ, not who is better: the table also carries both one-sided p's
(dm_p_better_<loss>: the reference's loss is lower; dm_p_worse_<loss>: it is higher). Verdicts ("edge" / "worse" /
"none" against the best baseline, corrected for the number of comparisons) are engine.evaluation.skill's.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Literal, Mapping

import numpy as np
import pandas as pd

from engine.targets import Targets

DEFAULT_QUANTILE_LEVELS: tuple[float, ...] = (0.05, 0.1, 0.25, 0.5, 0.75, 0.9, 0.95)
INTERVAL = (0.1, 0.9)  # the central 80% interval whose coverage is reported
PROB_EPS = 1e-6  # log loss clips probabilities here so one overconfident miss is large, not infinite


@dataclass
class Predictions:
    """Forecasts made at `rows` for `horizons`; any output a forecaster lacks is None."""

    rows: np.ndarray  # int (n,): origin rows t on the union clock
    horizons: tuple[int, ...]  # (H,)
    point: np.ndarray | None = None  # (A, n, H): expected log return over (t, t+h]
    quantiles: np.ndarray | None = None  # (A, n, H, Q): log-return quantiles at quantile_levels
    quantile_levels: tuple[float, ...] = DEFAULT_QUANTILE_LEVELS
    prob_up: np.ndarray | None = None  # (A, n, H): P(log return > 0)
    volatility: np.ndarray | None = None  # (A, n, H): std of the h-bar log return (compare Targets.realised_vol)
    extras: dict[str, np.ndarray] = field(default_factory=dict)  # e.g. 'regime_prob' (A, n, K)

    def __post_init__(self):
        self.rows = np.asarray(self.rows, dtype=np.int64)
        self.horizons = tuple(int(h) for h in self.horizons)
        shapes = {
            name: getattr(self, name).shape
            for name in ("point", "prob_up", "volatility")
            if getattr(self, name) is not None
        }
        leading = {shape for shape in shapes.values()}
        if self.quantiles is not None:
            leading.add(self.quantiles.shape[:3])
            if self.quantiles.shape[3] != len(self.quantile_levels):
                raise ValueError(
                    f"quantiles have {self.quantiles.shape[3]} levels, quantile_levels lists {len(self.quantile_levels)}"
                )
        if len(leading) > 1:
            raise ValueError(f"prediction arrays disagree on (assets, rows, horizons): {sorted(leading)}")
        if leading:
            (n_assets, n, n_horizons), = leading
            if n != len(self.rows) or n_horizons != len(self.horizons):
                raise ValueError(
                    f"prediction arrays are (A, {n}, {n_horizons}) but there are {len(self.rows)} rows and "
                    f"{len(self.horizons)} horizons"
                )

    @property
    def n_assets(self) -> int:
        for array in (self.point, self.quantiles, self.prob_up, self.volatility):
            if array is not None:
                return array.shape[0]
        return 0


def concat_predictions(parts: list[Predictions]) -> Predictions:
    """One Predictions over several forward-ordered, non-overlapping spans (e.g. every walk-forward test span)."""
    if not parts:
        raise ValueError("nothing to concatenate")
    first = parts[0]
    for part in parts[1:]:
        if part.horizons != first.horizons or part.quantile_levels != first.quantile_levels:
            raise ValueError("predictions to concatenate must share horizons and quantile levels")
    rows = np.concatenate([part.rows for part in parts])
    if np.any(np.diff(rows) <= 0):
        raise ValueError("prediction spans must move forward without overlapping")

    def joined(name: str):
        arrays = [getattr(part, name) for part in parts]
        if all(array is None for array in arrays):
            return None
        if any(array is None for array in arrays):
            raise ValueError(f"some spans have {name!r} and some do not")
        return np.concatenate(arrays, axis=1)

    extras = {key: np.concatenate([part.extras[key] for part in parts], axis=1)
              for key in first.extras if all(key in part.extras for part in parts)}
    return Predictions(rows=rows, horizons=first.horizons, point=joined("point"), quantiles=joined("quantiles"),
                       quantile_levels=first.quantile_levels, prob_up=joined("prob_up"),
                       volatility=joined("volatility"), extras=extras)


# ---- per-row losses (1-D arrays in, 1-D arrays out; NaN stays NaN) ----


def pinball_losses(actual: np.ndarray, quantiles: np.ndarray, levels) -> np.ndarray:
    """(n,) mean pinball loss over the levels: max(q (y - f), (q - 1) (y - f)). actual (n,), quantiles (n, Q)."""
    levels = np.asarray(levels, dtype=float)[None, :]
    error = actual[:, None] - quantiles
    return np.maximum(levels * error, (levels - 1) * error).mean(axis=1)


def squared_errors(actual: np.ndarray, point: np.ndarray) -> np.ndarray:
    return (actual - point) ** 2


def brier_losses(outcome: np.ndarray, prob: np.ndarray) -> np.ndarray:
    return (prob - outcome.astype(float)) ** 2


def log_losses(outcome: np.ndarray, prob: np.ndarray) -> np.ndarray:
    p = np.clip(prob, PROB_EPS, 1 - PROB_EPS)
    return -np.where(outcome, np.log(p), np.log1p(-p))


def qlike_losses(realised_vol: np.ndarray, forecast_vol: np.ndarray) -> np.ndarray:
    """Patton's QLIKE on variances, normalised so a perfect forecast scores 0: rv/f - log(rv/f) - 1.

    It is robust to noise in the realised proxy (ranks forecasters as the true variance would). Rows with zero
    realised variance (no price change at all) are undefined in this form and come back NaN.
    """
    ratio = realised_vol**2 / forecast_vol**2
    with np.errstate(divide="ignore", invalid="ignore"):
        loss = ratio - np.log(ratio) - 1
    return np.where(realised_vol > 0, loss, np.nan)


def hit_scores(outcome: np.ndarray, prob_up: np.ndarray) -> np.ndarray:
    """1 where the called direction (P(up) above or below 1/2) was right, 0 where wrong, 1/2 for a tie (no call)."""
    called_up = prob_up > 0.5
    called_down = prob_up < 0.5
    hit = np.where(called_up, outcome, np.where(called_down, ~outcome, False)).astype(float)
    return np.where(called_up | called_down, hit, 0.5)


def interval_coverage(actual: np.ndarray, lower: np.ndarray, upper: np.ndarray) -> float:
    """Fraction of actual values inside [lower, upper] (an 80% interval should cover about 0.8)."""
    if len(actual) == 0:
        return math.nan
    return float(np.mean((actual >= lower) & (actual <= upper)))


def calibration_table(outcome: np.ndarray, prob: np.ndarray, n_bins: int = 10) -> pd.DataFrame:
    """Reliability bins of equal width on [0, 1]: forecast probability vs how often the event happened."""
    outcome, prob = np.asarray(outcome, dtype=bool), np.asarray(prob, dtype=float)
    if outcome.shape != prob.shape:
        raise ValueError(f"outcome {outcome.shape} and prob {prob.shape} must have the same shape")
    edges = np.linspace(0.0, 1.0, n_bins + 1)
    # the last bin is closed on the right so P = 1 lands in it
    bins = np.clip(np.searchsorted(edges, prob, side="right") - 1, 0, n_bins - 1)
    count = np.bincount(bins, minlength=n_bins)
    with np.errstate(invalid="ignore", divide="ignore"):  # empty bins: NaN mean and frequency
        mean_prob = np.bincount(bins, weights=prob, minlength=n_bins) / count
        frequency = np.bincount(bins, weights=outcome.astype(float), minlength=n_bins) / count
    return pd.DataFrame({"bin_lower": edges[:-1], "bin_upper": edges[1:], "mean_prob": mean_prob,
                         "frequency": frequency, "count": count.astype(int)})


def expected_calibration_error(outcome: np.ndarray, prob: np.ndarray, n_bins: int = 10) -> float:
    table = calibration_table(outcome, prob, n_bins).dropna()
    if table["count"].sum() == 0:
        return math.nan
    return float((table["count"] * (table["mean_prob"] - table["frequency"]).abs()).sum() / table["count"].sum())


# ---- Diebold-Mariano ----


@dataclass(frozen=True)
class DMResult:
    statistic: float  # HLN-corrected; negative: the first forecaster has the lower loss
    p_value: float  # two-sided, Student t with n - 1 degrees of freedom
    mean_difference: float  # mean(loss_a - loss_b)
    n: int
    p_a_better: float = math.nan  # one-sided: H1 E[loss_a] < E[loss_b] (small when a has the lower loss)
    p_a_worse: float = math.nan  # one-sided: H1 E[loss_a] > E[loss_b]; p_a_better + p_a_worse = 1

    @property
    def direction(self) -> Literal["better", "worse", "tie"]:
        """'better' when the first forecaster's mean loss is the lower one on these rows."""
        if not self.mean_difference == self.mean_difference or self.mean_difference == 0:
            return "tie"
        return "better" if self.mean_difference < 0 else "worse"


def diebold_mariano(
    loss_a: np.ndarray,
    loss_b: np.ndarray,
    horizon: int,
    kernel: Literal["bartlett", "truncated"] = "bartlett",
) -> DMResult:
    """Diebold-Mariano test of equal expected loss, with the Harvey-Leybourne-Newbold small-sample correction.

    d_t = loss_a - loss_b. h-step forecast errors overlap, so d is MA(h-1): its long-run variance uses h-1 lags,
    Bartlett-weighted (Newey-West, always >= 0) by default, or unweighted ("truncated", as in R's forecast::dm.test;
    identical for h = 1). Autocovariances divide by n. Statistic = dbar / sqrt(V / n) * sqrt((n + 1 - 2h +
    h(h-1)/n) / n), referred to t(n - 1). Undefined (NaN) when the losses never differ or n < 2.

    Besides the two-sided p, both one-sided p's of the same statistic: p_a_better = P(t <= stat) tests "a has the
    lower expected loss", p_a_worse = P(t >= stat) "a has the higher". Report the one in the direction claimed.
    """
    loss_a, loss_b = np.asarray(loss_a, dtype=float), np.asarray(loss_b, dtype=float)
    if loss_a.shape != loss_b.shape or loss_a.ndim != 1:
        raise ValueError(f"losses must be 1-D and the same length, got {loss_a.shape} and {loss_b.shape}")
    if horizon < 1:
        raise ValueError(f"horizon must be >= 1, got {horizon}")
    if kernel not in ("bartlett", "truncated"):
        raise ValueError(f"kernel must be 'bartlett' or 'truncated', got {kernel!r}")
    both = np.isfinite(loss_a) & np.isfinite(loss_b)
    d = loss_a[both] - loss_b[both]
    n = len(d)
    mean_difference = float(d.mean()) if n else math.nan
    if n < 2:
        return DMResult(math.nan, math.nan, mean_difference, n)
    centred = d - d.mean()
    autocov = [centred[k:] @ centred[: n - k] / n for k in range(min(horizon, n))]  # gamma_0 .. gamma_{h-1}
    weights = [1 - k / horizon if kernel == "bartlett" else 1.0 for k in range(len(autocov))]
    long_run_variance = autocov[0] + 2 * sum(w * g for w, g in zip(weights[1:], autocov[1:]))
    if not long_run_variance > 1e-300:
        return DMResult(math.nan, math.nan, mean_difference, n)
    dm = d.mean() / math.sqrt(long_run_variance / n)
    correction = math.sqrt((n + 1 - 2 * horizon + horizon * (horizon - 1) / n) / n)
    statistic = dm * correction
    from scipy import (
        stats,  # ~0.8 s to import: only when a test is run, not when the app merely loads scores
    )

    p_value = 2 * stats.t.sf(abs(statistic), df=n - 1)
    p_better, p_worse = stats.t.cdf(statistic, df=n - 1), stats.t.sf(statistic, df=n - 1)
    return DMResult(float(statistic), float(p_value), mean_difference, n, float(p_better), float(p_worse))


# ---- the table ----


def _loss_series(pred: Predictions, actual: Targets, asset: int, j_pred: int, j_true: int) -> dict[str, np.ndarray]:
    """Per-row losses (n,) of one forecaster for one asset and horizon; NaN where not scorable."""
    valid = actual.valid[asset, pred.rows, j_true]
    y = np.where(valid, actual.log_return[asset, pred.rows, j_true], np.nan)
    up = actual.direction[asset, pred.rows, j_true]
    rv = np.where(valid, actual.realised_vol[asset, pred.rows, j_true], np.nan)
    losses: dict[str, np.ndarray] = {}

    def masked(values: np.ndarray) -> np.ndarray:
        return np.where(valid, values, np.nan)

    if pred.point is not None:
        losses["mse"] = squared_errors(y, pred.point[asset, :, j_pred])
    if pred.quantiles is not None:
        losses["pinball"] = pinball_losses(y, pred.quantiles[asset, :, j_pred], pred.quantile_levels)
    if pred.prob_up is not None:
        p = pred.prob_up[asset, :, j_pred]
        losses["brier"] = masked(brier_losses(up, p))
        losses["log_loss"] = masked(log_losses(up, p))
        losses["hit_rate"] = masked(np.where(np.isfinite(p), hit_scores(up, p), np.nan))
    elif pred.point is not None:
        point = pred.point[asset, :, j_pred]
        # a point forecast calls a direction too: treat its sign as P(up) in {0, 1/2, 1}
        losses["hit_rate"] = masked(np.where(np.isfinite(point), hit_scores(up, 0.5 + 0.5 * np.sign(point)), np.nan))
    if pred.volatility is not None:
        losses["qlike"] = qlike_losses(rv, pred.volatility[asset, :, j_pred])
    return {name: np.where(np.isfinite(loss), loss, np.nan) for name, loss in losses.items()}


DM_LOSSES = ("mse", "pinball", "brier", "qlike")


def score_table(
    predictions: Mapping[str, Predictions],
    actual: Targets,
    reference: str | None = "model",
    dm_kernel: Literal["bartlett", "truncated"] = "bartlett",
) -> pd.DataFrame:
    """Long table (model, asset, horizon, metric, value), ready to print or pivot.

    Metrics per forecaster: n, mse, pinball, coverage_10_90, quantile_spread (mean width between the outermost
    quantiles: 0 for a forecaster with no spread, against which pinball is no skill test), brier, log_loss, ece,
    hit_rate, qlike (each only where the forecaster has the output). If `reference` names one of the forecasters,
    each OTHER forecaster's rows also carry, per loss (mse, pinball, brier, qlike), the Diebold-Mariano test of the
    reference's loss minus this one's on the rows both forecast:
      dm_stat_<loss>        negative: the reference's loss is lower
      dm_p_<loss>           two-sided p (whether they differ, not who is better)
      dm_p_better_<loss>    one-sided p for "the reference's loss is lower than this forecaster's"
      dm_p_worse_<loss>     one-sided p for "the reference's loss is higher"
      dm_n_<loss>           rows in the test
      dm_loss_<loss>, dm_ref_loss_<loss>   this forecaster's and the reference's mean loss on those rows
    These p's are per comparison, uncorrected: engine.evaluation.skill turns them into verdicts.
    """
    if not predictions:
        raise ValueError("no predictions to score")
    symbols = actual.symbols
    levels = {name: p.quantile_levels for name, p in predictions.items() if p.quantiles is not None}
    if len(set(levels.values())) > 1:
        raise ValueError(f"forecasters use different quantile levels, pinball losses would not compare: {levels}")
    records = []
    for name, pred in predictions.items():
        if pred.n_assets != actual.valid.shape[0]:
            raise ValueError(f"{name}: forecasts cover {pred.n_assets} assets, the targets {actual.valid.shape[0]}")
        if len(pred.rows) and (pred.rows.min() < 0 or pred.rows.max() >= actual.valid.shape[1]):
            raise ValueError(f"{name}: forecast rows fall outside the targets' 0..{actual.valid.shape[1] - 1}")
        missing = set(pred.horizons) - set(actual.horizons)
        if missing:
            raise ValueError(f"{name}: horizons {sorted(missing)} have no targets (targets have {actual.horizons})")
    reference_pred = predictions.get(reference) if reference else None

    for name, pred in predictions.items():
        for asset in range(pred.n_assets):
            for j_pred, h in enumerate(pred.horizons):
                j_true = actual.horizons.index(h)
                losses = _loss_series(pred, actual, asset, j_pred, j_true)

                def add(metric: str, value: float) -> None:
                    records.append((name, symbols[asset], h, metric, float(value)))

                add("n", np.isfinite(np.column_stack(list(losses.values()))).any(axis=1).sum() if losses else 0)
                for metric, loss in losses.items():
                    add(metric, np.nanmean(loss) if np.isfinite(loss).any() else math.nan)
                valid = actual.valid[asset, pred.rows, j_true]
                if pred.quantiles is not None and set(INTERVAL) <= set(pred.quantile_levels):
                    q = pred.quantiles[asset, :, j_pred]
                    lo, hi = (pred.quantile_levels.index(level) for level in INTERVAL)
                    ok = valid & np.isfinite(q[:, lo]) & np.isfinite(q[:, hi])
                    y = actual.log_return[asset, pred.rows, j_true]
                    add("coverage_10_90", interval_coverage(y[ok], q[ok, lo], q[ok, hi]))
                if pred.quantiles is not None and "pinball" in losses:
                    scored = np.isfinite(losses["pinball"])
                    top, bottom = int(np.argmax(pred.quantile_levels)), int(np.argmin(pred.quantile_levels))
                    spread = pred.quantiles[asset, scored, j_pred, top] - pred.quantiles[asset, scored, j_pred, bottom]
                    add("quantile_spread", spread.mean() if scored.any() else math.nan)
                if pred.prob_up is not None:
                    p = pred.prob_up[asset, :, j_pred]
                    ok = valid & np.isfinite(p)
                    add("ece", expected_calibration_error(actual.direction[asset, pred.rows, j_true][ok], p[ok]))
                if reference_pred is not None and name != reference and h in reference_pred.horizons:
                    for metric, value in _dm_against(reference_pred, pred, actual, asset, h, dm_kernel).items():
                        add(metric, value)
    frame = pd.DataFrame.from_records(records, columns=["model", "asset", "horizon", "metric", "value"])
    return frame


def _dm_against(
    reference: Predictions, other: Predictions, actual: Targets, asset: int, horizon: int, kernel: str
) -> dict[str, float]:
    """DM statistics of reference vs other on the rows both forecast, for every loss both can be scored on."""
    common, ref_at, other_at = np.intersect1d(reference.rows, other.rows, return_indices=True)
    if len(common) == 0:
        return {}
    j_true = actual.horizons.index(horizon)
    sub_ref = _subset(reference, ref_at, reference.horizons.index(horizon))
    sub_other = _subset(other, other_at, other.horizons.index(horizon))
    ref_losses = _loss_series(sub_ref, actual, asset, 0, j_true)
    other_losses = _loss_series(sub_other, actual, asset, 0, j_true)
    out = {}
    for loss in DM_LOSSES:
        if loss in ref_losses and loss in other_losses:
            result = diebold_mariano(ref_losses[loss], other_losses[loss], horizon, kernel)
            both = np.isfinite(ref_losses[loss]) & np.isfinite(other_losses[loss])
            out[f"dm_stat_{loss}"] = result.statistic
            out[f"dm_p_{loss}"] = result.p_value
            out[f"dm_p_better_{loss}"] = result.p_a_better
            out[f"dm_p_worse_{loss}"] = result.p_a_worse
            out[f"dm_n_{loss}"] = result.n
            out[f"dm_loss_{loss}"] = other_losses[loss][both].mean() if both.any() else math.nan
            out[f"dm_ref_loss_{loss}"] = ref_losses[loss][both].mean() if both.any() else math.nan
    return out


def _subset(pred: Predictions, positions: np.ndarray, j: int) -> Predictions:
    """The forecasts at the given row positions for one horizon."""

    def pick(array):
        return None if array is None else array[:, positions, j : j + 1]

    return Predictions(
        rows=pred.rows[positions],
        horizons=(pred.horizons[j],),
        point=pick(pred.point),
        quantiles=pick(pred.quantiles),
        quantile_levels=pred.quantile_levels,
        prob_up=pick(pred.prob_up),
        volatility=pick(pred.volatility),
    )
