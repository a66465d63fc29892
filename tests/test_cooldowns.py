"""§3.2 in_cooldown and the `cooldowns` table: invite, completion, manual, limits, clears (§2, §4, §7.2, §7.9)."""

from __future__ import annotations

from datetime import date

import pytest
from conftest import compute, event, one, participant, person, rows, study, ts

S1, S2, S3 = study("S1"), study("S2"), study("S3")
NO_AUTO = "[cooldown]\nafter_invite_days = 0\nafter_completion_days = 0\n"


def contact(t) -> dict:
    """person_id -> (contact_status, cooldown_until)"""
    return rows(t["contact_status"], "contact_status", "cooldown_until")


def cooldown(t, person_id="p1") -> tuple:
    r = one(t["cooldowns"], person_id=person_id)
    return r["cooldown_until"], str(r["source"]), r["source_event_id"], r["state"]


def invite(event_id, at, person_id="p1", study_id="S1"):
    return event(event_id, person_id, at, "invited", study_id=study_id)


def test_invite_starts_thirty_days_of_exactly_24_hours(tmp_path):
    t = compute(tmp_path, people=[person("p1")], studies=[S1], events=[invite("e1", "2026-03-21T09:30:00Z")])
    assert contact(t)["p1"] == ("in_cooldown", ts("2026-04-20T09:30:00Z"))
    assert cooldown(t) == (ts("2026-04-20T09:30:00Z"), "invite", "e1", "active")


def test_after_invite_days_from_the_job_file(tmp_path):
    t = compute(
        tmp_path,
        "[cooldown]\nafter_invite_days = 7\n",
        people=[person("p1")],
        studies=[S1],
        events=[invite("e1", "2026-03-28T10:15:00Z")],
    )
    assert contact(t)["p1"] == ("in_cooldown", ts("2026-04-04T10:15:00Z"))


def test_completion_starts_ninety_days_from_the_completion_observation(tmp_path):
    t = compute(
        tmp_path,
        people=[person("p1"), person("p2"), person("p3"), person("p4")],
        studies=[S1, S2],
        participants=[
            participant("S1", "p1", "interview_completed", "2026-02-10T00:00:00Z"),
            participant("S1", "p2", "survey_started", "2026-02-01T00:00:00Z"),
            participant("S1", "p3", "test_completed", "2026-01-05T06:00:00Z"),
            # not a completion status
            participant("S1", "p4", "incentive_claimed", "2026-03-01T00:00:00Z"),
        ],
        events=[
            event("e1", "p2", "2026-03-02T08:00:00Z", "participant_status", study_id="S1", value="survey_completed"),
            event("e2", "p2", "2026-03-03T08:00:00Z", "participant_status", study_id="S1", value="incentive_claimed"),
        ],
    )
    assert contact(t) == {
        "p1": ("in_cooldown", ts("2026-05-11T00:00:00Z")),
        "p2": ("in_cooldown", ts("2026-05-31T08:00:00Z")),
        "p3": ("in_cooldown", ts("2026-04-05T06:00:00Z")),
        "p4": ("free_to_contact", None),
    }
    assert cooldown(t, "p2") == (ts("2026-05-31T08:00:00Z"), "completion", "e1", "active")
    # an export row has no event id
    assert cooldown(t, "p1") == (ts("2026-05-11T00:00:00Z"), "completion", None, "active")


@pytest.mark.parametrize(
    ("as_of", "expected"),
    [
        ("2026-04-30", "in_cooldown"),
        ("2026-04-30T23:59:59.999999Z", "in_cooldown"),
        ("2026-05-01T00:00:00Z", "free_to_contact"),
        ("2026-05-01", "free_to_contact"),
    ],
)
def test_manual_cooldown_date_is_inclusive_and_ends_at_the_start_of_the_next_day(tmp_path, as_of, expected):
    t = compute(
        tmp_path,
        as_of=as_of,
        people=[person("p1")],
        events=[event("e1", "p1", "2026-03-01T00:00:00Z", "cooldown_set", value="2026-04-30")],
    )
    assert contact(t)["p1"][0] == expected
    assert cooldown(t)[:3] == (ts("2026-05-01T00:00:00Z"), "manual", "e1")


def test_latest_end_wins_whatever_the_source(tmp_path):
    t = compute(
        tmp_path,
        people=[person("p1"), person("p2")],
        studies=[S1],
        events=[
            invite("e1", "2026-03-21T09:30:00Z"),
            event("e2", "p1", "2026-03-25T00:00:00Z", "cooldown_set", value="2026-04-05"),
            # a later, shorter invite cooldown does not shorten a longer manual one
            event("e3", "p2", "2026-03-01T00:00:00Z", "cooldown_set", value="2026-06-30"),
            invite("e4", "2026-03-25T00:00:00Z", person_id="p2"),
        ],
    )
    assert contact(t) == {
        "p1": ("in_cooldown", ts("2026-04-20T09:30:00Z")),
        "p2": ("in_cooldown", ts("2026-07-01T00:00:00Z")),
    }
    assert cooldown(t, "p1")[1:3] == ("invite", "e1")
    assert cooldown(t, "p2")[1:3] == ("manual", "e3")


def test_after_days_zero_disables_that_cooldown(tmp_path):
    t = compute(
        tmp_path,
        NO_AUTO,
        people=[person("p1"), person("p2")],
        studies=[S1],
        participants=[participant("S1", "p2", "survey_completed", "2026-03-20T00:00:00Z")],
        events=[invite("e1", "2026-03-21T00:00:00Z")],
    )
    assert contact(t) == {"p1": ("free_to_contact", None), "p2": ("free_to_contact", None)}
    assert t["cooldowns"].height == 0


def test_cooldown_cleared_ends_every_cooldown_in_force_and_only_later_starts_count(tmp_path):
    t = compute(
        tmp_path,
        people=[person(f"p{i}") for i in range(1, 6)],
        studies=[S1],
        participants=[participant("S1", "p3", "interview_completed", "2026-03-01T00:00:00Z")],
        events=[
            # invite + manual, then a clear: nothing left
            invite("e01", "2026-03-20T00:00:00Z"),
            event("e02", "p1", "2026-03-20T00:00:00Z", "cooldown_set", value="2026-12-31"),
            event("e03", "p1", "2026-03-25T00:00:00Z", "cooldown_cleared"),
            # a clear, then a new invite: that one counts
            invite("e04", "2026-03-01T00:00:00Z", person_id="p2"),
            event("e05", "p2", "2026-03-10T00:00:00Z", "cooldown_cleared"),
            invite("e06", "2026-03-15T00:00:00Z", person_id="p2"),
            # a completion before the clear
            event("e07", "p3", "2026-03-02T00:00:00Z", "cooldown_cleared"),
            # clear and invite at one instant: the larger event id is later
            invite("e08", "2026-03-20T00:00:00Z", person_id="p4"),
            event("e09", "p4", "2026-03-20T00:00:00Z", "cooldown_cleared"),
            event("e11", "p5", "2026-03-20T00:00:00Z", "cooldown_cleared"),
            invite("e12", "2026-03-20T00:00:00Z", person_id="p5"),
        ],
    )
    assert contact(t) == {
        "p1": ("free_to_contact", None),
        "p2": ("in_cooldown", ts("2026-04-14T00:00:00Z")),
        "p3": ("free_to_contact", None),
        "p4": ("free_to_contact", None),
        "p5": ("in_cooldown", ts("2026-04-19T00:00:00Z")),
    }
    # the cooldowns table only knows cooldowns started after the latest clear
    assert sorted(t["cooldowns"]["person_id"].to_list()) == ["p2", "p5"]
    assert cooldown(t, "p2")[2] == "e06"


LIMIT_INVITES = NO_AUTO + "\n[[cooldown.limits]]\ntrigger = \"invite\"\ncount = 3\nwindow_days = 90\n"


def test_rolling_invite_limit_counts_triggers_in_the_trailing_window(tmp_path):
    t = compute(
        tmp_path,
        LIMIT_INVITES,
        people=[person(f"p{i}") for i in range(1, 5)],
        studies=[S1, S2, S3],
        events=[
            # three within 90 days: in cooldown until the oldest leaves (2026-01-10 + 90 d)
            invite("a1", "2026-01-10T00:00:00Z", "p1", "S1"),
            invite("a2", "2026-02-10T00:00:00Z", "p1", "S2"),
            invite("a3", "2026-03-10T00:00:00Z", "p1", "S3"),
            # only two within any 90 days
            invite("b1", "2025-12-01T00:00:00Z", "p2", "S1"),
            invite("b2", "2026-02-10T00:00:00Z", "p2", "S2"),
            invite("b3", "2026-03-10T00:00:00Z", "p2", "S3"),
            # four: the limit holds until the third most recent leaves
            invite("c1", "2026-01-01T00:00:00Z", "p3", "S1"),
            invite("c2", "2026-01-02T00:00:00Z", "p3", "S2"),
            invite("c3", "2026-01-03T00:00:00Z", "p3", "S3"),
            invite("c4", "2026-03-01T00:00:00Z", "p3", "S1"),
            # two only
            invite("d1", "2026-03-01T00:00:00Z", "p4", "S1"),
            invite("d2", "2026-03-02T00:00:00Z", "p4", "S2"),
        ],
    )
    assert contact(t) == {
        "p1": ("in_cooldown", ts("2026-04-10T00:00:00Z")),
        "p2": ("free_to_contact", None),
        "p3": ("in_cooldown", ts("2026-04-02T00:00:00Z")),
        "p4": ("free_to_contact", None),
    }
    assert cooldown(t, "p1") == (ts("2026-04-10T00:00:00Z"), "limit", "a3", "active")
    assert cooldown(t, "p3")[1:3] == ("limit", "c4")


@pytest.mark.parametrize(
    ("as_of", "expected"),
    [("2026-04-09T23:59:59Z", "in_cooldown"), ("2026-04-10T00:00:00Z", "free_to_contact")],
)
def test_rolling_limit_ends_exactly_when_the_oldest_trigger_leaves(tmp_path, as_of, expected):
    t = compute(
        tmp_path,
        LIMIT_INVITES,
        as_of=as_of,
        people=[person("p1")],
        studies=[S1, S2, S3],
        events=[
            invite("a1", "2026-01-10T00:00:00Z", "p1", "S1"),
            invite("a2", "2026-02-10T00:00:00Z", "p1", "S2"),
            invite("a3", "2026-03-10T00:00:00Z", "p1", "S3"),
        ],
    )
    assert contact(t)["p1"][0] == expected


def test_rolling_completion_limit(tmp_path):
    t = compute(
        tmp_path,
        NO_AUTO + '\n[[cooldown.limits]]\ntrigger = "completion"\ncount = 2\nwindow_days = 180\n',
        people=[person("p1"), person("p2")],
        studies=[S1, S2],
        participants=[
            participant("S1", "p1", "survey_completed", "2026-01-01T00:00:00Z"),
            participant("S2", "p1", "interview_scheduled", "2026-02-01T00:00:00Z"),
            participant("S1", "p2", "survey_completed", "2026-01-01T00:00:00Z"),
        ],
        events=[
            event("e1", "p1", "2026-03-01T00:00:00Z", "participant_status", study_id="S2", value="interview_completed"),
            # invites are not completions
            invite("e2", "2026-03-01T00:00:00Z", "p2", "S2"),
        ],
    )
    assert contact(t) == {"p1": ("in_cooldown", ts("2026-06-30T00:00:00Z")), "p2": ("free_to_contact", None)}
    assert cooldown(t, "p1")[1:3] == ("limit", "e1")


def test_cooldown_until_is_filled_whenever_in_force_even_when_another_status_wins(tmp_path):
    t = compute(
        tmp_path,
        people=[person("p1"), person("p2"), person("p3"), person("p4")],
        studies=[S1],
        participants=[participant("S1", "p3", "study_invited", "2026-03-21T09:30:00Z")],
        events=[
            invite("e1", "2026-03-21T09:30:00Z", "p1"),
            event("e2", "p1", "2026-03-22T00:00:00Z", "opted_out"),
            invite("e3", "2026-03-21T09:30:00Z", "p2"),
            event("e4", "p2", "2026-03-22T00:00:00Z", "blocklist_added"),
            invite("e5", "2026-03-21T09:30:00Z", "p3"),
            invite("e6", "2026-03-21T09:30:00Z", "p4"),
            event("e7", "p4", "2026-03-22T00:00:00Z", "do_not_contact_set"),
        ],
    )
    got = rows(t["contact_status"], "contact_status", "stored_status", "cooldown_until")
    until = ts("2026-04-20T09:30:00Z")
    assert got == {
        "p1": ("opted_out", "opted_out", until),
        "p2": ("in_blocklist", "in_blocklist", until),
        "p3": ("active_in_study", "in_cooldown", until),
        "p4": ("do_not_contact", "do_not_contact", until),
    }


def test_expired_cooldown_leaves_cooldown_until_null(tmp_path):
    t = compute(
        tmp_path,
        people=[person("p1")],
        studies=[S1],
        events=[invite("e1", "2026-01-01T00:00:00Z")],
    )
    assert contact(t)["p1"] == ("free_to_contact", None)
    assert cooldown(t) == (ts("2026-01-31T00:00:00Z"), "invite", "e1", "expired")


def test_cooldowns_table_state_days_left_and_expired_within_last_day(tmp_path, ws):
    ws.write(
        people=[person(f"p{i}") for i in range(1, 6)],
        studies=[S1],
        events=[
            invite("e1", "2026-03-21T09:30:00Z", "p1"),  # until 2026-04-20T09:30: 20 days left
            event("e2", "p2", "2026-03-01T00:00:00Z", "cooldown_set", value="2026-03-30"),  # ended 2026-03-31T00:00
            event("e3", "p3", "2026-03-01T00:00:00Z", "cooldown_set", value="2026-03-29"),  # ended 2026-03-30T00:00
            event("e4", "p4", "2026-03-01T00:00:00Z", "cooldown_set", value="2026-03-31"),  # ends 2026-04-01T00:00
        ],
    )
    ws.run(as_of="2026-03-31")
    got = {
        r[0]: r[1:]
        for r in ws.query(
            "select person_id, as_of, cooldown_until, source, source_event_id, state, days_left, expired_within_last_day "
            "from cooldowns order by person_id"
        )
    }
    d = date(2026, 3, 31)
    assert got == {
        "p1": (d, ts("2026-04-20T09:30:00Z").replace(tzinfo=None), "invite", "e1", "active", 20, False),
        "p2": (d, ts("2026-03-31T00:00:00Z").replace(tzinfo=None), "manual", "e2", "expired", 0, True),
        "p3": (d, ts("2026-03-30T00:00:00Z").replace(tzinfo=None), "manual", "e3", "expired", -1, False),
        "p4": (d, ts("2026-04-01T00:00:00Z").replace(tzinfo=None), "manual", "e4", "active", 1, False),
    }


def test_expired_within_last_day_with_a_timestamp_as_of(tmp_path, ws):
    ws.write(
        people=[person("p1"), person("p2")],
        studies=[S1],
        events=[
            invite("e1", "2026-03-01T12:00:00Z", "p1"),  # until 2026-03-31T12:00
            invite("e2", "2026-03-01T11:59:59Z", "p2"),  # until 2026-03-31T11:59:59
        ],
    )
    ws.run(as_of="2026-04-01T12:00:00Z")
    got = dict(ws.query("select person_id, expired_within_last_day from cooldowns"))
    # (T - 24 h, T]: 2026-03-31T12:00 is exactly 24 h before T, so it is not within the last day
    assert got == {"p1": False, "p2": False}
    ws.run(as_of="2026-04-01T11:59:59Z")
    got = dict(ws.query("select person_id, expired_within_last_day from cooldowns where as_of = '2026-04-01'"))
    assert got == {"p1": True, "p2": False}


def test_a_tie_on_the_latest_end_goes_to_the_later_start(tmp_path):
    t = compute(
        tmp_path,
        as_of="2026-03-10",
        people=[person("p1"), person("p2")],
        studies=[S1],
        events=[
            event("e1", "p1", "2026-02-15T00:00:00Z", "cooldown_set", value="2026-03-30"),  # ends 03-31T00:00Z
            invite("e2", "2026-03-01T00:00:00Z", "p1"),  # ends 03-31T00:00Z
            invite("e3", "2026-02-15T00:00:00Z", "p2"),  # ends 03-17T00:00Z
            event("e4", "p2", "2026-03-05T00:00:00Z", "cooldown_set", value="2026-03-16"),  # ends 03-17T00:00Z
        ],
    )
    assert cooldown(t, "p1") == (ts("2026-03-31T00:00:00Z"), "invite", "e2", "active")
    assert cooldown(t, "p2") == (ts("2026-03-17T00:00:00Z"), "manual", "e4", "active")


def test_no_limit_cooldown_when_the_oldest_trigger_leaves_the_window_at_the_new_one(tmp_path):
    t = compute(
        tmp_path,
        NO_AUTO + '\n[[cooldown.limits]]\ntrigger = "invite"\ncount = 2\nwindow_days = 10\n',
        people=[person("p1")],
        studies=[S1, S2],
        events=[invite("e1", "2026-03-01T12:00:00Z"), invite("e2", "2026-03-11T12:00:00Z", study_id="S2")],
    )
    assert contact(t)["p1"] == ("free_to_contact", None)
    assert t["cooldowns"]["person_id"].to_list() == []
