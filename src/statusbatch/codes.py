"""Every code of the input contract and the output tables, as Polars Enums.

Names follow SPEC §1.1, §3 and §4 so that a reader finds a rule by its name.
"""

from __future__ import annotations

from dataclasses import dataclass

import polars as pl

__all__ = [
    "EVENT_LOGS",
    "EventLog",
    "PARTICIPANT_STAGE",
    "PARTICIPANT_STATUSES",
    "STAGES",
    "TERMINAL_STAGES",
    "EVENT_TYPES",
    "STUDY_SCOPED_EVENTS",
    "SEQUENCE_SCOPED_EVENTS",
    "CHANNELS",
    "STUDY_KINDS",
    "REPLY_HANDLING",
    "CONTACT_STATUSES",
    "COOLDOWN_SOURCES",
    "SEQUENCE_STATUSES",
    "SEQUENCE_FLAGS",
    "CHANNEL_STATUSES",
    "ParticipantStatus",
    "Stage",
    "EventType",
    "Channel",
    "StudyKind",
    "ReplyHandling",
    "ContactStatus",
    "CooldownSource",
    "SequenceStatus",
    "ChannelStatus",
]

PARTICIPANT_STAGE: dict[str, str] = {
    "not_contacted": "not_started",
    "not_eligible": "not_started",
    "study_invited": "invited",
    "soft_bounced": "invited",
    "screener_started": "screening",
    "screener_qualified": "screening",
    "screener_completed": "screening",
    "interview_invited": "in_progress",
    "interview_scheduled": "in_progress",
    "test_invited": "in_progress",
    "test_started": "in_progress",
    "survey_started": "in_progress",
    "incentive_not_sent": "pending_incentive",
    "incentive_sent": "pending_incentive",
    "interview_completed": "done",
    "test_completed": "done",
    "survey_completed": "done",
    "incentive_claimed": "done",
    "screener_not_qualified": "done",
    "canceled": "cancelled",
    "opted_out": "cancelled",
    "hard_bounced": "cancelled",
    "interview_canceled": "cancelled",
    "no_showed": "cancelled",
}
PARTICIPANT_STATUSES: tuple[str, ...] = tuple(PARTICIPANT_STAGE)
STAGES: tuple[str, ...] = (
    "not_started",
    "invited",
    "screening",
    "in_progress",
    "pending_incentive",
    "done",
    "cancelled",
)
TERMINAL_STAGES: tuple[str, ...] = ("done", "cancelled")
COMPLETION_STATUSES: tuple[str, ...] = ("interview_completed", "test_completed", "survey_completed")

STUDY_SCOPED_EVENTS: tuple[str, ...] = ("invited", "participant_status")
PERSON_SCOPED_RESEARCH_EVENTS: tuple[str, ...] = (
    "opted_out",
    "opt_out_revoked",
    "unsubscribed",
    "blocklist_added",
    "blocklist_removed",
    "cooldown_set",
    "cooldown_cleared",
    "do_not_contact_set",
    "do_not_contact_cleared",
)
SEQUENCE_SCOPED_EVENTS: tuple[str, ...] = (
    "sequence_added",
    "sequence_removed",
    "email_sent",
    "sequence_completed",
    "email_opened",
    "link_clicked",
    "replied",
    "auto_replied",
    "out_of_office",
    "bounced",
    "missing_data",
    "call_step_reached",
    "call_logged",
    "status_set",
    "status_removed",
)
MESSAGING_EVENTS: tuple[str, ...] = (
    "stopped",
    "inbound_message",
    "blocked",
    "unblocked",
    "archived",
    "restored",
    "deleted",
)
RESEARCH_EVENTS: tuple[str, ...] = STUDY_SCOPED_EVENTS + PERSON_SCOPED_RESEARCH_EVENTS
"""What the research-ops models (§3.1, §3.2) read."""
EVENT_TYPES: tuple[str, ...] = (
    STUDY_SCOPED_EVENTS + PERSON_SCOPED_RESEARCH_EVENTS + SEQUENCE_SCOPED_EVENTS + MESSAGING_EVENTS
)


@dataclass(frozen=True)
class EventLog:
    """The events one family of models reads: its types, and the columns it needs of them."""

    event_types: tuple[str, ...]
    columns: tuple[str, ...]


_FACT = ("event_id", "person_id", "occurred_at", "event_type")
EVENT_LOGS: dict[str, EventLog] = {
    "research": EventLog(RESEARCH_EVENTS, _FACT + ("study_id", "value", "reason")),
    "sequence": EventLog(
        SEQUENCE_SCOPED_EVENTS + ("opted_out",), _FACT + ("sequence_id", "channel", "actor_id", "value")
    ),
    "messaging": EventLog(MESSAGING_EVENTS, _FACT + ("value",)),
}
"""How the loader cuts the accepted events: each log is built once, straight from
the file, so the whole log is never copied and unread columns are never kept.
A person-level opt-out reaches every sequence (§3.3), hence in two logs."""
CHANNELS: tuple[str, ...] = ("email", "sms", "call", "web")
STUDY_KINDS: tuple[str, ...] = ("interview", "survey", "unmoderated_test")
REPLY_HANDLING: tuple[str, ...] = ("finish", "continue")

CONTACT_STATUSES: tuple[str, ...] = (
    "opted_out",
    "in_blocklist",
    "active_in_study",
    "do_not_contact",
    "in_cooldown",
    "free_to_contact",
)
"""In precedence order: the first component that holds wins (SPEC §3.2)."""

COOLDOWN_SOURCES: tuple[str, ...] = ("invite", "completion", "manual", "limit")
SEQUENCE_STATUSES: tuple[str, ...] = (
    "active",
    "paused",
    "missing_data",
    "bounced",
    "out_of_office",
    "finished",
    "opted_out",
)
SEQUENCE_FLAGS: tuple[str, ...] = (
    "contacted",
    "opened",
    "clicked",
    "replied",
    "auto_replied",
    "to_call",
    "called",
)
"""Per-membership flags of §3.3; the system sets them, only some may be set or removed by hand."""
CHANNEL_STATUSES: tuple[str, ...] = ("active", "stopped", "blocked", "archived", "deleted")

ParticipantStatus = pl.Enum(PARTICIPANT_STATUSES)
Stage = pl.Enum(STAGES)
EventType = pl.Enum(EVENT_TYPES)
Channel = pl.Enum(CHANNELS)
StudyKind = pl.Enum(STUDY_KINDS)
ReplyHandling = pl.Enum(REPLY_HANDLING)
ContactStatus = pl.Enum(CONTACT_STATUSES)
CooldownSource = pl.Enum(COOLDOWN_SOURCES)
SequenceStatus = pl.Enum(SEQUENCE_STATUSES)
ChannelStatus = pl.Enum(CHANNEL_STATUSES)
