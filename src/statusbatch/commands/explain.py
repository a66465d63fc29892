"""`statusbatch explain --db FILE PERSON_ID [--as-of DATE] [--json]` (SPEC §6): read-only."""

from __future__ import annotations

import sys
from datetime import date
from pathlib import Path

import click
from rich.console import Console

from statusbatch.commands.run import fail
from statusbatch.explain import ExplainError, read_report, render_report, report_json
from statusbatch.publish.store import DatabaseLockedError

__all__ = ["explain"]


@click.command("explain")
@click.option("--db", "db", required=True, type=click.Path(dir_okay=False), help="The DuckDB file a run published.")
@click.option("--as-of", "as_of", help="A published as_of date (YYYY-MM-DD); default the latest.")
@click.option("--json", "as_json", is_flag=True, help="One JSON document instead of tables.")
@click.argument("person_id")
def explain(db: str, as_of: str | None, as_json: bool, person_id: str) -> None:
    """Every status of one person, and the facts that decided it."""
    day = None
    if as_of is not None:
        try:
            day = date.fromisoformat(as_of.strip())
        except ValueError:
            fail(f"--as-of: expected a date YYYY-MM-DD, got {as_of!r}", 2)
    try:
        report = read_report(Path(db), person_id, day)
    except ExplainError as exc:
        fail(str(exc), 2)
    except DatabaseLockedError as exc:
        fail(str(exc), 1)
    if as_json:
        click.echo(report_json(report))
        return
    console = Console(file=sys.stdout, width=None if sys.stdout.isatty() else 160)
    console.print(render_report(report))
