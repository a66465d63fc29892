"""Progress for people and log lines for machines (SPEC §6).

On a terminal a rich status line shows the stage under way; otherwise plain
lines go to stderr. Either way each finished stage is logged as
`stage <name>: <seconds>s (peak RSS so far …)`, which `make bench` reads.
"""

from __future__ import annotations

import contextlib
import resource
import sys
import time
from collections.abc import Iterator

from rich.console import Console

__all__ = ["Reporter"]


def _peak_rss_gib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20


class Reporter:
    def __init__(self, *, quiet: bool = False, console: Console | None = None) -> None:
        self.console = console or Console(stderr=True, log_path=False)
        self.interactive = self.console.is_terminal and not quiet
        self.quiet = quiet
        self.timings: dict[str, float] = {}

    def log(self, message: str) -> None:
        if self.quiet:
            return
        if self.interactive:
            self.console.log(message)
        else:
            print(message, file=sys.stderr, flush=True)

    @contextlib.contextmanager
    def stage(self, name: str, *, spinner: bool = True) -> Iterator[None]:
        """Time a stage; `spinner=False` for a stage run beside another (one live display at a time)."""
        started = time.perf_counter()
        if self.interactive and spinner:
            with self.console.status(f"[bold]{name}[/bold]…"):
                yield
        else:
            yield
        elapsed = time.perf_counter() - started
        self.timings[name] = self.timings.get(name, 0.0) + elapsed
        self.log(f"stage {name}: {elapsed:.3f}s (peak RSS so far {_peak_rss_gib():.2f} GiB)")
