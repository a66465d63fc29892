"""The input contract (SPEC §1): every input table, its columns, types and keys.

A loaded table is a Polars frame with exactly these columns and dtypes (people
also keep their extra property columns, typed by inference, SPEC §7.7).
"""

from __future__ import annotations

from dataclasses import dataclass

import polars as pl

from statusbatch import codes

__all__ = ["TIMESTAMP", "Column", "InputTable", "INPUT_TABLES", "input_table"]

TIMESTAMP = pl.Datetime("us", "UTC")
"""Every instant inside statusbatch: microseconds, UTC."""


@dataclass(frozen=True)
class Column:
    name: str
    dtype: pl.DataType
    required: bool = False
    """The column must be present in the file (SPEC §7.5)."""
    not_null: bool = False
    """Every row must have a value (a null makes the row bad)."""


@dataclass(frozen=True)
class InputTable:
    name: str
    columns: tuple[Column, ...]
    key: tuple[str, ...]
    optional_file: bool = False
    keeps_extra_columns: bool = False

    @property
    def schema(self) -> dict[str, pl.DataType]:
        return {c.name: c.dtype for c in self.columns}

    @property
    def required_columns(self) -> tuple[str, ...]:
        return tuple(c.name for c in self.columns if c.required)


def _c(name: str, dtype: pl.DataType, required: bool = False, not_null: bool | None = None) -> Column:
    return Column(name, dtype, required, required if not_null is None else not_null)


PEOPLE = InputTable(
    "people",
    (
        _c("person_id", pl.String, required=True),
        _c("email", pl.String),
        _c("phone", pl.String),
        _c("created_at", TIMESTAMP, required=True),
        _c("last_seen_on", pl.Date),
    ),
    key=("person_id",),
    keeps_extra_columns=True,
)
STUDIES = InputTable(
    "studies",
    (
        _c("study_id", pl.String, required=True),
        _c("name", pl.String),
        _c("kind", codes.StudyKind),
        _c("opened_at", TIMESTAMP),
        _c("closed_at", TIMESTAMP),
        _c("participation_limit", pl.Int64),
    ),
    key=("study_id",),
)
PARTICIPANTS = InputTable(
    "participants",
    (
        _c("study_id", pl.String, required=True),
        _c("person_id", pl.String, required=True),
        _c("added_at", TIMESTAMP, required=True),
        _c("participant_status", codes.ParticipantStatus, required=True),
        _c("status_updated_at", TIMESTAMP),
    ),
    key=("study_id", "person_id"),
)
SEQUENCES = InputTable(
    "sequences",
    (
        _c("sequence_id", pl.String, required=True),
        _c("owner_id", pl.String),
        _c("team_edition", pl.Boolean),
        _c("reply_handling", codes.ReplyHandling),
    ),
    key=("sequence_id",),
    optional_file=True,
)
EVENTS = InputTable(
    "events",
    (
        _c("event_id", pl.String, required=True),
        _c("person_id", pl.String, required=True),
        _c("occurred_at", TIMESTAMP, required=True),
        _c("event_type", codes.EventType, required=True),
        _c("study_id", pl.String),
        _c("sequence_id", pl.String),
        _c("channel", codes.Channel),
        _c("actor_id", pl.String),
        _c("value", pl.String),
        _c("reason", pl.String),
    ),
    key=("event_id",),
)

INPUT_TABLES: tuple[InputTable, ...] = (PEOPLE, STUDIES, PARTICIPANTS, SEQUENCES, EVENTS)
"""In reference order: a table's references point only to tables before it."""


def input_table(name: str) -> InputTable:
    return next(t for t in INPUT_TABLES if t.name == name)
