"""YFinanceSource on recorded Ticker.history frames (tests/fixtures/yfinance), patched in at `_download`."""
from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from storage.sources.base import BAR_COLUMNS, SourceError
from storage.sources.yfinance_source import YFinanceSource
from tests.fixtures.record_yfinance import load_recording


class Recorder:
    """Stands in for the network: returns one recording and remembers what it was asked."""

    def __init__(self, frame: pd.DataFrame | None = None, error: Exception | None = None):
        self.frame, self.error, self.calls = frame, error, []

    def __call__(self, ticker, **kwargs):
        self.calls.append((ticker, kwargs))
        if self.error is not None:
            raise self.error
        return self.frame.copy()


def replay(monkeypatch, name: str) -> tuple[YFinanceSource, Recorder, pd.DataFrame, dict]:
    raw, meta = load_recording(name)
    source = YFinanceSource(now=meta["recorded_at"])
    recorder = Recorder(raw)
    monkeypatch.setattr(source, "_download", recorder)
    return source, recorder, raw, meta


def test_daily_equity_bars_are_dated_at_utc_midnight_and_the_open_bar_is_dropped(monkeypatch):
    source, recorder, raw, meta = replay(monkeypatch, "spy_1d")
    bars = source.fetch(meta["symbol"], "1d", start=meta["start"], end=meta["end"])
    assert tuple(bars.columns) == BAR_COLUMNS and str(bars["ts"].dtype) == "datetime64[us, UTC]"
    trading_dates = pd.DatetimeIndex(raw.index.date)
    recorded_at = pd.Timestamp(meta["recorded_at"])
    closed = trading_dates + pd.Timedelta(days=1) <= recorded_at.tz_localize(None)
    assert not closed.all(), "the recording should hold today's still-open bar"
    assert list(bars["ts"]) == list(trading_dates[closed].tz_localize("UTC"))
    # Unadjusted: Close, never Adj Close.
    np.testing.assert_allclose(bars["close"], raw["Close"].to_numpy()[closed])
    assert not np.allclose(bars["close"], raw["Adj Close"].to_numpy()[closed])
    assert recorder.calls[0][0] == "SPY"
    assert recorder.calls[0][1]["auto_adjust"] is False and recorder.calls[0][1]["interval"] == "1d"


def test_btc_maps_to_btc_usd_and_keeps_utc_days(monkeypatch):
    source, recorder, raw, meta = replay(monkeypatch, "btc_1d")
    bars = source.fetch("BTC", "1d", start=meta["start"], end=meta["end"])
    assert recorder.calls[0][0] == "BTC-USD"
    assert bars["ts"].iloc[0] == raw.index[0].tz_convert("UTC")
    assert bars["ts"].iloc[-1] + pd.Timedelta(days=1) <= pd.Timestamp(meta["recorded_at"])
    assert len(bars) == len(raw) - 1  # only the still-open day is gone


def test_intraday_bars_are_converted_to_utc_and_the_running_hour_is_dropped(monkeypatch):
    source, recorder, raw, meta = replay(monkeypatch, "aapl_1h")
    bars = source.fetch("AAPL", "1h", start=meta["start"], end=meta["end"])
    opens = raw.index.tz_convert("UTC")
    closed = opens + pd.Timedelta(hours=1) <= pd.Timestamp(meta["recorded_at"])
    assert list(bars["ts"]) == list(opens[closed])
    np.testing.assert_allclose(bars["open"], raw["Open"].to_numpy()[closed])
    assert len(bars) < len(raw)


def test_range_filter_trims_what_yahoo_returns_around_it(monkeypatch):
    source, _, raw, meta = replay(monkeypatch, "spy_1d")
    dates = pd.DatetimeIndex(raw.index.date).tz_localize("UTC")
    bars = source.fetch("SPY", "1d", start=dates[1], end=dates[3])
    assert list(bars["ts"]) == list(dates[1:3])


def test_empty_answer_is_a_clear_error(monkeypatch):
    source = YFinanceSource(now="2024-01-12 18:30")
    empty = pd.DataFrame(columns=["Open", "High", "Low", "Close", "Adj Close", "Volume"],
                         index=pd.DatetimeIndex([], name="Date"))
    monkeypatch.setattr(source, "_download", Recorder(empty))
    with pytest.raises(SourceError, match="no data for ticker SPYY.*finance.yahoo.com"):
        source.fetch("SPYY", "1d", start="2024-01-02", end="2024-01-10")


def test_yfinance_exceptions_become_source_errors(monkeypatch):
    from yfinance.exceptions import YFPricesMissingError, YFRateLimitError, YFTzMissingError

    source = YFinanceSource(now="2024-01-12 18:30")
    cases = [
        (YFTzMissingError("XXXX"), "no data for ticker XXXX"),
        (YFPricesMissingError("XXXX", "(1d 2024-01-02 -> 2024-01-10)"), "no data for ticker XXXX"),
        (YFRateLimitError(), "rate-limiting"),
        (ConnectionError("connection reset"), "could not reach Yahoo Finance"),
    ]
    for error, message in cases:
        monkeypatch.setattr(source, "_download", Recorder(error=error))
        with pytest.raises(SourceError, match=message) as caught:
            source.fetch("XXXX", "1d", start="2024-01-02", end="2024-01-10")
        assert caught.value.symbol == "XXXX" and caught.value.hint


def test_intraday_limits_are_checked_before_any_call(monkeypatch):
    source = YFinanceSource(now="2024-06-01 12:00")
    recorder = Recorder(error=AssertionError("must not be called"))
    monkeypatch.setattr(source, "_download", recorder)
    with pytest.raises(SourceError, match="last 730 days"):
        source.fetch("AAPL", "1h", start="2021-01-01")
    with pytest.raises(SourceError, match="last 7 days"):
        source.fetch("AAPL", "1m", start="2024-05-20")
    with pytest.raises(SourceError, match="last 60 days"):
        source.fetch("AAPL", "15m", start="2024-03-01")
    with pytest.raises(SourceError, match="no 4h bars"):
        source.fetch("AAPL", "4h")
    assert recorder.calls == []


def test_intraday_without_start_asks_for_the_allowed_window(monkeypatch):
    source, recorder, _, meta = replay(monkeypatch, "aapl_1h")
    source.fetch("AAPL", "1h")
    kwargs = recorder.calls[0][1]
    now = pd.Timestamp(meta["recorded_at"])
    assert now - pd.Timestamp(kwargs["start"]) <= pd.Timedelta(days=730)
    assert "period" not in kwargs


def test_full_daily_history_uses_period_max(monkeypatch):
    source, recorder, _, _ = replay(monkeypatch, "spy_1d")
    source.fetch("SPY", "1d")
    assert recorder.calls[0][1]["period"] == "max"


def test_download_turns_yfinance_error_hiding_off(monkeypatch):
    import yfinance as yf

    class FakeTicker:
        def __init__(self, ticker):
            self.ticker = ticker

        def history(self, **kwargs):
            return pd.DataFrame()

    monkeypatch.setattr(yf, "Ticker", FakeTicker)
    yf.config.debug.hide_exceptions = True
    YFinanceSource()._download("SPY", period="max")
    assert yf.config.debug.hide_exceptions is False
