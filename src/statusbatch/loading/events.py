"""The events file, read one range of people at a time with the checks of SPEC §5 unchanged.

Duplicate keys are the one check that spans ranges: an event id may repeat
anywhere in the file, under another person. A first pass hashes every
`event_id`; the rows of repeated hashes are read whole and quarantined
together (the first valid row wins, an exact duplicate counts once), and each
range then reads its other rows, among which no key repeats.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import polars as pl

from statusbatch.loading.partitions import PersonRange
from statusbatch.loading.quarantine import ROW, Quarantined, key_hash, repeated_hashes
from statusbatch.loading.readers import collect_file

__all__ = ["EventFile", "EventsShare", "RepeatedKeys", "repeated_keys"]

Quarantine = Callable[[pl.DataFrame, tuple[pl.DataFrame, pl.DataFrame] | None], Quarantined]
"""Checks a share of the events file (raw rows numbered in `ROW`). Given the people and
participants of the range the share holds, it looks people up among those only, and no key
repeats in it; given None, the share may hold anyone and repeated keys."""


def _as_text(scan: pl.LazyFrame, name: str) -> pl.Expr:
    """A raw column as the text its typed value is (a Parquet file may hold ids as numbers)."""
    column = pl.col(name)
    return column if scan.collect_schema()[name] == pl.String else column.cast(pl.String)


@dataclass(frozen=True)
class EventsShare:
    """The events of one range of people: accepted (cut into logs) and rejected."""

    logs: dict[str, pl.DataFrame]
    rejected: pl.DataFrame
    rows_read: int


@dataclass(frozen=True)
class RepeatedKeys:
    """Every row of the events file whose `event_id` hash occurs more than once, whole."""

    rows: pl.DataFrame
    file_rows: int


def repeated_keys(path: Path, scan: pl.LazyFrame) -> RepeatedKeys:
    """The first pass: every `event_id` hashed, the rows of repeated hashes read whole.

    Run before the other tables are read, so that its 16 bytes per event are
    freed before the people are held.
    """
    hashed = key_hash([_as_text(scan, "event_id")])
    hashes = collect_file(path, scan.select(hashed)).to_series()
    repeated = repeated_hashes(hashes.to_numpy())
    file_rows = hashes.len()
    del hashes
    return RepeatedKeys(collect_file(path, scan.filter(hashed.is_in(repeated.implode()))), file_rows)


class EventFile:
    """The events file: its repeated keys settled up front, its other rows read per range of people."""

    def __init__(self, path: Path, scan: pl.LazyFrame, repeated: RepeatedKeys, check: Quarantine) -> None:
        self.path = path
        self.rows = repeated.file_rows
        self._scan = scan
        self._check = check
        self._person_id = _as_text(scan, "person_id")
        self._repeated_rows = repeated.rows.get_column(ROW)
        self.repeated: Quarantined = check(repeated.rows, None)
        """The rows of every repeated key, checked together: counted once, not per range."""

    def share(self, people: PersonRange, own_people: pl.DataFrame, own_participants: pl.DataFrame) -> EventsShare:
        """The events of `people` (whose rows are `own_people`, `own_participants`), but for rows of
        repeated keys (settled in `repeated`, accepted ones added)."""
        wanted = people.holds(self._person_id)
        if self._repeated_rows.len():
            wanted = wanted & ~pl.col(ROW).is_in(self._repeated_rows.implode())
        own = self._check(collect_file(self.path, self._scan.filter(wanted)), (own_people, own_participants))
        logs = {
            name: pl.concat([log, self.repeated.parts[name].filter(people.holds(pl.col("person_id")))])
            for name, log in own.parts.items()
        }
        return EventsShare(logs=logs, rejected=own.rejected, rows_read=own.rows_read)
