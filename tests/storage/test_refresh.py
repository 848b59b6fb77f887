"""The refresh: incremental fetches, per-symbol failures, file imports, the lock, the CLI, demo seeding."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import duckdb
import pandas as pd
import pytest

from storage import cache
from storage.importing import REPORT_COLUMNS, ImportReport, latest_import_reports
from storage.locks import RefreshBusyError, refresh_lock
from storage.refresh import (
    RefreshRequest,
    build_parser,
    run_refresh,
    seed_demo_if_empty,
)
from storage.sources.base import BAR_COLUMNS, SourceError
from tests.storage.helpers_bars import make_bars

REPO_ROOT = Path(__file__).resolve().parents[2]
FILES = REPO_ROOT / "tests" / "fixtures" / "files"


class RecordingSource:
    """A stand-in market (the seam every real source sits behind): serves fixed bars and records each request."""

    name = "yfinance"

    def __init__(self, bars: dict[str, pd.DataFrame]):
        self.bars = bars
        self.requests: list[tuple[str, str, pd.Timestamp | None]] = []
        self.ends: list[pd.Timestamp | None] = []

    def fetch(self, symbol, interval, start=None, end=None):
        self.requests.append((symbol, interval, start))
        self.ends.append(end)
        if symbol not in self.bars:
            raise SourceError(symbol, "no such ticker", "check the spelling")
        bars = self.bars[symbol]
        return bars if start is None else bars[bars["ts"] >= start].reset_index(drop=True)


@pytest.fixture
def market(monkeypatch):
    source = RecordingSource({"SPY": make_bars(200, freq="1D", seed=1), "AAPL": make_bars(200, freq="1D", seed=2)})
    monkeypatch.setattr("storage.refresh._make_source", lambda request: source)
    return source


def request_for(db_path, *symbols, **options) -> RefreshRequest:
    return RefreshRequest(symbols=symbols, interval="1d", source="yfinance", db_path=db_path, **options)


def log_rows(db_path) -> pd.DataFrame:
    return cache.recent_refreshes(100, db_path).sort_values("id").reset_index(drop=True)


def test_first_refresh_goes_back_lookback_then_only_fetches_what_is_new(db_path, market):
    today = pd.Timestamp.now(tz="UTC").normalize()
    history = make_bars(200, start=str(today - pd.Timedelta(days=200)), freq="1D", seed=1)  # last bar: yesterday
    market.bars["SPY"] = history.iloc[:190]

    first = run_refresh(request_for(db_path, "SPY", lookback=pd.Timedelta(days=30)))
    ((_, _, first_start),) = market.requests
    assert pd.Timedelta(days=30) <= pd.Timestamp.now(tz="UTC") - first_start < pd.Timedelta(days=31)
    assert first.results[0].outcome == "ok"
    assert first.results[0].fetched == (history["ts"].iloc[:190] >= first_start).sum()

    market.bars["SPY"] = history
    market.requests.clear()
    (result,) = run_refresh(request_for(db_path, "SPY", overlap=3)).results

    ((_, _, second_start),) = market.requests
    assert second_start == history["ts"].iloc[189] - pd.Timedelta(days=3)
    assert (result.outcome, result.fetched, result.inserted, result.updated) == ("ok", 14, 10, 0)
    assert result.last_ts == history["ts"].iloc[-1]
    expected = history[history["ts"] >= first_start].reset_index(drop=True)
    pd.testing.assert_frame_equal(cache.read_bars("SPY", "1d", "yfinance", db_path=db_path), expected)


def test_a_first_fetch_that_finds_nothing_is_an_error(db_path, market):
    (result,) = run_refresh(request_for(db_path, "SPY", lookback=pd.Timedelta(days=30))).results
    assert result.outcome == "error" and "returned no 1d bars" in result.message  # the bars end in 2024


def test_one_failing_symbol_does_not_stop_the_others(db_path, market):
    report = run_refresh(request_for(db_path, "SPY", "NOPE", "AAPL"))

    assert [r.outcome for r in report.results] == ["ok", "error", "ok"]
    assert report.exit_code == 1 and [r.symbol for r in report.failed] == ["NOPE"]
    assert "NOPE: no such ticker (check the spelling)" in report.results[1].line()
    log = log_rows(db_path)
    assert log[["symbol", "outcome"]].values.tolist() == [["SPY", "ok"], ["NOPE", "error"], ["AAPL", "ok"]]
    assert log.loc[1, "error"] == report.results[1].message and log.loc[0, "row_count"] == 200
    assert log["who"].str.contains(r"@.+ pid \d+").all()
    assert len(cache.read_bars("AAPL", "1d", db_path=db_path)) == 200


def test_a_refresh_with_nothing_new_is_skipped(db_path, market):
    run_refresh(request_for(db_path, "SPY"))
    market.bars["SPY"] = market.bars["SPY"].iloc[:0]
    (result,) = run_refresh(request_for(db_path, "SPY")).results
    assert result.outcome == "skipped" and "no new bars" in result.message
    assert log_rows(db_path)["outcome"].tolist() == ["ok", "skipped"]


def test_bars_that_fail_validation_leave_the_cache_unchanged(db_path, market):
    run_refresh(request_for(db_path, "SPY"))
    before = cache.read_bars("SPY", "1d", db_path=db_path)
    broken = make_bars(210, freq="1D", seed=1)
    broken.loc[205, "close"] = -1.0
    market.bars["SPY"] = broken

    (result,) = run_refresh(request_for(db_path, "SPY")).results

    assert result.outcome == "error" and "non-positive price" in result.message and "\n" not in result.message
    pd.testing.assert_frame_equal(cache.read_bars("SPY", "1d", db_path=db_path), before)


def test_start_and_end_bound_a_fetch_and_start_overrides_the_incremental_start(db_path, market):
    run_refresh(request_for(db_path, "SPY"))
    start, end = pd.Timestamp("2024-02-01", tz="UTC"), pd.Timestamp("2024-03-01", tz="UTC")
    market.requests.clear()
    market.ends.clear()
    run_refresh(request_for(db_path, "SPY", start=start, end=end))
    assert market.requests == [("SPY", "1d", start)] and market.ends == [end]


def test_progress_is_reported_and_a_cancelled_refresh_skips_the_rest(db_path, market):
    seen: list[tuple[float, str]] = []
    asked = []

    def cancel_after_first() -> bool:
        asked.append(True)
        return len(asked) > 1

    report = run_refresh(
        request_for(db_path, "SPY", "AAPL"), progress=lambda f, m: seen.append((f, m)), cancel=cancel_after_first
    )

    assert [r.outcome for r in report.results] == ["ok", "skipped"]
    assert report.results[1].message == "cancelled before it started"
    fractions = [f for f, _ in seen]
    assert fractions == sorted(fractions) and fractions[0] == 0.0 and fractions[-1] == 1.0
    assert any("SPY" in message for _, message in seen)


def test_a_second_refresh_is_refused_while_the_lock_is_held(db_path, market):
    with refresh_lock(db_path, "someone else's refresh"):
        with pytest.raises(RefreshBusyError, match=r"already running: pid \d+ .*someone else's refresh"):
            run_refresh(request_for(db_path, "SPY"))
    assert run_refresh(request_for(db_path, "SPY")).ok  # and goes ahead once it is released


def test_requests_are_checked_before_anything_runs(db_path):
    with pytest.raises(ValueError, match="--path"):
        RefreshRequest(symbols=("SPY",), source="csv", db_path=db_path)
    with pytest.raises(ValueError, match="exactly one"):
        RefreshRequest(symbols=("SPY", "AAPL"), source="csv", path=Path("x.csv"), db_path=db_path)
    with pytest.raises(ValueError, match="overlap"):
        RefreshRequest(symbols=("SPY",), overlap=-1, db_path=db_path)
    with pytest.raises(ValueError, match="not allowed"):
        RefreshRequest(symbols=("S P Y",), db_path=db_path)
    with pytest.raises(ValueError, match="is not before end .*end is exclusive"):
        RefreshRequest(symbols=("SPY",), start="2024-02-01", end="2024-02-01", db_path=db_path)
    assert not db_path.exists()


def test_the_demo_seeds_an_empty_cache_once(db_path):
    assert seed_demo_if_empty(db_path) is True
    summary = cache.cache_summary(db_path)
    assert sorted(zip(summary["symbol"], summary["interval"])) == [
        (s, i) for s in ("AAPL", "BTC", "SPY") for i in ("1d", "1h")
    ]
    assert (summary["source"] == "demo").all() and (summary["rows"] > 1000).all()
    assert seed_demo_if_empty(db_path) is False
    assert len(log_rows(db_path)) == 6


# --- the command line ---------------------------------------------------------------------------------------


def run_cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "storage.refresh", *args], cwd=REPO_ROOT, capture_output=True, text=True, timeout=120
    )


def test_cli_imports_a_csv_file_and_rejects_a_broken_one_without_touching_the_cache(db_path, tmp_path):
    good, broken = tmp_path / "spy.csv", tmp_path / "spy_broken.csv"
    bars = make_bars(300, freq="1h", seed=4)
    bars.to_csv(good, index=False)
    bad_bars = make_bars(300, start="2024-02-01", freq="1h", seed=5)
    bad_bars.loc[17, "high"] = bad_bars.loc[17, "low"] * 0.5
    bad_bars.to_csv(broken, index=False)

    done = run_cli("--source", "csv", "--path", str(good), "--symbol", "SPY", "--interval", "1h", "--db", str(db_path))
    assert done.returncode == 0, done.stderr
    assert done.stdout.splitlines() == [
        "SPY 1h csv: ok: 300 bars fetched, 300 new, 0 revised; last bar 2024-01-13 11:00 UTC",
        f"  import report for {good}:",
        "    layout:           csv: plain ts/open/high/low/close/volume",
        "    time column:      ts (text)",
        "    rows read:        300",
        "    rows kept:        300",
        "    rows repaired:    0",
        "    partial last bar: none",
        "    interval:         1h (median 1 h within sessions, over 299 gaps)",
        "    market hours:     24/7: bars on 5 day(s) the NYSE is closed (weekends, holidays)",
        "    missing periods:  0 of 300 (24/7)",
        "    plausibility:     refused: bars before 1970 (before 2009 for crypto), prices outside [1e-08, 1e+09]; "
        "warned: one-bar |log return| > 3",
        "    large moves:      none",
    ]
    stored = cache.read_bars("SPY", "1h", "csv", db_path=db_path)
    pd.testing.assert_frame_equal(stored, bars[list(BAR_COLUMNS)], check_exact=False, rtol=1e-12)

    failed = run_cli(
        "--source", "csv", "--path", str(broken), "--symbol", "SPY", "--interval", "1h", "--db", str(db_path)
    )
    assert failed.returncode == 1
    (line,) = failed.stderr.strip().splitlines()
    assert line.startswith("SPY 1h csv: error: ") and "high below low" in line and "spy_broken.csv" in line
    pd.testing.assert_frame_equal(cache.read_bars("SPY", "1h", "csv", db_path=db_path), stored)
    assert log_rows(db_path)["outcome"].tolist() == ["ok", "error"]


def test_cli_refuses_a_file_whose_bar_spacing_is_not_the_interval(db_path, tmp_path):
    minutes = tmp_path / "minutes.csv"
    make_bars(120, freq="1min").to_csv(minutes, index=False)
    done = run_cli(
        "--source", "csv", "--path", str(minutes), "--symbol", "BTC", "--interval", "1h", "--db", str(db_path)
    )
    assert done.returncode == 1
    assert "minutes.csv: bars are 1 min apart (median), not 1h: import with --interval 1m" in done.stderr
    assert not cache.has_bars(db_path)


def test_a_stray_bar_closer_than_the_interval_is_refused_even_when_the_spacing_fits(db_path, tmp_path):
    bars = make_bars(48, freq="1h")
    stray = bars.iloc[[10]].assign(ts=lambda f: f["ts"] + pd.Timedelta(minutes=10))
    path = tmp_path / "hours.csv"
    pd.concat([bars, stray]).sort_values("ts").to_csv(path, index=False)
    (result,) = run_refresh(file_request(db_path, path, "BTC", "1h")).results
    assert result.outcome == "error" and "600 s apart, less than one 1h bar" in result.message


def test_cli_help_says_that_end_is_exclusive_and_what_interval_means_for_a_file():
    text = " ".join(build_parser().format_help().split())
    assert "--end is EXCLUSIVE" in text
    assert "the bar size the file holds: it is checked against the median spacing of the bars" in text


def test_cli_usage_errors_exit_with_code_2(db_path):
    no_symbol = run_cli("--source", "csv", "--path", "x.csv", "--db", str(db_path))
    bad_symbol = run_cli("--symbols", "BTC;DROP", "--db", str(db_path))
    bad_lookback = run_cli("--lookback", "soon", "--db", str(db_path))
    assert [no_symbol.returncode, bad_symbol.returncode, bad_lookback.returncode] == [2, 2, 2]
    assert "needs --symbol" in no_symbol.stderr and "not allowed" in bad_symbol.stderr
    assert "not a duration" in bad_lookback.stderr
    assert not db_path.exists()


def test_a_source_that_cannot_be_built_fails_every_symbol_with_one_line(db_path):
    request = RefreshRequest(("BTC", "ETH"), "1d", "ccxt", db_path=db_path, source_options={"no_such_option": 1})
    report = run_refresh(request)
    assert [r.outcome for r in report.results] == ["error", "error"]
    assert all("does not accept options" in r.message for r in report.results)
    assert not cache.has_bars(db_path)


# --- file imports and their reports -------------------------------------------------------------------------


def file_request(db_path, path, symbol, interval, **options) -> RefreshRequest:
    return RefreshRequest(symbols=(symbol,), interval=interval, source="csv", path=path, db_path=db_path, **options)


def import_file(db_path, path, symbol, interval, **options):
    (result,) = run_refresh(file_request(db_path, path, symbol, interval, **options)).results
    return result


# fixture, symbol, interval, layout, time column, calendar, (rows read, rows kept, repaired), missing
VENDOR_FILES = [
    ("yfinance_history_SPY_1d_auto_adjust.csv", "SPY", "1d", "csv: Yahoo Finance history", "Date (text)",
     "XNYS", (23, 23, 11), 0),
    ("yfinance_history_SPY_1h.csv", "SPY", "1h", "csv: Yahoo Finance history", "Datetime (text)",
     "XNYS", (28, 28, 0), 1),
    ("yahoo_spy_daily.csv", "SPY", "1d", "csv: Yahoo Finance (Adj Close ignored)", "Date (text)", "XNYS", (5, 5, 0), 0),
    ("yfinance_download_spy.csv", "SPY", "1d", "csv: yfinance download (Price/Ticker/Date header rows)",
     "Date (text)", "XNYS", (3, 3, 0), 0),
    ("binance_BTCUSDT-1h-2024-01-01.csv", "BTCUSDT", "1h", "csv: Binance klines without header (12 columns)",
     "column 1 (unix ms)", "24/7", (4, 4, 0), 0),
    ("binance_BTCUSDT-1h-2025-01-01_microseconds.csv", "BTCUSDT", "1h",
     "csv: Binance klines without header (12 columns)", "column 1 (unix us)", "24/7", (2, 2, 0), 0),
    ("binance_futures_BTCUSDT-1d-2025-01.csv", "BTC", "1d", "csv: Binance klines", "open_time (unix ms)",
     "24/7", (7, 7, 0), 0),
    ("bitcoin_history_1min.csv", "BTC", "1m", "csv: Kaggle 1-minute Bitcoin", "Timestamp (unix s)", "24/7",
     (4, 4, 0), 0),
    ("databento_XNAS.ITCH_ohlcv-1h_AAPL.csv", "AAPL", "1h",
     "csv: Databento ohlcv-1h (fixed-point prices in 1e-9 units, scaled)", "ts_event (unix ns)", "XNYS",
     (14, 14, 0), 0),
    ("databento_XNAS.ITCH_ohlcv-1d_SPY_pretty.csv", "SPY", "1d", "csv: Databento ohlcv-1d", "ts_event (text)",
     "XNYS", (5, 5, 0), 0),
    ("polygon_aggs_AAPL_1d.csv", "AAPL", "1d", "csv: Polygon/Massive aggregates", "t (unix ms)", "XNYS",
     (7, 7, 0), 0),
    ("massive_flatfile_SPY_minute_aggs.csv", "SPY", "1m", "csv: Polygon/Massive flat file", "window_start (unix ns)",
     "XNYS", (5, 5, 0), 0),
    ("alpaca_bars_AAPL_1h.csv", "AAPL", "1h", "csv: Alpaca bars", "timestamp (text)", "XNYS", (16, 16, 0), 0),
    ("plain_bars.csv", "BTC", "1h", "csv: plain ts/open/high/low/close/volume", "ts (text)", "24/7", (3, 3, 0), 0),
]


@pytest.mark.parametrize(
    "name, symbol, interval, layout, time_column, calendar, rows, missing", VENDOR_FILES, ids=[v[0] for v in VENDOR_FILES]
)
def test_every_vendor_layout_imports_with_a_report(db_path, name, symbol, interval, layout, time_column, calendar,
                                                   rows, missing):
    result = import_file(db_path, FILES / name, symbol, interval)

    assert result.outcome == "ok", result.message
    report = result.import_report
    assert (report.layout, report.time_column, report.calendar) == (layout, time_column, calendar)
    assert (report.rows_read, report.rows_kept, report.rows_repaired) == rows
    assert report.missing == missing and report.partial_last_bar is None
    assert len(cache.read_bars(symbol, interval, "csv", db_path=db_path)) == report.rows_kept


def test_the_report_is_stored_with_the_log_row_and_read_back_per_symbol(db_path):
    hourly = import_file(db_path, FILES / "yfinance_history_SPY_1h.csv", "SPY", "1h")
    daily = import_file(db_path, FILES / "yfinance_history_SPY_1d_auto_adjust.csv", "SPY", "1d")

    assert hourly.message.endswith("; 1 missing session (2024-01-17)")
    assert daily.message.endswith("; 11 rows repaired (float rounding)")
    stored = ImportReport.from_json(log_rows(db_path)["report"].iloc[0])
    assert stored == hourly.import_report

    reports = latest_import_reports(db_path)
    assert tuple(reports.columns) == REPORT_COLUMNS
    assert reports[["symbol", "interval", "missing", "first_missing", "rows_repaired"]].values.tolist() == [
        ["SPY", "1d", 0, "", 11],
        ["SPY", "1h", 1, "2024-01-17", 0],
    ]


def test_a_cache_from_before_reports_reads_as_no_reports_and_gains_the_column_on_the_next_write(db_path):
    db_path.parent.mkdir(parents=True)
    with duckdb.connect(str(db_path)) as con:  # the refresh_log of the first release, without the report column
        con.execute("CREATE TABLE bars (symbol VARCHAR, source VARCHAR, interval VARCHAR, ts TIMESTAMPTZ, open DOUBLE,"
                    " high DOUBLE, low DOUBLE, close DOUBLE, volume DOUBLE, ingested_at TIMESTAMPTZ,"
                    " PRIMARY KEY (symbol, source, interval, ts))")
        con.execute("CREATE SEQUENCE refresh_log_id START 1")
        con.execute("CREATE TABLE refresh_log (id BIGINT PRIMARY KEY DEFAULT nextval('refresh_log_id'),"
                    " started_at TIMESTAMPTZ NOT NULL, finished_at TIMESTAMPTZ NOT NULL, who VARCHAR NOT NULL,"
                    " command VARCHAR NOT NULL, symbol VARCHAR, source VARCHAR, interval VARCHAR, path VARCHAR,"
                    " row_count BIGINT NOT NULL, outcome VARCHAR NOT NULL, error VARCHAR)")
    assert latest_import_reports(db_path).empty

    assert import_file(db_path, FILES / "polygon_aggs_AAPL_1d.csv", "AAPL", "1d").outcome == "ok"
    assert latest_import_reports(db_path)["symbol"].tolist() == ["AAPL"]


def test_a_partial_last_bar_is_dropped_when_the_file_was_written_before_its_period_ended(db_path, tmp_path):
    path = tmp_path / "spy_1h.csv"
    path.write_bytes((FILES / "yfinance_history_SPY_1h.csv").read_bytes())
    written = pd.Timestamp("2024-01-18 20:45", tz="UTC")  # 15:45 in New York: the 15:30 bar runs to 16:00
    os.utime(path, ns=(written.value, written.value))

    result = import_file(db_path, path, "SPY", "1h")

    assert result.import_report.partial_last_bar == (
        "2024-01-18 20:30 UTC dropped: its period ends 2024-01-18 21:00 UTC, after the file was last written "
        "(2024-01-18 20:45 UTC)"
    )
    assert (result.import_report.rows_kept, result.last_ts) == (27, pd.Timestamp("2024-01-18 19:30", tz="UTC"))
    assert "partial last bar dropped" in result.message


def test_todays_daily_crypto_bar_is_not_stored(db_path, tmp_path):
    today = pd.Timestamp.now(tz="UTC").normalize()
    bars = make_bars(10, start=str(today - pd.Timedelta(days=9)), freq="1D")
    path = tmp_path / "btc.csv"
    bars.to_csv(path, index=False)
    result = import_file(db_path, path, "BTC", "1d")
    assert result.import_report.partial_last_bar.startswith(f"{today:%Y-%m-%d} 00:00 UTC dropped")
    assert cache.last_bar_ts("BTC", "csv", "1d", db_path) == today - pd.Timedelta(days=1)


def test_a_file_whose_last_bar_opens_in_the_future_is_refused_not_trimmed(db_path, tmp_path):
    tomorrow = pd.Timestamp.now(tz="UTC").normalize() + pd.Timedelta(days=1)
    path = tmp_path / "btc.csv"
    make_bars(10, start=str(tomorrow - pd.Timedelta(days=9)), freq="1D").to_csv(path, index=False)
    result = import_file(db_path, path, "BTC", "1d")
    assert result.outcome == "error" and "after now" in result.message and "time zone" in result.message
    assert not cache.has_bars(db_path)


def test_a_daily_file_imported_as_hourly_is_refused_and_the_cache_is_untouched(db_path):
    import_file(db_path, FILES / "yfinance_history_SPY_1h.csv", "SPY", "1h")
    before = cache.read_bars("SPY", "1h", "csv", db_path=db_path)

    result = import_file(db_path, FILES / "yfinance_history_SPY_1d_auto_adjust.csv", "SPY", "1h")

    assert result.outcome == "error"
    assert result.message.endswith("bars are 1 day apart (median), not 1h: import with --interval 1d")
    pd.testing.assert_frame_equal(cache.read_bars("SPY", "1h", "csv", db_path=db_path), before)
    assert log_rows(db_path)["outcome"].tolist() == ["ok", "error"]


def test_a_databento_file_states_its_own_interval(db_path):
    result = import_file(db_path, FILES / "databento_XNAS.ITCH_ohlcv-1h_AAPL.csv", "AAPL", "1d")
    assert result.outcome == "error" and "the file says its bars are 1h" in result.message
    assert "import with --interval 1h" in result.message


def test_start_and_end_bound_an_import_and_end_is_exclusive(db_path):
    result = import_file(db_path, FILES / "yfinance_history_SPY_1h.csv", "SPY", "1h",
                         start="2024-01-12", end="2024-01-18 14:30")  # the first bar of the 18th is left out
    report = result.import_report
    assert (report.rows_kept, report.outside_span) == (14, 14)
    assert result.last_ts == pd.Timestamp("2024-01-16 20:30", tz="UTC")
    assert "outside --start/--end: 14 rows left out" in report.lines()
