"""The bar cache: schema, upserts, reads, the summary, the log and resampling (the aligned panel: test_panel.py).

Everything runs against a real DuckDB file in tmp_path.
"""
from __future__ import annotations

import duckdb
import pandas as pd
import pytest

from storage import cache
from storage.cache import RefreshLogEntry
from storage.config import InvalidNameError
from storage.panel import read_panel
from storage.resample import resample_bars
from storage.sources.base import BAR_COLUMNS
from storage.validation import BarValidationError
from tests.storage.helpers_bars import make_bars, only_weekdays

UTC_NOW = pd.Timestamp("2024-06-01", tz="UTC")


def stored_rows(db_path, symbol=None) -> pd.DataFrame:
    with cache.connect(db_path, read_only=True) as con:
        frame = cache.query_frame(con, "SELECT * FROM bars ORDER BY symbol, source, interval, ts")
    return frame if symbol is None else frame[frame["symbol"] == symbol].reset_index(drop=True)


def assert_bars_equal(actual: pd.DataFrame, expected: pd.DataFrame) -> None:
    pd.testing.assert_frame_equal(
        actual[list(BAR_COLUMNS)].reset_index(drop=True), expected[list(BAR_COLUMNS)].reset_index(drop=True)
    )


# --- schema and connections ---------------------------------------------------------------------------------


def test_schema_has_the_documented_columns_and_primary_key(db_path):
    with cache.connect(db_path) as con:
        describe = "SELECT column_name, data_type FROM duckdb_columns() WHERE table_name = $table"
        columns = dict(con.execute(describe, {"table": "bars"}).fetchall())
        log_columns = {name for name, _ in con.execute(describe, {"table": "refresh_log"}).fetchall()}
        timezone = cache.query_value(con, "SELECT current_setting('TimeZone')")
        con.execute("INSERT INTO bars VALUES ('BTC', 'demo', '1d', '2024-01-01', 1, 1, 1, 1, 1, now())")
        with pytest.raises(duckdb.ConstraintException):
            con.execute("INSERT INTO bars VALUES ('BTC', 'demo', '1d', '2024-01-01', 2, 2, 2, 2, 2, now())")
    assert columns == {
        "symbol": "VARCHAR",
        "source": "VARCHAR",
        "interval": "VARCHAR",
        "ts": "TIMESTAMP WITH TIME ZONE",
        "open": "DOUBLE",
        "high": "DOUBLE",
        "low": "DOUBLE",
        "close": "DOUBLE",
        "volume": "DOUBLE",
        "ingested_at": "TIMESTAMP WITH TIME ZONE",
    }
    assert {"id", "started_at", "finished_at", "who", "command", "symbol", "source", "interval", "path",
            "row_count", "outcome", "error"} <= log_columns
    assert timezone == "UTC"


def test_reading_a_missing_cache_gives_empty_results_and_creates_no_file(db_path):
    bars = cache.read_bars("BTC", "1d", db_path=db_path)
    panel = read_panel(["BTC", "SPY"], "1d", db_path=db_path)
    summary = cache.cache_summary(db_path=db_path)

    assert list(bars.columns) == list(BAR_COLUMNS) and len(bars) == 0
    assert str(bars["ts"].dtype) == "datetime64[us, UTC]"
    assert len(panel) == 0 and panel.fields["close"].shape == (0, 2) and panel.sources == (None, None)
    assert len(summary) == 0 and "stale" in summary.columns
    assert cache.last_bar_ts("BTC", "demo", "1d", db_path) is None
    assert not cache.has_bars(db_path)
    assert not db_path.exists() and not db_path.parent.exists()


def test_a_duckdb_file_that_is_not_a_cache_is_named_as_such(db_path):
    db_path.parent.mkdir(parents=True)
    duckdb.connect(str(db_path)).close()  # some other DuckDB file
    with pytest.raises(cache.NotACacheError, match="not a bar cache"):
        cache.read_bars("BTC", "1d", db_path=db_path)


def test_the_first_write_creates_the_file_complete_and_leaves_no_scratch_files(db_path):
    cache.log_refresh(RefreshLogEntry(UTC_NOW, UTC_NOW, "tester", "test", "skipped"), db_path)
    assert sorted(p.name for p in db_path.parent.iterdir()) == ["bars.duckdb"]
    assert len(cache.read_bars("BTC", "1d", db_path=db_path)) == 0
    assert len(cache.recent_refreshes(5, db_path)) == 1


# --- upserts ------------------------------------------------------------------------------------------------


def test_upsert_stores_new_bars_and_reads_them_back_exactly(db_path):
    bars = make_bars(500)
    result = cache.upsert_bars(bars, "BTC", "demo", "1h", db_path)

    assert (result.inserted, result.updated, result.unchanged) == (500, 0, 0)
    back = cache.read_bars("BTC", "1h", "demo", db_path=db_path)
    assert str(back["ts"].dtype) == "datetime64[us, UTC]"
    assert_bars_equal(back, bars)


def test_upsert_again_with_the_same_values_changes_nothing(db_path):
    bars = make_bars(100)
    cache.upsert_bars(bars, "BTC", "demo", "1h", db_path)
    before = stored_rows(db_path)

    result = cache.upsert_bars(bars, "BTC", "demo", "1h", db_path)

    assert (result.inserted, result.updated, result.unchanged) == (0, 0, 100)
    pd.testing.assert_frame_equal(stored_rows(db_path), before)  # ingested_at included: rows were not rewritten


def test_upsert_of_an_overlapping_batch_revises_changed_bars_and_appends_new_ones(db_path):
    full = make_bars(120)
    first = full.iloc[:100]
    cache.upsert_bars(first, "BTC", "demo", "1h", db_path)
    cache.upsert_bars(make_bars(50, seed=9), "SPY", "demo", "1h", db_path)
    other_series = stored_rows(db_path, "SPY")

    # The last 10 stored bars come again, the last 3 of them revised, plus 20 new bars.
    second = full.iloc[90:].reset_index(drop=True)
    second.loc[7:9, ["close", "high"]] = second.loc[7:9, ["close", "high"]] * 1.001
    result = cache.upsert_bars(second, "BTC", "demo", "1h", db_path)

    assert (result.inserted, result.updated, result.unchanged) == (20, 3, 7)
    expected = pd.concat([first.iloc[:90], second]).reset_index(drop=True)
    assert_bars_equal(cache.read_bars("BTC", "1h", "demo", db_path=db_path), expected)
    pd.testing.assert_frame_equal(stored_rows(db_path, "SPY"), other_series)


def test_a_rejected_frame_changes_nothing(db_path):
    cache.upsert_bars(make_bars(10), "BTC", "demo", "1h", db_path)
    before = stored_rows(db_path)
    bad = make_bars(20, start="2024-02-01")
    bad.loc[5, "high"] = bad.loc[5, "low"] / 2

    with pytest.raises(BarValidationError, match="high below low"):
        cache.upsert_bars(bad, "BTC", "demo", "1h", db_path)
    pd.testing.assert_frame_equal(stored_rows(db_path), before)


def test_names_outside_the_allowlist_never_reach_sql(db_path):
    with pytest.raises(InvalidNameError):
        cache.upsert_bars(make_bars(3), "BTC'; DROP TABLE bars; --", "demo", "1h", db_path)
    with pytest.raises(InvalidNameError):
        cache.upsert_bars(make_bars(3), "BTC", "nasdaq", "1h", db_path)
    with pytest.raises(InvalidNameError):
        cache.read_bars("BTC", "2h", db_path=db_path)


def test_write_bars_refuses_a_frame_that_was_not_validated(db_path):
    raw = make_bars(3).assign(ts=lambda f: f["ts"].dt.tz_localize(None))
    with cache.connect(db_path) as con, pytest.raises(ValueError, match="UTC"):
        cache.write_bars(con, raw, "BTC", "demo", "1h")


def test_a_batch_and_its_log_row_commit_together_or_not_at_all(db_path):
    def failing_log(result):
        raise RuntimeError("log row could not be built")

    with pytest.raises(RuntimeError):
        cache.commit_batch(make_bars(50), "BTC", "demo", "1h", db_path, log=failing_log)
    assert len(stored_rows(db_path)) == 0


# --- reads --------------------------------------------------------------------------------------------------


def test_read_bars_selects_start_inclusive_end_exclusive(db_path):
    bars = make_bars(48)
    cache.upsert_bars(bars, "BTC", "demo", "1h", db_path)
    end = pd.Timestamp("2024-01-01 09:00", tz="UTC")
    window = cache.read_bars("BTC", "1h", "demo", start="2024-01-01 05:00", end=end, db_path=db_path)
    assert_bars_equal(window, bars.iloc[5:9])


def test_without_a_source_a_real_source_is_preferred_over_the_demo(db_path):
    demo, real = make_bars(10, seed=1), make_bars(10, seed=2)
    cache.upsert_bars(demo, "SPY", "demo", "1d", db_path)
    assert_bars_equal(cache.read_bars("SPY", "1d", db_path=db_path), demo)

    cache.upsert_bars(real, "SPY", "yfinance", "1d", db_path)
    assert_bars_equal(cache.read_bars("SPY", "1d", db_path=db_path), real)
    assert_bars_equal(cache.read_bars("SPY", "1d", "demo", db_path=db_path), demo)
    assert read_panel(["SPY"], "1d", db_path=db_path).sources == ("yfinance",)


def test_last_bar_ts_is_the_newest_open_of_that_series(db_path):
    cache.upsert_bars(make_bars(30), "BTC", "demo", "1h", db_path)
    cache.upsert_bars(make_bars(40), "BTC", "demo", "1d", db_path)
    assert cache.last_bar_ts("BTC", "demo", "1h", db_path) == pd.Timestamp("2024-01-02 05:00", tz="UTC")
    assert cache.last_bar_ts("BTC", "ccxt", "1h", db_path) is None


# --- summary and log ----------------------------------------------------------------------------------------


def log_entry(symbol, outcome, source="demo", interval="1h", error=None, minutes=0) -> RefreshLogEntry:
    at = UTC_NOW + pd.Timedelta(minutes=minutes)
    return RefreshLogEntry(at, at, "tester@host pid 1", "test", outcome, 5, symbol, source, interval, None, error)


def test_cache_summary_counts_bars_and_shows_the_last_refresh(db_path):
    btc = make_bars(100, start="2024-05-25", seed=1)
    cache.upsert_bars(btc, "BTC", "demo", "1h", db_path)
    cache.log_refresh(log_entry("BTC", "error", error="timeout"), db_path)
    cache.log_refresh(log_entry("BTC", "ok", minutes=5), db_path)
    cache.log_refresh(log_entry("ETH", "error", source="ccxt", error="BadSymbol"), db_path)

    now = btc["ts"].iloc[-1] + pd.Timedelta(hours=2)
    summary = cache.cache_summary(db_path, now=now).set_index(["symbol", "source"])

    assert summary.loc[("BTC", "demo"), "rows"] == 100
    assert summary.loc[("BTC", "demo"), "first_ts"] == btc["ts"].iloc[0]
    assert summary.loc[("BTC", "demo"), "last_ts"] == btc["ts"].iloc[-1]
    assert summary.loc[("BTC", "demo"), "last_outcome"] == "ok"
    assert summary.loc[("BTC", "demo"), "last_refresh_at"] == UTC_NOW + pd.Timedelta(minutes=5)
    assert not summary.loc[("BTC", "demo"), "stale"]
    # A symbol whose only attempt failed is listed too, with nothing stored.
    assert summary.loc[("ETH", "ccxt"), "rows"] == 0
    assert summary.loc[("ETH", "ccxt"), "last_error"] == "BadSymbol"
    assert summary.loc[("ETH", "ccxt"), "stale"]


def test_staleness_allows_weekends_for_markets_that_close(db_path):
    btc = make_bars(30, start="2024-05-01", freq="1D", seed=1)
    spy = only_weekdays(make_bars(31, start="2024-05-01", freq="1D", seed=2))  # last bar Friday 2024-05-31
    cache.upsert_bars(btc, "BTC", "demo", "1d", db_path)
    cache.upsert_bars(spy, "SPY", "demo", "1d", db_path)

    def stale(now: str) -> dict[str, bool]:
        summary = cache.cache_summary(db_path, now=pd.Timestamp(now, tz="UTC"))
        return dict(zip(summary["symbol"], summary["stale"]))

    assert cache.cache_summary(db_path)["trades_weekends"].tolist() == [True, False]
    # BTC's last bar opens 2024-05-30: three days later it is stale, SPY over the weekend is not.
    assert stale("2024-06-01 12:00") == {"BTC": False, "SPY": False}
    assert stale("2024-06-02 12:00") == {"BTC": True, "SPY": False}
    # A long weekend (Friday's bar, holiday Monday) still is not stale on Tuesday evening; Wednesday evening is.
    assert stale("2024-06-04 20:00")["SPY"] is False
    assert stale("2024-06-05 20:00")["SPY"] is True


def test_recent_refreshes_lists_the_newest_first(db_path):
    for minute, symbol in enumerate(["BTC", "SPY", "AAPL"]):
        cache.log_refresh(log_entry(symbol, "ok", minutes=minute), db_path)
    recent = cache.recent_refreshes(2, db_path)
    assert recent["symbol"].tolist() == ["AAPL", "SPY"]
    with pytest.raises(ValueError, match="outcome"):
        cache.log_refresh(log_entry("BTC", "maybe"), db_path)
    with pytest.raises(ValueError, match="limit"):
        cache.recent_refreshes(0, db_path)


# --- resampling ---------------------------------------------------------------------------------------------


def pandas_ohlcv(bars: pd.DataFrame, rule: str) -> pd.DataFrame:
    grouped = bars.set_index("ts").resample(rule, origin="epoch")
    out = grouped.agg({"open": "first", "high": "max", "low": "min", "close": "last", "volume": "sum"})
    return out.dropna(subset=["open"]).reset_index()


@pytest.fixture
def minute_bars(db_path):
    bars = make_bars(3 * 24 * 60, start="2024-03-01", freq="1min", seed=3)
    # A gap from 01:40 to 02:59 on the first day: hour 01 keeps part of its bars, hour 02 has none.
    bars = bars.drop(index=range(100, 180)).reset_index(drop=True)
    cache.upsert_bars(bars, "BTC", "demo", "1m", db_path)
    return bars


def test_resample_matches_a_pandas_computation(db_path, minute_bars):
    hourly = resample_bars("BTC", "demo", "1m", "1h", db_path, now=UTC_NOW)
    expected = pandas_ohlcv(minute_bars, "1h")
    assert len(hourly) == 3 * 24 - 1  # the hour the gap swallowed whole has no bar
    pd.testing.assert_frame_equal(hourly, expected, check_exact=False, rtol=1e-12)


def test_resampling_in_steps_agrees_with_resampling_at_once(db_path, minute_bars):
    resample_bars("BTC", "demo", "1m", "1h", db_path, now=UTC_NOW, store=True)
    in_steps = resample_bars("BTC", "demo", "1h", "1d", db_path, now=UTC_NOW)
    at_once = resample_bars("BTC", "demo", "1m", "1d", db_path, now=UTC_NOW)
    assert len(at_once) == 3
    pd.testing.assert_frame_equal(in_steps, at_once, check_exact=False, rtol=1e-12)
    assert cache.recent_refreshes(1, db_path).loc[0, "command"] == "resample BTC demo 1m -> 1h"


def test_resample_leaves_out_the_bucket_that_is_not_over(db_path, minute_bars):
    now = pd.Timestamp("2024-03-03 10:30", tz="UTC")
    hourly = resample_bars("BTC", "demo", "1m", "1h", db_path, now=now)
    assert hourly["ts"].iloc[-1] == pd.Timestamp("2024-03-03 09:00", tz="UTC")


def test_resample_only_to_a_coarser_multiple(db_path):
    with pytest.raises(ValueError, match="whole multiple"):
        resample_bars("BTC", "demo", "1h", "1m", db_path)
    with pytest.raises(ValueError, match="whole multiple"):
        resample_bars("BTC", "demo", "1h", "1h", db_path)
