"""Do two statusbatch databases hold the same published rows? The check behind every optimisation.

    .venv/bin/python bench/compare.py BEFORE.duckdb AFTER.duckdb

Compares every result table present in both files as multisets of rows (row
order is not part of the contract), and run_inputs without its run id. Prints
one line per table and exits 1 when any table differs or is missing from one side.
"""

from __future__ import annotations

import sys

import duckdb

_SKIPPED = {"runs"}
_COLUMNS = {"run_inputs": "source_table, rows_read, rows_accepted, rows_rejected"}


def _tables(con: duckdb.DuckDBPyConnection, catalog: str) -> set[str]:
    rows = con.execute(
        "SELECT table_name FROM information_schema.tables WHERE table_catalog = ? AND table_type = 'BASE TABLE'",
        [catalog],
    ).fetchall()
    return {name for (name,) in rows} - _SKIPPED


def compare(before: str, after: str) -> bool:
    con = duckdb.connect()
    con.execute(f"ATTACH '{before}' AS a (READ_ONLY)")
    con.execute(f"ATTACH '{after}' AS b (READ_ONLY)")
    left, right = _tables(con, "a"), _tables(con, "b")
    same = left == right
    for name in sorted(left ^ right):
        print(f"{name:26s} only in {'BEFORE' if name in left else 'AFTER'}")
    for name in sorted(left & right):
        cols = _COLUMNS.get(name, "*")
        count = "SELECT count(*) FROM ({} EXCEPT ALL {})"
        only_a = con.execute(count.format(f"SELECT {cols} FROM a.{name}", f"SELECT {cols} FROM b.{name}")).fetchone()[0]
        only_b = con.execute(count.format(f"SELECT {cols} FROM b.{name}", f"SELECT {cols} FROM a.{name}")).fetchone()[0]
        rows = con.execute(f"SELECT count(*) FROM b.{name}").fetchone()[0]
        verdict = "same" if only_a == only_b == 0 else f"DIFFERS: {only_a} rows only before, {only_b} only after"
        print(f"{name:26s} {rows:>10d} rows  {verdict}")
        same = same and only_a == only_b == 0
    return same


if __name__ == "__main__":
    if len(sys.argv) != 3:
        sys.exit(__doc__)
    sys.exit(0 if compare(sys.argv[1], sys.argv[2]) else 1)
