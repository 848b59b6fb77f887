"""Imports are bounded by what a file holds (rows, columns, line length, uncompressed Parquet columns), checked
before the data is decoded, and read in batches whose joins are checked like the rows inside one batch."""
from __future__ import annotations

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from storage import cache
from storage.refresh import RefreshRequest, run_refresh
from storage.sources import files
from storage.sources.files import (
    MAX_COLUMNS,
    MAX_ROWS,
    BarFileError,
    limits_text,
    load_bar_file,
)
from storage.validation import BarValidationError
from tests.storage.helpers_bars import make_bars


def constant_parquet(path, rows: int, row_group: int = 1_000_000) -> None:
    """rows identical bars, written a row group at a time: a few MB of memory, a few KB on disk."""
    size = min(rows, row_group)
    group = pa.table({
        "ts": pa.array(np.full(size, 1_704_067_200_000_000, dtype="int64")).cast(pa.timestamp("us", tz="UTC")),
        **{name: pa.array(np.full(size, 100.0)) for name in ("open", "high", "low", "close", "volume")},
    })
    with pq.ParquetWriter(path, group.schema, compression="zstd") as writer:
        for start in range(0, rows, size):
            writer.write_table(group.slice(0, min(size, rows - start)))


def plain_csv(bars: pd.DataFrame) -> str:
    return bars.assign(ts=bars["ts"].dt.strftime("%Y-%m-%dT%H:%M:%SZ")).to_csv(index=False)


class TestParquetFromItsFooter:
    def test_a_parquet_bomb_is_refused_from_its_metadata_before_anything_is_decompressed(self, tmp_path):
        bomb = tmp_path / "bomb.parquet"
        constant_parquet(bomb, 3 * MAX_ROWS)
        assert bomb.stat().st_size < 200_000  # 6 million rows in a hundred KB or so

        with pytest.raises(BarFileError) as caught:
            load_bar_file(bomb)
        message = str(caught.value)
        assert message.startswith(f"bomb.parquet: the file holds {3 * MAX_ROWS:,} rows (its metadata says; nothing was")
        assert f"over the {MAX_ROWS:,}-row import limit" in message and limits_text() in message

    def test_columns_too_large_uncompressed_are_refused(self, tmp_path, monkeypatch):
        path = tmp_path / "big.parquet"
        make_bars(20_000).to_parquet(path)
        monkeypatch.setattr(files, "MAX_UNCOMPRESSED_BYTES", 100_000)
        with pytest.raises(BarFileError, match=r"uncompressed \(its metadata says\), over the 100000 bytes limit"):
            load_bar_file(path)

    def test_a_parquet_file_with_too_many_columns_is_refused(self, tmp_path):
        path = tmp_path / "wide.parquet"
        frame = make_bars(3)
        for i in range(MAX_COLUMNS):
            frame[f"extra_{i}"] = 0.0
        frame.to_parquet(path)
        with pytest.raises(BarFileError, match=f"has {MAX_COLUMNS + 6} columns, over the {MAX_COLUMNS}-column limit"):
            load_bar_file(path)

    def test_a_parquet_file_cut_short_is_refused(self, tmp_path):
        path = tmp_path / "cut.parquet"
        make_bars(50).to_parquet(path)
        path.write_bytes(path.read_bytes()[:-100])
        with pytest.raises(BarFileError, match="no Parquet footer"):
            load_bar_file(path)

    def test_a_repeated_text_value_stays_encoded_once(self, tmp_path):
        # A dictionary-encoded symbol column repeated in every row is read without spelling it out per row.
        path = tmp_path / "symbol.parquet"
        make_bars(1_000).assign(symbol="SPY").to_parquet(path)
        assert load_bar_file(path).file_symbol == "SPY"


class TestCsvBeforeParsing:
    def test_a_wide_file_is_refused_on_its_header_line(self, tmp_path):
        path = tmp_path / "wide.csv"
        names = ["ts", "open", "high", "low", "close", "volume"] + [f"x{i}" for i in range(200_000)]
        path.write_text(",".join(names) + "\n2024-01-01,1,2,0.5,1.5,1" + ",0" * 200_000 + "\n")
        with pytest.raises(BarFileError) as caught:
            load_bar_file(path)
        assert "the first line has more than" in str(caught.value)
        assert f"over the {MAX_COLUMNS}-column limit" in str(caught.value)

    def test_a_header_just_over_the_column_limit_states_its_count(self, tmp_path):
        path = tmp_path / "wide.csv"
        names = ["ts", "open", "high", "low", "close", "volume"] + [f"x{i}" for i in range(MAX_COLUMNS - 5)]
        path.write_text(",".join(names) + "\n")
        with pytest.raises(BarFileError, match=f"the first line has {MAX_COLUMNS + 1} columns"):
            load_bar_file(path)

    def test_a_line_longer_than_the_limit_is_refused_with_its_number(self, tmp_path):
        path = tmp_path / "long.csv"
        path.write_text("ts,open,high,low,close,volume,note\n2024-01-01,1,2,0.5,1.5,1,ok\n"
                        f"2024-01-02,1,2,0.5,1.5,1,{'x' * 5000}\n")
        with pytest.raises(BarFileError, match="line 3 is over 4,096 characters long"):
            load_bar_file(path)

    def test_a_line_with_more_fields_than_the_header_is_refused_not_cut(self, tmp_path):
        path = tmp_path / "thousands.csv"
        path.write_text("ts,open,high,low,close,volume\n2024-01-01,1,2,0.5,1.5,1\n2024-01-02,1,2,0.5,1,500.5,1\n")
        with pytest.raises(BarFileError, match="line 3 has 7 fields, more than the 6 of the header"):
            load_bar_file(path)

    def test_a_delimiter_ending_every_line_is_an_empty_field_not_a_shift(self, tmp_path):
        path = tmp_path / "broker.csv"
        path.write_bytes(b"ts,open,high,low,close,volume\r\n2024-01-01,1,2,0.5,1.5,1,\r\n2024-01-02,1,2,0.5,1.5,1,\r\n")
        assert len(load_bar_file(path).bars) == 2

    @pytest.mark.parametrize("block", [3, 5, 64])
    def test_the_scan_gives_the_same_answer_whatever_its_block_size(self, tmp_path, monkeypatch, block):
        monkeypatch.setattr(files, "SCAN_BYTES", block)
        monkeypatch.setattr(files, "MAX_LINE_LENGTH", 40)
        good = tmp_path / "good.csv"
        good.write_bytes(b"ts,open,high,low,close,volume\r\n2024-01-01,1,2,0.5,1.5,1,\r\n2024-01-02,1,2,0.5,1.5,1")
        assert len(load_bar_file(good).bars) == 2
        wide = tmp_path / "wide.csv"
        wide.write_bytes(b"ts,open,high,low,close,volume\n2024-01-01,1,2,0.5,1.5,1\n2024-01-02,1,2,0.5,1,5,1")
        with pytest.raises(BarFileError, match="line 3 has 7 fields"):
            load_bar_file(wide)
        long = tmp_path / "long.csv"
        long.write_bytes(b"ts,open,high,low,close,volume\n2024-01-01,1,2,0.5,1.5,1\n2024-01-02,1,2,0.5,1.5,1" + b"0" * 30)
        with pytest.raises(BarFileError, match="line 3 is over 40 characters long"):
            load_bar_file(long)

    def test_quoted_fields_may_hold_the_delimiter(self, tmp_path):
        path = tmp_path / "quoted.csv"
        path.write_text('ts,open,high,low,close,volume,note\n2024-01-01,1,2,0.5,1.5,1,"a, b"\n')
        assert len(load_bar_file(path).bars) == 1

    def test_too_many_rows_are_refused_while_reading(self, tmp_path, monkeypatch):
        monkeypatch.setattr(files, "MAX_ROWS", 1_000)
        path = tmp_path / "long.csv"
        path.write_text(plain_csv(make_bars(1_500, freq="1min")))
        with pytest.raises(BarFileError, match="holds more than 1,000 rows, over the 1,000-row import limit"):
            load_bar_file(path)

    def test_only_the_columns_of_the_layout_are_read(self, tmp_path, monkeypatch):
        seen = []
        real_read_csv = pd.read_csv

        def spy(*args, **kwargs):
            seen.append(kwargs.get("usecols"))
            return real_read_csv(*args, **kwargs)

        monkeypatch.setattr(files.pd, "read_csv", spy)
        path = tmp_path / "klines.csv"
        bars = make_bars(5)
        extra = bars.assign(**{f"extra_{i}": "some text" for i in range(20)})
        extra.assign(ts=bars["ts"].dt.strftime("%Y-%m-%dT%H:%M:%SZ")).to_csv(path, index=False)
        assert len(load_bar_file(path).bars) == 5
        assert seen == [[0, 1, 2, 3, 4, 5]]


class TestBatches:
    """A file is read CHUNK_ROWS rows at a time; what must agree across the whole file is checked across batches."""

    @pytest.fixture(autouse=True)
    def small_batches(self, monkeypatch):
        monkeypatch.setattr(files, "CHUNK_ROWS", 7)

    def test_batches_give_the_same_bars_as_one_read(self, tmp_path, monkeypatch):
        path = tmp_path / "bars.csv"
        bars = make_bars(100)
        path.write_text(plain_csv(bars.sample(frac=1.0, random_state=1)))  # shuffled: sorted once at the end
        batched = load_bar_file(path).bars
        monkeypatch.setattr(files, "CHUNK_ROWS", 10_000)
        pd.testing.assert_frame_equal(batched, load_bar_file(path).bars)
        pd.testing.assert_frame_equal(batched, bars, check_exact=False, rtol=1e-12)

    def test_a_duplicate_in_another_batch_with_other_values_names_both_lines(self, tmp_path):
        bars = make_bars(30)
        twin = bars.iloc[[3]].assign(close=bars["close"].iloc[3] * 1.0001, high=bars["high"].iloc[3] * 1.01)
        path = tmp_path / "dupes.csv"
        path.write_text(plain_csv(pd.concat([bars, twin])))
        with pytest.raises(BarValidationError, match=r"duplicate timestamp with different values.* at lines 5 and 32"):
            load_bar_file(path)

    def test_an_identical_duplicate_in_another_batch_is_dropped_and_counted(self, tmp_path):
        bars = make_bars(30)
        path = tmp_path / "dupes.csv"
        path.write_text(plain_csv(pd.concat([bars, bars.iloc[[3]]])))
        loaded = load_bar_file(path)
        assert (len(loaded.bars), loaded.duplicates_dropped, loaded.rows_read) == (30, 1, 31)

    def test_problems_are_counted_over_every_batch(self, tmp_path):
        bars = make_bars(40)
        bars.loc[[2, 25, 33], "volume"] = -1.0
        path = tmp_path / "bad.csv"
        path.write_text(plain_csv(bars))
        with pytest.raises(BarValidationError) as caught:
            load_bar_file(path)
        assert "negative volume: 3 rows, e.g. line 4 (volume=-1.0); line 27 (volume=-1.0); line 35" in str(caught.value)

    def test_unix_time_units_must_agree_between_batches(self, tmp_path):
        seconds = [f"{1_704_067_200 + 3600 * i},1,2,0.5,1.5,1" for i in range(7)]  # the first batch
        millis = [f"{(1_704_067_200 + 3600 * i) * 1000},1,2,0.5,1.5,1" for i in range(7, 14)]  # the second
        path = tmp_path / "klines.csv"
        path.write_text("\n".join(seconds + millis) + "\n")
        with pytest.raises(BarValidationError, match=r"time column changes from unix s \(from line 1\) to unix ms"):
            load_bar_file(path)

    def test_the_day_month_order_of_the_first_batch_holds_for_the_rest(self, tmp_path):
        first_batch = [f"{d}/01/2021" for d in range(13, 20)]  # a day above 12: day-first
        second_batch = ["01/02/2021", "02/02/2021", "03/02/2021", "02/25/2021"]  # only the last one tells: month-first
        rows = [f"{date},1,2,0.5,1.5,1" for date in first_batch + second_batch]
        path = tmp_path / "dates.csv"
        path.write_text("Date,Open,High,Low,Close,Volume\n" + "\n".join(rows) + "\n")
        with pytest.raises(BarValidationError, match=r"a date that is not day-first: line 12 '02/25/2021'"):
            load_bar_file(path)

    def test_a_second_symbol_in_a_later_batch_is_refused(self, tmp_path):
        bars = make_bars(20).assign(symbol="SPY")
        bars.loc[15, "symbol"] = "QQQ"
        path = tmp_path / "two.csv"
        path.write_text(plain_csv(bars))
        with pytest.raises(BarFileError, match=r"holds 2 symbols in its symbol column \(QQQ, SPY\)"):
            load_bar_file(path)

    def test_a_bad_row_in_the_last_batch_changes_nothing_in_the_cache(self, tmp_path, db_path):
        first = make_bars(50, freq="1h", seed=1)
        good = tmp_path / "good.csv"
        good.write_text(plain_csv(first))
        request = RefreshRequest(symbols=("BTC",), interval="1h", source="csv", path=good, db_path=db_path)
        assert run_refresh(request).ok
        before = cache.read_bars("BTC", "1h", "csv", db_path=db_path)

        more = make_bars(60, start="2024-01-03 02:00", freq="1h", seed=2)
        more.loc[58, "low"] = more.loc[58, "high"] * 2  # high below low, in the ninth batch of seven rows
        bad = tmp_path / "bad.csv"
        bad.write_text(plain_csv(more))
        (result,) = run_refresh(RefreshRequest(symbols=("BTC",), interval="1h", source="csv", path=bad,
                                               db_path=db_path)).results
        assert result.outcome == "error" and "high below low: 1 row, e.g. line 60" in result.message
        pd.testing.assert_frame_equal(cache.read_bars("BTC", "1h", "csv", db_path=db_path), before)
