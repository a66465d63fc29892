"""`contact_status_history` (SPEC §4): event-sourced intervals, and agreement with the at-T model."""

from __future__ import annotations

import tempfile
from datetime import datetime, timedelta, timezone
from pathlib import Path

import polars as pl
from conftest import Workspace, compute, event, participant, person, study, ts
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from statusbatch.config import load_job
from statusbatch.loading import Inputs, load_inputs
from statusbatch.models import contact, facts, history, participants
from statusbatch.pipeline import contact_models, history_and_violations, parse_as_of

UTC = timezone.utc
OPEN = None  # valid_to of the current interval


def timelines(inputs: Inputs, job_file: Path, as_of: datetime) -> tuple[pl.LazyFrame, history.ComponentTimelines]:
    """people at T and the component timelines, prepared as a run prepares the at-T models."""
    config = load_job(job_file)
    people = facts.people_as_of(inputs.people.lazy(), as_of)
    members = facts.participants_as_of(inputs.participants.lazy(), people, as_of)
    events = facts.events_as_of(inputs.events.lazy(), people, as_of)
    observations = participants.participant_observations(members, events, as_of)
    return people, history.component_timelines(
        people, events, observations, inputs.studies.lazy(), config.cooldown, config.blocklist.no_show_threshold
    )


def published(inputs: Inputs, config, as_of: datetime) -> tuple[pl.DataFrame, pl.DataFrame]:
    """The history and the violations a run publishes (observations dated before their
    participant's `added_at` included), over every accepted input."""
    people = facts.people_as_of(inputs.people.lazy(), as_of)
    members = facts.participants_as_of(inputs.participants.lazy(), people, as_of)
    events = facts.events_as_of(inputs.events.lazy(), people, as_of)
    observations = participants.participant_observations(members, events, as_of)
    found = history_and_violations(people, events, observations, inputs.studies.lazy(), config, as_of)
    return found[0].collect(), found[1].collect()


def full_history(inputs: Inputs, config, as_of: datetime) -> pl.DataFrame:
    return published(inputs, config, as_of)[0]


def history_of(tmp_path: Path, job_body: str = "", as_of: str = "2026-03-31", **tables) -> dict[str, list[tuple]]:
    """person_id -> [(contact_status, valid_from, valid_to), ...] in time order."""
    ws = Workspace(tmp_path / "ws").write(job_body, **tables)
    frame = full_history(load_inputs(ws.input), load_job(ws.job), parse_as_of(as_of).instant).sort("person_id", "valid_from")
    out: dict[str, list[tuple]] = {}
    for person_id, status, valid_from, valid_to in frame.iter_rows():
        out.setdefault(person_id, []).append((str(status), valid_from, valid_to))
    return out


def spans(*points: tuple[str, str]) -> list[tuple]:
    """[(status, from), ...] -> intervals, each ending where the next starts, the last one open."""
    froms = [ts(at) for _, at in points]
    return [(status, start, end) for (status, _), start, end in zip(points, froms, [*froms[1:], OPEN], strict=True)]


S1, S2 = study("S1"), study("S2")
NO_AUTO = "[cooldown]\nafter_invite_days = 0\nafter_completion_days = 0\n"


def test_cooldown_end_is_a_change_point_and_overlapping_cooldowns_merge(tmp_path):
    got = history_of(
        tmp_path,
        people=[person("p1"), person("p2")],
        studies=[S1, S2],
        events=[
            event("e1", "p1", "2026-01-10T00:00:00Z", "invited", study_id="S1"),
            event("e2", "p1", "2026-01-20T00:00:00Z", "invited", study_id="S2"),
        ],
    )
    assert got["p1"] == spans(
        ("free_to_contact", "2026-01-01T00:00:00Z"),
        ("in_cooldown", "2026-01-10T00:00:00Z"),
        ("free_to_contact", "2026-02-19T00:00:00Z"),  # 30 × 24 h after the second invite
    )
    assert got["p2"] == spans(("free_to_contact", "2026-01-01T00:00:00Z"))


def test_active_in_study_ends_at_study_close_and_reverts_to_the_stored_status(tmp_path):
    got = history_of(
        tmp_path,
        people=[person("p1")],
        studies=[study("S1", closed_at="2026-03-01T00:00:00Z")],
        participants=[participant("S1", "p1", "interview_scheduled", "2026-01-15T00:00:00Z")],
        events=[
            event("e1", "p1", "2026-01-14T00:00:00Z", "invited", study_id="S1"),
            event("e2", "p1", "2026-02-20T00:00:00Z", "cooldown_set", value="2026-03-10"),
        ],
    )
    assert got["p1"] == spans(
        ("free_to_contact", "2026-01-01T00:00:00Z"),
        ("in_cooldown", "2026-01-14T00:00:00Z"),
        ("active_in_study", "2026-01-15T00:00:00Z"),  # the invite's cooldown ends underneath on 02-13
        ("in_cooldown", "2026-03-01T00:00:00Z"),  # study closed: back to the stored status
        ("free_to_contact", "2026-03-11T00:00:00Z"),  # the manual date is inclusive
    )


def test_terminal_stage_ends_active_in_study_while_the_study_stays_open(tmp_path):
    got = history_of(
        tmp_path,
        "[cooldown]\nafter_invite_days = 0\nafter_completion_days = 10\n",
        people=[person("p1")],
        studies=[S1],
        participants=[participant("S1", "p1", "screener_started", "2026-01-05T00:00:00Z")],
        events=[event("e1", "p1", "2026-01-20T12:00:00Z", "participant_status", study_id="S1", value="survey_completed")],
    )
    assert got["p1"] == spans(
        ("free_to_contact", "2026-01-01T00:00:00Z"),
        ("active_in_study", "2026-01-05T00:00:00Z"),
        ("in_cooldown", "2026-01-20T12:00:00Z"),
        ("free_to_contact", "2026-01-30T12:00:00Z"),
    )


def test_study_opening_is_a_change_point(tmp_path):
    got = history_of(
        tmp_path,
        NO_AUTO,
        people=[person("p1")],
        studies=[study("S1", opened_at="2026-02-01T00:00:00Z")],
        participants=[participant("S1", "p1", "study_invited", "2026-01-10T00:00:00Z")],
    )
    assert got["p1"] == spans(("free_to_contact", "2026-01-01T00:00:00Z"), ("active_in_study", "2026-02-01T00:00:00Z"))


def test_opt_out_revoke_and_a_hard_bounce(tmp_path):
    got = history_of(
        tmp_path,
        NO_AUTO,
        people=[person("p1")],
        studies=[S1],
        participants=[participant("S1", "p1", "not_contacted")],
        events=[
            event("e1", "p1", "2026-01-05T00:00:00Z", "opted_out"),
            event("e2", "p1", "2026-01-20T00:00:00Z", "opt_out_revoked"),
            event("e3", "p1", "2026-01-25T00:00:00Z", "unsubscribed", value="newsletter"),
            event("e4", "p1", "2026-02-01T00:00:00Z", "participant_status", study_id="S1", value="hard_bounced"),
        ],
    )
    assert got["p1"] == spans(
        ("free_to_contact", "2026-01-01T00:00:00Z"),
        ("opted_out", "2026-01-05T00:00:00Z"),
        ("free_to_contact", "2026-01-20T00:00:00Z"),
        ("opted_out", "2026-02-01T00:00:00Z"),
    )


def test_an_observation_dated_before_its_participant_was_added_counts_from_added_at(tmp_path):
    """A run as of t knows a participant from its added_at on (§7.4); then its earlier observations
    count at their own dates: a hard bounce before a revoke stays revoked (p1)."""
    added = "2026-02-01T00:00:00Z"
    got = history_of(
        tmp_path,
        NO_AUTO,
        people=[person("p1"), person("p2"), person("p3")],
        studies=[S1],
        participants=[
            participant("S1", "p1", "not_contacted", added=added),
            participant("S1", "p2", "not_contacted", added=added),
            participant("S1", "p3", "survey_started", added=added),
        ],
        events=[
            event("e1", "p1", "2026-01-10T00:00:00Z", "participant_status", study_id="S1", value="hard_bounced"),
            event("e2", "p1", "2026-01-20T00:00:00Z", "opt_out_revoked"),
            event("e3", "p2", "2026-01-10T00:00:00Z", "participant_status", study_id="S1", value="hard_bounced"),
            event("e4", "p3", "2026-01-10T00:00:00Z", "participant_status", study_id="S1", value="survey_started"),
        ],
    )
    assert got == {
        "p1": spans(("free_to_contact", "2026-01-01T00:00:00Z")),
        "p2": spans(("free_to_contact", "2026-01-01T00:00:00Z"), ("opted_out", added)),
        "p3": spans(("free_to_contact", "2026-01-01T00:00:00Z"), ("active_in_study", added)),
    }


def test_no_show_rule_until_a_removal(tmp_path):
    got = history_of(
        tmp_path,
        NO_AUTO,
        people=[person("p1")],
        studies=[S1, S2],
        participants=[
            participant("S1", "p1", "no_showed", "2026-01-10T00:00:00Z"),
            participant("S2", "p1", "no_showed", "2026-01-20T00:00:00Z"),
        ],
        events=[event("e1", "p1", "2026-02-01T00:00:00Z", "blocklist_removed")],
    )
    assert got["p1"] == spans(
        ("free_to_contact", "2026-01-01T00:00:00Z"),
        ("in_blocklist", "2026-01-20T00:00:00Z"),  # the second no-show is the one the rule needs
        ("free_to_contact", "2026-02-01T00:00:00Z"),
    )


def test_facts_at_one_instant_leave_only_the_state_after_the_last(tmp_path):
    got = history_of(
        tmp_path,
        NO_AUTO,
        people=[person("p1"), person("p2")],
        studies=[S1],
        events=[
            # "e10" < "e2": the opt-out is the later fact, the person is opted out
            event("e2", "p1", "2026-01-05T00:00:00Z", "opted_out"),
            event("e10", "p1", "2026-01-05T00:00:00Z", "opt_out_revoked"),
            # set then cleared at one instant: never visible
            event("a", "p2", "2026-01-05T00:00:00Z", "do_not_contact_set"),
            event("b", "p2", "2026-01-05T00:00:00Z", "do_not_contact_cleared"),
        ],
    )
    assert got["p1"] == spans(("free_to_contact", "2026-01-01T00:00:00Z"), ("opted_out", "2026-01-05T00:00:00Z"))
    assert got["p2"] == spans(("free_to_contact", "2026-01-01T00:00:00Z"))


def test_clear_ends_every_cooldown_and_rolling_limit_ends_when_the_oldest_trigger_leaves(tmp_path):
    got = history_of(
        tmp_path,
        "[cooldown]\nafter_invite_days = 0\n[[cooldown.limits]]\ntrigger = 'invite'\ncount = 2\nwindow_days = 10\n",
        people=[person("p1"), person("p2")],
        studies=[S1, S2],
        events=[
            event("e1", "p1", "2026-01-10T00:00:00Z", "invited", study_id="S1"),
            event("e2", "p1", "2026-01-15T00:00:00Z", "invited", study_id="S2"),
            event("e3", "p2", "2026-01-10T00:00:00Z", "cooldown_set", value="2026-01-31"),
            event("e4", "p2", "2026-01-12T06:00:00Z", "cooldown_cleared"),
        ],
    )
    assert got["p1"] == spans(
        ("free_to_contact", "2026-01-01T00:00:00Z"),
        ("in_cooldown", "2026-01-15T00:00:00Z"),
        ("free_to_contact", "2026-01-20T00:00:00Z"),
    )
    assert got["p2"] == spans(
        ("free_to_contact", "2026-01-01T00:00:00Z"),
        ("in_cooldown", "2026-01-10T00:00:00Z"),
        ("free_to_contact", "2026-01-12T06:00:00Z"),
    )


def test_history_starts_at_an_earlier_first_fact_and_ignores_rule_based_dnc(tmp_path):
    got = history_of(
        tmp_path,
        NO_AUTO + "[[do_not_contact]]\nname = 'minors'\nwhen = 'age < 18'\n",
        people=[person("p1", "2026-02-01T00:00:00Z", age=15), person("p2", age=15)],
        studies=[S1],
        events=[
            event("e1", "p1", "2026-01-15T00:00:00Z", "do_not_contact_set"),
            event("e2", "p1", "2026-03-01T00:00:00Z", "do_not_contact_cleared"),
        ],
    )
    assert got["p1"] == spans(("do_not_contact", "2026-01-15T00:00:00Z"), ("free_to_contact", "2026-03-01T00:00:00Z"))
    assert got["p2"] == spans(("free_to_contact", "2026-01-01T00:00:00Z"))


def test_history_starts_at_the_first_fact_of_any_kind_before_created_at(tmp_path):
    """§4: "from `created_at` (or an earlier first fact)": an event of any log or an observation that
    changes no component still starts the history; a fact after T does not."""
    created = "2026-03-15T00:00:00Z"
    tables = compute(
        tmp_path,
        NO_AUTO,
        people=[person(p, created) for p in ("p1", "p2", "p3", "p4", "p5", "p6", "p7")],
        studies=[S1],
        participants=[
            participant("S1", "p2", "not_contacted", "2026-03-02T00:00:00Z", added="2026-03-01T00:00:00Z"),
            # dated before its participant: known from added_at (`revealed.py`)
            participant("S1", "p6", "not_contacted", "2026-03-02T00:00:00Z", added="2026-03-05T00:00:00Z"),
        ],
        events=[
            event("e1", "p1", "2026-03-01T00:00:00Z", "unsubscribed", value="newsletter"),
            event("e3", "p3", "2026-03-03T00:00:00Z", "sequence_added", sequence_id="Q"),
            event("e4", "p4", "2026-03-04T00:00:00Z", "inbound_message"),
            event("e5", "p5", "2026-03-02T00:00:00Z", "inbound_message"),
            event("e6", "p5", "2026-03-10T00:00:00Z", "opted_out"),
            event("e7", "p7", "2026-04-02T00:00:00Z", "inbound_message"),
        ],
    )
    got = {
        person_id: [(status, valid_from, valid_to) for _, status, valid_from, valid_to in frame.iter_rows()]
        for (person_id,), frame in tables["contact_status_history"]
        .with_columns(pl.col("contact_status").cast(pl.String))
        .sort("valid_from")
        .group_by("person_id", maintain_order=True)
    }
    free = "free_to_contact"
    assert got == {
        "p1": spans((free, "2026-03-01T00:00:00Z")),
        "p2": spans((free, "2026-03-02T00:00:00Z")),
        "p3": spans((free, "2026-03-03T00:00:00Z")),
        "p4": spans((free, "2026-03-04T00:00:00Z")),
        "p5": spans((free, "2026-03-02T00:00:00Z"), ("opted_out", "2026-03-10T00:00:00Z")),
        "p6": spans((free, "2026-03-05T00:00:00Z")),
        "p7": spans((free, created)),
    }


def test_nothing_after_t_and_people_created_after_t_are_absent(tmp_path):
    got = history_of(
        tmp_path,
        as_of="2026-01-31",
        people=[person("p1"), person("p2", "2026-02-10T00:00:00Z")],
        studies=[S1],
        events=[
            event("e1", "p1", "2026-01-20T00:00:00Z", "invited", study_id="S1"),
            event("e2", "p1", "2026-02-05T00:00:00Z", "opted_out"),
        ],
    )
    # the cooldown runs to 02-19, after T: the current interval stays open
    assert got == {"p1": spans(("free_to_contact", "2026-01-01T00:00:00Z"), ("in_cooldown", "2026-01-20T00:00:00Z"))}


def test_every_cooldown_start_minus_those_before_the_latest_clear_is_the_at_t_model(tmp_path):
    """Guards the reuse of contact.cooldown_starts for the full timeline."""
    ws = Workspace(tmp_path / "ws").write(
        "[[cooldown.limits]]\ntrigger = 'invite'\ncount = 2\nwindow_days = 30\n",
        people=[person("p1")],
        studies=[S1],
        participants=[participant("S1", "p1", "survey_completed", "2026-01-03T00:00:00Z")],
        events=[
            event("e1", "p1", "2026-01-02T00:00:00Z", "invited", study_id="S1"),
            event("e2", "p1", "2026-01-04T00:00:00Z", "cooldown_cleared"),
            event("e3", "p1", "2026-01-05T00:00:00Z", "invited", study_id="S1"),
            event("e4", "p1", "2026-01-06T00:00:00Z", "cooldown_set", value="2026-01-07"),
        ],
    )
    inputs, t = load_inputs(ws.input), parse_as_of("2026-03-31").instant
    events = inputs.events.lazy()
    observations = participants.participant_observations(inputs.participants.lazy(), events, t)
    rules = load_job(ws.job).cooldown
    every = history.all_cooldown_starts(events, observations, rules).collect()
    after_clear = contact.cooldown_starts(events, observations, rules).collect()
    assert sorted(every.get_column("event_id").fill_null("export").to_list()) == ["e1", "e3", "e3", "e4", "export"]
    assert after_clear.sort("at", "source").equals(every.filter(pl.col("at") > ts("2026-01-04T00:00:00Z")).sort("at", "source"))


# -- property: the history at any t is the at-T model's contact status as of t -----------------

BASE = datetime(2026, 1, 1, tzinfo=UTC)
EVENT_IDS = ["e1", "e2", "e9", "e10", "a", "b", "z", "x-1", "x10", "7", "07", "m", "n", "q"]
STATUSES = [
    "no_showed", "hard_bounced", "interview_completed", "survey_completed", "survey_started",
    "interview_scheduled", "study_invited", "not_contacted", "canceled", "incentive_sent",
]
PERSON_EVENTS = [
    "opted_out", "opt_out_revoked", "blocklist_added", "blocklist_removed", "cooldown_set",
    "cooldown_cleared", "do_not_contact_set", "do_not_contact_cleared",
]


def _iso(at: datetime | None) -> str | None:
    return None if at is None else at.strftime("%Y-%m-%dT%H:%M:%SZ")


@st.composite
def workspaces(draw):
    """A few people, studies, participants and events on a coarse grid of instants (ties are common)."""
    pool = draw(st.lists(st.integers(0, 60).map(lambda d: BASE + timedelta(days=d)), min_size=2, max_size=6, unique=True))
    instant, maybe = st.sampled_from(pool), st.one_of(st.none(), st.sampled_from(pool))
    people = [person(f"p{i}", _iso(draw(instant))) for i in range(draw(st.integers(1, 3)))]
    studies = [study(f"S{i}", _iso(draw(maybe)), _iso(draw(maybe))) for i in range(draw(st.integers(1, 2)))]
    members = [
        participant(s["study_id"], p["person_id"], draw(st.sampled_from(STATUSES)), _iso(draw(maybe)), _iso(draw(instant)))
        for p in people
        for s in studies
        if draw(st.booleans())
    ]
    events = []
    for event_id in draw(st.lists(st.sampled_from(EVENT_IDS), unique=True, min_size=2, max_size=14)):
        at = _iso(draw(instant))
        kind = draw(st.sampled_from(["invited", "participant_status", "person", "person", "cooldown"]))
        if kind == "participant_status" and members:
            m = draw(st.sampled_from(members))
            events.append(event(event_id, m["person_id"], at, kind, study_id=m["study_id"], value=draw(st.sampled_from(STATUSES))))
        elif kind == "invited":
            events.append(event(event_id, draw(st.sampled_from(people))["person_id"], at, kind, study_id=draw(st.sampled_from(studies))["study_id"]))
        else:
            kind = draw(st.sampled_from(["cooldown_set", "cooldown_cleared"] if kind == "cooldown" else PERSON_EVENTS))
            value = (BASE + timedelta(days=draw(st.integers(0, 70)))).date().isoformat() if kind == "cooldown_set" else None
            events.append(event(event_id, draw(st.sampled_from(people))["person_id"], at, kind, value=value))
    job = (
        f"[cooldown]\nafter_invite_days = {draw(st.sampled_from([0, 1, 7]))}\n"
        f"after_completion_days = {draw(st.sampled_from([0, 2, 20]))}\n"
    )
    if draw(st.booleans()):
        job += f"[[cooldown.limits]]\ntrigger = '{draw(st.sampled_from(['invite', 'completion']))}'\ncount = {draw(st.integers(1, 2))}\nwindow_days = {draw(st.sampled_from([1, 5, 30]))}\n"
    job += f"[blocklist]\nno_show_threshold = {draw(st.integers(0, 2))}\n"
    probes = draw(st.lists(st.integers(0, 90 * 24), min_size=1, max_size=2))
    return people, studies, members, events, job, [*pool, *(BASE + timedelta(hours=h) for h in probes)]


@settings(max_examples=45, deadline=None, database=None, suppress_health_check=[HealthCheck.too_slow])
@given(workspaces())
def test_history_at_any_instant_is_the_at_t_status(workspace):
    people, studies, members, events, job, probes = workspace
    with tempfile.TemporaryDirectory() as tmp:
        ws = Workspace(Path(tmp)).write(job, people=people, studies=studies, participants=members, events=events)
        inputs, config = load_inputs(ws.input), load_job(ws.job)
        assert inputs.rejected_rows.height == 0, inputs.rejected_rows
        final = parse_as_of("2026-04-30")
        found = full_history(inputs, config, final.instant)
        # probe every fact instant and change point, the microsecond before each, and a few random instants
        points = [*probes, *found.get_column("valid_from").to_list()]
        probes = sorted({*points, *(p - timedelta(microseconds=1) for p in points)})
        for t in probes:
            at_t = contact_models(inputs, config, parse_as_of(t.isoformat()), {}).contact_status.collect()
            expected = dict(zip(at_t.get_column("person_id"), at_t.get_column("contact_status").cast(pl.String), strict=True))
            current = found.filter((pl.col("valid_from") <= t) & (pl.col("valid_to").is_null() | (pl.col("valid_to") > t)))
            got = dict(zip(current.get_column("person_id"), current.get_column("contact_status").cast(pl.String), strict=True))
            for person_id, status in expected.items():
                assert got.get(person_id) == status, (person_id, t, found.sort("person_id", "valid_from"))


@settings(max_examples=40, deadline=None, database=None, suppress_health_check=[HealthCheck.too_slow])
@given(workspaces())
def test_every_cooldown_start_after_the_latest_clear_is_the_at_t_models_start(workspace):
    """The full timeline's starts (the at-T rules fed no clears) less those up to the latest clear
    are exactly the at-T model's starts, on any workspace."""
    people, studies, members, events, job, _ = workspace
    with tempfile.TemporaryDirectory() as tmp:
        ws = Workspace(Path(tmp)).write(job, people=people, studies=studies, participants=members, events=events)
        inputs, rules = load_inputs(ws.input), load_job(ws.job).cooldown
        t = parse_as_of("2026-04-30").instant
        log = inputs.events.lazy()
        observations = participants.participant_observations(inputs.participants.lazy(), log, t)
        every = history.all_cooldown_starts(log, observations, rules).collect()
        at_t = contact.cooldown_starts(log, observations, rules).collect()
    latest_clear = (
        inputs.events.filter(pl.col("event_type") == "cooldown_cleared")
        .sort("person_id", "occurred_at", "event_id")
        .group_by("person_id")
        .last()
        .select("person_id", pl.col("occurred_at").alias("cleared_at"), pl.col("event_id").alias("cleared_tie"))
    )
    after_clear = every.join(latest_clear, on="person_id", how="left").filter(
        pl.col("cleared_at").is_null()
        | (pl.col("at") > pl.col("cleared_at"))
        | ((pl.col("at") == pl.col("cleared_at")) & (pl.col("tie") > pl.col("cleared_tie")))
    )
    assert after_clear.select(at_t.columns).sort(pl.all()).equals(at_t.sort(pl.all()))


def test_a_fact_at_exactly_t_ends_the_history(tmp_path):
    """A timestamp --as-of is exact; a fact at T exists (§7.4), so the history reaches the at-T status."""
    got = history_of(
        tmp_path,
        as_of="2026-03-15T08:00:00Z",
        people=[person("p1"), person("p2", created_at="2026-03-15T08:00:00Z")],
        events=[event("e1", "p1", "2026-03-15T08:00:00Z", "opted_out")],
    )
    assert got == {
        "p1": spans(("free_to_contact", "2026-01-01T00:00:00Z"), ("opted_out", "2026-03-15T08:00:00Z")),
        "p2": spans(("free_to_contact", "2026-03-15T08:00:00Z")),
    }


def test_first_facts_are_the_same_whatever_the_order_of_the_logs():
    """`first_facts` reads a log in (person, time) order by its runs' first rows, any other by a group-by."""
    log = pl.DataFrame(
        {
            "person_id": ["a", "a", "b", "c", "c", "c"],
            "occurred_at": [ts(f"2026-03-0{d}T00:00:00Z") for d in (1, 4, 2, 3, 5, 9)],
        }
    )
    observations = pl.LazyFrame(
        {"person_id": ["b", "d"], "at": [ts("2026-03-01T00:00:00Z")] * 2, "added_at": [ts("2026-03-03T00:00:00Z")] * 2}
    )
    as_of = ts("2026-03-08T00:00:00Z")
    expected = {"a": ts("2026-03-01T00:00:00Z"), "b": ts("2026-03-02T00:00:00Z"), "c": ts("2026-03-03T00:00:00Z"),
                "d": ts("2026-03-03T00:00:00Z")}
    for order in ([0, 1, 2, 3, 4, 5], [1, 0, 2, 3, 4, 5], [5, 4, 3, 2, 1, 0], [2, 0, 1, 3, 4, 5]):
        got = history.first_facts([log[order]], observations, as_of).collect()
        assert dict(got.sort("person_id").iter_rows()) == expected, order
    late = log.with_columns(pl.col("occurred_at") + timedelta(days=30))
    assert history.first_facts([late], observations.head(0), as_of).collect().is_empty()
