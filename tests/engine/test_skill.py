"""Skill verdicts: a forecaster with no information gets "none" at about the nominal rate or less, one with real
information gets "edge", a bad one "worse"; the sign convention; pinball is judged only against baselines with a
spread; the manifest summary stores verdicts and one-sided p's. Synthetic forecasts, no model training."""
from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
from scipy import stats

from engine.evaluation.baselines import (
    BaselineConfig,
    HistoricalMean,
    HistoricalQuantiles,
    ZeroReturn,
)
from engine.evaluation.run_scores import score_summary, summary_skill
from engine.evaluation.scores import DEFAULT_QUANTILE_LEVELS, Predictions, score_table
from engine.evaluation.skill import adjusted_p_values, pairwise_comparisons, skill_headlines, skill_verdicts
from tests.engine.test_baselines import inputs, panel_from_returns

SIGMA = 0.01
TRAIN, TEST = range(0, 1000), range(1000, 1500)
LEVELS = np.array(DEFAULT_QUANTILE_LEVELS)


def market(seed: int, n_assets: int = 3, n_rows: int = 1500):
    """Independent normal returns: nothing to forecast beyond the spread."""
    returns = np.random.default_rng(seed).normal(0, SIGMA, (n_rows, n_assets))
    data = inputs(panel_from_returns(returns))
    return data, data.targets


def baselines(data) -> dict[str, Predictions]:
    return {cls.name: cls().fit(data, TRAIN).predict(data, TEST) for cls in (ZeroReturn, HistoricalMean,
                                                                              HistoricalQuantiles)}


def no_information(data, seed: int, base: dict[str, Predictions]) -> Predictions:
    """A forecaster with a spread and no information: point and P(up) are noise, quantiles are the past's (another
    window than the baseline's), volatility is the zero baseline's (the training span's) with noise. Only what the
    baselines know: a volatility from sqrt(h) times the 1-bar spread would beat their overlapping-residual
    estimate at 20 bars, which is a real (if small) edge over weak baselines, not what this forecaster is for."""
    rng = np.random.default_rng(10_000 + seed)
    shape = (len(data.symbols), len(TEST), len(data.targets.horizons))
    root_h = np.sqrt(np.array(data.targets.horizons))[None, None, :]
    quantiles = HistoricalQuantiles(BaselineConfig(historical_window=200)).fit(data, TRAIN).predict(data, TEST)
    return Predictions(rows=np.arange(TEST.start, TEST.stop), horizons=data.targets.horizons,
                       point=rng.normal(0, 0.3 * SIGMA, shape) * root_h, quantiles=quantiles.quantiles,
                       prob_up=0.5 + rng.uniform(-0.05, 0.05, shape),
                       volatility=base["zero"].volatility * np.exp(rng.normal(0, 0.1, shape)))


def informed(targets, seed: int, sign: float = 1.0) -> Predictions:
    """Knows a noisy copy of the outcome, signal = y + noise of half its size, so y | signal ~ N(0.8 signal,
    0.2 var). sign = -1 turns it into a deliberately bad forecaster (everything mirrored)."""
    rng = np.random.default_rng(20_000 + seed)
    rows = np.arange(TEST.start, TEST.stop)
    y = targets.log_return[:, rows]  # (A, n, H), NaN where the target does not exist
    scale = SIGMA * np.sqrt(np.array(targets.horizons))[None, None, :]
    mean = sign * 0.8 * (np.nan_to_num(y) + 0.5 * rng.normal(0, 1, y.shape) * scale)
    spread = scale * np.sqrt(0.2)
    return Predictions(rows=rows, horizons=targets.horizons, point=mean,
                       quantiles=mean[..., None] + spread[..., None] * stats.norm.ppf(LEVELS),
                       prob_up=stats.norm.sf(0, loc=mean, scale=spread))


@pytest.mark.slow  # default-suite budget: the exact-null rate test below stays in it
def test_a_forecaster_without_information_gets_no_edge_in_nearly_every_market():
    """Family-wise: in each of 40 independent markets (3 assets x 3 horizons x 4 metrics, 36 verdicts corrected
    together) count whether ANY verdict says "edge". Holm keeps that below 5%; 40 draws allow 5 (P <= 0.014 at
    5%)."""
    any_edge = cells = 0
    for seed in range(40):
        data, targets = market(seed)
        base = baselines(data)
        verdicts = skill_verdicts({"model": no_information(data, seed, base), **base}, targets)
        cells += len(verdicts)
        any_edge += (verdicts["verdict"] == "edge").any()
        assert set(verdicts["metric"]) == {"mse", "pinball", "brier", "qlike"}
    assert cells == 40 * 3 * 3 * 4
    assert any_edge <= 5, any_edge


def test_under_an_exact_null_edge_and_worse_each_come_out_at_most_at_the_nominal_rate():
    """The model and four baselines are exchangeable noise forecasters (equal expected loss): one cell, 200 draws.
    Choosing the best of four on the test span would make a plain "worse" fire far more often than 5%; the
    Bonferroni factor on the worse side and the two-direction correction keep both rates at or below 5% (200 draws:
    at most 16, P <= 0.03 at 5%)."""
    edge = worse = raw_worse = 0
    for seed in range(200):
        rng = np.random.default_rng(seed)
        y = rng.normal(0, 1, (1, 400, 1))
        targets = _targets(y)
        forecasts = {name: Predictions(rows=np.arange(400), horizons=(1,), point=rng.normal(0, 1, (1, 400, 1)))
                     for name in ("model", "a", "b", "c", "d")}
        table = score_table(forecasts, targets)
        verdicts = skill_verdicts(table)
        assert len(verdicts) == 1 and verdicts["n_baselines"].iloc[0] == 4
        edge += verdicts["verdict"].iloc[0] == "edge"
        worse += verdicts["verdict"].iloc[0] == "worse"
        pairs = pairwise_comparisons(table)
        best = pairs.loc[pairs["baseline_loss"].idxmin()]
        raw_worse += best["p_worse"] < 0.05
    assert edge <= 16 and worse <= 16, (edge, worse)
    assert raw_worse > 16, raw_worse  # what the corrections guard against: best-of-four, uncorrected (~13%)


def test_a_forecaster_with_information_has_an_edge_and_a_mirrored_one_is_worse():
    data, targets = market(1)
    base = baselines(data)
    every = skill_verdicts({"model": informed(targets, 1), **base}, targets)
    assert len(every) == 3 * 3 * 3  # 3 assets, horizons 1 5 20, metrics mse pinball brier (no volatility forecast)
    # 20-bar targets overlap: 480 rows hold about 24 independent outcomes, too few to call every 20-bar cell
    assert (every["direction"] == "better").all() and (every[every["horizon"] == 20]["verdict"] != "worse").all()
    good = every[every["horizon"] < 20]
    assert (good["verdict"] == "edge").all(), good
    assert (good["sign"] == 1).all() and (good["dm_stat"] < 0).all()
    assert (good["model_loss"] < good["baseline_loss"]).all() and (good["p_value"] < 0.05).all()
    assert good["text"].str.startswith("edge: better than").all()
    bad = skill_verdicts({"model": informed(targets, 1, sign=-1.0), **base}, targets)
    bad = bad[bad["horizon"] < 20]
    assert (bad["verdict"] == "worse").all(), bad
    assert (bad["direction"] == "worse").all() and (bad["sign"] == -1).all() and (bad["dm_stat"] > 0).all()
    assert bad["text"].str.startswith("worse: worse than").all()
    headlines = skill_headlines(pd.concat([good.assign(asset=good["asset"] + "-good"), bad]))
    assert set(headlines[headlines["asset"].str.endswith("-good")]["verdict"]) == {"edge"}
    assert set(headlines[~headlines["asset"].str.endswith("-good")]["verdict"]) == {"worse"}
    assert "edge on mse (better than" in headlines["text"].iloc[0] and "Holm" in headlines["text"].iloc[0]


def test_the_sign_convention_by_hand():
    """The model's squared errors are lower than the baseline's: "better", +1, a negative DM statistic (model minus
    baseline), the small one-sided p on the "better" side."""
    y = np.random.default_rng(2).normal(0, 1, (1, 300, 1))
    model = Predictions(rows=np.arange(300), horizons=(1,), point=0.8 * y)
    zero = Predictions(rows=np.arange(300), horizons=(1,), point=np.zeros_like(y))
    verdict = skill_verdicts({"model": model, "zero": zero}, _targets(y)).iloc[0]
    assert (verdict["verdict"], verdict["vs"], verdict["direction"], verdict["sign"]) == ("edge", "zero", "better", 1)
    assert verdict["dm_stat"] < 0 and verdict["p_better"] < 1e-6 and verdict["p_worse"] == 1.0
    assert verdict["model_loss"] == pytest.approx(0.04 * np.mean(y**2))
    assert verdict["text"].startswith("edge: better than zero, p < 0.001")


def test_pinball_is_judged_only_against_baselines_with_a_spread():
    data, targets = market(3, n_assets=1)
    model = no_information(data, 3, baselines(data))
    flat = Predictions(rows=model.rows, horizons=model.horizons, point=np.zeros_like(model.point),
                       quantiles=np.zeros_like(model.quantiles))  # every quantile at 0: no spread
    forecasts = {"model": model, "flat": flat, "historical_quantiles": baselines(data)["historical_quantiles"]}
    pairs = pairwise_comparisons(score_table(forecasts, targets))
    against_flat = pairs[(pairs["baseline"] == "flat") & (pairs["metric"] == "pinball")]
    assert (against_flat["p_better"] < 1e-6).all() and not against_flat["eligible"].any()  # "beats" it: no test
    verdicts = skill_verdicts(forecasts, targets).set_index(["metric", "horizon"])
    assert (verdicts.loc["pinball", "vs"] == "historical_quantiles").all()
    assert (verdicts.loc["pinball", "verdict"] != "edge").all()
    assert (verdicts.loc["mse", "vs"] == "flat").all()  # the zero forecast is kept for MSE


def test_predictions_and_old_score_tables_give_the_same_verdicts():
    data, targets = market(4, n_assets=2)
    forecasts = {"model": informed(targets, 4), **baselines(data)}
    table = score_table(forecasts, targets)
    from_table = skill_verdicts(table)
    pd.testing.assert_frame_equal(from_table, skill_verdicts(forecasts, targets))
    # a table written before the one-sided columns: p's from the two-sided p and the sign
    old = table[~table["metric"].str.match(r"dm_(p_better|p_worse|n|loss|ref_loss)_|quantile_spread")]
    from_old = skill_verdicts(old)
    assert list(from_old["verdict"]) == list(from_table["verdict"])
    np.testing.assert_allclose(from_old["p_better"], from_table["p_better"], rtol=1e-9, atol=1e-12)


def test_holm_matches_statsmodels():
    from statsmodels.stats.multitest import multipletests

    p = np.random.default_rng(7).uniform(0, 0.1, 40) ** 2
    p[[3, 9]] = p[5]  # ties
    np.testing.assert_allclose(adjusted_p_values(p, "holm"), multipletests(p, method="holm")[1])
    np.testing.assert_allclose(adjusted_p_values(p, "fdr_bh"), multipletests(p, method="fdr_bh")[1])


def test_benjamini_hochberg_is_available_and_refuses_unknown_methods():
    data, targets = market(5, n_assets=1)
    forecasts = {"model": informed(targets, 5), **baselines(data)}
    bh = skill_verdicts(forecasts, targets, method="fdr_bh")
    assert (bh["method"] == "fdr_bh").all() and (bh["verdict"] == "edge").all()
    assert "Benjamini-Hochberg" in bh["text"].iloc[0]
    with pytest.raises(ValueError, match="holm"):
        skill_verdicts(forecasts, targets, method="bonferroni")
    with pytest.raises(ValueError, match="targets"):
        skill_verdicts(forecasts)


def test_the_manifest_summary_stores_verdicts_and_one_sided_p_values():
    data, targets = market(6, n_assets=2)
    table = score_table({"model": informed(targets, 6), **baselines(data)}, targets)
    summary = score_summary(table)
    json.dumps(summary, allow_nan=False)  # what the manifest writes
    entry = summary["assets"]["A0"]
    assert summary["correction"] == "holm" and entry["headline"]["verdict"] == "edge"
    assert entry["skill"]["mse"]["verdict"] == "edge" and entry["skill"]["mse"]["p_value"] < 0.05
    assert set(entry["skill"]) == {"mse", "pinball", "brier"}
    vs_zero = entry["vs_zero"]
    assert vs_zero["dm_p_better_mse"] < 0.05 < vs_zero["dm_p_worse_mse"]
    assert "dm_p_mse" in vs_zero  # two-sided, kept for readers of older manifests
    assert summary_skill(entry)["skill"] == entry["skill"]
    old_entry = {"mse": 1.0, "vs_zero": {"dm_stat_mse": 1.9, "dm_p_mse": 0.06}}
    assert summary_skill(old_entry)["headline"]["verdict"] is None and summary_skill(old_entry)["skill"] == {}


def _targets(y: np.ndarray):
    """Targets for 1-bar returns y (A, n, 1), every one valid."""
    from engine.targets import Targets

    n = y.shape[1]
    valid = np.ones(y.shape, dtype=bool)
    return Targets(symbols=tuple(f"A{i}" for i in range(y.shape[0])), horizons=(1,), log_return=y,
                   direction=y > 0, realised_vol=np.abs(y), valid=valid,
                   end_row=np.broadcast_to(np.arange(n)[None, :, None] + 1, y.shape).copy())
