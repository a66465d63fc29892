"""Parquet copies of the published tables, each file replaced atomically."""

from __future__ import annotations

import os
from pathlib import Path

import duckdb

__all__ = ["export_parquet"]


def export_parquet(con: duckdb.DuckDBPyConnection, tables: list[str], directory: Path) -> None:
    """Write every table as `<directory>/<table>.parquet`; readers never see a half-written file."""
    directory.mkdir(parents=True, exist_ok=True)
    staged: list[tuple[Path, Path]] = []
    try:
        for name in tables:
            final = directory / f"{name}.parquet"
            temporary = directory / f".{name}.parquet.tmp"
            target = temporary.as_posix().replace("'", "''")  # a string literal: COPY takes no parameter
            con.execute(f"COPY (SELECT * FROM \"{name}\") TO '{target}' (FORMAT parquet)")
            staged.append((temporary, final))
        for temporary, final in staged:
            os.replace(temporary, final)
    finally:
        for temporary, _ in staged:
            temporary.unlink(missing_ok=True)
