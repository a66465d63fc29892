"""§1, §5, §7.5, §7.6: bad rows go to rejected_rows (never lost), formats, time zones — through the CLI."""

from __future__ import annotations

import gzip
import json
from datetime import UTC, date, datetime, timedelta, timezone

import polars as pl
import pytest
from conftest import Workspace, event, naive, participant, person, study

from statusbatch import synthetic
from statusbatch.loading import _property_columns, tables
from statusbatch.loading.contract import input_table
from statusbatch.loading.quarantine import ROW, _positions_of
from statusbatch.synthetic import SyntheticConfig

PEOPLE_CSV = """person_id,email,created_at,last_seen_on,age
p1,p1@x.org,2026-01-01T00:00:00Z,2026-03-01,30
p2,p2@x.org,2026-01-01T00:00:00Z,,31
,nobody@x.org,2026-01-01T00:00:00Z,,32
p4,p4@x.org,yesterday,,33
p5,p5@x.org,2026-01-01T00:00:00Z,2026-02-30,34
p1,again@x.org,2026-01-02T00:00:00Z,,35
p7,p7@x.org,,,36
"""
STUDIES_CSV = """study_id,name,kind,opened_at,closed_at,participation_limit
S1,One,interview,2026-01-01T00:00:00Z,,5
S2,Two,podcast,2026-01-01T00:00:00Z,,
S3,Three,survey,2026-01-01T00:00:00Z,,many
S1,One again,survey,,,
S4,Four,unmoderated_test,,,
"""
PARTICIPANTS_CSV = """study_id,person_id,added_at,participant_status,status_updated_at
S1,p1,2026-01-02T00:00:00Z,study_invited,
S1,p4,2026-01-02T00:00:00Z,study_invited,
S9,p2,2026-01-02T00:00:00Z,study_invited,
S1,p2,2026-01-02T00:00:00Z,maybe,
S1,p2,,maybe,
S1,p1,2026-01-03T00:00:00Z,canceled,
S2,p2,2026-01-02T00:00:00Z,study_invited,
S4,p2,2026-01-02T00:00:00Z,not_contacted,2026-01-0x
S4,p1,2026-01-02T00:00:00Z,not_contacted,
"""
EVENTS_CSV = """event_id,person_id,occurred_at,event_type,study_id,sequence_id,channel,actor_id,value,reason
e1,p1,2026-03-01T00:00:00Z,opted_out,,,,,,"said ""no"", twice"
e1,p1,2026-03-01T00:00:00Z,opted_out,,,,,,"said ""no"", twice"
e1,p1,2026-03-02T00:00:00Z,opted_out,,,,,,
e2,p1,2026-03-01T00:00:00Z,invited,,,,,,
e3,p1,2026-03-01T00:00:00Z,invited,S9,,,,,
e4,p1,2026-03-01T00:00:00Z,participant_status,S1,,,,wat,
e5,p2,2026-03-01T00:00:00Z,participant_status,S1,,,,study_invited,
e6,p1,2026-03-01T00:00:00Z,cooldown_set,,,,,2026-13-01,
e7,p1,2026-03-01T00:00:00Z,frobbed,,,,,,
e8,px,2026-03-01T00:00:00Z,frobbed,,,,,,
e9,px,2026-03-01T00:00:00Z,opted_out,,,,,,
e10,p4,2026-03-01T00:00:00Z,opted_out,,,,,,
,p1,2026-03-01T00:00:00Z,opted_out,,,,,,
e12,p1,not-a-time,opted_out,,,,,,
e13,p1,2026-03-01T00:00:00Z,opted_out,S2,,,,,
e14,p1,2026-03-01T00:00:00Z,email_sent,,,,,,
e15,p1,2026-03-01T00:00:00Z,replied,,Q1,fax,,,
e16,p1,2026-03-01T00:00:00Z,cooldown_set,,,,,,
e17,p1,2026-03-01T00:00:00Z,invited,S1,,,,,
"""

# (source_table, row_number) -> (column, words the problem must contain)
EXPECTED_REJECTED = {
    ("people", 3): ("person_id", ["missing"]),
    ("people", 4): ("created_at", ["yesterday"]),
    ("people", 5): ("last_seen_on", ["2026-02-30"]),
    ("people", 6): ("person_id", ["duplicate"]),
    ("people", 7): ("created_at", ["missing"]),
    ("studies", 2): ("kind", ["podcast"]),
    ("studies", 3): ("participation_limit", ["many"]),
    ("studies", 4): ("study_id", ["duplicate"]),
    ("participants", 2): ("person_id", ["person 'p4' is a rejected row"]),  # participant of a rejected person
    ("participants", 3): ("study_id", ["unknown study 'S9'"]),
    ("participants", 4): ("participant_status", ["maybe"]),  # code before reference/duplicate
    ("participants", 5): ("added_at", ["missing"]),  # required before code
    ("participants", 6): ("study_id", ["duplicate"]),
    ("participants", 7): ("study_id", ["study 'S2' is a rejected row"]),
    ("participants", 8): ("status_updated_at", ["2026-01-0x"]),
    ("events", 3): ("event_id", ["duplicate"]),
    ("events", 4): ("study_id", ["study_id"]),
    ("events", 5): ("study_id", ["S9"]),
    ("events", 6): ("value", ["wat"]),
    ("events", 7): ("study_id", ["participant"]),
    ("events", 8): ("value", ["2026-13-01"]),
    ("events", 9): ("event_type", ["frobbed"]),
    ("events", 10): ("event_type", ["frobbed"]),  # code before the unknown person
    ("events", 11): ("person_id", ["unknown person 'px'"]),
    ("events", 12): ("person_id", ["person 'p4' is a rejected row"]),
    ("events", 13): ("event_id", ["missing"]),
    ("events", 14): ("occurred_at", ["not-a-time"]),
    ("events", 15): ("study_id", ["study 'S2' is a rejected row"]),  # a person-scoped event
    ("events", 16): ("sequence_id", ["sequence_id"]),
    ("events", 17): ("channel", ["fax"]),
    ("events", 18): ("value", ["value"]),
}


@pytest.fixture(params=["lookup", "join"])
def bad_run(ws, request, monkeypatch):
    """Every bad row, with references checked by set lookup (small tables) and by join (large ones)."""
    if request.param == "join":
        monkeypatch.setattr(tables, "_LOOKUP_LIMIT", 0)
    ws.write(people=PEOPLE_CSV, studies=STUDIES_CSV, participants=PARTICIPANTS_CSV, events=EVENTS_CSV)
    ws.run()
    return ws


def test_every_bad_row_is_rejected_with_row_number_column_and_problem(bad_run):
    got = {
        (t, n): (c, p)
        for t, n, c, p in bad_run.query("select source_table, row_number, \"column\", problem from rejected_rows")
    }
    assert set(got) == set(EXPECTED_REJECTED)
    wrong = {}
    for key, (column, words) in EXPECTED_REJECTED.items():
        got_column, problem = got[key]
        if got_column != column or not all(w in problem for w in words):
            wrong[key] = (got_column, problem, "expected", column, words)
    assert not wrong


def test_rejected_row_raw_is_the_row_as_json(bad_run):
    raw = dict(bad_run.query("select row_number, raw from rejected_rows where source_table = 'events'"))
    assert json.loads(raw[9]) == {
        "event_id": "e7",
        "person_id": "p1",
        "occurred_at": "2026-03-01T00:00:00Z",
        "event_type": "frobbed",
        "study_id": None,
        "sequence_id": None,
        "channel": None,
        "actor_id": None,
        "value": None,
        "reason": None,
    }
    people_raw = dict(bad_run.query("select row_number, raw from rejected_rows where source_table = 'people'"))
    assert json.loads(people_raw[4])["created_at"] == "yesterday"
    assert json.loads(people_raw[4])["age"] == "33"  # property columns are kept in the raw row
    assert bad_run.query("select distinct as_of from rejected_rows") == [(date(2026, 3, 31),)]


def test_rows_read_equal_accepted_plus_rejected_in_run_inputs(bad_run):
    got = {
        t: (r, a, j)
        for t, r, a, j in bad_run.query("select source_table, rows_read, rows_accepted, rows_rejected from run_inputs")
    }
    # events: e1 (and its exact duplicate, accepted once) and e17 are the only good rows
    assert got == {
        "people": (7, 2, 5),
        "studies": (5, 2, 3),
        "participants": (9, 2, 7),
        "events": (19, 3, 16),
    }


def test_accepted_rows_are_the_first_valid_ones(bad_run):
    people = bad_run.query("select person_id from contact_status order by 1")
    assert people == [("p1",), ("p2",)]
    # p1's first participant row (study_invited) won, the later one (canceled) was rejected
    assert bad_run.query("select study_id, person_id, participant_status from participant_status order by 1, 2") == [
        ("S1", "p1", "study_invited"),
        ("S4", "p1", "not_contacted"),
    ]
    # the exact duplicate added nothing: e1 once, the opt-out reason intact
    assert bad_run.query("select contact_status from contact_status where person_id = 'p1'") == [("opted_out",)]
    reason = bad_run.query("select reason from contact_status where person_id = 'p1'")[0][0]
    assert "e1" in reason


def test_duplicate_key_first_valid_row_wins_even_after_an_invalid_first_row(ws):
    ws.write(
        people="person_id,created_at,age\np1,garbage,1\np1,2026-01-01T00:00:00Z,2\np1,2026-01-02T00:00:00Z,3\n",
    )
    ws.run()
    got = ws.query('select row_number, "column", problem from rejected_rows order by 1')
    assert [(n, c) for n, c, _ in got] == [(1, "created_at"), (3, "person_id")]
    assert "row 2" in got[1][2]
    assert ws.query("select person_id from contact_status") == [("p1",)]


def test_exact_duplicate_event_after_a_different_row_of_the_same_id(ws):
    a = "e1,p1,2026-03-01T00:00:00Z,opted_out"
    b = "e1,p1,2026-03-05T00:00:00Z,opted_out"
    ws.write(people=[person("p1")], events=f"event_id,person_id,occurred_at,event_type\n{a}\n{b}\n{a}\n{b}\n")
    ws.run()
    assert ws.query("select row_number from rejected_rows order by 1") == [(2,), (4,)]
    assert ws.query("select rows_read, rows_accepted, rows_rejected from run_inputs where source_table='events'") == [
        (4, 2, 2)
    ]


def test_participant_status_event_needs_a_participant_of_that_study(ws):
    ws.write(
        people=[person("p1"), person("p2")],
        studies=[study("S1"), study("S2")],
        participants=[participant("S1", "p1", "study_invited", "2026-03-01T00:00:00Z")],
        events=[
            event("e1", "p1", "2026-03-02T00:00:00Z", "participant_status", study_id="S2", value="canceled"),
            event("e2", "p2", "2026-03-02T00:00:00Z", "participant_status", study_id="S1", value="canceled"),
            event("e3", "p1", "2026-03-02T00:00:00Z", "participant_status", study_id="S1", value="screener_started"),
        ],
    )
    ws.run()
    assert ws.query("select row_number, \"column\" from rejected_rows order by 1") == [(1, "study_id"), (2, "study_id")]
    assert ws.query("select participant_status from participant_status") == [("screener_started",)]


def test_codes_padded_with_blanks_are_still_codes(ws):
    ws.write(
        people=[person("p1"), person("p2")],
        events=(
            "event_id,person_id,occurred_at,event_type,channel\n"
            "e1,p1,2026-03-01T00:00:00Z, opted_out ,\n"
            "e2,p2,2026-03-01T00:00:00Z,inbound_message,  sms\n"
            "e3,p2,2026-03-02T00:00:00Z, opted out,\n"
        ),
    )
    ws.run()
    assert ws.query('select row_number, "column", problem from rejected_rows') == [
        (3, "event_type", "unknown event_type code ' opted out'")
    ]
    assert ws.query("select person_id, contact_status from contact_status order by 1") == [
        ("p1", "opted_out"),
        ("p2", "free_to_contact"),
    ]
    assert ws.query("select person_id from channel_status where last_seen_on is not null") == [("p2",)]


def test_value_rules_of_one_event_type_leave_other_types_alone(ws):
    """A value that would break cooldown_set's date rule is fine on another event type."""
    ws.write(
        people=[person("p1")],
        events=[
            event("e1", "p1", "2026-03-01T00:00:00Z", "opted_out", value="not-a-date"),
            event("e2", "p1", "2026-03-02T00:00:00Z", "cooldown_set", value="not-a-date"),
            event("e3", "p1", "2026-03-03T00:00:00Z", "cooldown_set", value="2026-04-01"),
        ],
    )
    ws.run()
    assert ws.query('select row_number, "column" from rejected_rows') == [(2, "value")]
    assert ws.query("select cooldown_until from contact_status") == [(datetime(2026, 4, 2),)]  # through that day


# --- formats and time zones --------------------------------------------------------------------


def test_csv_gz_and_parquet_inputs_give_the_same_tables_as_csv(tmp_path):
    people = [person("p1"), person("p2", created_at="2026-03-01T00:00:00Z")]
    studies = [study("S1")]
    participants = [participant("S1", "p2", "survey_started", "2026-03-05T00:00:00Z")]
    events = [event("e1", "p1", "2026-03-21T09:30:00Z", "invited", study_id="S1")]
    plain = Workspace(tmp_path / "plain").write(people=people, studies=studies, participants=participants, events=events)
    plain.run()

    mixed = Workspace(tmp_path / "mixed").write(people=people, studies=studies, participants=participants, events=events)
    # events as .csv.gz
    events_csv = mixed.input / "events.csv"
    (mixed.input / "events.csv.gz").write_bytes(gzip.compress(events_csv.read_bytes()))
    events_csv.unlink()
    # people as Parquet with typed, zone-aware instants; studies with naive instants (taken as UTC)
    (mixed.input / "people.csv").unlink()
    pl.DataFrame(
        {
            "person_id": ["p1", "p2"],
            "created_at": [
                datetime(2026, 1, 1, 1, 0, tzinfo=timezone(timedelta(hours=1))),
                datetime(2026, 3, 1, tzinfo=UTC),
            ],
        }
    ).write_parquet(mixed.input / "people.parquet")
    (mixed.input / "studies.csv").unlink()
    pl.DataFrame(
        {
            "study_id": ["S1"],
            "kind": ["interview"],
            "opened_at": [datetime(2026, 1, 1)],
            "closed_at": pl.Series([None], dtype=pl.Datetime("us")),
        }
    ).write_parquet(mixed.input / "studies.parquet")
    mixed.run()

    for table in ("contact_status", "participant_status", "cooldowns", "study_progress"):
        key = "study_id" if table == "study_progress" else "person_id"
        a = plain.frame(f"select * exclude (as_of) from {table} order by {key}")
        b = mixed.frame(f"select * exclude (as_of) from {table} order by {key}")
        assert a.select(sorted(a.columns)).equals(b.select(sorted(b.columns))), table
    assert mixed.query("select count(*) from rejected_rows") == [(0,)]


def test_parquet_values_of_the_wrong_type_are_rejected_rows(ws):
    ws.write(people=[person("p1")])
    (ws.input / "studies.csv").unlink()
    pl.DataFrame(
        {"study_id": ["S1", "S2"], "kind": ["survey", "cinema"], "participation_limit": ["3", "lots"]}
    ).write_parquet(ws.input / "studies.parquet")
    ws.run()
    # "cinema" is an unknown code too, but parsing comes first and a row is reported once
    assert ws.query('select row_number, "column" from rejected_rows order by 1') == [(2, "participation_limit")]
    assert ws.query("select study_id from study_progress") == [("S1",)]


@pytest.mark.parametrize(
    ("created_at", "exists"),
    [
        ("2026-03-31T23:59:59Z", True),
        ("2026-03-31T23:59:59", True),  # naive: taken as UTC
        ("2026-03-31 23:59:59", True),
        ("2026-04-01T01:30:00+02:00", True),  # 2026-03-31T23:30Z
        ("2026-03-31T23:30:00-02:00", False),  # 2026-04-01T01:30Z
        ("2026-04-01T00:00:00Z", False),
        ("2026-04-01T00:00:00.000001+00:00", False),
    ],
)
def test_offsets_are_converted_to_utc_and_naive_values_taken_as_utc(ws, created_at, exists):
    ws.write(people=[person("p1", created_at=created_at)])
    ws.run()
    assert ws.query("select count(*) from rejected_rows") == [(0,)]
    assert ws.query("select count(*) from contact_status") == [(int(exists),)]


def test_event_offsets_are_converted_before_adding_days(ws):
    ws.write(
        people=[person("p1")],
        studies=[study("S1")],
        events=[event("e1", "p1", "2026-03-21T11:30:00+02:00", "invited", study_id="S1")],
    )
    ws.run()
    assert ws.query("select cooldown_until from contact_status") == [(naive("2026-04-20T09:30:00Z"),)]


def test_people_property_columns_are_kept_and_typed(ws):
    ws.write(
        '[[do_not_contact]]\nname = "adults"\nwhen = "age >= 18 and vip = false"\n',
        people=[
            person("p1", age="17", vip="true"),
            person("p2", age="18", vip="false"),
            person("p3", age="", vip=""),
        ],
    )
    ws.run()
    assert ws.query("select person_id, contact_status from contact_status order by 1") == [
        ("p1", "free_to_contact"),
        ("p2", "do_not_contact"),
        ("p3", "free_to_contact"),
    ]


def test_nan_in_a_number_property_is_a_missing_value(ws):
    """NaN (how pandas writes a missing float, in CSV or Parquet) must not compare greater than every
    age: `age > 90` once matched every person without an age."""
    ws.write(
        '[[do_not_contact]]\nname = "elderly"\nwhen = "age > 90"\n\n'
        '[[do_not_contact]]\nname = "no_age"\nwhen = "age is null"\n',
        people=[person("p1", age="95"), person("p2", age="NaN"), person("p3", age="40"), person("p4", age="inf")],
    )
    ws.run()
    as_csv = ws.query("select person_id, reason from contact_status where contact_status = 'do_not_contact' order by 1")
    (ws.input / "people.csv").unlink()
    pl.DataFrame(
        {"person_id": ["p1", "p2", "p3", "p4"], "created_at": [datetime(2026, 1, 1)] * 4,
         "age": [95.0, float("nan"), 40.0, float("inf")]}
    ).write_parquet(ws.input / "people.parquet")
    ws.run()
    as_parquet = ws.query("select person_id, reason from contact_status where contact_status = 'do_not_contact' order by 1")
    assert as_csv == as_parquet == [
        ("p1", "do-not-contact rule 'elderly'"),
        ("p2", "do-not-contact rule 'no_age'"),
        ("p4", "do-not-contact rule 'elderly'"),
    ]


def test_as_of_column_is_the_run_date(ws):
    ws.write(people=[person("p1")])
    ws.run(as_of="2026-03-15T10:00:00Z")
    assert ws.query("select as_of from contact_status") == [(date(2026, 3, 15),)]


def test_a_later_row_of_an_accepted_key_reports_its_own_earlier_failing_check(ws):
    ws.write(
        people=[person("p1")],
        studies=[study("S1")],
        events="event_id,person_id,occurred_at,event_type,study_id\n"
        "e1,p1,2026-03-01T00:00:00Z,opted_out,\n"
        "e1,p1,2026-03-02T00:00:00Z,frobbed,\n"  # code before duplicate
        "e1,p9,2026-03-02T00:00:00Z,opted_out,\n"  # reference before duplicate
        "e1,p1,,opted_out,\n"  # required before duplicate
        "e1,p1,2026-03-02T00:00:00Z,opted_out,S1\n",  # only the duplicate
    )
    ws.run()
    got = ws.query('select row_number, "column", problem from rejected_rows order by 1')
    assert [(n, c) for n, c, _ in got] == [(2, "event_type"), (3, "person_id"), (4, "occurred_at"), (5, "event_id")]
    assert "duplicate" in got[3][2] and "row 1" in got[3][2]


def test_a_ragged_csv_row_stops_the_run_as_an_unreadable_file(ws):
    """A row with more fields than the header makes the file unreadable (exit 2), it is not quarantined."""
    ws.write(people="person_id,created_at\np1,2026-01-01,surplus\np2,2026-01-01\n")
    result = ws.run(check=False)
    assert result.exit_code == 2 and "people.csv" in result.stderr
    assert not ws.db.exists()


def test_a_ragged_events_row_stops_the_run_before_the_database_is_opened(ws):
    """The events are read a range at a time once the database is open; a ragged row is found by the
    first pass instead, so the run writes nothing, not even a `runs` row (§5)."""
    ws.write(
        people=[person("p1")],
        events="event_id,person_id,occurred_at,event_type\n"
        "e1,p1,2026-03-01T00:00:00Z,opted_out\ne2,p1,2026-03-02T00:00:00Z,opted_out,surplus\n",
    )
    result = ws.run(check=False)
    assert result.exit_code == 2 and "events.csv" in result.stderr
    assert not ws.db.exists()


@pytest.mark.parametrize("known_people", [3, 1000])
def test_reference_lookup_by_join_finds_exactly_the_unknown_keys(known_people):
    """Fewer keys than known rows (the repeated event ids against everyone) and more (a range's events)."""
    known = pl.DataFrame({"study_id": ["S1"] * known_people, "person_id": [f"p{i}" for i in range(known_people)]})
    keys = pl.DataFrame(
        {
            "__position": pl.Series([0, 1, 2, 3, 4, 5], dtype=pl.UInt32),
            "study_id": ["S1", "S2", "S1", None, "S1", "S1"],
            "person_id": ["p1", "p1", "p2", "p1", "p9999", "p1"],
        }
    ).rename({"__position": tables.POSITION})
    assert sorted(tables._unknown(keys, known).to_list()) == [1, 3, 4]


@pytest.mark.parametrize(("numbers", "positions"), [([2, 5, 7, 9], [0, 3]), ([5, 2, 9, 7], [1, 2]), ([], [])])
def test_rows_are_found_by_number_in_file_order_or_not(numbers, positions):
    """A share in file order is searched; any other order is looked up; rows it lacks are none of its."""
    frame = pl.DataFrame({ROW: numbers}, schema={ROW: pl.Int64})
    found = _positions_of(frame, pl.Series([9, 2, 4], dtype=pl.UInt32))
    assert found.to_list() == positions


def test_property_columns_are_typed_only_when_every_value_fits():
    """§7.7: one value that does not fit keeps the column text, wherever it is (first or last)."""
    raw = pl.DataFrame(
        {
            "person_id": ["p1", "p2", "p3"],
            "flag": [" True", "false", None],
            "count": ["1", " 2 ", None],
            "ratio": ["1", "2.5", None],
            "late_text": ["1", "2", "x"],
            "late_flag": ["true", "false", "maybe"],
            "first_text": ["x", "1", "2"],
            "empty": [None, None, None],
        },
        schema_overrides={"empty": pl.String},
    )
    typed = raw.select(**_property_columns(raw, input_table("people")))
    assert dict(typed.schema) == {
        "flag": pl.Boolean, "count": pl.Int64, "ratio": pl.Float64, "late_text": pl.String,
        "late_flag": pl.String, "first_text": pl.String, "empty": pl.Null,
    }
    assert typed.select("flag", "count", "ratio").rows() == [(True, 1, 1.0), (False, 2, 2.5), (None, None, None)]


# --- values as files spell them ------------------------------------------------------------------


def test_quoted_empty_csv_cells_are_null_like_unquoted_ones(ws):
    """§1 "Empty CSV cells are null", whether the writer quoted them or not (csv.QUOTE_ALL writes `""`)."""
    ws.write(
        people='"person_id","created_at","last_seen_on","age"\n'
        '"p1","2026-01-01T00:00:00Z","",""\n'
        '"","2026-01-01T00:00:00Z","",""\n',
        studies='"study_id","kind","opened_at","closed_at","participation_limit"\n"S1","survey","","",""\n',
        events='"event_id","person_id","occurred_at","event_type","study_id","channel","value"\n'
        '"e1","p1","2026-03-01T00:00:00Z","opted_out","","",""\n'
        '"","p1","2026-03-02T00:00:00Z","blocklist_added","","",""\n',
    )
    ws.run()
    assert ws.query('select source_table, row_number, "column", problem from rejected_rows order by 1, 2') == [
        ("events", 2, "event_id", "missing required value"),
        ("people", 2, "person_id", "missing required value"),
    ]
    assert ws.query("select person_id, contact_status from contact_status") == [("p1", "opted_out")]
    assert ws.query("select study_id from study_progress") == [("S1",)]


def test_parquet_categorical_codes_padded_with_blanks_are_codes(ws):
    """decisions.md: a code with surrounding blanks is the code, whatever the column's Parquet type."""
    ws.write(people=[person("p1"), person("p2")], studies=[study("S1")])
    (ws.input / "participants.csv").unlink()
    pl.DataFrame(
        {
            "study_id": ["S1", "S1"],
            "person_id": ["p1", "p2"],
            "added_at": [datetime(2026, 1, 1)] * 2,
            "participant_status": pl.Series([" canceled ", "made up"], dtype=pl.Categorical),
        }
    ).write_parquet(ws.input / "participants.parquet")
    ws.run()
    assert ws.query('select row_number, "column", problem from rejected_rows') == [
        (2, "participant_status", "unknown participant_status code 'made up'")
    ]
    assert ws.query("select person_id, participant_status from participant_status") == [("p1", "canceled")]


def test_parquet_values_that_would_change_in_conversion_are_rejected_rows(ws):
    """§5 wrong type → bad row: a Parquet value is taken only when the contract type holds it exactly
    (1.0 as a whole number); 1.5, or a number as an instant, is not quietly made one."""
    ws.write(events=[])
    (ws.input / "people.csv").unlink()
    pl.DataFrame(
        {"person_id": ["p1", "p2"], "created_at": pl.Series([1767225600000000, 1767225600000000], dtype=pl.Int64)}
    ).write_parquet(ws.input / "people.parquet")
    (ws.input / "studies.csv").unlink()
    pl.DataFrame(
        {"study_id": ["S1", "S2", "S3"], "kind": ["survey"] * 3, "participation_limit": [1.5, 2.0, None]}
    ).write_parquet(ws.input / "studies.parquet")
    ws.run()
    assert ws.query('select source_table, row_number, "column", problem from rejected_rows order by 1, 2') == [
        ("people", 1, "created_at", "not a valid timestamp: '1767225600000000'"),
        ("people", 2, "created_at", "not a valid timestamp: '1767225600000000'"),
        ("studies", 1, "participation_limit", "not a valid whole number: '1.5'"),
    ]
    assert ws.query("select study_id from study_progress order by 1") == [("S2",), ("S3",)]


def test_a_rejected_row_of_a_parquet_file_with_nested_columns_keeps_its_raw_row(ws):
    """A list or struct property column is written into `raw` as JSON, not a failed run."""
    ws.write(events=[])
    (ws.input / "people.csv").unlink()
    pl.DataFrame(
        {
            "person_id": ["p1", "p2"],
            "created_at": [datetime(2026, 1, 1), None],
            "tags": [["a", "b"], ["c"]],
            "meta": [{"x": 1}, {"x": 2}],
        }
    ).write_parquet(ws.input / "people.parquet")
    ws.run()
    (raw,) = ws.query("select raw from rejected_rows")[0]
    assert json.loads(raw) == {"person_id": "p2", "created_at": None, "tags": ["c"], "meta": {"x": 2}}
    assert ws.query("select person_id from contact_status") == [("p1",)]


def test_rejected_rows_do_not_decide_a_property_columns_type(ws):
    """§5: a bad row never stops the run; its text in `age` must not make the column text and the
    rule `age < 18` a type error."""
    ws.write(
        '[[do_not_contact]]\nname = "minors"\nwhen = "age < 18"\n',
        people="person_id,created_at,age\np1,2026-01-01T00:00:00Z,17\np2,2026-01-01T00:00:00Z,30\n"
        "p1,2026-01-01T00:00:00Z,unknown\np3,,n/a\n",
    )
    ws.run()
    assert ws.query('select row_number, "column" from rejected_rows order by 1') == [(3, "person_id"), (4, "created_at")]
    assert ws.query("select person_id, contact_status from contact_status order by 1") == [
        ("p1", "do_not_contact"),
        ("p2", "free_to_contact"),
    ]


def test_a_value_that_names_a_code_may_be_padded_with_blanks_too(ws):
    """decisions.md: a code with surrounding blanks is the code; a participant_status event's value is
    a participant status code and a status_set's a sequence status, so they are read stripped.
    Free text (an unsubscribed value) is not checked and may carry its blanks."""
    ws.write(
        people=[person("p1")],
        studies=[study("S1")],
        participants=[participant("S1", "p1", "study_invited")],
        events=[
            event("e1", "p1", "2026-03-01T00:00:00Z", "participant_status", study_id="S1", value=" canceled "),
            event("e2", "p1", "2026-03-01T00:00:00Z", "sequence_added", sequence_id="Q1"),
            event("e3", "p1", "2026-03-02T00:00:00Z", "status_set", sequence_id="Q1", value="paused "),
            event("e4", "p1", "2026-03-03T00:00:00Z", "status_set", sequence_id="Q1", value="pa used"),
            event("e5", "p1", "2026-03-03T00:00:00Z", "unsubscribed", value="  no thanks  "),
        ],
    )
    ws.run()
    assert ws.query('select row_number, "column", problem from rejected_rows') == [
        (4, "value", "unknown sequence status or flag 'pa used'")
    ]
    assert ws.query("select participant_status from participant_status") == [("canceled",)]
    assert ws.query("select status from sequence_status") == [("paused",)]


def test_a_csv_workspace_read_in_several_chunks_reports_its_bad_rows(tmp_path):
    """A CSV large enough to be read in chunks (6000 people's participants: ~380 kB) with a few bad rows:
    describing its bad rows once made Polars panic (`format` over a column a filter left with empty
    chunks), failing the run."""
    ws = Workspace(tmp_path / "ws").write()
    for name in ("people", "studies", "participants", "events"):
        (ws.input / f"{name}.csv").unlink()
    synthetic.generate(SyntheticConfig(people=6000, seed=7, messy_rate=0.001), ws.input, "csv")
    ws.run(as_of="2026-11-20")
    counts = ws.query("select source_table, rows_read, rows_accepted, rows_rejected from run_inputs")
    assert all(read == accepted + rejected for _, read, accepted, rejected in counts)
    assert dict((t, r) for t, _, _, r in counts)["participants"] > 0


def test_empty_text_in_a_parquet_file_is_an_empty_cell(ws):
    """§5: "" in a Parquet text column is what an empty CSV cell is: a missing required value rejects
    the row, an absent optional one is null (an empty id once failed the run's output validation)."""
    ws.write(studies=[study("S1")])
    (ws.input / "people.csv").unlink()
    pl.DataFrame(
        {"person_id": ["p1", "", "p3"], "created_at": [datetime(2026, 1, 1)] * 3, "email": ["", "x@y.z", None]}
    ).write_parquet(ws.input / "people.parquet")
    (ws.input / "events.csv").unlink()
    pl.DataFrame(
        {
            "event_id": ["e1", "e2", "", "e4"],
            "person_id": ["p1", "p1", "p1", "p3"],
            "occurred_at": [datetime(2026, 3, 1)] * 4,
            "event_type": ["sequence_added", "sequence_added", "opted_out", "replied"],
            "sequence_id": ["", "S", None, "S"],
            "channel": [None, "", None, ""],
            "study_id": ["", "", "", ""],
        }
    ).write_parquet(ws.input / "events.parquet")
    ws.run()
    assert ws.query('select source_table, row_number, "column", problem from rejected_rows order by 1, 2') == [
        ("events", 1, "sequence_id", "a sequence_added event needs a sequence_id"),
        ("events", 3, "event_id", "missing required value"),
        ("people", 2, "person_id", "missing required value"),
    ]
    assert ws.query("select person_id, sequence_id, status, replied, replied_by from sequence_status") == [
        ("p1", "S", "active", False, None)
    ]
    assert ws.query("select person_id from contact_status order by 1") == [("p1",), ("p3",)]


def test_blank_lines_of_a_csv_file_are_no_rows(ws):
    """A blank line (a trailing one is a common export artefact) holds no value: it is neither read
    nor rejected, and the rows after it keep their place in the file's numbering."""
    ws.write(people=[person("p1"), person("p2")], events=[event("e1", "p1", "2026-03-01T00:00:00Z", "opted_out")])
    people = (ws.input / "people.csv").read_text().splitlines()
    (ws.input / "people.csv").write_text("\r\n".join([people[0], people[1], "", people[2], ",,,", ""]) + "\r\n\r\n")
    (ws.input / "events.csv").write_text((ws.input / "events.csv").read_text() + "\n\ne2,px,2026-03-01T00:00:00Z,opted_out\n\n")
    ws.run()
    assert ws.query("select source_table, rows_read, rows_rejected from run_inputs order by 1") == [
        ("events", 2, 1), ("participants", 0, 0), ("people", 2, 0), ("studies", 0, 0)
    ]
    assert ws.query("select source_table, row_number from rejected_rows") == [("events", 4)]
    assert ws.query("select person_id from contact_status order by 1") == [("p1",), ("p2",)]
