"""Shared fixtures: write a tiny input directory from Python rows, run the CLI, read the DuckDB file.

Everything here is deliberately small and literal so that a test reads as its
input rows, its command and its expected rows.
"""

from __future__ import annotations

import csv
import io
import os
import sys
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import duckdb
import polars as pl
import pytest
from click.testing import CliRunner

from statusbatch.cli import main
from statusbatch.config import load_job
from statusbatch.loading import load_inputs
from statusbatch.pipeline import compute_tables, dnc_rules, parse_as_of

REPO = Path(__file__).resolve().parents[1]
STATUSBATCH = Path(sys.executable).with_name("statusbatch")
AS_OF = "2026-03-31"

# The columns each input file is written with when a test gives rows as dicts
# (a test may give CSV text instead, with any header it likes).
COLUMNS: dict[str, list[str]] = {
    "people": ["person_id", "email", "phone", "created_at", "last_seen_on"],
    "studies": ["study_id", "name", "kind", "opened_at", "closed_at", "participation_limit"],
    "participants": ["study_id", "person_id", "added_at", "participant_status", "status_updated_at"],
    "events": [
        "event_id",
        "person_id",
        "occurred_at",
        "event_type",
        "study_id",
        "sequence_id",
        "channel",
        "actor_id",
        "value",
        "reason",
    ],
    "sequences": ["sequence_id", "owner_id", "team_edition", "reply_handling"],
}

Rows = Iterable[Mapping[str, object]] | str | None


def person(person_id: str, created_at: str = "2026-01-01T00:00:00Z", **properties: object) -> dict:
    return {"person_id": person_id, "created_at": created_at, **properties}


def study(study_id: str, opened_at: str | None = "2026-01-01T00:00:00Z", closed_at: str | None = None, **more) -> dict:
    return {"study_id": study_id, "name": study_id, "kind": "interview", "opened_at": opened_at, "closed_at": closed_at, **more}


def participant(study_id: str, person_id: str, status: str, updated: str | None = None, added: str = "2026-01-02T00:00:00Z") -> dict:
    return {
        "study_id": study_id,
        "person_id": person_id,
        "added_at": added,
        "participant_status": status,
        "status_updated_at": updated,
    }


def event(event_id: str, person_id: str, at: str, event_type: str, **more: object) -> dict:
    return {"event_id": event_id, "person_id": person_id, "occurred_at": at, "event_type": event_type, **more}


def _csv_text(table: str, rows: Rows) -> str:
    if isinstance(rows, str):
        return rows if rows.endswith("\n") else rows + "\n"
    rows = list(rows or [])
    columns = list(COLUMNS[table])
    for row in rows:
        columns += [c for c in row if c not in columns]
    out = io.StringIO()
    writer = csv.DictWriter(out, fieldnames=columns, lineterminator="\n")
    writer.writeheader()
    for row in rows:
        writer.writerow({k: ("" if v is None else v) for k, v in row.items()})
    return out.getvalue()


def write_inputs(
    directory: Path,
    *,
    people: Rows = None,
    studies: Rows = None,
    participants: Rows = None,
    events: Rows = None,
    sequences: Rows = None,
) -> Path:
    """An input directory with one CSV per table (empty tables get their header only)."""
    directory.mkdir(parents=True, exist_ok=True)
    tables = {"people": people, "studies": studies, "participants": participants, "events": events}
    if sequences is not None:
        tables["sequences"] = sequences
    for table, rows in tables.items():
        (directory / f"{table}.csv").write_text(_csv_text(table, rows))
    return directory


def write_job(directory: Path, body: str = "", *, input_dir: str = "input", db: str = "out.duckdb") -> Path:
    """`directory/job.toml` pointing at `directory/input` and `directory/out.duckdb` (plus `body`)."""
    directory.mkdir(parents=True, exist_ok=True)
    job = directory / "job.toml"
    job.write_text(f'[job]\ninput = "{input_dir}"\ndb = "{db}"\n\n{body}\n')
    return job


@dataclass
class Workspace:
    """A job directory: `input/`, `job.toml`, `out.duckdb`."""

    root: Path

    @property
    def input(self) -> Path:
        return self.root / "input"

    @property
    def job(self) -> Path:
        return self.root / "job.toml"

    @property
    def db(self) -> Path:
        return self.root / "out.duckdb"

    def write(self, job_body: str = "", **tables: Rows) -> Workspace:
        write_inputs(self.input, **tables)
        write_job(self.root, job_body)
        return self

    def run(self, *args: str, as_of: str | None = AS_OF, check: bool = True):
        """`statusbatch run job.toml --as-of ...` in-process; asserts exit 0 unless check=False."""
        argv = ["run", str(self.job), "--quiet", *args]
        if as_of is not None:
            argv += ["--as-of", as_of]
        result = cli(*argv)
        if check:
            assert result.exit_code == 0, (result.exit_code, result.output, result.exception)
        return result

    def query(self, sql: str, params: list | None = None) -> list[tuple]:
        con = duckdb.connect(str(self.db), read_only=True)
        try:
            return con.execute(sql, params or []).fetchall()
        finally:
            con.close()

    def frame(self, sql: str) -> pl.DataFrame:
        con = duckdb.connect(str(self.db), read_only=True)
        try:
            return con.sql(sql).pl()
        finally:
            con.close()

    def tables(self) -> set[str]:
        return {r[0] for r in self.query("select table_name from information_schema.tables")}

    def compute(self, as_of: str = AS_OF) -> dict[str, pl.DataFrame]:
        """load_inputs + compute_tables in-process, collected (no database involved)."""
        config = load_job(self.job)
        inputs = load_inputs(config.job.input)
        lazy = compute_tables(inputs, config, parse_as_of(as_of), dnc_rules(config, inputs.people))
        return {name: frame.collect() for name, frame in lazy.items()}


def cli(*argv: str):
    return CliRunner().invoke(main, list(argv), catch_exceptions=True)


@pytest.fixture
def ws(tmp_path: Path) -> Workspace:
    return Workspace(tmp_path / "ws")


def compute(tmp_path: Path, job_body: str = "", as_of: str = AS_OF, **tables: Rows) -> dict[str, pl.DataFrame]:
    return Workspace(tmp_path / "ws").write(job_body, **tables).compute(as_of)


def ts(text: str) -> datetime:
    """An ISO instant as the aware UTC datetime the engine's frames hold."""
    return datetime.fromisoformat(text.replace("Z", "+00:00")).astimezone(UTC)


def naive(text: str) -> datetime:
    """An ISO instant as the naive UTC datetime DuckDB gives back."""
    return ts(text).replace(tzinfo=None)


def rows(frame: pl.DataFrame, *columns: str, key: str = "person_id") -> dict:
    """{key: (columns...)} for exact comparisons of a few columns."""
    return {r[key]: tuple(r[c] for c in columns) for r in frame.iter_rows(named=True)}


def one(frame: pl.DataFrame, **where: object) -> dict:
    found = frame.filter(*[pl.col(k) == v for k, v in where.items()]) if where else frame
    assert found.height == 1, f"expected one row for {where}, got {found.height}: {found}"
    return found.row(0, named=True)


def statusbatch_env() -> dict[str, str]:
    return {**os.environ, "NO_COLOR": "1"}
