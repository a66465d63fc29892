"""`statusbatch explain` (SPEC §6) on a database written by a real run."""

from __future__ import annotations

import json

import duckdb
import polars as pl
import pytest
from conftest import Workspace, cli, event, participant, person, study


@pytest.fixture(scope="module")
def db(tmp_path_factory):
    ws = Workspace(tmp_path_factory.mktemp("explain") / "ws").write(
        people=[person("p1"), person("p2"), person("p3")],
        studies=[study("S1"), study("S2", closed_at="2026-02-15T00:00:00Z")],
        participants=[participant("S1", "p2", "interview_scheduled", "2026-03-20T00:00:00Z")],
        events=[
            event("e1", "p1", "2026-03-01T09:00:00Z", "invited", study_id="S1"),
            event("e2", "p1", "2026-03-10T09:00:00Z", "invited", study_id="S2"),
            event("e3", "p3", "2026-02-01T08:00:00Z", "opted_out", reason="asked by phone"),
            event("e4", "p1", "2026-03-05T10:00:00Z", "status_set", sequence_id="Q1", value="paused"),
        ],
    )
    ws.run(as_of="2026-03-20")
    ws.run(as_of="2026-03-31")
    return ws.db


def explain(*args: str):
    return cli("explain", *args)


def test_rich_report_names_the_deciding_facts(db):
    result = explain("--db", str(db), "p1")
    assert result.exit_code == 0, result.output
    out = result.output
    assert "p1 — in_cooldown (as of 2026-03-31)" in out
    # the cooldown: its end, source event and study; the governance row of the second invite
    assert "2026-04-09T09:00:00Z" in out and "e2" in out
    assert "invite e2 to S2 on 2026-03-10 09:00:00Z: in_cooldown, override_required" in out
    for table in ("cooldowns", "governance_violations", "rejected_transitions", "contact_status_history", "status_changes"):
        assert table in out


def test_the_terminal_report_shows_text_as_stored_never_as_markup(tmp_path):
    """Ids and reasons are data: `[/]` once crashed the report, `[bold]` vanished, `[m3]` left a
    panel without its person."""
    ws = Workspace(tmp_path / "ws").write(
        people=[person("[m3]"), person("m2")],
        events=[
            event("e1", "[m3]", "2026-03-01T00:00:00.250Z", "cooldown_set", value="2026-04-01"),
            event("[e2]", "m2", "2026-03-01T00:00:00Z", "opted_out", reason="[bold]legal[/bold] see [/] ticket"),
        ],
    )
    ws.run(as_of="2026-03-05")
    for person_id, shown in (
        ("[m3]", ["[m3] — in_cooldown (as of 2026-03-05)", "2026-03-01 00:00:00.250000Z"]),
        ("m2", ["[bold]legal[/bold] see [/] ticket", "[e2]"]),
    ):
        result = explain("--db", str(ws.db), person_id)
        assert result.exit_code == 0, result.output
        flat = "".join(result.output.split())  # table cells may fold long text over lines
        for text in shown:
            assert "".join(text.split()) in flat, (text, result.output)


def test_a_history_rebuilt_by_an_older_day_says_where_it_ends(tmp_path):
    """§4: each run replaces the history with its own up to its T, so after re-running an older day
    the history ends there; the report of a later as_of says so instead of passing off the history's
    last interval as current."""
    ws = Workspace(tmp_path / "ws").write(
        "[retention]\nkeep_as_of = 0\n",
        people=[person("y3")],
        events=[
            event("e1", "y3", "2026-03-01T00:00:00Z", "opted_out"),
            event("e2", "y3", "2026-03-25T00:00:00Z", "opt_out_revoked"),
        ],
    )
    ws.run(as_of="2026-03-31")
    fresh = explain("--db", str(ws.db), "y3")
    assert fresh.exit_code == 0 and "last rebuilt" not in fresh.output
    assert json.loads(explain("--db", str(ws.db), "--json", "y3").output)["contact_status_history_ends"] is None
    ws.run(as_of="2026-03-10")
    stale = explain("--db", str(ws.db), "y3")
    assert stale.exit_code == 0, stale.output
    assert "free_to_contact (as of 2026-03-31)" in stale.output
    assert "contact_status_history was last rebuilt by the run as of 2026-03-10" in " ".join(stale.output.split())
    doc = json.loads(explain("--db", str(ws.db), "--json", "y3").output)
    assert doc["contact_status_history_ends"] == "2026-03-10"
    assert doc["contact_status_history"][-1]["contact_status"] == "opted_out"


def test_refused_changes_are_part_of_why(db):
    """A manual change that was refused explains why a status is not what someone set."""
    doc = json.loads(explain("--db", str(db), "--json", "p1").output)
    assert [(r["event_id"], r["model"], r["requested"], r["reason"]) for r in doc["rejected_transitions"]] == [
        ("e4", "sequence", "paused", "not in the sequence")
    ]


def test_json_is_one_document_with_every_table(db):
    result = explain("--db", str(db), "--json", "p2")
    assert result.exit_code == 0, result.output
    doc = json.loads(result.output)
    assert doc["person_id"] == "p2" and doc["as_of"] == "2026-03-31"
    assert doc["contact_status"]["contact_status"] == "active_in_study"
    assert doc["contact_status"]["active_study_ids"] == ["S1"]
    assert [r["study_id"] for r in doc["participant_status"]] == ["S1"]
    assert [(r["contact_status"], r["valid_from"], r["valid_to"]) for r in doc["contact_status_history"]] == [
        ("free_to_contact", "2026-01-01T00:00:00Z", "2026-03-20T00:00:00Z"),
        ("active_in_study", "2026-03-20T00:00:00Z", None),
    ]
    assert [(r["as_of"], r["contact_status"]) for r in doc["status_changes"]] == [("2026-03-20", "active_in_study")]
    assert any("active in study S1" in line for line in doc["decided_by"])


def test_an_earlier_published_as_of(db):
    result = explain("--db", str(db), "--json", "--as-of", "2026-03-20", "p3")
    assert result.exit_code == 0, result.output
    doc = json.loads(result.output)
    assert doc["as_of"] == "2026-03-20"
    assert doc["contact_status"]["contact_status"] == "opted_out"
    assert "e3" in doc["contact_status"]["reason"]


def test_read_only_the_database_is_unchanged(db):
    before = duckdb.connect(str(db), read_only=True).execute("select count(*) from runs").fetchall()
    explain("--db", str(db), "p1")
    after = duckdb.connect(str(db), read_only=True).execute("select count(*) from runs").fetchall()
    assert before == after


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["p9"], "person 'p9' is not in contact_status as of 2026-03-31"),
        (["--as-of", "2026-01-01", "p1"], "no published as_of 2026-01-01"),
        (["--as-of", "yesterday", "p1"], "--as-of: expected a date"),
    ],
)
def test_known_problems_exit_2_with_one_line(db, args, message):
    result = explain("--db", str(db), *args)
    assert result.exit_code == 2
    assert message in result.output
    assert len(result.output.strip().splitlines()) == 1
    assert "Traceback" not in result.output


def test_missing_or_foreign_database_exits_2(tmp_path):
    missing = explain("--db", str(tmp_path / "nope.duckdb"), "p1")
    assert missing.exit_code == 2 and "no such database file" in missing.output
    empty = tmp_path / "empty.duckdb"
    duckdb.connect(str(empty)).close()
    no_tables = explain("--db", str(empty), "p1")
    assert no_tables.exit_code == 2 and "no contact_status table" in no_tables.output
    junk = tmp_path / "junk.duckdb"
    junk.write_text("not a database")
    unreadable = explain("--db", str(junk), "p1")
    assert unreadable.exit_code == 2 and "cannot read the database" in unreadable.output


def test_history_and_violations_are_published_in_their_schemas(db):
    con = duckdb.connect(str(db), read_only=True)
    history_rows = con.execute("select count(*) from contact_status_history").fetchall()[0][0]
    kinds = con.sql("select kind from governance_violations where as_of = '2026-03-31'").pl()
    con.close()
    assert history_rows > 0
    assert kinds.get_column("kind").to_list() == ["override_required"]
    assert kinds.schema["kind"] == pl.String
