"""The aligned panel (storage.panel): as-of alignment read from a real DuckDB file in tmp_path, the Panel contract's
checks, the own-bar helpers, the fingerprint, and the demo's panel with its planted truth."""
from __future__ import annotations

import dataclasses

import numpy as np
import pandas as pd
import pytest

from storage import cache
from storage.panel import (
    DataFingerprint,
    Panel,
    align_as_of,
    cached_panel,
    check_panel,
    demo_panel,
    own_bar_log_returns,
    panel_fingerprint,
    read_panel,
)
from storage.sources.demo import demo_market
from tests.storage.helpers_bars import make_bars, only_weekdays

# --- reading the panel from the cache --------------------------------------------------------------------------


def expected_panel_by_pandas(series: dict[str, pd.DataFrame], start=None) -> dict[str, pd.DataFrame]:
    """An independent as-of alignment with pandas.merge_asof: the specification of read_panel."""
    clock = pd.DatetimeIndex(sorted(set().union(*[set(f["ts"]) for f in series.values()])), name="ts")
    if start is not None:
        clock = clock[clock >= start]
    out = {field: pd.DataFrame(index=clock) for field in ("open", "high", "low", "close", "volume", "observed")}
    for symbol, bars in series.items():
        asof = pd.merge_asof(pd.DataFrame({"ts": clock}), bars.assign(bar_ts=bars["ts"]), on="ts", direction="backward")
        observed = (asof["bar_ts"] == asof["ts"]).to_numpy()
        for field in ("open", "high", "low"):
            out[field][symbol] = np.where(observed, asof[field], asof["close"])
        out["close"][symbol] = asof["close"].to_numpy()
        out["volume"][symbol] = np.where(observed, asof["volume"], 0.0)
        out["observed"][symbol] = observed
    return out


@pytest.fixture
def crypto_and_equity(db_path):
    """BTC every hour around the clock; SPY only 14:00-20:00 on weekdays, starting a day later."""
    btc = make_bars(24 * 14, start="2024-01-01", seed=1)
    spy = make_bars(24 * 13, start="2024-01-02", seed=2, price=470.0)
    spy = only_weekdays(spy[spy["ts"].dt.hour.between(14, 20)])
    cache.upsert_bars(btc, "BTC", "demo", "1h", db_path)
    cache.upsert_bars(spy, "SPY", "demo", "1h", db_path)
    return {"BTC": btc, "SPY": spy}


def test_panel_aligns_assets_as_of_the_past_only(db_path, crypto_and_equity):
    panel = read_panel(["BTC", "SPY"], "1h", db_path=db_path)
    expected = expected_panel_by_pandas(crypto_and_equity)

    assert panel.symbols == ("BTC", "SPY") and panel.sources == ("demo", "demo")
    pd.testing.assert_index_equal(panel.ts, expected["close"].index)
    for field in ("open", "high", "low", "close", "volume"):
        assert panel.fields[field].dtype == np.float64 and panel.fields[field].shape == (len(panel), 2)
        np.testing.assert_array_equal(panel.fields[field], expected[field].to_numpy(), err_msg=field)
    np.testing.assert_array_equal(panel.observed, expected["observed"].to_numpy())
    # Before SPY's first bar there is nothing to carry forward: NaN, not a later price.
    first_spy = crypto_and_equity["SPY"]["ts"].iloc[0]
    assert np.isnan(panel.close[panel.ts < first_spy, 1]).all()
    assert not np.isnan(panel.close[panel.ts >= first_spy, 1]).any()


def test_panel_rows_never_change_when_later_bars_arrive(db_path, crypto_and_equity):
    """No leakage: the panel up to t is the same whether or not bars after t are stored."""
    full = read_panel(["BTC", "SPY"], "1h", db_path=db_path)
    cut = pd.Timestamp("2024-01-10 16:00", tz="UTC")
    early = read_panel(["BTC", "SPY"], "1h", end=cut, db_path=db_path)

    keep = full.ts < cut
    pd.testing.assert_index_equal(early.ts, full.ts[keep])
    for field in ("open", "high", "low", "close", "volume"):
        np.testing.assert_array_equal(early.fields[field], full.fields[field][keep])
    np.testing.assert_array_equal(early.observed, full.observed[keep])


def test_panel_start_carries_the_last_price_from_before_start(db_path, crypto_and_equity):
    start = pd.Timestamp("2024-01-06 03:00", tz="UTC")  # a Saturday: SPY's last bar was Friday 20:00
    panel = read_panel(["BTC", "SPY"], "1h", start=start, db_path=db_path)
    expected = expected_panel_by_pandas(crypto_and_equity, start=start)

    assert panel.ts[0] == start
    np.testing.assert_array_equal(panel.close, expected["close"].to_numpy())
    friday_close = crypto_and_equity["SPY"].set_index("ts").loc["2024-01-05 20:00", "close"]
    assert panel.close[0, 1] == friday_close and not panel.observed[0, 1] and panel.fields["volume"][0, 1] == 0.0


def test_panel_choice_of_sources_and_assets_without_bars(db_path, crypto_and_equity):
    cache.upsert_bars(make_bars(24, start="2024-01-01", seed=5, price=42_000.0), "BTC", "ccxt", "1h", db_path)

    preferred = read_panel(["BTC", "SPY", "ETH"], "1h", db_path=db_path)
    assert preferred.sources == ("ccxt", "demo", None)
    assert np.isnan(preferred.close[:, 2]).all() and not preferred.observed[:, 2].any()

    by_mapping = read_panel(["BTC", "SPY"], "1h", sources={"BTC": "demo"}, db_path=db_path)
    by_sequence = read_panel(["BTC", "SPY"], "1h", sources=["demo", "demo"], db_path=db_path)
    assert by_mapping.sources == by_sequence.sources == ("demo", "demo")
    np.testing.assert_array_equal(by_mapping.close, by_sequence.close)
    assert len(by_mapping) == 24 * 14  # BTC demo's hourly clock, not ccxt's 24 bars

    with pytest.raises(ValueError, match="one per symbol"):
        read_panel(["BTC", "SPY"], "1h", sources=["demo"], db_path=db_path)
    with pytest.raises(ValueError, match="distinct"):
        read_panel(["BTC", "BTC"], "1h", db_path=db_path)
    with pytest.raises(TypeError):
        read_panel("BTC", "1h", db_path=db_path)


def test_align_as_of_sorts_bars_that_arrive_out_of_order():
    asset = np.array([0, 0, 0, 1])
    ts_us = np.array([30, 10, 20, 15], dtype=np.int64)
    values = {name: np.array([3.0, 1.0, 2.0, 9.0]) for name in ("open", "high", "low", "close", "volume")}
    clock, fields, observed = align_as_of(asset, ts_us, values, 2, start_us=None)
    np.testing.assert_array_equal(clock, [10, 15, 20, 30])
    np.testing.assert_array_equal(fields["close"], [[1, np.nan], [1, 9], [2, 9], [3, 9]])
    np.testing.assert_array_equal(fields["volume"], [[1, 0], [0, 9], [2, 0], [3, 0]])
    np.testing.assert_array_equal(observed, [[1, 0], [0, 1], [1, 0], [1, 0]])


# --- the demo's panel and its planted truth -----------------------------------------------------------------------


def same_truth(a, b) -> bool:
    return (a.variant, a.interval, a.seed, a.lag_bars) == (b.variant, b.interval, b.seed, b.lag_bars) and \
        a.regimes.equals(b.regimes)


def test_the_demo_panel_carries_the_truth_that_was_planted_in_it():
    planted, null = demo_panel("1d"), demo_panel("1d", variant="null")

    assert same_truth(planted.truth, demo_market("1d").truth) and planted.truth.lag_bars == 1
    assert same_truth(null.truth, demo_market("1d", "null").truth) and null.truth.lag_bars is None
    assert planted.synthetic and planted.panel.sources == ("demo",) * 3 and planted.panel.interval == "1d"
    assert not planted.truth.regimes.reindex(planted.panel.ts).isna().any()  # a planted regime on every row


def test_a_demo_panel_read_back_from_the_cache_is_the_generator_s_panel_with_its_truth(db_path):
    for symbol, bars in demo_market("1d").bars.items():
        cache.upsert_bars(bars, symbol, "demo", "1d", db_path)

    cached, direct = cached_panel(["BTC", "SPY", "AAPL"], "1d", db_path=db_path), demo_panel("1d")

    assert same_truth(cached.truth, direct.truth) and cached.synthetic
    pd.testing.assert_index_equal(cached.panel.ts, direct.panel.ts)
    for name in ("open", "high", "low", "close", "volume"):
        np.testing.assert_array_equal(cached.panel.fields[name], direct.panel.fields[name], err_msg=name)
    np.testing.assert_array_equal(cached.panel.observed, direct.panel.observed)


def test_a_cached_panel_has_no_planted_truth_unless_every_asset_is_the_demo(db_path):
    for symbol, bars in demo_market("1d").bars.items():
        cache.upsert_bars(bars, symbol, "demo", "1d", db_path)
    cache.upsert_bars(make_bars(30, freq="1D", seed=3), "BTC", "yfinance", "1d", db_path)
    cache.upsert_bars(make_bars(30, freq="4h", seed=4), "SPY", "demo", "4h", db_path)  # e.g. resampled demo bars

    for symbol, bars in demo_market("1h", "planted", seed=8).bars.items():  # fetched with another seed
        cache.upsert_bars(bars, symbol, "demo", "1h", db_path)

    mixed = cached_panel(["BTC", "SPY"], "1d", db_path=db_path)  # BTC now prefers yfinance
    resampled = cached_panel(["SPY"], "4h", db_path=db_path)
    other_seed = cached_panel(["BTC", "SPY", "AAPL"], "1h", db_path=db_path)

    assert mixed.panel.sources == ("yfinance", "demo") and mixed.synthetic and mixed.truth is None
    assert resampled.synthetic and resampled.truth is None  # the generator has no 4h market to take it from
    assert other_seed.synthetic and other_seed.truth is None  # not the bars the default generator planted
    assert cached_panel(["SPY", "AAPL"], "1d", db_path=db_path).truth is not None


# --- the contract: checks, own bars, fingerprint ------------------------------------------------------------------


def small_panel(close: np.ndarray, observed: np.ndarray) -> Panel:
    ts = pd.date_range("2024-01-05", periods=len(close), freq="1D", tz="UTC")  # a Friday
    fields = {name: close.copy() for name in ("open", "high", "low", "close")}
    fields["volume"] = np.where(observed, 1.0, 0.0)
    return Panel(ts, tuple(f"A{i}" for i in range(close.shape[1])), fields, observed)


def test_own_bar_returns_skip_the_rows_where_the_market_was_closed():
    close = np.array([[100.0, 50.0], [110.0, 50.0], [121.0, 50.0], [133.1, 55.0]])
    observed = np.array([[True, True], [True, False], [True, False], [True, True]])  # A1 closed at the weekend
    returns = own_bar_log_returns(small_panel(close, observed))

    np.testing.assert_allclose(returns[0, 1:], np.log(1.1))
    assert np.isnan(returns[:, 0]).all() and np.isnan(returns[1, 1:3]).all()
    assert returns[1, 3] == pytest.approx(np.log(55.0 / 50.0))  # Monday against Friday


def test_check_panel_names_the_field_asset_and_time_that_break_the_contract():
    close = np.full((3, 2), 100.0)
    observed = np.ones((3, 2), dtype=bool)
    close[2, 1] = -1.0
    with pytest.raises(ValueError, match="for A1 at 2024-01-07"):
        check_panel(small_panel(close, observed))
    with pytest.raises(ValueError, match="observed must be bool"):
        check_panel(small_panel(np.full((3, 2), 100.0), np.ones((3, 2))))


def test_the_fingerprint_changes_with_any_value_and_only_with_the_data():
    close, observed = np.full((4, 2), 100.0), np.ones((4, 2), dtype=bool)
    base = panel_fingerprint(small_panel(close, observed), "1d", ("demo", "demo"))
    same = panel_fingerprint(small_panel(close.copy(), observed.copy()), "1d", ("demo", "demo"))
    close[3, 1] = 100.5
    moved = panel_fingerprint(small_panel(close, observed), "1d", ("demo", "demo"))

    assert same == base and moved.content_hash != base.content_hash
    assert (base.n_rows, base.first_ts, base.symbols) == (4, "2024-01-05T00:00:00.000000", ("A0", "A1"))
    assert DataFingerprint.from_dict(dataclasses.asdict(base)) == base
