"""validate_bars: the one gate between any source and the cache."""
from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from storage.sources.base import BAR_COLUMNS
from storage.validation import (
    OHLC_ROUNDING_TOLERANCE,
    BarValidationError,
    validate_and_repair,
    validate_bars,
)


def good_bars(n: int = 5, start: str = "2024-01-01", freq: str = "h", tz: str | None = "UTC") -> pd.DataFrame:
    close = 100.0 + np.arange(n, dtype=float)
    return pd.DataFrame(
        {
            "ts": pd.date_range(start, periods=n, freq=freq, tz=tz),
            "open": close - 0.5,
            "high": close + 1.0,
            "low": close - 1.0,
            "close": close,
            "volume": np.full(n, 10.0),
        }
    )


def problems_of(frame: pd.DataFrame, **kwargs) -> BarValidationError:
    with pytest.raises(BarValidationError) as caught:
        validate_bars(frame, "test.csv", **kwargs)
    return caught.value


class TestNormalisedOutput:
    def test_good_frame_comes_back_in_the_contract_shape(self):
        out = validate_bars(good_bars(), "test")
        assert tuple(out.columns) == BAR_COLUMNS
        assert str(out["ts"].dtype) == "datetime64[us, UTC]"
        assert all(out[c].dtype == np.float64 for c in BAR_COLUMNS[1:])
        assert out["ts"].is_monotonic_increasing and out["ts"].is_unique

    def test_extra_columns_are_dropped_and_integers_become_floats(self):
        frame = good_bars().assign(volume=lambda f: f["volume"].astype("int64"), adj_close=1.0, note="x")
        out = validate_bars(frame, "test")
        assert tuple(out.columns) == BAR_COLUMNS
        assert out["volume"].dtype == np.float64

    def test_unsorted_rows_are_sorted(self):
        frame = good_bars().iloc[[3, 0, 4, 1, 2]]
        out = validate_bars(frame, "test")
        expected = validate_bars(good_bars(), "test")
        pd.testing.assert_frame_equal(out, expected)

    def test_identical_duplicates_are_dropped(self):
        frame = pd.concat([good_bars(), good_bars().iloc[[1, 3]]])
        out = validate_bars(frame, "test")
        assert len(out) == 5

    def test_other_zones_are_converted_to_utc(self):
        frame = good_bars(tz="America/New_York")
        out = validate_bars(frame, "test")
        assert out["ts"].iloc[0] == pd.Timestamp("2024-01-01 05:00", tz="UTC")

    def test_naive_timestamps_are_taken_as_utc(self):
        out = validate_bars(good_bars(tz=None), "test")
        assert out["ts"].iloc[0] == pd.Timestamp("2024-01-01 00:00", tz="UTC")

    def test_timestamp_text_with_offsets_is_parsed(self):
        frame = good_bars(2).assign(ts=["2024-01-02 09:30:00-05:00", "2024-07-02 09:30:00-04:00"])
        out = validate_bars(frame, "test")
        assert list(out["ts"]) == [
            pd.Timestamp("2024-01-02 14:30", tz="UTC"),
            pd.Timestamp("2024-07-02 13:30", tz="UTC"),
        ]

    def test_numbers_written_as_text_are_accepted(self):
        frame = good_bars(2).astype({"open": str, "close": str})
        out = validate_bars(frame, "test")
        assert out["open"].tolist() == good_bars(2)["open"].tolist()

    def test_ts_as_index_is_accepted(self):
        out = validate_bars(good_bars().set_index("ts"), "test")
        assert len(out) == 5


class TestRejections:
    def test_message_names_origin_rule_and_row(self):
        frame = good_bars()
        frame.loc[2, "high"] = 50.0  # below low
        error = problems_of(frame)
        assert "test.csv" in str(error)
        assert "high below low" in str(error)
        assert "row 3" in str(error)  # 1-based data row

    def test_row_numbers_can_be_original_line_numbers(self):
        frame = good_bars()
        frame.loc[0, "volume"] = -1.0
        error = problems_of(frame, row_numbers=np.arange(5) + 2, row_label="line")
        assert "negative volume" in str(error) and "line 2" in str(error)

    def test_missing_columns_are_named(self):
        error = problems_of(good_bars().drop(columns=["low", "volume"]))
        assert "missing column(s) low, volume" in str(error)

    def test_empty_and_header_only_inputs(self):
        assert "no columns" in str(problems_of(pd.DataFrame()))
        assert "no data rows" in str(problems_of(good_bars().iloc[0:0]))

    def test_non_numeric_text_shows_value_and_row(self):
        frame = good_bars().astype({"close": object})
        frame.loc[3, "close"] = "12,5O"
        error = problems_of(frame)
        assert "non-numeric text in close" in str(error)
        assert "'12,5O'" in str(error) and "row 4" in str(error)

    def test_nan_and_infinite_values(self):
        frame = good_bars()
        frame.loc[1, "open"] = np.nan
        frame.loc[2, "volume"] = np.inf
        error = problems_of(frame)
        assert set(error.rules) >= {"missing value (NaN) in open", "infinite value in volume"}

    def test_non_positive_prices(self):
        frame = good_bars()
        frame.loc[0, ["open", "low"]] = [0.0, -1.0]
        assert "non-positive price" in problems_of(frame).rules

    def test_open_and_close_outside_the_range(self):
        frame = good_bars()
        frame.loc[1, "open"] = 500.0
        frame.loc[4, "close"] = 1.0
        rules = problems_of(frame).rules
        assert "open outside [low, high]" in rules and "close outside [low, high]" in rules

    def test_conflicting_duplicate_timestamps(self):
        clash = good_bars().iloc[[2]].assign(close=lambda f: f["close"] + 0.25)
        error = problems_of(pd.concat([good_bars(), clash]))
        assert "duplicate timestamp with different values" in str(error)
        assert "2024-01-01T02:00:00+00:00" in str(error)

    def test_mixed_aware_and_naive_timestamps(self):
        frame = good_bars(3).assign(ts=["2024-01-01 00:00+00:00", "2024-01-01 01:00", "2024-01-01 02:00+00:00"])
        error = problems_of(frame)
        assert "mixed zone-aware and naive timestamps" in str(error) and "row 2" in str(error)

    def test_mixed_aware_and_naive_timestamp_objects(self):
        stamps = [pd.Timestamp("2024-01-01", tz="UTC"), pd.Timestamp("2024-01-01 01:00"),
                  pd.Timestamp("2024-01-01 02:00", tz="UTC")]
        error = problems_of(good_bars(3).assign(ts=pd.Series(stamps, dtype=object)))
        assert "mixed zone-aware and naive timestamps" in error.rules

    def test_unreadable_and_missing_timestamps(self):
        frame = good_bars(3).assign(ts=["2024-01-01", "yesterday", None])
        rules = problems_of(frame).rules
        assert "unreadable timestamp" in rules and "missing timestamp" in rules

    def test_numeric_ts_is_refused_with_a_hint(self):
        frame = good_bars().assign(ts=np.arange(5) * 3600 + 1_700_000_000)
        assert "unix epochs" in str(problems_of(frame))

    def test_several_problems_in_one_readable_message(self):
        frame = good_bars(20)
        frame.loc[1, "high"] = 1.0
        frame.loc[5, "volume"] = -5.0
        frame.loc[[7, 8, 9, 10, 11], "open"] = np.nan
        error = problems_of(frame)
        message = str(error)
        assert len(error.problems) >= 3
        assert "5 rows" in message and "; ..." in message  # counted, only a few quoted
        assert len(message.splitlines()) <= 7


class TestFloatRounding:
    """yfinance's auto_adjust leaves close or open one ulp outside [low, high]: repaired and counted, not refused."""

    def test_the_tolerance_is_eight_float64_epsilons_relative(self):
        assert OHLC_ROUNDING_TOLERANCE == 8 * np.finfo(np.float64).eps

    def test_close_one_ulp_above_high_and_open_one_ulp_below_low_are_repaired_and_counted(self):
        frame = good_bars()
        frame.loc[1, "close"] = np.nextafter(frame.loc[1, "high"], np.inf)
        frame.loc[3, "open"] = np.nextafter(frame.loc[3, "low"], 0.0)
        checked = validate_and_repair(frame, "spy.csv", row_numbers=np.arange(5) + 2, row_label="line")

        assert checked.rounding_repairs == 2
        bars = checked.bars
        assert bars.loc[1, "high"] == frame.loc[1, "close"] and bars.loc[3, "low"] == frame.loc[3, "open"]
        assert (bars[["open", "close"]].max(axis=1) <= bars["high"]).all()
        assert (bars[["open", "close"]].min(axis=1) >= bars["low"]).all()
        assert checked.repaired_examples[0].startswith("line 3 (close=") and "> high=" in checked.repaired_examples[0]
        assert "line 5 (open=" in checked.repaired_examples[1] and "< low=" in checked.repaired_examples[1]

    def test_a_flat_bar_whose_high_is_an_ulp_below_its_low_is_widened_to_contain_all_four_prices(self):
        frame = good_bars(3)
        frame.loc[0, ["open", "high", "low", "close"]] = 100.0
        frame.loc[0, "high"] = np.nextafter(100.0, 0.0)
        checked = validate_and_repair(frame, "test")
        assert checked.rounding_repairs == 1
        bar = checked.bars.loc[0]
        assert (bar["high"], bar["low"]) == (100.0, np.nextafter(100.0, 0.0))

    def test_a_few_ulps_still_count_as_rounding_but_a_real_violation_is_refused_with_exact_values(self):
        within, beyond = good_bars(), good_bars()
        high = within.loc[2, "high"]
        within.loc[2, "close"] = high * (1 + 4 * np.finfo(np.float64).eps)
        beyond.loc[2, "close"] = high * (1 + 1e-12)  # ~4,500 ulps: more than rounding, however small
        assert validate_and_repair(within, "test").rounding_repairs == 1

        error = problems_of(beyond, row_numbers=np.arange(5) + 2, row_label="line")
        assert error.rules == ("close outside [low, high]",)
        assert f"line 4 (close={float(beyond.loc[2, 'close'])!r}, low=101.0 high={float(high)!r})" in str(error)

    def test_the_plain_function_repairs_too(self):
        frame = good_bars()
        frame.loc[0, "close"] = np.nextafter(frame.loc[0, "high"], np.inf)
        assert validate_bars(frame, "test").loc[0, "high"] == frame.loc[0, "close"]

    def test_identical_duplicates_are_counted(self):
        checked = validate_and_repair(pd.concat([good_bars(), good_bars().iloc[[1, 3]]]), "test")
        assert (len(checked.bars), checked.duplicates_dropped, checked.rounding_repairs) == (5, 2, 0)


def test_a_million_rows_validate(benchmark_rows=1_000_000):
    """Correctness at scale (the speed is measured by tests/storage/bench_sources.py, not asserted)."""
    n = benchmark_rows
    rng = np.random.default_rng(0)
    close = 100 * np.exp(np.cumsum(rng.normal(0, 1e-3, n)))
    open_ = np.r_[close[0], close[:-1]]
    frame = pd.DataFrame(
        {
            "ts": pd.date_range("2000-01-01", periods=n, freq="min", tz="UTC"),
            "open": open_,
            "high": np.maximum(open_, close) * 1.001,
            "low": np.minimum(open_, close) * 0.999,
            "close": close,
            "volume": rng.uniform(1, 10, n),
        }
    )
    frame.loc[n - 10, "low"] = frame.loc[n - 10, "high"] * 2
    with pytest.raises(BarValidationError) as caught:
        validate_bars(frame, "big")
    assert f"row {n - 9}" in str(caught.value)
