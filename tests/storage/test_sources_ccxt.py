"""CcxtSource against recorded bybit v5 answers, served at the HTTP level so ccxt's own code runs."""
from __future__ import annotations

import json
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

import pandas as pd
import pytest
import requests

from storage.sources.base import BAR_COLUMNS, SourceError
from storage.sources.ccxt_source import CcxtSource

FIXTURES = Path(__file__).parents[1] / "fixtures" / "ccxt"
HOUR_MS = 3_600_000


def recorded(name: str):
    return json.loads((FIXTURES / name).read_text())


class FakeBybit:
    """Replaces `exchange.session.request`: answers /v5/market/kline like bybit from the recorded candles
    (open time >= start, at most limit, newest first); `script` injects failures for the next calls."""

    def __init__(self):
        self.kline = recorded("bybit_kline_spot_BTCUSDT_60.json")
        self.errors = recorded("bybit_errors.json")
        self.requests: list[dict] = []
        self.script: list = []  # per call: None (answer), an exception to raise, or (status, body)

    @property
    def candles_oldest_first(self) -> list[list[str]]:
        return sorted(self.kline["result"]["list"], key=lambda row: int(row[0]))

    def request(self, method, url, **kwargs):
        query = {k: v[0] for k, v in parse_qs(urlsplit(url).query).items()}
        self.requests.append(query)
        step = self.script.pop(0) if self.script else None
        if isinstance(step, Exception):
            raise step
        if isinstance(step, tuple):
            return self._response(url, *step)
        assert urlsplit(url).path == "/v5/market/kline", url
        start = int(query.get("start", 0))
        end = int(query.get("end", 2**62))
        limit = int(query.get("limit", 200))
        rows = [r for r in self.candles_oldest_first if start <= int(r[0]) <= end][:limit]
        body = {**self.kline, "result": {**self.kline["result"], "list": rows[::-1]}}
        return self._response(url, 200, body)

    @staticmethod
    def _response(url, status, body):
        response = requests.Response()
        response.status_code = status
        response._content = json.dumps(body).encode()
        response.headers["Content-Type"] = "application/json"
        response.reason = "OK" if status == 200 else "Error"
        response.url = url
        return response


@pytest.fixture
def bybit():
    return FakeBybit()


def make_source(bybit: FakeBybit, **options) -> tuple[CcxtSource, list[float]]:
    sleeps: list[float] = []
    answered_at = pd.Timestamp(bybit.kline["time"], unit="ms", tz="UTC")
    options = {"now": answered_at, **options}
    source = CcxtSource(markets=recorded("bybit_markets_BTC_USDT.json"), sleep=sleeps.append, **options)
    source.client.session.request = bybit.request
    source.client.enableRateLimit = False  # the fake answers at once; no need to throttle
    return source, sleeps


def test_pages_resume_after_the_last_candle_and_the_open_candle_is_dropped(bybit):
    source, _ = make_source(bybit, page_size=25)
    candles = bybit.candles_oldest_first
    first = pd.Timestamp(int(candles[0][0]), unit="ms", tz="UTC")
    bars = source.fetch("BTC", "1h", start=first)

    assert tuple(bars.columns) == BAR_COLUMNS and str(bars["ts"].dtype) == "datetime64[us, UTC]"
    assert len(bars) == len(candles) - 1  # the last recorded candle was still open when answered
    assert bars["ts"].iloc[-1] == pd.Timestamp(int(candles[-2][0]), unit="ms", tz="UTC")
    assert bars["close"].iloc[0] == float(candles[0][4]) and bars["volume"].iloc[0] == float(candles[0][5])
    starts = [int(q["start"]) for q in bybit.requests]
    assert starts == [int(candles[0][0]) + k * 25 * HOUR_MS for k in range(3)]  # 25 + 25 + 10 candles
    assert all(q["limit"] == "25" and q["interval"] == "60" and q["symbol"] == "BTCUSDT" for q in bybit.requests)


def test_resume_from_a_timestamp_and_stop_at_end(bybit):
    source, _ = make_source(bybit, page_size=1000)
    candles = bybit.candles_oldest_first
    start = pd.Timestamp(int(candles[10][0]) + 60_000, unit="ms", tz="UTC")  # mid-candle: the next one is first
    end = pd.Timestamp(int(candles[20][0]), unit="ms", tz="UTC")
    bars = source.fetch("BTC", "1h", start=start, end=end)
    assert list(bars["ts"]) == [pd.Timestamp(int(c[0]), unit="ms", tz="UTC") for c in candles[11:20]]
    assert len(bybit.requests) == 1


def test_paging_stops_when_the_exchange_has_nothing_new(bybit):
    source, _ = make_source(bybit, page_size=1000, now=pd.Timestamp("2030-01-01", tz="UTC"))
    candles = bybit.candles_oldest_first
    bars = source.fetch("BTC", "1h", start=pd.Timestamp(int(candles[0][0]), unit="ms", tz="UTC"))
    assert len(bars) == len(candles)  # all closed by 2030
    assert len(bybit.requests) == 2  # the second page came back empty: no progress, stop


def test_network_errors_are_retried_with_exponential_backoff(bybit):
    source, sleeps = make_source(bybit, page_size=1000, backoff_seconds=0.5)
    bybit.script = [
        requests.exceptions.ConnectionError("Connection aborted."),  # -> ccxt.NetworkError
        requests.exceptions.ReadTimeout("Read timed out."),  # -> ccxt.RequestTimeout
        (200, bybit.errors["too_many_visits"]),  # retCode 10006 -> ccxt.RateLimitExceeded
    ]
    candles = bybit.candles_oldest_first
    bars = source.fetch("BTC", "1h", start=pd.Timestamp(int(candles[0][0]), unit="ms", tz="UTC"))
    assert len(bars) == len(candles) - 1
    assert sleeps == [0.5, 1.0, 2.0]


def test_network_errors_give_up_after_max_retries(bybit):
    source, sleeps = make_source(bybit, max_retries=2, backoff_seconds=1.0)
    bybit.script = [requests.exceptions.ConnectionError("Connection aborted.")] * 3
    with pytest.raises(SourceError, match="did not answer after 3 tries") as caught:
        source.fetch("BTC", "1h", start=pd.Timestamp("2024-01-01", tz="UTC"))
    assert sleeps == [1.0, 2.0] and caught.value.hint


def test_bad_symbol_from_the_exchange_is_not_retried(bybit):
    source, sleeps = make_source(bybit)
    bybit.script = [(200, bybit.errors["not_supported_symbols"])]
    with pytest.raises(SourceError, match="BadSymbol") as caught:
        source.fetch("BTC", "1h", start=pd.Timestamp("2024-01-01", tz="UTC"))
    assert "check that the pair trades on bybit" in caught.value.hint
    assert sleeps == [] and len(bybit.requests) == 1


def test_unknown_market_is_refused_without_a_request(bybit):
    source, _ = make_source(bybit)
    with pytest.raises(SourceError, match="BadSymbol"):
        source.fetch("NOSUCHCOIN", "1h", start=pd.Timestamp("2024-01-01", tz="UTC"))
    assert bybit.requests == []


def test_restricted_location_says_to_choose_another_exchange(bybit):
    source, _ = make_source(bybit)
    bybit.script = [(200, bybit.errors["restricted_region"])]
    with pytest.raises(SourceError, match="RestrictedLocation") as caught:
        source.fetch("BTC", "1h", start=pd.Timestamp("2024-01-01", tz="UTC"))
    assert "another exchange" in caught.value.hint


def test_no_candles_at_all_is_an_error_not_an_empty_success(bybit):
    source, _ = make_source(bybit)
    with pytest.raises(SourceError, match="has no 1h candles for BTC/USDT"):
        source.fetch("BTC", "1h", start=pd.Timestamp("2023-01-01", tz="UTC"),
                     end=pd.Timestamp("2023-01-02", tz="UTC"))


def test_kraken_refuses_history_beyond_its_latest_720_candles():
    source = CcxtSource(exchange="kraken", now=pd.Timestamp("2024-06-01", tz="UTC"))
    with pytest.raises(SourceError, match="latest 720"):
        source.fetch("BTC", "1h", start=pd.Timestamp("2024-01-01", tz="UTC"))


def test_page_sizes_per_exchange():
    assert CcxtSource("bybit").page_size == 1000
    assert CcxtSource("binance").page_size == 1000
    assert CcxtSource("coinbase").page_size == 299
    assert CcxtSource("kraken").page_size == 720
    assert CcxtSource("bybit", quote="USDC").pair("BTC") == "BTC/USDC"


def test_only_the_open_candle_in_range_gives_an_empty_frame(bybit):
    source, _ = make_source(bybit)
    still_open = pd.Timestamp(int(bybit.candles_oldest_first[-1][0]), unit="ms", tz="UTC")
    bars = source.fetch("BTC", "1h", start=still_open)
    assert bars.empty and tuple(bars.columns) == BAR_COLUMNS
    assert str(bars["ts"].dtype) == "datetime64[us, UTC]"
