"""§3.1 participant status and stage, study open/closed, study_progress (§7.11)."""

from __future__ import annotations

import pytest
from conftest import compute, event, one, participant, person, study, ts

from statusbatch import codes

PEOPLE = [person("p1"), person("p2"), person("p3"), person("p4"), person("p5")]


def status_of(tables, study_id="S1", person_id="p1"):
    row = one(tables["participant_status"], study_id=study_id, person_id=person_id)
    return row["participant_status"], row["stage"], row["is_terminal"], row["observed_at"]


def test_later_event_beats_earlier_export_row_and_later_export_row_beats_earlier_event(tmp_path):
    t = compute(
        tmp_path,
        people=PEOPLE,
        studies=[study("S1")],
        participants=[
            participant("S1", "p1", "study_invited", "2026-03-10T00:00:00Z"),
            participant("S1", "p2", "study_invited", "2026-03-10T00:00:00Z"),
        ],
        events=[
            event("e1", "p1", "2026-03-15T00:00:00Z", "participant_status", study_id="S1", value="screener_started"),
            event("e2", "p2", "2026-03-05T00:00:00Z", "participant_status", study_id="S1", value="screener_started"),
        ],
    )
    assert status_of(t, person_id="p1") == ("screener_started", "screening", False, ts("2026-03-15T00:00:00Z"))
    assert status_of(t, person_id="p2") == ("study_invited", "invited", False, ts("2026-03-10T00:00:00Z"))


def test_event_wins_a_tie_with_the_export_row(tmp_path):
    t = compute(
        tmp_path,
        people=PEOPLE,
        studies=[study("S1")],
        participants=[participant("S1", "p1", "interview_completed", "2026-03-10T12:00:00Z")],
        events=[event("e1", "p1", "2026-03-10T12:00:00Z", "participant_status", study_id="S1", value="no_showed")],
    )
    assert status_of(t) == ("no_showed", "cancelled", True, ts("2026-03-10T12:00:00Z"))


def test_export_row_dated_after_t_is_ignored(tmp_path):
    t = compute(
        tmp_path,
        people=PEOPLE,
        studies=[study("S1")],
        participants=[
            participant("S1", "p1", "interview_completed", "2026-04-05T00:00:00Z"),
            participant("S1", "p2", "interview_completed", "2026-04-05T00:00:00Z"),
        ],
        events=[event("e1", "p1", "2026-03-01T00:00:00Z", "participant_status", study_id="S1", value="study_invited")],
    )
    assert status_of(t, person_id="p1") == ("study_invited", "invited", False, ts("2026-03-01T00:00:00Z"))
    # No observation at or before T: not_contacted, observed nowhere.
    assert status_of(t, person_id="p2") == ("not_contacted", "not_started", False, None)


def test_export_row_without_status_updated_at_is_observed_at_added_at(tmp_path):
    t = compute(
        tmp_path,
        people=PEOPLE,
        studies=[study("S1")],
        participants=[participant("S1", "p1", "survey_started", None, added="2026-02-03T04:05:06Z")],
    )
    assert status_of(t) == ("survey_started", "in_progress", False, ts("2026-02-03T04:05:06Z"))


def test_events_at_one_instant_are_ordered_by_event_id_not_file_order(tmp_path):
    same = "2026-03-10T09:00:00Z"
    t = compute(
        tmp_path,
        people=PEOPLE,
        studies=[study("S1")],
        participants=[
            participant("S1", "p1", "study_invited", "2026-03-01T00:00:00Z"),
            participant("S1", "p2", "study_invited", "2026-03-01T00:00:00Z"),
        ],
        events=[
            # The larger id is the later one, whatever the order in the file.
            event("ev-b", "p1", same, "participant_status", study_id="S1", value="interview_scheduled"),
            event("ev-a", "p1", same, "participant_status", study_id="S1", value="canceled"),
            event("ev-c", "p2", same, "participant_status", study_id="S1", value="canceled"),
            event("ev-d", "p2", same, "participant_status", study_id="S1", value="interview_scheduled"),
        ],
    )
    assert status_of(t, person_id="p1")[0] == "interview_scheduled"
    assert status_of(t, person_id="p2")[0] == "interview_scheduled"


def test_events_after_t_are_ignored_for_a_full_timestamp_as_of(tmp_path):
    kw = dict(
        people=PEOPLE,
        studies=[study("S1")],
        participants=[participant("S1", "p1", "study_invited", "2026-03-01T00:00:00Z")],
        events=[event("e1", "p1", "2026-03-20T10:00:00Z", "participant_status", study_id="S1", value="test_started")],
    )
    assert status_of(compute(tmp_path / "a", as_of="2026-03-20T09:59:59Z", **kw))[0] == "study_invited"
    assert status_of(compute(tmp_path / "b", as_of="2026-03-20T10:00:00Z", **kw))[0] == "test_started"
    # A date means the end of that UTC day.
    assert status_of(compute(tmp_path / "c", as_of="2026-03-20", **kw))[0] == "test_started"
    assert status_of(compute(tmp_path / "d", as_of="2026-03-19", **kw))[0] == "study_invited"


def test_participants_added_after_t_and_people_created_after_t_do_not_exist(tmp_path):
    t = compute(
        tmp_path,
        as_of="2026-03-31",
        people=[person("p1"), person("late", created_at="2026-04-01T00:00:00Z")],
        studies=[study("S1")],
        participants=[
            participant("S1", "p1", "study_invited", added="2026-04-01T00:00:00Z"),
            participant("S1", "late", "study_invited", added="2026-03-01T00:00:00Z"),
        ],
    )
    assert t["participant_status"].height == 0
    assert one(t["study_progress"], study_id="S1")["participants"] == 0


@pytest.mark.parametrize("code", list(codes.PARTICIPANT_STATUSES))
def test_every_status_has_its_stage(tmp_path, code):
    expected_stage = {
        **dict.fromkeys(["not_contacted", "not_eligible"], "not_started"),
        **dict.fromkeys(["study_invited", "soft_bounced"], "invited"),
        **dict.fromkeys(["screener_started", "screener_qualified", "screener_completed"], "screening"),
        **dict.fromkeys(
            ["interview_invited", "interview_scheduled", "test_invited", "test_started", "survey_started"], "in_progress"
        ),
        **dict.fromkeys(["incentive_not_sent", "incentive_sent"], "pending_incentive"),
        **dict.fromkeys(
            ["interview_completed", "test_completed", "survey_completed", "incentive_claimed", "screener_not_qualified"],
            "done",
        ),
        **dict.fromkeys(["canceled", "opted_out", "hard_bounced", "interview_canceled", "no_showed"], "cancelled"),
    }
    assert len(expected_stage) == 24
    t = compute(
        tmp_path,
        people=PEOPLE,
        studies=[study("S1")],
        participants=[participant("S1", "p1", code, "2026-03-01T00:00:00Z")],
    )
    stage = expected_stage[code]
    assert status_of(t)[:3] == (code, stage, stage in ("done", "cancelled"))


def test_study_open_closed_and_not_yet_opened(tmp_path):
    t = compute(
        tmp_path,
        as_of="2026-03-31T12:00:00Z",
        people=PEOPLE,
        studies=[
            study("open_no_dates", opened_at=None, closed_at=None),
            study("open", opened_at="2026-03-31T12:00:00Z", closed_at="2026-03-31T12:00:01Z"),
            study("closed_at_t", opened_at="2026-01-01T00:00:00Z", closed_at="2026-03-31T12:00:00Z"),
            study("not_yet", opened_at="2026-03-31T12:00:01Z"),
            study("closes_later_only", opened_at=None, closed_at="2026-04-30T00:00:00Z"),
        ],
    )
    is_open = {r["study_id"]: r["is_open"] for r in t["study_progress"].iter_rows(named=True)}
    assert is_open == {
        "open_no_dates": True,
        "open": True,
        "closed_at_t": False,
        "not_yet": False,
        "closes_later_only": True,
    }


def test_study_progress_counts_bookings_completions_and_limit(tmp_path):
    people = [person(f"p{i}") for i in range(1, 10)]
    t = compute(
        tmp_path,
        people=people,
        studies=[
            study("S1", participation_limit=3),
            study("S2", participation_limit=2),
            study("S3"),
        ],
        participants=[
            participant("S1", "p1", "interview_scheduled", "2026-03-01T00:00:00Z"),
            participant("S1", "p2", "interview_completed", "2026-03-01T00:00:00Z"),
            # Completed, then moved on to the incentive: still an interview completed.
            participant("S1", "p3", "interview_completed", "2026-03-01T00:00:00Z"),
            participant("S1", "p4", "not_contacted", None),
            participant("S1", "p5", "no_showed", "2026-03-01T00:00:00Z"),
            participant("S1", "p6", "study_invited", "2026-03-01T00:00:00Z"),
            participant("S1", "p7", "screener_qualified", "2026-03-01T00:00:00Z"),
            # Added after T: not counted.
            participant("S1", "p8", "interview_scheduled", "2026-03-01T00:00:00Z", added="2026-04-02T00:00:00Z"),
            participant("S2", "p1", "survey_completed", "2026-03-01T00:00:00Z"),
            participant("S2", "p2", "interview_scheduled", "2026-03-01T00:00:00Z"),
            participant("S3", "p1", "interview_completed", "2026-03-01T00:00:00Z"),
        ],
        events=[
            event("e1", "p3", "2026-03-05T00:00:00Z", "participant_status", study_id="S1", value="incentive_sent"),
            # Scheduled then cancelled: not booked any more.
            event("e2", "p6", "2026-03-02T00:00:00Z", "participant_status", study_id="S1", value="interview_scheduled"),
            event("e3", "p6", "2026-03-03T00:00:00Z", "participant_status", study_id="S1", value="interview_canceled"),
        ],
    )
    s1 = one(t["study_progress"], study_id="S1")
    assert {k: v for k, v in s1.items() if k.startswith("stage_") or k in (
        "participants", "interviews_booked", "interviews_completed", "limit_reached", "is_open")} == {
        "is_open": True,
        "participants": 7,
        "stage_not_started": 1,
        "stage_invited": 0,
        "stage_screening": 1,
        "stage_in_progress": 1,
        "stage_pending_incentive": 1,
        "stage_done": 1,
        "stage_cancelled": 2,
        "interviews_booked": 1,
        "interviews_completed": 2,
        # 2 completed + 1 scheduled >= 3
        "limit_reached": True,
    }
    s2 = one(t["study_progress"], study_id="S2")
    # completed in any kind (a survey) + scheduled = 2 >= 2
    assert (s2["interviews_completed"], s2["interviews_booked"], s2["limit_reached"]) == (0, 1, True)
    s3 = one(t["study_progress"], study_id="S3")
    assert (s3["participants"], s3["interviews_completed"], s3["limit_reached"]) == (1, 1, False)


def test_limit_not_reached_below_the_limit(tmp_path):
    t = compute(
        tmp_path,
        people=PEOPLE,
        studies=[study("S1", participation_limit=3)],
        participants=[
            participant("S1", "p1", "interview_scheduled", "2026-03-01T00:00:00Z"),
            participant("S1", "p2", "test_completed", "2026-03-01T00:00:00Z"),
            participant("S1", "p3", "interview_invited", "2026-03-01T00:00:00Z"),
        ],
    )
    row = one(t["study_progress"], study_id="S1")
    assert (row["participants"], row["interviews_booked"], row["limit_reached"]) == (3, 1, False)


def test_completion_after_t_does_not_count(tmp_path):
    t = compute(
        tmp_path,
        people=PEOPLE,
        studies=[study("S1", participation_limit=1)],
        participants=[participant("S1", "p1", "interview_scheduled", "2026-03-01T00:00:00Z")],
        events=[
            event("e1", "p1", "2026-04-01T00:00:00Z", "participant_status", study_id="S1", value="interview_completed")
        ],
    )
    row = one(t["study_progress"], study_id="S1")
    assert (row["interviews_booked"], row["interviews_completed"], row["limit_reached"]) == (1, 0, True)
    assert status_of(t)[0] == "interview_scheduled"


def test_limit_reached_adds_completed_and_currently_scheduled(tmp_path):
    t = compute(
        tmp_path,
        people=PEOPLE,
        studies=[study("S1", participation_limit=2)],
        participants=[participant("S1", "p1", "interview_scheduled", "2026-03-01T00:00:00Z")],
        events=[
            event("e1", "p1", "2026-03-02T00:00:00Z", "participant_status", study_id="S1", value="interview_completed"),
            event("e2", "p1", "2026-03-03T00:00:00Z", "participant_status", study_id="S1", value="interview_scheduled"),
        ],
    )
    row = one(t["study_progress"], study_id="S1")
    # 1 completed + 1 currently scheduled = 2 >= 2
    assert (row["interviews_completed"], row["interviews_booked"], row["limit_reached"]) == (1, 1, True)
