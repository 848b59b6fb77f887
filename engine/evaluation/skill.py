"""Does the model have an edge? One verdict per (asset, horizon, metric), tested against the best baseline, one-sided,
corrected for the number of comparisons shown. "No edge" is a first-class answer.

Contract (engine.findings, the pages and the run manifest call these):

    pairwise_comparisons(scores) -> DataFrame
        One row per (asset, horizon, metric, baseline): the model against that baseline alone, uncorrected.
        Columns: asset, horizon, metric, baseline, eligible, direction ("better" when the model's loss is lower,
        "worse", "tie"), sign (+1 better, -1 worse, 0), dm_stat (model minus baseline, HAC, negative = the model's
        loss is lower), p_better, p_worse (one-sided, uncorrected), model_loss, baseline_loss (means on the rows both
        forecast), n, text ("better than garch_t, p = 0.012").

    skill_verdicts(scores, targets=None, alpha=0.05, method="holm", reference="model") -> DataFrame
        One row per (asset, horizon, metric) the model is scored on, metric in VERDICT_METRICS.
        Columns: asset, horizon, metric, verdict ("edge" | "worse" | "none"), vs (the best baseline), direction,
        sign, p_value (one-sided, corrected: the p of the verdict's direction, or of the observed direction when the
        verdict is "none"), p_better, p_worse (both corrected), dm_stat, model_loss, baseline_loss, n, n_baselines,
        method, text.

    skill_headlines(verdicts) -> DataFrame
        One row per (asset, horizon): verdict ("edge" | "worse" | "mixed" | "none") and a sentence.

`scores` is the long score table of engine.evaluation.scores.score_table with reference="model" (what evaluate writes
to scores.json and forecast_review.read_scores returns), or a mapping name -> Predictions with `targets` (scored
here). Score tables written before the one-sided columns existed still work: the one-sided p's are then derived from
the two-sided p and the sign of the statistic (exact for the t reference distribution), the losses are each
forecaster's mean over its own rows, and a baseline counts as having a spread when its 10-90 interval covers anything.

The rule, per (asset, horizon, metric):
- Candidates: the baselines scored on that metric against the model. For MSE every point forecaster, the zero forecast
  included; for Brier every P(up) forecaster, zero as P(up) = 1/2 included; for QLIKE every volatility forecaster.
  For pinball only baselines WITH A SPREAD (quantile_spread > 0): pinball against quantiles that all sit on one value
  is no skill test, any fan beats it.
- The best baseline is the candidate with the lowest mean loss on the rows it shares with the model. It is chosen on
  the test span itself (the model's out-of-sample forecasts exist on the test spans only, so no earlier span is
  available to choose on). That makes "edge" conservative (the chosen baseline's test loss is biased low) and a plain
  "worse" anti-conservative (the lowest of K losses looks better than it is), so the "worse" p is
  Bonferroni-multiplied by the number of candidates K: min(1, K p_worse). Since p_worse(best) >= min over baselines,
  this bounds the chance that ANY baseline is falsely found better than the model.
- "edge": the model beats the best baseline, one-sided Diebold-Mariano (HAC variance with h-1 Bartlett lags for h-bar
  forecasts, HLN-corrected, engine.evaluation.scores.diebold_mariano), corrected p < alpha.
  "worse": the best baseline beats the model, one-sided, corrected p < alpha. "none" otherwise (also where the test is
  undefined or no baseline qualifies).
- Correction: both directions of every cell in the call form one family (2 x cells hypotheses). method="holm"
  (default): Holm's step-down, the chance of ANY false claim in the table stays below alpha under any dependence
  between the tests. method="fdr_bh": Benjamini-Hochberg (statsmodels.stats.multitest.multipletests), the expected
  share of false claims among those made stays below alpha (for independent or positively dependent tests). Holm is
  computed here, the same adjusted p's as multipletests(method="holm") (the tests check it), because statsmodels'
  Holm branch runs gc.collect() on every call, a pause of a second in a page's process. Call it on exactly the cells
  you show: the family is what the call is given.
"""
from __future__ import annotations

import math
from typing import Literal, Mapping

import numpy as np
import pandas as pd

from engine.evaluation.scores import Predictions, score_table
from engine.targets import Targets

VERDICT_METRICS: tuple[str, ...] = ("mse", "brier", "qlike", "pinball")
METRIC_WORDS = {"mse": "squared error", "brier": "Brier score of P(up)", "qlike": "QLIKE of volatility",
                "pinball": "pinball loss of the quantiles"}
VERDICT_COLUMNS = ("asset", "horizon", "metric", "verdict", "vs", "direction", "sign", "p_value", "p_better",
                   "p_worse", "dm_stat", "model_loss", "baseline_loss", "n", "n_baselines", "method", "text")
COMPARISON_COLUMNS = ("asset", "horizon", "metric", "baseline", "eligible", "direction", "sign", "dm_stat", "p_better",
                      "p_worse", "model_loss", "baseline_loss", "n", "text")
HEADLINE_COLUMNS = ("asset", "horizon", "verdict", "edge_metrics", "worse_metrics", "text")
Method = Literal["holm", "fdr_bh"]


def format_p(p: float) -> str:
    if not p == p:
        return "p undefined"
    return "p < 0.001" if p < 0.001 else f"p = {p:.3f}"


def pairwise_comparisons(scores: pd.DataFrame, reference: str = "model") -> pd.DataFrame:
    """The model against each baseline alone, per (asset, horizon, metric): direction and both one-sided p's,
    uncorrected (one comparison each; the verdicts correct for how many are shown)."""
    table = scores[["model", "asset", "horizon", "metric", "value"]]
    wide = table.pivot_table(index=["asset", "horizon", "model"], columns="metric", values="value", sort=False,
                             dropna=False)
    records = []
    for (asset, horizon, name), row in wide.iterrows():
        if name == reference:
            continue
        ref = wide.loc[(asset, horizon, reference)] if (asset, horizon, reference) in wide.index else None
        for metric in VERDICT_METRICS:
            stat = row.get(f"dm_stat_{metric}", math.nan)
            two_sided = row.get(f"dm_p_{metric}", math.nan)
            if not (np.isfinite(stat) or np.isfinite(two_sided)) and not np.isfinite(row.get(f"dm_n_{metric}", np.nan)):
                continue  # this baseline and the model do not share the metric
            p_better, p_worse = row.get(f"dm_p_better_{metric}", math.nan), row.get(f"dm_p_worse_{metric}", math.nan)
            if not np.isfinite(p_better) and np.isfinite(stat) and np.isfinite(two_sided):
                # an older table: one-sided from the two-sided t p and the sign (t is symmetric, so this is exact)
                p_better = two_sided / 2 if stat < 0 else 1 - two_sided / 2
                p_worse = 1 - p_better
            model_loss = row.get(f"dm_ref_loss_{metric}", math.nan)
            baseline_loss = row.get(f"dm_loss_{metric}", math.nan)
            n = row.get(f"dm_n_{metric}", math.nan)
            if f"dm_loss_{metric}" not in row.index:  # an older table: each forecaster's mean over its own rows
                baseline_loss = row.get(metric, math.nan)
                model_loss = math.nan if ref is None else ref.get(metric, math.nan)
                n = np.nanmin([row.get("n", math.nan), math.nan if ref is None else ref.get("n", math.nan)])
            direction, sign = _direction(model_loss, baseline_loss, stat)
            records.append({
                "asset": asset, "horizon": int(horizon), "metric": metric, "baseline": name,
                "eligible": _eligible(metric, row), "direction": direction, "sign": sign, "dm_stat": float(stat),
                "p_better": float(p_better), "p_worse": float(p_worse), "model_loss": float(model_loss),
                "baseline_loss": float(baseline_loss), "n": float(n),
                "text": _words(direction, name, p_better if sign >= 0 else p_worse),
            })
    return pd.DataFrame.from_records(records, columns=list(COMPARISON_COLUMNS))


def skill_verdicts(
    scores: pd.DataFrame | Mapping[str, Predictions],
    targets: Targets | None = None,
    alpha: float = 0.05,
    method: Method = "holm",
    reference: str = "model",
) -> pd.DataFrame:
    """A verdict ("edge" / "worse" / "none") per (asset, horizon, metric) against the best baseline: see the module
    docstring for the rule, the correction and what "best" means."""
    if method not in ("holm", "fdr_bh"):
        raise ValueError(f"method must be 'holm' or 'fdr_bh', got {method!r}")
    if not 0 < alpha < 1:
        raise ValueError(f"alpha must be in (0, 1), got {alpha}")
    if isinstance(scores, Mapping):
        if targets is None:
            raise ValueError("predictions need the targets to be scored against")
        if reference not in scores:
            raise ValueError(f"no forecaster named {reference!r} among {sorted(scores)}")
        scores = score_table(scores, targets, reference=reference)
    pairs = pairwise_comparisons(scores, reference)
    model_has = scores[(scores["model"] == reference) & scores["metric"].isin(VERDICT_METRICS)]
    cells = []
    for (asset, horizon, metric), _ in model_has.groupby(["asset", "horizon", "metric"], sort=False):
        candidates = pairs[(pairs["asset"] == asset) & (pairs["horizon"] == horizon) & (pairs["metric"] == metric)
                           & pairs["eligible"] & np.isfinite(pairs["baseline_loss"])]
        cell = {"asset": asset, "horizon": int(horizon), "metric": metric, "n_baselines": len(candidates)}
        if candidates.empty:
            cells.append({**cell, "vs": None, "direction": "tie", "sign": 0, "raw_better": math.nan,
                          "raw_worse": math.nan, "dm_stat": math.nan, "model_loss": math.nan,
                          "baseline_loss": math.nan, "n": math.nan})
            continue
        best = candidates.loc[candidates["baseline_loss"].idxmin()]
        cells.append({**cell, "vs": best["baseline"], "direction": best["direction"], "sign": int(best["sign"]),
                      "raw_better": best["p_better"], "raw_worse": min(1.0, len(candidates) * best["p_worse"]),
                      "dm_stat": best["dm_stat"], "model_loss": best["model_loss"],
                      "baseline_loss": best["baseline_loss"], "n": best["n"]})
    frame = pd.DataFrame.from_records(cells)
    if frame.empty:
        return pd.DataFrame(columns=list(VERDICT_COLUMNS))
    raw = np.concatenate([frame["raw_better"].to_numpy(float), frame["raw_worse"].to_numpy(float)])
    corrected = np.full(len(raw), np.nan)
    finite = np.isfinite(raw)
    if finite.any():
        corrected[finite] = adjusted_p_values(raw[finite], method)
    frame["p_better"], frame["p_worse"] = corrected[: len(frame)], corrected[len(frame):]
    edge = frame["p_better"] < alpha
    worse = frame["p_worse"] < alpha
    frame["verdict"] = np.where(edge, "edge", np.where(worse, "worse", "none"))
    frame["p_value"] = np.where(edge | (~worse & (frame["sign"] >= 0)), frame["p_better"], frame["p_worse"])
    frame["method"] = method
    frame["text"] = [_verdict_words(row) for row in frame.itertuples()]
    return frame[list(VERDICT_COLUMNS)].reset_index(drop=True)


def skill_headlines(verdicts: pd.DataFrame) -> pd.DataFrame:
    """Per (asset, horizon): "edge" where some metric has an edge and none is worse, "worse" the other way round,
    "mixed" where both, "none" where neither; with a sentence listing each."""
    records = []
    for (asset, horizon), rows in verdicts.groupby(["asset", "horizon"], sort=False):
        edge = rows[rows["verdict"] == "edge"]
        worse = rows[rows["verdict"] == "worse"]
        none = rows[rows["verdict"] == "none"]
        verdict = ("mixed" if len(edge) and len(worse) else "edge" if len(edge) else "worse" if len(worse)
                   else "none")
        parts = [f"edge on {r.metric} (better than {r.vs}, {format_p(r.p_value)})" for r in edge.itertuples()]
        parts += [f"worse on {r.metric} (than {r.vs}, {format_p(r.p_value)})" for r in worse.itertuples()]
        if len(none):
            parts.append("no edge on " + ", ".join(none["metric"]))
        method = rows["method"].iloc[0] if len(rows) else "holm"
        text = "; ".join(parts) + f" (one-sided Diebold-Mariano against the best baseline, {_method_words(method)})"
        records.append({"asset": asset, "horizon": int(horizon), "verdict": verdict,
                        "edge_metrics": tuple(edge["metric"]), "worse_metrics": tuple(worse["metric"]), "text": text})
    return pd.DataFrame.from_records(records, columns=list(HEADLINE_COLUMNS))


def adjusted_p_values(p_values: np.ndarray, method: Method = "holm") -> np.ndarray:
    """Multiplicity-adjusted p's, in the input order: Holm's step-down (sorted p_(i) times m - i + 1, made
    non-decreasing, capped at 1) or Benjamini-Hochberg through statsmodels."""
    p_values = np.asarray(p_values, dtype=float)
    if method == "fdr_bh":
        from statsmodels.stats.multitest import multipletests

        return multipletests(p_values, method="fdr_bh")[1]
    if method != "holm":
        raise ValueError(f"method must be 'holm' or 'fdr_bh', got {method!r}")
    m = len(p_values)
    order = np.argsort(p_values, kind="mergesort")
    stepped = np.minimum(1.0, np.maximum.accumulate(p_values[order] * np.arange(m, 0, -1)))
    adjusted = np.empty(m)
    adjusted[order] = stepped
    return adjusted


# ---- pieces ----


def _eligible(metric: str, row: pd.Series) -> bool:
    if metric != "pinball":
        return True
    spread = row.get("quantile_spread", math.nan)
    if np.isfinite(spread):
        return bool(spread > 0)
    # an older table has no spread: quantiles on one value cover a continuous return almost never
    coverage = row.get("coverage_10_90", math.nan)
    return bool(np.isfinite(coverage) and coverage > 0)


def _direction(model_loss: float, baseline_loss: float, stat: float) -> tuple[str, int]:
    difference = model_loss - baseline_loss
    if not np.isfinite(difference):
        difference = stat  # same sign as the mean difference
    if not np.isfinite(difference) or difference == 0:
        return "tie", 0
    return ("better", 1) if difference < 0 else ("worse", -1)


def _words(direction: str, baseline: str, p: float) -> str:
    if direction == "tie":
        return f"no different from {baseline}"
    return f"{direction} than {baseline}, {format_p(p)}"


def _method_words(method: str) -> str:
    return "Holm-corrected" if method == "holm" else "Benjamini-Hochberg-corrected"


def _verdict_words(row) -> str:
    if row.vs is None:
        return f"no baseline to compare {row.metric} with: no verdict"
    said = {"edge": "edge", "worse": "worse", "none": "no edge"}[row.verdict]
    return f"{said}: {_words(row.direction, row.vs, row.p_value)} (one-sided, {_method_words(row.method)})"
