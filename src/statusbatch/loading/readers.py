"""Finding and reading input files (SPEC §1, §7.5) without interpreting values.

CSV is read with every column as text so that a bad value becomes a rejected
row rather than a failed read; Parquet keeps its own types and is coerced later.
"""

from __future__ import annotations

import re
from pathlib import Path

import polars as pl

from statusbatch.loading.contract import InputTable
from statusbatch.loading.errors import InputError

__all__ = ["find_input_file", "read_table_file", "scan_table_file", "collect_file"]

_SUFFIXES = (".csv", ".csv.gz", ".parquet")


def find_input_file(input_dir: Path, table: InputTable) -> Path | None:
    """The one file holding `table`, or None when an optional table is absent."""
    if not input_dir.is_dir():
        raise InputError(f"{input_dir}: input directory not found")
    found = [input_dir / f"{table.name}{s}" for s in _SUFFIXES if (input_dir / f"{table.name}{s}").is_file()]
    if len(found) > 1:
        names = ", ".join(p.name for p in found)
        raise InputError(f"{input_dir}: two files for table '{table.name}' ({names}); keep one")
    if not found:
        if table.optional_file:
            return None
        raise InputError(f"{input_dir / (table.name + '.csv')}: missing input file for table '{table.name}'")
    return found[0]


_CSV = {
    "infer_schema": False,
    "has_header": True,
    "raise_if_empty": False,
    "truncate_ragged_lines": False,
    "null_values": [""],
}
"""Every CSV column as text: a bad value becomes a rejected row, a ragged row an unreadable file.
An empty cell is null whether quoted or not (`""`, as csv.QUOTE_ALL writes it): SPEC §1."""


def scan_table_file(path: Path, table: InputTable, row_index: str | None = None) -> pl.LazyFrame:
    """The file as a lazy scan (numbered from 1 in `row_index`), its required columns checked from its header.

    A large file is read a share at a time: filters on the scan reach the
    reader (Parquet row groups whose statistics rule them out are skipped).
    """
    numbered = {"row_index_name": row_index, "row_index_offset": 1}
    try:
        if path.name.endswith(".parquet"):
            scan = pl.scan_parquet(path, **numbered)
        else:
            scan = pl.scan_csv(path, **_CSV, **numbered)
        columns = [name for name in scan.collect_schema().names() if name != row_index]
    except (pl.exceptions.PolarsError, OSError, UnicodeDecodeError) as exc:
        raise _unreadable(path, exc) from exc
    _check_header(path, table, columns)
    return scan


def collect_file(path: Path, query: pl.LazyFrame) -> pl.DataFrame:
    """Run a query over a file's scan; a read failure is the file's fault (exit 2), named."""
    try:
        return query.collect()
    except (pl.exceptions.PolarsError, OSError, UnicodeDecodeError) as exc:
        raise _unreadable(path, exc) from exc


def read_table_file(path: Path, table: InputTable) -> pl.DataFrame:
    """The file's rows with the contract's required columns checked to be present."""
    try:
        frame = pl.read_parquet(path) if path.name.endswith(".parquet") else pl.read_csv(path, **_CSV)
    except (pl.exceptions.PolarsError, OSError, UnicodeDecodeError) as exc:
        raise _unreadable(path, exc) from exc
    _check_header(path, table, frame.columns)
    return frame


_DUPLICATE = re.compile(r"^(?P<name>.+)_duplicated_\d+$")
"""How Polars renames a CSV column whose name the header already had."""


def _check_header(path: Path, table: InputTable, columns: list[str]) -> None:
    """The header: not empty, no name twice (columns are found by name, §1), every required column."""
    if not columns:
        raise InputError(f"{path}: empty file (no header row)")
    for column in columns:
        repeated = _DUPLICATE.match(column)
        if repeated and repeated["name"] in columns:
            raise InputError(f"{path}: column '{repeated['name']}' appears more than once in the header")
    missing = [c for c in table.required_columns if c not in columns]
    if missing:
        raise InputError(f"{path}: missing required column '{missing[0]}'")


def _unreadable(path: Path, exc: Exception) -> InputError:
    first_line = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
    return InputError(f"{path}: unreadable file ({first_line})")
