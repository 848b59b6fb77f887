"""Bars are checked against the series already stored, not only within their own file: a second import whose
bars would sit between the stored ones (another time zone, minutes off, fractions of a second) is refused with
the first clash, and changes nothing; the same bars again, or revised values at the same times, are fine."""
from __future__ import annotations

import pandas as pd
import pytest

from storage import cache
from storage.cache import OffGridError
from storage.refresh import RefreshRequest, run_refresh
from tests.storage.helpers_bars import make_bars


def import_file(db_path, path, symbol, interval):
    request = RefreshRequest(symbols=(symbol,), interval=interval, source="csv", path=path, db_path=db_path)
    (result,) = run_refresh(request).results
    return result


def write_csv(path, bars: pd.DataFrame, stamp: str = "%Y-%m-%dT%H:%M:%SZ"):
    bars.assign(ts=bars["ts"].dt.strftime(stamp)).to_csv(path, index=False)
    return path


def test_the_same_daily_bars_stamped_at_new_york_midnight_land_on_the_stored_days(db_path, tmp_path):
    bars = make_bars(10, start="2024-03-04", freq="1D", seed=1)
    assert import_file(db_path, write_csv(tmp_path / "utc.csv", bars), "BTC", "1d").outcome == "ok"

    # The same ten sessions, as a vendor in New York stamps them: local midnight, 05:00 UTC.
    offset = bars.assign(ts=bars["ts"].dt.strftime("%Y-%m-%dT00:00:00-05:00"))
    offset.to_csv(tmp_path / "new_york.csv", index=False)
    again = import_file(db_path, tmp_path / "new_york.csv", "BTC", "1d")

    assert again.outcome == "ok" and again.import_report.stamps_normalised == 10
    assert (again.inserted, again.updated) == (0, 0)
    stored = cache.read_bars("BTC", "1d", "csv", db_path=db_path)
    assert len(stored) == 10 and (stored["ts"] == stored["ts"].dt.normalize()).all()


def test_hourly_bars_offset_by_minutes_are_refused_with_the_first_clash(db_path, tmp_path):
    bars = make_bars(48, start="2024-01-01", freq="1h", seed=1)
    assert import_file(db_path, write_csv(tmp_path / "hours.csv", bars), "BTC", "1h").outcome == "ok"
    before = cache.read_bars("BTC", "1h", "csv", db_path=db_path)

    shifted = bars.assign(ts=bars["ts"] + pd.Timedelta(minutes=30))
    result = import_file(db_path, write_csv(tmp_path / "half_past.csv", shifted), "BTC", "1h")

    assert result.outcome == "error"
    assert "48 of 48 bars are not on the clock of the 1h bars already stored for BTC (csv)" in result.message
    assert "stored 2024-01-01T00:00:00+00:00, new 2024-01-01T00:30:00+00:00 (30 min apart)" in result.message
    pd.testing.assert_frame_equal(cache.read_bars("BTC", "1h", "csv", db_path=db_path), before)


def test_fractional_epoch_seconds_are_refused(db_path, tmp_path):
    bars = make_bars(24, start="2024-01-01", freq="1h", seed=2)
    seconds = bars["ts"].astype("int64") // 10**6  # microseconds -> seconds
    whole = bars.assign(ts=seconds)
    whole.to_csv(tmp_path / "whole.csv", index=False)
    assert import_file(db_path, tmp_path / "whole.csv", "BTC", "1h").outcome == "ok"

    bars.assign(ts=seconds + 0.5).to_csv(tmp_path / "fraction.csv", index=False)
    result = import_file(db_path, tmp_path / "fraction.csv", "BTC", "1h")
    assert result.outcome == "error" and "(0.5 s apart)" in result.message
    assert len(cache.read_bars("BTC", "1h", "csv", db_path=db_path)) == 24


def test_a_later_file_on_another_phase_is_refused_even_without_overlap(db_path, tmp_path):
    first = make_bars(24, start="2024-01-01 00:00", freq="1h", seed=1)
    assert import_file(db_path, write_csv(tmp_path / "a.csv", first), "SPY", "1h").outcome == "ok"
    later = make_bars(24, start="2024-01-05 14:30", freq="1h", seed=2)  # days later, at :30
    result = import_file(db_path, write_csv(tmp_path / "b.csv", later), "SPY", "1h")
    assert result.outcome == "error"
    assert "stored 2024-01-01T23:00:00+00:00, new 2024-01-05T14:30:00+00:00 (30 min off its clock)" in result.message


def test_revisions_and_new_bars_on_the_stored_clock_are_stored(db_path, tmp_path):
    bars = make_bars(48, start="2024-01-01", freq="1h", seed=1)
    assert import_file(db_path, write_csv(tmp_path / "a.csv", bars.iloc[:30]), "BTC", "1h").outcome == "ok"
    revised = bars.iloc[20:].copy()
    revised.loc[revised.index[:3], "volume"] += 1.0
    result = import_file(db_path, write_csv(tmp_path / "b.csv", revised), "BTC", "1h")
    assert result.outcome == "ok" and (result.inserted, result.updated) == (18, 3)


def test_another_source_keeps_its_own_clock(db_path):
    cache.upsert_bars(make_bars(24, freq="1h", seed=1), "SPY", "yfinance", "1h", db_path)
    half_past = make_bars(24, start="2024-01-01 00:30", freq="1h", seed=2)
    assert cache.upsert_bars(half_past, "SPY", "csv", "1h", db_path).inserted == 24


@pytest.mark.parametrize("interval, freq, offset", [("4h", "4h", "1h"), ("1d", "1D", "6h")])
def test_longer_bars_are_refused_within_one_interval_of_a_stored_bar(db_path, interval, freq, offset):
    cache.upsert_bars(make_bars(10, freq=freq, seed=1), "SPY", "csv", interval, db_path)
    with pytest.raises(OffGridError, match=r"10 of 10 bars are not on the clock"):
        cache.upsert_bars(make_bars(10, start=f"2024-01-01 {pd.Timedelta(offset)}".replace("0 days ", ""),
                                    freq=freq, seed=2), "SPY", "csv", interval, db_path)
    assert len(cache.read_bars("SPY", interval, "csv", db_path=db_path)) == 10
