"""Per-study participant status and stage, and study progress (SPEC §3.1, §7.11)."""

from __future__ import annotations

from datetime import datetime

import polars as pl

from statusbatch import codes
from statusbatch.models.facts import tie
from statusbatch.models.scans import last_in_run

__all__ = [
    "participant_observations",
    "participant_status",
    "status_transitions",
    "study_is_open",
    "study_progress",
    "study_tallies",
    "summed_tallies",
    "stage_of",
]


def stage_of(status: pl.Expr) -> pl.Expr:
    return status.cast(pl.String).replace_strict(codes.PARTICIPANT_STAGE, return_dtype=codes.Stage)


def study_is_open(as_of: datetime) -> pl.Expr:
    """Open at T: opened (or no opening date) and not yet closed."""
    opened = pl.col("opened_at").is_null() | (pl.col("opened_at") <= as_of)
    not_closed = pl.col("closed_at").is_null() | (pl.col("closed_at") > as_of)
    return opened & not_closed


def participant_observations(participants: pl.LazyFrame, events: pl.LazyFrame, as_of: datetime) -> pl.LazyFrame:
    """Every observation of a participant's status at or before T, in fact order, with the
    participant's `added_at` (an observation may be dated before it: see `revealed.py`).

    The export row counts as one observation at `status_updated_at` (or
    `added_at`); it has no event id, so an event at the same instant wins.
    """
    from_export = participants.select(
        "study_id",
        "person_id",
        pl.coalesce("status_updated_at", "added_at").alias("at"),
        pl.lit(None, dtype=pl.String).alias("event_id"),
        "participant_status",
        "added_at",
    )
    from_events = (
        events.filter(pl.col("event_type") == "participant_status")
        .join(participants.select("study_id", "person_id", "added_at"), on=["study_id", "person_id"])
        .select(
            "study_id",
            "person_id",
            pl.col("occurred_at").alias("at"),
            "event_id",
            pl.col("value").cast(codes.ParticipantStatus).alias("participant_status"),
            "added_at",
        )
    )
    return (
        pl.concat([from_export, from_events])
        .filter(pl.col("at") <= as_of)
        .with_columns(tie(pl.col("event_id")).alias("tie"))
        .sort("person_id", "study_id", "at", "tie")
    )


def participant_status(participants: pl.LazyFrame, observations: pl.LazyFrame) -> pl.LazyFrame:
    """The latest observation per participant; none at or before T means `not_contacted`.

    Observations come sorted by participant and fact order: the latest is the
    last row of each participant's run (no grouping needed).
    """
    latest = observations.filter(last_in_run("study_id", "person_id")).select(
        "study_id", "person_id", "participant_status", pl.col("at").alias("observed_at"), "event_id"
    )
    return (
        participants.select("study_id", "person_id")
        .join(latest, on=["study_id", "person_id"], how="left")
        .with_columns(pl.col("participant_status").fill_null("not_contacted"))
        .with_columns(stage_of(pl.col("participant_status")).alias("stage"))
        .with_columns(pl.col("stage").is_in(codes.TERMINAL_STAGES).alias("is_terminal"))
        .select(
            "study_id",
            "person_id",
            "participant_status",
            "stage",
            "is_terminal",
            "observed_at",
            pl.col("event_id").alias("observed_event_id"),
        )
    )


def status_transitions(observations: pl.LazyFrame, statuses: tuple[str, ...]) -> pl.LazyFrame:
    """Observations that move a participant into one of `statuses`.

    A status seen again (an export row repeating the event that set it) is the
    same occurrence, so no-shows and completions are counted once each.
    `observations` come sorted by participant and fact order, so the previous
    observation is the previous row when it belongs to the same participant.
    """
    same_participant = (pl.col("study_id") == pl.col("study_id").shift(1)) & (
        pl.col("person_id") == pl.col("person_id").shift(1)
    )
    previous = pl.when(same_participant).then(pl.col("participant_status").shift(1))
    return observations.filter(
        pl.col("participant_status").is_in(statuses)
        & (previous.is_null() | (previous != pl.col("participant_status")))
    )


def study_tallies(status: pl.LazyFrame, observations: pl.LazyFrame) -> pl.LazyFrame:
    """Per study, the counts behind its progress, over some participants: tallies of
    disjoint sets of people add up (`summed_tallies`) to the whole study's.

    Toward the limit count participants who completed (any kind) plus those
    currently scheduled, as §7.11 adds them: one who completed and is booked
    again counts twice.
    """
    stage_counts = [
        (pl.col("stage") == stage).sum().cast(pl.Int64).alias(f"stage_{stage}") for stage in codes.STAGES
    ]
    per_study = status.group_by("study_id").agg(
        pl.len().cast(pl.Int64).alias("participants"),
        *stage_counts,
        (pl.col("participant_status") == "interview_scheduled").sum().cast(pl.Int64).alias("interviews_booked"),
    )
    completed = (
        observations.filter(pl.col("participant_status").is_in(codes.COMPLETION_STATUSES))
        .select(
            "study_id",
            "person_id",
            (pl.col("participant_status") == "interview_completed").alias("interview"),
        )
        .group_by("study_id", "person_id")
        .agg(pl.col("interview").any())
        .group_by("study_id")
        .agg(
            pl.len().cast(pl.Int64).alias("completed"),
            pl.col("interview").sum().cast(pl.Int64).alias("interviews_completed"),
        )
    )
    return per_study.join(completed, on="study_id", how="full", coalesce=True).with_columns(
        pl.col(_TALLIES).fill_null(0)
    )


_TALLIES = [f"stage_{s}" for s in codes.STAGES] + ["participants", "interviews_booked", "completed", "interviews_completed"]


def summed_tallies(tallies: list[pl.LazyFrame]) -> pl.LazyFrame:
    """The tallies of the whole study from those of disjoint sets of people."""
    return pl.concat([t.select("study_id", *_TALLIES) for t in tallies]).group_by("study_id").agg(pl.col(_TALLIES).sum())


def study_progress(studies: pl.LazyFrame, tallies: pl.LazyFrame, as_of: datetime) -> pl.LazyFrame:
    """Per study: participants by stage, interviews booked and completed, participation limit."""
    return (
        studies.select("study_id", "kind", "participation_limit", study_is_open(as_of).alias("is_open"))
        .join(tallies, on="study_id", how="left")
        .with_columns(pl.col(_TALLIES).fill_null(0))
        .with_columns(
            (
                pl.col("participation_limit").is_not_null()
                & (pl.col("interviews_booked") + pl.col("completed") >= pl.col("participation_limit"))
            ).alias("limit_reached")
        )
        .select(
            "study_id",
            "kind",
            "is_open",
            "participants",
            *[f"stage_{s}" for s in codes.STAGES],
            "interviews_booked",
            "interviews_completed",
            "participation_limit",
            "limit_reached",
        )
        .sort("study_id")
    )
