"""Property: the vectorised engine's contact_status equals the plain reference, person by person.

Hypothesis draws small workspaces (a few people and studies, random openings
and closings, participants, research events with ties in time and random event
ids, random cooldown/limit/no-show settings) and a random T, runs them through
load_inputs + contact_models (the contact status a run computes), and compares every row with reference_contact.
"""

from __future__ import annotations

import tempfile
from datetime import datetime, time, timedelta, timezone
from pathlib import Path

from conftest import write_inputs
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from reference_contact import Config, Limit, contact_row

from statusbatch.config import load_job
from statusbatch.loading import load_inputs
from statusbatch.pipeline import contact_models, dnc_rules, parse_as_of

UTC = timezone.utc
BASE = datetime(2026, 1, 1, tzinfo=UTC)
EVENT_IDS = ["e1", "e2", "e9", "e10", "e11", "a", "b", "z", "E5", "x-1", "x-2", "x10", "m", "n", "07", "7", "e3", "e4", "c"]
STATUSES = [
    "no_showed",
    "hard_bounced",
    "interview_completed",
    "survey_completed",
    "test_completed",
    "survey_started",
    "interview_scheduled",
    "study_invited",
    "not_contacted",
    "canceled",
    "incentive_sent",
]
PERSON_EVENTS = [
    "opted_out",
    "opt_out_revoked",
    "unsubscribed",
    "blocklist_added",
    "blocklist_removed",
    "cooldown_set",
    "cooldown_cleared",
    "do_not_contact_set",
    "do_not_contact_cleared",
]

# Instants on a coarse grid so that ties in time are frequent, and cooldown ends land on T.
instants = st.builds(
    lambda day, hour: BASE + timedelta(days=day, hours=hour),
    st.integers(0, 100),
    st.sampled_from([0, 0, 12, 23]),
)


def iso(at: datetime) -> str:
    return at.strftime("%Y-%m-%dT%H:%M:%SZ")


@st.composite
def workspaces(draw):
    # Every instant of one workspace comes from a small pool: ties in time are the rule, not the exception.
    pool = draw(st.lists(instants, min_size=2, max_size=6, unique=True))
    instants_ = st.sampled_from(pool)
    maybe_instant_ = st.one_of(st.none(), instants_)
    n_people = draw(st.integers(1, 6))
    people = [
        {
            "person_id": f"p{i}",
            "created_at": draw(st.one_of(st.just(BASE), instants_)),
            "age": draw(st.sampled_from([None, 10, 17, 18, 40])),
        }
        for i in range(n_people)
    ]
    studies = {}
    for i in range(draw(st.integers(1, 3))):
        opened, closed = draw(maybe_instant_), draw(maybe_instant_)
        studies[f"S{i}"] = {"opened_at": opened, "closed_at": closed}
    participants = []
    for p in people:
        for s in studies:
            if draw(st.booleans()):
                participants.append(
                    {
                        "study_id": s,
                        "person_id": p["person_id"],
                        "added_at": draw(st.one_of(st.just(BASE), instants_)),
                        "participant_status": draw(st.sampled_from(STATUSES)),
                        "status_updated_at": draw(maybe_instant_),
                    }
                )
    ids = draw(st.lists(st.sampled_from(EVENT_IDS), unique=True, max_size=16))
    events = []
    for event_id in ids:
        kind = draw(st.sampled_from(["invited", "invited", "participant_status", "participant_status", "person", "person"]))
        at = draw(instants_)
        if kind == "participant_status" and participants:
            part = draw(st.sampled_from(participants))
            events.append(
                {
                    "event_id": event_id,
                    "person_id": part["person_id"],
                    "occurred_at": at,
                    "event_type": "participant_status",
                    "study_id": part["study_id"],
                    # often the status the export row already shows: repeated observations
                    "value": draw(st.one_of(st.just(part["participant_status"]), st.sampled_from(STATUSES))),
                }
            )
            continue
        person_id = draw(st.sampled_from(people))["person_id"]
        if kind == "invited":
            events.append(
                {
                    "event_id": event_id,
                    "person_id": person_id,
                    "occurred_at": at,
                    "event_type": "invited",
                    "study_id": draw(st.sampled_from(sorted(studies))),
                    "value": None,
                }
            )
            continue
        event_type = draw(st.sampled_from(PERSON_EVENTS))
        value = None
        if event_type == "cooldown_set":
            value = (BASE + timedelta(days=draw(st.integers(0, 130)))).date().isoformat()
        elif event_type == "unsubscribed":
            value = "newsletter"
        events.append(
            {
                "event_id": event_id,
                "person_id": person_id,
                "occurred_at": at,
                "event_type": event_type,
                "study_id": None,
                "value": value,
            }
        )
    limits = tuple(
        draw(
            st.lists(
                st.builds(Limit, st.sampled_from(["invite", "completion"]), st.integers(1, 3), st.sampled_from([1, 2, 7, 30, 60])),
                min_size=draw(st.sampled_from([0, 1, 1])),
                max_size=2,
            )
        )
    )
    config = Config(
        after_invite_days=draw(st.sampled_from([0, 1, 7, 30])),
        after_completion_days=draw(st.sampled_from([0, 2, 20, 90])),
        limits=limits,
        no_show_threshold=draw(st.integers(0, 3)),
        minors_rule=draw(st.booleans()),
    )
    t = draw(st.one_of(instants_, instants_, instants))
    # T: a pool instant exactly, that instant's whole day, or some days later (cooldown ends land on T)
    later = t + timedelta(days=draw(st.sampled_from([0, 0, 1, 2, 7, 20, 30, 60, 90])))
    as_of = draw(st.sampled_from([iso(t), t.date().isoformat(), iso(later), later.date().isoformat()]))
    return people, studies, participants, events, config, as_of


def job_toml(config: Config) -> str:
    text = (
        '[job]\ninput = "input"\ndb = "out.duckdb"\n\n'
        f"[cooldown]\nafter_invite_days = {config.after_invite_days}\n"
        f"after_completion_days = {config.after_completion_days}\n\n"
    )
    for limit in config.limits:
        text += f'[[cooldown.limits]]\ntrigger = "{limit.trigger}"\ncount = {limit.count}\nwindow_days = {limit.window_days}\n\n'
    text += f"[blocklist]\nno_show_threshold = {config.no_show_threshold}\n\n"
    if config.minors_rule:
        text += '[[do_not_contact]]\nname = "minors"\nwhen = "age < 18"\n'
    return text


def engine_rows(people, studies, participants, events, config, as_of) -> dict[str, dict]:
    def text(v):
        return iso(v) if isinstance(v, datetime) else v

    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        write_inputs(
            root / "input",
            people=[{k: text(v) for k, v in p.items()} for p in people],
            studies=[{"study_id": s, "kind": "interview", **{k: text(v) for k, v in d.items()}} for s, d in studies.items()],
            participants=[{k: text(v) for k, v in p.items()} for p in participants],
            events=[{k: text(v) for k, v in e.items()} for e in events],
        )
        (root / "job.toml").write_text(job_toml(config))
        job = load_job(root / "job.toml")
        inputs = load_inputs(job.job.input)
        assert inputs.rejected_rows.height == 0, inputs.rejected_rows
        frame = contact_models(inputs, job, parse_as_of(as_of), dnc_rules(job, inputs.people)).contact_status.collect()
    return {r["person_id"]: r for r in frame.iter_rows(named=True)}


def reference_rows(people, studies, participants, events, config, as_of) -> dict[str, dict]:
    t = parse_as_of(as_of).instant
    rows = {}
    for p in people:
        row = contact_row(
            p,
            studies,
            [x for x in participants if x["person_id"] == p["person_id"]],
            [e for e in events if e["person_id"] == p["person_id"]],
            config,
            t,
        )
        if row is not None:
            rows[p["person_id"]] = row
    return rows


COMPARED = ("contact_status", "stored_status", "active_study_ids", "overridable", "can_contact", "cooldown_until")


@settings(max_examples=100, deadline=None, database=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
@given(workspaces())
def test_engine_matches_the_reference(workspace):
    people, studies, participants, events, config, as_of = workspace
    got = engine_rows(*workspace)
    want = reference_rows(*workspace)
    assert sorted(got) == sorted(want)
    for person_id, expected in want.items():
        actual = {c: got[person_id][c] for c in COMPARED}
        actual["contact_status"] = str(actual["contact_status"])
        actual["stored_status"] = str(actual["stored_status"])
        assert actual == {c: expected[c] for c in COMPARED}, person_id
        assert got[person_id]["reason"], person_id


def test_reference_sanity_on_the_research_ops_example_people():
    """The reference itself reproduces a few expected rows of tests/examples/research_ops."""
    t = parse_as_of("2026-03-31").instant
    studies = {
        "R1": {"opened_at": datetime(2026, 1, 1, tzinfo=UTC), "closed_at": None},
        "R2": {"opened_at": datetime(2026, 1, 1, tzinfo=UTC), "closed_at": datetime(2026, 2, 15, tzinfo=UTC)},
    }
    created = datetime(2025, 12, 1, tzinfo=UTC)
    a5 = contact_row(
        {"person_id": "a5", "created_at": created},
        studies,
        [{"study_id": "R1", "added_at": datetime(2026, 1, 15, tzinfo=UTC), "participant_status": "canceled",
          "status_updated_at": datetime(2026, 3, 22, tzinfo=UTC)}],
        [{"event_id": "e0003", "occurred_at": datetime(2026, 3, 21, 9, 30, tzinfo=UTC), "event_type": "invited",
          "study_id": "R1", "value": None}],
        Config(),
        t,
    )
    assert (a5["contact_status"], a5["cooldown_until"]) == ("in_cooldown", datetime(2026, 4, 20, 9, 30, tzinfo=UTC))
    a8 = contact_row(
        {"person_id": "a8", "created_at": created},
        studies,
        [],
        [{"event_id": "e0004", "occurred_at": datetime(2026, 3, 1, tzinfo=UTC), "event_type": "cooldown_set",
          "study_id": None, "value": "2026-04-30"}],
        Config(),
        t,
    )
    assert a8["cooldown_until"] == datetime.combine(datetime(2026, 5, 1).date(), time(0), tzinfo=UTC)
    a4 = contact_row(
        {"person_id": "a4", "created_at": created},
        studies,
        [{"study_id": "R1", "added_at": datetime(2026, 1, 15, tzinfo=UTC), "participant_status": "survey_started",
          "status_updated_at": datetime(2026, 3, 20, tzinfo=UTC)}],
        [],
        Config(),
        t,
    )
    assert (a4["contact_status"], a4["stored_status"], a4["active_study_ids"]) == ("active_in_study", "free_to_contact", ["R1"])
