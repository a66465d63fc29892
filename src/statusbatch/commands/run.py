"""`statusbatch run` and `statusbatch validate` (SPEC §6): exit 0 ok, 1 run failed, 2 bad input or config."""

from __future__ import annotations

import contextlib
import sys
from collections.abc import Iterator
from datetime import date, timedelta
from pathlib import Path

import click
from rich.progress import Progress

from statusbatch.config import ConfigError, JobConfig, load_job
from statusbatch.loading import InputError, load_inputs
from statusbatch.pipeline import AsOf, RunFailed, default_as_of, dnc_rules, parse_as_of, prepare, run_job, run_prepared
from statusbatch.progress import Reporter
from statusbatch.publish.store import DatabaseLockedError, DatabaseUnusableError, open_database, published_as_ofs

__all__ = ["run", "validate", "backfill", "fail", "load_config"]


def fail(message: str, code: int) -> None:
    """One line on stderr, then the exit code: never a traceback for a known problem."""
    click.echo(f"statusbatch: {message}", err=True)
    sys.exit(code)


@contextlib.contextmanager
def exit_codes() -> Iterator[None]:
    """Known problems as one line and their exit code: 2 for inputs and configuration, 1 for a held database."""
    try:
        yield
    except (InputError, ConfigError, DatabaseUnusableError) as exc:
        fail(str(exc), 2)
    except DatabaseLockedError as exc:
        fail(str(exc), 1)


def load_config(job_file: str, input_dir: str | None, db: str | None = None, parquet: str | None = None) -> JobConfig:
    try:
        config = load_job(Path(job_file))
    except ConfigError as exc:
        fail(str(exc), 2)
    config = config.with_overrides(
        input=Path(input_dir) if input_dir else None,
        db=Path(db) if db else None,
        parquet=Path(parquet) if parquet else None,
    )
    _check_output_path("--db" if db else "[job] db", config.job.db, directory=False)
    if config.job.parquet is not None:
        _check_output_path("--parquet" if parquet else "[job] parquet", config.job.parquet, directory=True)
    return config


def _check_output_path(key: str, path: Path, *, directory: bool) -> None:
    """A path the run writes to, checked before anything is read or written (SPEC §5: a bad
    configuration is exit 2, naming the key): found to be unusable only after the commit, the Parquet
    export failed a run whose database was already written."""
    if path.exists() and path.is_dir() != directory:
        found, wanted = ("a file", "a directory") if directory else ("a directory", "a database file")
        fail(f"{key}: {path} is {found}, not {wanted}", 2)
    for parent in path.parents:
        if parent.exists():
            if not parent.is_dir():
                fail(f"{key}: {path} lies under {parent}, which is a file", 2)
            break


def _as_of(value: str | None) -> AsOf:
    if value is None:
        return default_as_of()
    try:
        return parse_as_of(value)
    except ValueError:
        fail(f"--as-of: expected a date YYYY-MM-DD or an ISO-8601 timestamp, got {value!r}", 2)



@click.command("run")
@click.argument("job_file", type=click.Path(dir_okay=False))
@click.option("--as-of", "as_of", help="Date (end of that UTC day) or ISO timestamp; default yesterday (UTC).")
@click.option("--input", "input_dir", type=click.Path(file_okay=False), help="Input directory (overrides the job file).")
@click.option("--db", type=click.Path(dir_okay=False), help="DuckDB file (overrides the job file).")
@click.option("--parquet", type=click.Path(file_okay=False), help="Also write every table as Parquet here.")
@click.option("--lock-timeout", default=60.0, show_default=True, type=click.FloatRange(min=0), help="Seconds to wait for a database held by another process.")
@click.option("--quiet", is_flag=True, help="No progress and no log lines.")
def run(job_file: str, as_of: str | None, input_dir: str | None, db: str | None, parquet: str | None, lock_timeout: float, quiet: bool) -> None:
    """Recompute every status as of a date and publish the result tables."""
    config = load_config(job_file, input_dir, db, parquet)
    when = _as_of(as_of)
    reporter = Reporter(quiet=quiet)
    reporter.log(f"statusbatch run {config.path.name} as of {when.instant.isoformat()} → {config.job.db}")
    try:
        with exit_codes():
            summary = run_job(config, when, reporter, lock_timeout=lock_timeout)
    except RunFailed as exc:
        fail(f"run failed: {exc}", 1)
    rows = ", ".join(f"{name} {count}" for name, count in summary.rows.items())
    reporter.log(f"published as_of {summary.as_of.day} (run {summary.run_id}): {rows}")


@click.command("validate")
@click.argument("job_file", type=click.Path(dir_okay=False))
@click.option("--input", "input_dir", type=click.Path(file_okay=False), help="Input directory (overrides the job file).")
def validate(job_file: str, input_dir: str | None) -> None:
    """Check the job file and the inputs without writing anything."""
    config = load_config(job_file, input_dir)
    with exit_codes():
        inputs = load_inputs(config.job.input)
        dnc_rules(config, inputs.people)
    for source_table, read, accepted, rejected in inputs.run_inputs.iter_rows():  # noqa: rows-ok (one row per input table)
        click.echo(f"{source_table}: {read} read, {accepted} accepted, {rejected} rejected")
    shown = inputs.rejected_rows.head(20)
    for source_table, row_number, column, problem, _raw in shown.iter_rows():  # noqa: rows-ok (at most 20 rows shown)
        click.echo(f"  {source_table} row {row_number}, {column}: {problem}")
    if inputs.rejected_rows.height > shown.height:
        click.echo(f"  … and {inputs.rejected_rows.height - shown.height} more rejected rows")
    click.echo(f"{config.path.name}: configuration ok, {len(config.do_not_contact)} do_not_contact rules compiled")


@click.command("backfill")
@click.argument("job_file", type=click.Path(dir_okay=False))
@click.option("--from", "first", required=True, help="First as_of date (YYYY-MM-DD).")
@click.option("--to", "last", required=True, help="Last as_of date (YYYY-MM-DD), inclusive.")
@click.option("--force", is_flag=True, help="Recompute days that are already published.")
@click.option("--input", "input_dir", type=click.Path(file_okay=False), help="Input directory (overrides the job file).")
@click.option("--db", type=click.Path(dir_okay=False), help="DuckDB file (overrides the job file).")
@click.option("--lock-timeout", default=60.0, show_default=True, type=click.FloatRange(min=0))
def backfill(job_file: str, first: str, last: str, force: bool, input_dir: str | None, db: str | None, lock_timeout: float) -> None:
    """Publish one as_of per day from --from to --to, oldest first; resumable."""
    config = load_config(job_file, input_dir, db)
    try:
        start, end = date.fromisoformat(first), date.fromisoformat(last)
    except ValueError as exc:
        fail(f"--from/--to: expected dates YYYY-MM-DD ({exc})", 2)
    if end < start:
        fail(f"--to {end} is before --from {start}", 2)
    days = [start + timedelta(days=n) for n in range((end - start).days + 1)]
    reporter = Reporter(quiet=True)
    log = Reporter()
    try:
        with exit_codes():
            prepared = prepare(config, log)
            done: set[date] = set()
            if config.job.db.exists():
                with open_database(config.job.db, lock_timeout) as con:
                    done = published_as_ofs(con)
            todo = [d for d in days if force or d not in done]
            log.log(f"backfill {start} → {end}: {len(days)} days, {len(days) - len(todo)} already published")
            with Progress(console=log.console, disable=not log.interactive) as progress:
                task = progress.add_task("backfill", total=len(todo))
                for day in todo:
                    run_prepared(config, prepared, parse_as_of(day.isoformat()), reporter, lock_timeout=lock_timeout, command="backfill")
                    progress.advance(task)
                    if not log.interactive:
                        log.log(f"published {day}")
    except RunFailed as exc:
        fail(f"backfill stopped at {day}: {exc} (days before it are published; rerun to resume)", 1)
    log.log(f"backfill done: {len(todo)} days published")
