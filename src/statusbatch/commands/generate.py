"""Placeholder: replaced by the module that implements `statusbatch generate`."""

import click


@click.command("generate")
def generate() -> None:
    raise click.ClickException("not implemented yet")
