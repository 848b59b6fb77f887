"""Import bars from a CSV or Parquet file (a path, raw bytes, or an uploaded file object): `load_bar_file`.

Files are untrusted input, so they are parsed by pandas under a size limit, never handed to DuckDB's reader,
and every rejection says what was wrong and where. Layouts recognised (column names case-insensitive; the
time column is the first of TS_ALIASES present):

- this product's own: ts, open, high, low, close, volume
- Yahoo Finance:  Date or Datetime (text, with or without an offset such as -05:00), Open, High, Low, Close,
                [Adj Close], Volume, [Dividends, Stock Splits]; Adj Close is ignored (bars are unadjusted
                unless the vendor adjusted them, as yfinance's auto_adjust does); also the three-row header that
                yfinance's `download(...).to_csv()` writes (Price/Ticker/Date)
- Binance klines: open_time (unix ms; us since 2025), open, high, low, close, volume, close_time, ...; with a
                header, or the public-data files without one (open time first, then open, high, low, close, volume)
- Kaggle 1-minute Bitcoin: Timestamp (unix seconds), Open, High, Low, Close, Volume (or Volume_(BTC)); rows
                whose prices and volume are all empty (no trade that minute) are dropped and counted
- Databento ohlcv-1s/1m/1h/1d: ts_event (UTC; unix ns or ISO text), rtype, publisher_id, instrument_id, open,
                high, low, close, volume, symbol; prices as written with pretty_px, or as fixed-point integers
                in units of 1e-9 (Databento's raw encoding), which are scaled back
- Polygon/Massive aggregates: t (unix ms, or ISO text with an offset), o, h, l, c, v, [vw, n]; flat files:
                ticker, volume, open, close, high, low, window_start (unix ns), transactions
- Alpaca bars: timestamp (ISO text), open/high/low/close/volume or o/h/l/c/v, [trade_count, vwap, symbol]
- Parquet with any of the same column sets (a timestamp index is used as ts)

A file holds one symbol: a symbol/ticker column with several values is refused. Timestamps: text with a zone
or offset is converted to UTC; NAIVE TIMESTAMPS ARE TAKEN AS UTC. Unix times are read as seconds,
milliseconds, microseconds or nanoseconds by their magnitude (EPOCH_UNITS). Daily bars keep the vendor's stamp
here (often local midnight: 05:00 UTC for New York); an import (storage.importing.prepare_import) stores them at
their session date, 00:00 UTC, as the yfinance source does.
"""
from __future__ import annotations

import io
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

import numpy as np
import pandas as pd

from storage.sources.base import BAR_COLUMNS
from storage.validation import BarValidationError, Problem, validate_and_repair

MAX_FILE_BYTES = 200 * 1024 * 1024

# Normalised header name (lower case, runs of spaces/dashes as "_") -> our column; first match wins.
TS_ALIASES: tuple[str, ...] = (
    "ts", "ts_event", "timestamp", "datetime", "date", "time", "open_time", "opentime", "date_time", "t",
    "window_start", "unix", "unix_timestamp",
)
VALUE_ALIASES: dict[str, tuple[str, ...]] = {
    "open": ("open", "o"),
    "high": ("high", "h"),
    "low": ("low", "l"),
    "close": ("close", "c"),
    "volume": ("volume", "vol", "v", "volume_(btc)", "volume_btc"),
}
SYMBOL_ALIASES: tuple[str, ...] = ("symbol", "ticker")

# Unix time -> unit, by magnitude: (smallest, largest, unit). Seconds are ~1.7e9 today, milliseconds ~1.7e12,
# microseconds ~1.7e15, nanoseconds ~1.7e18. Each range covers mid-1979 to the year 2286 in its unit, and the
# ranges do not overlap, so a value names its unit; one between two ranges (say 5e10: the year 3554 in seconds,
# 1971 in milliseconds) is no plausible date in any unit and is refused, as is a file that mixes units.
EPOCH_UNITS: tuple[tuple[float, float, str], ...] = (
    (3e8, 1e10, "s"),
    (3e11, 1e13, "ms"),
    (3e14, 1e16, "us"),
    (3e17, 1e19, "ns"),
)
# Databento's rtype says the schema, so the file states its own bar size.
DATABENTO_RTYPE_INTERVALS: dict[int, str] = {32: "1s", 33: "1m", 34: "1h", 35: "1d"}
# Databento's raw (not pretty_px) prices are integers in units of 1e-9.
DATABENTO_PRICE_SCALE = 1e-9
DELIMITERS = (",", ";", "\t", "|")
HEAD_CHARS = 64 * 1024

# Magic bytes of files people upload by mistake, so the error can say what the file looks like.
_KNOWN_BINARY: tuple[tuple[bytes, str], ...] = (
    (b"PK\x03\x04", "a ZIP archive (an Excel .xlsx workbook or a zipped file?): unzip it or export as CSV"),
    (b"\x1f\x8b", "a gzip archive: decompress it first"),
    (b"\xd0\xcf\x11\xe0", "an old Excel/Office document: export it as CSV"),
    (b"%PDF", "a PDF document"),
    (b"\x89PNG", "a PNG image"),
    (b"\xff\xd8\xff", "a JPEG image"),
    (b"SQLite format 3", "an SQLite database"),
    (b"DUCK", "a DuckDB database"),
)


class BarFileError(BarValidationError):
    """A file that cannot be read as bars at all (too big, binary, empty, unknown layout).

    A BarValidationError, so callers catch one type for "these bars cannot be imported"; the message is the
    single reason rather than a list of broken rules.
    """

    def __init__(self, origin: str, reason: str):
        self.origin = origin
        self.reason = reason
        self.problems = (Problem(reason, 0),)
        ValueError.__init__(self, f"{origin}: {reason}")


@dataclass(frozen=True)
class _Parsed:
    frame: pd.DataFrame  # raw columns, names as in the file
    row_numbers: np.ndarray  # how to name each row in messages
    row_label: str  # "line" for text files, "row" for Parquet
    has_header: bool
    yfinance_header: bool = False  # the Price/Ticker/Date header rows of yfinance's download().to_csv()


@dataclass(frozen=True)
class BarFile:
    """A file read as bars, and what it took to read it (the first half of an import report)."""

    bars: pd.DataFrame  # validated BAR_COLUMNS
    origin: str  # the name messages use
    layout: str  # e.g. "csv: Databento ohlcv-1h"
    time_column: str  # as named in the file ("ts_event"; "column 1" in a file without a header)
    epoch_unit: str | None  # "s", "ms", "us" or "ns" when the times are unix numbers, else None (text)
    rows_read: int  # data rows in the file (blank lines not counted)
    rounding_repairs: int = 0  # rows whose high/low were widened by float rounding (validation)
    repaired_examples: tuple[str, ...] = ()
    duplicates_dropped: int = 0  # repeated rows with identical values
    empty_rows_dropped: int = 0  # rows with a time but no prices and no volume (no trade in that period)
    file_symbol: str | None = None  # the value of the file's symbol/ticker column, if it has one
    stated_interval: str | None = None  # the bar size the file states (Databento's rtype), if any
    saved_at: pd.Timestamp | None = None  # when the file was last written (paths only): no bar can end later

    @property
    def time_reading(self) -> str:
        """How times were read, e.g. "open_time (unix ms)" or "Date (text)"."""
        return f"{self.time_column} ({'unix ' + self.epoch_unit if self.epoch_unit else 'text'})"


def read_bar_file(
    source: str | os.PathLike | bytes | BinaryIO,
    max_bytes: int = MAX_FILE_BYTES,
    origin: str | None = None,
) -> pd.DataFrame:
    """Read a CSV or Parquet file of bars and return validated BAR_COLUMNS (load_bar_file(...).bars).

    The detected layout is recorded in the result's attrs["layout"].
    """
    loaded = load_bar_file(source, max_bytes, origin)
    loaded.bars.attrs["layout"] = f"{loaded.layout}; time column {loaded.time_reading}"
    return loaded.bars


def load_bar_file(
    source: str | os.PathLike | bytes | BinaryIO,
    max_bytes: int = MAX_FILE_BYTES,
    origin: str | None = None,
) -> BarFile:
    """Read a CSV or Parquet file of bars: validated BAR_COLUMNS (see validate_bars) and how they were read.

    source: a path, the file's bytes, or a binary file object (e.g. Streamlit's UploadedFile, whose .name is
        used as the origin). origin: the name quoted in error messages (default: the file name).
    Naive timestamps are taken as UTC. Raises BarFileError for a file that cannot be read as bars and
    BarValidationError for bars that break a rule; both name the origin.
    """
    data, origin = _read_limited(source, max_bytes, origin)
    if not data or data.isspace():
        raise BarFileError(origin, "the file is empty")
    if data[:4] == b"PAR1":
        parsed = _parse_parquet(data, origin)
        file_kind = "parquet"
    else:
        parsed = _parse_csv(_decode_text(data, origin), origin)
        file_kind = "csv"
    columns = _to_bar_columns(parsed, origin)
    frame, numbers = columns.frame, parsed.row_numbers
    empty = frame[list(BAR_COLUMNS[1:])].isna().all(axis=1).to_numpy() & frame["ts"].notna().to_numpy()
    if empty.all():
        raise BarFileError(origin, f"every row's prices and volume are empty ({len(frame)} rows)")
    if empty.any():
        frame, numbers = frame.loc[~empty].reset_index(drop=True), numbers[~empty]
    checked = validate_and_repair(frame, origin, row_numbers=numbers, row_label=parsed.row_label)
    return BarFile(
        bars=checked.bars,
        origin=origin,
        layout=f"{file_kind}: {columns.layout}",
        time_column=columns.time_column,
        epoch_unit=columns.epoch_unit,
        rows_read=len(parsed.frame),
        rounding_repairs=checked.rounding_repairs,
        repaired_examples=checked.repaired_examples,
        duplicates_dropped=checked.duplicates_dropped,
        empty_rows_dropped=int(empty.sum()),
        file_symbol=columns.file_symbol,
        stated_interval=columns.stated_interval,
        saved_at=_modified_at(source),
    )


def _modified_at(source) -> pd.Timestamp | None:
    if not isinstance(source, (str, os.PathLike)):
        return None
    return pd.Timestamp(Path(source).stat().st_mtime_ns, unit="ns", tz="UTC")


# --- bytes in -----------------------------------------------------------------------------------------------


def _read_limited(source, max_bytes: int, origin: str | None) -> tuple[bytes, str]:
    limit_text = f"{max_bytes / 1024 / 1024:.0f} MB" if max_bytes >= 1024 * 1024 else f"{max_bytes} bytes"
    if isinstance(source, (bytes, bytearray, memoryview)):
        origin = origin or "uploaded file"
        data = bytes(source)
    elif isinstance(source, (str, os.PathLike)):
        path = Path(source)
        origin = origin or path.name
        if not path.is_file():
            raise BarFileError(origin, f"no such file: {path}")
        size = path.stat().st_size
        if size > max_bytes:
            raise BarFileError(origin, f"the file is {size / 1024 / 1024:.1f} MB, over the {limit_text} limit")
        data = path.read_bytes()
    elif hasattr(source, "read"):
        origin = origin or Path(str(getattr(source, "name", "") or "uploaded file")).name
        data = source.read(max_bytes + 1)  # one byte more than allowed tells us it is too big
        if isinstance(data, str):
            data = data.encode("utf-8")
    else:
        raise TypeError(f"read_bar_file takes a path, bytes or a binary file object, not {type(source).__name__}")
    if len(data) > max_bytes:
        raise BarFileError(origin, f"the file is over the {limit_text} limit")
    return data, origin


def _decode_text(data: bytes, origin: str) -> str:
    for magic, what in _KNOWN_BINARY:
        if data.startswith(magic):
            raise BarFileError(origin, f"not a CSV or Parquet file: it looks like {what}")
    head = data[:65536]
    if b"\x00" in head:
        raise BarFileError(origin, "not a CSV or Parquet file: it contains binary data (NUL bytes)")
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as error:
        # Spreadsheets on Windows often save cp1252; accept it when the text is otherwise clean.
        text = data.decode("cp1252", errors="replace")
        control = sum(1 for ch in text[:65536] if ch == "\ufffd" or (ord(ch) < 32 and ch not in "\r\n\t"))
        if control > 0.01 * min(len(text), 65536):
            raise BarFileError(
                origin, f"not a CSV or Parquet file: byte {error.start} is not text (neither UTF-8 nor cp1252)"
            ) from None
        return text


# --- parsing ------------------------------------------------------------------------------------------------


def _parse_parquet(data: bytes, origin: str) -> _Parsed:
    try:
        frame = pd.read_parquet(io.BytesIO(data))
    except Exception as error:  # pyarrow raises several types for corrupt files; all mean the same here
        raise BarFileError(origin, f"the Parquet file cannot be read: {error}") from error
    if isinstance(frame.index, pd.DatetimeIndex) or frame.index.name is not None:
        frame = frame.reset_index()  # e.g. a yfinance frame saved with its Date index
    frame.columns = [str(c) for c in frame.columns]
    return _Parsed(frame, np.arange(1, len(frame) + 1), "row", has_header=True)


def _parse_csv(text: str, origin: str) -> _Parsed:
    head = text[:HEAD_CHARS].splitlines()[:200]  # enough to find the header without splitting a 200 MB text
    first_index = next((i for i, line in enumerate(head) if line.strip()), None)
    if first_index is None:
        raise BarFileError(origin, "the file is empty")
    delimiter = _sniff_delimiter(head[first_index : first_index + 20])
    first_fields = [f.strip().strip('"') for f in head[first_index].split(delimiter)]
    has_header = not all(_is_number(f) for f in first_fields if f)

    header_lines = 1 if has_header else 0
    options: dict = {"header": 0 if has_header else None}
    if has_header and first_fields[0].lower() == "price" and _first_field(head, first_index + 1, delimiter) == "ticker":
        # yfinance's download().to_csv(): "Price,Close,..." / "Ticker,SPY,..." / "Date,,,...", then data.
        third = head[first_index + 2] if len(head) > first_index + 2 else ""
        ts_name = third.split(delimiter)[0].strip().strip('"') or "Date"  # as written: Date or Datetime
        options = {"header": None, "names": [ts_name, *first_fields[1:]]}
        header_lines = 3

    try:
        frame = pd.read_csv(
            io.StringIO(text),
            sep=delimiter,
            skiprows=first_index + (3 if header_lines == 3 else 0),
            index_col=False,  # never turn a first column into the index when rows have an extra field
            skip_blank_lines=False,  # keep blank lines so row positions map back to line numbers
            low_memory=False,
            skipinitialspace=True,
            **options,
        )
    except (pd.errors.ParserError, ValueError) as error:
        raise BarFileError(origin, f"the CSV cannot be parsed: {error}") from error
    # Line number of each data row in the original file (1-based), then drop the blank lines.
    numbers = np.arange(len(frame)) + first_index + header_lines + 1
    blank = frame.isna().all(axis=1).to_numpy()
    if blank.any():
        frame = frame.loc[~blank].reset_index(drop=True)
        numbers = numbers[~blank]
    if len(frame) == 0:
        raise BarFileError(origin, "the file has a header but no data rows" if has_header else "the file is empty")
    if not has_header:
        frame.columns = [f"column {i + 1}" for i in range(frame.shape[1])]
    return _Parsed(frame, numbers, "line", has_header, yfinance_header=header_lines == 3)


def _sniff_delimiter(sample: list[str]) -> str:
    sample = [line for line in sample if line.strip()]
    best, best_count = ",", 0
    for delimiter in DELIMITERS:
        counts = {line.count(delimiter) for line in sample}
        # The delimiter splits every sampled line into the same number of fields.
        if len(counts) == 1 and (count := counts.pop()) > best_count:
            best, best_count = delimiter, count
    return best


def _first_field(lines: list[str], index: int, delimiter: str) -> str:
    if index >= len(lines):
        return ""
    return lines[index].split(delimiter)[0].strip().strip('"').lower()


def _is_number(text: str) -> bool:
    try:
        float(text)
    except ValueError:
        return False
    return True


# --- columns ------------------------------------------------------------------------------------------------


def _normalise_name(name: str) -> str:
    return re.sub(r"[\s\-]+", "_", str(name).strip().lower())


@dataclass(frozen=True)
class _Columns:
    frame: pd.DataFrame  # ts (UTC timestamps, or text for validate_bars to parse) and the five value columns
    layout: str
    time_column: str
    epoch_unit: str | None
    file_symbol: str | None = None
    stated_interval: str | None = None


def _to_bar_columns(parsed: _Parsed, origin: str) -> _Columns:
    frame = parsed.frame
    if not parsed.has_header:
        return _headerless_kline(frame, origin)

    by_name: dict[str, str] = {}
    for column in frame.columns:
        by_name.setdefault(_normalise_name(column), column)
    found = ", ".join(map(str, frame.columns[:15])) + (" ..." if frame.shape[1] > 15 else "")

    ts_column = next((by_name[a] for a in TS_ALIASES if a in by_name), None)
    mapping = {
        ours: next((by_name[a] for a in aliases if a in by_name), None) for ours, aliases in VALUE_ALIASES.items()
    }
    missing = [ours for ours, column in mapping.items() if column is None]
    if ts_column is None and len(missing) == len(VALUE_ALIASES):
        raise BarFileError(
            origin,
            f"layout not recognised: no timestamp column ({', '.join(TS_ALIASES[:6])}, ...) and no "
            f"open/high/low/close/volume columns among: {found}",
        )
    if ts_column is None:
        raise BarFileError(
            origin, f"no timestamp column: expected one of {', '.join(TS_ALIASES[:7])} (found: {found})"
        )
    if missing:
        raise BarFileError(origin, f"missing column(s) {', '.join(missing)} (found: {found})")

    file_symbol = _one_symbol(frame, by_name, origin)
    ts, unit = _timestamps(frame[ts_column], origin)
    ts_name, names = _normalise_name(ts_column), set(by_name)
    values = {ours: frame[column] for ours, column in mapping.items()}
    stated_interval = None
    layout = _describe_layout(ts_name, names, unit, parsed.yfinance_header)
    if ts_name == "ts_event":
        stated_interval = _databento_interval(frame[by_name["rtype"]]) if "rtype" in names else None
        layout = "Databento ohlcv" + (f"-{stated_interval}" if stated_interval else "")
        prices = [values[k] for k in ("open", "high", "low", "close")]
        if all(pd.api.types.is_integer_dtype(p.dtype) for p in prices):
            values.update({k: values[k] * DATABENTO_PRICE_SCALE for k in ("open", "high", "low", "close")})
            layout += " (fixed-point prices in 1e-9 units, scaled)"
    out = pd.DataFrame({"ts": ts, **values})
    return _Columns(out, layout, str(ts_column), unit, file_symbol, stated_interval)


def _one_symbol(frame: pd.DataFrame, by_name: dict[str, str], origin: str) -> str | None:
    """The value of the file's symbol/ticker column; a file with several symbols is refused."""
    column = next((by_name[a] for a in SYMBOL_ALIASES if a in by_name), None)
    if column is None:
        return None
    symbols = frame[column].dropna().astype(str).str.strip().unique()
    if len(symbols) > 1:
        shown = ", ".join(sorted(symbols)[:5]) + (", ..." if len(symbols) > 5 else "")
        raise BarFileError(
            origin,
            f"the file holds {len(symbols)} symbols in its {column} column ({shown}): import one symbol per file "
            "(keep only that symbol's rows)",
        )
    return str(symbols[0]) if len(symbols) else None


def _databento_interval(rtype: pd.Series) -> str | None:
    codes = pd.to_numeric(rtype, errors="coerce").dropna().unique()
    if len(codes) != 1:
        return None
    return DATABENTO_RTYPE_INTERVALS.get(int(codes[0]))


def _headerless_kline(frame: pd.DataFrame, origin: str) -> _Columns:
    """No header: an exchange kline file, open time first, then open, high, low, close, volume."""
    if frame.shape[1] < 6:
        raise BarFileError(
            origin,
            f"layout not recognised: no header and only {frame.shape[1]} column(s); a file without a header "
            "must be an exchange kline file (open time, open, high, low, close, volume, ...)",
        )
    ts, unit = _timestamps(frame.iloc[:, 0], origin)
    if unit is None:
        raise BarFileError(origin, "layout not recognised: no header, and the first column is not a unix time")
    out = pd.DataFrame({"ts": ts, **{name: frame.iloc[:, i + 1] for i, name in enumerate(BAR_COLUMNS[1:])}})
    return _Columns(out, f"Binance klines without header ({frame.shape[1]} columns)", "column 1", unit)


def _describe_layout(ts_name: str, names: set[str], unit: str | None, yfinance_header: bool) -> str:
    if yfinance_header:
        return "yfinance download (Price/Ticker/Date header rows)"
    if ts_name == "window_start":
        return "Polygon/Massive flat file"
    if ts_name == "t":
        return "Polygon/Massive aggregates" if unit is not None else "Alpaca or Polygon/Massive bars (t as text)"
    if ts_name in ("open_time", "opentime"):
        return "Binance klines"
    if ts_name == "timestamp" and unit == "s":
        return "Kaggle 1-minute Bitcoin"
    if ts_name == "timestamp" and unit is None and names & {"trade_count", "vwap", "vw", "n"}:
        return "Alpaca bars"
    if ts_name in ("date", "datetime"):
        kind = "Yahoo Finance history" if names & {"dividends", "stock_splits"} else "Yahoo Finance"
        return kind + (" (Adj Close ignored)" if "adj_close" in names else "")
    if ts_name == "ts":
        return "plain ts/open/high/low/close/volume"
    return f"generic ({ts_name}, open, high, low, close, volume)"


def detect_epoch_unit(magnitudes: np.ndarray) -> str:
    """The unit ("s", "ms", "us", "ns") of unix times of these magnitudes, by EPOCH_UNITS.

    Raises ValueError when a value fits no unit, or the values need different units.
    """
    magnitudes = np.abs(np.asarray(magnitudes, dtype="float64"))
    if len(magnitudes) == 0:
        raise ValueError("no unix times to read")
    units = []
    for value in (magnitudes.min(), magnitudes.max()):
        unit = next((u for low, high, u in EPOCH_UNITS if low <= value < high), None)
        if unit is None:
            raise ValueError(
                f"{value:.15g} is not a unix time of a date after 1979 in seconds, milliseconds, microseconds or "
                "nanoseconds: write the times as text (2024-01-02 14:30:00+00:00)"
            )
        units.append(unit)
    if units[0] != units[1]:
        raise ValueError(f"unix times in different units (from {units[0]} to {units[1]}) in one file")
    return units[0]


def _timestamps(column: pd.Series, origin: str) -> tuple[pd.Series, str | None]:
    """Unix epochs (numbers) become UTC timestamps, unit by magnitude; anything else passes through for
    validate_bars to parse. Returns the column and the epoch unit (None when not epochs)."""
    if pd.api.types.is_bool_dtype(column.dtype) or not pd.api.types.is_numeric_dtype(column.dtype):
        return column, None
    values = column.to_numpy(dtype="float64", na_value=np.nan)
    finite = values[np.isfinite(values)]
    if len(finite) == 0:
        return column, None  # all empty: validate_bars reports the missing timestamps
    try:
        unit = detect_epoch_unit(finite)
    except ValueError as error:
        raise BarValidationError(origin, [Problem(str(error), len(finite))]) from None
    # Whole numbers go through int64 so that milliseconds keep their exact value.
    if pd.api.types.is_integer_dtype(column.dtype):
        stamps = pd.to_datetime(column, unit=unit, utc=True)
    elif np.all(finite == np.round(finite)):
        stamps = pd.to_datetime(pd.Series(values).round().astype("Int64"), unit=unit, utc=True)
    else:
        stamps = pd.to_datetime(pd.Series(values), unit=unit, utc=True)
    return stamps.dt.as_unit("us"), unit
