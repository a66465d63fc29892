"""The events file, read one range of people at a time with the checks of SPEC §5 unchanged.

Duplicate keys are the one check that may span ranges: an event id may repeat
anywhere in the file, under another person. A first pass hashes every
`event_id` and notes the row and person of each repeated hash. A key whose rows
all fall in one range of people is settled by that range (the first valid row
wins, an exact duplicate counts once), as every other check of a row depends on
its range's people only; the rows of a hash that spans ranges are read whole
and quarantined together up front, and the ranges read the rest.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import polars as pl

from statusbatch.loading.partitions import RANGE, PersonRange, range_count, range_index
from statusbatch.loading.quarantine import ROW, Quarantined, key_hash, repeated_hashes
from statusbatch.loading.readers import collect_file

__all__ = ["EventFile", "EventsShare", "FirstPass", "first_pass"]

Quarantine = Callable[[pl.DataFrame, tuple[pl.DataFrame, pl.DataFrame] | None, pl.Series | None], Quarantined]
"""Checks a share of the events file (raw rows numbered in `ROW`). Given the people and
participants of the range the share holds, it looks people up among those only, and only the
rows given last (`ROW` numbers) may repeat a key; given None, None, the share may hold anyone
and repeated keys anywhere."""

_HASH = "__key_hash"


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


BLOCK_ROWS = 65_536
"""The events file is planned in blocks of rows: a range of people reads the runs of blocks that
hold its people. Row-group statistics cannot stand in for this: a few rows out of person order
(unknown people's ids) spread a row group's min and max over most ranges."""
_BLOCK = "__block"


@dataclass(frozen=True)
class FirstPass:
    """What the open stage learns of the events file before the other tables are read."""

    repeated: pl.DataFrame
    """The rows whose `event_id` hash occurs more than once (`ROW`, the hash and `person_id`;
    rows without an id are no key's and left out)."""
    file_rows: int
    placement: pl.DataFrame | None
    """The people with rows in each block of `BLOCK_ROWS` rows (`_BLOCK`, `person_id`), once each;
    None when the file makes one range of people, which reads it whole."""


def first_pass(path: Path, scan: pl.LazyFrame, events_per_range: int) -> FirstPass:
    """Every `event_id` hashed and the rows of repeated hashes located; the people of each block,
    when the file makes several ranges.

    Run before the other tables are read, so that its 8 bytes per event are
    freed before the people are held. Of the repeated rows only the person is
    read then: most keys repeat within one person's events, and a range reads
    those rows whole anyway.
    """
    first = collect_file(
        path,
        scan.select(key_hash([_as_text(scan, "event_id")]).alias(_HASH), pl.col("event_id").is_not_null().alias("_id")),
    )
    repeated = repeated_hashes(first.get_column(_HASH).to_numpy())
    # the pass keeps the file's order: row i (from 0) is ROW i + 1
    located = first.with_row_index(ROW, offset=1).filter(pl.col(_HASH).is_in(repeated.implode()) & pl.col("_id"))
    file_rows = first.height
    del first
    persons = scan.filter(pl.col(ROW).is_in(located.get_column(ROW).implode())).select(
        ROW, _as_text(scan, "person_id").alias("person_id")
    )
    persons = collect_file(path, persons if located.height else persons.head(0))
    placement = None
    if range_count(file_rows, events_per_range) > 1:
        blocks = scan.select(((pl.col(ROW) - 1) // BLOCK_ROWS).alias(_BLOCK), _as_text(scan, "person_id").alias("person_id"))
        placement = collect_file(path, blocks.unique())
    return FirstPass(
        located.select(ROW, _HASH).join(persons, on=ROW, how="left", maintain_order="left"), file_rows, placement
    )


def _spans(placement: pl.DataFrame, ranges: tuple[PersonRange, ...]) -> dict[PersonRange, list[tuple[int, int]]]:
    """Each range's runs of blocks holding its people, as (offset, length) in rows."""
    blocks = placement.with_columns(range_index(ranges, placement.get_column("person_id"))).select(_BLOCK, RANGE)
    step = (pl.col(_BLOCK) != pl.col(_BLOCK).shift(1) + 1) | (pl.col(RANGE) != pl.col(RANGE).shift(1))
    runs = (
        blocks.unique()
        .sort(RANGE, _BLOCK)
        .with_columns(step.fill_null(True).cum_sum().alias("_run"))
        .group_by(RANGE, "_run")
        .agg(pl.col(_BLOCK).min().alias("_first"), pl.col(_BLOCK).max().alias("_last"))
        .sort(RANGE, "_first")
    )
    spans: dict[PersonRange, list[tuple[int, int]]] = {r: [] for r in ranges}
    for index, first, last in runs.select(RANGE, "_first", "_last").iter_rows():  # noqa: rows-ok (one row per run of blocks)
        spans[ranges[index]].append((first * BLOCK_ROWS, (last - first + 1) * BLOCK_ROWS))
    return spans


class EventFile:
    """The events file: keys repeated across ranges settled up front, its other rows read per range of people."""

    def __init__(
        self,
        path: Path,
        scan: pl.LazyFrame,
        first: FirstPass,
        check: Quarantine,
        ranges: tuple[PersonRange, ...],
    ) -> None:
        self.path = path
        self.rows = first.file_rows
        self._scan = scan
        self._check = check
        self._person_id = _as_text(scan, "person_id")
        self._spans = _spans(first.placement, ranges) if first.placement is not None and len(ranges) > 1 else {}
        placed = first.repeated.with_columns(range_index(ranges, first.repeated.get_column("person_id")))
        across_ranges = pl.col(RANGE).n_unique().over(_HASH) > 1
        self._spanning = placed.filter(across_ranges).get_column(ROW)
        self._within = {
            r: placed.filter(~across_ranges & (pl.col(RANGE) == i)).get_column(ROW) for i, r in enumerate(ranges)
        }
        spanning = scan.filter(pl.col(ROW).is_in(self._spanning.implode())) if self._spanning.len() else scan.head(0)
        self.repeated: Quarantined = check(collect_file(path, spanning), None, None)
        """The rows of every key repeated across ranges, checked together: counted once, not per range."""

    def share(self, people: PersonRange, own_people: pl.DataFrame, own_participants: pl.DataFrame) -> EventsShare:
        """The events of `people` (whose rows are `own_people`, `own_participants`), but for rows of
        keys repeated across ranges (settled in `repeated`, accepted ones added)."""
        wanted = people.holds(self._person_id)
        if self._spanning.len():
            wanted = wanted & ~pl.col(ROW).is_in(self._spanning.implode())
        source = self._scan
        if self._spans:
            spans = self._spans[people]
            source = pl.concat([self._scan.slice(*span) for span in spans]) if spans else self._scan.head(0)
        own = self._check(
            collect_file(self.path, source.filter(wanted)), (own_people, own_participants), self._within[people]
        )
        logs = {}
        for name, log in own.parts.items():
            settled = self.repeated.parts[name].filter(people.holds(pl.col("person_id")))
            logs[name] = pl.concat([log, settled]) if settled.height else log
        return EventsShare(logs=logs, rejected=own.rejected, rows_read=own.rows_read)
