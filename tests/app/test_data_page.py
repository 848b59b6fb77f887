"""The Data page, driven headless through the real app script (navigation, shared frame, page)."""
from __future__ import annotations

from pathlib import Path

import duckdb
import pytest

from tests.app.conftest import figure_specs, open_page

DATA_PAGE = "views/data.py"
FIXTURES = Path(__file__).resolve().parents[1] / "fixtures" / "files"


def _bar_count(db: Path, symbol: str) -> int:
    with duckdb.connect(str(db), read_only=True) as con:
        return con.execute("SELECT count(*) FROM bars WHERE symbol = ?", [symbol]).fetchone()[0]


def test_empty_cache_is_seeded_with_the_labelled_demo(empty_db):
    at = open_page()  # the first page a new user lands on says what happened
    assert not at.exception
    assert any("seeded with the **synthetic demo market**" in info.value for info in at.info)
    assert any("Synthetic demo data" in warning.value for warning in at.warning)
    assert _bar_count(empty_db, "BTC") > 0


def test_price_charts_follow_the_symbol_selection(seeded_db):
    at = open_page(DATA_PAGE)
    assert at.segmented_control(key="data_price_asset").options == ["BTC", "SPY", "AAPL"]
    drawn = []
    for asset in ("BTC", "SPY", "AAPL"):  # one asset's candles at a time, each chosen in turn
        at.segmented_control(key="data_price_asset").set_value(asset).run()
        assert not at.exception, at.exception
        (spec,) = figure_specs(at)
        drawn.append(spec["layout"]["title"]["text"].split(" ")[0])
        assert spec["layout"]["xaxis"]["title"]["text"] == "time (UTC)"
        # Every demo chart carries the synthetic stamp, so an exported image cannot pass for market data.
        assert any("SYNTHETIC" in a["text"] for a in spec["layout"]["annotations"])
    assert drawn == ["BTC", "SPY", "AAPL"] and at.query_params["data_price_asset"] == "AAPL"

    at.sidebar.multiselect(key="symbols").set_value(["SPY"]).run()
    titles = [spec["layout"]["title"]["text"] for spec in figure_specs(at)]
    assert len(titles) == 1 and titles[0].startswith("SPY")
    trace_types = {trace["type"] for trace in figure_specs(at)[0]["data"]}
    assert trace_types & {"candlestick", "scattergl"}


def test_demo_rows_are_labelled_synthetic_not_stale(seeded_db):
    at = open_page(DATA_PAGE)
    table = at.dataframe[0].value
    assert set(table.loc[table["source"] == "demo", "freshness"]) == {"synthetic, fixed span"}
    assert not any("is stale" in warning.value for warning in at.warning)


def test_importing_a_valid_file_stores_it(seeded_db):
    at = open_page(DATA_PAGE)
    at.file_uploader[0].set_value(("plain_bars.csv", (FIXTURES / "plain_bars.csv").read_bytes(), "text/csv"))
    at.text_input(key="import_symbol").set_value("TESTCOIN")
    at.selectbox(key="import_interval").set_value("1h")
    at.button(key="FormSubmitter:import-Import").click().run()
    assert not at.exception
    assert any("TESTCOIN" in s.value and "new" in s.value for s in at.success), [e.value for e in at.error]
    assert _bar_count(seeded_db, "TESTCOIN") > 0


def test_a_bad_file_is_refused_with_a_message_and_changes_nothing(seeded_db):
    before = _bar_count(seeded_db, "SPY")
    at = open_page(DATA_PAGE)
    bad = b"ts,open,high,low,close,volume\n2024-01-01T00:00:00Z,100,90,99,100,10\n"  # high below low
    at.file_uploader[0].set_value(("broken.csv", bad, "text/csv"))
    at.text_input(key="import_symbol").set_value("SPY")
    at.button(key="FormSubmitter:import-Import").click().run()
    assert not at.exception
    errors = [e.value for e in at.error]
    assert errors and errors[0].startswith("Nothing was imported") and "broken.csv" in errors[0]
    assert _bar_count(seeded_db, "SPY") == before


def test_import_without_a_file_asks_for_one(seeded_db):
    at = open_page(DATA_PAGE)
    at.button(key="FormSubmitter:import-Import").click().run()
    assert [e.value for e in at.error] == ["Choose a file to import."]


def test_refresh_now_reports_each_symbol(seeded_db):
    at = open_page(DATA_PAGE)
    at.button(key="FormSubmitter:refresh-Refresh now").click().run()
    assert not at.exception
    messages = [s.value for s in at.success] + [e.value for e in at.error]
    assert any("BTC" in m for m in messages), messages
    assert not at.error, [e.value for e in at.error]


# Streamlit itself refuses a name without an allowed extension (or with a NUL byte) before the page sees it; names
# it lets through used to reach the file system: too long for it (300 bytes of CJK), or with path parts.
@pytest.mark.parametrize("name", ["价" * 100 + ".csv", "../../../etc/passwd.csv", "a\nb.csv", "x" * 300 + ".csv"])
def test_an_upload_with_a_hostile_name_is_imported_without_an_os_error(seeded_db, name):
    at = open_page(DATA_PAGE)
    at.file_uploader[0].set_value((name, (FIXTURES / "plain_bars.csv").read_bytes(), "text/csv"))
    at.text_input(key="import_symbol").set_value("TESTCOIN")
    at.selectbox(key="import_interval").set_value("1h")
    at.button(key="FormSubmitter:import-Import").click().run()
    assert not at.exception
    assert any("TESTCOIN" in s.value and "new" in s.value for s in at.success), [e.value for e in at.error]
    assert _bar_count(seeded_db, "TESTCOIN") == 3


def test_a_parquet_bomb_upload_is_refused_from_its_metadata(seeded_db):
    import io

    from tests.storage.test_import_limits import constant_parquet

    buffer = io.BytesIO()
    constant_parquet(buffer, 6_000_000)
    at = open_page(DATA_PAGE)
    at.file_uploader[0].set_value(("价" * 100 + ".parquet", buffer.getvalue(), "application/octet-stream"))
    at.text_input(key="import_symbol").set_value("BOMB")
    at.button(key="FormSubmitter:import-Import").click().run()
    assert not at.exception
    errors = [e.value for e in at.error]
    assert errors and "holds 6,000,000 rows (its metadata says; nothing was decompressed)" in errors[0]
    assert _bar_count(seeded_db, "BOMB") == 0


def test_ambiguous_dates_can_be_told_their_order_on_the_page(seeded_db):
    rows = "".join(f"{day:02d}/01/2021,100,101,99,100.5,1000\n" for day in range(4, 13))
    data = ("Date,Open,High,Low,Close,Volume\n" + rows).encode()
    at = open_page(DATA_PAGE)
    at.file_uploader[0].set_value(("ambiguous.csv", data, "text/csv"))
    at.text_input(key="import_symbol").set_value("DMY")
    at.button(key="FormSubmitter:import-Import").click().run()
    assert any("ambiguous dates" in e.value for e in at.error)
    assert _bar_count(seeded_db, "DMY") == 0

    at.selectbox(key="import_date_order").set_value("day-first")
    at.button(key="FormSubmitter:import-Import").click().run()
    assert not at.exception and any("DMY" in s.value for s in at.success), [e.value for e in at.error]
    assert _bar_count(seeded_db, "DMY") == 9
