"""§3.2 contact status: components, precedence, stored_status, overridable, can_contact, reason (§7.9)."""

from __future__ import annotations

import itertools

import pytest
from conftest import compute, event, participant, person, rows, study, ts

S1 = study("S1")


def status(t) -> dict:
    """person_id -> (contact_status, stored_status)"""
    return rows(t["contact_status"], "contact_status", "stored_status")


def row(t, person_id: str) -> dict:
    found = [r for r in t["contact_status"].iter_rows(named=True) if r["person_id"] == person_id]
    assert len(found) == 1, person_id
    return found[0]


# --- opted_out ---------------------------------------------------------------------------------


def test_opted_out_latest_of_opt_out_and_revoke_hard_bounce_and_unsubscribe(tmp_path):
    people = [person(f"p{i}") for i in range(1, 11)]
    t = compute(
        tmp_path,
        people=people,
        studies=[S1, study("S2")],
        participants=[
            # hard bounce after the latest revoke: uncontactable
            participant("S1", "p4", "hard_bounced", "2026-03-05T00:00:00Z"),
            # hard bounce before the revoke: the revoke clears it
            participant("S1", "p5", "hard_bounced", "2026-02-01T00:00:00Z"),
            # a hard bounce with no opt-out history at all
            participant("S1", "p8", "hard_bounced", "2026-02-01T00:00:00Z"),
            # hard bounced, then the participant moved on: the bounce still counts
            participant("S1", "p9", "study_invited", "2026-03-10T00:00:00Z"),
        ],
        events=[
            event("e01", "p1", "2026-03-01T00:00:00Z", "opted_out", reason="asked by phone"),
            event("e02", "p2", "2026-03-01T00:00:00Z", "opted_out"),
            event("e03", "p2", "2026-03-02T00:00:00Z", "opt_out_revoked"),
            event("e04", "p3", "2026-03-01T00:00:00Z", "opt_out_revoked"),
            event("e05", "p3", "2026-03-02T00:00:00Z", "opted_out"),
            event("e06", "p4", "2026-03-01T00:00:00Z", "opt_out_revoked"),
            event("e07", "p5", "2026-03-01T00:00:00Z", "opt_out_revoked"),
            event("e08", "p6", "2026-03-01T00:00:00Z", "unsubscribed", value="newsletter"),
            event("e09", "p7", "2026-03-01T00:00:00Z", "opted_out"),
            event("e10", "p7", "2026-03-02T00:00:00Z", "unsubscribed", value="newsletter"),
            event("e11", "p9", "2026-03-01T00:00:00Z", "participant_status", study_id="S1", value="hard_bounced"),
            # opt-out after T does not exist yet
            event("e12", "p10", "2026-04-01T00:00:00Z", "opted_out"),
        ],
    )
    assert status(t) == {
        "p1": ("opted_out", "opted_out"),
        "p2": ("free_to_contact", "free_to_contact"),
        "p3": ("opted_out", "opted_out"),
        "p4": ("opted_out", "opted_out"),
        "p5": ("free_to_contact", "free_to_contact"),
        "p6": ("free_to_contact", "free_to_contact"),
        "p7": ("opted_out", "opted_out"),
        "p8": ("opted_out", "opted_out"),
        "p9": ("opted_out", "opted_out"),
        "p10": ("free_to_contact", "free_to_contact"),
    }
    r1 = row(t, "p1")
    assert (r1["overridable"], r1["can_contact"], r1["cooldown_until"]) == (False, False, None)
    assert "e01" in r1["reason"] and "opt" in r1["reason"]
    assert "S1" in row(t, "p4")["reason"] and "bounce" in row(t, "p4")["reason"]


def test_opt_out_and_revoke_at_one_instant_larger_event_id_wins(tmp_path):
    same = "2026-03-01T00:00:00Z"
    t = compute(
        tmp_path,
        people=[person("p1"), person("p2"), person("p3")],
        studies=[S1],
        participants=[participant("S1", "p3", "hard_bounced", same)],
        events=[
            event("b", "p1", same, "opt_out_revoked"),
            event("a", "p1", same, "opted_out"),
            event("a", "p2", same, "opt_out_revoked") | {"event_id": "c"},
            event("d", "p2", same, "opted_out"),
            # the export row (no event id) is earliest at its instant: the revoke is after the bounce
            event("e", "p3", same, "opt_out_revoked"),
        ],
    )
    assert status(t)["p1"][0] == "free_to_contact"
    assert status(t)["p2"][0] == "opted_out"
    assert status(t)["p3"][0] == "free_to_contact"


# --- blocklist ---------------------------------------------------------------------------------


def _no_show(event_id, person_id, at, study_id):
    return event(event_id, person_id, at, "participant_status", study_id=study_id, value="no_showed")


def _participants_for(person_ids, studies=("S1", "S2", "S3")):
    return [participant(s, p, "interview_scheduled", "2026-01-10T00:00:00Z") for p in person_ids for s in studies]


def test_blocklist_manual_and_no_show_rule_default_threshold(tmp_path):
    ids = [f"p{i}" for i in range(1, 9)]
    t = compute(
        tmp_path,
        people=[person(p) for p in ids],
        studies=[study("S1"), study("S2"), study("S3")],
        participants=_participants_for(ids),
        events=[
            event("e01", "p1", "2026-03-01T00:00:00Z", "blocklist_added", reason="rude"),
            event("e02", "p2", "2026-03-01T00:00:00Z", "blocklist_added"),
            event("e03", "p2", "2026-03-02T00:00:00Z", "blocklist_removed"),
            # two no-shows: blocklisted from the second one
            _no_show("e04", "p3", "2026-02-01T00:00:00Z", "S1"),
            _no_show("e05", "p3", "2026-02-05T00:00:00Z", "S2"),
            # one no-show only
            _no_show("e06", "p4", "2026-02-01T00:00:00Z", "S1"),
            # a removal resets the count
            _no_show("e07", "p5", "2026-02-01T00:00:00Z", "S1"),
            event("e08", "p5", "2026-02-15T00:00:00Z", "blocklist_removed"),
            _no_show("e09", "p5", "2026-03-01T00:00:00Z", "S2"),
            # the rule fired, then a removal: out, and old no-shows do not fire it again
            _no_show("e10", "p6", "2026-02-01T00:00:00Z", "S1"),
            _no_show("e11", "p6", "2026-02-05T00:00:00Z", "S2"),
            event("e12", "p6", "2026-02-10T00:00:00Z", "blocklist_removed"),
            # sticky: later statuses of the same studies do not take it away
            _no_show("e13", "p7", "2026-02-01T00:00:00Z", "S1"),
            _no_show("e14", "p7", "2026-02-05T00:00:00Z", "S2"),
            event("e15", "p7", "2026-03-01T00:00:00Z", "participant_status", study_id="S1", value="interview_scheduled"),
            event("e16", "p7", "2026-03-01T00:00:00Z", "participant_status", study_id="S2", value="interview_completed"),
            # two no-shows in one study (rescheduled in between) are two no-shows
            _no_show("e17", "p8", "2026-02-01T00:00:00Z", "S1"),
            event("e18", "p8", "2026-02-03T00:00:00Z", "participant_status", study_id="S1", value="interview_scheduled"),
            _no_show("e19", "p8", "2026-02-05T00:00:00Z", "S1"),
        ],
    )
    got = {p: s[0] for p, s in status(t).items()}
    assert got == {
        "p1": "in_blocklist",
        "p2": "active_in_study",
        "p3": "in_blocklist",
        "p4": "active_in_study",
        "p5": "active_in_study",
        "p6": "active_in_study",
        "p7": "in_blocklist",
        "p8": "in_blocklist",
    }
    assert status(t)["p7"][1] == "in_blocklist"
    r1, r3 = row(t, "p1"), row(t, "p3")
    assert (r1["overridable"], r1["can_contact"]) == (False, False)
    assert "e01" in r1["reason"]
    assert "no-show" in r3["reason"] and "e05" in r3["reason"]


def test_blocklist_outranks_active_in_study_but_lists_the_studies(tmp_path):
    t = compute(
        tmp_path,
        people=[person("p1")],
        studies=[S1],
        participants=[participant("S1", "p1", "screener_started", "2026-03-01T00:00:00Z")],
        events=[event("e1", "p1", "2026-03-02T00:00:00Z", "blocklist_added")],
    )
    r = row(t, "p1")
    assert (r["contact_status"], r["stored_status"], r["active_study_ids"]) == ("in_blocklist", "in_blocklist", ["S1"])


@pytest.mark.parametrize(
    ("threshold", "no_shows", "expected"),
    [(0, 5, "free_to_contact"), (1, 1, "in_blocklist"), (3, 2, "free_to_contact"), (3, 3, "in_blocklist")],
)
def test_no_show_threshold_from_the_job_file(tmp_path, threshold, no_shows, expected):
    studies = [study(f"S{i}", closed_at="2026-03-01T00:00:00Z") for i in range(1, 6)]
    t = compute(
        tmp_path,
        f"[blocklist]\nno_show_threshold = {threshold}\n",
        people=[person("p1")],
        studies=studies,
        participants=[participant(s["study_id"], "p1", "interview_scheduled", "2026-01-10T00:00:00Z") for s in studies],
        events=[_no_show(f"e{i}", "p1", f"2026-02-0{i}T00:00:00Z", f"S{i}") for i in range(1, no_shows + 1)],
    )
    assert status(t)["p1"][0] == expected


def test_no_show_rule_fires_from_the_last_needed_no_show_not_earlier(tmp_path):
    studies = [study("S1"), study("S2")]
    kw = dict(
        people=[person("p1")],
        studies=studies,
        participants=[participant(s["study_id"], "p1", "interview_scheduled", "2026-01-10T00:00:00Z") for s in studies],
        events=[_no_show("e1", "p1", "2026-02-01T00:00:00Z", "S1"), _no_show("e2", "p1", "2026-03-01T00:00:00Z", "S2")],
    )
    # between the two no-shows: S2 still scheduled, so active in S2 only
    t = compute(tmp_path / "a", as_of="2026-02-15", **kw)
    assert status(t)["p1"][0] == "active_in_study"
    assert compute(tmp_path / "b", as_of="2026-03-01", **kw)["contact_status"]["contact_status"].to_list() == [
        "in_blocklist"
    ]


# --- active_in_study ---------------------------------------------------------------------------


def test_active_in_study_open_non_terminal_started_participations(tmp_path):
    ids = [f"p{i}" for i in range(1, 9)]
    t = compute(
        tmp_path,
        people=[person(p) for p in ids],
        studies=[
            study("S1"),
            study("S2"),
            study("CLOSED", closed_at="2026-03-15T00:00:00Z"),
            study("LATER", opened_at="2026-04-15T00:00:00Z"),
        ],
        participants=[
            participant("S1", "p1", "survey_started", "2026-03-01T00:00:00Z"),
            participant("S1", "p2", "not_contacted", None),
            participant("S1", "p3", "not_eligible", "2026-03-01T00:00:00Z"),
            participant("S1", "p4", "incentive_claimed", "2026-03-01T00:00:00Z"),
            participant("CLOSED", "p5", "interview_scheduled", "2026-03-01T00:00:00Z"),
            participant("LATER", "p6", "study_invited", "2026-03-01T00:00:00Z"),
            # several studies: sorted ids
            participant("S2", "p7", "study_invited", "2026-03-01T00:00:00Z"),
            participant("S1", "p7", "incentive_sent", "2026-03-01T00:00:00Z"),
            participant("CLOSED", "p7", "interview_scheduled", "2026-03-01T00:00:00Z"),
            # an export status after T does not make anyone active
            participant("S1", "p8", "study_invited", "2026-04-02T00:00:00Z"),
        ],
    )
    got = rows(t["contact_status"], "contact_status", "stored_status", "active_study_ids", "overridable", "can_contact")
    free = ("free_to_contact", "free_to_contact", [], None, True)
    assert got == {
        "p1": ("active_in_study", "free_to_contact", ["S1"], True, False),
        "p2": free,
        "p3": free,
        "p4": free,
        "p5": free,
        "p6": free,
        "p7": ("active_in_study", "free_to_contact", ["S1", "S2"], True, False),
        "p8": free,
    }
    reason = row(t, "p7")["reason"]
    assert "S1" in reason and "S2" in reason


def test_active_in_study_reverts_to_stored_cooldown_when_the_study_closes(tmp_path):
    kw = dict(
        people=[person("p1")],
        studies=[study("S1", closed_at="2026-03-20T00:00:00Z")],
        participants=[participant("S1", "p1", "interview_scheduled", "2026-03-05T00:00:00Z")],
        events=[event("e1", "p1", "2026-03-05T00:00:00Z", "invited", study_id="S1")],
    )
    before = row(compute(tmp_path / "a", as_of="2026-03-19", **kw), "p1")
    after = row(compute(tmp_path / "b", as_of="2026-03-20", **kw), "p1")
    until = ts("2026-04-04T00:00:00Z")
    assert (before["contact_status"], before["stored_status"], before["active_study_ids"], before["cooldown_until"]) == (
        "active_in_study",
        "in_cooldown",
        ["S1"],
        until,
    )
    assert (after["contact_status"], after["stored_status"], after["active_study_ids"], after["cooldown_until"]) == (
        "in_cooldown",
        "in_cooldown",
        [],
        until,
    )


def test_active_in_study_reverts_when_the_participant_reaches_a_terminal_stage(tmp_path):
    t = compute(
        tmp_path,
        "[cooldown]\nafter_invite_days = 0\nafter_completion_days = 0\n",
        people=[person("p1")],
        studies=[S1],
        participants=[participant("S1", "p1", "survey_started", "2026-03-01T00:00:00Z")],
        events=[event("e1", "p1", "2026-03-10T00:00:00Z", "participant_status", study_id="S1", value="survey_completed")],
    )
    assert rows(t["contact_status"], "contact_status", "active_study_ids")["p1"] == ("free_to_contact", [])


# --- do_not_contact ----------------------------------------------------------------------------

DNC_RULES = """
[[do_not_contact]]
name = "minors"
when = "age < 18"

[[do_not_contact]]
name = "dach"
when = "country in ('DE', 'AT')"
"""


def test_do_not_contact_rules_and_manual_flag(tmp_path):
    t = compute(
        tmp_path,
        DNC_RULES,
        people=[
            person("p1", age=15, country="US"),
            person("p2", age=34, country="US"),
            person("p3", age=None, country=None),
            person("p4", age=40, country="DE"),
            person("p5", age=40, country="US"),
            person("p6", age=40, country="US"),
            person("p7", age=40, country="US"),
            person("p8", age=16, country="AT"),
        ],
        events=[
            event("e1", "p5", "2026-03-01T00:00:00Z", "do_not_contact_set", reason="legal hold"),
            event("e2", "p6", "2026-03-01T00:00:00Z", "do_not_contact_set"),
            event("e3", "p6", "2026-03-02T00:00:00Z", "do_not_contact_cleared"),
            event("e4", "p7", "2026-03-01T00:00:00Z", "do_not_contact_cleared"),
            event("e5", "p7", "2026-03-02T00:00:00Z", "do_not_contact_set"),
        ],
    )
    got = rows(t["contact_status"], "contact_status", "stored_status", "overridable", "can_contact")
    dnc = ("do_not_contact", "do_not_contact", True, False)
    free = ("free_to_contact", "free_to_contact", None, True)
    assert got == {"p1": dnc, "p2": free, "p3": free, "p4": dnc, "p5": dnc, "p6": free, "p7": dnc, "p8": dnc}
    assert "minors" in row(t, "p1")["reason"]
    assert "dach" in row(t, "p4")["reason"]
    assert "minors" in row(t, "p8")["reason"] and "dach" in row(t, "p8")["reason"]
    assert "e1" in row(t, "p5")["reason"]


def test_manual_do_not_contact_clear_does_not_override_a_matching_rule(tmp_path):
    t = compute(
        tmp_path,
        DNC_RULES,
        people=[person("p1", age=15, country="US")],
        events=[event("e1", "p1", "2026-03-02T00:00:00Z", "do_not_contact_cleared")],
    )
    assert status(t)["p1"] == ("do_not_contact", "do_not_contact")


def test_do_not_contact_rules_read_the_export_as_it_is_even_a_visit_after_t(tmp_path):
    """§2: rules are evaluated on the people export. A nightly run is as of yesterday, so today's
    visits are in the export: the channel model ignores them, the rules must not (a `last_seen_on is
    null` rule once marked everyone seen today as never seen)."""
    rules = """
[[do_not_contact]]
name = "never_seen"
when = "last_seen_on is null"

[[do_not_contact]]
name = "seen_lately"
when = "last_seen_on >= '2026-04-01'"
"""
    t = compute(
        tmp_path,
        rules,
        people=[person("p1", last_seen_on="2026-04-01"), person("p2", last_seen_on="2026-03-30"), person("p3")],
    )
    assert rows(t["contact_status"], "contact_status", "reason") == {
        "p1": ("do_not_contact", "do-not-contact rule 'seen_lately'"),
        "p2": ("free_to_contact", "no opt-out, blocklist, active study, do-not-contact or cooldown applies"),
        "p3": ("do_not_contact", "do-not-contact rule 'never_seen'"),
    }
    assert rows(t["channel_status"], "last_seen_on")["p1"] == (None,)


# --- precedence, stored_status, overridable, can_contact, cooldown_until -----------------------

COMPONENTS = ("opted_out", "in_blocklist", "active_in_study", "do_not_contact", "in_cooldown")


def test_precedence_over_every_combination_of_components(tmp_path):
    people, participants, events, expected = [], [], [], {}
    for n, combo in enumerate(itertools.product([False, True], repeat=len(COMPONENTS))):
        pid = f"p{n:02d}"
        on = dict(zip(COMPONENTS, combo, strict=True))
        people.append(person(pid))
        if on["opted_out"]:
            events.append(event(f"{pid}-o", pid, "2026-03-01T00:00:00Z", "opted_out"))
        if on["in_blocklist"]:
            events.append(event(f"{pid}-b", pid, "2026-03-01T00:00:00Z", "blocklist_added"))
        if on["active_in_study"]:
            participants.append(participant("S1", pid, "screener_qualified", "2026-03-01T00:00:00Z"))
        if on["do_not_contact"]:
            events.append(event(f"{pid}-d", pid, "2026-03-01T00:00:00Z", "do_not_contact_set"))
        if on["in_cooldown"]:
            events.append(event(f"{pid}-c", pid, "2026-03-01T00:00:00Z", "cooldown_set", value="2026-12-31"))
        contact = next((c for c in COMPONENTS if on[c]), "free_to_contact")
        stored = next((c for c in COMPONENTS if on[c] and c != "active_in_study"), "free_to_contact")
        overridable = {"opted_out": False, "in_blocklist": False, "free_to_contact": None}.get(contact, True)
        expected[pid] = (
            contact,
            stored,
            ["S1"] if on["active_in_study"] else [],
            overridable,
            contact == "free_to_contact",
            ts("2027-01-01T00:00:00Z") if on["in_cooldown"] else None,
        )
    t = compute(tmp_path, people=people, studies=[S1], participants=participants, events=events)
    got = rows(
        t["contact_status"],
        "contact_status",
        "stored_status",
        "active_study_ids",
        "overridable",
        "can_contact",
        "cooldown_until",
    )
    assert got == expected
    assert all(r["reason"] for r in t["contact_status"].iter_rows(named=True))


def test_reason_names_the_cooldown_end_source_and_event(tmp_path):
    t = compute(
        tmp_path,
        people=[person("p1")],
        studies=[S1],
        events=[event("inv-7", "p1", "2026-03-21T09:30:00Z", "invited", study_id="S1")],
    )
    reason = row(t, "p1")["reason"]
    assert "2026-04-20" in reason and "inv-7" in reason and "S1" in reason


# --- backfill ----------------------------------------------------------------------------------


def test_people_created_after_t_are_absent_and_later_facts_ignored(tmp_path):
    kw = dict(
        people=[person("p1", created_at="2026-01-01T00:00:00Z"), person("p2", created_at="2026-03-15T08:00:00Z")],
        events=[event("e1", "p1", "2026-03-10T00:00:00Z", "opted_out")],
    )
    early = compute(tmp_path / "a", as_of="2026-03-09", **kw)
    assert status(early) == {"p1": ("free_to_contact", "free_to_contact")}
    mid = compute(tmp_path / "b", as_of="2026-03-15T07:59:59Z", **kw)
    assert status(mid) == {"p1": ("opted_out", "opted_out")}
    late = compute(tmp_path / "c", as_of="2026-03-15T08:00:00Z", **kw)
    assert set(status(late)) == {"p1", "p2"}


def test_as_of_a_date_is_the_end_of_that_utc_day_and_a_timestamp_is_exact(tmp_path):
    kw = dict(
        people=[person("p1")],
        studies=[S1],
        events=[event("e1", "p1", "2026-03-01T12:00:00Z", "invited", study_id="S1")],
    )
    # invite + 30 days = 2026-03-31T12:00Z
    assert status(compute(tmp_path / "a", as_of="2026-03-31T11:59:59Z", **kw))["p1"][0] == "in_cooldown"
    assert status(compute(tmp_path / "b", as_of="2026-03-31T13:59:59+02:00", **kw))["p1"][0] == "in_cooldown"
    assert status(compute(tmp_path / "c", as_of="2026-03-31T12:00:00Z", **kw))["p1"][0] == "free_to_contact"
    assert status(compute(tmp_path / "d", as_of="2026-03-31", **kw))["p1"][0] == "free_to_contact"
    assert status(compute(tmp_path / "e", as_of="2026-03-30", **kw))["p1"][0] == "in_cooldown"


def test_no_show_rule_reason_names_the_no_show_that_fired_not_a_later_one(tmp_path):
    t = compute(
        tmp_path,
        people=[person("p1")],
        studies=[S1, study("S2"), study("S3")],
        participants=[
            participant("S1", "p1", "no_showed", "2026-02-01T10:00:00Z"),
            participant("S2", "p1", "no_showed", "2026-02-02T10:00:00Z"),  # the 2nd: the rule fires here
            participant("S3", "p1", "no_showed", "2026-02-03T10:00:00Z"),  # a 3rd changes nothing
        ],
    )
    r = row(t, "p1")
    assert r["contact_status"] == "in_blocklist"
    assert r["reason"] == "no-show rule: 2 no-shows since the latest removal, the last in study S2 on 2026-02-02T10:00:00Z"


def test_an_export_row_repeating_the_events_no_show_is_one_no_show(tmp_path):
    t = compute(
        tmp_path,
        people=[person("p1")],
        studies=[S1],
        participants=[participant("S1", "p1", "no_showed", "2026-02-01T10:00:00Z")],
        events=[event("e1", "p1", "2026-02-01T10:00:00Z", "participant_status", study_id="S1", value="no_showed")],
    )
    assert status(t)["p1"] == ("free_to_contact", "free_to_contact")
    h = t["contact_status_history"]
    assert h.filter(h["person_id"] == "p1")["contact_status"].cast(str).to_list() == ["free_to_contact"]
