"""`statusbatch import-legacy`: labels to events, people, rejected rows and malformed files (SPEC §6)."""

from __future__ import annotations

import csv
import json
from datetime import datetime
from pathlib import Path

import duckdb
import pytest
from click.testing import CliRunner, Result

import statusbatch.legacy as legacy
from statusbatch.cli import main
from statusbatch.legacy import COMPUTED_LABELS, LABELS

SAMPLES = Path(__file__).resolve().parent.parent / "sample_data" / "legacy"
HEADERS = {
    "rally": "Person ID,Contact Status,Status Updated At",
    "reply": "Contact ID,Sequence ID,Status,Status Updated At",
    "rapidpro": "Contact UUID,Status,Status Changed On",
}


def run(tmp_path: Path, system: str, body: str | bytes, *options: str, name: str = "legacy.csv") -> Result:
    source = tmp_path / name
    source.write_bytes(body if isinstance(body, bytes) else body.encode("utf-8"))
    return invoke(system, source, tmp_path / "out", *options)


def invoke(system: str, source: Path, out: Path, *options: str) -> Result:
    return CliRunner().invoke(main, ["import-legacy", "--system", system, str(source), "--out", str(out), *options])


def table(path: Path) -> list[dict[str, str]]:
    with path.open(newline="", encoding="utf-8") as handle:
        return list(csv.DictReader(handle))


def events(tmp_path: Path) -> list[dict[str, str]]:
    return table(tmp_path / "out" / "events.csv")


def summary(result: Result) -> dict[str, int]:
    """The plain summary lines as numbers (the first word of each value)."""
    pairs = (line.split(": ", 1) for line in result.output.splitlines() if ": " in line)
    return {k: int(v.split()[0]) for k, v in pairs if v.split()[0].isdigit()}


def steps(rows: list[dict[str, str]]) -> list[tuple[str, str, str]]:
    return [(e["event_type"], e["value"], e["channel"]) for e in rows]


def rejected(tmp_path: Path, system: str, stem: str = "legacy") -> list[dict[str, str]]:
    return table(tmp_path / "out" / "legacy_rejected" / f"{system}-{stem}.csv")


# Every label of every system --------------------------------------------------------------------

RALLY = {
    "Free to Contact": [],
    "Active in Study": [],
    "In Cooldown": [("cooldown_set", "2024-05-29", "")],
    "Do Not Contact": [("do_not_contact_set", "", "")],
    "Opted Out": [("opted_out", "", "")],
    "In Blocklist": [("blocklist_added", "", "")],
}
RAPIDPRO = {
    "Active": [],
    "Stopped": [("stopped", "", "")],
    "Blocked": [("blocked", "", "")],
    "Archived": [("archived", "", "")],
}
ADDED = ("sequence_added", "", "")
REPLY = {
    "Active": [ADDED],
    "Paused": [ADDED, ("status_set", "paused", "")],
    "Missing data": [ADDED, ("missing_data", "", "")],
    "Bounced": [ADDED, ("bounced", "", "")],
    "Out of office": [ADDED, ("out_of_office", "", "")],
    "Finished": [ADDED, ("status_set", "finished", "")],
    "Opted Out": [ADDED, ("opted_out", "", "")],
    "Contacted": [ADDED, ("email_sent", "", "")],
    "Opened": [ADDED, ("email_opened", "", "")],
    "Clicked": [ADDED, ("link_clicked", "", "")],
    "Replied": [ADDED, ("replied", "", "email")],
    "Replied by email": [ADDED, ("replied", "", "email")],
    "Replied by sms": [ADDED, ("replied", "", "sms")],
    "Auto-replied": [ADDED, ("auto_replied", "", "")],
    "To call": [ADDED, ("call_step_reached", "", "")],
    "Called": [ADDED, ("call_logged", "", "")],
}
EXPECTED = {"rally": RALLY, "reply": REPLY, "rapidpro": RAPIDPRO}


def test_every_seed_label_has_an_expectation() -> None:
    assert {s: set(labels) for s, labels in LABELS.items()} == {s: set(e) for s, e in EXPECTED.items()}


def _row(system: str, label: str, person: str = "P1", date: str = "2024-03-01", sequence: str = "S1") -> str:
    cell = f'"{label}"' if "," in label else label
    return f"{person},{sequence},{cell},{date}" if system == "reply" else f"{person},{cell},{date}"


@pytest.mark.parametrize(
    ("system", "label"), [(s, label) for s, labels in EXPECTED.items() for label in labels]
)
def test_each_label_writes_its_events(tmp_path: Path, system: str, label: str) -> None:
    result = run(tmp_path, system, f"{HEADERS[system]}\n{_row(system, label)}\n")
    assert result.exit_code == 0, result.output
    written = events(tmp_path)
    assert steps(written) == EXPECTED[system][label]
    assert (not written) == (label in COMPUTED_LABELS[system])
    assert [e["occurred_at"] for e in written] == sorted(e["occurred_at"] for e in written)
    assert len({e["occurred_at"] for e in written}) == len(written)
    assert all(e["occurred_at"].startswith("2024-03-01T00:00:00.") for e in written)
    assert all(e["sequence_id"] == ("S1" if system == "reply" else "") for e in written)
    assert all(e["event_id"].startswith(f"legacy-{system}-") for e in written)
    counts = summary(result)
    assert counts["rows imported"] == (1 if written else 0)
    assert counts["rows reported (no event)"] == (0 if written else 1)
    assert [p["person_id"] for p in table(tmp_path / "out" / "people.csv")] == ["P1"]


def test_labels_match_ignoring_case_and_surrounding_space(tmp_path: Path) -> None:
    body = f"{HEADERS['rally']}\nP1,  opted OUT ,2024-03-01\nP2,IN BLOCKLIST,2024-03-01\n"
    assert run(tmp_path, "rally", body).exit_code == 0
    assert steps(events(tmp_path)) == [("opted_out", "", ""), ("blocklist_added", "", "")]


def test_reply_cell_with_several_labels(tmp_path: Path) -> None:
    body = (
        f"{HEADERS['reply']}\n"
        'P1,S1," finished , REPLIED ,contacted",2024-03-01\n'
        'P2,S1,"Active, Auto-replied",2024-03-01\n'
        'P3,S1,"Bounced, Contacted, Opened",2024-03-01\n'
    )
    result = run(tmp_path, "reply", body)
    assert result.exit_code == 0, result.output
    by_person = {p: steps([e for e in events(tmp_path) if e["person_id"] == p]) for p in ("P1", "P2", "P3")}
    # A reply already finishes the membership (reply_handling finish): a status_set finished would be refused.
    assert by_person["P1"] == [ADDED, ("email_sent", "", ""), ("replied", "", "email")]
    assert by_person["P2"] == [ADDED, ("auto_replied", "", ""), ("status_set", "active", "")]
    assert by_person["P3"] == [ADDED, ("email_sent", "", ""), ("email_opened", "", ""), ("bounced", "", "")]
    assert "label Finished: 1" in result.output and "label Contacted: 2" in result.output


def test_reply_continue_handling_and_owner_come_from_the_sequences_file(tmp_path: Path) -> None:
    (tmp_path / "out").mkdir()
    sequences = "sequence_id,owner_id,team_edition,reply_handling\nS1,u-7,true,continue\n"
    (tmp_path / "out" / "sequences.csv").write_text(sequences)
    result = run(tmp_path, "reply", f'{HEADERS["reply"]}\nP1,S1,"Finished, Replied",2024-03-01\n')
    assert result.exit_code == 0, result.output
    written = events(tmp_path)
    assert steps(written) == [ADDED, ("replied", "", "email"), ("status_set", "finished", "")]
    assert written[-1]["actor_id"] == "u-7"


def test_conflicting_reply_statuses_are_rejected(tmp_path: Path) -> None:
    result = run(tmp_path, "reply", f'{HEADERS["reply"]}\nP1,S1,"Paused, Finished",2024-03-01\n')
    assert result.exit_code == 0
    [bad] = rejected(tmp_path, "reply")
    assert bad["column"] == "Status" and "Finished, Paused" in bad["problem"]


# Rows of one person are a history ----------------------------------------------------------------


def test_rally_history_ends_the_previous_status(tmp_path: Path) -> None:
    body = (
        f"{HEADERS['rally']}\n"
        "P1,In Blocklist,2024-01-01\nP1,Free to Contact,2024-02-01\n"
        "P2,Opted Out,2024-01-01\nP2,In Blocklist,2024-02-01\nP2,Active in Study,2024-03-01\n"
    )
    assert run(tmp_path, "rally", body).exit_code == 0
    by_person = {p: steps([e for e in events(tmp_path) if e["person_id"] == p]) for p in ("P1", "P2")}
    assert by_person["P1"] == [("blocklist_added", "", ""), ("blocklist_removed", "", "")]
    # Active in Study is outranked by In Blocklist (the Rally seed): shown, it means the blocklist ended
    assert by_person["P2"] == [
        ("opted_out", "", ""), ("opt_out_revoked", "", ""), ("blocklist_added", "", ""), ("blocklist_removed", "", "")
    ]


def test_active_in_study_ends_only_the_statuses_that_outrank_it(tmp_path: Path) -> None:
    body = (
        f"{HEADERS['rally']}\n"
        "P1,Opted Out,2024-01-01\nP1,Active in Study,2024-02-01\nP1,Active in Study,2024-03-01\n"
        "P1,Free to Contact,2024-04-01\n"
        "P2,In Cooldown,2024-01-01\nP2,Active in Study,2024-01-15\n"
        "P3,Do Not Contact,2024-01-01\nP3,Active in Study,2024-02-01\nP3,Free to Contact,2024-03-01\n"
    )
    assert run(tmp_path, "rally", body).exit_code == 0
    by_person = {p: steps([e for e in events(tmp_path) if e["person_id"] == p]) for p in ("P1", "P2", "P3")}
    assert by_person["P1"] == [("opted_out", "", ""), ("opt_out_revoked", "", "")]
    assert by_person["P2"] == [("cooldown_set", "2024-03-30", "")]  # a cooldown may hold beneath it
    assert by_person["P3"] == [("do_not_contact_set", "", ""), ("do_not_contact_cleared", "", "")]


def test_the_same_row_in_another_history_is_another_event(tmp_path: Path) -> None:
    """A row's first event ends whatever status came before it, so its id names that event: a fuller
    export imported after a partial one adds the end it needs instead of matching the other's."""
    partial = f"{HEADERS['rally']}\nM1,Opted Out,2024-01-01\nM1,Free to Contact,2024-03-01\n"
    fuller = f"{HEADERS['rally']}\nM1,Opted Out,2024-01-01\nM1,In Blocklist,2024-02-01\nM1,Free to Contact,2024-03-01\n"
    assert run(tmp_path, "rally", partial, name="v1.csv").exit_code == 0
    assert run(tmp_path, "rally", fuller, name="v2.csv").exit_code == 0
    written = sorted(events(tmp_path), key=lambda e: (e["occurred_at"], e["event_id"]))
    assert sorted((e["occurred_at"][:10], e["event_type"]) for e in written) == [
        ("2024-01-01", "opted_out"),
        ("2024-02-01", "blocklist_added"),
        ("2024-02-01", "opt_out_revoked"),
        ("2024-03-01", "blocklist_removed"),
        ("2024-03-01", "opt_out_revoked"),
    ]
    assert len({e["event_id"] for e in written}) == len(written)


def test_events_of_a_status_at_the_end_of_a_day_stay_on_that_day(tmp_path: Path) -> None:
    """`--as-of D` is the end of day D: a status dated 23:59:59.999999 must hold by then. Events held
    at the day's end tie; the ids' step numbers keep a row's events in order."""
    body = f"{HEADERS['rally']}\nP1,Opted Out,2024-01-01\nP1,In Blocklist,2024-03-01T23:59:59.999999Z\n"
    assert run(tmp_path, "rally", body).exit_code == 0
    late = [e for e in events(tmp_path) if e["occurred_at"] >= "2024-03-01"]
    assert {e["occurred_at"] for e in late} == {"2024-03-01T23:59:59.999999Z"}
    assert [e["event_type"] for e in sorted(late, key=lambda e: e["event_id"])] == ["opt_out_revoked", "blocklist_added"]


def test_history_in_reply_and_rapidpro(tmp_path: Path) -> None:
    reply = f"{HEADERS['reply']}\nP1,S1,Active,2024-04-01\nP1,S1,Paused,2024-03-01\n"
    assert run(tmp_path, "reply", reply, name="reply.csv").exit_code == 0
    rapidpro = (
        f"{HEADERS['rapidpro']}\n"
        "P2,Blocked,2024-01-01\nP2,Active,2024-02-01\nP3,Stopped,2024-01-01\nP3,Active,2024-02-01\n"
    )
    assert run(tmp_path, "rapidpro", rapidpro, name="rapidpro.csv").exit_code == 0
    written = events(tmp_path)
    p1 = sorted((e for e in written if e["person_id"] == "P1"), key=lambda e: e["occurred_at"])
    assert steps(p1) == [ADDED, ("status_set", "paused", ""), ADDED, ("status_set", "active", "")]
    assert steps(e for e in written if e["person_id"] == "P2") == [("blocked", "", ""), ("unblocked", "", "")]
    assert steps(e for e in written if e["person_id"] == "P3") == [("stopped", "", ""), ("restored", "", "")]


def test_reply_history_goes_through_transitions_the_run_accepts(tmp_path: Path) -> None:
    body = (
        f"{HEADERS['reply']}\n"
        "P1,S1,Opted Out,2024-01-01\nP1,S1,Active,2024-02-01\n"
        "P2,S1,Bounced,2024-01-01\nP2,S1,Paused,2024-02-01\n"
        "P3,S1,Paused,2024-01-01\nP3,S1,Paused,2024-02-01\nP3,S1,Contacted,2024-03-01\n"
    )
    result = run(tmp_path, "reply", body)
    assert result.exit_code == 0, result.output
    by_person = {p: steps([e for e in events(tmp_path) if e["person_id"] == p]) for p in ("P1", "P2", "P3")}
    assert by_person["P1"] == [
        ADDED, ("opted_out", "", ""), ADDED, ("opt_out_revoked", "", ""), ("status_set", "active", "")
    ]
    assert by_person["P2"] == [
        ADDED, ("bounced", "", ""), ADDED, ("status_set", "active", ""), ("status_set", "paused", "")
    ]
    # Same status again sets nothing (the run would refuse it); a flag-only row keeps the status.
    assert by_person["P3"] == [ADDED, ("status_set", "paused", ""), ADDED, ADDED, ("email_sent", "", "")]


def test_a_repeated_row_is_one_fact(tmp_path: Path) -> None:
    rows = "P1,Opted Out,2024-03-01\nP1,opted out,2024-03-01T00:00:00Z\nP2,Free to Contact,2024-03-01\n"
    body = f"{HEADERS['rally']}\n{rows}"
    result = run(tmp_path, "rally", body)
    counts = summary(result)
    assert steps(events(tmp_path)) == [("opted_out", "", "")]
    assert (counts["rows imported"], counts["rows reported (no event)"]) == (2, 1)


# Columns, cooldowns, people ---------------------------------------------------------------------


def test_renamed_columns(tmp_path: Path) -> None:
    body = "who,seq,state,when\nP1,S9,Paused,2024-03-01\n"
    options = ["--id-column", "who", "--status-column", "state", "--date-column", "when", "--sequence-column", "seq"]
    result = run(tmp_path, "reply", body, *options)
    assert result.exit_code == 0, result.output
    assert {(e["person_id"], e["sequence_id"]) for e in events(tmp_path)} == {("P1", "S9")}


@pytest.mark.parametrize("days", ["-1", "0"])
def test_cooldown_days_below_one_is_a_usage_error(tmp_path: Path, days: str) -> None:
    """0 days would import In Cooldown as a cooldown over before its status date (the same row with a
    `Cooldown Until` that early is rejected: the replay would not give In Cooldown)."""
    assert run(tmp_path, "rally", f"{HEADERS['rally']}\n", "--cooldown-days", days).exit_code == 2


def test_sequence_column_is_for_reply_only(tmp_path: Path) -> None:
    result = run(tmp_path, "rally", f"{HEADERS['rally']}\n", "--sequence-column", "x")
    assert result.exit_code == 2 and "reply only" in result.output


def test_cooldown_until_or_cooldown_days(tmp_path: Path) -> None:
    body = (
        "Person ID,Contact Status,Status Updated At,Cooldown Until\n"
        "P1,In Cooldown,2024-03-01T22:00:00-05:00,2024-04-15\n"
        "P2,In Cooldown,2024-03-01,\n"
        "P3,In Cooldown,2024-03-01,2024-02-01\n"
        "P4,Opted Out,2024-03-01,not a date\n"
    )
    result = run(tmp_path, "rally", body, "--cooldown-days", "30")
    assert result.exit_code == 0, result.output
    values = {e["person_id"]: (e["event_type"], e["value"]) for e in events(tmp_path)}
    assert values == {
        "P1": ("cooldown_set", "2024-04-15"),
        "P2": ("cooldown_set", "2024-03-30"),  # 30 days from 2024-03-01: its last day is 03-30
        "P4": ("opted_out", ""),
    }
    [bad] = rejected(tmp_path, "rally")
    assert (bad["row_number"], bad["column"]) == ("3", "Cooldown Until")
    assert "2024-02-01" in bad["problem"]


def test_people_only_for_unknown_ids(tmp_path: Path) -> None:
    out = tmp_path / "out"
    out.mkdir()
    existing = "person_id,email,phone,created_at,last_seen_on,country\nP1,old@x.org,,2020-01-01T00:00:00Z,,DE"
    (out / "people.csv").write_text(existing)
    body = (
        "Contact UUID,Email,Status,Status Changed On,Created On,Last Seen On\n"
        "P1,new@x.org,Stopped,2024-03-01,,\n"
        "P2,p2@x.org,Active,2024-03-01,2023-01-05,2024-02-28T23:30:00Z\n"
        "P3,,Blocked,2024-03-02T10:00:00+01:00,,\n"
        "P3,p3@x.org,Active,2024-03-05,,2024-03-04\n"
        "P4,,Stopped,2024-03-01,2024-04-01,\n"  # created after its status: it existed by then
    )
    result = run(tmp_path, "rapidpro", body)
    assert result.exit_code == 0, result.output
    text = (out / "people.csv").read_text()
    assert text.startswith(existing + "\n")
    assert table(out / "people.csv") == [
        {"person_id": "P1", "email": "old@x.org", "phone": "", "created_at": "2020-01-01T00:00:00Z",
         "last_seen_on": "", "country": "DE"},
        {"person_id": "P2", "email": "p2@x.org", "phone": "", "created_at": "2023-01-05T00:00:00.000000Z",
         "last_seen_on": "2024-02-28", "country": ""},
        {"person_id": "P3", "email": "p3@x.org", "phone": "", "created_at": "2024-03-02T09:00:00.000000Z",
         "last_seen_on": "2024-03-04", "country": ""},
        {"person_id": "P4", "email": "", "phone": "", "created_at": "2024-03-01T00:00:00.000000Z",
         "last_seen_on": "", "country": ""},
    ]  # fmt: skip
    assert summary(result)["people added"] == 3


def test_existing_files_keep_their_own_columns(tmp_path: Path) -> None:
    out = tmp_path / "out"
    out.mkdir()
    (out / "people.csv").write_text("person_id,created_at\n")
    header = "event_id,person_id,occurred_at,event_type,sequence_id,channel,value"
    (out / "events.csv").write_text(header + "\n")
    body = "Person ID,Email,Contact Status,Status Updated At\nP1,a@x.org,Opted Out,2024-03-01\n"
    result = run(tmp_path, "rally", body)
    assert result.exit_code == 0, result.output
    assert "people.csv has no column 'email'" in result.output
    assert table(out / "people.csv") == [{"person_id": "P1", "created_at": "2024-03-01T00:00:00.000000Z"}]
    assert list(table(out / "events.csv")[0]) == header.split(",")


def test_events_file_without_a_needed_column_exits_2(tmp_path: Path) -> None:
    out = tmp_path / "out"
    out.mkdir()
    (out / "events.csv").write_text("event_id,person_id,occurred_at,event_type\n")
    result = run(tmp_path, "rally", f"{HEADERS['rally']}\nP1,In Cooldown,2024-03-01\n")
    _fails_cleanly(result, "events.csv", "'value'")
    assert not (out / "people.csv").exists()


def test_a_complete_input_directory_is_created(tmp_path: Path) -> None:
    assert run(tmp_path, "rally", f"{HEADERS['rally']}\nP1,Opted Out,2024-03-01\n").exit_code == 0
    out = tmp_path / "out"
    assert (out / "studies.csv").read_text().startswith("study_id,")
    assert (out / "participants.csv").read_text().startswith("study_id,person_id,added_at,")
    assert (out / "events.csv").read_text().startswith("event_id,person_id,occurred_at,event_type,")


# Idempotence and nothing lost ---------------------------------------------------------------------


def _snapshot(directory: Path) -> dict[str, bytes]:
    return {str(p.relative_to(directory)): p.read_bytes() for p in sorted(directory.rglob("*")) if p.is_file()}


def test_importing_twice_changes_nothing(tmp_path: Path) -> None:
    out = tmp_path / "out"
    for system in ("rally", "reply", "rapidpro"):
        assert invoke(system, SAMPLES / f"{system}.csv", out).exit_code == 0
    before = _snapshot(out)
    for system in ("rally", "reply", "rapidpro"):
        again = invoke(system, SAMPLES / f"{system}.csv", out)
        assert again.exit_code == 0
        assert summary(again)["events written"] == 0 and summary(again)["people added"] == 0
    assert _snapshot(out) == before


@pytest.mark.parametrize("failing", ["people", "events", "rejected"])
@pytest.mark.parametrize("first_import", [True, False])
def test_an_import_that_fails_while_writing_leaves_the_directory_as_it_was(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, failing: str, first_import: bool
) -> None:
    out = tmp_path / "out"
    if not first_import:
        assert invoke("rally", SAMPLES / "rally.csv", out).exit_code == 0
    before = _snapshot(out) if out.exists() else {}
    real_append, real_rejected = legacy._append, legacy._write_rejected

    def append(path: Path, *args: object) -> None:
        real_append(path, *args)
        if path.stem == failing:
            raise OSError(28, "No space left on device")

    def write_rejected(*args: object) -> object:
        if failing == "rejected":
            raise KeyboardInterrupt
        return real_rejected(*args)

    monkeypatch.setattr(legacy, "_append", append)
    monkeypatch.setattr(legacy, "_write_rejected", write_rejected)
    result = invoke("reply", SAMPLES / "reply.csv", out)
    assert result.exit_code != 0
    if failing != "rejected":
        assert result.exit_code == 2 and "No space left on device" in result.output
    assert (_snapshot(out) if out.exists() else {}) == before


@pytest.mark.parametrize("system", ["rally", "reply", "rapidpro"])
def test_rows_read_are_imported_rejected_or_reported(tmp_path: Path, system: str) -> None:
    result = invoke(system, SAMPLES / f"{system}.csv", tmp_path / "out")
    assert result.exit_code == 0, result.output
    counts = summary(result)
    parts = counts["rows imported"] + counts["rows rejected"] + counts["rows reported (no event)"]
    assert counts["rows read"] == parts
    assert counts["rows rejected"] == len(rejected(tmp_path, system, system)) > 0
    imported = {e["reason"] for e in events(tmp_path)}
    assert imported and all(r.startswith(f"legacy {system}: ") for r in imported)


def test_rejected_rows_name_the_problem(tmp_path: Path) -> None:
    body = (
        f"{HEADERS['rally']}\n"
        "P1,Snoozed,2024-03-01\n"
        ",Opted Out,2024-03-01\n"
        "P3,Opted Out,31/12/2024\n"
        "P4,,2024-03-01\n"
        "P5,Opted Out,2024-03-01\n"
    )
    result = run(tmp_path, "rally", body, name="export 2024.csv")
    assert result.exit_code == 0
    bad = rejected(tmp_path, "rally", "export 2024")
    assert [(r["row_number"], r["column"], r["problem"]) for r in bad] == [
        ("1", "Contact Status", "unknown Rally contact status 'Snoozed'"),
        ("2", "Person ID", "missing person id"),
        ("3", "Status Updated At", "not a valid date or ISO-8601 timestamp: '31/12/2024'"),
        ("4", "Contact Status", "missing status"),
    ]
    raw = {"Person ID": "P1", "Contact Status": "Snoozed", "Status Updated At": "2024-03-01"}
    assert json.loads(bad[0]["raw"]) == raw
    assert bad[0]["source_file"] == "export 2024.csv"
    assert [p["person_id"] for p in table(tmp_path / "out" / "people.csv")] == ["P5"]


def test_a_clean_reimport_removes_the_stale_rejected_file(tmp_path: Path) -> None:
    assert run(tmp_path, "rally", f"{HEADERS['rally']}\nP1,Snoozed,2024-03-01\n").exit_code == 0
    assert (tmp_path / "out" / "legacy_rejected" / "rally-legacy.csv").is_file()
    assert run(tmp_path, "rally", f"{HEADERS['rally']}\nP1,Opted Out,2024-03-01\n").exit_code == 0
    assert not (tmp_path / "out" / "legacy_rejected" / "rally-legacy.csv").exists()


# Malformed files and directories ---------------------------------------------------------------


def _fails_cleanly(result: Result, *fragments: str) -> None:
    assert result.exit_code == 2, result.output
    assert isinstance(result.exception, SystemExit)
    message = result.output.strip()
    assert len(message.splitlines()) == 1 and "Traceback" not in message
    for fragment in fragments:
        assert fragment in message


@pytest.mark.parametrize(
    ("body", "fragments"),
    [
        (b"Person ID;Contact Status;Status Updated At\nP1;Opted Out;2024-03-01\n", ("'Person ID'", "semicolon")),
        (b"P1,Opted Out,2024-03-01\nP2,Opted Out,2024-03-02\n", ("'Person ID'", "no header row")),
        (b"", ("empty file",)),
        (b"\n\n", ("empty file",)),
        (b"Person ID,Status Updated At\nP1,2024-03-01\n", ("'Contact Status'",)),
        (b"Person ID,Contact Status,Status Updated At\nP1,Opted Out,2024-03-01,extra\n", ("more cells",)),
    ],
)
def test_malformed_files_exit_2(tmp_path: Path, body: bytes, fragments: tuple[str, ...]) -> None:
    result = run(tmp_path, "rally", body, name="bad.csv")
    _fails_cleanly(result, "bad.csv", *fragments)
    assert not (tmp_path / "out").exists()


def test_missing_file_exits_2(tmp_path: Path) -> None:
    _fails_cleanly(invoke("rally", tmp_path / "nope.csv", tmp_path / "out"), "nope.csv", "file not found")


def test_parquet_tables_in_the_output_directory_exit_2(tmp_path: Path) -> None:
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "events.parquet").write_bytes(b"PAR1")
    result = run(tmp_path, "rally", f"{HEADERS['rally']}\nP1,Opted Out,2024-03-01\n")
    _fails_cleanly(result, "events.parquet", "events.csv")
    assert not (tmp_path / "out" / "people.csv").exists()


def test_non_utf8_rows_are_read_as_windows_1252(tmp_path: Path) -> None:
    body = (
        b"Person ID,Email,Contact Status,Status Updated At\n"
        b"P1,caf\xe9@x.org,Opted Out,2024-03-01\n"
        b"P2,\xc3\xa9t\xc3\xa9@x.org,Opted Out,2024-03-01\n"
        b"P3,\x80uro@x.org,Opted Out,2024-03-01\n"
    )
    result = run(tmp_path, "rally", b"\xef\xbb\xbf" + body)
    assert result.exit_code == 0, result.output
    assert "2 row(s) were not UTF-8" in result.output
    emails = [p["email"] for p in table(tmp_path / "out" / "people.csv")]
    assert emails == ["café@x.org", "été@x.org", "€uro@x.org"]


def test_utf16_exports_are_read(tmp_path: Path) -> None:
    body = f"{HEADERS['rapidpro']}\r\nP1,Stopped,2024-03-01\r\n".encode("utf-16")
    assert run(tmp_path, "rapidpro", body).exit_code == 0
    assert steps(events(tmp_path)) == [("stopped", "", "")]


def test_imported_directory_is_accepted_by_the_loader(tmp_path: Path) -> None:
    loading = pytest.importorskip("statusbatch.loading")
    out = tmp_path / "out"
    for system in ("rally", "reply", "rapidpro"):
        assert invoke(system, SAMPLES / f"{system}.csv", out).exit_code == 0
    inputs = loading.load_inputs(out)
    assert inputs.rejected_rows.is_empty()
    assert inputs.events.height == len(events(tmp_path))


def test_the_run_of_an_imported_directory_gives_the_statuses_the_file_says(tmp_path: Path) -> None:
    """The round trip (SPEC §6): In Cooldown for exactly --cooldown-days, a status at the last instant
    of a day holding on that day, Active in Study after Opted Out no longer opted out."""
    body = (
        f"{HEADERS['rally']}\n"
        "C1,In Cooldown,2024-03-01\n"
        "D1,Opted Out,2024-03-01T23:59:59.999999Z\n"
        "A1,Opted Out,2024-01-01\nA1,Active in Study,2024-02-01\n"
    )
    assert run(tmp_path, "rally", body, "--cooldown-days", "30").exit_code == 0
    job = tmp_path / "job.toml"
    job.write_text(f'[job]\ninput = "{tmp_path / "out"}"\ndb = "{tmp_path / "out.duckdb"}"\n')
    for as_of in ("2024-03-01", "2024-03-30", "2024-03-31"):
        result = CliRunner().invoke(main, ["run", str(job), "--as-of", as_of, "--quiet"])
        assert result.exit_code == 0, result.output
    with duckdb.connect(str(tmp_path / "out.duckdb"), read_only=True) as con:
        got = con.sql(
            "select strftime(as_of, '%m-%d'), person_id, contact_status, cooldown_until from contact_status order by all"
        ).fetchall()
    ends = datetime(2024, 3, 31)  # 2024-03-01 + 30 days
    assert got == [
        ("03-01", "A1", "free_to_contact", None),
        ("03-01", "C1", "in_cooldown", ends),
        ("03-01", "D1", "opted_out", None),
        ("03-30", "A1", "free_to_contact", None),
        ("03-30", "C1", "in_cooldown", ends),
        ("03-30", "D1", "opted_out", None),
        ("03-31", "A1", "free_to_contact", None),
        ("03-31", "C1", "free_to_contact", None),
        ("03-31", "D1", "opted_out", None),
    ]
