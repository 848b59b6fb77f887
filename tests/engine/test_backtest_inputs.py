"""Forecasts on the panel clock become backtest inputs: the right horizon, per-bar volatility, each asset's clock."""
from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from engine.backtest.engine import StrategyConfig, run_backtest
from engine.backtest.inputs import (
    backtest_inputs_from_forecasts,
    backtested_span_text,
    baseline_forecasts,
    infer_markets,
)
from storage.panel import Panel

HORIZONS = (1, 5)


def mixed_panel(n_days: int = 400, seed: int = 0) -> Panel:
    """Daily bars: A trades every day, B on weekdays only (its close carried over weekends)."""
    rng = np.random.default_rng(seed)
    ts = pd.date_range("2023-01-02", periods=n_days, freq="1D", tz="UTC")
    observed = np.ones((n_days, 2), dtype=bool)
    observed[:, 1] = ts.day_of_week < 5
    close = 100 * np.exp(np.cumsum(rng.normal(0, 0.01, (n_days, 2)), axis=0))
    for t in range(1, n_days):  # closed bars carry the last close, as storage's panel does
        if not observed[t, 1]:
            close[t, 1] = close[t - 1, 1]
    fields = {name: close.copy() for name in ("open", "high", "low", "close")}
    fields["volume"] = np.where(observed, 1.0, 0.0)
    return Panel(ts=ts, symbols=("A", "B"), fields=fields, observed=observed)


def forecasts(panel, value=0.6, vol=0.05):
    shape = (len(panel.symbols), len(panel.ts), len(HORIZONS))
    prob = np.full(shape, value)
    prob[:, :, 1] = 1 - value  # a different number at horizon 5, to see which one is picked
    return prob, np.full(shape, vol)


def test_weekend_bars_make_an_asset_crypto_and_set_its_annualisation():
    panel = mixed_panel()
    assert infer_markets(panel) == ("crypto", "equities")
    prob, vol = forecasts(panel)
    inputs = backtest_inputs_from_forecasts(panel, prob, vol, HORIZONS, 5, "1d")
    np.testing.assert_array_equal(inputs.bars_per_year, [365.0, 252.0])
    assert "365 days" in inputs.describe_annualisation() and "252 sessions" in inputs.describe_annualisation()


def test_the_chosen_horizon_is_traded_and_its_volatility_scaled_to_one_bar():
    panel = mixed_panel()
    prob, vol = forecasts(panel, vol=0.05)
    inputs = backtest_inputs_from_forecasts(panel, prob, vol, HORIZONS, 5, "1d")
    assert inputs.horizon == 5
    np.testing.assert_allclose(inputs.prob_up, 0.4)
    np.testing.assert_allclose(inputs.pred_vol, 0.05 / np.sqrt(5))
    np.testing.assert_array_equal(inputs.tradable, panel.observed)


def test_returns_are_close_to_close_and_zero_while_a_market_is_closed():
    panel = mixed_panel()
    prob, vol = forecasts(panel)
    inputs = backtest_inputs_from_forecasts(panel, prob, vol, HORIZONS, 1, "1d")
    close = panel.fields["close"]
    assert np.isnan(inputs.returns[0]).all()
    np.testing.assert_allclose(inputs.returns[1:], close[1:] / close[:-1] - 1)
    assert np.all(inputs.returns[1:][~panel.observed[1:, 1], 1] == 0.0)


def test_start_trims_to_the_out_of_sample_bars():
    panel = mixed_panel()
    prob, vol = forecasts(panel)
    inputs = backtest_inputs_from_forecasts(panel, prob, vol, HORIZONS, 1, "1d", start=panel.ts[100])
    assert inputs.n_bars == len(panel.ts) - 100
    assert pd.Timestamp(inputs.ts[0]).tz_localize("UTC") == panel.ts[100]


@pytest.mark.parametrize(
    "change, message",
    [
        (dict(prob_up=np.zeros((2, 10, 2))), "prob_up has shape"),
        (dict(horizon=20), "horizon 20 is not among"),
        (dict(markets=("crypto", "bonds")), "markets must give one of"),
        (dict(start="2099-01-01"), "is after the last bar"),
    ],
)
def test_bad_forecasts_are_refused_with_what_was_wrong(change, message):
    panel = mixed_panel()
    prob, vol = forecasts(panel)
    arguments = dict(panel=panel, prob_up=prob, predicted_vol=vol, horizons=HORIZONS, horizon=1, interval="1d")
    with pytest.raises(ValueError, match=message):
        backtest_inputs_from_forecasts(**{**arguments, **change})


def test_baseline_forecasts_exist_only_out_of_sample_and_ignore_the_future():
    panel = mixed_panel(n_days=500)
    result = baseline_forecasts(panel, HORIZONS)
    first = panel.ts.get_loc(result.out_of_sample_start)
    assert np.isnan(result.prob_up[:, :first]).all()
    assert np.isfinite(result.prob_up[0, first:]).all()  # the 24/7 asset gets a forecast on every later bar
    assert "logistic" in result.description

    # Changing prices after a bar cannot change the forecasts made at or before it.
    cut = first + 60
    changed_close = panel.fields["close"].copy()
    changed_close[cut + 1 :] *= 1.5
    fields = {**panel.fields, **{name: changed_close for name in ("open", "high", "low", "close")}}
    changed = baseline_forecasts(Panel(panel.ts, panel.symbols, fields, panel.observed), HORIZONS)
    # The folds refit on later training spans that include the change, so compare within the first test span.
    np.testing.assert_allclose(changed.prob_up[:, first : cut + 1], result.prob_up[:, first : cut + 1])

    inputs = backtest_inputs_from_forecasts(panel, result.prob_up, result.predicted_vol, HORIZONS, 1, "1d",
                                            start=result.out_of_sample_start)
    backtest = run_backtest(inputs, StrategyConfig(vol_target=0.2))
    assert backtest.metrics.n_bars == inputs.n_bars and backtest.metrics.n_trades > 0


# --- the backtested span: the bars with out-of-sample forecasts, for the strategy and buy-and-hold alike -----------


def forecasts_on(panel, rows, value=0.6, vol=0.05):
    """Forecasts only on `rows` (e.g. two walk-forward test spans), NaN elsewhere."""
    prob, vol = forecasts(panel, value, vol)
    off = np.ones(len(panel.ts), dtype=bool)
    off[rows] = False
    prob[:, off], vol[:, off] = np.nan, np.nan
    return prob, vol


def test_the_backtest_covers_only_the_bars_with_forecasts_and_buy_and_hold_is_counted_only_there():
    panel = mixed_panel()
    test_spans = np.r_[100:200, 250:300]  # two test spans with a gap between them; nothing after the last
    prob, vol = forecasts_on(panel, test_spans)
    inputs = backtest_inputs_from_forecasts(panel, prob, vol, HORIZONS, 1, "1d")
    assert inputs.n_bars == 200
    assert pd.Timestamp(inputs.ts[0]).tz_localize("UTC") == panel.ts[100]
    assert pd.Timestamp(inputs.ts[-1]).tz_localize("UTC") == panel.ts[299]  # the last bar with a forecast

    # A bar is earned by the position set at the close before it: counted only when that bar had a forecast.
    had_forecast_before = np.zeros(inputs.n_bars, dtype=bool)
    had_forecast_before[1:] = np.isin(np.arange(100, 299), test_spans)
    result = run_backtest(inputs, StrategyConfig(threshold=0.0, long_short=False, commission_bps=0, slippage_bps=0))
    benchmark = result.benchmark.net_returns
    assert np.all(benchmark[~had_forecast_before] == 0.0)  # the gap and the first bar earn nothing
    assert np.all(benchmark[had_forecast_before][1:] != 0.0)  # held on every counted bar after the first close
    # Always long with no costs is buy-and-hold on the same bars, the gap included (the 24/7 asset alone: the
    # weekday-only one can re-enter after the gap only when its market opens, which buy-and-hold need not do).
    always_long = StrategyConfig(threshold=0.0, long_short=False, commission_bps=0, slippage_bps=0, weights=(1, 0))
    crypto_only = run_backtest(inputs, always_long)
    np.testing.assert_allclose(crypto_only.portfolio_net_returns, crypto_only.benchmark.net_returns)


def test_the_chosen_dates_narrow_the_backtested_span_and_a_span_without_forecasts_is_refused():
    panel = mixed_panel()
    prob, vol = forecasts_on(panel, np.r_[100:300])
    inputs = backtest_inputs_from_forecasts(panel, prob, vol, HORIZONS, 1, "1d", start=panel.ts[150], end=panel.ts[350])
    assert pd.Timestamp(inputs.ts[0]).tz_localize("UTC") == panel.ts[150]
    assert pd.Timestamp(inputs.ts[-1]).tz_localize("UTC") == panel.ts[299]
    assert "the bars with out-of-sample forecasts" in backtested_span_text(inputs)

    with pytest.raises(ValueError, match="the chosen dates hold no out-of-sample forecasts"):
        backtest_inputs_from_forecasts(panel, prob, vol, HORIZONS, 1, "1d", start=panel.ts[320])
    with pytest.raises(ValueError, match="no out-of-sample forecasts at horizon 1"):
        backtest_inputs_from_forecasts(panel, prob * np.nan, vol, HORIZONS, 1, "1d")
