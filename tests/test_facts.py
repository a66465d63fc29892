"""§7.4: what exists at T — people created by T, their facts up to T, nothing later."""

from __future__ import annotations

from datetime import date

from conftest import compute, event, person

PEOPLE = [person("p1"), person("late", created_at="2026-04-02T00:00:00Z")]
EVENTS = [
    event("e1", "p1", "2026-03-10T00:00:00Z", "sequence_added", sequence_id="Q1"),
    event("e2", "p1", "2026-04-01T00:00:00Z", "opted_out"),  # after T
    event("e3", "p1", "2026-03-11T00:00:00Z", "inbound_message"),
    # a person created after T has no row anywhere, even for facts dated before T
    event("e4", "late", "2026-03-10T00:00:00Z", "sequence_added", sequence_id="Q1"),
    event("e5", "late", "2026-03-11T00:00:00Z", "opted_out"),
    event("e6", "late", "2026-03-11T00:00:00Z", "inbound_message"),
]


def test_people_created_after_t_and_facts_after_t_are_left_out(tmp_path):
    t = compute(tmp_path, people=PEOPLE, events=EVENTS)
    for table in ("contact_status", "sequence_status", "channel_status", "contact_status_history"):
        assert t[table].get_column("person_id").unique().to_list() == ["p1"], table
    assert t["contact_status"].get_column("contact_status").to_list() == ["free_to_contact"]


def test_the_same_person_counts_once_created(tmp_path):
    t = compute(tmp_path, as_of="2026-04-03", people=PEOPLE, events=EVENTS)
    assert sorted(t["sequence_status"].get_column("person_id").to_list()) == ["late", "p1"]
    assert sorted(t["contact_status"].select("person_id", "contact_status").rows()) == [
        ("late", "opted_out"),
        ("p1", "opted_out"),
    ]


def test_an_export_last_seen_on_dated_after_t_is_not_known_at_t(tmp_path):
    """A backfill to 2026-03-31 from tonight's export must not see a visit of 2026-04-10: last seen
    falls back to the inbound message before T, or to never (dormant since created_at)."""
    people = [
        person("later", created_at="2024-01-01T00:00:00Z", last_seen_on="2026-04-10"),
        person("later_inbound", created_at="2024-01-01T00:00:00Z", last_seen_on="2026-04-10"),
        person("on_t", created_at="2024-01-01T00:00:00Z", last_seen_on="2026-03-31"),
    ]
    events = [event("e1", "later_inbound", "2026-03-05T00:00:00Z", "inbound_message")]
    t = compute(tmp_path, as_of="2026-03-31", people=people, events=events)
    assert sorted(t["channel_status"].select("person_id", "last_seen_on").rows()) == [
        ("later", None),
        ("later_inbound", date(2026, 3, 5)),
        ("on_t", date(2026, 3, 31)),
    ]
    assert t["archival_candidates"].select("person_id", "candidate", "days_dormant").rows() == [
        ("later", "archive", 820)
    ]


def test_a_person_created_at_the_last_instant_of_t_exists_in_every_per_person_table(tmp_path):
    # --as-of 2026-03-31 is 2026-03-31T23:59:59.999999Z: a person created at that instant exists (§4, §7.4)
    t = compute(tmp_path, people=[person("p1"), person("edge", created_at="2026-03-31T23:59:59.999999Z")])
    assert sorted(t["contact_status"]["person_id"]) == ["edge", "p1"]
    assert sorted(t["channel_status"]["person_id"]) == ["edge", "p1"]
