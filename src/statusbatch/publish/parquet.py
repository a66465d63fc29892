"""Parquet copies of the published tables, each file replaced atomically."""

from __future__ import annotations

import os
from pathlib import Path

import duckdb

__all__ = ["ParquetCopyError", "export_parquet"]


class ParquetCopyError(Exception):
    """The Parquet copies could not be written; the previous ones are as they were."""


def export_parquet(con: duckdb.DuckDBPyConnection, tables: list[str], directory: Path) -> None:
    """Write every table as `<directory>/<table>.parquet`; readers never see a half-written file.

    Every file is staged, and every place checked, before the first one is replaced: a failure
    leaves the previous copies as they were, not some tables of one run and some of another.
    """
    staged: list[tuple[Path, Path]] = []
    try:
        directory.mkdir(parents=True, exist_ok=True)
        for name in tables:
            final = directory / f"{name}.parquet"
            temporary = directory / f".{name}.parquet.tmp"
            target = temporary.as_posix().replace("'", "''")  # a string literal: COPY takes no parameter
            con.execute(f"COPY (SELECT * FROM \"{name}\") TO '{target}' (FORMAT parquet)")
            staged.append((temporary, final))
        for _, final in staged:
            if final.exists() and not final.is_file():
                raise ParquetCopyError(f"{final} is not a file; no Parquet copy was replaced")
        for temporary, final in staged:
            os.replace(temporary, final)
    except (OSError, duckdb.Error) as exc:
        raise ParquetCopyError(str(exc).splitlines()[0] if str(exc) else type(exc).__name__) from exc
    finally:
        for temporary, _ in staged:
            temporary.unlink(missing_ok=True)
