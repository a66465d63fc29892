"""The `statusbatch` command line (SPEC §6): a thin group over the commands package."""

from __future__ import annotations

import os

# Polars' allocator hands freed memory back to the OS after half a second; each range of people
# then faults in again what the previous one freed, which cost a quarter of a run's CPU time.
# Kept for ten seconds instead, for the next range to reuse (docs/performance.md); a
# _RJEM_MALLOC_CONF of the caller's own wins.
os.environ.setdefault("_RJEM_MALLOC_CONF", "dirty_decay_ms:10000,muzzy_decay_ms:0")

import click  # noqa: E402  (the allocator is configured before Polars is first imported)

from statusbatch import __version__  # noqa: E402
from statusbatch.commands import explain, generate, import_legacy, run  # noqa: E402

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
