"""What a careless or hostile file does now: encodings, duplicated headers, day/month dates, implausible values."""
from __future__ import annotations


import pandas as pd
import pytest

from storage import cache
from storage.importing import MAX_LOG_RETURN
from storage.refresh import RefreshRequest, run_refresh
from storage.sources.files import BarFileError, load_bar_file
from storage.validation import BarValidationError
from tests.storage.helpers_bars import make_bars

PLAIN = "ts,open,high,low,close,volume\n2024-01-01,1,2,0.5,1.5,1\n2024-01-02,1,2,0.5,1.5,1\n"


def import_file(db_path, path, symbol="SPY", interval="1d", **options):
    request = RefreshRequest(symbols=(symbol,), interval=interval, source="csv", path=path, db_path=db_path, **options)
    (result,) = run_refresh(request).results
    return result


def day_month_file(tmp_path, days, month="01", name="dates.csv"):
    path = tmp_path / name
    rows = "".join(f"{day:02d}/{month}/2021,100,101,99,100.5,1000\n" for day in days)
    path.write_text("Date,Open,High,Low,Close,Volume\n" + rows)
    return path


class TestEncodings:
    @pytest.mark.parametrize("encoding", ["utf-16", "utf-8-sig"])
    def test_utf16_and_utf8_with_a_byte_order_mark_are_read(self, encoding):
        loaded = load_bar_file(PLAIN.encode(encoding), origin="excel.csv")
        assert len(loaded.bars) == 2 and loaded.encoding == encoding
        assert loaded.time_column == "ts"  # the mark is not part of the first column's name

    @pytest.mark.parametrize("encoding, what", [
        ("utf-16-le", "UTF-16 text without a byte-order mark"),
        ("utf-32", "UTF-32 text"),
    ])
    def test_other_unicode_files_are_refused_with_save_as_utf8(self, encoding, what):
        with pytest.raises(BarFileError, match=f"{what}: save it as UTF-8"):
            load_bar_file(PLAIN.encode(encoding), origin="excel.csv")

    def test_a_windows_cp1252_file_is_still_read(self):
        text = "ts,open,high,low,close,volume,note\n2024-01-01,1,2,0.5,1.5,1,Kurs in €\n"
        loaded = load_bar_file(text.encode("cp1252"), origin="kurse.csv")
        assert len(loaded.bars) == 1 and loaded.encoding == "cp1252"


class TestHeaders:
    def test_a_duplicated_close_column_is_refused_naming_it(self):
        data = b"Date,Open,High,Low,Close,Close,Volume\n2024-01-02,1,2,0.5,1.5,1.4,10\n"
        with pytest.raises(BarFileError, match=r"the header names 'Close' twice \(columns 5, 6\): keep one of them"):
            load_bar_file(data, origin="twice.csv")

    def test_a_duplicated_column_the_import_does_not_use_is_harmless(self):
        data = b"ts,open,high,low,close,volume,note,note\n2024-01-01,1,2,0.5,1.5,1,a,b\n"
        assert len(load_bar_file(data, origin="notes.csv").bars) == 1


class TestDayMonthDates:
    def test_day_first_dates_are_read_as_days_and_the_report_says_so(self, db_path, tmp_path):
        path = day_month_file(tmp_path, range(4, 14))  # 04/01 .. 13/01: the 13 says the first field is the day
        result = import_file(db_path, path, "SPY", "1d")
        assert result.outcome == "ok", result.message
        stored = cache.read_bars("SPY", "1d", "csv", db_path=db_path)
        assert list(stored["ts"].dt.month.unique()) == [1]  # January, not April to December
        assert result.import_report.date_order == "day-first (line 11: '13/01/2021')"
        assert "date order:       day-first (line 11: '13/01/2021')" in result.import_report.lines()
        assert result.import_report.time_column == "Date (text, day-first)"

    def test_month_first_dates_are_read_as_months(self, tmp_path):
        path = tmp_path / "us.csv"
        path.write_text("Date,Open,High,Low,Close,Volume\n" + "".join(
            f"01/{day:02d}/2021,100,101,99,100.5,1000\n" for day in range(4, 14)))
        loaded = load_bar_file(path)
        assert loaded.bars["ts"].iloc[-1] == pd.Timestamp("2021-01-13", tz="UTC")
        assert loaded.date_order.startswith("month-first")

    def test_dates_that_cannot_tell_their_order_are_refused_with_the_fix(self, db_path, tmp_path):
        path = day_month_file(tmp_path, range(4, 13))  # 04/01 .. 12/01: every field is 12 or less
        result = import_file(db_path, path, "SPY", "1d")
        assert result.outcome == "error"
        assert "ambiguous dates: day/month order cannot be told" in result.message
        assert "line 2 '04/01/2021' is 4 January or April 1" in result.message
        assert "write ISO dates" in result.message and "--date-format day-first" in result.message
        assert not cache.has_bars(db_path)

    def test_the_order_can_be_told(self, db_path, tmp_path):
        path = day_month_file(tmp_path, range(4, 13))
        result = import_file(db_path, path, "SPY", "1d", date_format="day-first")
        assert result.outcome == "ok", result.message
        assert result.import_report.date_order == "day-first (as told)"
        assert cache.read_bars("SPY", "1d", "csv", db_path=db_path)["ts"].iloc[0] == pd.Timestamp("2021-01-04", tz="UTC")

    def test_a_strptime_format_can_be_told(self, tmp_path):
        path = day_month_file(tmp_path, range(4, 13))
        loaded = load_bar_file(path, date_format="%d/%m/%Y")
        assert loaded.bars["ts"].iloc[-1] == pd.Timestamp("2021-01-12", tz="UTC")

    def test_both_orders_in_one_file_are_refused(self, tmp_path):
        path = tmp_path / "mixed.csv"
        path.write_text("Date,Open,High,Low,Close,Volume\n13/01/2021,1,2,0.5,1.5,1\n01/14/2021,1,2,0.5,1.5,1\n")
        with pytest.raises(BarValidationError, match=r"dates in both day/month orders: line 2 '13/01/2021' has a day "
                                                     r"first, line 3 '01/14/2021' a month first"):
            load_bar_file(path)


class TestImplausibleValues:
    @pytest.mark.parametrize("first_date", ["0001-01-03", "1900-01-02", "1969-12-31"])
    def test_bars_before_1970_are_refused(self, db_path, tmp_path, first_date):
        path = tmp_path / "old.csv"
        make_bars(5, start=first_date, freq="1D").to_csv(path, index=False)
        result = import_file(db_path, path, "SPY", "1d")
        assert result.outcome == "error" and "open before 1970-01-01" in result.message
        assert not cache.has_bars(db_path)

    def test_crypto_before_2009_is_refused_and_equities_are_not(self, db_path, tmp_path):
        path = tmp_path / "early.csv"
        make_bars(30, start="2008-06-01", freq="1D").to_csv(path, index=False)
        btc = import_file(db_path, path, "BTC-USD", "1d")
        assert btc.outcome == "error" and "BTC-USD is a crypto asset, and none traded before 2009" in btc.message
        assert import_file(db_path, path, "IBM", "1d").outcome == "ok"

    @pytest.mark.parametrize("price, rule", [
        (1e308, r"price above 1e\+09"), (1e-9, r"price below 1e-08"), (-1.0, "non-positive"),
        # A subnormal may be read as 0.0 by the CSV parser (its float path underflows): refused either way.
        (1e-320, r"price below 1e-08|non-positive price"),
    ], ids=["1e308", "1e-9", "-1", "1e-320"])
    def test_absurd_prices_are_refused(self, price, rule):
        data = f"ts,open,high,low,close,volume\n2024-01-01,{price},{price},{price},{price},1\n".encode()
        with pytest.raises(BarValidationError, match=rule):
            load_bar_file(data, origin="absurd.csv")

    def test_a_huge_one_bar_move_is_flagged_in_the_report_and_kept(self, db_path, tmp_path):
        bars = make_bars(48, freq="1h", seed=3)
        bars.loc[20:, ["open", "high", "low", "close"]] *= 100  # cents from bar 20 on: log return 4.6
        path = tmp_path / "cents.csv"
        bars.to_csv(path, index=False)
        result = import_file(db_path, path, "BTC", "1h")
        report = result.import_report
        assert result.outcome == "ok" and report.rows_kept == 48 and report.jumps_flagged == 1
        assert report.first_jumps[0].startswith("2024-01-01 20:00 UTC: close")
        assert f"warned: one-bar |log return| > {MAX_LOG_RETURN:g}" in report.plausibility
        assert "refused: bars before 1970" in report.plausibility
        assert "1 implausibly large one-bar moves flagged" in result.message

    def test_the_bound_is_configurable(self, db_path, tmp_path):
        bars = make_bars(48, freq="1h", seed=3)
        bars.loc[20:, ["open", "high", "low", "close"]] *= 2  # log return 0.69
        path = tmp_path / "double.csv"
        bars.to_csv(path, index=False)
        assert import_file(db_path, path, "BTC", "1h").import_report.jumps_flagged == 0
        assert import_file(db_path, path, "ETH", "1h", max_log_return=0.5).import_report.jumps_flagged == 1
