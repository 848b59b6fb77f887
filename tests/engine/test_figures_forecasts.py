"""Forecast charts and score tables: the whole out-of-sample history, honest calibration bins, readable scores."""
from __future__ import annotations

import itertools

import numpy as np
import pandas as pd
import pytest

from engine.evaluation.forecast_review import PastForecasts, score_column_specs
from engine.figures import forecasts as charts

LEVELS = (0.1, 0.5, 0.9)


def past(n: int, seed: int = 0) -> PastForecasts:
    rng = np.random.default_rng(seed)
    index = pd.date_range("2023-01-01", periods=n, freq="h", tz="UTC", name="ts")
    mid = rng.normal(0, 0.001, n)
    frame = pd.DataFrame({"q0.1": mid - 0.01, "q0.5": mid, "q0.9": mid + 0.01, "prob_up": rng.uniform(0.3, 0.7, n),
                          "realised": rng.normal(0, 0.01, n)}, index=index)
    return PastForecasts("BTC", 1, frame, LEVELS)


def test_the_fan_chart_draws_every_forecast_from_the_first_with_a_range_selector():
    n = charts.MAX_FAN_POINTS
    forecasts = past(n)
    fig = charts.past_fan_chart(forecasts, synthetic=False)
    realised = fig.data[3]
    assert len(realised.x) == n and pd.Timestamp(realised.x[0]) == forecasts.frame.index[0].tz_localize(None)  # naive UTC
    assert f"all {n:,}" in fig.layout.title.text
    assert not fig.layout.xaxis.rangeslider.visible and len(fig.layout.xaxis.rangeselector.buttons) == 4  # no slider copy


@pytest.mark.parametrize("n", [8_999, 30_000])  # the demo's hourly BTC: 8,999 out-of-sample forecasts
def test_a_longer_history_is_thinned_keeping_the_extremes_and_the_chart_says_so(n):
    forecasts = past(n, seed=1)
    forecasts.frame.iloc[n // 3, forecasts.frame.columns.get_loc("realised")] = 0.5  # an outlier must stay visible
    fig = charts.past_fan_chart(forecasts, synthetic=False)
    realised = np.asarray(fig.data[3].y)
    assert len(realised) <= charts.MAX_FAN_POINTS + 2 and 0.5 in realised
    assert pd.Timestamp(fig.data[3].x[0]) == forecasts.frame.index[0].tz_localize(None)  # still from the first forecast
    assert pd.Timestamp(fig.data[3].x[-1]) == forecasts.frame.index[-1].tz_localize(None)  # and to the last
    assert f"of {n:,} forecasts drawn" in fig.layout.title.text


def test_the_thinned_fan_keeps_every_stretchs_band_and_outcome_extremes_as_fewer_markers():
    n, max_points = 8_999, 1_500
    forecasts = past(n, seed=2)
    frame = forecasts.frame
    fig = charts.past_fan_chart(forecasts, synthetic=False, max_points=max_points)
    upper, lower, median, realised = fig.data
    # drawn in float32: the chart's values are the frame's to 7 digits
    band_x = pd.DatetimeIndex(upper.x).tz_localize("UTC")
    assert list(band_x) == list(pd.DatetimeIndex(lower.x).tz_localize("UTC"))
    assert len(band_x) <= 2 * max_points // 3 + 2 and len(realised.x) <= max_points // 3 + 2  # fewer SVG markers
    # every stretch of bars (the chart's buckets) keeps its highest upper edge, lowest lower edge, highest and lowest
    # outcome, so no extreme of any stretch disappears
    edges = np.linspace(0, n, max_points // 6 + 1).astype(int)
    outcome_x = set(pd.DatetimeIndex(realised.x).tz_localize("UTC"))
    band_set = set(band_x)
    for a, b in itertools.pairwise(edges):
        stretch = frame.iloc[a:b]
        assert stretch["q0.9"].idxmax() in band_set and stretch["q0.1"].idxmin() in band_set
        assert stretch["realised"].idxmax() in outcome_x and stretch["realised"].idxmin() in outcome_x
    np.testing.assert_allclose(np.asarray(upper.y), frame.loc[band_x, "q0.9"], rtol=1e-6)
    np.testing.assert_allclose(np.asarray(median.y), frame.loc[band_x, "q0.5"], rtol=1e-5, atol=1e-9)
    drawn = len(band_x.union(pd.DatetimeIndex(list(outcome_x))))
    assert f"{drawn:,} of {n:,} forecasts drawn" in fig.layout.title.text

def test_calibration_leaves_out_bins_with_too_few_forecasts_and_says_the_minimum():
    table = pd.DataFrame({"mean_prob": [0.15, 0.45, 0.55, 0.85], "frequency": [0.0, 0.44, 0.57, 1.0],
                          "count": [3, 500, 480, 29]})
    fig = charts.calibration_chart({"BTC": table}, 1, synthetic=False, min_count=30)
    drawn = fig.data[1]
    assert list(drawn.x) == [0.45, 0.55]
    assert "fewer than 30 forecasts" in fig.layout.title.text


def test_score_columns_get_friendly_titles_tooltips_and_scientific_notation_for_small_numbers():
    board = pd.DataFrame({"forecaster": ["model", "zero"], "n": [8999.0, 8999.0], "mse": [1.03e-4, 1.02e-4],
                          "brier": [0.2512, 0.25], "coverage_10_90": [0.78, 0.8],
                          "model vs this: mse": ["", "worse than zero, p = 1.000"]})
    specs = score_column_specs(board)
    assert specs["mse"] == ("MSE of the mean", specs["mse"][1], "%.3e") and "squared error" in specs["mse"][1]
    assert specs["brier"][2] == "%.4f" and specs["n"][2] == "%d"
    assert specs["coverage_10_90"][0] == "10-90% band coverage"
    assert specs["model vs this: mse"][0] == "model vs this row: MSE of the mean" and specs["model vs this: mse"][2] is None
    assert all(text for _, text, _ in specs.values())


@pytest.mark.parametrize("n", [1, 50])
def test_short_histories_draw_without_thinning(n):
    fig = charts.past_fan_chart(past(n), synthetic=True)
    assert len(fig.data[3].x) == n
