"""Crypto bars from an exchange through ccxt 4.5: `CcxtSource(exchange="bybit", quote="USDT").fetch("BTC", "1h")`.

- Our symbol BTC means the spot pair BTC/<quote> (BTC/USDT by default); a symbol with a slash is used as is.
- History comes in pages of `fetch_ohlcv(pair, timeframe, since=ms, limit=page)`; each next page resumes at
  the last candle's open + one interval, and paging stops at the end of the range, at `now`, or when a page
  brings nothing new. Page sizes per exchange (PAGE_SIZES): bybit 1000, binance 1000, coinbase 299 (its API
  caps a request at 300 candles), okx 300; Kraken serves only its latest 720 candles whatever `since` says,
  so a longer Kraken request is refused up front rather than returned half-filled.
- Closed bars only: the still-open last candle (ts + interval > now) is dropped.
- ccxt.NetworkError and its subclasses (RequestTimeout, RateLimitExceeded, DDoSProtection,
  ExchangeNotAvailable; RateLimitExceeded is no longer a DDoSProtection, so the base class is what to catch)
  are retried with exponential backoff; `sleep` is injectable so tests do not wait. ccxt.ExchangeError
  (BadSymbol, RestrictedLocation, ...) is not retried: it becomes a SourceError with a hint.
- `markets` (a list of ccxt market dicts) is handed to `set_markets`, which skips `load_markets` (several
  requests). Without it, markets load once on first use.
"""
from __future__ import annotations

import difflib
import time
from collections.abc import Callable, Sequence

import pandas as pd

from storage.config import INTERVAL_SECONDS, check_interval, check_symbol
from storage.sources.base import BAR_COLUMNS, SourceError
from storage.validation import BarValidationError, validate_bars

PAGE_SIZES: dict[str, int] = {"bybit": 1000, "binance": 1000, "coinbase": 299, "okx": 300, "kraken": 720}
DEFAULT_PAGE_SIZE = 500
KRAKEN_LATEST_ONLY = 720
# Without a start, fetch this many bars back from now (a first fill; the cache refreshes incrementally after).
DEFAULT_HISTORY_BARS = 5000
MAX_PAGES = 10_000  # a guard against an exchange that keeps answering the same page


def check_exchange(exchange: str) -> str:
    """The ccxt exchange id (lower case) if ccxt lists it in ccxt.exchanges; else ValueError with a suggestion.

    Never looked up on the ccxt module by name first: `getattr(ccxt, "__class__")` is not an exchange.
    """
    import ccxt  # slow to import; only when a ccxt exchange is named

    name = exchange.strip().lower() if isinstance(exchange, str) else ""
    if name in ccxt.exchanges:
        return name
    close = difflib.get_close_matches(name, ccxt.exchanges, n=3, cutoff=0.6)
    hint = f"did you mean {' or '.join(close)}?" if close else "e.g. bybit, binance, coinbase, kraken or okx"
    raise ValueError(f"ccxt has no exchange {exchange!r}: {hint} (ccxt.exchanges lists the {len(ccxt.exchanges)} it has)")


class CcxtSource:
    """OHLCV from one ccxt exchange; see the module docstring for paging, retries and errors."""

    name = "ccxt"

    def __init__(
        self,
        exchange: str = "bybit",
        quote: str = "USDT",
        markets: Sequence[dict] | None = None,
        page_size: int | None = None,
        max_retries: int = 4,
        backoff_seconds: float = 1.0,
        sleep: Callable[[float], None] = time.sleep,
        now: pd.Timestamp | str | None = None,
        timeout_ms: int = 20_000,
    ):
        if page_size is not None and page_size < 1:
            raise ValueError(f"page_size must be at least 1, got {page_size}")
        self.exchange_id = exchange.lower()
        self.quote = quote.upper()
        self.page_size = page_size or PAGE_SIZES.get(self.exchange_id, DEFAULT_PAGE_SIZE)
        self.max_retries = max_retries
        self.backoff_seconds = backoff_seconds
        self.sleep = sleep
        self.now = None if now is None else _utc(now)
        self._markets = list(markets) if markets is not None else None
        self._timeout_ms = timeout_ms
        self._client = None

    def pair(self, symbol: str) -> str:
        return symbol.upper() if "/" in symbol else f"{symbol.upper()}/{self.quote}"

    @property
    def client(self):
        """The ccxt exchange object (built on first use; tests reach its HTTP session through it)."""
        if self._client is None:
            import ccxt  # slow to import; only when a fetch really happens

            check_exchange(self.exchange_id)
            options = {"defaultType": "spot"}
            if self.exchange_id == "bybit":
                options["fetchMarkets"] = {"types": ["spot"]}  # one request instead of four when loading
            self._client = getattr(ccxt, self.exchange_id)(
                {"enableRateLimit": True, "timeout": self._timeout_ms, "options": options}
            )
            if self._markets is not None:
                self._client.set_markets(self._markets)
        return self._client

    def fetch(
        self,
        symbol: str,
        interval: str,
        start: pd.Timestamp | None = None,
        end: pd.Timestamp | None = None,
    ) -> pd.DataFrame:
        check_symbol(symbol)
        check_interval(interval)
        pair = self.pair(symbol)
        client = self.client
        if interval not in (client.timeframes or {}):
            raise SourceError(
                symbol, f"{self.exchange_id} has no {interval} candles",
                f"choose one of {', '.join(t for t in INTERVAL_SECONDS if t in (client.timeframes or {}))}",
            )
        now = self.now if self.now is not None else pd.Timestamp.now(tz="UTC")
        step_ms = INTERVAL_SECONDS[interval] * 1000
        now_ms = _ms(now)
        end_ms = min(_ms(_utc(end)), now_ms) if end is not None else now_ms
        start_ms = _ms(_utc(start)) if start is not None else end_ms - DEFAULT_HISTORY_BARS * step_ms
        if start_ms >= end_ms:
            return _empty_bars()
        if self.exchange_id == "kraken" and start_ms < now_ms - KRAKEN_LATEST_ONLY * step_ms:
            raise SourceError(
                symbol, f"Kraken serves only its latest {KRAKEN_LATEST_ONLY} {interval} candles",
                "start later, use a longer interval, or another exchange (bybit, binance)",
            )
        if self.client.markets is None:
            self._with_retries(symbol, pair, self.client.load_markets)

        rows = self._paginate(symbol, pair, interval, start_ms, end_ms, step_ms)
        if rows is None:
            raise SourceError(
                symbol,
                f"{self.exchange_id} has no {interval} candles for {pair} from {_text(start_ms)} to {_text(end_ms)}",
                "the pair may have started trading later: try a later start",
            )
        frame = pd.DataFrame(rows, columns=list(BAR_COLUMNS))
        frame["ts"] = pd.to_datetime(frame["ts"], unit="ms", utc=True).dt.as_unit("us")
        # Pages can overlap by a candle; the later page has the final values.
        frame = frame.drop_duplicates(subset="ts", keep="last")
        closed = frame["ts"] + pd.Timedelta(milliseconds=step_ms) <= now  # drops the still-open candle
        frame = frame.loc[closed]
        if frame.empty:
            return _empty_bars()
        try:
            return validate_bars(frame, f"ccxt:{self.exchange_id}:{pair}")
        except BarValidationError as error:
            raise SourceError(symbol, f"{self.exchange_id} returned invalid candles: {error}") from error

    # --- paging and retries ---------------------------------------------------------------------------------

    def _paginate(self, symbol, pair, interval, start_ms, end_ms, step_ms) -> list[list] | None:
        """Candles with open time in [start_ms, end_ms) (the open one included); None when there are none."""
        rows: list[list] = []
        cursor = start_ms
        for _ in range(MAX_PAGES):
            page = self._with_retries(
                symbol, pair, lambda: self.client.fetch_ohlcv(pair, interval, since=cursor, limit=self.page_size)
            )
            fresh = [candle for candle in page if cursor <= candle[0] < end_ms]
            if not fresh:
                break  # no progress: the exchange has nothing after the cursor
            rows.extend(candle[:6] for candle in fresh)
            cursor = max(candle[0] for candle in fresh) + step_ms
            if cursor >= end_ms:
                break
        else:
            raise SourceError(symbol, f"{self.exchange_id} kept paging past {MAX_PAGES} pages", "narrow the range")
        return rows or None

    def _with_retries(self, symbol: str, pair: str, call: Callable):
        import ccxt

        for attempt in range(self.max_retries + 1):
            try:
                return call()
            except ccxt.NetworkError as error:  # includes RequestTimeout and RateLimitExceeded
                if attempt == self.max_retries:
                    raise SourceError(
                        symbol,
                        f"{self.exchange_id} did not answer after {attempt + 1} tries "
                        f"({type(error).__name__}: {_short(error)})",
                        "check the connection or try again in a few minutes",
                    ) from error
                self.sleep(self.backoff_seconds * 2**attempt)
            except ccxt.ExchangeError as error:
                raise SourceError(symbol, _exchange_error_reason(self.exchange_id, pair, error),
                                  _exchange_error_hint(self.exchange_id, error)) from error
        raise AssertionError("unreachable")


def _exchange_error_reason(exchange_id: str, pair: str, error: Exception) -> str:
    return f"{exchange_id} refused {pair} ({type(error).__name__}: {_short(error)})"


def _exchange_error_hint(exchange_id: str, error: Exception) -> str:
    import ccxt

    if isinstance(error, ccxt.BadSymbol):
        return (f"check that the pair trades on {exchange_id} (e.g. BTC/USDT), or change quote=; "
                "stocks come from yfinance")
    if isinstance(error, ccxt.RestrictedLocation):
        return "this exchange refuses requests from this location: choose another exchange (e.g. exchange='binance')"
    if isinstance(error, ccxt.AuthenticationError):
        return "this endpoint needs API keys, which this app does not use: choose another exchange"
    return "see the exchange's message above"


def _short(error: Exception, limit: int = 300) -> str:
    text = str(error)
    return text if len(text) <= limit else text[:limit] + "..."


def _empty_bars() -> pd.DataFrame:
    frame = pd.DataFrame({c: pd.Series(dtype="float64") for c in BAR_COLUMNS})
    frame["ts"] = pd.Series(dtype="datetime64[us, UTC]")
    return frame


def _utc(value) -> pd.Timestamp:
    stamp = pd.Timestamp(value)
    return stamp.tz_localize("UTC") if stamp.tzinfo is None else stamp.tz_convert("UTC")


_EPOCH = pd.Timestamp(0, tz="UTC")


def _ms(stamp: pd.Timestamp) -> int:
    """Unix milliseconds, whatever the Timestamp's own resolution."""
    return (stamp - _EPOCH) // pd.Timedelta(milliseconds=1)


def _text(ms: int) -> str:
    return f"{pd.Timestamp(ms, unit='ms', tz='UTC'):%Y-%m-%d %H:%M} UTC"
