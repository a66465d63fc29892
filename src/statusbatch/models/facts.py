"""What exists at an instant T (SPEC §7.4), and the total order of facts (§7.1)."""

from __future__ import annotations

from datetime import datetime

import polars as pl

__all__ = ["people_created_by", "people_as_of", "participants_as_of", "events_as_of", "of_people_as_of", "tie"]


def tie(event_id: pl.Expr) -> pl.Expr:
    """Tie-breaker at one instant: the larger event id is later, an export row is earliest."""
    return event_id.fill_null("")


def people_created_by(people: pl.LazyFrame, as_of: datetime) -> pl.LazyFrame:
    """People created by T, their export rows as they are (what do-not-contact rules read, §2)."""
    return people.filter(pl.col("created_at") <= as_of)


def people_as_of(people: pl.LazyFrame, as_of: datetime) -> pl.LazyFrame:
    """People created by T, with an export `last_seen_on` dated after T's day taken as unknown: facts
    dated after T are ignored, so a backfill does not see a later visit (nor a negative dormancy)."""
    seen = pl.col("last_seen_on")
    return people_created_by(people, as_of).with_columns(pl.when(seen <= as_of.date()).then(seen).alias("last_seen_on"))


def participants_as_of(participants: pl.LazyFrame, people: pl.LazyFrame, as_of: datetime) -> pl.LazyFrame:
    """Participants added by T, of people who exist at T."""
    return participants.filter(pl.col("added_at") <= as_of).join(
        people.select("person_id"), on="person_id", how="semi"
    )


def of_people_as_of(rows: pl.LazyFrame, all_people: pl.LazyFrame, as_of: datetime) -> pl.LazyFrame:
    """The rows (with a `person_id`) of people who exist at T.

    Every accepted row names an accepted person, so only the (few) people
    created after T need to be taken out: a lookup in their ids costs a
    fraction of an anti-join over the whole log.
    """
    not_yet_created = all_people.filter(pl.col("created_at") > as_of).select("person_id").collect().to_series()
    return rows.filter(~pl.col("person_id").is_in(not_yet_created.implode()))


def events_as_of(events: pl.LazyFrame, all_people: pl.LazyFrame, as_of: datetime) -> pl.LazyFrame:
    """Events that happened by T, of people who exist at T."""
    return of_people_as_of(events.filter(pl.col("occurred_at") <= as_of), all_people, as_of)
