"""Daily bars are stored with their session date at 00:00 UTC whatever midnight the vendor stamped them with, so
the same session from yfinance, a Yahoo CSV with offsets, Polygon or Alpaca lands on the same row of the panel."""
from __future__ import annotations

from pathlib import Path

import pandas as pd
import pytest

from storage import cache
from storage.importing import normalise_daily_stamps
from storage.panel import read_panel
from storage.refresh import RefreshRequest, run_refresh
from tests.storage.helpers_bars import make_bars

FILES = Path(__file__).resolve().parents[1] / "fixtures" / "files"


def import_file(db_path, path, symbol, interval):
    request = RefreshRequest(symbols=(symbol,), interval=interval, source="csv", path=path, db_path=db_path)
    (result,) = run_refresh(request).results
    return result


def test_polygon_daily_bars_at_new_york_midnight_are_stored_at_their_date(db_path):
    result = import_file(db_path, FILES / "polygon_aggs_AAPL_1d.csv", "AAPL", "1d")

    stored = cache.read_bars("AAPL", "1d", "csv", db_path=db_path)
    assert result.outcome == "ok" and (stored["ts"] == stored["ts"].dt.normalize()).all()
    assert stored["ts"].iloc[0] == pd.Timestamp("2024-01-02", tz="UTC")  # t = 1704171600000 is 05:00 UTC
    report = result.import_report
    assert report.stamps_normalised == report.rows_kept == 7
    assert any("daily stamps at 05:00 UTC" in note for note in report.notes)
    assert any(line.startswith("daily stamps:") for line in report.lines())


def test_a_yahoo_csv_with_offsets_and_the_yfinance_layout_give_the_same_dates(db_path):
    with_offsets = import_file(db_path, FILES / "yfinance_history_SPY_1d_auto_adjust.csv", "SPY", "1d")
    stored = cache.read_bars("SPY", "1d", "csv", db_path=db_path)
    assert with_offsets.import_report.stamps_normalised == 23
    assert stored["ts"].iloc[:3].tolist() == list(pd.date_range("2024-01-02", periods=3, freq="1D", tz="UTC"))


def test_daily_bars_already_at_midnight_utc_are_left_alone(db_path):
    result = import_file(db_path, FILES / "yahoo_spy_daily.csv", "SPY", "1d")
    assert result.import_report.stamps_normalised == 0
    assert not any("daily stamps" in note for note in result.import_report.notes)


def test_local_midnight_east_of_utc_names_the_next_date_and_a_date_twice_is_refused():
    bars = make_bars(3, start="2024-01-01 23:00", freq="1D")  # Central European midnight of Jan 2, 3, 4
    normalised, moved, note = normalise_daily_stamps(bars, "cet.csv")
    assert moved == 3 and "23:00" in note
    assert normalised["ts"].tolist() == list(pd.date_range("2024-01-02", periods=3, freq="1D", tz="UTC"))
    assert str(normalised["ts"].dtype) == "datetime64[us, UTC]"

    twice = bars.assign(ts=pd.DatetimeIndex(["2024-01-02 01:00", "2024-01-02 05:00", "2024-01-03 05:00"],
                                            tz="UTC").as_unit("us"))
    with pytest.raises(ValueError, match="both fall on 2024-01-02"):
        normalise_daily_stamps(twice, "twice.csv")


def test_imported_daily_equity_and_crypto_share_the_panel_s_rows(db_path):
    import_file(db_path, FILES / "polygon_aggs_AAPL_1d.csv", "AAPL", "1d")
    cache.upsert_bars(make_bars(20, start="2023-12-30", freq="1D", seed=3), "BTC", "demo", "1d", db_path)
    panel = read_panel(["BTC", "AAPL"], "1d", db_path=db_path)
    row = panel.ts.get_loc(pd.Timestamp("2024-01-02", tz="UTC"))
    assert panel.observed[row].all()  # the session of Jan 2 is on Jan 2's row, beside BTC's Jan 2 bar


def test_an_hourly_file_imported_as_daily_is_refused_for_its_spacing_not_for_clashing_dates(db_path):
    result = import_file(db_path, FILES / "yfinance_history_SPY_1h.csv", "SPY", "1d")
    assert result.outcome == "error" and "import with --interval 1h" in result.message
    assert "fall on" not in result.message and not cache.has_bars(db_path)
