"""The Data page shows what each file import found: repairs, a dropped partial bar, and missing sessions."""
from __future__ import annotations

from pathlib import Path

from storage.refresh import main as refresh_main
from tests.app.conftest import open_page

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures" / "files"


def test_missing_sessions_of_an_imported_file_are_shown_as_a_warning(seeded_db):
    # yfinance's hourly SPY fixture lacks the session of 2024-01-17, as vendor files cut at batch boundaries do
    path = FIXTURES / "yfinance_history_SPY_1h.csv"
    assert refresh_main(["--db", str(seeded_db), "--source", "csv", "--path", str(path), "--symbol", "SPYH",
                         "--interval", "1h"]) == 0
    at = open_page("views/data.py")
    assert not at.exception, [e.value for e in at.exception]
    # the quality table is the one with the import layout (the cache table, and failed refreshes when there are
    # any, come first)
    quality = next(frame.value for frame in at.dataframe if "layout" in frame.value.columns)
    row = quality[quality["symbol"] == "SPYH"].iloc[0]
    assert row["missing"].startswith("1 of ") and "2024-01-17" in row["first_missing"]
    assert any("SPYH" in w.value and "2024-01-17" in w.value for w in at.warning), [w.value for w in at.warning]


def test_without_imports_the_page_says_where_reports_will_appear(seeded_db):
    at = open_page("views/data.py")
    assert not at.exception
    assert any("No file imports recorded yet" in c.value for c in at.caption)
