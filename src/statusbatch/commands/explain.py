"""Placeholder: replaced by the module that implements `statusbatch explain`."""

import click


@click.command("explain")
def explain() -> None:
    raise click.ClickException("not implemented yet")
