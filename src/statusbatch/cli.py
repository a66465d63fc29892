"""The `statusbatch` command line (SPEC §6): a thin group over the commands package."""

from __future__ import annotations

import click

from statusbatch import __version__
from statusbatch.commands import explain, generate, import_legacy, run

__all__ = ["main"]


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="statusbatch")
def main() -> None:
    """Contact-governance statuses, recomputed nightly into DuckDB."""


for command in (
    run.run,
    run.validate,
    run.backfill,
    explain.explain,
    import_legacy.import_legacy,
    generate.generate,
):
    main.add_command(command)
