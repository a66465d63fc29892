"""Publishing validated tables into the DuckDB file in one transaction (SPEC §4, §5).

The bookkeeping tables are declared once here; result tables take their
columns from the validated frames and keep one slice per as_of.
"""

from __future__ import annotations

import contextlib
import re
import time
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import date
from pathlib import Path

import duckdb
import polars as pl

from statusbatch.validation import SLICED_TABLES, validate_tables

__all__ = [
    "DatabaseLockedError",
    "DatabaseUnusableError",
    "Publication",
    "RUNS_DDL",
    "RUN_INPUTS_DDL",
    "RunRecord",
    "open_database",
    "previous_statuses",
    "published_as_ofs",
    "record_run",
]

RUNS_DDL = """
CREATE TABLE IF NOT EXISTS runs (
    run_id VARCHAR PRIMARY KEY,
    as_of DATE NOT NULL,
    started_at TIMESTAMP NOT NULL,
    finished_at TIMESTAMP,
    outcome VARCHAR NOT NULL CHECK (outcome IN ('success', 'failed')),
    error VARCHAR,
    config_digest VARCHAR,
    version VARCHAR NOT NULL,
    command VARCHAR,
    input_dir VARCHAR
)"""
RUN_INPUTS_DDL = """
CREATE TABLE IF NOT EXISTS run_inputs (
    run_id VARCHAR NOT NULL,
    source_table VARCHAR NOT NULL,
    rows_read BIGINT NOT NULL,
    rows_accepted BIGINT NOT NULL,
    rows_rejected BIGINT NOT NULL,
    PRIMARY KEY (run_id, source_table)
)"""


DUCKDB_MEMORY_LIMIT = "2GB"
"""DuckDB keeps the blocks of a transaction's inserts cached up to its memory limit, by default
80% of RAM: a run publishing tens of millions of rows in one transaction would grow by all of
them. Above this limit DuckDB evicts the blocks it has already written to the file."""


class DatabaseLockedError(Exception):
    """Another process holds the database file: nothing was written."""


class DatabaseUnusableError(Exception):
    """No DuckDB database can be opened at the path (a file of another kind, a directory, a path under
    a file): a bad invocation, and nothing was written."""


@dataclass(frozen=True)
class RunRecord:
    run_id: str
    as_of: date
    started_at: object
    finished_at: object
    outcome: str
    error: str | None
    config_digest: str | None
    version: str
    command: str
    input_dir: str


_HOLDER = re.compile(r"Conflicting lock is held in (?P<program>.+?) \(PID (?P<pid>\d+)\)")


def _holder(message: str) -> str:
    found = _HOLDER.search(message)
    if not found:
        return "another process"
    return f"process {found['pid']} ({found['program']})"


@contextlib.contextmanager
def open_database(path: Path, lock_timeout: float, read_only: bool = False) -> Iterator[duckdb.DuckDBPyConnection]:
    """Connect, waiting up to `lock_timeout` seconds for another process to let go."""
    if path.is_dir():
        raise DatabaseUnusableError(f"{path}: is a directory, not a database file; nothing was written")
    if not read_only:
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise DatabaseUnusableError(
                f"{path}: cannot make its directory ({exc.strerror or exc}); nothing was written"
            ) from exc
    deadline = time.monotonic() + lock_timeout
    while True:
        try:
            con = duckdb.connect(str(path), read_only=read_only, config={"memory_limit": DUCKDB_MEMORY_LIMIT})
            break
        except duckdb.IOException as exc:
            if "not a valid DuckDB database" in str(exc):
                raise DatabaseUnusableError(f"{path}: not a DuckDB database file; nothing was written") from exc
            if "lock" not in str(exc).lower():
                raise
            if time.monotonic() >= deadline:
                raise DatabaseLockedError(
                    f"{path}: database is locked by {_holder(str(exc))}; waited {lock_timeout:g}s, nothing was written"
                ) from exc
            time.sleep(min(0.5, max(0.0, deadline - time.monotonic())))
    try:
        yield con
    finally:
        con.close()


def _table_exists(con: duckdb.DuckDBPyConnection, name: str) -> bool:
    return bool(
        con.execute(
            "SELECT count(*) FROM duckdb_tables() "
            "WHERE database_name = current_database() AND schema_name = 'main' AND table_name = ?",
            [name],
        ).fetchall()[0][0]
    )


def _catalogue(con: duckdb.DuckDBPyConnection) -> dict[str, set[str]]:
    """The file's tables with their columns. A publication reads this once and keeps it up to
    date: a catalogue query costs milliseconds, and a run would otherwise ask about thirty times."""
    rows = con.execute(
        "SELECT t.table_name, c.column_name FROM duckdb_tables() t JOIN duckdb_columns() c USING (table_oid) "
        "WHERE t.database_name = current_database() AND t.schema_name = 'main'"
    ).fetchall()
    tables: dict[str, set[str]] = {}
    for table, column in rows:  # noqa: rows-ok (one row per column of the file's tables)
        tables.setdefault(table, set()).add(column)
    return tables


def _logged_statuses(days: str) -> str:
    """SQL: each person's contact status at the latest logged day that `days` (a condition on
    `as_of`) allows: the change log holds every person's first status and every change since."""
    return (
        "SELECT person_id, arg_max(contact_status, as_of) AS contact_status "
        f"FROM status_changes WHERE {days} GROUP BY person_id"
    )


def previous_statuses(con: duckdb.DuckDBPyConnection, as_of: date) -> pl.DataFrame:
    """Each person's contact status at the latest earlier-dated run, rebuilt from the change log."""
    if not _table_exists(con, "status_changes"):
        return pl.DataFrame(schema={"person_id": pl.String, "previous_status": pl.String})
    return con.sql(
        f"SELECT person_id, contact_status AS previous_status FROM ({_logged_statuses('as_of < ?')})",
        params=[as_of],
    ).pl()


def _ensure_table(con: duckdb.DuckDBPyConnection, name: str, columns: list[str], tables: dict[str, set[str]]) -> bool:
    """Create `name` from the registered frame, or add the frame's new `columns`; `tables` (the
    catalogue) is kept up to date. True when the table was new."""
    existing = tables.get(name)
    if existing is None:
        con.execute(f'CREATE TABLE "{name}" AS SELECT * FROM frame LIMIT 0')
        tables[name] = set(columns)
        return True
    if not existing.issuperset(columns):
        for column, column_type, *_ in con.execute("DESCRIBE frame").fetchall():  # noqa: rows-ok (one row per column)
            if column not in existing:
                con.execute(f'ALTER TABLE "{name}" ADD COLUMN "{column}" {column_type}')
                existing.add(column)
    return False


def _clear(con: duckdb.DuckDBPyConnection, name: str, where: str, params: list) -> None:
    con.execute(f'DELETE FROM "{name}" WHERE {where}', params)


def _append(con: duckdb.DuckDBPyConnection, name: str, frame: pl.DataFrame, tables: dict[str, set[str]]) -> bool:
    """Insert `frame` (creating the table or its new columns); True when the table was new."""
    # one contiguous chunk per column: DuckDB's Arrow scan is up to twice as slow over many small chunks;
    # strings as Arrow views, Polars' own layout: the default (offsets) copied every string once more
    con.register("frame", frame.rechunk().to_arrow(compat_level=pl.CompatLevel.newest()))
    try:
        created = _ensure_table(con, name, frame.columns, tables)
        con.execute(f'INSERT INTO "{name}" BY NAME SELECT * FROM frame')
    finally:
        con.unregister("frame")
    return created


_PUBLISHED = "SELECT DISTINCT as_of FROM runs WHERE outcome = 'success'"
"""Published as_ofs come from the run log, not from a table's rows: an empty slice is a slice too."""


_LATEST_OF: dict[str, str] = {
    "contact_status_history": 'SELECT max(as_of) FROM "contact_status_history"',
    "runs": 'SELECT max(as_of) FROM "runs"',
}
"""The most recent as_of of a table whose `_latest` view does not follow the published as_ofs: the
history holds only the as_of of the run that last replaced it (an older backfill, maybe); the run
log's newest as_of is news whether its runs succeeded or failed."""


def _latest_view(con: duckdb.DuckDBPyConnection, name: str) -> None:
    """`<name>_latest`: the slice of the most recent as_of (SPEC §4), for every table with an as_of."""
    latest = _LATEST_OF.get(name, f"SELECT max(as_of) FROM ({_PUBLISHED})")
    con.execute(f'CREATE OR REPLACE VIEW "{name}_latest" AS SELECT * FROM "{name}" WHERE as_of = ({latest})')


def _prune(con: duckdb.DuckDBPyConnection, name: str, keep_as_of: int) -> None:
    if keep_as_of > 0:
        con.execute(
            f'DELETE FROM "{name}" WHERE as_of NOT IN '
            f"(SELECT as_of FROM ({_PUBLISHED}) ORDER BY as_of DESC LIMIT {int(keep_as_of)})"
        )


def _insert_run(con: duckdb.DuckDBPyConnection, run: RunRecord) -> None:
    con.execute(RUNS_DDL)
    _latest_view(con, "runs")
    con.execute(
        "INSERT INTO runs (run_id, as_of, started_at, finished_at, outcome, error, config_digest, version, command, input_dir) "
        "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
        [
            run.run_id,
            run.as_of,
            run.started_at,
            run.finished_at,
            run.outcome,
            run.error,
            run.config_digest,
            run.version,
            run.command,
            run.input_dir,
        ],
    )


_REPLACED: dict[str, str] = {"status_changes": "as_of = ?", "contact_status_history": "true"}
"""What a run replaces in the tables that are not sliced by as_of (SPEC §4)."""

ROW_GROUP_ROWS = 122_880
"""DuckDB's row group. Every INSERT that ends in a part-filled row group makes the commit and the
checkpoint slower (DuckDB keeps or rewrites the partial groups)."""

INSERT_ROW_GROUPS = 4
"""A table's rows wait until they fill this many row groups, then go in as whole groups (the rest
at commit). M's 7.5M rows took DuckDB 7-9 s as one INSERT per range and table (63), 4.8-5.2 s so."""


_FOLLOWING = "statusbatch_following_statuses"
"""A temporary table of the run's transaction: each person's status at the next published as_of."""


def _note_following(con: duckdb.DuckDBPyConnection, as_of: date, tables: dict[str, set[str]]) -> date | None:
    """The as_of published next after this run's, with each person's status there, read from the
    change log before this run rewrites its own day: the statuses its status_changes must now be
    compared against this day's (None when this run's day is the newest)."""
    if "status_changes" not in tables:
        return None
    following = published_after(con, as_of)
    if following is None:
        return None
    # only the people of that day's run, when its slice is kept: the log holds no absences
    kept = "contact_status" in tables and con.execute(
        "SELECT count(*) > 0 FROM contact_status WHERE as_of = ?", [following]
    ).fetchall()[0][0]
    present = " WHERE person_id IN (SELECT person_id FROM contact_status WHERE as_of = ?)" if kept else ""
    con.execute(
        f'CREATE TEMP TABLE "{_FOLLOWING}" AS SELECT * FROM ({_logged_statuses("as_of <= ?")}){present}',
        [following, following] if kept else [following],
    )
    return following


def _revise_following(con: duckdb.DuckDBPyConnection, as_of: date, following: date, tables: dict[str, set[str]]) -> None:
    """The next published day's status_changes, compared again with its new day before: this run's.

    A day's rows compare it with the published day before it (SPEC §4); a run
    of an earlier day than the newest becomes that day for the next one. Its
    rows are validated like every table and replace the old ones in this
    run's transaction.
    """
    # a person this run does not have keeps, for the next day, the status logged before this day,
    # as when the days are run oldest first
    previous = "coalesce(c.contact_status, b.contact_status)"
    revised = con.sql(
        f"SELECT ?::DATE AS as_of, f.person_id, {previous} AS previous_status, f.contact_status "
        f'FROM "{_FOLLOWING}" f LEFT JOIN contact_status c ON c.as_of = ? AND c.person_id = f.person_id '
        f"LEFT JOIN ({_logged_statuses('as_of < ?')}) b ON b.person_id = f.person_id "
        f"WHERE {previous} IS DISTINCT FROM f.contact_status ORDER BY f.person_id",
        params=[following, as_of, as_of],
    ).pl()
    validate_tables({"status_changes": revised})
    _clear(con, "status_changes", "as_of = ?", [following])
    _append(con, "status_changes", revised, tables)
    con.execute(f'DROP TABLE "{_FOLLOWING}"')


class Publication:
    """One run's tables written in one transaction, a share of people at a time: all or nothing.

    A table's own slice (or, for the history, its rows) is cleared before the
    run's first rows go in; `commit` adds the run, prunes old slices and
    commits. Any failure before then is undone by `rollback`.
    """

    def __init__(self, con: duckdb.DuckDBPyConnection, as_of: date, *, keep_as_of: int) -> None:
        self._con = con
        self._as_of = as_of
        self._keep_as_of = keep_as_of
        self._started: set[str] = set()
        self._waiting: dict[str, list[pl.DataFrame]] = {}
        con.execute("BEGIN TRANSACTION")
        self._tables = _catalogue(con)
        self._following = _note_following(con, as_of, self._tables)

    def append(self, tables: dict[str, pl.DataFrame]) -> None:
        """Add rows to the run's tables; they go in by whole row groups, the rest at `commit`."""
        for name, frame in tables.items():
            if name not in SLICED_TABLES and name not in _REPLACED and name != "run_inputs":
                raise ValueError(f"no publishing rule for table {name!r}")
            waiting = self._waiting.setdefault(name, [])
            waiting.append(frame)
            rows = sum(part.height for part in waiting)
            if rows >= INSERT_ROW_GROUPS * ROW_GROUP_ROWS:
                whole = pl.concat(waiting, how="vertical_relaxed")
                cut = rows - rows % ROW_GROUP_ROWS
                self._insert(name, whole.head(cut))
                self._waiting[name] = [whole.slice(cut)]

    def _flush(self) -> None:
        for name, waiting in self._waiting.items():
            self._insert(name, pl.concat(waiting, how="vertical_relaxed"))
        self._waiting.clear()

    def _insert(self, name: str, frame: pl.DataFrame) -> None:
        if name == "run_inputs":
            if name not in self._tables:
                self._con.execute(RUN_INPUTS_DDL)
                self._tables[name] = _catalogue(self._con)[name]
            _append(self._con, name, frame, self._tables)
        else:
            self._append_replacing(name, frame)

    def _append_replacing(self, name: str, frame: pl.DataFrame) -> None:
        first = name not in self._started
        self._started.add(name)
        if first and name in self._tables:
            where = _REPLACED.get(name, "as_of = ?")
            _clear(self._con, name, where, [self._as_of] if "?" in where else [])
        _append(self._con, name, frame, self._tables)

    def commit(self, run: RunRecord) -> None:
        self._flush()
        if self._following is not None:
            _revise_following(self._con, self._as_of, self._following, self._tables)
        _insert_run(self._con, run)
        for name in sorted(self._started & set(SLICED_TABLES)):
            _prune(self._con, name, self._keep_as_of)
        for name in sorted(self._started):
            _latest_view(self._con, name)
        self._con.execute("COMMIT")

    def rollback(self) -> None:
        self._con.execute("ROLLBACK")


def record_run(con: duckdb.DuckDBPyConnection, run: RunRecord) -> None:
    """Log a run on its own (a failed run writes nothing else)."""
    _insert_run(con, run)


def published_after(con: duckdb.DuckDBPyConnection, as_of: date) -> date | None:
    """The first as_of published after `as_of` (a run of an older day than the newest), if any."""
    (found,) = con.execute(f"SELECT min(as_of) FROM ({_PUBLISHED}) WHERE as_of > ?", [as_of]).fetchone()
    return found


def published_as_ofs(con: duckdb.DuckDBPyConnection) -> set[date]:
    """The as_ofs with a successful run: what a resumed backfill skips."""
    if not _table_exists(con, "runs"):
        return set()
    frame = con.sql("SELECT DISTINCT as_of FROM runs WHERE outcome = 'success'").pl()
    return set(frame.get_column("as_of").to_list())  # noqa: rows-ok (one value per published day)
