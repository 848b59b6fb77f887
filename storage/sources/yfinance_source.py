"""Bars from Yahoo Finance through yfinance 1.7: `YFinanceSource().fetch("SPY", "1d", start, end)`.

Decisions, so nobody has to rediscover them:

- One symbol per call with `Ticker.history`, never `yf.download` with several symbols (which NaN-fills a 24/7
  symbol against exchange hours).
- UNADJUSTED bars (`auto_adjust=False`): Yahoo's Open/High/Low/Close are split-adjusted but not
  dividend-adjusted, and "Adj Close" is ignored. Dividend-adjusted history is rescaled by every new dividend,
  which would put a step into an incrementally refreshed cache; unadjusted history only changes at a split,
  after which the symbol should be refetched in full. Ex-dividend days show a small drop.
- Our symbols map to Yahoo's where they differ: BTC -> BTC-USD, ETH -> ETH-USD (YAHOO_SYMBOLS); others pass
  through (SPY, AAPL, ^GSPC, ...). Bars are stored under OUR symbol.
- ts is the bar open in UTC. Daily bars are labelled by Yahoo at local midnight of the exchange's trading
  date; we store that date at 00:00 UTC, so daily bars of every market line up by date (BTC-USD's daily bars
  already are at 00:00 UTC).
- Closed bars only: a bar is kept when ts + interval <= now (now injectable for tests). Yahoo's still-open
  last bar (today's daily bar, the current hour) is therefore dropped.
- yfinance hides errors by default (logs them and returns an empty frame); we set
  `yf.config.debug.hide_exceptions = False` (process-wide) and turn its exceptions and empty frames into
  SourceError with a hint.
- Yahoo serves intraday history for a limited window back from today; a request beyond it is refused here,
  before any network call, with the limit in the message. Yahoo has no 4h bars.

The network call lives in `_download` only, so tests replace exactly that seam with recorded frames
(tests/fixtures/yfinance/).
"""
from __future__ import annotations

from dataclasses import dataclass

import pandas as pd

from storage.config import INTERVAL_SECONDS, check_interval, check_symbol
from storage.sources.base import BAR_COLUMNS, SourceError
from storage.validation import BarValidationError, validate_bars

YAHOO_SYMBOLS: dict[str, str] = {"BTC": "BTC-USD", "ETH": "ETH-USD"}

# Our interval -> Yahoo's interval name. 4h is missing on purpose: Yahoo does not serve it.
YAHOO_INTERVALS: dict[str, str] = {"1m": "1m", "5m": "5m", "15m": "15m", "30m": "30m", "1h": "1h", "1d": "1d"}


@dataclass(frozen=True)
class IntradayLimit:
    days: int
    why: str


# How far back Yahoo serves each intraday bar size (from today). Slightly inside Yahoo's own limits so a
# request made at the edge does not fail by a few minutes.
INTRADAY_LIMITS: dict[str, IntradayLimit] = {
    "1m": IntradayLimit(7, "Yahoo serves 1-minute bars for about the last 7 days"),
    "5m": IntradayLimit(59, "Yahoo serves bars up to 90 minutes for about the last 60 days"),
    "15m": IntradayLimit(59, "Yahoo serves bars up to 90 minutes for about the last 60 days"),
    "30m": IntradayLimit(59, "Yahoo serves bars up to 90 minutes for about the last 60 days"),
    "1h": IntradayLimit(729, "Yahoo serves hourly bars for about the last 730 days"),
}

CHECK_SYMBOL_HINT = "check the symbol on finance.yahoo.com (e.g. SPY, AAPL, BTC-USD, ^GSPC)"


def yahoo_symbol(symbol: str) -> str:
    return YAHOO_SYMBOLS.get(symbol.upper(), symbol)


class YFinanceSource:
    """Yahoo Finance daily and intraday bars; see the module docstring for the choices made."""

    name = "yfinance"

    def __init__(self, now: pd.Timestamp | str | None = None, timeout_seconds: float = 20.0):
        self.now = None if now is None else _utc(now)
        self.timeout_seconds = timeout_seconds

    def fetch(
        self,
        symbol: str,
        interval: str,
        start: pd.Timestamp | None = None,
        end: pd.Timestamp | None = None,
    ) -> pd.DataFrame:
        check_symbol(symbol)
        check_interval(interval)
        now = self.now if self.now is not None else pd.Timestamp.now(tz="UTC")
        start_utc = None if start is None else _utc(start)
        end_utc = None if end is None else _utc(end)
        if start_utc is not None and end_utc is not None and start_utc >= end_utc:
            raise SourceError(symbol, f"empty range: start {start_utc} is not before end {end_utc}")
        request = self._request(symbol, interval, start_utc, end_utc, now)

        ticker = yahoo_symbol(symbol)
        try:
            raw = self._download(ticker, **request)
        except SourceError:
            raise
        except Exception as error:  # yfinance, curl_cffi and socket errors: translated, never swallowed
            raise _translate_error(symbol, ticker, error) from error
        if raw is None or raw.empty or raw.dropna(how="all").empty:
            raise SourceError(
                symbol,
                f"no data for ticker {ticker} ({interval}{_range_text(start_utc, end_utc)})",
                CHECK_SYMBOL_HINT + "; or the range holds no trading session",
            )
        bars = self._to_bars(raw, symbol, interval)
        bar_length = pd.Timedelta(seconds=INTERVAL_SECONDS[interval])
        keep = bars["ts"] + bar_length <= now  # closed bars only: drops Yahoo's still-open last bar
        if start_utc is not None:
            keep &= bars["ts"] >= start_utc
        if end_utc is not None:
            keep &= bars["ts"] < end_utc
        return bars.loc[keep].reset_index(drop=True)

    # --- the seam -------------------------------------------------------------------------------------------

    def _download(self, ticker: str, **history_kwargs) -> pd.DataFrame:
        """The only network call: yfinance's Ticker.history, with its exception hiding turned off."""
        import yfinance as yf  # slow to import; only when a fetch really happens

        yf.config.debug.hide_exceptions = False
        return yf.Ticker(ticker).history(**history_kwargs)

    # --- helpers --------------------------------------------------------------------------------------------

    def _request(self, symbol, interval, start, end, now) -> dict:
        if interval not in YAHOO_INTERVALS:
            raise SourceError(
                symbol,
                f"Yahoo Finance has no {interval} bars",
                f"choose one of {', '.join(YAHOO_INTERVALS)} (or use ccxt for 4h crypto bars)",
            )
        kwargs = {
            "interval": YAHOO_INTERVALS[interval],
            "auto_adjust": False,  # unadjusted: see the module docstring
            "actions": False,
            "timeout": self.timeout_seconds,
        }
        limit = INTRADAY_LIMITS.get(interval)
        if limit is not None:
            earliest = (now - pd.Timedelta(days=limit.days)).floor("min")
            if start is not None and start < earliest:
                raise SourceError(
                    symbol,
                    f"{limit.why}: start {start:%Y-%m-%d %H:%M} UTC is {(now - start).days} days ago",
                    f"start on or after {earliest:%Y-%m-%d %H:%M} UTC, or use 1d bars for longer history",
                )
            if end is not None and end <= earliest:
                raise SourceError(symbol, f"{limit.why}: the whole range ends before {earliest:%Y-%m-%d}")
            start = start if start is not None else earliest
        if start is None and end is None:
            kwargs["period"] = "max"
        else:
            # yfinance reads naive datetimes in the exchange's zone: always pass UTC-aware ones.
            kwargs["start"] = (start if start is not None else pd.Timestamp("1970-01-02", tz="UTC")).to_pydatetime()
            kwargs["end"] = (end if end is not None else now + pd.Timedelta(days=1)).to_pydatetime()
            if interval == "1d":
                # Yahoo cuts daily ranges at the exchange's local midnight: widen by a day each side and
                # let the ts filter in fetch() trim to what was asked.
                kwargs["start"] = (pd.Timestamp(kwargs["start"]) - pd.Timedelta(days=1)).to_pydatetime()
                kwargs["end"] = (pd.Timestamp(kwargs["end"]) + pd.Timedelta(days=1)).to_pydatetime()
        return kwargs

    def _to_bars(self, raw: pd.DataFrame, symbol: str, interval: str) -> pd.DataFrame:
        origin = f"yfinance:{symbol}"
        missing = [c for c in ("Open", "High", "Low", "Close", "Volume") if c not in raw.columns]
        if missing:
            raise SourceError(symbol, f"Yahoo's answer lacks column(s) {', '.join(missing)}",
                              "yfinance may have changed its layout; re-record tests/fixtures/yfinance")
        index = pd.DatetimeIndex(raw.index)
        if index.tz is None:
            index = index.tz_localize("UTC")
        if interval == "1d":
            # Yahoo labels a daily bar with local midnight of its trading date: keep the date, at 00:00 UTC.
            ts = pd.DatetimeIndex(pd.to_datetime(index.tz_localize(None).normalize()), tz="UTC")
        else:
            ts = index.tz_convert("UTC")
        frame = pd.DataFrame(
            {
                "ts": ts.as_unit("us"),
                "open": raw["Open"].to_numpy(dtype="float64"),
                "high": raw["High"].to_numpy(dtype="float64"),
                "low": raw["Low"].to_numpy(dtype="float64"),
                "close": raw["Close"].to_numpy(dtype="float64"),
                "volume": raw["Volume"].to_numpy(dtype="float64"),
            }
        )
        # Yahoo leaves rows without a trade as NaN; they are not bars.
        frame = frame.dropna(subset=["open", "high", "low", "close"], how="all")
        try:
            return validate_bars(frame, origin)[list(BAR_COLUMNS)]
        except BarValidationError as error:
            raise SourceError(symbol, f"Yahoo returned invalid bars: {error}", "try again later") from error


def _translate_error(symbol: str, ticker: str, error: Exception) -> SourceError:
    name = type(error).__name__
    if name == "YFRateLimitError":
        return SourceError(symbol, "Yahoo Finance is rate-limiting this machine", "wait a few minutes, then retry")
    if name in ("YFTzMissingError", "YFPricesMissingError", "YFTickerMissingError"):
        return SourceError(symbol, f"no data for ticker {ticker}: {error}", CHECK_SYMBOL_HINT)
    if name == "YFInvalidPeriodError":
        return SourceError(symbol, f"Yahoo refused the requested range: {error}", "choose a shorter range")
    if isinstance(error, (OSError, TimeoutError)):  # curl_cffi's errors subclass OSError
        return SourceError(
            symbol, f"could not reach Yahoo Finance ({name}: {error})", "check the internet connection and retry"
        )
    return SourceError(symbol, f"yfinance failed ({name}: {error})", "retry; if it persists, update yfinance")


def _range_text(start: pd.Timestamp | None, end: pd.Timestamp | None) -> str:
    if start is None and end is None:
        return ", full history"
    left = f"{start:%Y-%m-%d %H:%M}" if start is not None else "start"
    right = f"{end:%Y-%m-%d %H:%M}" if end is not None else "now"
    return f", {left} .. {right} UTC"


def _utc(value) -> pd.Timestamp:
    stamp = pd.Timestamp(value)
    return stamp.tz_localize("UTC") if stamp.tzinfo is None else stamp.tz_convert("UTC")
