"""read_bar_file: every layout people upload, and a clear refusal for everything else."""
from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from storage.sources.base import BAR_COLUMNS
from storage.sources.files import (
    EPOCH_UNITS,
    BarFileError,
    detect_epoch_unit,
    load_bar_file,
    read_bar_file,
)
from storage.validation import BarValidationError

FILES = Path(__file__).parents[1] / "fixtures" / "files"


def utc(text: str) -> pd.Timestamp:
    return pd.Timestamp(text, tz="UTC")


def assert_bar_frame(frame: pd.DataFrame) -> None:
    assert tuple(frame.columns) == BAR_COLUMNS
    assert str(frame["ts"].dtype) == "datetime64[us, UTC]"
    assert frame["ts"].is_monotonic_increasing and frame["ts"].is_unique


class TestLayouts:
    def test_yahoo_csv_uses_close_not_adj_close_and_dates_as_utc_midnight(self):
        bars = read_bar_file(FILES / "yahoo_spy_daily.csv")
        raw = pd.read_csv(FILES / "yahoo_spy_daily.csv")
        assert_bar_frame(bars)
        assert bars["ts"].iloc[0] == utc("2024-01-02")
        np.testing.assert_allclose(bars["close"], raw["Close"])
        assert "Yahoo" in bars.attrs["layout"]

    def test_yfinance_download_csv_with_three_header_rows(self):
        bars = read_bar_file(FILES / "yfinance_download_spy.csv")
        assert len(bars) == 3
        assert bars["ts"].iloc[-1] == utc("2024-01-04")
        assert bars["open"].iloc[0] == pytest.approx(472.16, abs=1e-4)  # columns follow the header, not position

    def test_binance_kline_without_header_in_milliseconds(self):
        bars = read_bar_file(FILES / "binance_BTCUSDT-1h-2024-01-01.csv")
        assert_bar_frame(bars)
        assert list(bars["ts"]) == [utc("2024-01-01 00:00") + pd.Timedelta(hours=h) for h in range(4)]
        assert bars["volume"].iloc[0] == pytest.approx(1271.68108)
        assert "ms" in bars.attrs["layout"]

    def test_binance_kline_in_microseconds(self):
        bars = read_bar_file(FILES / "binance_BTCUSDT-1h-2025-01-01_microseconds.csv")
        assert list(bars["ts"]) == [utc("2025-01-01 00:00"), utc("2025-01-01 01:00")]

    def test_bitcoin_history_in_unix_seconds(self):
        bars = read_bar_file(FILES / "bitcoin_history_1min.csv")
        assert bars["ts"].iloc[0] == utc("2012-01-01 10:01")
        assert (bars["ts"].diff().dropna() == pd.Timedelta(minutes=1)).all()

    def test_plain_layout_skips_blank_lines(self):
        bars = read_bar_file(FILES / "plain_bars.csv")
        assert len(bars) == 3 and bars["close"].tolist() == [100.5, 101.5, 101.0]

    def test_column_names_are_case_insensitive_and_other_delimiters_work(self, tmp_path):
        path = tmp_path / "upper.csv"
        path.write_text("TS;OPEN;HIGH;LOW;CLOSE;VOLUME\n2024-01-01 00:00;1;2;0.5;1.5;10\n")
        assert read_bar_file(path)["close"].tolist() == [1.5]

    @pytest.mark.parametrize("index_as_ts", [False, True])
    def test_parquet_with_the_same_columns(self, tmp_path, index_as_ts):
        yahoo = pd.read_csv(FILES / "yahoo_spy_daily.csv", parse_dates=["Date"])
        frame = yahoo.set_index("Date") if index_as_ts else yahoo
        path = tmp_path / "spy.parquet"
        frame.to_parquet(path)
        bars = read_bar_file(path)
        assert_bar_frame(bars)
        np.testing.assert_allclose(bars["close"], yahoo["Close"])
        assert bars.attrs["layout"].startswith("parquet")

    def test_uploaded_file_object_uses_its_name_in_errors(self):
        upload = io.BytesIO(b"ts,open,high,low,close,volume\n2024-01-01,1,2,0.5,1.5,-3\n")
        upload.name = "my upload.csv"
        with pytest.raises(BarValidationError) as caught:
            read_bar_file(upload)
        assert str(caught.value).startswith("my upload.csv")
        assert "negative volume" in str(caught.value) and "line 2" in str(caught.value)

    def test_bytes_are_accepted(self):
        data = (FILES / "plain_bars.csv").read_bytes()
        assert len(read_bar_file(data, origin="pasted")) == 3


class TestVendorLayouts:
    """One fixture per vendor layout, written from the vendor's documented format (tests/fixtures/files/README.md)."""

    def test_yfinance_history_with_auto_adjust_repairs_one_ulp_rows_and_counts_them(self):
        loaded = load_bar_file(FILES / "yfinance_history_SPY_1d_auto_adjust.csv")
        raw = pd.read_csv(FILES / "yfinance_history_SPY_1d_auto_adjust.csv")
        off_by_an_ulp = (raw["Close"] > raw["High"]) | (raw["Close"] < raw["Low"])
        assert off_by_an_ulp.sum() == 11  # close one ulp above high or below low, as auto_adjust writes it

        bars = loaded.bars
        assert_bar_frame(bars)
        assert (loaded.rows_read, len(bars), loaded.rounding_repairs) == (23, 23, 11)
        assert ((bars["low"] <= bars[["open", "close"]].min(axis=1)) & (bars[["open", "close"]].max(axis=1) <= bars["high"])).all()
        np.testing.assert_array_equal(bars["close"], raw["Close"])  # close is never moved, high/low widen to it
        assert bars["ts"].iloc[0] == utc("2024-01-02 05:00")  # midnight in New York (-05:00)
        assert loaded.layout == "csv: Yahoo Finance history" and loaded.time_reading == "Date (text)"
        assert loaded.repaired_examples[0] == "line 3 (close=460.868043 > high=460.86804299999994)"

    def test_a_real_violation_in_the_same_file_is_still_refused_with_line_and_values(self, tmp_path):
        lines = (FILES / "yfinance_history_SPY_1d_auto_adjust.csv").read_text().splitlines()
        fields = lines[5].split(",")
        fields[4] = "470.5"  # close 2% above high on line 6
        lines[5] = ",".join(fields)
        path = tmp_path / "spy.csv"
        path.write_text("\n".join(lines) + "\n")
        with pytest.raises(BarValidationError) as caught:
            load_bar_file(path)
        message = str(caught.value)
        assert message.startswith("spy.csv: invalid bars (1 rule broken)")
        assert "close outside [low, high]: 1 row, e.g. line 6 (close=470.5, low=" in message

    def test_yfinance_hourly_history_with_new_york_offsets(self):
        loaded = load_bar_file(FILES / "yfinance_history_SPY_1h.csv")
        assert len(loaded.bars) == 28 and loaded.time_reading == "Datetime (text)"
        assert loaded.bars["ts"].iloc[0] == utc("2024-01-11 14:30")  # 09:30-05:00
        assert (loaded.bars["ts"].dt.minute == 30).all()

    def test_binance_futures_klines_with_a_header_in_milliseconds(self):
        loaded = load_bar_file(FILES / "binance_futures_BTCUSDT-1d-2025-01.csv")
        assert loaded.layout == "csv: Binance klines" and loaded.time_reading == "open_time (unix ms)"
        assert list(loaded.bars["ts"]) == list(pd.date_range("2025-01-01", periods=7, freq="D", tz="UTC"))

    def test_kaggle_bitcoin_minutes_in_seconds_and_its_empty_minutes(self, tmp_path):
        loaded = load_bar_file(FILES / "bitcoin_history_1min.csv")
        assert loaded.layout == "csv: Kaggle 1-minute Bitcoin" and loaded.epoch_unit == "s"
        # The older Kaggle file writes a minute without trades as a row of NaN: no bar, counted.
        path = tmp_path / "bitstamp.csv"
        path.write_text(
            "Timestamp,Open,High,Low,Close,Volume_(BTC),Volume_(Currency),Weighted_Price\n"
            "1325317920,4.39,4.39,4.39,4.39,0.455,2.0,4.39\n"
            "1325317980,NaN,NaN,NaN,NaN,NaN,NaN,NaN\n"
            "1325318040,4.39,4.40,4.39,4.40,1.5,6.6,4.39\n"
        )
        empty_minute = load_bar_file(path)
        assert (len(empty_minute.bars), empty_minute.empty_rows_dropped) == (2, 1)

    def test_databento_raw_csv_in_nanoseconds_with_fixed_point_prices(self):
        loaded = load_bar_file(FILES / "databento_XNAS.ITCH_ohlcv-1h_AAPL.csv")
        raw = pd.read_csv(FILES / "databento_XNAS.ITCH_ohlcv-1h_AAPL.csv")
        assert loaded.layout == "csv: Databento ohlcv-1h (fixed-point prices in 1e-9 units, scaled)"
        assert loaded.time_reading == "ts_event (unix ns)" and loaded.stated_interval == "1h"
        assert loaded.file_symbol == "AAPL"
        assert loaded.bars["ts"].iloc[0] == utc("2024-01-02 14:00")
        np.testing.assert_allclose(loaded.bars["close"], raw["close"] * 1e-9)
        assert loaded.bars["close"].iloc[0] == pytest.approx(185.57)

    def test_databento_pretty_csv_with_iso_times(self):
        loaded = load_bar_file(FILES / "databento_XNAS.ITCH_ohlcv-1d_SPY_pretty.csv")
        assert loaded.layout == "csv: Databento ohlcv-1d" and loaded.time_reading == "ts_event (text)"
        assert loaded.bars["ts"].iloc[0] == utc("2024-01-02") and loaded.bars["close"].iloc[0] == 472.65

    def test_polygon_aggregates_in_milliseconds(self):
        loaded = load_bar_file(FILES / "polygon_aggs_AAPL_1d.csv")
        raw = pd.read_csv(FILES / "polygon_aggs_AAPL_1d.csv")
        assert loaded.layout == "csv: Polygon/Massive aggregates" and loaded.time_reading == "t (unix ms)"
        assert loaded.bars["ts"].iloc[0] == utc("2024-01-02 05:00")  # midnight in New York
        np.testing.assert_array_equal(loaded.bars["volume"], raw["v"])
        np.testing.assert_array_equal(loaded.bars["close"], raw["c"])  # not vw

    def test_polygon_or_alpaca_letters_with_iso_times_and_an_offset(self, tmp_path):
        path = tmp_path / "aggs.csv"
        path.write_text("t,o,h,l,c,v,n,vw\n2024-01-02T00:00:00-05:00,185.6,187.7,185.0,187.5,7.4e7,571275,186.7\n")
        loaded = load_bar_file(path)
        assert loaded.layout == "csv: Alpaca or Polygon/Massive bars (t as text)"
        assert loaded.bars["ts"].iloc[0] == utc("2024-01-02 05:00")

    def test_massive_flat_file_in_nanoseconds(self):
        loaded = load_bar_file(FILES / "massive_flatfile_SPY_minute_aggs.csv")
        assert loaded.layout == "csv: Polygon/Massive flat file" and loaded.epoch_unit == "ns"
        assert list(loaded.bars["ts"]) == list(pd.date_range("2024-01-02 14:30", periods=5, freq="min", tz="UTC"))

    def test_alpaca_bars_from_the_sdk_dataframe(self):
        loaded = load_bar_file(FILES / "alpaca_bars_AAPL_1h.csv")
        assert loaded.layout == "csv: Alpaca bars" and loaded.time_reading == "timestamp (text)"
        assert loaded.bars["ts"].iloc[0] == utc("2024-01-02 13:00") and len(loaded.bars) == 16
        assert loaded.bars["close"].iloc[0] == 187.56  # not vwap

    def test_the_products_own_layout(self):
        loaded = load_bar_file(FILES / "plain_bars.csv")
        assert loaded.layout == "csv: plain ts/open/high/low/close/volume" and loaded.time_reading == "ts (text)"

    def test_a_file_with_several_symbols_is_refused(self, tmp_path):
        lines = (FILES / "massive_flatfile_SPY_minute_aggs.csv").read_text().splitlines()
        lines[2] = lines[2].replace("SPY", "QQQ")
        path = tmp_path / "minute_aggs.csv"
        path.write_text("\n".join(lines) + "\n")
        with pytest.raises(BarFileError, match=r"holds 2 symbols in its ticker column \(QQQ, SPY\)"):
            load_bar_file(path)

    def test_a_path_reports_when_it_was_written_and_bytes_do_not(self):
        path = FILES / "plain_bars.csv"
        assert load_bar_file(path).saved_at == pd.Timestamp(path.stat().st_mtime_ns, unit="ns", tz="UTC")
        assert load_bar_file(path.read_bytes(), origin="pasted").saved_at is None


class TestEpochUnits:
    """Unix times name their unit by magnitude; the ranges start in 1979 and do not overlap."""

    @pytest.mark.parametrize("value, unit", [
        (1_704_067_200, "s"),  # 2024-01-01 in seconds
        (1_325_412_060.0, "s"),  # Kaggle's float seconds, 2012
        (1_704_067_200_000, "ms"),  # Binance until 2024, Polygon's t
        (1_735_689_600_000_000, "us"),  # Binance spot since 2025
        (1_704_204_000_000_000_000, "ns"),  # Databento ts_event, Massive window_start
        (3e8, "s"), (9_999_999_999, "s"),  # the edges of the seconds range: 1979-07 to the year 2286
        (3e11, "ms"), (3e14, "us"), (3e17, "ns"), (9.2e18, "ns"),
    ])
    def test_each_unit_by_magnitude(self, value, unit):
        assert detect_epoch_unit(np.array([value])) == unit

    def test_the_ranges_are_ordered_and_disjoint(self):
        for (_, high, _), (low, _, _) in zip(EPOCH_UNITS, EPOCH_UNITS[1:]):
            assert high < low

    @pytest.mark.parametrize("value", [45_000, 2e8, 5e10, 2e11, 5e13, 5e16])  # an Excel day, 1976 in s, ...
    def test_a_value_in_no_range_is_refused(self, value):
        with pytest.raises(ValueError, match="not a unix time of a date after 1979"):
            detect_epoch_unit(np.array([value]))

    def test_mixed_units_are_refused(self):
        with pytest.raises(ValueError, match="different units"):
            detect_epoch_unit(np.array([1_704_067_200, 1_704_067_200_000]))


class TestRefusals:
    def test_bad_value_is_reported_with_its_original_line_number(self, tmp_path):
        path = tmp_path / "prices.csv"
        path.write_text("\nts,open,high,low,close,volume\n2024-01-01,1,2,0.5,1.5,1\n\n2024-01-02,1,2,0.5,abc,1\n")
        with pytest.raises(BarValidationError) as caught:
            read_bar_file(path)
        message = str(caught.value)
        assert message.startswith("prices.csv") and "line 5" in message and "'abc'" in message

    def test_binary_files_are_refused(self, tmp_path):
        zipped = tmp_path / "book.xlsx"
        zipped.write_bytes(b"PK\x03\x04" + bytes(range(256)))
        with pytest.raises(BarFileError, match="not a CSV or Parquet file.*ZIP"):
            read_bar_file(zipped)
        noise = tmp_path / "noise.csv"
        noise.write_bytes(bytes(np.random.default_rng(0).integers(0, 256, 4096, dtype=np.uint8)))
        with pytest.raises(BarFileError, match="not a CSV or Parquet file"):
            read_bar_file(noise)

    def test_corrupt_parquet_is_refused(self, tmp_path):
        path = tmp_path / "broken.parquet"
        path.write_bytes(b"PAR1" + b"\x00" * 64)
        with pytest.raises(BarFileError, match="Parquet file cannot be read"):
            read_bar_file(path)

    def test_oversized_files_say_the_limit(self, tmp_path):
        path = tmp_path / "big.csv"
        path.write_bytes((FILES / "plain_bars.csv").read_bytes())
        with pytest.raises(BarFileError, match="over the 100 bytes limit"):
            read_bar_file(path, max_bytes=100)
        upload = io.BytesIO(path.read_bytes())
        with pytest.raises(BarFileError, match="over the 100 bytes limit"):
            read_bar_file(upload, max_bytes=100, origin="upload")

    @pytest.mark.parametrize("content, message", [
        (b"", "empty"),
        (b"\n\n  \n", "empty"),
        (b"Date,Open,High,Low,Close,Volume\n", "header but no data rows"),
    ])
    def test_empty_and_header_only_files(self, tmp_path, content, message):
        path = tmp_path / "f.csv"
        path.write_bytes(content)
        with pytest.raises(BarFileError, match=message):
            read_bar_file(path)

    def test_missing_columns_are_named(self, tmp_path):
        path = tmp_path / "f.csv"
        path.write_text("Date,Open,High,Close\n2024-01-01,1,2,1\n")
        with pytest.raises(BarFileError, match=r"missing column\(s\) low, volume \(found: Date, Open, High, Close\)"):
            read_bar_file(path)

    def test_undetectable_layout_lists_what_was_found(self, tmp_path):
        path = tmp_path / "f.csv"
        path.write_text("name,price,amount\nfoo,1,2\n")
        with pytest.raises(BarFileError, match="layout not recognised.*name, price, amount"):
            read_bar_file(path)

    def test_headerless_file_that_is_not_a_kline(self, tmp_path):
        path = tmp_path / "f.csv"
        path.write_text("1,2,3\n4,5,6\n")
        with pytest.raises(BarFileError, match="layout not recognised"):
            read_bar_file(path)

    def test_mixed_epoch_units_are_refused(self, tmp_path):
        path = tmp_path / "f.csv"
        path.write_text("1704067200,1,2,0.5,1,1\n1704070800000,1,2,0.5,1,1\n")
        with pytest.raises(BarValidationError, match="different units"):
            read_bar_file(path)

    def test_missing_file(self, tmp_path):
        with pytest.raises(BarFileError, match="no such file"):
            read_bar_file(tmp_path / "nope.csv")


def test_file_errors_are_validation_errors_so_callers_catch_one_type(tmp_path):
    path = tmp_path / "f.csv"
    path.write_text("")
    with pytest.raises(BarValidationError) as caught:
        read_bar_file(path)
    assert isinstance(caught.value, BarFileError) and caught.value.origin == "f.csv"
