"""Sequence status: SPEC §3.3, §7.12–16 and docs/state-machines.md."""

from __future__ import annotations

import time
from datetime import datetime, timedelta, timezone
from pathlib import Path

import polars as pl
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from conftest import Workspace, event, participant, person, study
from reference_machines import (
    KNOWN_VALUES,
    SEQUENCE_SCOPED,
    frame,
    opt_out_changes_frame,
    read_contract_csv,
    reference_sequences,
)
from statusbatch import codes
from statusbatch.loading.contract import TIMESTAMP, input_table
from statusbatch.models.channel import REJECTED_TRANSITIONS_SCHEMA
from statusbatch.models.sequences import sequence_machine, sequence_rejected_transitions, sequence_status

UTC = timezone.utc
T = datetime(2026, 3, 31, 23, 59, 59, 999999, tzinfo=UTC)
D0 = datetime(2026, 3, 1, tzinfo=UTC)
EXAMPLES = str(Path(__file__).parent / "examples" / "sequences") + "/"  # the copy kept with the tests
SEQ = dict(sequence_id="S", owner_id="owner", team_edition=False, reply_handling="finish")
TEAM = "only the sequence owner can change statuses (Team Edition)"


class Ev:
    """Builds events of one person in one sequence, one per hour, ids in order."""

    def __init__(self, person_id: str = "p", sequence_id: str = "S"):
        self.person_id, self.sequence_id, self.rows = person_id, sequence_id, []

    def __call__(self, event_type: str, value: str | None = None, *, actor: str | None = "owner",
                 channel: str | None = None, at: datetime | None = None, eid: str | None = None,
                 sequence_id: str | None = None):
        n = len(self.rows)
        self.rows.append(dict(
            event_id=eid or f"{self.person_id}-{self.sequence_id}-{n:04d}", person_id=self.person_id,
            occurred_at=at or D0 + timedelta(hours=n), event_type=event_type,
            sequence_id=None if event_type == "opted_out" else (sequence_id or self.sequence_id),
            channel=channel, actor_id=actor if event_type.startswith("status_") else None, value=value,
        ))
        return self.rows[-1]["event_id"]


def run(events, sequences=(SEQ,), changes=(), ooo=0, as_of=T):
    m = sequence_machine(
        frame("events", list(events)),
        frame("sequences", list(sequences)) if sequences else pl.LazyFrame(schema=input_table("sequences").schema),
        opt_out_changes_frame(list(changes)), as_of=as_of, ooo_resume_days=ooo,
    )
    status = m.status.collect().with_columns(pl.col("status", "replied_by").cast(pl.String))
    rejected = m.rejected.collect().with_columns(pl.col("model").cast(pl.String))
    # rows come in event order, (occurred_at, event_id)
    order = {e["event_id"]: (e["occurred_at"], e["event_id"]) for e in events}
    assert [order[e] for e in rejected["event_id"]] == sorted(order[e] for e in rejected["event_id"])
    return {(r["sequence_id"], r["person_id"]): r for r in status.to_dicts()}, rejected.sort("event_id").to_dicts()


def one(events, **kw):
    rows, rejected = run(events, **kw)
    assert len(rows) == 1
    return next(iter(rows.values())), rejected


# ---------------------------------------------------------------------------
# the §3.3 manual transition table, every cell

PRIMARY = codes.SEQUENCE_STATUSES


def reach(ev: Ev, status: str, *, contacted: bool, completed: bool = False) -> None:
    ev("sequence_added")
    if contacted:
        ev("email_sent")
    {
        "active": lambda: None,
        "paused": lambda: ev("status_set", "paused"),
        "missing_data": lambda: ev("missing_data"),
        "bounced": lambda: ev("bounced"),
        "out_of_office": lambda: ev("out_of_office"),
        "finished": lambda: ev("sequence_completed" if completed else "auto_replied"),
        "opted_out": lambda: ev("opted_out"),
    }[status]()


OK = None
ALREADY = "already"
# from -> target -> OK | refusal; "contacted": allowed only when contacted;
# "completed": allowed only without a sequence_completed
SET_TABLE = {
    "active": dict(active=ALREADY, paused=OK, missing_data="no", bounced="contacted", out_of_office=OK,
                   finished=OK, opted_out=OK),
    "paused": dict(active=OK, paused=ALREADY, missing_data="no", bounced="no", out_of_office="no", finished="no",
                   opted_out=OK),
    "missing_data": dict(active=OK, paused="no", missing_data=ALREADY, bounced="no", out_of_office="no",
                         finished="no", opted_out=OK),
    "bounced": dict(active=OK, paused="no", missing_data="no", bounced=ALREADY, out_of_office="no", finished="no",
                    opted_out=OK),
    "out_of_office": dict(active=OK, paused="no", missing_data="no", bounced="no", out_of_office=ALREADY,
                          finished="no", opted_out=OK),
    "finished": dict(active="completed", paused="no", missing_data="no", bounced="no", out_of_office="no",
                     finished=ALREADY, opted_out=OK),
    "opted_out": dict(active=OK, paused="no", missing_data="no", bounced="no", out_of_office="no", finished="no",
                      opted_out=ALREADY),
}
SET_CASES = [(f, t, c, d) for f in PRIMARY for t in PRIMARY for c in (False, True)
             for d in ((False, True) if f == "finished" else (False,))]


@pytest.mark.parametrize("from_status,target,contacted,completed", SET_CASES)
def test_status_set_transition_table(from_status, target, contacted, completed):
    ev = Ev()
    reach(ev, from_status, contacted=contacted, completed=completed)
    eid = ev("status_set", target)
    row, rejected = one(ev.rows)
    rule = SET_TABLE[from_status][target]
    allowed = rule is OK or (rule == "contacted" and contacted) or (rule == "completed" and not completed)
    if allowed:
        assert rejected == []
        assert row["status"] == target
    else:
        reason = {
            ALREADY: f"already {target}",
            "no": f"not allowed from {from_status}",
            "contacted": "bounced needs at least one email sent (contacted)",
            "completed": "not allowed from finished: all steps were sent (sequence_completed)",
        }[rule]
        assert rejected == [dict(event_id=eid, model="sequence", person_id="p", sequence_id="S",
                                 from_status=from_status, requested=target, reason=reason)]
        assert row["status"] == from_status  # a refused change changes nothing


REMOVE_CASES = [(f, s, d) for f in PRIMARY for s in PRIMARY for d in ((False, True) if f == "finished" else (False,))]


@pytest.mark.parametrize("from_status,removed,completed", REMOVE_CASES)
def test_status_removed_is_transition_to_active(from_status, removed, completed):
    ev = Ev()
    reach(ev, from_status, contacted=True, completed=completed)
    eid = ev("status_removed", removed)
    row, rejected = one(ev.rows)
    if removed == "active":
        reason = "active cannot be removed"
    elif removed != from_status:
        reason = f"current status is {from_status}, not {removed}"
    elif from_status == "finished" and completed:
        reason = "not allowed from finished: all steps were sent (sequence_completed)"
    else:
        reason = None
    if reason is None:
        assert rejected == [] and row["status"] == "active"
    else:
        assert [(r["event_id"], r["from_status"], r["reason"]) for r in rejected] == [(eid, from_status, reason)]
        assert row["status"] == from_status


# ---------------------------------------------------------------------------
# Team Edition

@pytest.mark.parametrize("team,actor,kind,value,refused", [
    (True, "owner", "status_set", "paused", False),
    (True, "colleague", "status_set", "paused", True),
    (True, None, "status_set", "paused", True),
    (True, "colleague", "status_set", "opted_out", False),  # anyone may opt a contact out
    (True, "colleague", "status_set", "to_call", True),
    (False, "colleague", "status_set", "paused", False),
    (False, None, "status_set", "paused", False),
])
def test_team_edition_owner_rule(team, actor, kind, value, refused):
    ev = Ev()
    ev("sequence_added")
    eid = ev(kind, value, actor=actor)
    row, rejected = one(ev.rows, sequences=[dict(SEQ, team_edition=team)])
    if refused:
        assert [(r["event_id"], r["from_status"], r["reason"]) for r in rejected] == [(eid, "active", TEAM)]
        assert row["status"] == "active" and not row["to_call"]
    else:
        assert rejected == []


def test_team_edition_removing_opt_out_needs_owner():
    ev = Ev()
    ev("sequence_added")
    ev("status_set", "opted_out", actor="colleague")
    refused = ev("status_removed", "opted_out", actor="colleague")
    row, rejected = one(ev.rows, sequences=[dict(SEQ, team_edition=True)])
    assert row["status"] == "opted_out"
    assert [(r["event_id"], r["reason"]) for r in rejected] == [(refused, TEAM)]
    ev("status_removed", "opted_out", actor="owner")
    assert one(ev.rows, sequences=[dict(SEQ, team_edition=True)])[0]["status"] == "active"


def test_team_edition_null_is_false_and_missing_sequence_gets_defaults():
    ev = Ev(sequence_id="UNLISTED")
    ev("sequence_added")
    ev("email_sent")
    ev("status_set", "paused", actor="anyone")
    ev("status_set", "active", actor=None)
    ev("replied", channel="email")
    row, rejected = one(ev.rows, sequences=[dict(SEQ, team_edition=None, reply_handling=None)])
    assert rejected == [] and row["status"] == "finished"  # reply_handling default: finish


# ---------------------------------------------------------------------------
# flags

def test_system_flags_are_set_and_never_cleared_by_system_events():
    ev = Ev()
    ev("sequence_added")
    for ty in ("email_sent", "email_opened", "link_clicked", "call_step_reached", "call_logged"):
        ev(ty)
    ev("replied", channel="sms")
    ev("auto_replied")
    ev("bounced")
    ev("sequence_completed")
    row, rejected = one(ev.rows)
    assert rejected == []
    assert {k: row[k] for k in ("status", "contacted", "opened", "clicked", "replied", "replied_by", "auto_replied",
                                 "to_call", "called", "completed")} == dict(
        status="finished", contacted=True, opened=True, clicked=True, replied=True, replied_by="sms",
        auto_replied=True, to_call=True, called=True, completed=True)
    assert not row["can_receive_emails"] and not row["replies_tracked"]


def test_fresh_membership_flags_and_derived_columns():
    ev = Ev()
    ev("sequence_added")
    row, _ = one(ev.rows)
    assert row == dict(sequence_id="S", person_id="p", status="active", contacted=False, opened=False, clicked=False,
                       replied=False, replied_by=None, auto_replied=False, to_call=False, called=False,
                       can_receive_emails=True, replies_tracked=False, added_at=D0, completed=False)
    ev("email_sent")
    assert one(ev.rows)[0]["replies_tracked"] is True


@pytest.mark.parametrize("flag", ["contacted", "opened", "clicked", "auto_replied", "called"])
def test_system_only_flags_cannot_be_set_by_hand(flag):
    ev = Ev()
    ev("sequence_added")
    eid = ev("status_set", flag)
    row, rejected = one(ev.rows)
    assert [(r["event_id"], r["requested"], r["reason"]) for r in rejected] == [
        (eid, flag, f"{flag} is set by the system only")]
    assert row[flag] is False


@pytest.mark.parametrize("flag", ["contacted", "auto_replied", "opened", "clicked"])
def test_system_flags_cannot_be_removed(flag):
    ev = Ev()
    ev("sequence_added")
    ev({"contacted": "email_sent", "auto_replied": "auto_replied", "opened": "email_opened",
        "clicked": "link_clicked"}[flag])
    eid = ev("status_removed", flag)
    row, rejected = one(ev.rows)
    assert [(r["event_id"], r["reason"]) for r in rejected] == [(eid, f"{flag} cannot be removed")]
    assert row[flag] is True


def test_to_call_and_called_by_hand():
    ev = Ev()
    ev("sequence_added")
    ev("status_set", "to_call")
    again = ev("status_set", "to_call")
    ev("call_logged")
    ev("status_removed", "called")
    not_set = ev("status_removed", "called")
    row, rejected = one(ev.rows)
    assert row["to_call"] is True and row["called"] is False and row["status"] == "active"
    assert [(r["event_id"], r["reason"]) for r in rejected] == [(again, "already to_call"), (not_set, "called is not set")]
    ev("status_removed", "to_call")
    assert one(ev.rows)[0]["to_call"] is False
    ev("call_logged")  # a later system event sets it again
    assert one(ev.rows)[0]["called"] is True


@pytest.mark.parametrize("handling,status", [("finish", "finished"), ("continue", "active")])
def test_system_reply_and_reply_handling(handling, status):
    ev = Ev()
    ev("sequence_added")
    ev("email_sent")
    ev("replied", channel="email")
    row, _ = one(ev.rows, sequences=[dict(SEQ, reply_handling=handling)])
    assert (row["status"], row["replied"], row["replied_by"], row["replies_tracked"]) == (status, True, "email", False)


@pytest.mark.parametrize("handling,status", [("finish", "finished"), ("continue", "active")])
def test_manual_replied(handling, status):
    ev = Ev()
    ev("sequence_added")
    too_early = ev("status_set", "replied")
    ev("email_sent")
    ev("status_set", "replied", channel="sms")
    again = ev("status_set", "replied")
    row, rejected = one(ev.rows, sequences=[dict(SEQ, reply_handling=handling)])
    assert (row["status"], row["replied"], row["replied_by"]) == (status, True, "sms")
    assert [(r["event_id"], r["reason"]) for r in rejected] == [
        (too_early, "replied needs at least one email sent (contacted)"), (again, "already replied")]


def test_manual_replied_only_from_active_and_removal():
    ev = Ev()
    ev("sequence_added")
    ev("email_sent")
    ev("status_set", "paused")
    paused = ev("status_set", "replied")
    ev("status_set", "active")
    ev("replied", channel="email")  # system: finished
    ev("status_set", "active")
    ev("status_removed", "replied")
    not_set = ev("status_removed", "replied")
    row, rejected = one(ev.rows)
    assert [(r["event_id"], r["reason"]) for r in rejected] == [
        (paused, "not allowed from paused"), (not_set, "replied is not set")]
    assert (row["status"], row["replied"], row["replied_by"], row["replies_tracked"]) == ("active", False, None, True)


def test_unknown_value_is_refused():
    ev = Ev()
    ev("sequence_added")
    eid = ev("status_set", "vip")
    _, rejected = one(ev.rows)
    assert [(r["event_id"], r["requested"], r["reason"]) for r in rejected] == [(eid, "vip", "unknown status 'vip'")]


# ---------------------------------------------------------------------------
# opted_out

def test_person_level_opt_out_reaches_every_current_membership_and_sticks():
    a, b = Ev("p", "S"), Ev("p", "S2")
    a("sequence_added", at=D0)
    b("sequence_added", at=D0)
    a("opted_out", at=D0 + timedelta(days=1), eid="opt")
    c = Ev("p", "S3")
    c("sequence_added", at=D0 + timedelta(days=2))  # added later: not opted out (no component change given)
    a("bounced", at=D0 + timedelta(days=3))
    a("email_opened", at=D0 + timedelta(days=3, hours=1))
    a("opt_out_revoked", at=D0 + timedelta(days=4))  # does not change a sequence status
    rows, rejected = run(a.rows + b.rows + c.rows)
    assert {k[0]: r["status"] for k, r in rows.items()} == {"S": "opted_out", "S2": "opted_out", "S3": "active"}
    assert rows[("S", "p")]["opened"] is True  # system events still set flags
    assert rejected == []


def test_person_level_opt_out_ignored_outside_membership():
    ev = Ev()
    ev("sequence_added")
    ev("sequence_removed")
    ev("opted_out")
    ev("sequence_added")
    row, _ = one(ev.rows)
    assert row["status"] == "active"


@pytest.mark.parametrize("change_at,change_eid,refused", [
    (D0, None, True),             # export observation at the same instant sorts before the add
    (D0, "a-0000", True),         # smaller event id at the same instant: before
    (D0, "z-9999", False),        # larger event id at the same instant: after
    (D0 - timedelta(days=1), None, True),
    (D0 + timedelta(microseconds=1), None, False),
])
def test_add_refused_while_opt_out_component_holds(change_at, change_eid, refused):
    ev = Ev()
    eid = ev("sequence_added", at=D0, eid="m-0000")
    changes = [dict(person_id="p", changed_at=change_at, event_id=change_eid, opted_out=True)]
    rows, rejected = run(ev.rows, changes=changes)
    if refused:
        assert rows == {}
        assert rejected == [dict(event_id=eid, model="sequence", person_id="p", sequence_id="S", from_status=None,
                                 requested="sequence_added", reason="person is opted out")]
    else:
        assert rows[("S", "p")]["status"] == "active" and rejected == []


@pytest.mark.parametrize("add_at,revoked,refused", [
    (D0 + timedelta(days=1), False, False),  # the participant is not yet added: a run then knows no bounce
    (D0 + timedelta(days=2), False, True),   # added at this very instant: known
    (D0 + timedelta(days=3), False, True),
    (D0 + timedelta(days=3), True, False),   # known, but the revoke is later in its own order
])
def test_add_sees_a_backdated_hard_bounce_only_once_its_participant_exists(add_at, revoked, refused):
    """A hard bounce observed before its participant's `added_at` counts from `added_at` on (§7.4)."""
    ev = Ev()
    eid = ev("sequence_added", at=add_at, eid="m-0000")
    changes = [dict(person_id="p", changed_at=D0 - timedelta(days=1), event_id=None, opted_out=True,
                    visible_at=D0 + timedelta(days=2))]
    if revoked:
        changes.append(dict(person_id="p", changed_at=D0, event_id="r-0000", opted_out=False))
    rows, rejected = run(ev.rows, changes=changes)
    if refused:
        assert rows == {} and [r["event_id"] for r in rejected] == [eid]
    else:
        assert rows[("S", "p")]["status"] == "active" and rejected == []


def test_add_allowed_after_opt_out_revoked_and_other_people_unaffected():
    ev = Ev()
    ev("sequence_added", at=D0 + timedelta(days=2))
    other = Ev("q")
    other("sequence_added", at=D0 + timedelta(days=2))
    changes = [dict(person_id="p", changed_at=D0, event_id="x1", opted_out=True),
               dict(person_id="p", changed_at=D0 + timedelta(days=1), event_id="x2", opted_out=False),
               dict(person_id="q", changed_at=D0 + timedelta(days=3), event_id="x3", opted_out=True)]
    rows, rejected = run(ev.rows + other.rows, changes=changes)
    assert set(rows) == {("S", "p"), ("S", "q")} and rejected == []


# ---------------------------------------------------------------------------
# membership

def test_add_remove_re_add_starts_afresh():
    ev = Ev()
    ev("sequence_added")
    ev("email_sent")
    ev("status_set", "paused")
    ev("sequence_removed")
    ev("email_opened")  # non-member: ignored
    outside = ev("status_set", "active")  # non-member: refused
    again = ev("sequence_added")
    ev("sequence_added")  # already a member: ignored, no rejection
    row, rejected = one(ev.rows)
    assert rejected == [dict(event_id=outside, model="sequence", person_id="p", sequence_id="S", from_status=None,
                             requested="active", reason="not in the sequence")]
    assert (row["status"], row["contacted"], row["opened"]) == ("active", False, False)
    assert row["added_at"] == next(r["occurred_at"] for r in ev.rows if r["event_id"] == again)


def test_removed_membership_has_no_row_and_remove_of_non_member_is_silent():
    ev = Ev()
    ev("sequence_removed")
    ev("sequence_added")
    ev("sequence_removed")
    ev("sequence_removed")
    rows, rejected = run(ev.rows)
    assert rows == {} and rejected == []


def test_events_after_as_of_are_ignored():
    ev = Ev()
    ev("sequence_added")
    ev("bounced", at=T + timedelta(microseconds=1))
    ev("sequence_added", at=T + timedelta(days=1), sequence_id="LATER")
    row, _ = one(ev.rows)
    assert row["status"] == "active"


def test_same_instant_ordered_by_event_id():
    ev = Ev()
    ev("sequence_added", at=D0, eid="a")
    ev("bounced", at=D0 + timedelta(hours=1), eid="c")
    ev("missing_data", at=D0 + timedelta(hours=1), eid="b")
    assert one(ev.rows)[0]["status"] == "bounced"


# ---------------------------------------------------------------------------
# out_of_office auto-resume

@pytest.mark.parametrize("ooo_days,as_of,status", [
    (0, T, "out_of_office"),
    (2, D0 + timedelta(days=2), "active"),                                   # exactly N x 24 h: resumed
    (2, D0 + timedelta(days=2) - timedelta(microseconds=1), "out_of_office"),
])
def test_out_of_office_resumes_after_n_days(ooo_days, as_of, status):
    ev = Ev()
    ev("sequence_added", at=D0 - timedelta(days=1))
    ev("out_of_office", at=D0)
    row, _ = one(ev.rows, ooo=ooo_days, as_of=as_of)
    assert row["status"] == status
    assert row["replies_tracked"] is False  # never contacted


def test_manual_out_of_office_resumes_too_and_redetection_restarts_clock():
    ev = Ev()
    ev("sequence_added", at=D0 - timedelta(days=1))
    ev("status_set", "out_of_office", at=D0)
    assert one(ev.rows, ooo=1, as_of=D0 + timedelta(days=1))[0]["status"] == "active"
    ev("out_of_office", at=D0 + timedelta(hours=20))  # detected again: clock restarts
    assert one(ev.rows, ooo=1, as_of=D0 + timedelta(days=1))[0]["status"] == "out_of_office"
    assert one(ev.rows, ooo=1, as_of=D0 + timedelta(hours=44))[0]["status"] == "active"


def test_manual_changes_see_the_resumed_status():
    ev = Ev()
    ev("sequence_added", at=D0 - timedelta(days=1))
    ev("out_of_office", at=D0)
    early = ev("status_set", "paused", at=D0 + timedelta(hours=23))  # still out of office
    ev("status_set", "paused", at=D0 + timedelta(days=1))  # resumed at exactly 24 h: active -> paused
    row, rejected = one(ev.rows, ooo=1)
    assert row["status"] == "paused"
    assert [(r["event_id"], r["reason"]) for r in rejected] == [(early, "not allowed from out_of_office")]
    ev("status_removed", "out_of_office", at=D0 + timedelta(days=3))
    assert one(ev.rows, ooo=1)[1][-1]["reason"] == "current status is paused, not out_of_office"


def test_replied_while_out_of_office():
    ev = Ev()
    ev("sequence_added")
    ev("email_sent")
    ev("out_of_office")
    row, _ = one(ev.rows)
    assert row["replies_tracked"] is True and row["can_receive_emails"] is False
    ev("replied", channel="email")
    assert one(ev.rows)[0]["status"] == "finished"


CONTINUE = dict(SEQ, reply_handling="continue")


@pytest.mark.parametrize("before,expected", [
    (["out_of_office"], "active"),                      # the reply wakes it: "continue sending emails"
    (["out_of_office", "email_sent"], "active"),        # however many events lie between
    (["status_set:out_of_office"], "active"),           # a manual out-of-office too
    (["status_set:paused"], "paused"),                  # only an out-of-office contact is woken
    (["bounced"], "bounced"),
    ([], "active"),
    (["out_of_office", "opted_out"], "opted_out"),      # opted_out is left only by hand (§7.12)
])
def test_with_continue_a_reply_wakes_an_out_of_office_contact(before, expected):
    """Seed: "as soon as an Out of office contact responds ... Reply changes the contact's status based
    on your sequence settings for handling replies - Mark person as finished or Continue sending emails"."""
    ev = Ev()
    ev("sequence_added")
    ev("email_sent")
    for step in before:
        kind, _, value = step.partition(":")
        ev(kind, value or None)
    ev("replied", channel="email")
    row, rejected = one(ev.rows, sequences=[CONTINUE])  # no auto resume: only the reply can wake it
    assert rejected == []
    assert (row["status"], row["replied"], row["can_receive_emails"]) == (expected, True, expected == "active")


def test_with_continue_a_reply_before_the_out_of_office_wakes_nothing():
    ev = Ev()
    ev("sequence_added")
    ev("replied", channel="email")
    ev("out_of_office")
    assert one(ev.rows, sequences=[CONTINUE])[0]["status"] == "out_of_office"


def test_a_woken_contact_can_be_paused_by_hand():
    """Manual changes see the woken status: active → paused is allowed, out_of_office → paused is not."""
    ev = Ev()
    ev("sequence_added")
    ev("out_of_office")
    ev("replied", channel="sms")
    ev("status_set", "paused")
    row, rejected = one(ev.rows, sequences=[CONTINUE])
    assert rejected == [] and row["status"] == "paused"


# ---------------------------------------------------------------------------
# schema, example, scale

def test_output_schemas():
    ev = Ev()
    ev("sequence_added")
    ev("status_set", "bogus")
    m = sequence_machine(frame("events", ev.rows), frame("sequences", [SEQ]), opt_out_changes_frame([]),
                         as_of=T, ooo_resume_days=0)
    assert m.status.collect_schema() == pl.Schema({
        "sequence_id": pl.String, "person_id": pl.String, "status": codes.SequenceStatus, "contacted": pl.Boolean,
        "opened": pl.Boolean, "clicked": pl.Boolean, "replied": pl.Boolean, "replied_by": codes.Channel,
        "auto_replied": pl.Boolean, "to_call": pl.Boolean, "called": pl.Boolean, "can_receive_emails": pl.Boolean,
        "replies_tracked": pl.Boolean, "added_at": TIMESTAMP, "completed": pl.Boolean,
    })
    assert m.rejected.collect().schema == pl.Schema(REJECTED_TRANSITIONS_SCHEMA)
    args = (frame("events", ev.rows), frame("sequences", [SEQ]), opt_out_changes_frame([]))
    assert sequence_status(*args, as_of=T, ooo_resume_days=0).collect().height == 1
    assert sequence_rejected_transitions(*args, as_of=T, ooo_resume_days=0).collect().height == 1


def test_empty_inputs():
    rows, rejected = run([], sequences=())
    assert rows == {} and rejected == []


def test_worked_example_sequences():
    events = read_contract_csv("events", EXAMPLES + "events.csv")
    sequences = read_contract_csv("sequences", EXAMPLES + "sequences.csv")
    m = sequence_machine(events, sequences, opt_out_changes_frame([]), as_of=T, ooo_resume_days=0)
    expected = pl.read_csv(EXAMPLES + "expected/sequence_status.csv")
    got = m.status.collect().select(expected.columns).with_columns(pl.col("status").cast(pl.String))
    assert got.sort("sequence_id", "person_id").to_dicts() == expected.sort("sequence_id", "person_id").to_dicts()
    expected_rej = pl.read_csv(EXAMPLES + "expected/rejected_transitions.csv")
    got_rej = m.rejected.collect().select(expected_rej.columns).with_columns(pl.col("model").cast(pl.String))
    assert got_rej.to_dicts() == expected_rej.to_dicts()


def test_long_manual_history_in_one_membership():
    """Thousands of manual changes in one membership: many loop ranks, still exact and quick."""
    ev = Ev()
    ev("sequence_added", at=D0)
    n = 3000
    for i in range(n):
        at = D0 + timedelta(minutes=i + 1)
        ev("status_set", "paused" if i % 3 == 0 else "active", at=at)  # every third "active" is refused
    ev("email_opened", at=D0 + timedelta(days=5))
    other = Ev("q")
    other("sequence_added", at=D0)
    other("status_set", "paused", at=D0 + timedelta(hours=1))
    started = time.perf_counter()
    rows, rejected = run(ev.rows + other.rows)
    elapsed = time.perf_counter() - started
    ref_rows, ref_rejected = reference_sequences(ev.rows + other.rows, [SEQ], [], as_of=T, ooo_resume_days=0)
    assert rejected == ref_rejected and len(rejected) == n // 3
    assert rows[("S", "p")]["status"] == "active" and rows[("S", "q")]["status"] == "paused"
    assert elapsed < 30  # generous: a shared, loaded machine; quadratic work would take minutes


@pytest.mark.parametrize("order", ["grouped", "interleaved", "reversed"])
def test_pairs_are_told_apart_by_their_strings(order):
    """Pairs are ranked from their strings (no hashing); a pair's rows need not be adjacent."""
    a, b, c = Ev("p", "S1"), Ev("p", "S2"), Ev("q", "S1")
    a("sequence_added")
    a("email_sent")
    outside = b("status_set", "paused")  # S2 has no add: not in the sequence
    b("bounced")
    c("sequence_added")
    c("bounced")
    events = a.rows + b.rows + c.rows
    if order == "interleaved":
        events = [e for group in zip(a.rows, b.rows, c.rows) for e in group]
    elif order == "reversed":
        events = events[::-1]
    rows, rejected = run(events)
    assert {k: r["status"] for k, r in rows.items()} == {("S1", "p"): "active", ("S1", "q"): "bounced"}
    assert [(r["event_id"], r["reason"]) for r in rejected] == [(outside, "not in the sequence")]


# ---------------------------------------------------------------------------
# property: the vectorised machine equals the plain per-membership reference

MANUAL_VALUES = list(KNOWN_VALUES) + ["bogus", None]
SYSTEM = [t for t in SEQUENCE_SCOPED if t not in ("status_set", "status_removed", "sequence_added", "sequence_removed")]


@st.composite
def sequence_case(draw):
    people, seqs = ["p1", "p2"], ["S1", "S2"]
    events = []
    # most memberships start with an add, so that transitions are exercised
    for p in people:
        for s in seqs:
            if draw(st.booleans()) or draw(st.booleans()):
                events.append(dict(event_id=f"a-{p}-{s}", person_id=p, sequence_id=s, occurred_at=D0,
                                   event_type="sequence_added", channel=None, actor_id=None, value=None))
    kinds = st.sampled_from(["manual"] * 6 + ["system"] * 6 + ["membership", "opted_out"])
    for i in range(draw(st.integers(0, 30))):
        kind = draw(kinds)
        if kind == "manual":
            ty = draw(st.sampled_from(["status_set", "status_set", "status_removed"]))
        elif kind == "system":
            ty = draw(st.sampled_from(SYSTEM))
        elif kind == "membership":
            ty = draw(st.sampled_from(["sequence_added", "sequence_removed"]))
        else:
            ty = "opted_out"
        events.append(dict(
            event_id=f"e{draw(st.integers(0, 50)):02d}-{i}",
            person_id=draw(st.sampled_from(people)),
            sequence_id=None if ty == "opted_out" else draw(st.sampled_from(seqs)),
            # few distinct instants: many ties, broken by event_id
            occurred_at=D0 + timedelta(hours=12 * draw(st.integers(0, 10))),
            event_type=ty,
            channel=draw(st.sampled_from(["email", "sms", "call", None])),
            actor_id=draw(st.sampled_from(["owner", "owner", "colleague", None])),
            value=draw(st.sampled_from(MANUAL_VALUES)) if ty.startswith("status_") else None,
        ))
    sequences = [dict(sequence_id=s, owner_id=draw(st.sampled_from(["owner", None])),
                      team_edition=draw(st.sampled_from([True, False, None])),
                      reply_handling=draw(st.sampled_from(["finish", "continue", None])))
                 for s in seqs if draw(st.integers(0, 4)) > 0]
    changes = [dict(person_id=draw(st.sampled_from(people)),
                    changed_at=D0 + timedelta(hours=12 * draw(st.integers(-1, 10))),
                    event_id=draw(st.sampled_from([None, "a-p1-S1", "e25-x", "zz"])),
                    opted_out=draw(st.booleans()))
               for _ in range(draw(st.integers(0, 3)))]
    for change in changes:  # a hard bounce dated before its participant was added: known from then on
        if change["event_id"] is None and draw(st.integers(0, 2)) == 0:
            change["visible_at"] = change["changed_at"] + timedelta(hours=12 * draw(st.integers(1, 6)))
    ooo = draw(st.sampled_from([0, 1, 2]))
    as_of = D0 + timedelta(hours=12 * draw(st.integers(3, 12)))
    return events, sequences, changes, ooo, as_of


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(sequence_case())
def test_matches_reference_machine(case):
    events, sequences, changes, ooo, as_of = case
    rows, rejected = run(events, sequences=sequences, changes=changes, ooo=ooo, as_of=as_of)
    ref_rows, ref_rejected = reference_sequences(events, sequences, changes, as_of=as_of, ooo_resume_days=ooo)
    assert rows == {(r["sequence_id"], r["person_id"]): r for r in ref_rows}
    assert rejected == ref_rejected


@settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(sequence_case(), st.randoms(use_true_random=False))
def test_input_row_order_does_not_matter(case, rnd):
    """Same tables whatever the order of the input rows (the machine sorts; runs only speed it up)."""
    events, sequences, changes, ooo, as_of = case
    shuffled = list(events)
    rnd.shuffle(shuffled)
    seqs = frame("sequences", sequences) if sequences else pl.LazyFrame(schema=input_table("sequences").schema)
    got = [
        pl.collect_all(sequence_machine(frame("events", evs), seqs, opt_out_changes_frame(list(changes)), as_of=as_of,
                                        ooo_resume_days=ooo))
        for evs in (events, shuffled)
    ]
    assert got[0][0].equals(got[1][0]) and got[0][1].equals(got[1][1])


def test_run_adds_before_a_backdated_hard_bounce_is_known(tmp_path):
    """Through the CLI: a participant added 03-10 whose hard bounce is dated 03-01 does not refuse
    an add on 03-05, which a run as of 03-05 accepts too; an add on 03-12 is refused (§7.4, §7.13)."""
    ws = Workspace(tmp_path / "ws").write(
        people=[person("v1", "2025-01-01T00:00:00Z")],
        studies=[study("R1")],
        participants=[participant("R1", "v1", "hard_bounced", "2026-03-01T00:00:00Z", added="2026-03-10T00:00:00Z")],
        events=[
            event("j1", "v1", "2026-03-05T00:00:00Z", "sequence_added", sequence_id="S"),
            event("j2", "v1", "2026-03-12T00:00:00Z", "sequence_added", sequence_id="T"),
        ],
    )
    for as_of in ("2026-03-05", "2026-03-31"):
        ws.run(as_of=as_of)
        assert ws.query(
            "select sequence_id, status from sequence_status where as_of = ? order by 1", [as_of]
        ) == [("S", "active")]
    assert ws.query("select event_id, reason from rejected_transitions where as_of = '2026-03-31'") == [
        ("j2", "person is opted out")
    ]
