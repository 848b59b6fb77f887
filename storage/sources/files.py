"""Import bars from a CSV or Parquet file (a path, raw bytes, or an uploaded file object): `load_bar_file`.

Files are untrusted input, so they are parsed by pandas and pyarrow under limits on what they hold, never handed
to DuckDB's reader, and every rejection says what was wrong and where. Layouts recognised (column names
case-insensitive; the time column is the first of TS_ALIASES present):

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
- Parquet with any of the same column sets (a timestamp index saved with its name is used as ts)

A file holds one symbol: a symbol/ticker column with several values is refused. Timestamps: text with a zone
or offset is converted to UTC; NAIVE TIMESTAMPS ARE TAKEN AS UTC. Dates written day/month (04/01/2021) are read
in the order the column shows (a field above 12 is a day), and refused when no field tells (date_format says
it then). Unix times are read as seconds, milliseconds, microseconds or nanoseconds by their magnitude
(EPOCH_UNITS). Daily bars keep the vendor's stamp here (often local midnight: 05:00 UTC for New York); an import
(storage.importing.prepare_import) stores them at their session date, 00:00 UTC, as the yfinance source does.

Limits (MAX_ROWS, MAX_COLUMNS, MAX_UNCOMPRESSED_BYTES, MAX_LINE_LENGTH, MAX_FILE_BYTES) bound what a file may
hold, and are checked before the data is decoded: a Parquet file's row count and uncompressed size come from its
footer, a CSV's column count from its first line and its line lengths and encoding from one pass over the raw
bytes. The data is then read in batches of CHUNK_ROWS rows, only the columns the layout uses, each batch
validated as it comes (storage.validation, unsorted) and written into float64/int64 columns allocated once for
the rows the file can hold; they are sorted and de-duplicated once at the end. Reading needs the kept bars (48
bytes a bar, plus a row number) and one batch, never the file's text; storage/bench.py measures a whole import of
the largest file the limits allow (DuckDB's commit included) against a stated multiple of the kept bars.
"""
from __future__ import annotations

import codecs
import contextlib
import csv
import io
import os
import re
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

import numpy as np
import pandas as pd

from storage.sources.base import BAR_COLUMNS
from storage.validation import (
    BarValidationError,
    Problem,
    merge_problems,
    sort_and_deduplicate,
    validate_and_repair,
)

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


# --- limits -------------------------------------------------------------------------------------------------
# What one import may hold. The memory of an import follows the rows and the columns read, not the file's bytes:
# a Parquet file of 50 million constant rows compresses to a megabyte, and a CSV line can hold a million fields.
# Rows: 2 million is 3.8 years of 1-minute bars, 228 years of hourly ones. Each costs 52 bytes here once read,
# and about 220 more inside DuckDB while the import commits (the primary-key index of the new rows is built in
# memory and merged at COMMIT; it cannot spill), so the row limit is what bounds an import's memory.
MAX_ROWS = 2_000_000
MAX_COLUMNS = 64  # columns in a file (vendor files have 6-15)
MAX_UNCOMPRESSED_BYTES = 512 * 1024 * 1024  # Parquet: the columns read, uncompressed, as the footer states
MAX_LINE_LENGTH = 4096  # characters in one CSV line (vendor lines are 50-300)
MAX_FILE_BYTES = 1024 * 1024 * 1024  # the file itself (the app's uploads stop at server.maxUploadSize first)
MAX_PARQUET_FOOTER_BYTES = 16 * 1024 * 1024  # Parquet metadata; read before anything else
CHUNK_ROWS = 50_000  # rows per batch read, validated and kept before the next is read
HEAD_BYTES = 64 * 1024  # the start of a text file, for its encoding, delimiter and header
SCAN_BYTES = 4 * 1024 * 1024  # block size of the pass that checks a text file's encoding and line lengths


def limits_text() -> str:
    """The import limits in words, for messages and the README."""
    return (
        f"{MAX_ROWS:,} rows, {MAX_COLUMNS} columns, {MAX_LINE_LENGTH:,} characters per CSV line, "
        f"{MAX_UNCOMPRESSED_BYTES // 1024 ** 2} MB of Parquet columns uncompressed, {_size_text(MAX_FILE_BYTES)} a file"
    )


def _size_text(size: float) -> str:
    if size >= 1024 ** 3:
        return f"{size / 1024 ** 3:.0f} GB"
    return f"{size / 1024 / 1024:.0f} MB" if size >= 1024 * 1024 else f"{size:.0f} bytes"


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
    date_order: str | None = None  # day/month text dates: "day-first (line 14: '13/01/2021')"; None otherwise
    encoding: str | None = None  # text files: "utf-8", "utf-8-sig" (with a BOM), "utf-16", "cp1252"

    @property
    def time_reading(self) -> str:
        """How times were read, e.g. "open_time (unix ms)", "Date (text)" or "Date (text, day-first)"."""
        if self.epoch_unit:
            return f"{self.time_column} (unix {self.epoch_unit})"
        order = f", {self.date_order.split(' ')[0]}" if self.date_order else ""
        return f"{self.time_column} (text{order})"


def read_bar_file(
    source: str | os.PathLike | bytes | BinaryIO,
    max_bytes: int = MAX_FILE_BYTES,
    origin: str | None = None,
    *,
    date_format: str | None = None,
) -> pd.DataFrame:
    """Read a CSV or Parquet file of bars and return validated BAR_COLUMNS (load_bar_file(...).bars).

    The detected layout is recorded in the result's attrs["layout"].
    """
    loaded = load_bar_file(source, max_bytes, origin, date_format=date_format)
    loaded.bars.attrs["layout"] = f"{loaded.layout}; time column {loaded.time_reading}"
    return loaded.bars


def load_bar_file(
    source: str | os.PathLike | bytes | BinaryIO,
    max_bytes: int = MAX_FILE_BYTES,
    origin: str | None = None,
    *,
    date_format: str | None = None,
) -> BarFile:
    """Read a CSV or Parquet file of bars: validated BAR_COLUMNS (see validate_bars) and how they were read.

    source: a path, the file's bytes, or a binary file object (e.g. Streamlit's UploadedFile, whose .name is
        used as the origin). origin: the name quoted in error messages (default: the file name).
    date_format: text dates like 04/01/2021 in a known order ("day-first", "month-first") or a strptime format
        ("%d/%m/%Y"); None reads the order from the column and refuses a column that cannot tell.
    Naive timestamps are taken as UTC. Raises BarFileError for a file that cannot be read as bars (or is over a
    limit: see limits_text) and BarValidationError for bars that break a rule; both name the origin.
    """
    with _open_input(source, max_bytes, origin) as given:
        head = given.stream.read(HEAD_BYTES)
        given.stream.seek(0)
        if not head or (head.isspace() and len(head) < HEAD_BYTES):
            raise BarFileError(given.origin, "the file is empty")
        if head[:4] == b"PAR1":
            reader: _CsvReader | _ParquetReader = _ParquetReader(given.stream, given.origin)
        else:
            reader = _CsvReader(given.stream, head, given.origin)
        builder = _BarBuilder(reader.layout, given.origin, reader.row_label, date_format, reader.capacity)
        for frame, numbers in reader.chunks():
            builder.add(frame, numbers)
        return builder.finish(reader.kind, given.saved_at, getattr(reader, "encoding", None))


# --- bytes in -----------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class _Input:
    stream: BinaryIO  # seekable, at the file's start
    origin: str
    saved_at: pd.Timestamp | None  # the file's modification time (paths only)


@contextlib.contextmanager
def _open_input(source, max_bytes: int, origin: str | None) -> Iterator[_Input]:
    limit = _size_text(max_bytes)
    if isinstance(source, (bytes, bytearray, memoryview)):
        origin = origin or "uploaded file"
        if len(source) > max_bytes:
            raise BarFileError(origin, f"the file is {_size_text(len(source))}, over the {limit} limit")
        yield _Input(io.BytesIO(source), origin, None)
    elif isinstance(source, (str, os.PathLike)):
        path = Path(source)
        origin = origin or path.name
        if not path.is_file():
            raise BarFileError(origin, f"no such file: {path}")
        stat = path.stat()
        if stat.st_size > max_bytes:
            raise BarFileError(origin, f"the file is {stat.st_size / 1024 / 1024:.1f} MB, over the {limit} limit")
        with open(path, "rb") as stream:
            yield _Input(stream, origin, pd.Timestamp(stat.st_mtime_ns, unit="ns", tz="UTC"))
    elif hasattr(source, "read"):
        origin = origin or Path(str(getattr(source, "name", "") or "uploaded file")).name
        seekable = getattr(source, "seekable", lambda: False)()
        if seekable and isinstance(source.read(0), bytes) and source.tell() == 0:
            size = source.seek(0, io.SEEK_END)
            source.seek(0)
            if size > max_bytes:
                raise BarFileError(origin, f"the file is over the {limit} limit")
            yield _Input(source, origin, None)
            return
        data = source.read(max_bytes + 1)  # one byte more than allowed tells us it is too big
        if isinstance(data, str):
            data = data.encode("utf-8")
        if len(data) > max_bytes:
            raise BarFileError(origin, f"the file is over the {limit} limit")
        yield _Input(io.BytesIO(data), origin, None)
    else:
        raise TypeError(f"read_bar_file takes a path, bytes or a binary file object, not {type(source).__name__}")


def describe_binary(head: bytes) -> str | None:
    """What a file that is not text looks like, by its first bytes ("a ZIP archive ..."), or None."""
    for magic, what in _KNOWN_BINARY:
        if head.startswith(magic):
            return what
    if head[8:12] == b"DUCK":
        return "a DuckDB database"
    if head[:4] == b"PAR1":
        return "a Parquet file"
    return None


# Byte-order marks: (mark, the encoding that reads the text, or None when the file is refused with its name).
# UTF-32 marks first: UTF-32-LE's begins with UTF-16-LE's.
_BYTE_ORDER_MARKS: tuple[tuple[bytes, str | None, str], ...] = (
    (b"\xff\xfe\x00\x00", None, "UTF-32"),
    (b"\x00\x00\xfe\xff", None, "UTF-32"),
    (b"\xef\xbb\xbf", "utf-8-sig", "UTF-8 with a byte-order mark"),
    (b"\xff\xfe", "utf-16", "UTF-16"),
    (b"\xfe\xff", "utf-16", "UTF-16"),
)
_SAVE_AS_UTF8 = "save it as UTF-8 (Excel: 'CSV UTF-8'; Notepad: Save as, Encoding UTF-8)"


def _text_encoding(head: bytes, origin: str) -> str:
    """The encoding a text file declares by its byte-order mark (UTF-8 without one); refuses what is not text."""
    what = describe_binary(head)
    if what is not None:
        raise BarFileError(origin, f"not a CSV or Parquet file: it looks like {what}")
    for mark, encoding, name in _BYTE_ORDER_MARKS:
        if head.startswith(mark):
            if encoding is None:
                raise BarFileError(origin, f"the file is {name} text: {_SAVE_AS_UTF8}")
            return encoding
    if b"\x00" in head:
        # ASCII written as UTF-16 without a byte-order mark: every other byte is NUL.
        if max(head[0::2].count(0), head[1::2].count(0)) > 0.4 * (len(head) / 2):
            raise BarFileError(origin, f"the file looks like UTF-16 text without a byte-order mark: {_SAVE_AS_UTF8}")
        raise BarFileError(origin, "not a CSV or Parquet file: it contains binary data (NUL bytes)")
    return "utf-8"


def _decode_head(head: bytes, encoding: str) -> str:
    """The start of a text file as text (its last character may be cut; a head that is not UTF-8 is cp1252)."""
    try:
        return head.decode(encoding)
    except UnicodeDecodeError as error:
        if error.start >= len(head) - 4:
            return head[: error.start].decode(encoding, errors="ignore")
        if encoding != "utf-8":
            return head.decode(encoding, errors="ignore")
        return head.decode("cp1252", errors="replace")


@dataclass(frozen=True)
class _TextShape:
    """What the scan of a text file checks each line against."""

    delimiter: str
    width: int  # fields of the header (or of the first line without one)
    skip_lines: int  # lines before the first data line
    newline: bytes  # b"\n", or b"\r" for a file with old Mac line ends


def _scan_text(stream: BinaryIO, encoding: str, shape: _TextShape, origin: str) -> tuple[str, int]:
    """One pass over the raw bytes before parsing: the encoding the whole file decodes with (UTF-8, else cp1252
    when the text is otherwise clean, as Windows spreadsheets save it), every line within MAX_LINE_LENGTH, and no
    data line with more fields than the header (an unquoted delimiter would shift its columns). Returns the
    encoding and the number of lines."""
    try:
        return encoding, _scan_pass(stream, encoding, "strict", shape, origin)
    except UnicodeDecodeError as error:
        if encoding != "utf-8":
            raise BarFileError(origin, f"byte {error.start} is not {encoding} text: {_SAVE_AS_UTF8}") from None
        position = error.start
    stream.seek(0)
    text = stream.read(HEAD_BYTES).decode("cp1252", errors="replace")
    control = sum(1 for ch in text if ch == "\ufffd" or (ord(ch) < 32 and ch not in "\r\n\t"))
    if control > 0.01 * len(text):
        raise BarFileError(
            origin, f"not a CSV or Parquet file: byte {position} is not text (neither UTF-8 nor cp1252)"
        )
    return "cp1252", _scan_pass(stream, "cp1252", "replace", shape, origin)


def _scan_pass(stream: BinaryIO, encoding: str, errors: str, shape: _TextShape, origin: str) -> int:
    """Decode block by block (UnicodeDecodeError carries the file offset); lines and fields are counted on the
    bytes with numpy (delimiter and line end are one byte in UTF-8 and cp1252; UTF-16 is measured as text).
    Returns the number of lines (the last one counted even when empty)."""
    stream.seek(0)
    decoder = codecs.getincrementaldecoder(encoding)(errors=errors)
    one_byte = encoding != "utf-16"
    line, length, fields, quoted, offset = 1, 0, 0, False, 0  # the line in progress at the end of a block
    tail = np.zeros(2, dtype=np.uint8)  # the last two bytes of the blocks before
    newline, delimiter = shape.newline[0], ord(shape.delimiter)
    while True:
        block = stream.read(SCAN_BYTES)
        try:
            text = decoder.decode(block, final=not block)
        except UnicodeDecodeError as error:
            error.start += offset
            raise
        offset += len(block)
        if not one_byte:
            parts = text.replace("\r\n", "\n").replace("\r", "\n").split("\n")
            lengths = np.array([length + len(parts[0]), *map(len, parts[1:])])
            _refuse_long_line(lengths, line, origin)
            line, length = line + len(parts) - 1, int(lengths[-1])
        else:
            raw = np.frombuffer(block, dtype=np.uint8)
            ends = np.flatnonzero(raw == newline)
            # Each line of the block ends at a newline, the last one at the block's end (at the file's end, the
            # final block is empty and holds only the line carried over). The two bytes before each end, the
            # blocks before included, tell a CRLF ending and a trailing delimiter.
            line_ends = np.concatenate((ends, [len(raw)]))
            extended = np.concatenate((tail, raw))
            last, second_last = extended[line_ends + 1], extended[line_ends]
            carriage_return = (last == 13) & (newline == 10)
            content_end = np.where(carriage_return, second_last, last)
            lengths = line_ends - np.concatenate(([0], ends + 1)) - carriage_return
            lengths[0] += length
            _refuse_long_line(lengths, line, origin)
            # Fields per line: its delimiters, less one that ends the line (an empty last field, which some
            # exporters add to every line); a line with a quote is left to pandas, which reads quotes.
            counts = np.bincount(np.searchsorted(ends, np.flatnonzero(raw == delimiter)), minlength=len(ends) + 1)
            quotes = np.bincount(np.searchsorted(ends, np.flatnonzero(raw == 34)), minlength=len(ends) + 1) > 0
            counts[0] += fields
            quotes[0] |= quoted
            numbers = line + np.arange(len(counts))
            fields_in_line = counts + 1 - (content_end == delimiter)
            wide = (fields_in_line > shape.width) & ~quotes & (numbers > shape.skip_lines)
            if not block:
                wide &= lengths > 0
            elif len(wide):
                wide[-1] = False  # the last line goes on in the next block
            if wide.any():
                at = int(np.argmax(wide))
                raise BarFileError(
                    origin,
                    f"line {numbers[at]:,} has {fields_in_line[at]} fields, more than the {shape.width} of the header "
                    "(or first line): an unquoted delimiter, such as a thousands separator, would shift its columns",
                )
            line, length, fields, quoted = line + len(ends), int(lengths[-1]), int(counts[-1]), bool(quotes[-1])
            tail = extended[-2:]
        if not block:
            return line


def _refuse_long_line(lengths: np.ndarray, line: int, origin: str) -> None:
    if len(lengths) and lengths.max() > MAX_LINE_LENGTH:
        at = int(np.argmax(lengths > MAX_LINE_LENGTH))
        raise BarFileError(
            origin,
            f"line {line + at:,} is over {MAX_LINE_LENGTH:,} characters long (the limit for a CSV line): not a "
            "bar file, or a field holds far more than a number or a time",
        )


# --- CSV ----------------------------------------------------------------------------------------------------


class _CsvReader:
    """A text file: encoding and limits checked, header and layout found, then its rows in batches."""

    kind = "csv"
    row_label = "line"

    def __init__(self, stream: BinaryIO, head: bytes, origin: str):
        self.stream, self.origin = stream, origin
        declared = _text_encoding(head, origin)
        head_text = _decode_head(head, declared)
        self._check_first_line_width(head_text, len(head) == HEAD_BYTES)
        lines = head_text.splitlines()[:200]
        first_index = next((i for i, line in enumerate(lines) if line.strip()), None)
        if first_index is None:
            raise BarFileError(origin, "the file is empty")
        self.delimiter = _sniff_delimiter(lines[first_index : first_index + 20])
        first_fields = _split_fields(lines[first_index], self.delimiter)
        has_header = not all(_is_number(f) for f in first_fields if f)
        names, header_lines = first_fields, 1 if has_header else 0
        yfinance_header = False
        if has_header and first_fields[0].lower() == "price" and _first_field(lines, first_index + 1, self.delimiter) == "ticker":
            # yfinance's download().to_csv(): "Price,Close,..." / "Ticker,SPY,..." / "Date,,,...", then data.
            third = lines[first_index + 2] if len(lines) > first_index + 2 else ""
            ts_name = third.split(self.delimiter)[0].strip().strip('"') or "Date"  # as written: Date or Datetime
            names, header_lines, yfinance_header = [ts_name, *first_fields[1:]], 3, True
        if not has_header:
            names = [f"column {i + 1}" for i in range(len(first_fields))]
        self.has_header = has_header
        self.skip_lines = first_index + header_lines
        self.layout = _find_layout(names, has_header, yfinance_header, origin)
        newline = b"\r" if b"\n" not in head and b"\r" in head else b"\n"
        shape = _TextShape(self.delimiter, len(names), self.skip_lines, newline)
        self.encoding, lines = _scan_text(stream, declared, shape, origin)
        self.capacity = max(lines - self.skip_lines, 0)  # data rows at most (blank lines are dropped)
        stream.seek(0)

    def _check_first_line_width(self, head_text: str, truncated: bool) -> None:
        lines = head_text.splitlines()
        first = next((line for line in lines if line.strip()), "")
        delimiter = _sniff_delimiter([first])
        count = first.count(delimiter) + 1
        if count > MAX_COLUMNS:
            cut = truncated and len(lines) <= 1
            raise BarFileError(
                self.origin,
                f"the first line has {'more than ' if cut else ''}{count - 1 if cut else count:,} columns, over the "
                f"{MAX_COLUMNS}-column limit: keep the time and open/high/low/close/volume columns",
            )

    def chunks(self) -> Iterator[tuple[pd.DataFrame, np.ndarray]]:
        """Batches of CHUNK_ROWS rows (blank lines dropped) with each row's line number; columns are named by
        their position in the file, only those the layout uses."""
        width = len(self.layout.names)
        self.stream.seek(0)
        line, rows = self.skip_lines + 1, 0
        try:
            reader = pd.read_csv(
                self.stream,
                sep=self.delimiter,
                header=None,
                names=list(range(width)),
                usecols=self.layout.used,  # a longer line was refused by the scan: nothing is cut off silently
                index_col=False,
                skiprows=self.skip_lines,
                skip_blank_lines=False,  # keep blank lines so row positions map back to line numbers
                skipinitialspace=True,
                chunksize=CHUNK_ROWS,
                encoding=self.encoding,
                encoding_errors="replace" if self.encoding == "cp1252" else "strict",
            )
            for frame in reader:
                numbers = np.arange(line, line + len(frame))
                line += len(frame)
                blank = frame.isna().all(axis=1).to_numpy()
                if blank.any():
                    frame, numbers = frame.loc[~blank], numbers[~blank]
                rows += len(frame)
                if rows > MAX_ROWS:
                    raise _too_many_rows(self.origin, f"more than {MAX_ROWS:,}")
                yield frame, numbers
        except BarFileError:
            raise
        except (pd.errors.ParserError, ValueError, UnicodeDecodeError) as error:
            raise BarFileError(self.origin, f"the CSV cannot be parsed: {error}") from error


def _too_many_rows(origin: str, count: str, how: str = "") -> BarFileError:
    return BarFileError(
        origin,
        f"the file holds {count} rows{how}, over the {MAX_ROWS:,}-row import limit ({limits_text()}): split it, "
        "e.g. one year per file",
    )


def _split_fields(line: str, delimiter: str) -> list[str]:
    fields = next(csv.reader([line], delimiter=delimiter, skipinitialspace=True), [])
    return [f.strip().strip('"') for f in fields]


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


# --- Parquet ------------------------------------------------------------------------------------------------


class _ParquetReader:
    """A Parquet file: limits checked on its footer before any page is decompressed, then its rows in batches."""

    kind = "parquet"
    row_label = "row"

    def __init__(self, stream: BinaryIO, origin: str):
        import pyarrow as pa
        import pyarrow.parquet as pq

        self.origin = origin
        stream.seek(0, io.SEEK_END)
        size = stream.tell()
        stream.seek(max(size - 8, 0))
        tail = stream.read(8)
        stream.seek(0)
        if size < 12 or tail[4:] != b"PAR1":
            raise BarFileError(origin, "the Parquet file cannot be read: it has no Parquet footer (cut short?)")
        footer = int.from_bytes(tail[:4], "little")
        if footer > MAX_PARQUET_FOOTER_BYTES:
            raise BarFileError(
                origin, f"the Parquet file's metadata is {_size_text(footer)}, over the "
                f"{_size_text(MAX_PARQUET_FOOTER_BYTES)} limit: far more columns or row groups than bars need",
            )
        try:
            schema = pq.read_schema(stream)
            stream.seek(0)
            text_columns = [f.name for f in schema if pa.types.is_string(f.type) or pa.types.is_large_string(f.type)]
            # Text stays dictionary-encoded: a value repeated in every row is decoded once, not once per row.
            # buffer_size: column chunks are read as a stream of pages, not whole into memory first.
            self.file = pq.ParquetFile(stream, read_dictionary=text_columns, buffer_size=1 << 20, pre_buffer=False)
        except Exception as error:  # pyarrow raises several types for corrupt files; all mean the same here
            raise BarFileError(origin, f"the Parquet file cannot be read: {error}") from error
        metadata = self.file.metadata
        if metadata.num_columns > MAX_COLUMNS:
            raise BarFileError(
                origin, f"the Parquet file has {metadata.num_columns:,} columns, over the {MAX_COLUMNS}-column limit"
            )
        if metadata.num_rows > MAX_ROWS:
            raise _too_many_rows(origin, f"{metadata.num_rows:,}", " (its metadata says; nothing was decompressed)")
        self.capacity = metadata.num_rows
        names = [str(name) for name in self.file.schema_arrow.names]
        self.layout = _find_layout(names, True, False, origin)
        self.columns = [names[i] for i in self.layout.used]
        uncompressed = sum(
            group.column(j).total_uncompressed_size
            for group in (metadata.row_group(i) for i in range(metadata.num_row_groups))
            for j in range(group.num_columns)
            if group.column(j).path_in_schema.split(".")[0] in self.columns
        )
        if uncompressed > MAX_UNCOMPRESSED_BYTES:
            raise BarFileError(
                origin,
                f"the Parquet columns to read are {_size_text(uncompressed)} uncompressed (its metadata says), over "
                f"the {_size_text(MAX_UNCOMPRESSED_BYTES)} limit ({limits_text()})",
            )

    def chunks(self) -> Iterator[tuple[pd.DataFrame, np.ndarray]]:
        position = {name: i for i, name in zip(self.layout.used, self.columns)}
        row = 0
        try:
            for batch in self.file.iter_batches(batch_size=CHUNK_ROWS, columns=self.columns):
                frame = batch.to_pandas(ignore_metadata=True).rename(columns=position)  # an index stays a column
                for column in frame.columns:
                    if isinstance(frame[column].dtype, pd.CategoricalDtype):
                        frame[column] = self._decoded(frame[column])
                numbers = np.arange(row + 1, row + 1 + len(frame))
                row += len(frame)
                if row > MAX_ROWS:
                    raise _too_many_rows(self.origin, f"more than {MAX_ROWS:,}")
                yield frame, numbers
        except BarValidationError:
            raise
        except Exception as error:  # a corrupt page shows only when it is read
            raise BarFileError(self.origin, f"the Parquet file cannot be read: {error}") from error
        finally:
            import pyarrow as pa

            pa.default_memory_pool().release_unused()  # Arrow's allocator keeps freed batches for reuse otherwise

    def _decoded(self, column: pd.Series) -> pd.Series:
        """A dictionary-encoded text column as plain text (pointers to its few distinct values)."""
        categories = column.cat.categories
        if len(categories) and categories.astype(str).str.len().max() > MAX_LINE_LENGTH:
            raise BarFileError(self.origin, f"a text value over {MAX_LINE_LENGTH:,} characters long: not a bar file")
        return column.astype(object)


# --- columns ------------------------------------------------------------------------------------------------


def _normalise_name(name: str) -> str:
    return re.sub(r"[\s\-]+", "_", str(name).strip().lower())


@dataclass(frozen=True)
class _Layout:
    """Which of a file's columns hold what, by position (the same for every batch)."""

    names: tuple[str, ...]  # as in the file ("column 1", ... without a header)
    has_header: bool
    yfinance_header: bool
    ts: int
    values: dict[str, int]  # open/high/low/close/volume -> position
    symbol: int | None = None
    rtype: int | None = None

    @property
    def used(self) -> list[int]:
        positions = {self.ts, *self.values.values(), self.symbol, self.rtype}
        return sorted(p for p in positions if p is not None)

    @property
    def ts_name(self) -> str:
        return _normalise_name(self.names[self.ts])


def _find_layout(names: list[str], has_header: bool, yfinance_header: bool, origin: str) -> _Layout:
    if not has_header:
        if len(names) < 6:
            raise BarFileError(
                origin,
                f"layout not recognised: no header and only {len(names)} column(s); a file without a header "
                "must be an exchange kline file (open time, open, high, low, close, volume, ...)",
            )
        return _Layout(tuple(names), False, False, 0, {name: i + 1 for i, name in enumerate(BAR_COLUMNS[1:])})

    positions: dict[str, list[int]] = {}
    for i, name in enumerate(names):
        positions.setdefault(_normalise_name(name), []).append(i)
    found = ", ".join(map(str, names[:15])) + (" ..." if len(names) > 15 else "")

    def first(aliases) -> int | None:
        return next((positions[a][0] for a in aliases if a in positions), None)

    ts = first(TS_ALIASES)
    mapping = {ours: first(aliases) for ours, aliases in VALUE_ALIASES.items()}
    missing = [ours for ours, column in mapping.items() if column is None]
    if ts is None and len(missing) == len(VALUE_ALIASES):
        raise BarFileError(
            origin,
            f"layout not recognised: no timestamp column ({', '.join(TS_ALIASES[:6])}, ...) and no "
            f"open/high/low/close/volume columns among: {found}",
        )
    if ts is None:
        raise BarFileError(origin, f"no timestamp column: expected one of {', '.join(TS_ALIASES[:7])} (found: {found})")
    if missing:
        raise BarFileError(origin, f"missing column(s) {', '.join(missing)} (found: {found})")
    symbol = first(SYMBOL_ALIASES)
    for position in (ts, *mapping.values(), symbol):
        if position is not None and len(same := positions[_normalise_name(names[position])]) > 1:
            columns = ", ".join(str(i + 1) for i in same)
            times = "twice" if len(same) == 2 else f"{len(same)} times"
            raise BarFileError(
                origin, f"the header names {names[position]!r} {times} (columns {columns}): keep one of them"
            )
    return _Layout(tuple(names), True, yfinance_header, ts, mapping, symbol, first(("rtype",)))


class _BarBuilder:
    """Turns batches of a file's columns into validated bars, checking what must agree between batches (the
    unix time unit, the day/month order, fixed-point prices, one symbol), and joins them at the end.

    The bars are written into columns allocated once for all rows the file can hold (capacity: its data lines,
    or a Parquet file's row count, at most MAX_ROWS), so the batches are never copied into a second set of
    arrays when joined: memory is the kept bars (48 bytes each, plus 4 for the row's number) and one batch.
    """

    def __init__(self, layout: _Layout, origin: str, row_label: str, date_format: str | None, capacity: int):
        self.layout, self.origin, self.row_label = layout, origin, row_label
        self.date_format = date_format  # as told; after the first batch of day/month dates, as that batch showed
        self.date_order: str | None = None
        self.unit: tuple[str | None, int] | None = None  # (epoch unit or None for text, first line)
        self.fixed_point: bool | None = None
        self.symbols: set[str] = set()
        self.rtypes: set[int] = set()
        capacity = min(capacity, MAX_ROWS)
        self.columns = {"ts": np.empty(capacity, dtype="int64"), "line": np.empty(capacity, dtype="int32")}
        self.columns.update({c: np.empty(capacity, dtype="float64") for c in BAR_COLUMNS[1:]})
        self.filled = 0
        self.problems: list[Problem] = []
        self.rows_read = self.empty_rows = self.repairs = 0
        self.repaired_examples: tuple[str, ...] = ()

    def add(self, frame: pd.DataFrame, numbers: np.ndarray) -> None:
        self.rows_read += len(frame)
        if len(frame) == 0:
            return
        columns = self._bar_columns(frame, numbers)
        values = columns[list(BAR_COLUMNS[1:])]
        empty = values.isna().all(axis=1).to_numpy() & columns["ts"].notna().to_numpy()
        if empty.any():
            self.empty_rows += int(empty.sum())
            columns, numbers = columns.loc[~empty], numbers[~empty]
            if len(columns) == 0:
                return
        try:
            checked = validate_and_repair(
                columns, self.origin, row_numbers=numbers, row_label=self.row_label, date_format=self.date_format,
                sort=False,
            )
        except BarValidationError as error:
            # Refused: keep reading only to count the problems in the whole file; drop the bars.
            self.problems = merge_problems(self.problems, error.problems)
            return
        if self.problems:
            return
        if checked.date_order is not None and self.date_order is None:
            self.date_order = checked.date_order
            if self.date_format is None:
                self.date_format = checked.date_order.split(" ")[0]  # later batches must agree
        self.repairs += checked.rounding_repairs
        self.repaired_examples = (self.repaired_examples + checked.repaired_examples)[:3]
        bars, start = checked.bars, self.filled
        end = start + len(bars)
        if end > len(self.columns["ts"]):  # more rows than the scan counted lines: cannot happen, but never overrun
            raise _too_many_rows(self.origin, f"more than {len(self.columns['ts']):,}")
        self.columns["ts"][start:end] = pd.DatetimeIndex(bars["ts"]).as_unit("us").asi8
        self.columns["line"][start:end] = numbers
        for c in BAR_COLUMNS[1:]:
            self.columns[c][start:end] = bars[c].to_numpy(dtype="float64")
        self.filled = end

    def _bar_columns(self, frame: pd.DataFrame, numbers: np.ndarray) -> pd.DataFrame:
        layout = self.layout
        raw_ts = frame[layout.ts]
        ts, unit = _timestamps(raw_ts, self.origin)
        if raw_ts.notna().any():
            if self.unit is None:
                self.unit = (unit, int(numbers[0]))
            elif self.unit[0] != unit:
                def kind(u):
                    return f"unix {u}" if u else "text"
                raise BarValidationError(self.origin, [Problem(
                    f"the time column changes from {kind(self.unit[0])} (from {self.row_label} {self.unit[1]}) to "
                    f"{kind(unit)} (by {self.row_label} {numbers[-1]}): unix times in different units or mixed with "
                    "text", 0)])
        if not layout.has_header and unit is None:
            raise BarFileError(self.origin, "layout not recognised: no header, and the first column is not a unix time")
        values = {ours: frame[position] for ours, position in layout.values.items()}
        if layout.ts_name == "ts_event":
            prices = [values[k] for k in ("open", "high", "low", "close")]
            fixed = all(pd.api.types.is_integer_dtype(p.dtype) for p in prices)
            if self.fixed_point is None:
                self.fixed_point = fixed
            elif self.fixed_point and not fixed:
                raise BarFileError(
                    self.origin, f"prices change from fixed-point integers to decimals by {self.row_label} "
                    f"{numbers[-1]}: a Databento file has one price encoding",
                )
            if self.fixed_point:
                values.update({k: values[k] * DATABENTO_PRICE_SCALE for k in ("open", "high", "low", "close")})
        if layout.symbol is not None:
            self._one_symbol(frame[layout.symbol])
        if layout.rtype is not None:
            self.rtypes.update(int(c) for c in pd.to_numeric(frame[layout.rtype], errors="coerce").dropna().unique())
        return pd.DataFrame({"ts": ts, **values})

    def _one_symbol(self, column: pd.Series) -> None:
        """A file holds one symbol: a second value in its symbol/ticker column is refused."""
        self.symbols.update(column.dropna().astype(str).str.strip().unique())
        if len(self.symbols) > 1:
            shown = ", ".join(sorted(self.symbols)[:5]) + (", ..." if len(self.symbols) > 5 else "")
            name = self.layout.names[self.layout.symbol]
            raise BarFileError(
                self.origin,
                f"the file holds {len(self.symbols)} symbols in its {name} column ({shown}): import one symbol per "
                "file (keep only that symbol's rows)",
            )

    def finish(self, kind: str, saved_at: pd.Timestamp | None, encoding: str | None) -> BarFile:
        if self.rows_read == 0:
            raise BarFileError(
                self.origin, "the file has a header but no data rows" if self.layout.has_header else "the file is empty"
            )
        if self.problems:
            raise BarValidationError(self.origin, self.problems)
        if self.filled == 0:
            raise BarFileError(self.origin, f"every row's prices and volume are empty ({self.rows_read:,} rows)")
        kept = {name: column[: self.filled] for name, column in self.columns.items()}
        self.columns = {}
        numbers = kept.pop("line")
        ts = pd.DatetimeIndex(kept.pop("ts").view("datetime64[us]")).tz_localize("UTC")
        unsorted = pd.DataFrame({"ts": ts, **kept}, copy=False)
        bars = sort_and_deduplicate(unsorted, self.origin, numbers, self.row_label)
        unit = self.unit[0] if self.unit else None
        stated = next(iter(self.rtypes)) if len(self.rtypes) == 1 else None
        stated_interval = DATABENTO_RTYPE_INTERVALS.get(stated) if stated is not None else None
        layout = _describe_layout(self.layout.ts_name, set(_normalise_name(n) for n in self.layout.names), unit,
                                  self.layout.yfinance_header) if self.layout.has_header else \
            f"Binance klines without header ({len(self.layout.names)} columns)"
        if self.layout.ts_name == "ts_event" and self.layout.has_header:
            layout = "Databento ohlcv" + (f"-{stated_interval}" if stated_interval else "")
            if self.fixed_point:
                layout += " (fixed-point prices in 1e-9 units, scaled)"
        return BarFile(
            bars=bars,
            origin=self.origin,
            layout=f"{kind}: {layout}",
            time_column=str(self.layout.names[self.layout.ts]),
            epoch_unit=unit,
            rows_read=self.rows_read,
            rounding_repairs=self.repairs,
            repaired_examples=self.repaired_examples,
            duplicates_dropped=len(unsorted) - len(bars),
            empty_rows_dropped=self.empty_rows,
            file_symbol=next(iter(self.symbols)) if self.symbols else None,
            stated_interval=stated_interval,
            saved_at=saved_at,
            date_order=self.date_order,
            encoding=encoding,
        )


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
