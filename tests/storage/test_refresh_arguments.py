"""Arguments a careless user gives the refresh: a --db that is not a DuckDB file, an exchange ccxt does not have,
an upload named '..' or with 100 CJK characters. Each is one clear line, never a traceback, and leaves nothing
behind."""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from storage import cache
from storage.cache import NotADuckDBFileError
from storage.locks import refresh_lock_path
from storage.refresh import UPLOAD_LABEL_CHARS, RefreshRequest, import_uploaded_file, run_refresh, upload_label
from storage.sources.ccxt_source import CcxtSource, check_exchange

REPO_ROOT = Path(__file__).resolve().parents[2]
PLAIN = (REPO_ROOT / "tests" / "fixtures" / "files" / "plain_bars.csv").read_bytes()


def run_cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "storage.refresh", *args], cwd=REPO_ROOT, capture_output=True, text=True, timeout=120
    )


@pytest.mark.parametrize("content, what", [
    (b"ts,open,high,low,close,volume\n", "a text file starting 'ts,open,high,low,close,volume'"),
    (b"", "empty"),
    (b"SQLite format 3\x00" + bytes(100), "an SQLite database"),
    (b"PAR1" + bytes(100), "a Parquet file"),
])
def test_a_db_that_is_not_a_duckdb_file_is_one_line_and_exit_2_with_no_lock_file(tmp_path, content, what):
    db = tmp_path / "prices.csv"
    db.write_bytes(content)
    done = run_cli("--source", "demo", "--db", str(db))
    assert done.returncode == 2 and done.stdout == ""
    assert done.stderr.splitlines() == [
        f"refresh not started: {db} is not a DuckDB file (it is {what}): point --db or $REGIME_DB at the bar cache, "
        "or at a new path to start one"
    ]
    assert not refresh_lock_path(db).exists()
    assert db.read_bytes() == content


def test_a_db_that_is_a_folder_is_refused(tmp_path):
    done = run_cli("--source", "demo", "--db", str(tmp_path))
    assert done.returncode == 2 and "is a folder, not a DuckDB file" in done.stderr
    assert "Traceback" not in done.stderr


def test_the_app_reading_a_file_that_is_not_duckdb_gets_a_value_error(tmp_path):
    db = tmp_path / "bars.duckdb"
    db.write_text("not a database\n")
    with pytest.raises(NotADuckDBFileError, match="is not a DuckDB file"):
        cache.cache_summary(db)


@pytest.mark.parametrize("exchange, hint", [
    ("__class__", "e.g. bybit, binance, coinbase, kraken or okx"),
    ("bybitt", "did you mean bybit"),
    ("Exchange", "ccxt has no exchange 'Exchange'"),
])
def test_an_exchange_ccxt_does_not_list_is_refused_with_a_suggestion(tmp_path, exchange, hint):
    done = run_cli("--source", "ccxt", "--exchange", exchange, "--db", str(tmp_path / "bars.duckdb"))
    assert done.returncode == 2 and hint in done.stderr and "Traceback" not in done.stderr
    with pytest.raises(ValueError, match="ccxt has no exchange"):
        CcxtSource(exchange=exchange).client  # the source itself never looks the name up on the module


def test_exchange_names_are_normalised():
    assert check_exchange(" Bybit ") == "bybit"
    assert RefreshRequest(symbols=("BTC",), source="ccxt", exchange="BINANCE").exchange == "binance"


@pytest.mark.parametrize("name, label", [
    ("..", "upload"),
    (".", "upload"),
    ("", "upload"),
    ("../../etc/passwd.csv", "passwd.csv"),
    ("C:\\Users\\me\\prices.csv", "prices.csv"),
    ("bad\nname\x00.csv", "badname.csv"),
    ("价" * 100 + ".csv", "价" * (UPLOAD_LABEL_CHARS - 1) + "…"),
])
def test_upload_names_become_safe_labels(name, label):
    assert upload_label(name) == label


@pytest.mark.parametrize("name", ["..", "价" * 100 + ".csv", "../../x.csv", "a/b/", "\x00"])
def test_an_upload_with_a_hostile_name_is_imported_and_named_safely(db_path, name):
    report = import_uploaded_file(name, PLAIN, "TESTCOIN", "1h", db_path)
    (result,) = report.results
    assert result.outcome == "ok", result.message
    assert result.import_report.origin == upload_label(name)
    assert cache.read_bars("TESTCOIN", "1h", "csv", db_path=db_path).shape[0] == 3


def test_an_upload_can_be_a_file_object(db_path):
    import io

    upload = io.BytesIO(PLAIN)
    (result,) = import_uploaded_file("plain.csv", upload, "TESTCOIN", "1h", db_path).results
    assert result.outcome == "ok"


def test_a_refresh_against_a_broken_cache_path_changes_nothing(tmp_path):
    db = tmp_path / "bars.duckdb"
    db.write_text("x")
    with pytest.raises(NotADuckDBFileError):
        run_refresh(RefreshRequest(symbols=("BTC",), source="demo", db_path=db))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bars.duckdb"]
