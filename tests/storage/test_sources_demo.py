"""The demo market: deterministic, valid, and carrying exactly the structure DEMO.md says was planted."""
from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from storage.sources.base import SourceError
from storage.sources.demo import DEMO_SYMBOLS, DemoSource, _generate, DemoConfig, demo_market
from storage.validation import validate_bars

INTERVALS = ("1d", "1h")


def aligned_returns(market, follower: str) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """BTC and follower log returns on the BTC clock; the follower joined as-of (its last close), with a mask
    of bars where its market traded (a closed market has no return of its own)."""
    btc = market.bars["BTC"].set_index("ts")["close"]
    follower_close = market.bars[follower].set_index("ts")["close"]
    traded = btc.index.isin(follower_close.index)
    as_of = follower_close.reindex(btc.index).ffill()
    return np.log(btc).diff().to_numpy(), np.log(as_of).diff().to_numpy(), traded


def lagged_correlations(market, follower: str, max_lag: int = 8) -> np.ndarray:
    """corr(follower return at t, BTC return at t-k) for k = 0..max_lag, over bars where the follower traded."""
    btc, follower_returns, traded = aligned_returns(market, follower)
    out = []
    for k in range(max_lag + 1):
        x = btc[1 : len(btc) - k]
        y = follower_returns[1 + k :]
        use = traded[1 + k :] & np.isfinite(x) & np.isfinite(y)
        out.append(np.corrcoef(x[use], y[use])[0, 1])
    return np.array(out)


def spell_lengths(labels: np.ndarray) -> np.ndarray:
    change = np.flatnonzero(np.diff(labels)) + 1
    return np.diff(np.r_[0, change, len(labels)])


@pytest.mark.parametrize("interval", INTERVALS)
def test_same_seed_gives_identical_frames_and_another_seed_does_not(interval):
    first = _generate(DemoConfig(), interval, "planted", 7)  # bypasses the in-process cache
    again = _generate(DemoConfig(), interval, "planted", 7)
    other = _generate(DemoConfig(), interval, "planted", 8)
    for symbol in DEMO_SYMBOLS:
        pd.testing.assert_frame_equal(first.bars[symbol], again.bars[symbol])
        assert not np.allclose(first.bars[symbol]["close"], other.bars[symbol]["close"])
    pd.testing.assert_series_equal(first.truth.regimes, again.truth.regimes)


def test_generation_is_cached_in_process():
    assert demo_market("1d") is demo_market("1d")


@pytest.mark.parametrize("variant", ["planted", "null"])
@pytest.mark.parametrize("interval", INTERVALS)
def test_bars_are_valid(interval, variant):
    for symbol, bars in demo_market(interval, variant).bars.items():
        pd.testing.assert_frame_equal(validate_bars(bars, f"demo:{symbol}"), bars)
        assert (bars["high"] >= bars[["open", "close"]].max(axis=1)).all()
        assert (bars["low"] <= bars[["open", "close"]].min(axis=1)).all()
        assert (bars[["open", "high", "low", "close", "volume"]] > 0).all().all()


def test_spans_and_sizes():
    daily, hourly = demo_market("1d"), demo_market("1h")
    assert daily.bars["BTC"]["ts"].iloc[0] == pd.Timestamp("2019-01-01", tz="UTC")
    assert daily.bars["BTC"]["ts"].iloc[-1] == pd.Timestamp("2024-12-31", tz="UTC")
    assert len(hourly.bars["BTC"]) == 3 * 365 * 24 + 24  # 2022..2024, 2024 a leap year
    assert (hourly.bars["BTC"]["ts"].diff().dropna() == pd.Timedelta(hours=1)).all()  # 24/7, no gaps


def test_equities_trade_only_in_sessions():
    for symbol in ("SPY", "AAPL"):
        daily = demo_market("1d").bars[symbol]["ts"]
        assert (daily.dt.day_of_week < 5).all()
        hourly = demo_market("1h").bars[symbol]["ts"]
        assert (hourly.dt.day_of_week < 5).all()
        assert set(hourly.dt.hour) == set(range(14, 21))
        assert hourly.dt.floor("D").value_counts().eq(7).all()  # seven bars every trading day
    assert (demo_market("1d").bars["BTC"]["ts"].dt.day_of_week >= 5).any()  # BTC trades at weekends


@pytest.mark.parametrize("interval", INTERVALS)
@pytest.mark.parametrize("follower", ["SPY", "AAPL"])
def test_planted_lead_peaks_at_the_planted_lag(interval, follower):
    market = demo_market(interval)
    lag = market.truth.lag_bars
    correlations = lagged_correlations(market, follower)
    n = len(market.bars[follower])
    assert int(np.argmax(correlations)) == lag
    # Clearly above noise (about 1/sqrt(n)) and clearly above every other lag.
    assert correlations[lag] > 8 / np.sqrt(n)
    others = np.delete(correlations, lag)
    assert correlations[lag] > 2 * others.max()


@pytest.mark.parametrize("interval", INTERVALS)
def test_null_variant_has_no_lead(interval):
    market = demo_market(interval, "null")
    assert market.truth.lag_bars is None and market.truth.lead_betas["SPY"] == 0.0
    planted_lag = demo_market(interval).truth.lag_bars
    for follower in ("SPY", "AAPL"):
        correlations = lagged_correlations(market, follower)
        noise = 3 / np.sqrt(len(market.bars[follower]))
        assert abs(correlations[planted_lag]) < noise
        assert np.abs(correlations[1:]).max() < noise


@pytest.mark.parametrize("interval", INTERVALS)
def test_regimes_are_sticky_and_shared(interval):
    truth = demo_market(interval).truth
    labels = truth.regimes.to_numpy()
    assert set(np.unique(labels)) == {0, 1, 2}
    assert spell_lengths(labels).mean() > 20  # many bars per spell, not flickering
    assert truth.regimes.index.equals(pd.DatetimeIndex(demo_market(interval).bars["BTC"]["ts"]))
    assert np.allclose(truth.transition_matrix.sum(axis=1), 1.0)
    assert (np.diag(truth.transition_matrix) > 0.95).all()


@pytest.mark.parametrize("interval", INTERVALS)
def test_volatility_differs_by_regime_as_planted(interval):
    market = demo_market(interval)
    btc = market.bars["BTC"]
    returns = np.log(btc["close"]).diff().to_numpy()[1:]
    labels = market.truth.regimes.to_numpy()[1:]
    realised = {name: returns[labels == k].std() for k, name in enumerate(market.truth.regime_names)}
    assert realised["volatile downtrend"] > 1.5 * realised["calm uptrend"]
    assert realised["volatile downtrend"] > realised["choppy mean-reverting"] > realised["calm uptrend"]


@pytest.mark.parametrize("interval", INTERVALS)
def test_memory_is_longest_in_the_calm_trend_and_reverts_in_the_choppy_regime(interval):
    market = demo_market(interval)
    truth = market.truth
    assert truth.memory_order[0] == "calm uptrend"
    half_lives = {name: p.drift_half_life_bars for name, p in truth.regime_params["BTC"].items()}
    assert half_lives["calm uptrend"] > half_lives["volatile downtrend"] > half_lives["choppy mean-reverting"]
    # In the data: returns persist in the calm trend and revert in the choppy regime.
    returns = np.log(market.bars["BTC"]["close"]).diff().to_numpy()[1:]
    labels = truth.regimes.to_numpy()[1:]

    def lag_one(k: int) -> float:
        x = returns[labels == k]
        return np.corrcoef(x[:-1], x[1:])[0, 1]

    calm, choppy = truth.regime_names.index("calm uptrend"), truth.regime_names.index("choppy mean-reverting")
    assert lag_one(calm) > 0 > lag_one(choppy)


@pytest.mark.parametrize("interval", INTERVALS)
def test_null_variant_has_one_regime_and_the_same_volatility_level(interval):
    planted, null = demo_market(interval), demo_market(interval, "null")
    assert null.truth.regime_names == ("single",) and (null.truth.regimes == 0).all()
    for symbol in DEMO_SYMBOLS:
        vol = [np.log(m.bars[symbol]["close"]).diff().std() for m in (planted, null)]
        assert 0.7 < vol[1] / vol[0] < 1.3, symbol


def test_fetch_returns_closed_bars_in_range_only():
    assert DemoSource(now="2021-06-01 12:30").fetch("BTC", "1h").empty  # before the hourly span starts
    hourly = DemoSource(now="2023-06-01 12:30").fetch("BTC", "1h")
    assert hourly["ts"].iloc[-1] == pd.Timestamp("2023-06-01 11:00", tz="UTC")  # 12:00 closes at 13:00
    window = DemoSource().fetch("SPY", "1d", start="2020-03-02", end=pd.Timestamp("2020-03-09", tz="UTC"))
    assert list(window["ts"].dt.strftime("%Y-%m-%d")) == ["2020-03-02", "2020-03-03", "2020-03-04",
                                                          "2020-03-05", "2020-03-06"]
    bars = DemoSource().fetch("AAPL", "1d")
    bars.loc[0, "close"] = -1.0  # a caller's edit must not reach the cached market
    assert (DemoSource().fetch("AAPL", "1d")["close"] > 0).all()


def test_fetch_refuses_what_the_demo_does_not_have():
    with pytest.raises(SourceError, match="not in the demo market"):
        DemoSource().fetch("ETH", "1d")
    with pytest.raises(SourceError, match="no 4h bars"):
        DemoSource().fetch("BTC", "4h")
    with pytest.raises(ValueError, match="variant"):
        DemoSource(variant="other")
