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
    ts_us = np.array([20, 0, 10, 10], dtype=np.int64)
    values = {name: np.array([3.0, 1.0, 2.0, 9.0]) for name in ("open", "high", "low", "close", "volume")}
    clock, fields, observed = align_as_of(asset, ts_us, values, 2, start_us=None, interval_us=10)
    np.testing.assert_array_equal(clock, [0, 10, 20])
    np.testing.assert_array_equal(fields["close"], [[1, np.nan], [2, 9], [3, 9]])
    np.testing.assert_array_equal(fields["volume"], [[1, 0], [2, 9], [3, 0]])
    np.testing.assert_array_equal(observed, [[1, 0], [1, 1], [1, 0]])


# --- the clock: bars keyed by their close, on the interval's UTC grid -----------------------------------------------


def expected_rows_by_close(series: dict[str, pd.DataFrame], interval: str) -> dict[str, pd.DataFrame]:
    """An independent specification of the clock with pandas: a bar belongs to the row [tau, tau + interval) whose
    end is its close rounded UP to the UTC grid; bars in one row aggregate; rows as-of the past."""
    step = pd.Timedelta(interval)
    by_row = {}
    for symbol, bars in series.items():
        row = (bars["ts"] + step).dt.ceil(step) - step
        by_row[symbol] = bars.groupby(row.rename("row")).agg(
            open=("open", "first"), high=("high", "max"), low=("low", "min"), close=("close", "last"),
            volume=("volume", "sum")).reset_index()
    clock = pd.DatetimeIndex(sorted(set().union(*[set(f["row"]) for f in by_row.values()])), name="ts")
    out = {field: pd.DataFrame(index=clock) for field in ("open", "high", "low", "close", "volume", "observed")}
    for symbol, rows in by_row.items():
        asof = pd.merge_asof(pd.DataFrame({"ts": clock}), rows.assign(ts=rows["row"]), on="ts", direction="backward")
        observed = (asof["row"] == asof["ts"]).to_numpy()
        for field in ("open", "high", "low"):
            out[field][symbol] = np.where(observed, asof[field], asof["close"])
        out["close"][symbol] = asof["close"].to_numpy()
        out["volume"][symbol] = np.where(observed, asof["volume"], 0.0)
        out["observed"][symbol] = observed
    return out


@pytest.fixture
def crypto_and_half_hour_equity(db_path):
    """BTC every hour at :00; SPY from a vendor that bins hours from 09:30 ET: bars open 14:30..20:30 UTC."""
    btc = make_bars(24 * 14, start="2024-01-01", seed=1)
    spy = make_bars(24 * 13, start="2024-01-02 00:30", seed=2, price=470.0)
    spy = only_weekdays(spy[spy["ts"].dt.hour.between(14, 20)])
    cache.upsert_bars(btc, "BTC", "demo", "1h", db_path)
    cache.upsert_bars(spy, "SPY", "demo", "1h", db_path)
    return {"BTC": btc, "SPY": spy}


def test_a_half_hour_equity_bar_lands_on_the_row_it_closes_in(db_path, crypto_and_half_hour_equity):
    panel = read_panel(["BTC", "SPY"], "1h", db_path=db_path)
    expected = expected_rows_by_close(crypto_and_half_hour_equity, "1h")

    assert (panel.ts.minute == 0).all() and panel.interval == "1h" and panel.clock_step == pd.Timedelta("1h")
    pd.testing.assert_index_equal(panel.ts, expected["close"].index)
    for field in ("open", "high", "low", "close", "volume"):
        np.testing.assert_array_equal(panel.fields[field], expected[field].to_numpy(), err_msg=field)
    np.testing.assert_array_equal(panel.observed, expected["observed"].to_numpy())
    # The 14:30-15:30 bar is in the row [15:00, 16:00): beside BTC's 15:00 bar, and not in [14:00, 15:00).
    bars = crypto_and_half_hour_equity["SPY"].set_index("ts")
    row = panel.ts.get_loc(pd.Timestamp("2024-01-02 15:00", tz="UTC"))
    assert panel.close[row, 1] == bars.loc["2024-01-02 14:30", "close"] and panel.observed[row].all()
    assert not panel.observed[row - 1, 1] and np.isnan(panel.close[row - 1, 1])  # nothing before its first close
    # Open at consecutive rows through the session (15:00..21:00), not at every other one.
    session = panel.observed[(panel.ts >= "2024-01-02 15:00") & (panel.ts <= "2024-01-02 21:00"), 1]
    assert session.all() and len(session) == 7


def test_no_row_holds_a_bar_that_closes_after_the_row_ends(db_path, crypto_and_half_hour_equity):
    """Nothing from after t is in row t: every observed value closed by the end of its row."""
    panel = read_panel(["BTC", "SPY"], "1h", db_path=db_path)
    bars = crypto_and_half_hour_equity["SPY"].set_index("close")
    row_end = panel.ts + pd.Timedelta("1h")
    rows = np.flatnonzero(panel.observed[:, 1])
    closed_at = pd.DatetimeIndex(bars.loc[panel.close[rows, 1], "ts"]) + pd.Timedelta("1h")
    assert (closed_at <= row_end[rows]).all() and (closed_at > panel.ts[rows]).all()
    # The 14:30-15:30 bar is not visible at the row [14:00, 15:00): that row carries the day before's last close.
    by_open = crypto_and_half_hour_equity["SPY"].set_index("ts")["close"]
    row = panel.ts.get_loc(pd.Timestamp("2024-01-03 14:00", tz="UTC"))
    assert not panel.observed[row, 1] and panel.close[row, 1] == by_open["2024-01-02 20:30"]
    assert panel.close[row + 1, 1] == by_open["2024-01-03 14:30"]


def test_half_hour_rows_do_not_change_when_later_bars_arrive_and_start_reads_whole_rows(
        db_path, crypto_and_half_hour_equity):
    full = read_panel(["BTC", "SPY"], "1h", db_path=db_path)
    cut = pd.Timestamp("2024-01-10 16:00", tz="UTC")  # SPY's 15:30 bar opens before it but closes after
    early = read_panel(["BTC", "SPY"], "1h", end=cut, db_path=db_path)
    late = read_panel(["BTC", "SPY"], "1h", start=cut, db_path=db_path)

    keep = full.ts < cut
    pd.testing.assert_index_equal(early.ts, full.ts[keep])
    pd.testing.assert_index_equal(late.ts, full.ts[~keep])
    for field in ("open", "high", "low", "close", "volume"):
        np.testing.assert_array_equal(early.fields[field], full.fields[field][keep], err_msg=field)
        np.testing.assert_array_equal(late.fields[field], full.fields[field][~keep], err_msg=field)
    np.testing.assert_array_equal(early.observed, full.observed[keep])
    np.testing.assert_array_equal(late.observed, full.observed[~keep])
    assert late.observed[0, 1]  # the 15:30 bar, read although it opened before start


def test_several_bars_in_one_row_aggregate():
    """A finer feed: bars opening at 30 and 60 both close in the row [60, 120) of a 60-unit clock."""
    asset = np.zeros(3, dtype=np.int64)
    ts_us = np.array([0, 30, 60], dtype=np.int64)
    values = {"open": np.array([1.0, 2.0, 3.0]), "high": np.array([5.0, 9.0, 4.0]), "low": np.array([0.5, 1.5, 0.7]),
              "close": np.array([1.5, 2.5, 3.5]), "volume": np.array([10.0, 20.0, 30.0])}
    clock, fields, observed = align_as_of(asset, ts_us, values, 1, None, interval_us=60)
    np.testing.assert_array_equal(clock, [0, 60])
    assert [fields[name][1, 0] for name in ("open", "high", "low", "close", "volume")] == [2.0, 9.0, 0.7, 3.5, 50.0]
    assert observed[:, 0].all()


def test_a_daily_bar_stamped_at_new_york_midnight_is_known_a_day_later(db_path):
    """05:00 UTC daily stamps close at 05:00 the next day, after that day's 00:00 UTC row began: they land one row
    later than the date they name (storage.importing normalises them to 00:00 UTC at import for this reason)."""
    at_midnight = make_bars(5, start="2024-01-01", freq="1D", seed=1)
    at_five = make_bars(5, start="2024-01-01 05:00", freq="1D", seed=2)
    cache.upsert_bars(at_midnight, "BTC", "demo", "1d", db_path)
    cache.upsert_bars(at_five, "SPY", "demo", "1d", db_path)
    panel = read_panel(["BTC", "SPY"], "1d", db_path=db_path)

    assert list(panel.ts) == list(pd.date_range("2024-01-01", periods=6, freq="1D", tz="UTC"))
    np.testing.assert_array_equal(panel.close[:5, 0], at_midnight["close"])
    np.testing.assert_array_equal(panel.close[1:, 1], at_five["close"])
    assert not panel.observed[0, 1]


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
