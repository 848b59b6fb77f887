"""Asset names (storage.symbols): every spelling of a crypto asset is one asset; equity tickers stay as they are;
a panel asked for an asset reads whichever stored spelling has bars, real data over the demo, and says which."""
from __future__ import annotations

import numpy as np
import pytest

from storage import cache
from storage.panel import cached_panel, read_panel
from storage.sources.demo import demo_market
from storage.symbols import asset_name, choose_stored, is_crypto_name
from tests.storage.helpers_bars import make_bars


@pytest.mark.parametrize(
    "symbol", ["BTC", "BTC-USD", "BTCUSDT", "BTC/USDT", "BTC-USDT", "BTCUSD", "BTC/USDC", "BTCBUSD", "BTC-EUR",
               "BTC_USDT", "btc-usd", "XBT", "XBTUSD", "XBT/EUR"],
)
def test_every_spelling_of_bitcoin_is_the_asset_btc(symbol):
    assert asset_name(symbol) == "BTC"


@pytest.mark.parametrize(
    "symbol, asset",
    [("ETH-USD", "ETH"), ("ETHUSDT", "ETH"), ("ETH/EUR", "ETH"), ("SOLUSDC", "SOL"), ("SOL-USD", "SOL"),
     # an unknown coin: with a separator, or written together with a stablecoin quote
     ("PEPE-USD", "PEPE"), ("PEPEUSDT", "PEPE"), ("1INCH/USDT", "1INCH"),
     # a stablecoin priced in another
     ("USDC-USD", "USDC"), ("USDCUSDT", "USDC")],
)
def test_other_crypto_bases_follow_the_same_rule(symbol, asset):
    assert asset_name(symbol) == asset and is_crypto_name(symbol)


@pytest.mark.parametrize(
    "symbol",
    ["SPY", "AAPL", "BRK-B", "BRK.B", "EURUSD=X", "^GSPC", "ES=F", "EUR-USD", "EUR/USD",
     "USDT", "USD", "BUSD", "TUSD", "SUSD",  # nothing (or one letter) is left once the quote is stripped
     "ABCUSD", "XYZEUR",  # an unknown base written together with USD or EUR could be a ticker that ends so
     "ETHBTC", "BTC/USDT:USDT", "spy"],
)
def test_equities_fx_and_anything_ambiguous_keep_their_name(symbol):
    assert asset_name(symbol) == symbol


def test_the_stored_spelling_is_chosen_by_source_first_then_by_quote():
    preference = ("yfinance", "ccxt", "parquet", "csv", "demo")
    stored = [("BTC", "demo"), ("BTC-USD", "csv"), ("BTCUSDT", "csv"), ("BTC-EUR", "yfinance"), ("SPY", "demo")]
    assert choose_stored("BTC", stored, preference) == ("BTC-EUR", "yfinance")
    assert choose_stored("BTC", stored[:3], preference) == ("BTCUSDT", "csv")  # USDT before USD
    assert choose_stored("BTC-USD", stored, preference, source="demo") == ("BTC", "demo")
    assert choose_stored("ETH", stored, preference) is None
    assert choose_stored("SPY", stored, preference) == ("SPY", "demo")


def test_a_panel_asked_for_btc_reads_bitcoin_stored_as_btc_usd_over_the_demo(db_path):
    market = demo_market("1d")
    for symbol, bars in market.bars.items():
        cache.upsert_bars(bars, symbol, "demo", "1d", db_path)
    real = make_bars(40, start="2024-01-01", freq="1D", seed=9, price=40_000.0)
    cache.upsert_bars(real, "BTC-USD", "yfinance", "1d", db_path)

    panel = read_panel(["BTC", "SPY"], "1d", db_path=db_path)
    assert panel.symbols == ("BTC", "SPY")  # the names asked for
    assert panel.sources == ("yfinance", "demo") and panel.stored_symbols == ("BTC-USD", "SPY")
    btc_rows = panel.observed[:, 0]
    np.testing.assert_array_equal(panel.close[btc_rows, 0], real["close"].to_numpy())

    # Asked for the demo, the same name reads the demo's own "BTC".
    demo = read_panel(["BTC"], "1d", sources="demo", db_path=db_path)
    assert demo.stored_symbols == ("BTC",) and demo.sources == ("demo",)

    loaded = cached_panel(["SPY", "BTC"], "1d", db_path=db_path)
    assert "BTC from BTC-USD" in loaded.label and loaded.symbols == ("SPY", "BTC")

    with pytest.raises(ValueError, match="distinct assets"):
        read_panel(["BTC", "BTC-USD"], "1d", db_path=db_path)


def test_an_alias_with_bars_at_another_interval_only_is_not_read(db_path):
    cache.upsert_bars(make_bars(30, freq="1D", seed=1), "BTC-USD", "yfinance", "1d", db_path)
    cache.upsert_bars(make_bars(30, freq="1h", seed=2), "BTC", "demo", "1h", db_path)
    panel = read_panel(["BTC"], "1h", db_path=db_path)
    assert panel.sources == ("demo",) and panel.stored_symbols == ("BTC",)
    with pytest.raises(ValueError, match="no 4h bars for ETH"):
        cached_panel(["ETH"], "4h", db_path=db_path)
