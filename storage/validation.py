"""One gate every bar passes before it reaches the cache: `validate_bars`.

Sources and file imports hand in whatever they parsed; this module either returns the normalised frame
(exactly BAR_COLUMNS, ts as datetime64[us, UTC], float64 prices and volume, sorted by ts, unique) or raises
BarValidationError naming the origin, the rows and the rule broken. Problems are collected rule by rule (with
a few example rows each) instead of stopping at the first, so a user fixes a file in one round trip.

Everything is vectorised: the checks are numpy masks over whole columns, and only the handful of rows that
end up quoted in a message are ever formatted.
"""
from __future__ import annotations

import re
import warnings
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
import pandas as pd

from storage.sources.base import BAR_COLUMNS

PRICE_COLUMNS: tuple[str, ...] = ("open", "high", "low", "close")
VALUE_COLUMNS: tuple[str, ...] = (*PRICE_COLUMNS, "volume")

# Relative tolerance for OHLC consistency. yfinance's auto_adjust (its default) multiplies open/high/low by
# adj_close/close in float64 and takes close from adj_close, so close (or open) can land one ulp (relative ~1e-16)
# above high or below low, on about 30 rows of a typical equity file. A row whose open/close/high/low disagree by no
# more than this fraction of its largest price is float rounding, not a bad bar: it is repaired (high and low
# widened to contain open and close) and counted. Eight ulps leave room for a few chained float operations while
# staying about a million times below the smallest real tick (a cent on a $10,000 price is 1e-6).
OHLC_ROUNDING_TOLERANCE = 8 * float(np.finfo(np.float64).eps)

# Prices outside [PRICE_FLOOR, PRICE_CEILING] are no market's: a subnormal float (1e-320), a price in the wrong
# unit by many orders of magnitude, or 1e308 from a broken export. The floor sits below the cheapest traded
# crypto tokens (about 1e-7 per unit), the ceiling far above any share or index (BRK.A is under 1e6). Volume above
# VOLUME_CEILING (a billion billion units) or a subnormal volume is refused likewise.
PRICE_FLOOR = 1e-8
PRICE_CEILING = 1e9
VOLUME_CEILING = 1e18
_SMALLEST_NORMAL = float(np.finfo(np.float64).tiny)

# A message lists at most this many broken rules, each with at most this many example rows: enough to see
# the pattern, short enough to read in an error banner.
MAX_RULES_SHOWN = 5
MAX_EXAMPLES_PER_RULE = 3

# Dates written day/month/year or month/day/year (04/01/2021, 4.1.2021, 04-01-21): the first two fields are the
# day and the month in one order or the other. Year-first text (2021/04/01) is never ambiguous.
_DAY_MONTH_TEXT = re.compile(r"^\s*(\d{1,2})[/.\-](\d{1,2})[/.\-](\d{2,4})(?!\d)")
DATE_ORDERS: tuple[str, ...] = ("day-first", "month-first")

# A timestamp string carries a zone when it ends in Z, UTC/GMT or a +hh:mm / -hhmm offset after the time.
_AWARE_TEXT = re.compile(r"\d{2}:\d{2}(?::\d{2}(?:\.\d+)?)?\s*(?:Z|UTC|GMT|[+-]\d{2}(?::?\d{2})?)$", re.IGNORECASE)


@dataclass(frozen=True)
class Problem:
    """One broken rule: how many rows break it and a few of them, already formatted."""

    rule: str
    count: int
    examples: tuple[str, ...] = field(default_factory=tuple)

    def describe(self) -> str:
        if self.count == 0:  # a rule about the whole input (missing columns, no rows): no rows to count
            return self.rule
        rows = "row" if self.count == 1 else "rows"
        text = f"{self.rule}: {self.count} {rows}"
        if self.examples:
            text += ", e.g. " + "; ".join(self.examples)
            if self.count > len(self.examples):
                text += "; ..."
        return text


@dataclass(frozen=True)
class ValidatedBars:
    """What validate_and_repair returns: the normalised bars and what was changed to get them."""

    bars: pd.DataFrame
    rounding_repairs: int = 0  # rows whose high/low were widened by at most OHLC_ROUNDING_TOLERANCE
    repaired_examples: tuple[str, ...] = ()  # a few of them, e.g. "line 14 (close=472.65000000000003 > high=472.65)"
    duplicates_dropped: int = 0  # repeated rows with identical values
    date_order: str | None = None  # how day/month text dates were read ("day-first (line 14: '13/01/2021')")


class BarValidationError(ValueError):
    """Bars that break a rule. `origin` says where they came from, `problems` what is wrong."""

    def __init__(self, origin: str, problems: Sequence[Problem]):
        self.origin = origin
        self.problems = tuple(problems)
        shown = self.problems[:MAX_RULES_SHOWN]
        lines = [f"{origin}: invalid bars ({len(self.problems)} rule{'s' if len(self.problems) != 1 else ''} broken)"]
        lines += [f"  - {p.describe()}" for p in shown]
        if len(self.problems) > len(shown):
            lines.append(f"  - ... and {len(self.problems) - len(shown)} more rule(s)")
        super().__init__("\n".join(lines))

    @property
    def rules(self) -> tuple[str, ...]:
        return tuple(p.rule for p in self.problems)


def merge_problems(*groups: Sequence[Problem]) -> list[Problem]:
    """Problems of several batches of one input as one list: counts of a rule add up, examples keep the first few."""
    merged: dict[str, Problem] = {}
    for problems in groups:
        for problem in problems:
            seen = merged.get(problem.rule)
            if seen is None:
                merged[problem.rule] = problem
            else:
                examples = (seen.examples + problem.examples)[:MAX_EXAMPLES_PER_RULE]
                merged[problem.rule] = Problem(problem.rule, seen.count + problem.count, examples)
    return list(merged.values())


def validate_bars(
    frame: pd.DataFrame,
    origin: str,
    *,
    row_numbers: Sequence[int] | np.ndarray | None = None,
    row_label: str = "row",
    date_format: str | None = None,
) -> pd.DataFrame:
    """Normalise `frame` to BAR_COLUMNS or raise BarValidationError (validate_and_repair without the counts)."""
    return validate_and_repair(frame, origin, row_numbers=row_numbers, row_label=row_label, date_format=date_format).bars


def validate_and_repair(
    frame: pd.DataFrame,
    origin: str,
    *,
    row_numbers: Sequence[int] | np.ndarray | None = None,
    row_label: str = "row",
    date_format: str | None = None,
    sort: bool = True,
) -> ValidatedBars:
    """Normalise `frame` to BAR_COLUMNS or raise BarValidationError; say what was repaired or dropped.

    origin: where the bars came from, quoted in every message ("prices.csv", "yfinance:SPY").
    row_numbers: how to name each row of `frame` in messages, e.g. the original line numbers of a CSV file;
        by default the 1-based data row. row_label is the word printed before it ("row", "line").
    date_format: how to read text dates: "day-first" or "month-first" for dates like 04/01/2021, or a strptime
        format ("%d/%m/%Y %H:%M"). None: ISO 8601 as written; day/month dates in the order the column itself
        shows (a first field above 12 is a day, a second field above 12 is a day); a column where every first
        and second field is 12 or less cannot tell, and is refused (see detect_date_order).
    sort: False leaves the rows in their order, one per input row (for a caller that validates a file in batches
        and sorts once with sort_and_deduplicate, keeping each row's number).

    Rules: the six columns exist (extra columns are dropped); the frame has rows; ts parses as a timestamp and
    is all zone-aware or all naive (naive timestamps are taken as UTC); prices and volume are numbers, finite,
    prices > 0 and within [PRICE_FLOOR, PRICE_CEILING], volume below VOLUME_CEILING and not subnormal, high >= low, open and close inside [low, high], volume >= 0, where a row that breaks the last two
    by no more than OHLC_ROUNDING_TOLERANCE (relative) is float rounding: its high and low are widened to contain
    open and close, and the row is counted in rounding_repairs. Rows are sorted by ts; a repeated timestamp with
    identical values is dropped (counted), one with different values is an error.
    """
    if not isinstance(frame, pd.DataFrame):
        raise TypeError(f"{origin}: expected a pandas DataFrame of bars, got {type(frame).__name__}")
    if "ts" not in frame.columns and frame.index.name == "ts":
        frame = frame.reset_index()

    if frame.shape[1] == 0:
        raise BarValidationError(origin, [Problem("empty input: no columns and no rows", 0)])
    missing = [c for c in BAR_COLUMNS if c not in frame.columns]
    if missing:
        found = ", ".join(map(str, frame.columns[:12])) + (" ..." if frame.shape[1] > 12 else "")
        raise BarValidationError(origin, [Problem(f"missing column(s) {', '.join(missing)} (found: {found})", 0)])
    if len(frame) == 0:
        raise BarValidationError(origin, [Problem("no data rows (empty or header only)", 0)])

    labels = _row_labels(len(frame), row_numbers, row_label)
    problems: list[Problem] = []

    ts, ts_problems, date_order = _parse_timestamps(frame["ts"], labels, date_format)
    problems += ts_problems
    values, reported, value_problems = _parse_values(frame, labels)
    problems += value_problems
    repaired = _repair_rounding(values, reported)
    problems += _check_bar_rules(values, reported, labels)
    if problems:
        raise BarValidationError(origin, problems)

    out = pd.DataFrame({"ts": ts, **{c: values[c] for c in VALUE_COLUMNS}})
    bars = _sort_and_deduplicate(out, labels, origin) if sort else out
    _, repaired_examples = _examples(repaired.mask, labels, repaired.describe)
    return ValidatedBars(bars, int(repaired.mask.sum()), repaired_examples, len(out) - len(bars), date_order)


def sort_and_deduplicate(
    bars: pd.DataFrame, origin: str, row_numbers: Sequence[int] | np.ndarray, row_label: str = "row"
) -> pd.DataFrame:
    """Validated bars (BAR_COLUMNS, perhaps from several batches) sorted by ts, identical repeats dropped; a
    repeated ts with different values raises BarValidationError naming both rows."""
    return _sort_and_deduplicate(bars, _row_labels(len(bars), row_numbers, row_label), origin)


# --- row naming ---------------------------------------------------------------------------------------------


def _row_labels(n: int, row_numbers, row_label: str) -> tuple[np.ndarray, str]:
    if row_numbers is None:
        numbers = np.arange(1, n + 1)
    else:
        numbers = np.asarray(row_numbers)
        if numbers.shape != (n,):
            raise ValueError(f"row_numbers has {numbers.shape} entries for {n} rows")
    return numbers, row_label


def _examples(mask: np.ndarray, labels, describe) -> tuple[int, tuple[str, ...]]:
    """Count rows where mask holds and format the first few with describe(position)."""
    numbers, word = labels
    positions = np.flatnonzero(mask)
    shown = tuple(f"{word} {numbers[i]} ({describe(i)})" for i in positions[:MAX_EXAMPLES_PER_RULE])
    return len(positions), shown


# --- timestamps ---------------------------------------------------------------------------------------------


def _parse_timestamps(raw: pd.Series, labels, date_format: str | None) -> tuple[pd.Series, list[Problem], str | None]:
    """(UTC timestamps, problems, how day/month text was read or None)."""
    dtype = raw.dtype
    if isinstance(dtype, pd.DatetimeTZDtype):
        ts = raw.dt.tz_convert("UTC")
    elif pd.api.types.is_datetime64_dtype(dtype):
        ts = raw.dt.tz_localize("UTC")  # naive means UTC, by contract
    elif pd.api.types.is_numeric_dtype(dtype) or pd.api.types.is_bool_dtype(dtype):
        return raw, [
            Problem(
                "ts is numeric: convert unix epochs to timestamps first (read_bar_file does this for files)",
                len(raw),
            )
        ], None
    else:
        return _parse_timestamp_objects(raw, labels, date_format)
    ts = ts.dt.as_unit("us")
    problems = []
    missing = ts.isna().to_numpy()
    if missing.any():
        count, shown = _examples(missing, labels, lambda i: "empty")
        problems.append(Problem("missing timestamp", count, shown))
    return ts, problems, None


def _parse_timestamp_objects(raw: pd.Series, labels, date_format: str | None):
    """Strings or datetime objects: zone-awareness must be consistent; everything is parsed as UTC."""
    if date_format is None or date_format in DATE_ORDERS:
        try:
            # Fast path: pandas parses consistent ISO 8601 text (all naive, or all with one offset) in one go and
            # raises on anything else, which the careful path below then explains.
            parsed = pd.to_datetime(raw, format="ISO8601")
            if not parsed.isna().any():
                utc = parsed.dt.tz_convert("UTC") if parsed.dt.tz is not None else parsed.dt.tz_localize("UTC")
                return utc.dt.as_unit("us"), [], None
        except (ValueError, TypeError, OverflowError):
            pass
    return _parse_timestamps_carefully(raw, labels, date_format)


@dataclass(frozen=True)
class DateOrder:
    """What a column of text dates says about its day/month order (detect_date_order)."""

    order: str | None  # "day-first", "month-first", "ambiguous", "contradictory"; None: no day/month dates
    day_first_at: int | None = None  # position of the first row whose first field is above 12 (so a day)
    month_first_at: int | None = None  # position of the first row whose second field is above 12
    first_at: int | None = None  # position of the first day/month date


def detect_date_order(text: pd.Series) -> DateOrder:
    """Day-first or month-first, from the whole column: a first field above 12 can only be a day, a second
    field above 12 likewise; both kinds in one column contradict each other; neither leaves it ambiguous."""
    fields = text.astype("string").str.extract(_DAY_MONTH_TEXT)
    matched = fields[0].notna().to_numpy(dtype=bool)
    if not matched.any():
        return DateOrder(None)
    first = pd.to_numeric(fields[0], errors="coerce").to_numpy(dtype="float64", na_value=np.nan)
    second = pd.to_numeric(fields[1], errors="coerce").to_numpy(dtype="float64", na_value=np.nan)
    with np.errstate(invalid="ignore"):
        day_first = np.flatnonzero(first > 12)
        month_first = np.flatnonzero(second > 12)
    at = (int(day_first[0]) if len(day_first) else None, int(month_first[0]) if len(month_first) else None)
    start = int(np.flatnonzero(matched)[0])
    if at[0] is not None and at[1] is not None:
        return DateOrder("contradictory", *at, start)
    if at[0] is not None:
        return DateOrder("day-first", *at, start)
    if at[1] is not None:
        return DateOrder("month-first", *at, start)
    return DateOrder("ambiguous", None, None, start)


def _date_order_problem(order: DateOrder, told: str | None, raw: pd.Series, labels) -> tuple[Problem | None, str]:
    """A problem with the day/month order of the dates (or None), and the order to read them in."""
    numbers, word = labels

    def quote(position: int) -> str:
        return f"{word} {numbers[position]} {raw.iloc[position]!r}"

    fix = ("write ISO dates (2021-01-04) or say the order: --date-format day-first (or month-first), or a format "
           "such as --date-format %d/%m/%Y")
    if order.order == "contradictory":
        return Problem(
            f"dates in both day/month orders: {quote(order.day_first_at)} has a day first, "
            f"{quote(order.month_first_at)} a month first; {fix}", 0), "day-first"
    if told is not None:
        against = order.month_first_at if told == "day-first" else order.day_first_at
        if against is not None:
            return Problem(f"a date that is not {told}: {quote(against)}", 0), told
        return None, told
    if order.order == "ambiguous":
        return Problem(
            f"ambiguous dates: day/month order cannot be told, every first and second field is 12 or less (e.g. "
            f"{quote(order.first_at)} is {_both_readings(raw.iloc[order.first_at])}); {fix}", 0), "month-first"
    return None, order.order


def _both_readings(text: str) -> str:
    match = _DAY_MONTH_TEXT.match(str(text))
    if match is None:
        return "ambiguous"
    a, b = int(match.group(1)), int(match.group(2))
    months = ("January February March April May June July August September October November December").split()
    return f"{a} {months[b - 1]} or {months[a - 1]} {b}" if 1 <= a <= 12 and 1 <= b <= 12 else "ambiguous"


def _parse_timestamps_carefully(raw: pd.Series, labels, date_format: str | None):
    present = raw.notna().to_numpy()
    problems: list[Problem] = []
    order_text = None
    is_text = pd.api.types.infer_dtype(raw, skipna=True) in ("string", "empty")
    if is_text:
        text = raw.astype("string").str.strip()
        aware = text.str.contains(_AWARE_TEXT, na=False).to_numpy()
        if date_format is None or date_format in DATE_ORDERS:
            order = detect_date_order(text)
            if order.order is not None:
                problem, date_format = _date_order_problem(order, date_format, raw, labels)
                if problem is not None:
                    problems.append(problem)
                evidence = order.day_first_at if date_format == "day-first" else order.month_first_at
                numbers, word = labels
                order_text = date_format + (
                    f" ({word} {numbers[evidence]}: {raw.iloc[evidence]!r})" if evidence is not None else " (as told)"
                )
        else:
            order_text = f"{date_format} (as told)"
    else:
        text = raw
        aware = raw.map(lambda x: getattr(x, "tzinfo", None) is not None).to_numpy(dtype=bool)

    aware_rows = aware & present
    naive_rows = ~aware & present
    if aware_rows.any() and naive_rows.any():
        # Quote the minority kind: those are the rows the user most likely has to fix.
        odd = naive_rows if naive_rows.sum() <= aware_rows.sum() else aware_rows
        kind = "naive" if odd is naive_rows else "zone-aware"
        count, shown = _examples(odd, labels, lambda i: f"{kind} {raw.iloc[i]!r}")
        problems.append(Problem("mixed zone-aware and naive timestamps", count, shown))

    ts = _to_utc(text, date_format)
    unreadable = ts.isna().to_numpy() & present
    if unreadable.any():
        count, shown = _examples(unreadable, labels, lambda i: repr(raw.iloc[i]))
        told = f" as {date_format}" if date_format is not None else ""
        problems.append(Problem(f"unreadable timestamp{told}", count, shown))
    if (~present).any():
        count, shown = _examples(~present, labels, lambda i: "empty")
        problems.append(Problem("missing timestamp", count, shown))
    return ts.dt.as_unit("us"), problems, order_text


def _to_utc(values: pd.Series, date_format: str | None = None) -> pd.Series:
    """ISO 8601 first (fast and unambiguous); otherwise let pandas infer one format from the data, days first
    when date_format says "day-first"; a strptime date_format is used as it is."""
    if date_format is not None and date_format not in DATE_ORDERS:
        return pd.to_datetime(values, utc=True, format=date_format, errors="coerce")
    if date_format is not None:
        try:
            with warnings.catch_warnings():  # "Parsing dates in %m/%d/%Y format when dayfirst=True": reported above
                warnings.simplefilter("ignore", UserWarning)
                return pd.to_datetime(values, utc=True, errors="coerce", dayfirst=date_format == "day-first")
        except (ValueError, TypeError):
            return pd.Series(pd.NaT, index=values.index, dtype="datetime64[us, UTC]")
    iso = pd.to_datetime(values, utc=True, format="ISO8601", errors="coerce")
    if not (iso.isna() & values.notna()).any():
        return iso
    try:
        inferred = pd.to_datetime(values, utc=True, errors="coerce")
    except (ValueError, TypeError):
        return iso
    return inferred if inferred.isna().sum() < iso.isna().sum() else iso


# --- prices and volume --------------------------------------------------------------------------------------


def _parse_values(frame: pd.DataFrame, labels) -> tuple[dict[str, np.ndarray], np.ndarray, list[Problem]]:
    """Columns as float64 arrays, plus a mask of rows already reported (text, NaN, infinity)."""
    values: dict[str, np.ndarray] = {}
    reported = np.zeros(len(frame), dtype=bool)
    problems: list[Problem] = []
    for column in VALUE_COLUMNS:
        raw = frame[column]
        if pd.api.types.is_bool_dtype(raw.dtype):
            problems.append(Problem(f"{column} holds true/false values, not numbers", len(raw)))
            values[column] = np.full(len(raw), np.nan)
            reported[:] = True
            continue
        if pd.api.types.is_numeric_dtype(raw.dtype):
            numbers = raw.to_numpy(dtype="float64", na_value=np.nan)
            text_rows = np.zeros(len(raw), dtype=bool)
        else:
            numbers = pd.to_numeric(raw, errors="coerce").to_numpy(dtype="float64", na_value=np.nan)
            text_rows = np.isnan(numbers) & raw.notna().to_numpy()
            if text_rows.any():
                # Text "nan" or blanks parse to NaN on purpose: they are reported as missing, not as text.
                blank_or_nan = raw.astype("string").str.strip().str.lower().isin(["nan", ""]).fillna(False)
                text_rows &= ~blank_or_nan.to_numpy(dtype=bool)
            if text_rows.any():
                count, shown = _examples(text_rows, labels, lambda i, r=raw: repr(r.iloc[i]))
                problems.append(Problem(f"non-numeric text in {column}", count, shown))
        missing = np.isnan(numbers) & ~text_rows
        if missing.any():
            count, shown = _examples(missing, labels, lambda i: "NaN")
            problems.append(Problem(f"missing value (NaN) in {column}", count, shown))
        infinite = np.isinf(numbers)
        if infinite.any():
            count, shown = _examples(infinite, labels, lambda i, v=numbers: f"{v[i]}")
            problems.append(Problem(f"infinite value in {column}", count, shown))
        reported |= text_rows | missing | infinite
        values[column] = numbers
    return values, reported, problems


@dataclass(frozen=True)
class _Repairs:
    mask: np.ndarray  # rows whose high/low were widened
    before: dict[str, np.ndarray]  # the original open/high/low/close of every row, for the examples

    def describe(self, i: int) -> str:
        o, h, l, c = (self.before[k][i] for k in PRICE_COLUMNS)
        if max(o, c) > h:
            return f"{'close' if c >= o else 'open'}={_price(max(o, c))} > high={_price(h)}"
        if min(o, c) < l:
            return f"{'close' if c <= o else 'open'}={_price(min(o, c))} < low={_price(l)}"
        return f"high={_price(h)} < low={_price(l)}"


def _repair_rounding(values: dict[str, np.ndarray], reported: np.ndarray) -> _Repairs:
    """Widen high/low on rows whose OHLC disagree by no more than OHLC_ROUNDING_TOLERANCE of their largest price.

    Replaces values["high"] and values["low"]; rows that break a rule by more are left for _check_bar_rules.
    """
    before = {k: values[k] for k in PRICE_COLUMNS}
    o, h, l, c = (before[k] for k in PRICE_COLUMNS)
    with np.errstate(invalid="ignore"):
        top = np.maximum(np.maximum(o, c), l)  # what high must be at least
        bottom = np.minimum(np.minimum(o, c), h)  # what low must be at most
        excess = np.maximum(top - h, l - bottom)  # > 0 where a rule is broken
        scale = np.maximum(np.maximum(np.abs(o), np.abs(h)), np.maximum(np.abs(l), np.abs(c)))
        mask = ~reported & (excess > 0) & (excess <= OHLC_ROUNDING_TOLERANCE * scale) & (bottom > 0)
    if mask.any():
        values["high"] = np.where(mask, np.maximum(h, top), h)
        values["low"] = np.where(mask, np.minimum(l, bottom), l)
    return _Repairs(mask, before)


def _price(value: float) -> str:
    """Shortest text that reads back as the same float: a violation of 1e-13 must not print as equal numbers."""
    return repr(float(value))


def _check_bar_rules(values: dict[str, np.ndarray], reported: np.ndarray, labels) -> list[Problem]:
    """OHLC consistency, on rows whose numbers are usable (the others were already reported)."""
    o, h, l, c, v = (values[k] for k in VALUE_COLUMNS)
    usable = ~reported
    problems: list[Problem] = []
    p = _price

    def rule(name: str, mask: np.ndarray, describe) -> None:
        mask = mask & usable
        if mask.any():
            count, shown = _examples(mask, labels, describe)
            problems.append(Problem(name, count, shown))

    with np.errstate(invalid="ignore"):
        non_positive = (o <= 0) | (h <= 0) | (l <= 0) | (c <= 0)
        rule(
            "non-positive price",
            non_positive,
            lambda i: f"open={p(o[i])} high={p(h[i])} low={p(l[i])} close={p(c[i])}",
        )
        rule("high below low", h < l, lambda i: f"high={p(h[i])} < low={p(l[i])}")
        rule("open outside [low, high]", (o < l) | (o > h), lambda i: f"open={p(o[i])}, low={p(l[i])} high={p(h[i])}")
        rule(
            "close outside [low, high]", (c < l) | (c > h), lambda i: f"close={p(c[i])}, low={p(l[i])} high={p(h[i])}"
        )
        positive = ~non_positive
        rule(
            f"price below {PRICE_FLOOR:g} (implausible; a subnormal number or a wrong unit?)",
            positive & ((o < PRICE_FLOOR) | (h < PRICE_FLOOR) | (l < PRICE_FLOOR) | (c < PRICE_FLOOR)),
            lambda i: f"open={p(o[i])} high={p(h[i])} low={p(l[i])} close={p(c[i])}",
        )
        rule(
            f"price above {PRICE_CEILING:g} (implausible; a wrong unit or a broken export?)",
            (o > PRICE_CEILING) | (h > PRICE_CEILING) | (l > PRICE_CEILING) | (c > PRICE_CEILING),
            lambda i: f"open={p(o[i])} high={p(h[i])} low={p(l[i])} close={p(c[i])}",
        )
        rule("negative volume", v < 0, lambda i: f"volume={p(v[i])}")
        rule(
            f"volume above {VOLUME_CEILING:g} or subnormal (implausible)",
            (v > VOLUME_CEILING) | ((v > 0) & (v < _SMALLEST_NORMAL)),
            lambda i: f"volume={p(v[i])}",
        )
    return problems


# --- order and duplicates -----------------------------------------------------------------------------------


def _sort_and_deduplicate(out: pd.DataFrame, labels, origin: str) -> pd.DataFrame:
    numbers, word = labels
    ts_ns = out["ts"].to_numpy(dtype="datetime64[us]").view("int64")
    if len(ts_ns) > 1 and np.all(ts_ns[1:] > ts_ns[:-1]):
        return out.reset_index(drop=True)  # the common case: already sorted and unique

    order = np.argsort(ts_ns, kind="stable")
    ts_sorted = ts_ns[order]
    same_as_previous = np.zeros(len(order), dtype=bool)
    same_as_previous[1:] = ts_sorted[1:] == ts_sorted[:-1]
    if same_as_previous.any():
        block = np.column_stack([out[c].to_numpy() for c in VALUE_COLUMNS])[order]
        differs = np.zeros(len(order), dtype=bool)
        differs[1:] = np.any(block[1:] != block[:-1], axis=1)
        conflicting = same_as_previous & differs
        if conflicting.any():
            positions = np.flatnonzero(conflicting)
            shown = tuple(
                f"{out['ts'].iloc[order[i]].isoformat()} at {word}s {numbers[order[i - 1]]} and {numbers[order[i]]}"
                for i in positions[:MAX_EXAMPLES_PER_RULE]
            )
            raise BarValidationError(
                origin, [Problem("duplicate timestamp with different values", len(positions), shown)]
            )
    keep = order[~same_as_previous]
    return out.iloc[keep].reset_index(drop=True)
