"""Placeholder: replaced by the module that implements `statusbatch import-legacy`."""

import click


@click.command("import-legacy")
def import_legacy() -> None:
    raise click.ClickException("not implemented yet")
