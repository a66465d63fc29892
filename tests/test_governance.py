"""`governance_violations` (SPEC §3.2, §7.10): invites checked against the status just before them."""

from __future__ import annotations

from pathlib import Path

from conftest import Workspace, event, participant, person, study
from test_history import published

from statusbatch.config import load_job
from statusbatch.loading import load_inputs
from statusbatch.pipeline import parse_as_of

S1, S2 = study("S1"), study("S2")
NO_AUTO = "[cooldown]\nafter_invite_days = 0\nafter_completion_days = 0\n"


def violations(tmp_path: Path, job_body: str = "", as_of: str = "2026-03-31", **tables) -> dict[str, tuple]:
    """event_id -> (status_at_invite, kind) for every invite that is a row."""
    ws = Workspace(tmp_path / "ws").write(job_body, **tables)
    t = parse_as_of(as_of).instant
    inputs, config = load_inputs(ws.input), load_job(ws.job)
    assert inputs.rejected_rows.height == 0, inputs.rejected_rows
    _, frame = published(inputs, config, t)
    return {r["event_id"]: (str(r["status_at_invite"]), str(r["kind"])) for r in frame.iter_rows(named=True)}


def invite(event_id: str, at: str, study_id: str = "S1", person_id: str = "p1", **more) -> dict:
    return event(event_id, person_id, at, "invited", study_id=study_id, **more)


def test_reminders_for_the_same_study_are_not_violations(tmp_path):
    got = violations(
        tmp_path,
        people=[person("p1"), person("p2")],
        studies=[S1],
        participants=[participant("S1", "p2", "screener_started", "2026-01-05T00:00:00Z")],
        events=[
            invite("i1", "2026-01-10T00:00:00Z"),
            invite("i2", "2026-01-17T00:00:00Z"),  # in cooldown from S1's own invite
            invite("i3", "2026-01-10T00:00:00Z", person_id="p2"),  # active in S1 itself
        ],
    )
    assert got == {}


def test_cooldown_from_another_study_needs_an_override_reason(tmp_path):
    got = violations(
        tmp_path,
        people=[person("p1")],
        studies=[S1, S2],
        events=[
            invite("i1", "2026-01-10T00:00:00Z"),
            invite("i2", "2026-01-20T00:00:00Z", "S2"),
            invite("i3", "2026-01-21T00:00:00Z", "S2", reason="approved by the research lead"),
            invite("i4", "2026-01-22T00:00:00Z", "S2", reason="   "),
        ],
    )
    assert got == {
        "i2": ("in_cooldown", "override_required"),
        "i3": ("in_cooldown", "overridden"),
        "i4": ("in_cooldown", "override_required"),  # a blank reason is no reason
    }


def test_opted_out_and_blocklisted_people_cannot_be_overridden(tmp_path):
    got = violations(
        tmp_path,
        NO_AUTO,
        people=[person("p1"), person("p2")],
        studies=[S1],
        events=[
            event("o1", "p1", "2026-01-05T00:00:00Z", "opted_out"),
            invite("i1", "2026-01-10T00:00:00Z", reason="they said yes on the phone"),
            event("b1", "p2", "2026-01-05T00:00:00Z", "blocklist_added"),
            invite("i2", "2026-01-10T00:00:00Z", person_id="p2"),
        ],
    )
    assert got == {"i1": ("opted_out", "not_overridable"), "i2": ("in_blocklist", "not_overridable")}


def test_active_in_another_study_and_manual_do_not_contact(tmp_path):
    got = violations(
        tmp_path,
        NO_AUTO,
        people=[person("p1"), person("p2")],
        studies=[S1, S2],
        participants=[participant("S2", "p1", "interview_scheduled", "2026-01-05T00:00:00Z")],
        events=[
            invite("i1", "2026-01-10T00:00:00Z"),
            event("d1", "p2", "2026-01-05T00:00:00Z", "do_not_contact_set"),
            invite("i2", "2026-01-10T00:00:00Z", person_id="p2"),
            event("d2", "p2", "2026-01-11T00:00:00Z", "do_not_contact_cleared"),
            invite("i3", "2026-01-12T00:00:00Z", person_id="p2"),
        ],
    )
    assert got == {"i1": ("active_in_study", "override_required"), "i2": ("do_not_contact", "override_required")}


def test_opt_outs_and_no_shows_from_the_inviting_study_still_count(tmp_path):
    got = violations(
        tmp_path,
        NO_AUTO,
        people=[person("p1"), person("p2")],
        studies=[S1, S2],
        participants=[
            participant("S1", "p1", "no_showed", "2026-01-05T00:00:00Z"),
            participant("S2", "p1", "no_showed", "2026-01-06T00:00:00Z"),
            participant("S1", "p2", "hard_bounced", "2026-01-05T00:00:00Z"),
        ],
        events=[invite("i1", "2026-01-10T00:00:00Z"), invite("i2", "2026-01-10T00:00:00Z", person_id="p2")],
    )
    assert got == {"i1": ("in_blocklist", "not_overridable"), "i2": ("opted_out", "not_overridable")}


def test_an_observation_dated_before_its_participant_was_added_counts_from_added_at(tmp_path):
    """A hard bounce dated before its participant was added counts for invites after the add."""
    got = violations(
        tmp_path,
        NO_AUTO,
        people=[person("p1")],
        studies=[S1, S2],
        participants=[participant("S1", "p1", "not_contacted", added="2026-02-01T00:00:00Z")],
        events=[
            event("e1", "p1", "2026-01-10T00:00:00Z", "participant_status", study_id="S1", value="hard_bounced"),
            invite("i1", "2026-01-15T00:00:00Z", "S2"),
            invite("i2", "2026-02-01T00:00:00Z", "S2"),
            invite("i3", "2026-02-01T00:00:00.000001Z", "S2"),
        ],
    )
    assert got == {"i3": ("opted_out", "not_overridable")}


def test_only_facts_strictly_before_the_invite_count(tmp_path):
    """An opt-out at the invite's instant does not count, whatever its event id; a clear before the
    invite ends the cooldown."""
    got = violations(
        tmp_path,
        people=[person("p1"), person("p3")],
        studies=[S1, S2],
        events=[
            event("a", "p1", "2026-01-10T00:00:00Z", "opted_out"),
            invite("b", "2026-01-10T00:00:00Z"),
            invite("e", "2026-01-01T00:00:00Z", person_id="p3"),
            event("f", "p3", "2026-01-02T00:00:00Z", "cooldown_cleared"),
            invite("g", "2026-01-03T00:00:00Z", "S2", person_id="p3"),
        ],
    )
    assert got == {}


def test_time_based_changes_at_the_invites_instant_have_not_happened_just_before_it(tmp_path):
    """§3.2 "just before it (facts strictly earlier than its occurred_at)"; §4 counts cooldown ends
    and study openings and closings among the facts. So a cooldown ending at the invite's instant is
    still in force just before it, a study closing then still makes the person active, one opening
    then does not yet; a microsecond later all three have happened."""
    closes, opens = study("S3", closed_at="2026-02-01T00:00:00Z"), study("S4", opened_at="2026-02-01T00:00:00Z")
    got = violations(
        tmp_path,
        people=[person("p1"), person("p2"), person("p3")],
        studies=[S1, S2, closes, opens],
        participants=[
            participant("S3", "p2", "survey_started", "2026-01-05T00:00:00Z"),
            participant("S4", "p3", "survey_started", "2026-01-05T00:00:00Z"),
        ],
        events=[
            invite("c", "2026-01-01T00:00:00Z"),
            invite("d", "2026-01-31T00:00:00Z", "S2"),  # S1's 30-day cooldown ends at this instant
            invite("d2", "2026-01-31T00:00:00.000001Z", "S2", reason="the second try"),
            invite("h", "2026-02-01T00:00:00Z", person_id="p2"),  # S3 closes at this instant
            invite("h2", "2026-02-01T00:00:00.000001Z", person_id="p2"),
            invite("k", "2026-02-01T00:00:00Z", person_id="p3"),  # S4 opens at this instant
            invite("k2", "2026-02-01T00:00:00.000001Z", person_id="p3"),
        ],
    )
    assert got == {
        "d": ("in_cooldown", "override_required"),
        "h": ("active_in_study", "override_required"),
        "k2": ("active_in_study", "override_required"),
    }


def test_a_rolling_limits_window_reaches_back_to_its_first_instant(tmp_path):
    """The limit ends when its oldest trigger leaves the window, at t + window_days: an invite at that
    instant still had the limit in force just before it."""
    limit = "[cooldown]\nafter_invite_days = 0\n[[cooldown.limits]]\ntrigger = 'invite'\ncount = 2\nwindow_days = 30\n"
    got = violations(
        tmp_path,
        limit,
        people=[person("p1")],
        studies=[S1, S2, study("S3")],
        events=[
            invite("i1", "2026-01-01T00:00:00Z", "S1"),
            invite("i2", "2026-01-05T00:00:00Z", "S2"),
            invite("i3", "2026-01-31T00:00:00Z", "S3"),  # i1 leaves the window at this instant
            invite("i4", "2026-01-31T00:00:00.000001Z", "S3"),
        ],
    )
    assert got == {"i3": ("in_cooldown", "override_required")}


def test_completion_cooldown_of_the_inviting_study_is_left_out_but_not_another_studys(tmp_path):
    got = violations(
        tmp_path,
        "[cooldown]\nafter_invite_days = 0\nafter_completion_days = 90\n",
        people=[person("p1")],
        studies=[S1, S2],
        participants=[participant("S1", "p1", "interview_completed", "2026-01-05T00:00:00Z")],
        events=[invite("i1", "2026-01-10T00:00:00Z"), invite("i2", "2026-01-10T00:00:00Z", "S2")],
    )
    assert got == {"i2": ("in_cooldown", "override_required")}


def test_rolling_limit_counts_leave_out_the_inviting_studys_own_invites(tmp_path):
    limit = "[cooldown]\nafter_invite_days = 0\n[[cooldown.limits]]\ntrigger = 'invite'\ncount = 2\nwindow_days = 30\n"
    got = violations(
        tmp_path,
        limit,
        people=[person("p1"), person("p2")],
        studies=[S1, S2, study("S3")],
        events=[
            invite("i1", "2026-01-10T00:00:00Z"),
            invite("i2", "2026-01-12T00:00:00Z"),
            invite("i3", "2026-01-14T00:00:00Z"),  # S1's own invites only: a reminder
            invite("i4", "2026-01-14T00:00:00Z", "S2"),  # two S1 invites in the window: limit
            invite("i5", "2026-02-12T00:00:00Z", "S2"),  # i1 and i2 left the window, i3 alone is 1 < 2
            # p2: S1 + S2 invites put an S3 invite under the limit, until a clear
            invite("j1", "2026-01-10T00:00:00Z", person_id="p2"),
            invite("j2", "2026-01-11T00:00:00Z", "S2", person_id="p2"),
            invite("j3", "2026-01-12T00:00:00Z", "S3", person_id="p2"),
            event("j4", "p2", "2026-01-13T00:00:00Z", "cooldown_cleared"),
            invite("j5", "2026-01-14T00:00:00Z", "S3", person_id="p2"),
        ],
    )
    assert got == {"i4": ("in_cooldown", "override_required"), "j3": ("in_cooldown", "override_required")}


def test_own_invites_in_the_window_are_counted_per_participant_among_many_people(tmp_path):
    """Two patterns over many people, the log in time order (not by person): S1, S1, S2 puts the
    S2 invite under the limit (two other-study invites); S1, S2, S2 does not (one)."""
    limit = "[cooldown]\nafter_invite_days = 0\n[[cooldown.limits]]\ntrigger = 'invite'\ncount = 2\nwindow_days = 30\n"
    people = [person(f"p{i}") for i in range(8)]
    patterns = {0: ("S1", "S1", "S2"), 1: ("S1", "S2", "S2")}
    events = [
        invite(f"i{i}-{day}", f"2026-01-{10 + day:02d}T00:00:00Z", patterns[i % 2][day], person_id=f"p{i}")
        for day in range(3)
        for i in range(8)
    ]
    got = violations(tmp_path, limit, people=people, studies=[S1, S2], events=events)
    assert got == {f"i{i}-2": ("in_cooldown", "override_required") for i in range(0, 8, 2)}


def test_an_earlier_ending_cooldown_of_another_study_counts_under_the_own_studys_later_one(tmp_path):
    """S2's cooldown (to 01-31) is in force under S1's own, later-ending ones (to 02-10, 02-20)."""
    got = violations(
        tmp_path,
        people=[person("p1")],
        studies=[S1, S2],
        events=[
            invite("i1", "2026-01-01T00:00:00Z", "S2"),
            invite("i2", "2026-01-11T00:00:00Z"),
            invite("i3", "2026-01-21T00:00:00Z"),
            invite("i4", "2026-02-05T00:00:00Z"),  # S2's cooldown is over; only S1's own remain
        ],
    )
    assert got == {"i2": ("in_cooldown", "override_required"), "i3": ("in_cooldown", "override_required")}


def test_another_studys_cooldown_ending_at_the_invites_instant_counts_under_the_own_studys_later_one(tmp_path):
    got = violations(
        tmp_path,
        people=[person("p1")],
        studies=[S1, S2],
        events=[
            invite("i1", "2026-01-01T00:00:00Z", "S2"),  # S2 cooldown until 01-31T00:00Z
            invite("i2", "2026-01-11T00:00:00Z"),  # own, later-ending cooldown
            invite("i3", "2026-01-31T00:00:00Z"),  # at the instant S2's cooldown ends
        ],
    )
    assert got == {"i2": ("in_cooldown", "override_required"), "i3": ("in_cooldown", "override_required")}


LIMIT_2_IN_30 = "[cooldown]\nafter_invite_days = 0\n[[cooldown.limits]]\ntrigger = 'invite'\ncount = 2\nwindow_days = 30\n"


def test_a_clear_at_the_instant_of_the_latest_trigger_but_later_in_fact_order_ends_the_limit(tmp_path):
    got = violations(
        tmp_path,
        LIMIT_2_IN_30,
        people=[person("p1")],
        studies=[S1, S2, study("S3")],
        events=[
            invite("j1", "2026-01-10T00:00:00Z"),
            invite("j2", "2026-01-12T00:00:00Z", "S2"),
            event("j3", "p1", "2026-01-12T00:00:00Z", "cooldown_cleared"),  # same instant, j3 > j2
            invite("j5", "2026-01-14T00:00:00Z", "S3"),
        ],
    )
    assert got == {}


def test_an_own_trigger_just_outside_the_window_is_not_taken_out_of_the_count(tmp_path):
    got = violations(
        tmp_path,
        LIMIT_2_IN_30,
        people=[person("p1")],
        studies=[S1, S2],
        events=[
            invite("i1", "2026-01-01T00:00:00Z"),  # outside i4's window (opens 01-01T12:00Z)
            invite("i2", "2026-01-20T00:00:00Z", "S2"),
            invite("i3", "2026-01-25T00:00:00Z", "S2"),
            invite("i4", "2026-01-31T12:00:00Z"),
        ],
    )
    assert got == {"i4": ("in_cooldown", "override_required")}


def test_an_invite_at_exactly_t_is_checked(tmp_path):
    got = violations(
        tmp_path,
        as_of="2026-03-15T08:00:00Z",
        people=[person("p1")],
        studies=[S1],
        events=[event("e1", "p1", "2026-03-01T00:00:00Z", "opted_out"), invite("i1", "2026-03-15T08:00:00Z")],
    )
    assert got == {"i1": ("opted_out", "not_overridable")}
