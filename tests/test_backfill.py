"""`statusbatch backfill`: one as_of per day, equal to single runs, resumable, stops cleanly on failure."""

from __future__ import annotations

from datetime import date, timedelta

import pytest

from conftest import Workspace, cli, event, participant, person, study

import statusbatch.pipeline

KEEP_ALL = "[retention]\nkeep_as_of = 0\n"
PEOPLE = [person(f"p{i}") for i in range(1, 7)]
STUDIES = [study("S1", closed_at="2026-03-20T00:00:00Z"), study("S2")]
PARTICIPANTS = [
    participant("S1", "p1", "interview_scheduled", "2026-03-01T00:00:00Z"),
    participant("S2", "p2", "survey_started", "2026-03-05T00:00:00Z"),
]
EVENTS = [
    event("e01", "p3", "2026-02-10T10:00:00Z", "invited", study_id="S2"),
    event("e02", "p4", "2026-03-03T09:00:00Z", "opted_out"),
    event("e03", "p4", "2026-03-12T09:00:00Z", "opt_out_revoked"),
    event("e04", "p5", "2026-03-08T00:00:00Z", "cooldown_set", value="2026-03-15"),
    event("e05", "p2", "2026-03-18T12:00:00Z", "participant_status", study_id="S2", value="survey_completed"),
    event("e06", "p6", "2026-03-02T00:00:00Z", "sequence_added", sequence_id="Q"),
    event("e07", "p6", "2026-03-04T00:00:00Z", "email_sent", sequence_id="Q"),
    event("e08", "p6", "2026-03-09T00:00:00Z", "replied", sequence_id="Q", channel="email"),
    event("e09", "p1", "2026-03-10T00:00:00Z", "stopped"),
    event("e10", "p1", "2026-03-25T00:00:00Z", "inbound_message"),
]
TABLES = (
    "contact_status",
    "participant_status",
    "study_progress",
    "cooldowns",
    "sequence_status",
    "channel_status",
    "archival_candidates",
    "rejected_transitions",
    "rejected_rows",
    "status_changes",
)


def workspace(root) -> Workspace:
    return Workspace(root).write(KEEP_ALL, people=PEOPLE, studies=STUDIES, participants=PARTICIPANTS, events=EVENTS)


def backfill(ws: Workspace, first: str, last: str, *more: str):
    return cli("backfill", str(ws.job), "--from", first, "--to", last, *more)


def published(ws: Workspace) -> list[date]:
    return [r[0] for r in ws.query("select as_of from runs where outcome = 'success' order by as_of")]


def table(ws: Workspace, name: str) -> list[tuple]:
    return ws.query(f"select * exclude (as_of), as_of from {name} order by all")


def test_a_30_day_backfill_equals_30_single_runs(tmp_path):
    filled, single = workspace(tmp_path / "filled"), workspace(tmp_path / "single")
    result = backfill(filled, "2026-03-02", "2026-03-31")
    assert result.exit_code == 0, result.output
    day = date(2026, 3, 2)
    while day <= date(2026, 3, 31):
        single.run(as_of=day.isoformat())
        day += timedelta(days=1)
    assert published(filled) == published(single) == [date(2026, 3, 2) + timedelta(days=n) for n in range(30)]
    for name in TABLES:
        assert table(filled, name) == table(single, name), name
    assert len(table(filled, "status_changes")) > len(PEOPLE), "the period should see status changes"


def test_backfill_resumes_and_force_recomputes(tmp_path):
    ws = workspace(tmp_path / "ws")
    assert backfill(ws, "2026-03-10", "2026-03-14").exit_code == 0
    first_runs = ws.query("select run_id from runs order by as_of")
    resumed = backfill(ws, "2026-03-10", "2026-03-17")
    assert resumed.exit_code == 0, resumed.output
    assert "5 already published" in resumed.output
    assert ws.query("select count(*) from runs where as_of <= '2026-03-14'") == [(5,)]
    assert ws.query("select run_id from runs where as_of <= '2026-03-14' order by as_of") == first_runs
    assert published(ws)[-1] == date(2026, 3, 17)
    forced = backfill(ws, "2026-03-10", "2026-03-11", "--force")
    assert forced.exit_code == 0, forced.output
    assert ws.query("select count(*) from runs where as_of = '2026-03-10'") == [(2,)]
    assert ws.query("select count(*) from contact_status where as_of = '2026-03-10'") == [(len(PEOPLE),)]


def test_a_failing_day_stops_the_backfill_and_keeps_the_days_before(tmp_path, monkeypatch):
    ws = workspace(tmp_path / "ws")
    real = statusbatch.pipeline.range_tables

    def breaks_on_the_13th(inputs, config, as_of, rules):
        if as_of.day == date(2026, 3, 13):
            raise RuntimeError("disk on fire")
        return real(inputs, config, as_of, rules)

    monkeypatch.setattr(statusbatch.pipeline, "range_tables", breaks_on_the_13th)
    result = backfill(ws, "2026-03-10", "2026-03-16")
    assert result.exit_code == 1
    assert "stopped at 2026-03-13" in result.output and "disk on fire" in result.output
    assert result.output.count("\n") <= 12 and "Traceback" not in result.output
    assert published(ws) == [date(2026, 3, 10), date(2026, 3, 11), date(2026, 3, 12)]
    assert ws.query("select outcome from runs where as_of = '2026-03-13'") == [("failed",)]

    monkeypatch.setattr(statusbatch.pipeline, "range_tables", real)
    assert backfill(ws, "2026-03-10", "2026-03-16").exit_code == 0
    assert published(ws)[-1] == date(2026, 3, 16) and len(published(ws)) == 7


@pytest.mark.parametrize(
    ("first", "last", "message"),
    [("2026-03-10", "2026-03-09", "before --from"), ("2026-13-01", "2026-03-09", "expected dates")],
)
def test_bad_ranges_exit_2_and_write_nothing(tmp_path, first, last, message):
    ws = workspace(tmp_path / "ws")
    result = backfill(ws, first, last)
    assert result.exit_code == 2 and message in result.output
    assert not ws.db.exists()


def test_backfill_of_an_input_error_exits_2_and_writes_nothing(tmp_path):
    ws = workspace(tmp_path / "ws")
    (ws.input / "events.csv").unlink()
    result = backfill(ws, "2026-03-10", "2026-03-11")
    assert result.exit_code == 2 and "events" in result.output
    assert not ws.db.exists()


def test_extending_a_backfill_backwards_keeps_the_change_log_right(tmp_path):
    """§4: a day's status_changes compare it with the published day before it. Publishing an earlier
    day makes it that day for the first day already published after it, whose rows the run compares
    again in its own transaction: the log equals one backfill of the whole range."""
    extended, whole = workspace(tmp_path / "extended"), workspace(tmp_path / "whole")
    assert backfill(extended, "2026-03-09", "2026-03-13").exit_code == 0
    result = backfill(extended, "2026-03-06", "2026-03-14")
    assert result.exit_code == 0, result.output
    assert backfill(whole, "2026-03-06", "2026-03-14").exit_code == 0
    assert table(extended, "status_changes") == table(whole, "status_changes")
    assert len(table(whole, "status_changes")) > len(PEOPLE), "the range should see status changes"
    assert extended.query("select count(*) from runs where as_of = '2026-03-09'") == [(1,)]  # not run again


def test_runs_in_any_order_log_the_changes_of_runs_in_date_order(tmp_path):
    """Days published newest first, then one in between, then one re-run: the log is that of the same
    days run oldest first."""
    shuffled, ordered = workspace(tmp_path / "shuffled"), workspace(tmp_path / "ordered")
    for day in ("2026-03-31", "2026-03-05", "2026-03-15", "2026-03-10", "2026-03-15"):
        shuffled.run(as_of=day)
    for day in ("2026-03-05", "2026-03-10", "2026-03-15", "2026-03-31"):
        ordered.run(as_of=day)
    assert table(shuffled, "status_changes") == table(ordered, "status_changes")
    assert len(table(ordered, "status_changes")) > len(PEOPLE), "the days should see status changes"


@pytest.mark.parametrize(
    "exports",
    [
        # p2 leaves the export: the later day must not log p2, who is not in its run
        {"2026-03-01": "both", "2026-03-05": "p1 only", "2026-03-03": "p1 only"},
        # p2 is absent only from the re-run day's export: the later day keeps p2's earlier status
        {"2026-03-01": "both", "2026-03-05": "both", "2026-03-03": "p1 only"},
    ],
)
def test_re_running_an_older_day_with_another_export_logs_as_days_run_oldest_first(tmp_path, exports):
    people = {"both": [person("p1"), person("p2")], "p1 only": [person("p1")]}
    events = [event("e1", "p2", "2026-02-01T00:00:00Z", "opted_out")]
    inputs = {}
    for name, rows in people.items():
        inputs[name] = Workspace(tmp_path / name.replace(" ", "_")).write(people=rows, events=events).input
    shuffled, ordered = Workspace(tmp_path / "shuffled").write(KEEP_ALL), Workspace(tmp_path / "ordered").write(KEEP_ALL)
    for day, export in exports.items():
        shuffled.run("--input", str(inputs[export]), as_of=day)
    for day, export in sorted(exports.items()):
        ordered.run("--input", str(inputs[export]), as_of=day)
    log = "select as_of, person_id, previous_status, contact_status from status_changes order by 1, 2"
    assert shuffled.query(log) == ordered.query(log)
