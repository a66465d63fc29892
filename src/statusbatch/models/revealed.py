"""Observations dated before their participant was added: seen only once it is (SPEC §3.1, §7.4).

A run as of t knows a participant only from its `added_at` on, so an
observation dated earlier (a `participant_status` event, or an export
`status_updated_at`, before `added_at`) counts for a run as of t only when
t >= added_at, and from then on at its own date. The history and the
governance audit read each person's facts in one pass by time, which would
let such an observation count from its own date. For the few people who have
one, both are computed again per *visibility window*: between two successive
`added_at` of such participants the set of visible facts is fixed, so the
usual computation over that set, clipped to the window, is exact. Windows are
numbered 0, 1, ... per person; the loop runs over the window number (at most
one more than a person's backdated participants), each step a frame
operation over every such person at once.
"""

from __future__ import annotations

from collections.abc import Callable

import polars as pl

from statusbatch.engine import ENGINE
from statusbatch.models.scans import first_in_run, last_in_run

__all__ = ["backdated_participants", "visibility_windows", "window_facts", "clipped_history", "stitched_history", "revealed"]

_PARTICIPANT = ["study_id", "person_id"]


def backdated_participants(observations: pl.LazyFrame) -> pl.DataFrame:
    """study_id, person_id, added_at: participants with an observation dated before `added_at`."""
    return (
        observations.filter(pl.col("at") < pl.col("added_at"))
        .select(*_PARTICIPANT, "added_at")
        .unique()
        .collect(engine=ENGINE)
    )


def visibility_windows(backdated: pl.DataFrame) -> pl.DataFrame:
    """person_id, window, from_at, to_at: each person's windows [from_at, to_at), cut at every
    `added_at` of a backdated participant; window 0 has no start, the last one no end."""
    reveals = backdated.select("person_id", pl.col("added_at").alias("from_at")).unique()
    unbounded = reveals.select("person_id").unique().with_columns(pl.lit(None, reveals.schema["from_at"]).alias("from_at"))
    starts = pl.concat([unbounded, reveals]).sort("person_id", "from_at", nulls_last=False)
    return starts.with_columns(
        pl.int_range(pl.len(), dtype=pl.UInt32).over("person_id").alias("window"),
        pl.when(~last_in_run("person_id")).then(pl.col("from_at").shift(-1)).alias("to_at"),
    ).select("person_id", "window", "from_at", "to_at")


def window_facts(
    window: pl.DataFrame, backdated: pl.DataFrame, people: pl.LazyFrame, events: pl.LazyFrame, observations: pl.LazyFrame
) -> tuple[pl.LazyFrame, pl.LazyFrame, pl.LazyFrame]:
    """The people, events and observations visible in one window of each person in `window`
    (person_id, from_at): every fact of theirs but the observations of backdated participants
    added after the window starts (all of them in window 0)."""
    persons = window.lazy().select("person_id", "from_at")
    hidden = (
        backdated.lazy()
        .join(persons, on="person_id")
        .filter(pl.col("from_at").is_null() | (pl.col("added_at") > pl.col("from_at")))
        .select(_PARTICIPANT)
    )
    mine = persons.select("person_id")
    # in the order given: the models read observations in fact order per participant
    return (
        people.join(mine, on="person_id", how="semi", maintain_order="left"),
        events.join(mine, on="person_id", how="semi", maintain_order="left"),
        observations.join(mine, on="person_id", how="semi", maintain_order="left").join(
            hidden, on=_PARTICIPANT, how="anti", maintain_order="left"
        ),
    )


def clipped_history(history: pl.LazyFrame, window: pl.DataFrame) -> pl.LazyFrame:
    """person_id, contact_status, valid_from: the intervals of a window's history that overlap the
    window, starting no earlier than it (`stitched_history` ends each where the next starts)."""
    start, end = pl.col("from_at"), pl.col("to_at")
    valid_from, valid_to = pl.col("valid_from"), pl.col("valid_to")
    return (
        history.join(window.lazy().select("person_id", "from_at", "to_at"), on="person_id")
        .filter((start.is_null() | valid_to.is_null() | (valid_to > start)) & (end.is_null() | (valid_from < end)))
        .select("person_id", "contact_status", pl.max_horizontal(valid_from, start).alias("valid_from"))
    )


def stitched_history(pieces: pl.LazyFrame) -> pl.LazyFrame:
    """The clipped windows of each person as one history, equal neighbours merged. The windows
    leave no gap (each one's facts start before it), and the last one's interval is current."""
    changed = first_in_run("person_id") | (pl.col("contact_status") != pl.col("contact_status").shift(1))
    return (
        pieces.sort("person_id", "valid_from")
        .filter(changed)
        .select(
            "person_id",
            "contact_status",
            "valid_from",
            pl.when(~last_in_run("person_id")).then(pl.col("valid_from").shift(-1)).alias("valid_to"),
        )
    )


def revealed(
    people: pl.LazyFrame,
    events: pl.LazyFrame,
    observations: pl.LazyFrame,
    history: pl.LazyFrame,
    violations: pl.LazyFrame,
    compute: Callable[[pl.LazyFrame, pl.LazyFrame, pl.LazyFrame], tuple[pl.LazyFrame, pl.LazyFrame]],
) -> tuple[pl.LazyFrame, pl.LazyFrame]:
    """`history` and `violations` (computed over every fact at its own date) with the people who have
    backdated observations computed again window by window; `compute(people, events, observations)`
    gives both tables for a set of facts. Without such people (the usual case) they are returned as given."""
    backdated = backdated_participants(observations)
    if backdated.is_empty():
        return history, violations
    windows = visibility_windows(backdated)
    pieces, audited = [], []
    for number in range(int(windows.get_column("window").max()) + 1):
        window = windows.filter(pl.col("window") == number)
        window_history, window_violations = compute(*window_facts(window, backdated, people, events, observations))
        pieces.append(clipped_history(window_history, window))
        # an invite in (from_at, to_at] reads the status just before it, inside the window
        bounds = window.lazy().select("person_id", "from_at", "to_at")
        audited.append(
            window_violations.join(bounds, on="person_id")
            .filter(
                (pl.col("from_at").is_null() | (pl.col("occurred_at") > pl.col("from_at")))
                & (pl.col("to_at").is_null() | (pl.col("occurred_at") <= pl.col("to_at")))
            )
            .drop("from_at", "to_at")
        )
    affected = windows.select("person_id").unique().lazy()
    return (
        pl.concat([history.join(affected, on="person_id", how="anti"), stitched_history(pl.concat(pieces))]),
        pl.concat([violations.join(affected, on="person_id", how="anti"), *audited]).sort("occurred_at", "event_id"),
    )
