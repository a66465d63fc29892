"""`statusbatch explain`: one person's every status in a published database, and why (SPEC §6).

Reading only: the database is opened read-only and nothing is recomputed. The
report is what the tables say for one `as_of` slice (the latest published one
by default), plus the facts named in them: the `reason` texts, event ids,
study ids and cooldown ends.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from datetime import date, datetime, time, timezone
from pathlib import Path
from typing import Any

import duckdb
from rich import box
from rich.console import Group, RenderableType
from rich.panel import Panel
from rich.table import Table
from rich.text import Text

from statusbatch.publish.store import DatabaseUnusableError, open_database

__all__ = ["ExplainError", "PersonReport", "SLICED_SECTIONS", "read_report", "report_document", "report_json", "render_report"]

SLICED_SECTIONS: tuple[str, ...] = (
    "cooldowns",
    "participant_status",
    "sequence_status",
    "channel_status",
    "archival_candidates",
    "governance_violations",
    "rejected_transitions",
)
"""Per-person tables with one slice per as_of, shown when the database has them."""

_COMPONENTS = ("opted_out", "in_blocklist", "active_in_study", "do_not_contact", "in_cooldown")
_LOCK_TIMEOUT = 10.0


class ExplainError(Exception):
    """A problem the user can fix (no database, no such person or as_of): one line, exit 2."""


@dataclass(frozen=True)
class PersonReport:
    person_id: str
    as_of: date
    contact_status: dict[str, Any]
    sections: dict[str, list[dict[str, Any]]]
    """Rows of every per-person table present in the database (empty list: present, no rows)."""
    history: list[dict[str, Any]]
    status_changes: list[dict[str, Any]]
    decided_by: list[str] = field(default_factory=list)
    missing: tuple[str, ...] = ()
    """Tables the report would show that this database does not have (yet)."""

    @property
    def history_ends_before(self) -> date | None:
        """The T of the run that last rebuilt the history, when earlier than this report's as_of: each
        run replaces the history with its own up to its T (SPEC §4), so after a re-run of an older day
        the history knows nothing after it."""
        built = max((row["as_of"] for row in self.history if row.get("as_of") is not None), default=None)
        return built if built is not None and built < self.as_of else None


def _tables(con: duckdb.DuckDBPyConnection) -> set[str]:
    return {name for (name,) in con.execute("SELECT table_name FROM information_schema.tables").fetchall()}  # noqa: rows-ok (one row per table)


def _rows(con: duckdb.DuckDBPyConnection, sql: str, params: list[Any]) -> list[dict[str, Any]]:
    return con.sql(sql, params=params).pl().to_dicts()  # noqa: rows-ok (one person's rows)


def _published_as_of(con: duckdb.DuckDBPyConnection, requested: date | None, db: Path) -> date:
    published = [d for (d,) in con.execute("SELECT DISTINCT as_of FROM contact_status ORDER BY as_of").fetchall()]  # noqa: rows-ok (one row per slice)
    if not published:
        raise ExplainError(f"{db}: contact_status is empty; run `statusbatch run` first")
    if requested is None:
        return published[-1]
    if requested not in published:
        shown = ", ".join(d.isoformat() for d in published[-7:])
        raise ExplainError(f"{db}: no published as_of {requested.isoformat()} (published: {shown})")
    return requested


def _history_as_of(rows: list[dict[str, Any]], as_of: date) -> list[dict[str, Any]]:
    """The intervals started by the end of `as_of`; one running past it is the current one then."""
    end = datetime.combine(as_of, time.max)
    kept = [r for r in rows if r["valid_from"] <= end]
    return [{**r, "valid_to": r["valid_to"] if r["valid_to"] is not None and r["valid_to"] <= end else None} for r in kept]


def _decided_by(status: dict[str, Any], sections: dict[str, list[dict[str, Any]]]) -> list[str]:
    """The facts behind the status, in words: the reason, every component that holds, and their sources."""
    lines = [f"{status['contact_status']}: {status['reason']}"]
    held = [c for c in _COMPONENTS if status.get(c)]
    if held:
        lines.append("components that hold: " + ", ".join(held))
    if status.get("stored_status") and status["stored_status"] != status["contact_status"]:
        lines.append(f"stored status (reverted to when no study is active): {status['stored_status']}")
    active = set(status.get("active_study_ids") or [])
    for row in sections.get("participant_status", []):
        if row["study_id"] in active:
            observed = row.get("observed_event_id") or "export row"
            lines.append(
                f"active in study {row['study_id']}: {row['participant_status']} ({row['stage']}) "
                f"observed {_text(row.get('observed_at'))} by {observed}"
            )
    for row in sections.get("cooldowns", []):
        source = f"{row['source']} (event {row['source_event_id']})" if row.get("source_event_id") else row["source"]
        lines.append(
            f"cooldown {row['state']} until {_text(row['cooldown_until'])} from {source}, days left {row['days_left']}"
        )
    for row in sections.get("governance_violations", []):
        lines.append(
            f"invite {row['event_id']} to {row['study_id']} on {_text(row['occurred_at'])}: "
            f"{row['status_at_invite']}, {row['kind']}"
        )
    return lines


def read_report(db: Path, person_id: str, as_of: date | None = None) -> PersonReport:
    """Everything the database says about one person at one published as_of (default the latest)."""
    if not db.is_file():
        raise ExplainError(f"{db}: no such database file")
    try:
        with open_database(db, _LOCK_TIMEOUT, read_only=True) as con:
            return _read(con, db, person_id, as_of)
    except DatabaseUnusableError as exc:
        raise ExplainError(f"{db}: cannot read the database: not a DuckDB database file") from exc
    except duckdb.Error as exc:
        raise ExplainError(f"{db}: cannot read the database: {str(exc).splitlines()[0]}") from exc


def _read(con: duckdb.DuckDBPyConnection, db: Path, person_id: str, requested: date | None) -> PersonReport:
    tables = _tables(con)
    if "contact_status" not in tables:
        raise ExplainError(f"{db}: no contact_status table; run `statusbatch run` first")
    as_of = _published_as_of(con, requested, db)
    found = _rows(con, "SELECT * FROM contact_status WHERE as_of = ? AND person_id = ?", [as_of, person_id])
    if not found:
        raise ExplainError(f"person {person_id!r} is not in contact_status as of {as_of.isoformat()} ({db})")
    sections = {
        name: _rows(con, f'SELECT * FROM "{name}" WHERE as_of = ? AND person_id = ? ORDER BY ALL', [as_of, person_id])
        for name in SLICED_SECTIONS
        if name in tables
    }
    history: list[dict[str, Any]] = []
    if "contact_status_history" in tables:
        history = _history_as_of(
            _rows(con, "SELECT * FROM contact_status_history WHERE person_id = ? ORDER BY valid_from", [person_id]),
            as_of,
        )
    changes: list[dict[str, Any]] = []
    if "status_changes" in tables:
        changes = _rows(
            con, "SELECT * FROM status_changes WHERE person_id = ? AND as_of <= ? ORDER BY as_of", [person_id, as_of]
        )
    status = found[0]
    missing = tuple(n for n in (*SLICED_SECTIONS, "contact_status_history", "status_changes") if n not in tables)
    return PersonReport(person_id, as_of, status, sections, history, changes, _decided_by(status, sections), missing)


# -- output -------------------------------------------------------------------------------------


def _text(value: Any) -> str:
    if value is None:
        return "—"
    if isinstance(value, datetime):
        return value.replace(tzinfo=None).isoformat(sep=" ") + "Z"
    if isinstance(value, date):
        return value.isoformat()
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, list):
        return ", ".join(str(v) for v in value) or "—"
    return str(value)


def _jsonable(value: Any) -> Any:
    if isinstance(value, datetime):
        return value.replace(tzinfo=timezone.utc).isoformat().replace("+00:00", "Z")
    if isinstance(value, date):
        return value.isoformat()
    if isinstance(value, dict):
        return {k: _jsonable(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_jsonable(v) for v in value]
    return value


def report_document(report: PersonReport) -> dict[str, Any]:
    """The report as plain JSON data (instants as ISO-8601 UTC with `Z`)."""
    return _jsonable(
        {
            "person_id": report.person_id,
            "as_of": report.as_of,
            "contact_status": report.contact_status,
            "decided_by": report.decided_by,
            **report.sections,
            "contact_status_history": report.history,
            "contact_status_history_ends": report.history_ends_before,
            "status_changes": report.status_changes,
            "missing_tables": list(report.missing),
        }
    )


def report_json(report: PersonReport) -> str:
    return json.dumps(report_document(report), indent=2, sort_keys=False)


def _table(title: str, rows: list[dict[str, Any]], hidden: tuple[str, ...] = ("as_of", "person_id")) -> Table:
    columns = [c for c in rows[0] if c not in hidden]
    table = Table(title=title, box=box.SIMPLE_HEAD, title_justify="left", title_style="bold")
    for column in columns:
        table.add_column(column, overflow="fold")
    for row in rows:
        table.add_row(*[Text(_text(row[c])) for c in columns])  # Text: values are data, never Rich markup
    return table


def render_report(report: PersonReport) -> RenderableType:
    """Panels and tables for a terminal."""
    status = report.contact_status
    summary = Table.grid(padding=(0, 2))
    summary.add_column(style="bold")
    summary.add_column(overflow="fold")
    for column, value in status.items():
        if column not in ("as_of", "person_id"):
            summary.add_row(column, Text(_text(value)))
    title = Text(f"{report.person_id} — {status['contact_status']} (as of {report.as_of.isoformat()})")
    parts: list[RenderableType] = [
        Panel(summary, title=title, title_align="left"),
        Panel(Text("\n".join(f"• {line}" for line in report.decided_by)), title="decided by", title_align="left"),
    ]
    empty = []
    tables = {**report.sections, "contact_status_history": report.history, "status_changes": report.status_changes}
    for name, rows in tables.items():
        if rows:
            parts.append(_table(name, rows))
        elif name not in report.missing:
            empty.append(name)
    if empty:
        parts.append(Text("no rows in: " + ", ".join(empty), style="dim"))
    if report.missing:
        parts.append(Text("not in this database: " + ", ".join(report.missing), style="dim"))
    if report.history_ends_before is not None:
        parts.append(
            Text(
                f"contact_status_history was last rebuilt by the run as of {report.history_ends_before.isoformat()}:"
                " it ends there, and its last interval is the current one only as of that day",
                style="yellow",
            )
        )
    return Group(*parts)

