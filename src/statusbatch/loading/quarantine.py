"""Row checks of SPEC §5/§7.6: every row is accepted or rejected, never lost.

Checks run in the SPEC's order — required values and parsing, codes,
references, duplicates — and a bad row is reported once, by its first failing
check. Everything is a column expression over the whole file.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import time

import numpy as np
import polars as pl

from statusbatch.loading.contract import TIMESTAMP, Column, InputTable

__all__ = [
    "Check",
    "Part",
    "Quarantined",
    "REJECTED_ROWS_SCHEMA",
    "POSITION",
    "ROW",
    "key_hash",
    "quarantine",
    "parse_timestamp",
    "parse_date",
    "repeated_hashes",
]

ROW = "__row_number"
POSITION = "__position"
"""A row's place in the frame being checked (a share of a file is numbered by the file's rows, ROW)."""
_FAILED = "__failed_check"
_BAD = "__fails_a_check"
_TYPED = "__typed__"

REJECTED_ROWS_SCHEMA: dict[str, pl.DataType] = {
    "source_table": pl.String,
    "row_number": pl.Int64,
    "column": pl.String,
    "problem": pl.String,
    "raw": pl.String,
}


@dataclass(frozen=True)
class Check:
    """A row is bad for `column` where `fails` is true; `problem` says why in words.

    `fails` is a row expression, or a function of the whole parsed frame
    returning a boolean Series over its rows — for checks cheaper as a join,
    or over a small subset of the rows (see `scoped`), than as a row
    expression over the whole file.
    """

    column: str
    fails: pl.Expr | Callable[[pl.DataFrame], pl.Series]
    problem: pl.Expr


def scoped(scope: pl.Expr, fails: pl.Expr) -> Callable[[pl.DataFrame], pl.Series]:
    """`fails` evaluated only on the rows in `scope`: a value rule of one event type
    costs a pass over that type's rows, not over the whole log."""

    def rows_failing(frame: pl.DataFrame) -> pl.Series:
        rows = frame.lazy().with_row_index(POSITION).filter(scope).filter(fails.fill_null(False)).select(POSITION)
        return rows_marked(frame.height, rows.collect().get_column(POSITION))

    return rows_failing


def rows_marked(height: int, positions: pl.Series) -> pl.Series:
    """A boolean mask over a frame's rows, true at the (0-based) `positions`."""
    mask = np.zeros(height, dtype=bool)
    mask[positions.to_numpy()] = True
    return pl.Series(mask)


@dataclass(frozen=True)
class Part:
    """A share of a table's accepted rows: those where `rows` (over `typed` columns)
    holds, with only `columns` (all of them when empty)."""

    rows: pl.Expr
    columns: tuple[str, ...]


@dataclass(frozen=True)
class Quarantined:
    parts: dict[str, pl.DataFrame]
    """The accepted rows: one frame named after the table, or the parts asked for."""
    rejected: pl.DataFrame
    rows_read: int
    rows_accepted: int

    @property
    def accepted(self) -> pl.DataFrame:
        (frame,) = self.parts.values()
        return frame


def typed(name: str) -> pl.Expr:
    """The parsed value of contract column `name` (checks refer to it by this)."""
    return pl.col(_TYPED + name)


def parse_timestamp(raw: pl.Expr) -> pl.Expr:
    """ISO-8601 text to a UTC instant: offsets converted, naive values taken as UTC, a bare date is midnight."""
    text = raw.str.strip_chars().str.replace(r"^(\d{4}-\d{2}-\d{2}) ", "${1}T")
    return pl.coalesce(
        text.str.to_datetime("%Y-%m-%dT%H:%M:%S%.f%#z", time_zone="UTC", strict=False, time_unit="us"),
        text.str.to_datetime("%Y-%m-%dT%H:%M:%S%.f", strict=False, time_unit="us").dt.replace_time_zone("UTC"),
        text.str.to_datetime("%Y-%m-%dT%H:%M%#z", time_zone="UTC", strict=False, time_unit="us"),
        text.str.to_datetime("%Y-%m-%dT%H:%M", strict=False, time_unit="us").dt.replace_time_zone("UTC"),
        text.str.to_date("%Y-%m-%d", strict=False).cast(pl.Datetime("us")).dt.replace_time_zone("UTC"),
    )


def parse_date(raw: pl.Expr) -> pl.Expr:
    return raw.str.strip_chars().str.to_date("%Y-%m-%d", strict=False)


_TRUE = ("true", "t", "yes", "y", "1")
_FALSE = ("false", "f", "no", "n", "0")


def _parse_boolean(raw: pl.Expr) -> pl.Expr:
    text = raw.str.strip_chars().str.to_lowercase()
    return pl.when(text.is_in(_TRUE)).then(True).when(text.is_in(_FALSE)).then(False).otherwise(None)


def _is_text(dtype: pl.DataType | None) -> bool:
    """Text as a file may hold it: strings, or codes a Parquet writer stored as categories."""
    return dtype == pl.String or isinstance(dtype, (pl.Categorical, pl.Enum))


def _parsed(column: Column, raw_dtype: pl.DataType | None) -> pl.Expr:
    """The contract value of `column`, null where the file's value does not parse.

    A typed (Parquet) value is taken only where the contract type holds it
    exactly: 2.0 is a whole number, 2.5 is not, and a number is no instant.
    Anything else is null, so that the row is rejected as the wrong type (§5).
    """
    if raw_dtype is None:
        return pl.lit(None, dtype=column.dtype)
    raw = pl.col(column.name)
    dtype = column.dtype
    if _is_text(raw_dtype):
        raw = raw.cast(pl.String)
        if dtype == TIMESTAMP:
            return parse_timestamp(raw)
        if dtype == pl.Date:
            return parse_date(raw)
        if dtype == pl.Boolean:
            return _parse_boolean(raw)
        if dtype == pl.Int64:
            return raw.str.strip_chars().str.to_integer(strict=False)
        if isinstance(dtype, pl.Enum):
            return raw.cast(dtype, strict=False)  # padded codes are repaired by _with_padded_codes
        return pl.when(raw.str.len_bytes() > 0).then(raw)  # "" is an empty cell, as in a CSV file
    if dtype == TIMESTAMP:
        if isinstance(raw_dtype, pl.Datetime):
            zoned = raw.dt.replace_time_zone("UTC") if raw_dtype.time_zone is None else raw.dt.convert_time_zone("UTC")
            return zoned.dt.cast_time_unit("us")
        if raw_dtype == pl.Date:
            return raw.cast(pl.Datetime("us")).dt.replace_time_zone("UTC")
        return pl.lit(None, dtype=dtype)
    if dtype == pl.Date:
        if raw_dtype == pl.Date:
            return raw
        if isinstance(raw_dtype, pl.Datetime):
            return pl.when(raw.dt.time() == time(0)).then(raw.dt.date())
        return pl.lit(None, dtype=dtype)
    if dtype == pl.Int64:
        if raw_dtype.is_integer():
            return raw.cast(dtype, strict=False)
        if raw_dtype.is_float() or isinstance(raw_dtype, pl.Decimal):
            number = raw.cast(pl.Float64)
            return pl.when(number == number.round()).then(number.cast(dtype, strict=False))
        return pl.lit(None, dtype=dtype)
    if dtype == pl.Boolean:
        if raw_dtype == pl.Boolean:
            return raw
        if raw_dtype.is_integer():
            return pl.when(raw == 1).then(True).when(raw == 0).then(False).otherwise(None)
        return pl.lit(None, dtype=dtype)
    if isinstance(dtype, pl.Enum):
        return raw.cast(pl.String).cast(dtype, strict=False)
    return raw.cast(dtype, strict=False)


_KIND = {pl.Date: "date", pl.Int64: "whole number", pl.Boolean: "boolean (true/false)"}


def _with_padded_codes(frame: pl.DataFrame, table: InputTable, raw_schema: pl.Schema) -> pl.DataFrame:
    """Codes with surrounding blanks (" email ") are still codes.

    Casting every value stripped costs a string pass over the whole log; only
    the values that failed the plain cast are stripped and cast again.
    """
    for column in table.columns:
        if not isinstance(column.dtype, pl.Enum) or not _is_text(raw_schema.get(column.name)):
            continue
        parsed = typed(column.name)
        retry = frame.select(pl.arg_where(parsed.is_null() & pl.col(column.name).is_not_null())).to_series()
        if retry.len() == 0:
            continue
        stripped = pl.col(column.name).cast(pl.String).str.strip_chars()
        repaired = frame[retry].select(stripped.cast(column.dtype, strict=False)).to_series()
        frame = frame.with_columns(frame.get_column(_TYPED + column.name).scatter(retry, repaired))
    return frame


def _with_stripped(frame: pl.DataFrame, name: str, rows: pl.Expr) -> pl.DataFrame:
    """Column `name`'s parsed values without surrounding blanks on the rows where `rows` holds (only
    those rows' values are stripped, not the whole column)."""
    at = frame.select(pl.arg_where(rows.fill_null(False) & typed(name).is_not_null())).to_series()
    if at.len() == 0:
        return frame
    stripped = frame.select(typed(name).gather(at).str.strip_chars()).to_series()
    return frame.with_columns(frame.get_column(_TYPED + name).scatter(at, stripped))


def _kind(dtype: pl.DataType) -> str:
    if dtype == TIMESTAMP:
        return "timestamp"
    return _KIND.get(dtype, str(dtype))


def _as_json(dtype: pl.DataType) -> bool:
    """Kept as it is in a rejected row's `raw`: text, and nested values (JSON arrays and objects)."""
    return dtype == pl.String or dtype.is_nested()


def _raw_text(name: str) -> pl.Expr:
    return pl.col(name).cast(pl.String)


def _absent(name: str, raw_dtype: pl.DataType | None) -> pl.Expr:
    """No value: null, or empty text (a Parquet file can hold "", which a CSV file reads as null)."""
    if raw_dtype is None:
        return pl.lit(True)
    if _is_text(raw_dtype):
        return pl.col(name).is_null() | (pl.col(name).cast(pl.String).str.len_bytes() == 0)
    return pl.col(name).is_null()


def _parsing_checks(table: InputTable, raw_schema: pl.Schema) -> list[Check]:
    present = set(raw_schema)
    checks: list[Check] = []
    for column in table.columns:
        if column.not_null:
            missing = _absent(column.name, raw_schema.get(column.name))
            checks.append(Check(column.name, missing, pl.lit("missing required value")))
        if column.name in present and not isinstance(column.dtype, pl.Enum) and column.dtype != pl.String:
            checks.append(
                Check(
                    column.name,
                    ~_absent(column.name, raw_schema[column.name]) & typed(column.name).is_null(),
                    pl.format("not a valid {}: '{}'", pl.lit(_kind(column.dtype)), _raw_text(column.name)),
                )
            )
    return checks


def _code_checks(table: InputTable, raw_schema: pl.Schema) -> list[Check]:
    return [
        Check(
            column.name,
            ~_absent(column.name, raw_schema[column.name]) & typed(column.name).is_null(),
            pl.format("unknown {} code '{}'", pl.lit(column.name), _raw_text(column.name)),
        )
        for column in table.columns
        if isinstance(column.dtype, pl.Enum) and column.name in raw_schema
    ]


def _first_failing(fails: list[pl.Expr]) -> pl.Expr:
    """The index of the first check a row fails (null when it passes them all)."""
    chain = pl.when(fails[0]).then(pl.lit(0, dtype=pl.UInt16))
    for index, failing in enumerate(fails[1:], start=1):
        chain = chain.when(failing).then(pl.lit(index, dtype=pl.UInt16))
    return chain.otherwise(pl.lit(None, dtype=pl.UInt16))


def _described(checks: list[Check], index: pl.Expr) -> tuple[pl.Expr, pl.Expr]:
    column = pl.lit(None, dtype=pl.String)
    problem = pl.lit(None, dtype=pl.String)
    for i, check in reversed(list(enumerate(checks))):
        column = pl.when(index == i).then(pl.lit(check.column)).otherwise(column)
        problem = pl.when(index == i).then(check.problem).otherwise(problem)
    return column.alias("column"), problem.alias("problem")


def quarantine(
    raw: pl.DataFrame,
    table: InputTable,
    *,
    extra_code_checks: list[Check] = (),
    reference_checks: list[Check] = (),
    extra_columns: dict[str, pl.Expr] | None = None,
    codes_where: Mapping[str, pl.Expr] | None = None,
    exact_duplicates_allowed: bool = False,
    repeated_rows: pl.Series | None = None,
    split: Mapping[str, Part] | None = None,
) -> Quarantined:
    """Split a file's rows into accepted (contract dtypes) and rejected rows.

    `extra_columns` are kept alongside the contract columns (people properties).
    `codes_where` names text columns that hold a code on the rows where its
    expression holds (an event's `value`); like code columns, their values
    there lose surrounding blanks before the checks.
    With `exact_duplicates_allowed`, a row identical to the accepted row of its
    key counts as accepted and adds nothing (events, SPEC §7.6). With `split`,
    the accepted rows come as those parts instead of one frame.

    A `raw` holding a `ROW` column is a share of a file, numbered by the file's
    rows; otherwise its rows are numbered from 1. With `repeated_rows` (`ROW`
    numbers) the caller vouches that no other row's key occurs twice (it found
    the file's repeated keys), so the duplicate search looks at those rows only;
    without, every key is hashed to find them.

    `raw` is let go of as soon as it is parsed (callers pass it without keeping
    a reference), so that memory holds one copy of a large file, not two.
    """
    numbered = raw if ROW in raw.columns else raw.with_row_index(ROW, offset=1)
    raw_columns = [c for c in raw.columns if c != ROW]
    blank = pl.all_horizontal(pl.col(raw_columns).is_null())
    # null counts are kept with the columns: a file with a column never null has no blank record
    if raw_columns and all(numbered[c].null_count() for c in raw_columns) and numbered.select(blank.any()).item():
        # a record with no value at all (a blank line of a CSV file) is no row: neither read nor
        # rejected; the rows after it keep their numbers
        numbered = numbered.filter(~blank)
    raw_schema = pl.Schema({name: raw.schema[name] for name in raw_columns})
    frame = numbered.with_columns(
        pl.col(ROW).cast(pl.Int64),
        *[_parsed(c, raw_schema.get(c.name)).alias(_TYPED + c.name) for c in table.columns],
    )
    del raw, numbered
    checks = (
        _parsing_checks(table, raw_schema)
        + _code_checks(table, raw_schema)
        + list(extra_code_checks)
        + list(reference_checks)
    )
    frame = _with_padded_codes(frame, table, raw_schema)
    for name, rows in (codes_where or {}).items():
        frame = _with_stripped(frame, name, rows)
    computed = {f"__fails_{i}": c.fails(frame) for i, c in enumerate(checks) if callable(c.fails)}
    frame = frame.with_columns(**computed) if computed else frame
    fails = [pl.col(f"__fails_{i}") if callable(c.fails) else c.fails for i, c in enumerate(checks)]
    frame = frame.with_columns(pl.any_horizontal(fails).fill_null(False).alias(_BAD) if fails else pl.lit(False).alias(_BAD))
    if repeated_rows is not None and repeated_rows.len() == 0:
        frame = frame.with_columns(
            pl.lit(None, dtype=pl.Int64).alias("__kept_row"), pl.lit(False).alias("__exact_duplicate")
        )
    else:
        key = [typed(k) for k in table.key]
        maybe = _maybe_repeated(frame, key) if repeated_rows is None else _positions_of(frame, repeated_rows)
        frame = _with_duplicate_checks(frame, key, maybe, raw_columns, exact_duplicates_allowed)
    checks.append(_duplicate_check(table))

    # one chunk per column: Polars 2.1's `format` panics over a column whose chunks a filter left empty
    # (a CSV read in several chunks); the bad rows are few, so this costs nothing
    bad = frame.filter(pl.col(_BAD) | pl.col("__kept_row").is_not_null()).rechunk().with_columns(
        pl.when(pl.col("__kept_row").is_not_null())
        .then(pl.lit(len(checks) - 1, dtype=pl.UInt16))
        .otherwise(_first_failing(fails) if fails else pl.lit(None, dtype=pl.UInt16))
        .alias(_FAILED)
    )
    column, problem = _described(checks, pl.col(_FAILED))
    rejected = bad.select(
        pl.lit(table.name).alias("source_table"),
        pl.col(ROW).alias("row_number"),
        column,
        problem,
        pl.struct(*[pl.col(c) if _as_json(frame.schema[c]) else pl.col(c).cast(pl.String) for c in raw_columns])
        .struct.json_encode()
        .alias("raw")
        if raw_columns
        else pl.lit("{}").alias("raw"),
    )
    keep = frame.select(~pl.col(_BAD) & pl.col("__kept_row").is_null() & ~pl.col("__exact_duplicate")).to_series()
    rows_read = frame.height
    outputs = [(c.name, typed(c.name), [_TYPED + c.name, c.name]) for c in table.columns]
    outputs += [(name, expr, [name]) for name, expr in (extra_columns or {}).items()]
    handed_over = [frame]
    del frame
    parts = _accepted_parts(handed_over, keep, outputs, split or {table.name: Part(pl.lit(True), ())})
    return Quarantined(parts=parts, rejected=rejected, rows_read=rows_read, rows_accepted=rows_read - rejected.height)


def _accepted_parts(
    handed_over: list[pl.DataFrame],
    keep: pl.Series,
    outputs: list[tuple[str, pl.Expr, list[str]]],
    split: Mapping[str, Part],
) -> dict[str, pl.DataFrame]:
    """The accepted rows, cut into the parts of `split`, one output column at a time.

    Each column is filtered straight into every part that keeps it and its
    source columns are dropped at once, so the file as read and its accepted
    copy are never both whole in memory. `handed_over` holds the only
    reference to the parsed frame, taken out here.
    """
    frame = handed_over.pop()
    masks = {name: keep & frame.select(part.rows.fill_null(False)).to_series() for name, part in split.items()}
    columns: dict[str, list[pl.Series]] = {name: [] for name in split}
    for name, expr, sources in outputs:
        # selected beside ROW so that a literal (an all-null property column) spans every row
        values = frame.select(pl.col(ROW), expr.alias(name)).get_column(name)
        frame = frame.drop(sources, strict=False)
        for part, mask in masks.items():
            if not split[part].columns or name in split[part].columns:
                columns[part].append(values.filter(mask))
        del values
    return {part: pl.DataFrame(kept) for part, kept in columns.items()}


def _duplicate_check(table: InputTable) -> Check:
    """Described only: duplicates are found by `_with_duplicate_checks`, which records the kept row."""
    return Check(
        table.key[0],
        pl.lit(False),
        pl.format("duplicate {} (row {} was kept)", pl.lit(", ".join(table.key)), pl.col("__kept_row")),
    )


def repeated_hashes(hashes: np.ndarray) -> pl.Series:
    """The 64-bit hashes that occur more than once.

    Sorting hashes is several times faster than hashing strings into groups;
    the rows they point at are compared exactly afterwards.
    """
    ordered = np.sort(hashes)
    return pl.Series(np.unique(ordered[1:][ordered[1:] == ordered[:-1]]), dtype=pl.UInt64)


def key_hash(key: list[pl.Expr]) -> pl.Expr:
    return (pl.struct(key) if len(key) > 1 else key[0]).hash(seed=0)


def _maybe_repeated(frame: pl.DataFrame, key: list[pl.Expr]) -> pl.Series:
    """Positions of the rows whose key hash occurs more than once: every repeated key, and rarely a collision."""
    hashed = key_hash(key)
    repeated = repeated_hashes(frame.select(hashed).to_series().to_numpy())
    return frame.select(pl.arg_where(hashed.is_in(repeated.implode()))).to_series()


def _positions_of(frame: pl.DataFrame, rows: pl.Series) -> pl.Series:
    """Positions of the rows numbered `rows` (`ROW`): a binary search when the frame is in file order, as
    a share read from a file is, rather than a lookup per row."""
    numbers = frame.get_column(ROW)
    rows = rows.cast(numbers.dtype).sort()
    if numbers.is_sorted():
        at = numbers.search_sorted(rows).clip(0, max(numbers.len() - 1, 0)).cast(pl.UInt32)
        return at.filter(numbers.gather(at) == rows) if numbers.len() else at.clear()
    return frame.select(pl.arg_where(pl.col(ROW).is_in(rows.implode()))).to_series()


def _with_duplicate_checks(
    frame: pl.DataFrame, key: list[pl.Expr], maybe: pl.Series, raw_columns: list[str], exact_duplicates_allowed: bool
) -> pl.DataFrame:
    """Mark later rows of a key: the first row that passed every other check wins.

    Adds `__kept_row` (the winner's row number, on a conflicting row) and
    `__exact_duplicate`. Only rows whose key may occur more than once (at
    positions `maybe`) need window work, so it runs on that (usually tiny) part
    and is scattered back by position, without a lookup per row of the file.
    Rows are compared field by field, never by hash: a conflicting row can't
    pass for an exact duplicate.
    """
    many = frame[maybe].with_columns(maybe.alias(POSITION))
    passing = ~pl.col(_BAD)
    winner = pl.col(ROW).filter(passing).min().over(key)
    later = passing & (pl.col(ROW) != winner)
    if exact_duplicates_allowed and raw_columns:
        content = pl.struct(*raw_columns)
        exact = later & content.eq_missing(content.filter(passing).first().over(key))
    else:
        exact = pl.lit(False)
    outcome = many.select(POSITION, later.alias("later"), exact.alias("exact"), winner.alias("__kept_row")).filter("later")
    conflicts = outcome.filter(~pl.col("exact"))
    kept = pl.repeat(None, frame.height, dtype=pl.Int64, eager=True)
    if conflicts.height:
        kept = kept.scatter(conflicts.get_column(POSITION), conflicts.get_column("__kept_row"))
    return frame.with_columns(
        rows_marked(frame.height, outcome.filter("exact").get_column(POSITION)).alias("__exact_duplicate"),
        kept.alias("__kept_row"),
    )
