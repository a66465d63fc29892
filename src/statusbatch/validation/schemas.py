"""What every output table is (SPEC §4): columns, codes, keys, ranges.

Tables are validated in their published form: codes as text, instants as
naive UTC timestamps (DuckDB TIMESTAMP), dates as DATE.
"""

from __future__ import annotations

import pandera.polars as pa
import polars as pl

from statusbatch import codes
from statusbatch.loading.quarantine import REJECTED_ROWS_SCHEMA

__all__ = ["OUTPUT_SCHEMAS", "SLICED_TABLES", "INSTANT"]

INSTANT = pl.Datetime("us")


def _code(values: tuple[str, ...], nullable: bool = False) -> pa.Column:
    return pa.Column(pl.String, pa.Check.isin(list(values)), nullable=nullable)


def _id(nullable: bool = False) -> pa.Column:
    return pa.Column(pl.String, pa.Check.str_length(min_value=1), nullable=nullable)


def _count() -> pa.Column:
    return pa.Column(pl.Int64, pa.Check.ge(0))


_AS_OF = pa.Column(pl.Date)
_FLAG = pa.Column(pl.Boolean)


def _schema(name: str, key: list[str], columns: dict[str, pa.Column], checks: list[pa.Check] = ()) -> pa.DataFrameSchema:
    return pa.DataFrameSchema(columns, unique=key, name=name, strict=False, checks=list(checks))


def _implies(condition: str, consequence: str) -> pa.Check:
    return pa.Check(
        lambda data: data.lazyframe.select(~pl.col(condition) | pl.col(consequence)),
        name=f"{condition} implies {consequence}",
    )


_OVERRIDABLE = pa.Check(
    lambda data: data.lazyframe.select(
        pl.when(pl.col("contact_status").is_in(["active_in_study", "in_cooldown", "do_not_contact"]))
        .then(pl.col("overridable").fill_null(False))
        .when(pl.col("contact_status").is_in(["opted_out", "in_blocklist"]))
        .then(pl.col("overridable").is_not_null() & ~pl.col("overridable").fill_null(True))
        .otherwise(pl.col("overridable").is_null())
    ),
    name="overridable follows contact_status",
)
_CAN_CONTACT = pa.Check(
    lambda data: data.lazyframe.select(pl.col("can_contact") == (pl.col("contact_status") == "free_to_contact")),
    name="can_contact iff free_to_contact",
)

OUTPUT_SCHEMAS: dict[str, pa.DataFrameSchema] = {
    "contact_status": _schema(
        "contact_status",
        ["person_id"],
        {
            "as_of": _AS_OF,
            "person_id": _id(),
            "contact_status": _code(codes.CONTACT_STATUSES),
            "stored_status": _code(tuple(s for s in codes.CONTACT_STATUSES if s != "active_in_study")),
            "active_study_ids": pa.Column(pl.List(pl.String)),
            "overridable": pa.Column(pl.Boolean, nullable=True),
            "can_contact": _FLAG,
            "cooldown_until": pa.Column(INSTANT, nullable=True),
            "reason": pa.Column(pl.String, pa.Check.str_length(min_value=1)),
        },
        [_OVERRIDABLE, _CAN_CONTACT],
    ),
    "participant_status": _schema(
        "participant_status",
        ["study_id", "person_id"],
        {
            "as_of": _AS_OF,
            "study_id": _id(),
            "person_id": _id(),
            "participant_status": _code(codes.PARTICIPANT_STATUSES),
            "stage": _code(codes.STAGES),
            "is_terminal": _FLAG,
            "observed_at": pa.Column(INSTANT, nullable=True),
        },
    ),
    "study_progress": _schema(
        "study_progress",
        ["study_id"],
        {
            "as_of": _AS_OF,
            "study_id": _id(),
            "is_open": _FLAG,
            "participants": _count(),
            **{f"stage_{s}": _count() for s in codes.STAGES},
            "interviews_booked": _count(),
            "interviews_completed": _count(),
            "limit_reached": _FLAG,
        },
    ),
    "cooldowns": _schema(
        "cooldowns",
        ["person_id"],
        {
            "as_of": _AS_OF,
            "person_id": _id(),
            "cooldown_until": pa.Column(INSTANT),
            "source": _code(codes.COOLDOWN_SOURCES),
            "source_event_id": _id(nullable=True),
            "state": _code(("active", "expired")),
            "days_left": pa.Column(pl.Int64),
            "expired_within_last_day": _FLAG,
        },
    ),
    "sequence_status": _schema(
        "sequence_status",
        ["sequence_id", "person_id"],
        {
            "as_of": _AS_OF,
            "sequence_id": _id(),
            "person_id": _id(),
            "status": _code(codes.SEQUENCE_STATUSES),
            **{flag: _FLAG for flag in codes.SEQUENCE_FLAGS},
            "replied_by": _code(("email", "sms"), nullable=True),
            "can_receive_emails": _FLAG,
            "replies_tracked": _FLAG,
        },
    ),
    "channel_status": _schema(
        "channel_status",
        ["person_id"],
        {
            "as_of": _AS_OF,
            "person_id": _id(),
            "status": _code(codes.CHANNEL_STATUSES),
            "can_receive": _FLAG,
            "in_groups": _FLAG,
            "runs_flows_on_inbound": _FLAG,
            "archived_inbound": _count(),
            "last_seen_on": pa.Column(pl.Date, nullable=True),
        },
    ),
    "archival_candidates": _schema(
        "archival_candidates",
        ["person_id"],
        {
            "as_of": _AS_OF,
            "person_id": _id(),
            "candidate": _code(("archive", "delete")),
            "last_seen_on": pa.Column(pl.Date, nullable=True),
            "days_dormant": pa.Column(pl.Int64, nullable=True),
        },
    ),
    "governance_violations": _schema(
        "governance_violations",
        ["event_id"],
        {
            "as_of": _AS_OF,
            "event_id": _id(),
            "person_id": _id(),
            "study_id": _id(),
            "occurred_at": pa.Column(INSTANT),
            "status_at_invite": _code(codes.CONTACT_STATUSES),
            "kind": _code(("not_overridable", "override_required", "overridden")),
        },
    ),
    "rejected_transitions": _schema(
        "rejected_transitions",
        ["event_id"],
        {
            "as_of": _AS_OF,
            "event_id": _id(),
            "model": _code(("sequence", "channel")),
            "person_id": _id(),
            "sequence_id": _id(nullable=True),
            "from_status": pa.Column(pl.String, nullable=True),
            "requested": pa.Column(pl.String),
            "reason": pa.Column(pl.String, pa.Check.str_length(min_value=1)),
        },
    ),
    "rejected_rows": _schema(
        "rejected_rows",
        ["source_table", "row_number"],
        {
            "as_of": _AS_OF,
            "source_table": _code(("people", "studies", "participants", "sequences", "events")),
            "row_number": pa.Column(pl.Int64, pa.Check.ge(1)),
            "column": pa.Column(pl.String),
            "problem": pa.Column(pl.String, pa.Check.str_length(min_value=1)),
            "raw": pa.Column(pl.String),
        },
    ),
    "status_changes": _schema(
        "status_changes",
        ["as_of", "person_id"],
        {
            "as_of": _AS_OF,
            "person_id": _id(),
            "previous_status": _code(codes.CONTACT_STATUSES, nullable=True),
            "contact_status": _code(codes.CONTACT_STATUSES),
        },
    ),
    "contact_status_history": _schema(
        "contact_status_history",
        ["person_id", "valid_from"],
        {
            "person_id": _id(),
            "contact_status": _code(codes.CONTACT_STATUSES),
            "valid_from": pa.Column(INSTANT),
            "valid_to": pa.Column(INSTANT, nullable=True),
        },
    ),
    "run_inputs": _schema(
        "run_inputs",
        ["run_id", "source_table"],
        {
            "run_id": _id(),
            "source_table": _code(("people", "studies", "participants", "sequences", "events")),
            "rows_read": _count(),
            "rows_accepted": _count(),
            "rows_rejected": _count(),
        },
        [
            pa.Check(
                lambda data: data.lazyframe.select(
                    pl.col("rows_read") == pl.col("rows_accepted") + pl.col("rows_rejected")
                ),
                name="rows read = accepted + rejected",
            )
        ],
    ),
}

SLICED_TABLES: tuple[str, ...] = (
    "contact_status",
    "participant_status",
    "study_progress",
    "cooldowns",
    "sequence_status",
    "channel_status",
    "archival_candidates",
    "governance_violations",
    "rejected_transitions",
    "rejected_rows",
)
"""One slice per published as_of, bounded by `[retention] keep_as_of`."""
assert set(REJECTED_ROWS_SCHEMA) <= set(OUTPUT_SCHEMAS["rejected_rows"].columns)
