"""read_bar_file: every layout people upload, and a clear refusal for everything else."""
from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from storage.sources.base import BAR_COLUMNS
from storage.sources.files import BarFileError, read_bar_file
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
