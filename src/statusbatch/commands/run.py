"""Placeholder for `statusbatch run` / `validate` / `backfill`."""

import click


@click.command("run")
def run() -> None:
    raise click.ClickException("not implemented yet")


@click.command("validate")
def validate() -> None:
    raise click.ClickException("not implemented yet")


@click.command("backfill")
def backfill() -> None:
    raise click.ClickException("not implemented yet")
