"""Fatal input problems: the run stops with exit 2 before anything is written (SPEC §5)."""

from __future__ import annotations

__all__ = ["InputError"]


class InputError(Exception):
    """A missing, duplicated or unreadable input file, or a missing required column."""
