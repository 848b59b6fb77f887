"""storage.sessions: which calendar a file's market keeps, its bar spacing, unfinished last bars, missing sessions."""
from __future__ import annotations

import pandas as pd
import pytest

from storage.sessions import (
    AROUND_THE_CLOCK,
    NYSE,
    IntervalMismatchError,
    MarketHours,
    check_spacing,
    count_missing,
    looks_like_crypto,
    market_hours,
    partial_last_bar,
    period_end,
    session_dates,
)

NYSE_HOURS = MarketHours(NYSE, "test")
ALL_DAY = MarketHours(AROUND_THE_CLOCK, "test")


def utc(text: str) -> pd.Timestamp:
    return pd.Timestamp(text, tz="UTC")


def stamps(*texts: str) -> pd.Series:
    return pd.Series([utc(t) for t in texts])


def nyse_days(first: str, last: str, stamp_hour: int = 0, skip: tuple[str, ...] = ()) -> pd.Series:
    """Weekday dates first..last without the January 2024 holidays, stamped at stamp_hour UTC."""
    days = pd.bdate_range(first, last)
    days = days[~days.isin(pd.to_datetime(["2024-01-01", "2024-01-15", *skip]))]
    return pd.Series(days.tz_localize("UTC") + pd.Timedelta(hours=stamp_hour))


def hourly_sessions(*days: str) -> pd.Series:
    """Yahoo-style hourly bars: 09:30 .. 15:30 New York on each day."""
    opens = [pd.Timestamp(f"{d} 09:30", tz="America/New_York") + pd.Timedelta(hours=k) for d in days for k in range(7)]
    return pd.Series(opens).dt.tz_convert("UTC")


class TestMarketHours:
    def test_weekdays_only_over_several_weeks_is_the_nyse(self):
        hours = market_hours(nyse_days("2024-01-02", "2024-01-31"), "1d", "BTC")  # the data wins over the name
        assert hours.calendar == NYSE and "no bars on the" in hours.basis

    def test_bars_on_weekends_are_a_market_that_never_closes(self):
        every_day = pd.Series(pd.date_range("2024-01-01", "2024-01-31", freq="D", tz="UTC"))
        hours = market_hours(every_day, "1d", "SPY")
        assert hours.around_the_clock and "NYSE is closed" in hours.basis

    def test_a_file_without_a_closed_day_is_judged_by_its_symbol(self):
        three_days = nyse_days("2024-01-02", "2024-01-04")
        assert market_hours(three_days, "1d", "BTC-USD").around_the_clock
        assert market_hours(three_days, "1d", "AAPL").calendar == NYSE

    def test_one_stray_holiday_row_in_a_long_equity_file_stays_the_nyse(self):
        days = nyse_days("2024-01-02", "2024-02-16")  # 32 sessions: one stray row is 3% of the bars
        with_stray = pd.concat([days, stamps("2024-01-15")]).sort_values().reset_index(drop=True)
        assert market_hours(with_stray, "1d", "SPY").calendar == NYSE
        missing = count_missing(with_stray, "1d", NYSE_HOURS)
        assert missing.bars_on_closed_days == 1 and missing.first_closed_days == ("2024-01-15",)

    @pytest.mark.parametrize("symbol, crypto", [
        ("BTC", True), ("BTC-USD", True), ("BTCUSDT", True), ("ETH/USDT", True), ("XBTUSD", True),
        ("SPY", False), ("AAPL", False), ("BRK.B", False), ("^GSPC", False), ("ES=F", False),
    ])
    def test_crypto_symbols(self, symbol, crypto):
        assert looks_like_crypto(symbol) is crypto


def test_daily_stamps_of_every_vendor_fall_on_their_trading_date():
    utc_midnight, new_york_midnight, at_the_open = utc("2024-03-11"), utc("2024-03-11 04:00"), utc("2024-03-11 13:30")
    dates = session_dates(pd.Series([utc_midnight, new_york_midnight, at_the_open]), "1d")
    assert [str(d) for d in dates] == ["2024-03-11"] * 3
    evening = session_dates(stamps("2024-03-11 23:30"), "1h")  # an after-hours bar: 19:30 in New York
    assert str(evening[0]) == "2024-03-11"


class TestSpacing:
    def test_daily_bars_with_weekends_are_one_day_apart(self):
        assert check_spacing(nyse_days("2024-01-02", "2024-01-31"), "1d", "spy.csv").startswith("median 1 day")

    def test_hourly_session_bars_ignore_the_nights(self):
        bars = hourly_sessions("2024-01-11", "2024-01-12", "2024-01-16")
        assert check_spacing(bars, "1h", "spy.csv") == "median 1 h within sessions, over 18 gaps"

    def test_a_daily_file_imported_as_hourly_is_refused_with_what_the_data_looks_like(self):
        with pytest.raises(IntervalMismatchError) as caught:
            check_spacing(nyse_days("2024-01-02", "2024-01-31"), "1h", "spy.csv")
        assert str(caught.value) == "spy.csv: bars are 1 day apart (median), not 1h: import with --interval 1d"

    def test_hourly_bars_imported_as_30_minutes_or_4_hours_are_refused(self):
        bars = hourly_sessions("2024-01-11", "2024-01-12")
        for claimed in ("30m", "4h"):
            with pytest.raises(IntervalMismatchError, match=f"bars are 1 h apart \\(median\\), not {claimed}: import"):
                check_spacing(bars, claimed, "spy.csv")

    def test_a_spacing_that_is_no_supported_interval_says_so(self):
        two_minutes = pd.Series(pd.date_range("2024-01-01", periods=50, freq="2min", tz="UTC"))
        with pytest.raises(IntervalMismatchError, match="2 min apart .* none of the supported intervals"):
            check_spacing(two_minutes, "1m", "btc.csv")

    def test_a_single_bar_is_not_checked(self):
        assert check_spacing(stamps("2024-01-02"), "1d", "x.csv") == "not checked: a single bar"


class TestPartialLastBar:
    def test_a_daily_crypto_bar_of_today_is_not_over(self):
        days = pd.Series(pd.date_range("2024-03-01", "2024-03-10", freq="D", tz="UTC"))
        partial, note = partial_last_bar(days, "1d", ALL_DAY, None, now=utc("2024-03-10 15:00"))
        assert partial is not None and note is None
        assert partial.describe() == (
            "2024-03-10 00:00 UTC dropped: its period ends 2024-03-11 00:00 UTC, after now (2024-03-10 15:00 UTC)"
        )
        assert partial_last_bar(days, "1d", ALL_DAY, None, now=utc("2024-03-11 00:00"))[0] is None

    def test_a_daily_equity_bar_ends_at_the_close_and_the_file_time_bounds_what_it_could_hold(self):
        days = nyse_days("2024-01-02", "2024-01-31")
        saved_before_close = utc("2024-01-31 18:00")
        partial, _ = partial_last_bar(days, "1d", NYSE_HOURS, saved_before_close, now=utc("2024-06-01"))
        assert partial is not None and partial.period_end == utc("2024-01-31 21:00") and partial.reference_is_file_time
        saved_after_close = utc("2024-01-31 21:05")
        assert partial_last_bar(days, "1d", NYSE_HOURS, saved_after_close, now=utc("2024-06-01"))[0] is None

    def test_a_file_time_before_the_last_bar_opens_is_not_believed(self):
        days = nyse_days("2024-01-02", "2024-01-31")
        partial, note = partial_last_bar(days, "1d", NYSE_HOURS, utc("2023-12-01"), now=utc("2024-06-01"))
        assert partial is None and "before its last bar opens: not used" in note

    def test_a_bar_that_opens_after_now_is_not_partial_but_left_to_be_refused(self):
        days = pd.Series(pd.date_range("2024-03-01", "2024-03-10", freq="D", tz="UTC"))
        assert partial_last_bar(days, "1d", ALL_DAY, None, now=utc("2024-03-09 12:00")) == (None, None)

    def test_the_last_hourly_bar_of_an_early_close_ends_at_the_close(self):
        # 2024-11-29, the day after Thanksgiving, closes at 13:00 New York (18:00 UTC).
        assert period_end(utc("2024-11-29 17:30"), "1h", NYSE_HOURS) == utc("2024-11-29 18:00")
        assert period_end(utc("2024-11-29 16:30"), "1h", NYSE_HOURS) == utc("2024-11-29 17:30")
        assert period_end(utc("2024-11-30 10:00"), "1h", ALL_DAY) == utc("2024-11-30 11:00")


class TestMissing:
    def test_holidays_are_not_missing_but_a_lost_session_is(self):
        bars = hourly_sessions("2024-01-11", "2024-01-12", "2024-01-16", "2024-01-18")  # 15th: MLK day
        missing = count_missing(bars, "1h", NYSE_HOURS)
        assert (missing.unit, missing.expected, missing.missing, missing.first_missing) == (
            "sessions", 5, 1, ("2024-01-17",)
        )
        assert missing.describe() == "1 of 5 sessions (2024-01-17)"

    def test_the_calendar_knows_unscheduled_closures(self):
        # The NYSE closed on 2025-01-09 for the national day of mourning for President Carter.
        days = pd.Series(pd.bdate_range("2025-01-06", "2025-01-10").drop(pd.Timestamp("2025-01-09")).tz_localize("UTC"))
        assert count_missing(days, "1d", NYSE_HOURS).missing == 0

    def test_a_market_that_never_closes_misses_periods(self):
        hours = pd.Series(pd.date_range("2024-03-01", periods=48, freq="h", tz="UTC"))
        bars = hours.drop([5, 6, 7, 30]).reset_index(drop=True)
        missing = count_missing(bars, "1h", ALL_DAY)
        assert (missing.unit, missing.expected, missing.missing) == ("periods", 48, 4)
        assert missing.first_missing == ("2024-03-01 05:00", "2024-03-01 06:00", "2024-03-01 07:00", "2024-03-02 06:00")
