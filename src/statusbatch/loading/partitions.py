"""Ranges of people: a large workspace is read and computed one range of people at a time.

Every status is a function of one person's facts (a study's progress adds up
per-person tallies), so the people can be cut into ranges of their ids and each
range run on its own. Ranges of ids, not hashes, so that the reader can skip
the Parquet row groups of other people when a file is ordered by person.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import polars as pl

__all__ = ["RANGE", "PersonRange", "person_ranges", "range_count", "range_index"]

RANGE = "__range"


@dataclass(frozen=True)
class PersonRange:
    """The person ids in [low, high); an open end is unbounded, and the first range also holds null ids."""

    low: str | None
    high: str | None

    def holds(self, person_id: pl.Expr) -> pl.Expr:
        inside = pl.lit(True)
        if self.low is not None:
            inside = inside & (person_id >= self.low)
        if self.high is not None:
            inside = inside & (person_id < self.high)
        if self.low is None and self.high is not None:
            inside = inside | person_id.is_null()
        return inside


def range_count(events: int, events_per_range: int) -> int:
    """How many ranges keep each near `events_per_range` events (1 when unbounded)."""
    if events_per_range <= 0:
        return 1
    return max(1, math.ceil(events / events_per_range))


def person_ranges(person_ids: pl.Series, count: int) -> tuple[PersonRange, ...]:
    """`count` ranges' worth of people, together holding every possible id once: `count` + 1 ranges,
    the first and the last with half as many people as the others.

    The first range is read while nothing else can run yet, and the last one's
    validation and inserts come after the last compute: halving those two
    shortens the run's start and its tail (a pipeline's fill and drain).
    """
    everyone = (PersonRange(None, None),)
    if count <= 1:
        return everyone
    ids = person_ids.drop_nulls()
    if not ids.flags["SORTED_ASC"]:
        ids = ids.sort()
    ids = ids.filter(ids.ne_missing(ids.shift(1)))
    count = min(count, ids.len() // 2)
    if count <= 1:
        return everyone
    cuts = [(2 * i - 1) * ids.len() // (2 * count) for i in range(1, count + 1)]
    bounds: list[str | None] = [ids[cut] for cut in cuts]
    edges = [None, *bounds, None]
    return tuple(PersonRange(low, high) for low, high in zip(edges, edges[1:], strict=False))


def range_index(ranges: tuple[PersonRange, ...], person_ids: pl.Series) -> pl.Series:
    """`RANGE`: the position in `ranges` (consecutive, as `person_ranges` cuts them) of the range
    that holds each id; a null id is the first range's, as `PersonRange.holds` says."""
    bounds = pl.Series([r.low for r in ranges[1:]], dtype=pl.String)
    index = bounds.search_sorted(person_ids, side="right").cast(pl.UInt32)
    return index.zip_with(person_ids.is_not_null(), pl.Series([0], dtype=pl.UInt32)).alias(RANGE)
