"""What the app claims about a checkpoint on a panel, each claim with its evidence against a null.

One function, `findings_for_run`, computes them; the model pages (views/model_results.py) and the command
(`python -m engine.findings`) both call it, so the screen, the report and the command line cannot disagree.

  lead_lag        the model-free test (engine.diagnostics.lead_lag_test): each target's own-bar return regressed on
                  each source's return k bars earlier, over bars where both had a bar (HAC errors), k = 0..K+1 with
                  K the model's largest key lag, so every lead the attention map can hold is tested;
                  Benjamini-Hochberg over every test. Listed: the leads (k >= 1) significant after that
                  correction, each with whether the model's attention agrees (engine.diagnostics.attention_null: a
                  lead of k bars sits at key lag k-1; it agrees when the map's excess over an uninformed model's
                  weights is positive there and largest among the pair's lags). Lag 0 is same-bar co-movement,
                  kept apart and never called a lead. None significant: "No lead-lag found".
  forecast_skill  per (asset, horizon, metric) the one-sided verdict against the best baseline, Holm-corrected over
                  every cell (engine.evaluation.skill): "edge", "none" or "worse". The score table is the run's
                  scores.json when it was written for this run by the current scorer (one-sided columns and every
                  baseline in engine.evaluation.baselines.BASELINES); otherwise the run is scored now
                  (evaluate_run, write=False) when the panel given is the one it was trained on; otherwise there is
                  no verdict and the note says what to run. An outdated table is never read as a verdict: it lacks
                  baselines that change the answer.
  regimes         per asset, engine.diagnostics.regime_tests.regime_verdicts: the number of regimes the next bar's
                  returns support (1 allowed), separation against circularly shifted labels (Holm over assets),
                  each regime's volatility and mean return with block-bootstrap intervals, persistence against
                  shuffled labels, agreement with a 2-state HMM. "one regime, or none distinct" when so.

The tests are computed on the whole panel given (the model runs over all of it; the app's date range only chooses
what is drawn). They cost seconds to a minute (the regime tests' resampling, scoring a run against every baseline),
so each part is cached on disk beside the diagnostics, per (checkpoint, data, settings, part), as plain JSON checked
against its key on the way back in.
"""
from __future__ import annotations

import hashlib
import json
import math
import os
import re
import tempfile
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Mapping, Sequence

import numpy as np
import pandas as pd

from engine.diagnostics.attention_null import attention_agreement, null_lead_lag_map
from engine.diagnostics.bundle import DiagnosticsBundle
from engine.diagnostics.lead_lag import key_lag_of_lead, lag_duration
from engine.diagnostics.regime_tests import RegimeTestConfig, RegimeVerdict
from engine.evaluation.skill import METRIC_WORDS, VERDICT_METRICS, format_p
from engine.model.checkpoint import CheckpointError, Manifest, read_manifest
from storage.panel import LoadedPanel

PARTS: tuple[str, ...] = ("lead_lag", "forecast_skill", "regimes")
FINDINGS_FORMAT = 3  # 2: regime entries carry lasting_p; 3: regime claims need beyond-GARCH, lead path words
FINDINGS_FOLDER = "findings"
# A run may carry its own findings on the data it was trained on (RUN/findings/, written by
# `python -m engine.findings --ship`): read when an entry's key matches exactly, so the app's first start on the
# demo does not compute what the shipped checkpoint already knows. Read-only; the user's cache gets a copy.
SHIPPED_FOLDER = "findings"
NO_LEAD_LAG = "No lead-lag found"
ONE_REGIME = "one regime, or none distinct"
# the clusters differ in volatility, but no more than one-regime clustering (a GARCH) predicts: no regime claimed
SPELLS_NOT_REGIMES = "no distinct regimes: volatility spells that a one-regime GARCH explains as well"
HEADLINE_WORDS = {"edge": "edge", "worse": "worse than the best baseline", "mixed": "mixed", "none": "no edge"}


@dataclass(frozen=True)
class FindingsSettings:
    """What changes the findings (part of the cache key)."""

    fdr: float = 0.05  # lead-lag: Benjamini-Hochberg over every test
    alpha: float = 0.05  # forecast skill: Holm over every cell
    skill_method: str = "holm"
    regimes: RegimeTestConfig = field(default_factory=RegimeTestConfig)

    def identity(self, part: str) -> dict:
        return {"fdr": self.fdr} if part == "lead_lag" else (
            {"alpha": self.alpha, "method": self.skill_method} if part == "forecast_skill"
            else {"regimes": asdict(self.regimes)})


# --- the result -------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Findings:
    """The claims about one run on one panel. `parts` holds the parts computed (all three unless asked otherwise);
    `scores` the long score table the skill verdicts came from (None when the run could not be scored)."""

    run_id: str
    data: str  # the panel's label
    synthetic: bool
    parts: Mapping[str, dict]
    scores: pd.DataFrame | None = field(default=None, repr=False, compare=False)

    def _part(self, name: str) -> dict:
        if name not in self.parts:
            raise ValueError(f"the {name} findings were not computed (parts: {', '.join(self.parts)})")
        return self.parts[name]

    @property
    def lead_lag(self) -> list[dict]:
        """Significant leads (lag >= 1 after the FDR correction), strongest first; [] means no lead-lag found."""
        return self._part("lead_lag")["pairs"]

    @property
    def lead_lag_tests(self) -> dict:
        """How the leads were tested: n_tests, n_lead_tests, max_lag (bars), fdr, comovement (lag-0 pairs), text."""
        return self._part("lead_lag")

    @property
    def forecast_skill(self) -> list[dict]:
        """One verdict per (asset, horizon, metric); [] when the run could not be scored (see skill_note)."""
        return self._part("forecast_skill")["cells"]

    @property
    def skill_headlines(self) -> list[dict]:
        return self._part("forecast_skill")["headlines"]

    @property
    def skill_note(self) -> str:
        """Where the scores came from, or why there are none."""
        return self._part("forecast_skill")["note"]

    @property
    def regimes(self) -> dict[str, dict]:
        return self._part("regimes")["assets"]

    def to_json(self) -> dict:
        """Exactly {"lead_lag": [...], "forecast_skill": [...], "regimes": {asset: {...}}} (every part computed);
        each entry carries its numbers and, under "text", the same claim in words."""
        return {"lead_lag": [dict(pair) for pair in self.lead_lag],
                "forecast_skill": [dict(cell) for cell in self.forecast_skill],
                "regimes": {asset: dict(entry) for asset, entry in self.regimes.items()}}

    # ---- in words ----

    def skill_cell(self, asset: str, horizon: int, metric: str) -> dict | None:
        return next((c for c in self.forecast_skill
                     if c["asset"] == asset and c["horizon"] == int(horizon) and c["metric"] == metric), None)

    def skill_phrase(self, asset: str, horizon: int, metric: str) -> str:
        """"edge over garch_t (p = 0.012)", "no edge over ar1 (p = 0.41)", "worse than har (p < 0.001)", or why
        there is no verdict."""
        cell = self.skill_cell(asset, horizon, metric) if "forecast_skill" in self.parts else None
        return "not scored" if cell is None else skill_phrase(cell)

    def skill_word(self, asset: str, horizon: int, metric: str) -> str:
        """"edge", "no edge", "worse" or "not scored": the verdict in one word or two, for a narrow table."""
        cell = self.skill_cell(asset, horizon, metric) if "forecast_skill" in self.parts else None
        return "not scored" if cell is None else {"edge": "edge", "none": "no edge", "worse": "worse"}[cell["verdict"]]

    def skill_lines(self, horizon: int | None = None) -> list[str]:
        """One line per (asset, horizon): the headline, then each metric's verdict."""
        if not self.forecast_skill:
            return [self.skill_note]
        lines = []
        for head in self.skill_headlines:
            if horizon is not None and head["horizon"] != horizon:
                continue
            metrics = "; ".join(f"{METRIC_WORDS.get(m, m)}: {self.skill_phrase(head['asset'], head['horizon'], m)}"
                                for m in VERDICT_METRICS if self.skill_cell(head["asset"], head["horizon"], m))
            lines.append(f"{head['asset']} {head['horizon']}-bar: {HEADLINE_WORDS[head['verdict']]} ({metrics})")
        return lines

    def lead_lag_lines(self) -> list[str]:
        tests = self.lead_lag_tests
        if not self.lead_lag:
            lines = [f"{NO_LEAD_LAG}: none of the {tests['n_lead_tests']} lead tests (lags 1..{tests['max_lag']} "
                     f"bars) is significant at false-discovery rate {tests['fdr']:.0%}."]
        else:
            lines = [pair["text"] for pair in self.lead_lag]
        lines += [f"Same-bar co-movement, not a lead: {c['text']}" for c in tests["comovement"]]
        return lines

    def regime_lines(self) -> list[str]:
        return [entry["text"] for entry in self.regimes.values()]

    # ---- as tables (the pages and the report show these) ----

    def lead_lag_table(self) -> pd.DataFrame:
        """The significant leads, one row each; empty (with the columns) when no lead-lag was found."""
        agrees = {True: "yes", False: "no", None: "cannot say"}
        return pd.DataFrame([{
            "leader": p["source"], "follower": p["target"], "lead (bars)": p["lead_bars"], "lead (time)": p["lead_time"],
            "slope": p["effect"], "corr": p["corr"], "q": p["q_value"], "bars": p["n_bars"],
            "attention agrees": agrees[p["attention_agrees"]],
        } for p in self.lead_lag], columns=["leader", "follower", "lead (bars)", "lead (time)", "slope", "corr", "q",
                                            "bars", "attention agrees"])

    def regimes_table(self) -> pd.DataFrame:
        """One row per asset: regimes chosen, the verdict, the tests' p's, persistence and HMM agreement."""
        return pd.DataFrame([{
            "asset": asset, "regimes chosen": e["n_regimes"], "verdict": e["verdict"],
            "separation p": e["separation_p"], "separation q": e["separation_q"],
            "beyond GARCH p": e["beyond_recent_vol_p"], "beyond GARCH q": e.get("beyond_q", math.nan),
            "stays in its regime": e["persistence"]["stay_share"],
            "stays, labels shuffled": e["persistence"]["stay_share_shuffled"], "persistence p": e["persistence"]["p"],
            "agreement with a 2-state HMM (ARI)": e["ari_hmm"],
        } for asset, e in self.regimes.items()])

    def regime_levels_table(self) -> pd.DataFrame:
        """One row per (asset, regime): share of bars, next-bar volatility and mean return with their intervals."""
        return pd.DataFrame([{
            "asset": asset, "regime": r["regime"], "bars": r["n_bars"], "share": r["share"],
            "volatility": r["volatility"], "volatility low": r["volatility_interval"][0],
            "volatility high": r["volatility_interval"][1], "mean return": r["mean_return"],
            "mean low": r["mean_return_interval"][0], "mean high": r["mean_return_interval"][1],
        } for asset, e in self.regimes.items() for r in e["regimes"]])

    def skill_table(self, horizon: int | None = None) -> pd.DataFrame:
        """One row per (asset, horizon, metric): the verdict against the best baseline, in words and numbers."""
        return pd.DataFrame([{
            "asset": c["asset"], "horizon": c["horizon"], "metric": c["metric"], "verdict": c["verdict"],
            "best baseline": c["vs"], "p (one-sided, corrected)": c["p_value"], "in words": skill_phrase(c),
        } for c in self.forecast_skill if horizon is None or c["horizon"] == horizon],
            columns=["asset", "horizon", "metric", "verdict", "best baseline", "p (one-sided, corrected)", "in words"])

    def report(self) -> str:
        """The findings in words, one section per part computed."""
        out = [f"Findings for run {self.run_id} on {self.data}" + (" (SYNTHETIC)" if self.synthetic and
                                                                    "SYNTHETIC" not in self.data else "")]
        if "lead_lag" in self.parts:
            tests = self.lead_lag_tests
            out += ["", f"Lead-lag (model-free: {tests['method']}):", *("  " + line for line in self.lead_lag_lines())]
        if "forecast_skill" in self.parts:
            out += ["", "Forecast skill (one-sided Diebold-Mariano against the best baseline, "
                        f"{self._part('forecast_skill')['method_words']}):", f"  {self.skill_note}",
                    *("  " + line for line in (self.skill_lines() if self.forecast_skill else []))]
        if "regimes" in self.parts:
            out += ["", "Regimes (the number chosen on the next bar's returns; claimed when they separate the next "
                        "bar's volatility and do so beyond a one-regime GARCH's forecast, each against circularly "
                        "shifted labels, Holm over assets):", *("  " + line for line in self.regime_lines())]
        return "\n".join(out)


def skill_phrase(cell: Mapping) -> str:
    if cell.get("vs") is None:
        return "no baseline to compare with"
    p = format_p(math.nan if cell.get("p_value") is None else cell["p_value"])
    if cell["verdict"] == "edge":
        return f"edge over {cell['vs']} ({p})"
    if cell["verdict"] == "worse":
        return f"worse than {cell['vs']} ({p})"
    return f"no edge over {cell['vs']} ({p})"


# --- the parts --------------------------------------------------------------------------------------------------


def _plain(value):
    """JSON-safe: numpy scalars to Python, NaN/inf to None."""
    if isinstance(value, (bool, np.bool_)):
        return bool(value)
    if isinstance(value, (int, np.integer)):
        return int(value)
    if isinstance(value, (float, np.floating)):
        return float(value) if np.isfinite(value) else None
    return value


def lead_lag_part(loaded: LoadedPanel, bundle: DiagnosticsBundle, settings: FindingsSettings,
                  lead_path: bool = False) -> dict:
    """lead_path: the run forecasts the mean through linear skip paths fitted on the leads this same test declares
    on each fold's training rows (the general recipe); the words say so beside the attention's reading."""
    from engine.diagnostics.lead_lag_test import lead_lag_findings

    n_keys = bundle.lead_lag.shape[2]
    max_lag = n_keys  # leads 1..K+1 bars sit at key lags 0..K
    found = lead_lag_findings(loaded.panel, max_lag, fdr=settings.fdr)
    step = loaded.panel.clock_step
    null = null_lead_lag_map(bundle.inference.mask, n_keys - 1)
    agreement = attention_agreement(bundle.lead_lag, null, bundle.symbols, found.leads)
    pairs = []
    for row, agree in zip(found.leads.itertuples(), agreement.itertuples()):
        lead = int(row.lag_bars)
        note = agree.note or ""
        agrees = None if note else bool(agree.agrees)
        pair = {
            "target": row.target, "source": row.source, "lead_bars": lead, "lead_time": lag_duration(lead, step),
            "effect": _plain(row.beta), "corr": _plain(row.corr), "t_stat": _plain(row.t_stat),
            "p_value": _plain(row.p), "q_value": _plain(row.q), "n_bars": int(row.n),
            "attention_agrees": agrees, "attention_key_lag": key_lag_of_lead(lead),
            "attention_excess": None if note else _plain(agree.excess), "attention_note": note,
            "lead_path": bool(lead_path),
        }
        pair["text"] = _lead_words(pair)
        pairs.append(pair)
    comovement = [{"target": r.target, "source": r.source, "effect": _plain(r.beta), "corr": _plain(r.corr),
                   "q_value": _plain(r.q), "text": f"{r.target} moves with {r.source} on the same bar (corr "
                                                   f"{r.corr:.2f}, q {_q(r.q)})"}
                  for r in found.comovement.itertuples()]
    return {
        "pairs": pairs, "comovement": comovement, "n_tests": found.n_tests,
        "n_lead_tests": int((found.table["lag_bars"] >= 1).sum()), "max_lag": max_lag, "fdr": settings.fdr,
        "step": lag_duration(1, step) or "bar",
        "method": f"each target's return regressed on each source's return 0..{max_lag} bars earlier over bars where "
                  f"both had a bar, HAC errors, Benjamini-Hochberg over {found.n_tests} tests at {settings.fdr:.0%}",
    }


def _q(q: float) -> str:
    return "< 0.001" if q < 0.001 else f"{q:.3f}"


def _lead_words(pair: dict) -> str:
    when = f" ({pair['lead_time']})" if pair["lead_time"] else ""
    bars = "bar" if pair["lead_bars"] == 1 else "bars"
    if pair["attention_agrees"] is None:
        attention = f"the model's attention cannot say ({pair['attention_note']})"
    elif pair["attention_agrees"]:
        attention = f"the model's attention agrees (above the uninformed weight at key lag {pair['attention_key_lag']})"
    else:
        attention = (f"the model's attention does not point there (key lag {pair['attention_key_lag']}: not its "
                     "largest excess over the uninformed weight for this pair)")
    path = ("; the model's linear lead path forecasts with the leads this test declares on each fold's training "
            "rows" if pair.get("lead_path") else "")
    return (f"{pair['source']} leads {pair['target']} by {pair['lead_bars']} {bars}{when}: {pair['source']}'s return "
            f"{pair['lead_bars']} {bars} earlier predicts {pair['target']}'s (slope {pair['effect']:.3g}, corr "
            f"{pair['corr']:.2f}, q {_q(pair['q_value'])}, {pair['n_bars']:,} bars); {attention}{path}.")


def regimes_part(loaded: LoadedPanel, bundle: DiagnosticsBundle, settings: FindingsSettings) -> dict:
    from engine.diagnostics.regime_tests import regime_verdicts_for_panel

    tests = regime_verdicts_for_panel(loaded.panel, bundle.inference.embeddings, bundle.inference.mask,
                                      range(*bundle.regimes.fit_rows), settings.regimes)
    return {"assets": {v.symbol: regime_entry(v) for v in tests.verdicts}, "alpha": settings.regimes.alpha}


def regime_entry(verdict: RegimeVerdict) -> dict:
    regimes = [{
        "regime": int(r.regime), "n_bars": int(r.n_bars), "share": _plain(r.share),
        "volatility": _plain(r.volatility), "volatility_interval": [_plain(r.vol_low), _plain(r.vol_high)],
        "mean_return": _plain(r.mean), "mean_return_interval": [_plain(r.mean_low), _plain(r.mean_high)],
    } for r in verdict.regimes.itertuples()]
    return {
        "n_regimes": int(verdict.n_regimes), "significant": bool(verdict.significant),
        "verdict": _regime_verdict_words(verdict),
        "separation_p": _plain(verdict.separation_p), "separation_q": _plain(verdict.separation_q),
        "beyond_recent_vol_p": _plain(verdict.beyond_recent_vol_p), "beyond_q": _plain(verdict.beyond_q),
        "lasting_p": _plain(getattr(verdict, "lasting_p", math.nan)), "lasting_bars": int(verdict.lasting_bars),
        "persistence": {"stay_share": _plain(verdict.stay_share),
                        "stay_share_shuffled": _plain(verdict.stay_share_shuffled),
                        "p": _plain(verdict.persistence_p)},
        "ari_hmm": _plain(verdict.ari_hmm), "n_bars": int(verdict.n_bars), "regimes": regimes,
        "text": verdict.text,
    }


def _regime_verdict_words(verdict: RegimeVerdict) -> str:
    if verdict.significant:
        return f"{verdict.n_regimes} distinct regimes"
    if verdict.n_regimes >= 2 and np.isfinite(verdict.separation_q) and verdict.separation_q <= 0.05:
        return SPELLS_NOT_REGIMES
    return ONE_REGIME


def stored_scores(run_dir: Path, manifest: Manifest) -> tuple[pd.DataFrame | None, str]:
    """The run's scores.json as a table when it was written for this run by the current scorer, else (None, why)."""
    from engine.evaluation.baselines import BASELINES
    from engine.evaluation.run_scores import SCORES_JSON

    path = run_dir / SCORES_JSON
    if not path.exists():
        return None, "the run has not been scored"
    try:
        payload = json.loads(path.read_text())
        table = pd.DataFrame.from_records(payload["rows"])
        run_id = payload.get("run_id")
    except (OSError, UnicodeDecodeError, ValueError, KeyError, TypeError) as error:
        return None, f"its {SCORES_JSON} is unreadable ({error})"
    if run_id != manifest.run_id:
        return None, f"its {SCORES_JSON} belongs to run {run_id!r}"
    if not {"model", "asset", "horizon", "metric", "value"} <= set(table.columns):
        return None, f"its {SCORES_JSON} lacks the score columns"
    missing = sorted(set(BASELINES) - set(table["model"]))
    if missing or not table["metric"].eq("dm_p_better_mse").any():
        what = f"without {', '.join(missing)}" if missing else "before the one-sided tests"
        return None, f"its {SCORES_JSON} was scored {what}"
    return table, f"scored by engine.evaluate on {payload.get('data', 'the data it was trained on')}"


def skill_part(run_dir: Path, manifest: Manifest, loaded: LoadedPanel, settings: FindingsSettings,
               scores: pd.DataFrame | None = None) -> tuple[dict, pd.DataFrame | None]:
    from engine.evaluation.run_scores import evaluate_run
    from engine.evaluation.skill import skill_headlines, skill_verdicts

    if scores is not None:
        note = "scores given"
    elif loaded.fingerprint().content_hash != manifest.fingerprint.content_hash:
        # the run's scores (stored or recomputed) are of the forecasts it made on the data it was trained on
        span = f"{manifest.fingerprint.first_ts[:10]} .. {manifest.fingerprint.last_ts[:10]}"
        note = (f"not scored: the data here is not the data the run was trained and scored on ({span}): run "
                f"python -m engine.evaluate --run {run_dir} on that data")
    else:
        scores, why = stored_scores(run_dir, manifest)
        note = why
        if scores is None:
            try:
                scores = evaluate_run(run_dir, loaded, write=False)
                note = (f"scored now on {loaded.label} against every baseline on the run's walk-forward test "
                        f"spans ({why})")
            except (CheckpointError, ValueError, OSError) as error:
                note = f"not scored: {why}, and scoring it now failed ({error})"
    method_words = "Holm-corrected" if settings.skill_method == "holm" else "Benjamini-Hochberg-corrected"
    if scores is None:
        return {"cells": [], "headlines": [], "note": note, "method_words": method_words}, None
    verdicts = skill_verdicts(scores, alpha=settings.alpha, method=settings.skill_method)
    cells = [{"asset": r["asset"], "horizon": int(r["horizon"]), "metric": r["metric"], "verdict": r["verdict"],
              "vs": r["vs"], "direction": r["direction"], "p_value": _plain(r["p_value"]),
              "model_loss": _plain(r["model_loss"]), "baseline_loss": _plain(r["baseline_loss"]),
              "n": _plain(r["n"]), "n_baselines": int(r["n_baselines"]), "text": r["text"]}
             for r in verdicts.to_dict(orient="records")]
    headlines = [{"asset": r["asset"], "horizon": int(r["horizon"]), "verdict": r["verdict"], "text": r["text"]}
                 for r in skill_headlines(verdicts).to_dict(orient="records")]
    return {"cells": cells, "headlines": headlines, "note": note, "method_words": method_words,
            "n_cells": len(cells)}, scores


# --- the one function --------------------------------------------------------------------------------------------


def findings_for_run(
    run_dir: str | os.PathLike,
    loaded: LoadedPanel,
    bundle: DiagnosticsBundle | None = None,
    scores: pd.DataFrame | None = None,
    *,
    parts: Sequence[str] = PARTS,
    settings: FindingsSettings = FindingsSettings(),
    cache_dir: str | os.PathLike | None = None,
    use_cache: bool = True,
    ship: bool = False,
) -> Findings:
    """The findings of checkpoint `run_dir` on `loaded` (see the module docstring for each part).

    bundle: the run's diagnostics on `loaded` (computed, or read from the diagnostics cache, when None). scores: a
    long score table to take the skill verdicts from instead of the run's own. Each part is read from the findings
    cache when its entry is sound, else from the run's own shipped entry (RUN/findings/) when its key matches, else
    computed and stored (use_cache False: computed, nothing stored). ship: also store each part in RUN/findings/
    (only on the data the run was trained on: python -m engine.findings --ship)."""
    from engine.diagnostics.cache import resolve_cache_dir

    unknown = [p for p in parts if p not in PARTS]
    if unknown:
        raise ValueError(f"unknown findings parts {unknown}: choose from {', '.join(PARTS)}")
    run_dir = Path(run_dir)
    manifest = read_manifest(run_dir)
    if bundle is None:
        from engine.diagnostics.for_run import diagnostics_for_run

        bundle, _ = diagnostics_for_run(run_dir, loaded, cache_dir=cache_dir)
    if tuple(bundle.symbols) != tuple(loaded.symbols):
        raise ValueError(f"the diagnostics are of {list(bundle.symbols)}, the panel of {list(loaded.symbols)}")
    data_hash = loaded.fingerprint().content_hash
    if ship and data_hash != manifest.fingerprint.content_hash:
        raise ValueError(f"findings are shipped with run {manifest.run_id} only on the data it was trained on "
                         f"({manifest.fingerprint.first_ts[:10]} .. {manifest.fingerprint.last_ts[:10]}), not "
                         f"on {loaded.label}")
    root = resolve_cache_dir(cache_dir) / FINDINGS_FOLDER
    computed: dict[str, dict] = {}
    table = None
    for part in PARTS:
        if part not in parts:
            continue
        key = {"format": FINDINGS_FORMAT, "part": part, "run_id": manifest.run_id, "created_at": manifest.created_at,
               "data_hash": data_hash, "fit_rows": list(bundle.regimes.fit_rows), "settings": settings.identity(part)}
        if part == "forecast_skill":
            key["scores"] = "given" if scores is not None else _scores_file_digest(run_dir)
            if scores is not None:
                use_part_cache = False  # a table handed in is not a file we can key on
            else:
                use_part_cache = use_cache
        else:
            use_part_cache = use_cache

        def compute(part=part):
            if part == "lead_lag":
                skip = bool((manifest.model_config or {}).get("skip_paths"))
                return lead_lag_part(loaded, bundle, settings, lead_path=skip), None
            if part == "regimes":
                return regimes_part(loaded, bundle, settings), None
            return skill_part(run_dir, manifest, loaded, settings, scores)

        shipped = run_dir / SHIPPED_FOLDER
        payload, part_table = (_cached(root, key, compute, shipped, ship) if use_part_cache else compute())
        computed[part] = payload
        if part == "forecast_skill":
            table = part_table
    return Findings(manifest.run_id, loaded.label, bool(loaded.synthetic), computed, table)


def _scores_file_digest(run_dir: Path) -> str:
    # engine.evaluation.run_scores.SCORES_JSON, named here: importing that module loads scipy (1.8 s at every app start)
    path = run_dir / "scores.json"
    try:
        return hashlib.sha256(path.read_bytes()).hexdigest()[:16] if path.exists() else "none"
    except OSError:
        return "unreadable"


def _entry_name(key: dict) -> str:
    digest = hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:16]
    safe_run = re.sub(r"[^A-Za-z0-9_.-]", "_", str(key["run_id"]))[:80]
    return f"{safe_run}-{key['data_hash']}-{key['part']}-{digest}.json"


def _read_entry(path: Path, key: dict) -> tuple[dict, pd.DataFrame | None] | None:
    """(payload, table) of the entry at `path` when it parses and carries exactly this key, else None."""
    try:
        stored = json.loads(path.read_text())
        if stored.get("key") == json.loads(json.dumps(key)):
            table = stored.get("table")
            return stored["payload"], None if table is None else pd.DataFrame.from_records(table)
    except (OSError, UnicodeDecodeError, ValueError, KeyError, TypeError, AttributeError):
        pass  # missing, unreadable or made for something else
    return None


def _write_entry(folder: Path, name: str, text: str) -> None:
    """Written to a temporary file and renamed, so a reader never sees half of an entry."""
    folder.mkdir(parents=True, exist_ok=True)
    handle, staging = tempfile.mkstemp(prefix=".tmp-", dir=folder)
    try:
        with os.fdopen(handle, "w") as out:
            out.write(text)
        os.replace(staging, folder / name)
    except BaseException:
        Path(staging).unlink(missing_ok=True)
        raise


def _cached(root: Path, key: dict, compute, shipped: Path | None = None, ship: bool = False
            ) -> tuple[dict, pd.DataFrame | None]:
    """The part from its cache entry if the entry parses and carries this key, else from the run's shipped entry
    (`shipped`, read-only) when that one does, else computed now; stored in the cache either way (one writer at a
    time per entry), and also in `shipped` when `ship`."""
    from filelock import FileLock

    root.mkdir(parents=True, exist_ok=True)
    name = _entry_name(key)
    with FileLock(str(root / (name + ".lock")), timeout=900):
        cached = _read_entry(root / name, key)
        if cached is not None and not ship:
            return cached
        from_run = None if ship or shipped is None else _read_entry(shipped / name, key)
        payload, table = cached or from_run or compute()
        records = None if table is None else [{k: _plain(v) for k, v in row.items()}
                                              for row in table.to_dict(orient="records")]
        text = json.dumps({"key": key, "payload": payload, "table": records}, allow_nan=False)
        if cached is None:
            _write_entry(root, name, text)
        if ship and shipped is not None:
            _write_entry(shipped, name, text)
    return payload, table


# --- what a page draws beside the findings ----------------------------------------------------------------------


def cluster_evidence(loaded: LoadedPanel, labels: np.ndarray, mask: np.ndarray, symbol: str,
                     rows: range | None = None, config: RegimeTestConfig = RegimeTestConfig()) -> RegimeVerdict:
    """The regime tests on GIVEN labels of one asset (the Regimes page's clusters, any number of them): labels and
    mask (A, T) on the panel's clock. Not corrected over assets (one asset is tested); see regime_evidence."""
    from engine.diagnostics.regime_tests import hours_since_previous_bar, regime_evidence
    from storage.panel import own_bar_log_returns

    asset = list(loaded.symbols).index(symbol)
    returns = own_bar_log_returns(loaded.panel)[asset]
    gaps = hours_since_previous_bar(loaded.panel)[asset]
    return regime_evidence(np.asarray(labels)[asset], np.asarray(mask)[asset], returns, gaps, symbol, config, rows)


def attention_and_null(bundle: DiagnosticsBundle, rows: range) -> tuple[np.ndarray, np.ndarray]:
    """The lead-lag map over `rows` and the uninformed model's map over the same bars, both (A, A, K+1): the page
    draws map - null (engine.diagnostics.attention_null.excess_map). Rows before the kept attention (a universe past
    the memory budget) are left out of both."""
    weights = bundle.lead_lag_over(rows)
    kept = bundle.attention_rows
    if rows.start <= 0 and rows.stop >= len(bundle.inference.ts):
        span = None  # the whole-span map counts every bar (DiagnosticsBundle.lead_lag)
    else:
        span = range(max(rows.start, kept.start), max(rows.stop, kept.start))
    return weights, null_lead_lag_map(bundle.inference.mask, weights.shape[2] - 1, span)
