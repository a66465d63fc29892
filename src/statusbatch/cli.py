"""The `statusbatch` command line (SPEC §6): a thin group over the commands package."""

from __future__ import annotations

import os

import click

from statusbatch import __version__
from statusbatch.commands import explain, generate, import_legacy, run

__all__ = ["main"]


class _Group(click.Group):
    """Known problems exit with their own code; an unexpected one is one line and exit 1."""

    def invoke(self, ctx: click.Context) -> object:
        try:
            return super().invoke(ctx)
        except (click.exceptions.Exit, click.ClickException, click.Abort, SystemExit, KeyboardInterrupt):
            raise
        except Exception as exc:
            if os.environ.get("STATUSBATCH_DEBUG"):
                raise
            click.echo(
                f"statusbatch: internal error: {type(exc).__name__}: {exc} (STATUSBATCH_DEBUG=1 shows a traceback)",
                err=True,
            )
            ctx.exit(1)


@click.group(cls=_Group, context_settings={"help_option_names": ["-h", "--help"]})
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
