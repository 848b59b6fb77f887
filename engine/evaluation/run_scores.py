"""Score a training run's out-of-sample forecasts against every baseline on the SAME walk-forward test spans.

The model's forecasts are the ones the run kept (predictions.npz: each fold's model on its own test span); every
baseline (engine.evaluation.baselines.BASELINES) is refitted on each fold's training span and run over the same
test span. The table (engine.evaluation.scores.score_table) is written as scores.csv and scores.json into the run
directory, and a per-asset summary at horizon 1 goes into the manifest's scores, where the app's run list reads it.
The data must be the data the run was trained on (same fingerprint hash): the stored forecasts were made on it.
The command line is engine.evaluate.
"""
from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path

import numpy as np
import pandas as pd

from engine.evaluation.baselines import (
    BaselineConfig,
    BaselineInput,
    walk_forward_baselines,
)
from engine.evaluation.predictions import load_predictions
from engine.evaluation.scores import Predictions, score_table
from engine.evaluation.skill import skill_headlines, skill_verdicts
from engine.features import FeatureConfig
from engine.model.checkpoint import (
    CheckpointError,
    Manifest,
    check_fits,
    update_manifest_scores,
)
from engine.model.checkpoint import read_manifest as read_published_manifest
from engine.targets import compute_targets
from engine.training.splits import Fold
from storage.panel import LoadedPanel

SCORES_CSV = "scores.csv"


SCORES_JSON = "scores.json"


PEER_PREFIX = "peer: "  # a neural peer's forecasts in a score table: "peer: lstm"

SUMMARY_METRICS = ("n", "mse", "pinball", "coverage_10_90", "hit_rate", "brier", "qlike")


def read_manifest(run_dir: str | Path) -> Manifest:
    return read_published_manifest(run_dir)  # the published version's (engine.model.checkpoint.published_files)


def run_folds(manifest: Manifest) -> list[Fold]:
    """The run's walk-forward folds, exactly as trained (spans are stored in the manifest)."""
    folds = manifest.training.get("folds")
    if not folds:
        raise CheckpointError(f"checkpoint {manifest.run_id} records no walk-forward folds: it cannot be evaluated")
    purge = min(min(f["val"][0] - f["train"][1], f["test"][0] - f["val"][1]) for f in folds)
    return [Fold(index=f["fold"], train=range(*f["train"]), val=range(*f["val"]), test=range(*f["test"]), purge=purge)
            for f in folds]


def check_same_data(manifest: Manifest, loaded: LoadedPanel) -> None:
    """Refuse data the run's stored forecasts were not made on, saying what differs."""
    # the features the run reads (FeatureConfig.names; runs before the field read FEATURE_NAMES) must still exist
    names = FeatureConfig(**manifest.training.get("config", {}).get("features", {})).names
    check_fits(manifest, symbols=loaded.symbols, interval=loaded.interval, feature_names=names)
    have, want = loaded.fingerprint(), manifest.fingerprint
    if have.content_hash != want.content_hash:
        raise CheckpointError(
            f"checkpoint {manifest.run_id} was trained on data {want.content_hash} ({want.first_ts} .. {want.last_ts}, "
            f"{want.n_rows} rows) but this panel is {have.content_hash} ({have.first_ts} .. {have.last_ts}, "
            f"{have.n_rows} rows): its out-of-sample forecasts do not belong to this data; retrain on it"
        )


def peer_predictions(run_dir: Path, manifest: Manifest, loaded: LoadedPanel,
                     peers: Mapping[str, str | Path]) -> dict[str, Predictions]:
    """{PEER_PREFIX + name: forecasts} of other runs (the hybrid's neural peers, engine.training.peer_presets) on the
    SAME data and walk-forward folds as the run; CheckpointError naming the peer when one is not comparable."""
    folds = [(f.train, f.val, f.test) for f in run_folds(manifest)]
    found = {}
    for name, path in peers.items():
        peer = read_manifest(path)
        try:
            check_same_data(peer, loaded)
        except CheckpointError as error:
            raise CheckpointError(f"peer {name!r} ({path}): {error}") from error
        if [(f.train, f.val, f.test) for f in run_folds(peer)] != folds:
            raise CheckpointError(f"peer {name!r} ({path}) was trained on other walk-forward folds than run "
                                  f"{manifest.run_id}: its forecasts cover other bars; train it with the same "
                                  "settings (python -m engine.train --preset ...)")
        found[PEER_PREFIX + name] = load_predictions(path)[0]
    return found


def evaluate_run(run_dir: str | Path, loaded: LoadedPanel | None = None,
                 baselines: tuple[str, ...] | None = None, write: bool = True,
                 peers: Mapping[str, str | Path] | None = None) -> pd.DataFrame:
    """The long score table (model, asset, horizon, metric, value) of the run vs baselines, and vs the neural peers
    given ({name: run directory}: other runs on the same data and folds, scored as forecasters named
    PEER_PREFIX + name beside the baselines, with the same one-sided tests); written when `write`."""
    run_dir = Path(run_dir)
    manifest = read_manifest(run_dir)
    if loaded is None:  # the engine computes on the panel it is handed; the CLI finds a demo run's own panel
        raise CheckpointError(f"evaluate_run needs the panel run {manifest.run_id} was trained on")
    check_same_data(manifest, loaded)
    predictions, _, _ = load_predictions(run_dir)
    folds = run_folds(manifest)
    targets = compute_targets(loaded.panel, predictions.horizons)
    data = BaselineInput.from_panel(loaded.panel, targets)
    baseline_config = BaselineConfig(quantile_levels=predictions.quantile_levels)
    baseline_predictions = walk_forward_baselines(data, folds, names=baselines, config=baseline_config)
    peer_forecasts = peer_predictions(run_dir, manifest, loaded, peers) if peers else {}
    table = score_table({"model": predictions, **peer_forecasts, **baseline_predictions}, targets, reference="model")
    if write:
        write_scores(run_dir, table, manifest, loaded)
    return table


def score_summary(table: pd.DataFrame, horizon: int = 1, alpha: float = 0.05, method: str = "holm") -> dict:
    """Per asset at one horizon: the model's headline losses, its skill verdicts and its comparisons with each
    baseline, for the manifest (the app's run list reads it).

    assets[asset]:
      <metric>            the model's losses (SUMMARY_METRICS)
      headline            {"verdict": "edge" | "worse" | "mixed" | "none", "text"} (engine.evaluation.skill)
      skill[<metric>]     the verdict against the best baseline for mse, brier, qlike, pinball: verdict, vs,
                          direction, p_value (one-sided, corrected), p_better, p_worse, dm_stat, model_loss,
                          baseline_loss, n, n_baselines, text
      vs_<baseline>       per loss: dm_stat_<loss> (negative: the model's loss is lower), dm_p_better_<loss> and
                          dm_p_worse_<loss> (one-sided, uncorrected) and, kept so readers of older manifests keep
                          working, dm_p_<loss> (two-sided: the losses differ, not who is better; never a headline)
    The verdicts are corrected over every (asset, horizon, metric) of the table, the cells the Forecasts page shows,
    not only this horizon's. Manifests written before verdicts existed lack headline/skill: see `summary_skill`.
    """
    verdicts = skill_verdicts(table, alpha=alpha, method=method)
    headlines = skill_headlines(verdicts)
    at = table[table["horizon"] == horizon]
    summary: dict = {"horizon": horizon, "alpha": alpha, "correction": method, "assets": {}}
    keys = [f"dm_{kind}{loss}" for loss in ("mse", "pinball", "brier", "qlike")
            for kind in ("stat_", "p_better_", "p_worse_", "p_")]
    for asset, rows in at.groupby("asset", sort=False):
        model = rows[rows["model"] == "model"].set_index("metric")["value"]
        entry = {metric: _finite(model.get(metric)) for metric in SUMMARY_METRICS if metric in model}
        headline = headlines[(headlines["asset"] == asset) & (headlines["horizon"] == horizon)]
        if len(headline):
            entry["headline"] = {"verdict": headline["verdict"].iloc[0], "text": headline["text"].iloc[0]}
        cells = verdicts[(verdicts["asset"] == asset) & (verdicts["horizon"] == horizon)]
        entry["skill"] = {row["metric"]: {key: _plain(row[key]) for key in
                                          ("verdict", "vs", "direction", "p_value", "p_better", "p_worse", "dm_stat",
                                           "model_loss", "baseline_loss", "n", "n_baselines", "text")}
                          for row in cells.to_dict(orient="records")}
        for name, other in rows[rows["model"] != "model"].groupby("model", sort=False):
            values = other.set_index("metric")["value"]
            entry[f"vs_{name}"] = {key: _finite(values[key]) for key in keys if key in values}
        summary["assets"][asset] = entry
    return summary


def summary_skill(entry: dict) -> dict:
    """An asset's verdicts from a manifest summary entry, old or new: {"headline": {...} or None, "skill": {...}}.
    Summaries written before verdicts existed carry only two-sided p's, which say nothing about who is better: they
    get no verdict and a note to re-run engine.evaluate, never a p read as an edge."""
    if "skill" in entry:
        return {"headline": entry.get("headline"), "skill": entry["skill"]}
    return {"headline": {"verdict": None, "text": "scored before one-sided verdicts existed: run python -m "
                                                  "engine.evaluate on this run for its verdicts"}, "skill": {}}


def _plain(value):
    """A JSON-safe value: numpy scalars to Python, NaN to None."""
    if isinstance(value, (np.integer, int)) and not isinstance(value, bool):
        return int(value)
    if isinstance(value, (np.floating, float)):
        return _finite(value)
    return value


def _finite(value) -> float | None:
    return None if value is None or not np.isfinite(value) else float(value)


def write_scores(run_dir: Path, table: pd.DataFrame, manifest: Manifest, loaded: LoadedPanel) -> None:
    table.to_csv(run_dir / SCORES_CSV, index=False)
    records = [{**row, "value": _finite(row["value"])} for row in table.to_dict(orient="records")]
    payload = {"run_id": manifest.run_id, "data": loaded.label, "synthetic": loaded.synthetic, "rows": records}
    tmp = run_dir / (SCORES_JSON + ".tmp")
    tmp.write_text(json.dumps(payload, allow_nan=False))
    tmp.replace(run_dir / SCORES_JSON)
    update_manifest_scores(run_dir, {**score_summary(table), "data": loaded.label, "table": SCORES_JSON})


def wide_table(table: pd.DataFrame, horizon: int | None = None) -> pd.DataFrame:
    """(asset, horizon, model) x metric, the model first: what the command line prints."""
    if horizon is not None:
        table = table[table["horizon"] == horizon]
    wide = table.pivot_table(index=["asset", "horizon", "model"], columns="metric", values="value", sort=False)
    order = [c for c in ("n", "mse", "pinball", "coverage_10_90", "brier", "log_loss", "ece", "hit_rate", "qlike",
                         "dm_stat_mse", "dm_p_mse", "dm_stat_pinball", "dm_p_pinball") if c in wide.columns]
    return wide[order + [c for c in wide.columns if c not in order]]
