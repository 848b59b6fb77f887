"""Scores: each loss on hand-checkable cases, the Diebold-Mariano test on a worked example, and the long table."""
from __future__ import annotations

import math

import numpy as np
import pytest
from scipy import stats

from engine.evaluation.scores import (
    Predictions,
    brier_losses,
    calibration_table,
    concat_predictions,
    diebold_mariano,
    hit_scores,
    interval_coverage,
    log_losses,
    pinball_losses,
    qlike_losses,
    score_table,
)
from engine.targets import Targets

# ---- single losses ----


def test_pinball_weights_misses_by_the_quantile_level():
    actual = np.array([1.0, 0.0, 0.5])
    quantiles = np.array([[0.0], [1.0], [0.5]])
    # under-forecast at the 0.9 level costs 0.9 per unit, over-forecast 0.1, exact 0
    np.testing.assert_allclose(pinball_losses(actual, quantiles, [0.9]), [0.9, 0.1, 0.0])
    # the median level is half the absolute error
    np.testing.assert_allclose(pinball_losses(actual, quantiles, [0.5]), [0.5, 0.5, 0.0])


def test_pinball_is_lowest_at_the_true_quantile():
    sample = np.random.default_rng(0).normal(size=20_000)
    true_q90 = stats.norm.ppf(0.9)
    losses = {shift: pinball_losses(sample, np.full((len(sample), 1), true_q90 + shift), [0.9]).mean()
              for shift in (-0.3, 0.0, 0.3)}
    assert losses[0.0] < losses[-0.3] and losses[0.0] < losses[0.3]


def test_coverage_counts_values_inside_the_interval_inclusively():
    actual = np.array([0.0, 1.0, 2.0, 3.0])
    assert interval_coverage(actual, np.full(4, 1.0), np.full(4, 2.0)) == 0.5
    assert math.isnan(interval_coverage(actual[:0], actual[:0], actual[:0]))


def test_brier_and_log_loss_by_hand():
    outcome = np.array([True, False, True])
    prob = np.array([0.8, 0.3, 0.5])
    np.testing.assert_allclose(brier_losses(outcome, prob), [0.04, 0.09, 0.25])
    np.testing.assert_allclose(log_losses(outcome, prob), [-np.log(0.8), -np.log(0.7), np.log(2)])
    assert np.isfinite(log_losses(np.array([True]), np.array([0.0]))).all()  # clipped, not infinite


def test_qlike_is_zero_when_right_and_punishes_under_forecasts_more():
    realised = np.array([0.02, 0.02, 0.02, 0.0])
    losses = qlike_losses(realised, np.array([0.02, 0.01, 0.04, 0.02]))
    assert losses[0] == pytest.approx(0.0)
    assert losses[1] > losses[2] > 0  # half the true vol costs more than twice the true vol
    assert np.isnan(losses[3])  # no price change at all: undefined in the normalised form


def test_hit_score_counts_a_coin_flip_as_half():
    outcome = np.array([True, True, False, False])
    np.testing.assert_array_equal(hit_scores(outcome, np.array([0.9, 0.5, 0.2, 0.7])), [1.0, 0.5, 1.0, 0.0])


def test_calibration_table_of_calibrated_forecasts_tracks_the_diagonal():
    rng = np.random.default_rng(1)
    prob = rng.uniform(size=50_000)
    outcome = rng.uniform(size=prob.size) < prob
    table = calibration_table(outcome, prob, n_bins=10)
    assert list(table.columns) == ["bin_lower", "bin_upper", "mean_prob", "frequency", "count"]
    assert table["count"].sum() == prob.size
    np.testing.assert_allclose(table["frequency"], table["mean_prob"], atol=0.02)
    overconfident = calibration_table(outcome, np.where(prob > 0.5, 1.0, 0.0), n_bins=10)
    assert overconfident["count"].iloc[-1] == (prob > 0.5).sum()  # P = 1 falls in the last bin
    assert overconfident["frequency"].iloc[-1] < 0.8


# ---- Diebold-Mariano ----


def test_dm_matches_a_worked_example():
    """loss_a - loss_b = d = [3, 2, -1, 0, 1, 1], h = 2, n = 6.

    mean d = 1; deviations [2, 1, -2, -1, 0, 0]; gamma_0 = 10/6 = 5/3; gamma_1 = (2 - 2 + 2)/6 = 1/3.
    HLN factor sqrt((n + 1 - 2h + h(h-1)/n) / n) = sqrt((3 + 1/3) / 6) = sqrt(5/9).
    Truncated (R forecast::dm.test): V = (5/3 + 2/3) / 6 = 7/18, DM = 1/sqrt(7/18), stat = sqrt(18/7 * 5/9)
    = sqrt(10/7) = 1.19523.
    Newey-West, Bartlett weight 1 - 1/2 on lag 1: V = (5/3 + 1/3) / 6 = 1/3, stat = sqrt(3 * 5/9) = sqrt(5/3)
    = 1.29099. p-values: two-sided t with 5 degrees of freedom.
    """
    loss_a = np.array([4.0, 3.0, 1.0, 2.0, 3.0, 3.0])
    loss_b = np.array([1.0, 1.0, 2.0, 2.0, 2.0, 2.0])
    truncated = diebold_mariano(loss_a, loss_b, horizon=2, kernel="truncated")
    assert truncated.statistic == pytest.approx(math.sqrt(10 / 7))
    assert truncated.p_value == pytest.approx(2 * stats.t.sf(math.sqrt(10 / 7), df=5))
    newey_west = diebold_mariano(loss_a, loss_b, horizon=2)
    assert newey_west.statistic == pytest.approx(math.sqrt(5 / 3))
    assert newey_west.p_value == pytest.approx(2 * stats.t.sf(math.sqrt(5 / 3), df=5))
    assert newey_west.n == 6 and newey_west.mean_difference == pytest.approx(1.0)


def test_dm_is_antisymmetric_and_undefined_for_identical_forecasts():
    rng = np.random.default_rng(2)
    loss_a, loss_b = rng.exponential(size=300), rng.exponential(size=300)
    forward, backward = diebold_mariano(loss_a, loss_b, 5), diebold_mariano(loss_b, loss_a, 5)
    assert forward.statistic == pytest.approx(-backward.statistic)
    assert forward.p_value == pytest.approx(backward.p_value)
    same = diebold_mariano(loss_a, loss_a.copy(), 5)
    assert math.isnan(same.statistic) and math.isnan(same.p_value)
    one_step = [diebold_mariano(loss_a, loss_b, 1, kernel=k).statistic for k in ("bartlett", "truncated")]
    assert one_step[0] == pytest.approx(one_step[1])


def test_dm_finds_a_clearly_better_forecast_and_skips_missing_rows():
    rng = np.random.default_rng(3)
    truth = rng.normal(size=400)
    good = (truth - (truth + rng.normal(0, 0.3, 400))) ** 2
    bad = (truth - rng.normal(0, 1.0, 400)) ** 2
    good[::10] = np.nan
    result = diebold_mariano(good, bad, horizon=1)
    assert result.n == 360
    assert result.statistic < -5 and result.p_value < 1e-6


def test_dm_one_sided_p_values_carry_the_direction():
    rng = np.random.default_rng(8)
    lower, higher = rng.exponential(1.0, 500), rng.exponential(1.3, 500)
    result = diebold_mariano(lower, higher, horizon=3)
    assert result.direction == "better" and result.statistic < 0
    assert result.p_a_better < 0.01 and result.p_a_better == pytest.approx(result.p_value / 2)
    assert result.p_a_better + result.p_a_worse == pytest.approx(1.0)
    flipped = diebold_mariano(higher, lower, horizon=3)
    assert flipped.direction == "worse" and flipped.p_a_worse == pytest.approx(result.p_a_better)
    assert diebold_mariano(lower, lower.copy(), 3).direction == "tie"


def test_one_sided_dm_holds_its_size_on_overlapping_h_bar_forecasts():
    """Two equally good forecasters of a 5-bar return whose errors are overlapping 5-bar sums (so the loss
    difference is autocorrelated to lag 4): the one-sided test says "better" at p < 0.05 about 5% of the time.
    400 draws: the rate's standard error is 0.011."""
    horizon, n, draws, rejections = 5, 500, 400, 0

    def overlapping(rng):
        return np.convolve(rng.normal(size=n + horizon - 1), np.ones(horizon), mode="valid")

    for seed in range(draws):
        rng = np.random.default_rng(seed)
        target = overlapping(rng)
        a, b = target + overlapping(rng), target + overlapping(rng)
        rejections += diebold_mariano((target - a) ** 2, (target - b) ** 2, horizon).p_a_better < 0.05
    assert 0.02 <= rejections / draws <= 0.09, rejections


# ---- the table ----


def tiny_targets(n_rows: int = 200, seed: int = 4) -> Targets:
    rng = np.random.default_rng(seed)
    log_return = rng.normal(0, 0.01, (1, n_rows, 2))
    valid = np.ones((1, n_rows, 2), dtype=bool)
    valid[0, -5:, 1] = False
    log_return[~valid] = np.nan
    return Targets(
        symbols=("BTC",),
        horizons=(1, 5),
        log_return=log_return,
        direction=np.nan_to_num(log_return) > 0,
        realised_vol=np.abs(rng.normal(0.01, 0.002, (1, n_rows, 2))),
        valid=valid,
        end_row=np.where(valid, np.arange(n_rows)[None, :, None] + np.array([1, 5]), -1),
    )


def test_score_table_is_long_and_scores_a_perfect_forecaster_perfectly():
    targets = tiny_targets()
    rows = np.arange(100, 200)
    truth = targets.log_return[:, rows]
    levels = (0.1, 0.5, 0.9)
    perfect = Predictions(
        rows=rows, horizons=(1, 5), point=truth,
        quantiles=np.repeat(truth[..., None], 3, axis=3), quantile_levels=levels,
        prob_up=targets.direction[:, rows].astype(float), volatility=targets.realised_vol[:, rows],
    )
    zero = Predictions(rows=rows, horizons=(1, 5), point=np.zeros_like(truth),
                       quantiles=np.zeros(truth.shape + (3,)) + np.array([-0.013, 0, 0.013]), quantile_levels=levels,
                       prob_up=np.full_like(truth, 0.5), volatility=np.full_like(truth, 0.01))
    table = score_table({"model": perfect, "zero": zero}, targets, reference="model")
    assert list(table.columns) == ["model", "asset", "horizon", "metric", "value"]
    scores = table.set_index(["model", "horizon", "metric"])["value"]
    assert scores[("model", 1, "mse")] == 0 and scores[("model", 1, "pinball")] == 0
    assert scores[("model", 1, "brier")] == 0 and scores[("model", 1, "hit_rate")] == 1
    assert scores[("model", 1, "qlike")] == pytest.approx(0, abs=1e-12)
    assert scores[("model", 5, "n")] == 95  # the last five 5-bar targets do not exist
    assert scores[("zero", 1, "hit_rate")] == 0.5
    assert 0.6 < scores[("zero", 1, "coverage_10_90")] < 0.95
    # the DM rows live on the baseline: the reference minus this baseline, negative = the reference is better
    assert scores[("zero", 1, "dm_stat_mse")] < -5 and scores[("zero", 1, "dm_p_mse")] < 1e-6
    assert ("model", 1, "dm_stat_mse") not in scores.index
    # one-sided: the reference is better (tiny p), not worse (p near 1); on the rows both forecast
    assert scores[("zero", 1, "dm_p_better_mse")] < 1e-6 and scores[("zero", 1, "dm_p_worse_mse")] > 0.999
    assert scores[("zero", 5, "dm_n_mse")] == 95
    assert scores[("zero", 1, "dm_ref_loss_mse")] == 0 < scores[("zero", 1, "dm_loss_mse")]
    assert scores[("zero", 1, "quantile_spread")] == pytest.approx(0.026)
    assert scores[("model", 1, "quantile_spread")] == 0  # every quantile on the outcome: no spread


def test_score_table_only_reports_what_a_forecaster_has():
    targets = tiny_targets()
    rows = np.arange(50, 150)
    vol_only = Predictions(rows=rows, horizons=(5,), volatility=np.full((1, 100, 1), 0.01))
    table = score_table({"har": vol_only}, targets, reference=None)
    assert set(table["metric"]) == {"n", "qlike"}
    assert set(table["horizon"]) == {5}


def test_score_table_refuses_what_would_not_compare():
    targets = tiny_targets()
    rows = np.arange(10)
    a = Predictions(rows=rows, horizons=(1,), quantiles=np.zeros((1, 10, 1, 3)), quantile_levels=(0.1, 0.5, 0.9))
    b = Predictions(rows=rows, horizons=(1,), quantiles=np.zeros((1, 10, 1, 2)), quantile_levels=(0.1, 0.9))
    with pytest.raises(ValueError, match="different quantile levels"):
        score_table({"a": a, "b": b}, targets)
    with pytest.raises(ValueError, match="horizons \\[3\\] have no targets"):
        score_table({"a": Predictions(rows=rows, horizons=(3,), point=np.zeros((1, 10, 1)))}, targets)
    with pytest.raises(ValueError, match="2 assets"):
        score_table({"a": Predictions(rows=rows, horizons=(1,), point=np.zeros((2, 10, 1)))}, targets)


def test_predictions_check_their_shapes():
    with pytest.raises(ValueError, match="disagree"):
        Predictions(rows=np.arange(5), horizons=(1,), point=np.zeros((1, 5, 1)), prob_up=np.zeros((1, 4, 1)))
    with pytest.raises(ValueError, match="6 rows"):
        Predictions(rows=np.arange(6), horizons=(1,), point=np.zeros((1, 5, 1)))


def test_concatenated_spans_must_move_forward():
    first = Predictions(rows=np.arange(0, 10), horizons=(1,), point=np.zeros((1, 10, 1)))
    second = Predictions(rows=np.arange(10, 15), horizons=(1,), point=np.ones((1, 5, 1)))
    joined = concat_predictions([first, second])
    np.testing.assert_array_equal(joined.rows, np.arange(15))
    assert joined.point[0, 12, 0] == 1 and joined.prob_up is None
    with pytest.raises(ValueError, match="forward without overlapping"):
        concat_predictions([second, first])
