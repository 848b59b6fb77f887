"""The refresh: incremental fetches, per-symbol failures, file imports, the lock, the CLI, demo seeding."""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest

from storage import cache
from storage.locks import RefreshBusyError, refresh_lock
from storage.refresh import RefreshRequest, run_refresh, seed_demo_if_empty
from storage.sources.base import BAR_COLUMNS, SourceError
from tests.storage.helpers_bars import make_bars

REPO_ROOT = Path(__file__).resolve().parents[2]


class RecordingSource:
    """A stand-in market (the seam every real source sits behind): serves fixed bars and records each request."""

    name = "yfinance"

    def __init__(self, bars: dict[str, pd.DataFrame]):
        self.bars = bars
        self.requests: list[tuple[str, str, pd.Timestamp | None]] = []

    def fetch(self, symbol, interval, start=None, end=None):
        self.requests.append((symbol, interval, start))
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
    assert done.stdout.strip() == (
        "SPY 1h csv: ok: 300 bars fetched, 300 new, 0 revised; last bar 2024-01-13 11:00 UTC"
    )
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


def test_cli_rejects_a_file_whose_bars_are_closer_than_the_interval(db_path, tmp_path):
    minutes = tmp_path / "minutes.csv"
    make_bars(120, freq="1min").to_csv(minutes, index=False)
    done = run_cli(
        "--source", "csv", "--path", str(minutes), "--symbol", "BTC", "--interval", "1h", "--db", str(db_path)
    )
    assert done.returncode == 1 and "60 s apart, less than one 1h bar" in done.stderr
    assert not cache.has_bars(db_path)


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
