"""A plain-Python reference for one person's §3.1/§3.2 contact status, written from SPEC.md.

Deliberately naive: loops over small lists, one rule per paragraph of the SPEC,
no shared code with the vectorised engine. Used by test_contact_property.py.

Inputs are plain dicts with aware UTC datetimes:

    person       {"person_id", "created_at", "age"}
    studies      {study_id: {"opened_at", "closed_at"}}
    participants [{"study_id", "added_at", "participant_status", "status_updated_at"}]   (this person's)
    events       [{"event_id", "occurred_at", "event_type", "study_id", "value"}]        (this person's)
    config       Config below

Readings of the SPEC where it leaves room (documented choices of the project):
- an observation that repeats the participant's previous status (an export row
  echoing the event that set it) is the same occurrence: completions and
  no-shows are counted at the observations that move a participant into them;
- a rolling limit counts every trigger in its window, also those before the latest
  `cooldown_cleared`; only the limit cooldowns that start after the clear count.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import date, datetime, time, timedelta, timezone

UTC = timezone.utc

STAGE = {
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
COMPLETIONS = ("interview_completed", "test_completed", "survey_completed")


@dataclass(frozen=True)
class Limit:
    trigger: str  # "invite" | "completion"
    count: int
    window_days: int


@dataclass(frozen=True)
class Config:
    after_invite_days: int = 30
    after_completion_days: int = 90
    limits: tuple[Limit, ...] = ()
    no_show_threshold: int = 2
    minors_rule: bool = False  # one do_not_contact rule: `age < 18`


def key(at: datetime, event_id: str | None) -> tuple:
    """§7.1: by time, then event id (larger is later); an export row is the earliest at its instant."""
    return (at, event_id or "")


def study_is_open(study: dict, t: datetime) -> bool:
    opened = study["opened_at"] is None or study["opened_at"] <= t
    not_closed = study["closed_at"] is None or study["closed_at"] > t
    return opened and not_closed


def observations(participant: dict, events: list[dict], t: datetime) -> list[tuple[tuple, str]]:
    """Every observation of one participant at or before T, in fact order: [(key, status)]."""
    found = []
    export_at = participant["status_updated_at"] or participant["added_at"]
    if export_at <= t:
        found.append((key(export_at, None), participant["participant_status"]))
    for e in events:
        if e["event_type"] == "participant_status" and e["study_id"] == participant["study_id"] and e["occurred_at"] <= t:
            found.append((key(e["occurred_at"], e["event_id"]), e["value"]))
    found.sort(key=lambda o: o[0])
    return found


def entries_into(observed: list[tuple[tuple, str]], statuses: tuple[str, ...]) -> list[tuple]:
    """Keys of the observations that move the participant into one of `statuses`."""
    keys = []
    previous = None
    for k, status in observed:
        if status in statuses and status != previous:
            keys.append(k)
        previous = status
    return keys


def contact_row(person: dict, studies: dict, participants: list[dict], events: list[dict], config: Config, t: datetime):
    """The person's contact_status row at T, or None when the person does not exist yet."""
    if person["created_at"] > t:
        return None
    events = [e for e in events if e["occurred_at"] <= t]
    participants = [p for p in participants if p["added_at"] <= t]

    # §3.1 participant status at T, per study
    observed = {p["study_id"]: observations(p, events, t) for p in participants}
    status_at_t = {s: (obs[-1][1] if obs else "not_contacted") for s, obs in observed.items()}

    def event_keys(*types: str) -> list[tuple]:
        return sorted(key(e["occurred_at"], e["event_id"]) for e in events if e["event_type"] in types)

    def latest_of(a: str, b: str) -> str | None:
        both = sorted(
            (key(e["occurred_at"], e["event_id"]), e["event_type"]) for e in events if e["event_type"] in (a, b)
        )
        return both[-1][1] if both else None

    # opted_out: latest of opted_out / opt_out_revoked, or a hard bounce observed after the latest revoke
    revokes = event_keys("opt_out_revoked")
    last_revoke = revokes[-1] if revokes else None
    hard_bounces = [k for obs in observed.values() for k, status in obs if status == "hard_bounced"]
    opted_out = latest_of("opted_out", "opt_out_revoked") == "opted_out" or any(
        last_revoke is None or k > last_revoke for k in hard_bounces
    )

    # in_blocklist: latest manual action is an add, or the no-show rule fired after the latest removal
    removals = event_keys("blocklist_removed")
    last_removal = removals[-1] if removals else None
    no_shows = [k for obs in observed.values() for k in entries_into(obs, ("no_showed",))]
    since_removal = [k for k in no_shows if last_removal is None or k > last_removal]
    rule_fired = config.no_show_threshold > 0 and len(since_removal) >= config.no_show_threshold
    in_blocklist = latest_of("blocklist_added", "blocklist_removed") == "blocklist_added" or rule_fired

    # active_in_study: open study, status neither not_started nor terminal
    active_study_ids = sorted(
        s
        for s, status in status_at_t.items()
        if study_is_open(studies[s], t) and STAGE[status] not in ("not_started", "done", "cancelled")
    )
    active_in_study = bool(active_study_ids)

    # do_not_contact: a rule matches, or the latest manual action is a set
    rule_matches = config.minors_rule and person.get("age") is not None and person["age"] < 18
    do_not_contact = rule_matches or latest_of("do_not_contact_set", "do_not_contact_cleared") == "do_not_contact_set"

    # in_cooldown: latest end among the cooldowns started after the latest cooldown_cleared
    clears = event_keys("cooldown_cleared")
    last_clear = clears[-1] if clears else None
    invites = event_keys("invited")
    completions = sorted(k for obs in observed.values() for k in entries_into(obs, COMPLETIONS))
    starts: list[tuple[tuple, datetime]] = []  # (start key, end)
    if config.after_invite_days > 0:
        starts += [(k, k[0] + timedelta(days=config.after_invite_days)) for k in invites]
    if config.after_completion_days > 0:
        starts += [(k, k[0] + timedelta(days=config.after_completion_days)) for k in completions]
    for e in events:
        if e["event_type"] == "cooldown_set":
            day = date.fromisoformat(e["value"]) + timedelta(days=1)
            starts.append((key(e["occurred_at"], e["event_id"]), datetime.combine(day, time(0), tzinfo=UTC)))
    for limit in config.limits:
        triggers = invites if limit.trigger == "invite" else completions
        window = timedelta(days=limit.window_days)
        for i, k in enumerate(triggers):
            in_window = [other for other in triggers[: i + 1] if other[0] > k[0] - window]
            if len(in_window) >= limit.count:
                # in force while at least `count` are in the window: until the count-th most recent leaves
                nth_most_recent = in_window[len(in_window) - limit.count]
                starts.append((k, nth_most_recent[0] + window))
    kept = [end for k, end in starts if last_clear is None or k > last_clear]
    latest_end = max(kept) if kept else None
    in_cooldown = latest_end is not None and latest_end > t
    cooldown_until = latest_end if in_cooldown else None

    components = [
        ("opted_out", opted_out),
        ("in_blocklist", in_blocklist),
        ("active_in_study", active_in_study),
        ("do_not_contact", do_not_contact),
        ("in_cooldown", in_cooldown),
    ]
    contact_status = next((name for name, holds in components if holds), "free_to_contact")
    stored_status = next(
        (name for name, holds in components if holds and name != "active_in_study"), "free_to_contact"
    )
    overridable = {
        "active_in_study": True,
        "in_cooldown": True,
        "do_not_contact": True,
        "opted_out": False,
        "in_blocklist": False,
        "free_to_contact": None,
    }[contact_status]
    return {
        "person_id": person["person_id"],
        "contact_status": contact_status,
        "stored_status": stored_status,
        "active_study_ids": active_study_ids,
        "overridable": overridable,
        "can_contact": contact_status == "free_to_contact",
        "cooldown_until": cooldown_until,
    }
