"""Asset names: the one name an asset goes by, whatever a vendor calls its stored symbol.

A crypto asset arrives under many spellings: BTC (the demo, ccxt's default pair), BTC-USD (Yahoo), BTCUSDT
(Binance files), BTC/USDT (ccxt pairs), BTC-USDT, BTCUSD. They are one asset, "BTC", in the sidebar and on every
chart. Stored symbols are never renamed (a refresh keeps writing under the name it fetched); the name is resolved
when the cache is read (storage.panel.read_panel) and listed (storage.cache.cache_summary's `asset` column).

The rule, for a symbol upper-cased:

1. A known alias of a base is that base (XBT -> BTC).
2. BASE<sep>QUOTE with <sep> one of - / _ and QUOTE one of QUOTE_CURRENCIES is BASE, when BASE is 2-10 letters or
   digits with at least one letter and is not a fiat currency (EUR-USD is a currency pair, not a coin). A vendor
   writes a crypto pair this way; an equity class suffix (BRK-B) is not a quote currency, so it stays.
3. BASEQUOTE written together is BASE only when BASE is a known crypto base (CRYPTO_BASES), or when QUOTE is a
   stablecoin (USDT, USDC, BUSD), which only crypto pairs are quoted in. Written together, an unknown base before
   USD or EUR could be a ticker that merely ends that way, so it is left alone.
4. Anything else is its own asset, unchanged (SPY, AAPL, BRK-B, BRK.B, ^GSPC, EURUSD=X, ES=F, and USDT or BUSD
   themselves: nothing is left once the quote is stripped). Symbols with . = ^ : are never crypto pairs here.

Only a crypto name is upper-cased; every other symbol keeps its spelling.
"""
from __future__ import annotations

import re
from collections.abc import Iterable

# Quote currencies a crypto pair is priced in, longest first so BTCUSDT strips USDT, not USD.
QUOTE_CURRENCIES: tuple[str, ...] = ("USDT", "USDC", "BUSD", "USD", "EUR")
STABLECOIN_QUOTES: frozenset[str] = frozenset({"USDT", "USDC", "BUSD"})
# Bases recognised even when written together with their quote (BTCUSD, ETHEUR).
CRYPTO_BASES: frozenset[str] = frozenset(
    "BTC ETH SOL XRP DOGE ADA LTC BNB DOT AVAX LINK TRX BCH XLM MATIC POL TON SHIB UNI ATOM ETC "
    "USDT USDC".split()
)
BASE_ALIASES: dict[str, str] = {"XBT": "BTC"}  # Kraken's and BitMEX's name for bitcoin
# A fiat base before a quote currency makes a currency pair (EUR-USD), not a crypto asset.
FIAT_CURRENCIES: frozenset[str] = frozenset("USD EUR GBP JPY CHF CAD AUD NZD CNY CNH HKD SGD".split())

_QUOTES = "|".join(QUOTE_CURRENCIES)
_SEPARATED = re.compile(rf"^(?P<base>[A-Z0-9]{{2,10}})[-/_](?P<quote>{_QUOTES})$")
_TOGETHER = re.compile(rf"^(?P<base>[A-Z0-9]{{2,10}}?)(?P<quote>{_QUOTES})$")


def _plausible_base(base: str) -> bool:
    return any(c.isalpha() for c in base) and base not in FIAT_CURRENCIES


def _crypto_base(symbol: str) -> str | None:
    """The crypto base a symbol names, or None when it is not a crypto pair or coin by the rule above."""
    name = symbol.strip().upper()
    if name in BASE_ALIASES:
        return BASE_ALIASES[name]
    if name in CRYPTO_BASES:
        return name
    match = _SEPARATED.match(name)
    if match and _plausible_base(match["base"]):
        return BASE_ALIASES.get(match["base"], match["base"])
    match = _TOGETHER.match(name)
    if match:
        base = BASE_ALIASES.get(match["base"], match["base"])
        if base in CRYPTO_BASES or (match["quote"] in STABLECOIN_QUOTES and _plausible_base(base)):
            return base
    return None


def asset_name(symbol: str) -> str:
    """The asset a stored symbol is: "BTC" for BTC-USD, BTCUSDT, BTC/USDT...; any other symbol unchanged."""
    return _crypto_base(symbol) or symbol


def is_crypto_name(symbol: str) -> bool:
    """True when the name alone says the symbol is a crypto coin or pair (BTC, ETH-USD, PEPEUSDT)."""
    return _crypto_base(symbol) is not None


def quote_rank(symbol: str) -> int:
    """Which of several spellings of one asset to read first from the same source: the bare name, then by the
    order of QUOTE_CURRENCIES (USD-like quotes before EUR), then anything else."""
    name = symbol.strip().upper()
    if _crypto_base(name) == name or name in BASE_ALIASES:
        return 0
    for rank, quote in enumerate(QUOTE_CURRENCIES, start=1):
        if name.endswith(quote):
            return rank
    return len(QUOTE_CURRENCIES) + 1


def aliases_of(name: str, stored: Iterable[str]) -> list[str]:
    """The stored symbols that are the asset `name` (itself an asset name or any of its spellings)."""
    wanted = asset_name(name)
    return [symbol for symbol in stored if asset_name(symbol) == wanted]


def choose_stored(
    name: str, stored: Iterable[tuple[str, str]], preference: tuple[str, ...], source: str | None = None
) -> tuple[str, str] | None:
    """The (stored symbol, source) to read for asset `name` from the (symbol, source) series that hold bars.

    By source first (`preference`: real data over the demo), then by quote_rank, then by name; None when no
    spelling of the asset is stored (under `source`, when given).
    """
    wanted = asset_name(name)
    candidates = [
        (symbol, src) for symbol, src in stored
        if asset_name(symbol) == wanted and (src == source if source is not None else src in preference)
    ]
    if not candidates:
        return None
    return min(candidates, key=lambda pair: (preference.index(pair[1]) if pair[1] in preference else len(preference),
                                             quote_rank(pair[0]), pair[0]))
