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
_HOME = "__home"
_FEW = 16
"""A range's ids in a block are few, and looked up among the people, when one or under a 16th of the block's."""
_NO_STRAYS = pl.DataFrame(schema={"person_id": pl.String, RANGE: pl.UInt32})


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
    if not path.name.endswith(".parquet"):
        # a CSV row with too many fields shows only where every column is parsed, which the
        # ranges' reads would do after the database is opened: found now, before anything is written
        collect_file(path, scan.select(pl.all().exclude(ROW).null_count()))
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


def stray_homes(by_id: pl.DataFrame, people: pl.Series) -> pl.DataFrame:
    """The range that reads the rows of each stray id, one no accepted person has (`person_id`, `RANGE`).

    Such a row is rejected (unknown person) by whichever range reads it, so it
    is read by a range whose blocks it lies in: the first range with people in
    the id's first block. Placed by its id instead, a few unknown ids sorting
    after every real one, strewn through a file in person order, would have the
    last range read nearly every block. Only the ids of a range with few ids
    in a block are looked up: any id may be read by its own range, so one
    left where it sorts costs time, never a row. Null ids stay the first
    range's. `by_id` is the placement with the `RANGE` each id sorts into.
    """
    groups = by_id.group_by(_BLOCK, RANGE).agg(pl.len().alias("_ids"))
    few = (pl.col("_ids") == 1) | (pl.col("_ids") * _FEW < pl.col("_ids").sum().over(_BLOCK))
    groups = groups.with_columns(few.alias("_few"))
    candidates = by_id.join(groups.filter("_few"), on=[_BLOCK, RANGE], how="semi").drop_nulls("person_id")
    ids = candidates.select("person_id").unique()
    known = people.rename("person_id").to_frame().join(ids, on="person_id", how="semi")
    people_in_block = pl.concat(
        [
            groups.filter(~pl.col("_few")).select(_BLOCK, RANGE),
            candidates.join(known, on="person_id", how="semi").select(_BLOCK, RANGE),
        ]
    )
    homes = people_in_block.group_by(_BLOCK).agg(pl.col(RANGE).min().alias(_HOME))
    return (
        candidates.join(known, on="person_id", how="anti")
        .join(homes, on=_BLOCK, how="left")
        .group_by("person_id")
        .agg(pl.coalesce(_HOME, RANGE).sort_by(_BLOCK).first().alias(RANGE))
    )


def rehomed(by_id: pl.DataFrame, strays: pl.DataFrame) -> pl.DataFrame:
    """`by_id` (rows with the `RANGE` their id sorts into) with the rows of stray ids placed at their
    homes instead: the `RANGE` that reads each row. Row order is not kept."""
    if strays.height == 0:
        return by_id
    moved = by_id.get_column("person_id").is_in(strays.get_column("person_id").implode()).fill_null(False)
    if not moved.any():
        return by_id
    homes = by_id.filter(moved).drop(RANGE).join(strays, on="person_id").select(by_id.columns)
    return pl.concat([by_id.filter(~moved), homes])


def with_id_range(frame: pl.DataFrame, ranges: tuple[PersonRange, ...]) -> pl.DataFrame:
    """`frame` with the `RANGE` each row's `person_id` sorts into."""
    return frame.with_columns(range_index(ranges, frame.get_column("person_id")))


def _spans(blocks: pl.DataFrame, ranges: tuple[PersonRange, ...]) -> dict[PersonRange, list[tuple[int, int]]]:
    """Each range's runs of the blocks holding rows it reads (`_BLOCK`, `RANGE`), as (offset, length) in rows."""
    blocks = blocks.select(_BLOCK, RANGE)
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
        people: pl.Series,
    ) -> None:
        self.path = path
        self.rows = first.file_rows
        self._scan = scan
        self._check = check
        self._person_id = _as_text(scan, "person_id")
        planned = first.placement is not None and len(ranges) > 1
        placement = with_id_range(first.placement, ranges) if planned else None
        strays = stray_homes(placement, people) if planned else _NO_STRAYS
        self._spans = _spans(rehomed(placement, strays), ranges) if planned else {}
        moved = strays.filter(pl.col(RANGE) != range_index(ranges, strays.get_column("person_id")))
        self._moved = {
            r: (
                moved.filter(pl.col(RANGE) == i).get_column("person_id"),
                moved.filter(r.holds(pl.col("person_id"))).get_column("person_id"),
            )
            for i, r in enumerate(ranges)
        }
        """Per range, the stray ids it reads though they sort into another, and those it leaves to another."""
        repeated = rehomed(with_id_range(first.repeated, ranges), strays)
        across_ranges = pl.col(RANGE).n_unique().over(_HASH) > 1
        self._spanning = repeated.filter(across_ranges).get_column(ROW)
        self._within = {
            r: repeated.filter(~across_ranges & (pl.col(RANGE) == i)).get_column(ROW) for i, r in enumerate(ranges)
        }
        spanning = scan.filter(pl.col(ROW).is_in(self._spanning.implode())) if self._spanning.len() else scan.head(0)
        self.repeated: Quarantined = check(collect_file(path, spanning), None, None)
        """The rows of every key repeated across ranges, checked together: counted once, not per range."""

    def share(self, people: PersonRange, own_people: pl.DataFrame, own_participants: pl.DataFrame) -> EventsShare:
        """The events of `people` (whose rows are `own_people`, `own_participants`), but for rows of
        keys repeated across ranges (settled in `repeated`, accepted ones added)."""
        wanted = people.holds(self._person_id)
        arriving, leaving = self._moved[people]
        if leaving.len():
            wanted = wanted & ~self._person_id.is_in(leaving.implode()).fill_null(False)
        if arriving.len():
            wanted = wanted | self._person_id.is_in(arriving.implode()).fill_null(False)
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
