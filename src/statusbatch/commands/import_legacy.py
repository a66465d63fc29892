"""`statusbatch import-legacy`: a legacy export into the events of an input directory (SPEC §6)."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import NoReturn

import click
from rich.console import Console
from rich.table import Table

from statusbatch.legacy import (
    DEFAULT_COLUMNS,
    SYSTEMS,
    ImportResult,
    LegacyColumns,
    LegacyImportError,
    import_legacy_file,
)

__all__ = ["import_legacy"]


def _bad_input(message: str) -> NoReturn:
    """One line on stderr and exit 2, like `run`: a bad file or directory is the caller's to fix."""
    click.echo(f"statusbatch: {message}", err=True)
    sys.exit(2)


@click.command("import-legacy")
@click.option(
    "--system",
    type=click.Choice(SYSTEMS, case_sensitive=False),
    required=True,
    help="Which product exported the file.",
)
@click.argument("legacy", metavar="LEGACY.csv", type=click.Path(path_type=Path))
@click.option(
    "--out",
    "out_dir",
    type=click.Path(path_type=Path),
    required=True,
    help="Input directory to append people.csv and events.csv to (created if missing).",
)
@click.option("--id-column", help="Person id column (default per system: Person ID, Contact ID, Contact UUID).")
@click.option("--status-column", help="Status label column (default: Contact Status, Status, Status).")
@click.option("--date-column", help="Status date column (default: Status Updated At / Status Changed On).")
@click.option("--sequence-column", help="Reply only: sequence id column (default: Sequence ID).")
@click.option(
    "--cooldown-days",
    type=click.IntRange(min=1),
    default=90,
    show_default=True,
    help="Length of an In Cooldown without a Cooldown Until date.",
)
def import_legacy(
    system: str,
    legacy: Path,
    out_dir: Path,
    id_column: str | None,
    status_column: str | None,
    date_column: str | None,
    sequence_column: str | None,
    cooldown_days: int,
) -> None:
    """Turn a Rally, Reply or RapidPro export of display labels into events the run replays."""
    system = system.lower()
    if sequence_column is not None and system != "reply":
        _bad_input("--sequence-column applies to --system reply only")
    default = DEFAULT_COLUMNS[system]
    columns = LegacyColumns(
        id=id_column or default.id,
        status=status_column or default.status,
        date=date_column or default.date,
        sequence=(sequence_column or default.sequence) if system == "reply" else None,
    )
    try:
        result = import_legacy_file(legacy, out_dir, system, columns, cooldown_days)
    except LegacyImportError as exc:
        _bad_input(str(exc))
    _report(result)


def _summary_rows(result: ImportResult) -> list[tuple[str, str]]:
    rows = [
        ("rows read", str(result.rows_read)),
        ("rows imported", str(result.rows_imported)),
        ("rows reported (no event)", str(result.rows_reported)),
        ("rows rejected", str(result.rows_rejected)),
        ("events written", str(result.events_written)),
        ("events already present", str(result.events_present)),
        ("people added", str(result.people_added)),
    ]
    if result.rejected_file is not None:
        rows.append(("rejected rows file", str(result.rejected_file)))
    return rows


def _report(result: ImportResult) -> None:
    """A rich table on a terminal, plain `name: value` lines for logs and pipes."""
    console = Console()
    title = f"{result.source} ({result.system}) → {result.out_dir}"
    if console.is_terminal:
        table = Table(title=title, show_header=False)
        table.add_column("what")
        table.add_column("count", justify="right")
        for name, value in _summary_rows(result):
            table.add_row(name, value)
        labels = Table(title="rows per label", show_header=True)
        labels.add_column("label")
        labels.add_column("rows", justify="right")
        for label, count in result.label_counts.items():
            labels.add_row(label, str(count))
        console.print(table)
        console.print(labels)
        for note in result.notes:
            console.print(f"[yellow]note:[/yellow] {note}")
        return
    click.echo(f"imported {title}")
    for name, value in _summary_rows(result):
        click.echo(f"{name}: {value}")
    for label, count in result.label_counts.items():
        click.echo(f"label {label}: {count}")
    for note in result.notes:
        click.echo(f"note: {note}")
