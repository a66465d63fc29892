"""`statusbatch generate`: synthetic input exports at scale (SPEC §6), for benchmarks and demos."""

from __future__ import annotations

import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import click
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from statusbatch.synthetic import GenerateResult, ProgressCallback, SyntheticConfig, generate as generate_exports

__all__ = ["generate", "progress_reporter"]


@contextmanager
def progress_reporter(
    people: int, label: str = "generate", console: Console | None = None
) -> Iterator[ProgressCallback]:
    """A progress callback: a rich bar on a terminal, one plain line per chunk otherwise
    (so that cron and CI logs stay readable)."""
    console = console or Console(stderr=True)
    if console.is_terminal:
        columns = (TextColumn(f"{label} [progress.description]{{task.description}}"), BarColumn(),
                   MofNCompleteColumn(), TextColumn("people"), TimeElapsedColumn())  # fmt: skip
        with Progress(*columns, console=console, transient=True) as bar:
            task = bar.add_task("", total=people)

            def update(done: int, events: int) -> None:
                bar.update(task, completed=done, description=f"{events:,} events")

            yield update
    else:

        def line(done: int, events: int) -> None:
            print(f"{label}: {done:,}/{people:,} people, {events:,} events", file=sys.stderr, flush=True)

        yield line


def _summary(result: GenerateResult) -> str:
    rows = ", ".join(f"{name} {n:,}" for name, n in result.rows.items())
    messy = sum(result.messy.values())
    rate = result.rows["events"] / result.seconds if result.seconds else 0.0
    return (
        f"wrote {result.fmt} exports to {result.out_dir} in {result.seconds:.1f}s "
        f"({rate / 1e6:.2f}M events/s): {rows}; {messy:,} messy rows"
    )


@click.command("generate")
@click.option("--people", "-n", "people", type=click.IntRange(min=1), required=True, help="Number of people.")
@click.option(
    "--out",
    "out_dir",
    type=click.Path(file_okay=False, path_type=Path),
    required=True,
    help="Input directory to write people/studies/participants/sequences/events into.",
)
@click.option("--seed", type=int, default=0, show_default=True, help="Same seed and --people: identical files.")
@click.option(
    "--format", "fmt", type=click.Choice(["parquet", "csv"]), default="parquet", show_default=True, help="File format."
)
@click.option(
    "--chunk-people",
    type=click.IntRange(min=1),
    default=100_000,
    show_default=True,
    help="People generated and written per chunk (bounds memory; does not change the rows).",
)
@click.option(
    "--messy-rate",
    type=click.FloatRange(min=0.0, max=1.0),
    default=0.001,
    show_default=True,
    help="Share of deliberately bad rows (SPEC §5); 0 writes clean data.",
)
@click.option("--force", is_flag=True, help="Replace table files already in --out (of either format).")
def generate(
    people: int, out_dir: Path, seed: int, fmt: str, chunk_people: int, messy_rate: float, force: bool
) -> None:
    """Write realistic synthetic exports of every input table (SPEC §1) into OUT.

    Events per person are skewed (median ~15, a heavy tail of very active people), every event
    type appears, and a small share of rows is bad on purpose so that quarantine is exercised.
    """
    cfg = SyntheticConfig(people=people, seed=seed, messy_rate=messy_rate, chunk_people=chunk_people)
    try:
        with progress_reporter(people) as progress:
            result = generate_exports(cfg, out_dir, fmt, overwrite=force, progress=progress)  # type: ignore[arg-type]
    except FileExistsError as exc:
        raise click.UsageError(f"{exc} (use --force to replace them)") from exc
    click.echo(_summary(result))
