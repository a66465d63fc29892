"""`statusbatch run` / `validate` end to end (§4, §5, §6): exit codes, nothing written, slices, logs, locks."""

from __future__ import annotations

import hashlib
import re
import subprocess
import sys
from datetime import UTC, date, datetime, timedelta

import duckdb
import polars as pl
import pytest
from conftest import STATUSBATCH, Workspace, cli, event, participant, person, statusbatch_env, study

import statusbatch.models.contact as contact_model


def digest(path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def basic(ws: Workspace, job_body: str = "") -> Workspace:
    return ws.write(
        job_body,
        people=[person("p1"), person("p2", age=17), person("p3")],
        studies=[study("S1")],
        participants=[participant("S1", "p3", "survey_started", "2026-03-01T00:00:00Z")],
        events=[event("e1", "p1", "2026-03-01T00:00:00Z", "invited", study_id="S1")],
    )


def sliced(ws: Workspace, table: str) -> list[date]:
    return [r[0] for r in ws.query(f"select distinct as_of from {table} order by 1")]


# --- fatal input and configuration problems: exit 2, one line, nothing written ----------------


def _missing_file(ws):
    (ws.input / "events.csv").unlink()


def _missing_column(ws):
    (ws.input / "participants.csv").write_text("study_id,person_id,participant_status\n")


def _empty_file(ws):
    (ws.input / "events.csv").write_bytes(b"")


def _repeated_column(ws):
    text = (ws.input / "events.csv").read_text()
    header, rest = text.split("\n", 1)
    (ws.input / "events.csv").write_text(header + ",value\n" + rest)


def _two_files(ws):
    (ws.input / "people.csv.gz").write_bytes(b"")


def _unreadable(ws):
    (ws.input / "studies.csv").unlink()
    (ws.input / "studies.parquet").write_bytes(b"this is not parquet")


def _bad_key(ws):
    ws.job.write_text(ws.job.read_text() + "\n[cooldown]\nafter_invite_dayz = 3\n")


def _negative(ws):
    ws.job.write_text(ws.job.read_text() + "\n[blocklist]\nno_show_threshold = -1\n")


def _wrong_type(ws):
    ws.job.write_text(ws.job.read_text() + '\n[retention]\nkeep_as_of = "7"\n')


def _bad_rule(ws):
    ws.job.write_text(ws.job.read_text() + '\n[[do_not_contact]]\nname = "teens"\nwhen = "shoe_size < 18"\n')


def _rule_type_mismatch(ws):
    ws.job.write_text(ws.job.read_text() + '\n[[do_not_contact]]\nname = "odd"\nwhen = "age = \'old\'"\n')


def _rule_syntax(ws):
    ws.job.write_text(ws.job.read_text() + '\n[[do_not_contact]]\nname = "broken"\nwhen = "age <"\n')


def _limit_without_count(ws):
    ws.job.write_text(ws.job.read_text() + '\n[[cooldown.limits]]\ntrigger = "invite"\nwindow_days = 9\n')


def _parquet_is_a_file(ws):
    (ws.root / "exports").write_text("not a directory\n")
    ws.job.write_text(ws.job.read_text().replace("[job]\n", '[job]\nparquet = "exports"\n'))


def _db_under_a_file(ws):
    ws.job.write_text(re.sub(r'(?m)^db = .*$', 'db = "job.toml/out.duckdb"', ws.job.read_text()))


FATAL = {
    "missing file": (_missing_file, ["events"]),
    "missing required column": (_missing_column, ["participants", "added_at"]),
    "two files for one table": (_two_files, ["people"]),
    "empty file": (_empty_file, ["events.csv", "empty file"]),
    # columns are found by name: the second `value` was silently dropped
    "column named twice": (_repeated_column, ["events.csv", "'value'", "more than once"]),
    "unreadable file": (_unreadable, ["studies.parquet"]),
    "unknown config key": (_bad_key, ["job.toml", "after_invite_dayz"]),
    "negative number": (_negative, ["job.toml", "no_show_threshold"]),
    "wrong type": (_wrong_type, ["job.toml", "keep_as_of"]),
    "bad do_not_contact rule": (_bad_rule, ["teens", "shoe_size"]),
    "limit without count": (_limit_without_count, ["job.toml", "count"]),
    "rule type mismatch": (_rule_type_mismatch, ["odd", "age"]),
    "rule syntax error": (_rule_syntax, ["broken"]),
    # found only after the commit, this failed a run already written (exit 1, no Parquet)
    "parquet path is a file": (_parquet_is_a_file, ["[job] parquet", "exports", "is a file"]),
    "db path under a file": (_db_under_a_file, ["[job] db", "job.toml", "is a file"]),
}


@pytest.mark.parametrize("case", list(FATAL))
def test_fatal_problems_exit_2_with_one_line_and_leave_a_fresh_db_absent(ws, case):
    make_bad, words = FATAL[case]
    basic(ws)
    make_bad(ws)
    result = ws.run(check=False)
    assert result.exit_code == 2, result.output
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert all(w in lines[0] for w in words), lines[0]
    assert "Traceback" not in result.output
    assert not ws.db.exists()


@pytest.mark.parametrize("case", ["missing file", "bad do_not_contact rule"])
def test_fatal_problems_leave_an_existing_db_unchanged(ws, case):
    basic(ws).run(as_of="2026-03-30")
    before = digest(ws.db)
    FATAL[case][0](ws)
    assert ws.run(check=False).exit_code == 2
    assert digest(ws.db) == before


def test_a_db_option_naming_a_file_of_another_kind_exits_2_and_leaves_it_alone(ws):
    basic(ws)
    other = ws.root / "notes.duckdb"
    other.write_text("my notes\n")
    result = ws.run("--db", str(other), check=False)
    assert result.exit_code == 2, result.output
    assert result.stderr.strip().splitlines()[-1] == f"statusbatch: {other}: not a DuckDB database file; nothing was written"
    assert other.read_text() == "my notes\n"


def test_missing_job_file_and_bad_as_of_exit_2(ws):
    basic(ws)
    result = cli("run", str(ws.root / "nope.toml"), "--as-of", "2026-03-31")
    assert result.exit_code == 2 and "nope.toml" in result.stderr
    result = ws.run(as_of="31/03/2026", check=False)
    assert result.exit_code == 2 and "--as-of" in result.stderr
    assert not ws.db.exists()


# --- a failed run ------------------------------------------------------------------------------


def test_an_interrupted_run_is_recorded_as_failed_and_writes_nothing_else(ws, monkeypatch):
    basic(ws).run(as_of="2026-03-30")
    before = digest_tables(ws)

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(contact_model, "contact_status", interrupted)
    result = ws.run(as_of="2026-03-31", check=False)
    assert result.exit_code != 0
    assert ws.query("select as_of, outcome, error from runs order by started_at") == [
        (date(2026, 3, 30), "success", None), (date(2026, 3, 31), "failed", "interrupted")
    ]
    assert digest_tables(ws) == before


def digest_tables(ws) -> dict[str, list[tuple]]:
    return {t: ws.query(f"select * from {t} order by all") for t in ("contact_status", "cooldowns", "status_changes")}


def _breaking_contact_status(monkeypatch):
    real = contact_model.contact_status

    def broken(*args, **kwargs):
        # an output that breaks the contact_status schema: can_contact contradicts the status
        return real(*args, **kwargs).with_columns(pl.lit(True).alias("can_contact"))

    monkeypatch.setattr(contact_model, "contact_status", broken)


def test_failed_validation_leaves_previous_tables_untouched_and_is_recorded(ws, monkeypatch):
    basic(ws).run(as_of="2026-03-30")
    before = {t: ws.frame(f"select * from {t} order by all") for t in ("contact_status", "cooldowns", "status_changes")}
    _breaking_contact_status(monkeypatch)
    for as_of in ("2026-03-31", "2026-03-30"):  # a new as_of, and a rerun of the published one
        result = ws.run(as_of=as_of, check=False)
        assert result.exit_code == 1, result.output
        assert "contact_status" in result.stderr
    for table, frame in before.items():
        assert ws.frame(f"select * from {table} order by all").equals(frame), table
    runs = ws.query("select as_of, outcome, error from runs order by started_at")
    assert [(r[0], r[1]) for r in runs] == [
        (date(2026, 3, 30), "success"),
        (date(2026, 3, 31), "failed"),
        (date(2026, 3, 30), "failed"),
    ]
    assert all("can_contact" in r[2] for r in runs[1:])
    assert ws.query("select count(distinct run_id) from run_inputs") == [(1,)]


def test_a_failed_first_run_records_the_failure_and_publishes_nothing(ws, monkeypatch):
    basic(ws)
    _breaking_contact_status(monkeypatch)
    assert ws.run(check=False).exit_code == 1
    assert ws.tables() <= {"runs", "runs_latest"}
    assert ws.query("select outcome from runs") == [("failed",)]


# --- slices, idempotence, retention ------------------------------------------------------------


def test_rerunning_an_as_of_gives_identical_tables_and_replaces_its_slice(ws):
    basic(ws).run()
    tables = ("contact_status", "participant_status", "study_progress", "cooldowns", "rejected_rows", "status_changes")
    first = {t: ws.frame(f"select * from {t} order by all") for t in tables}
    ws.run()
    for t in tables:
        assert ws.frame(f"select * from {t} order by all").equals(first[t]), t
    assert ws.query("select count(*), count(distinct run_id) from runs where outcome = 'success'") == [(2, 2)]
    assert ws.query("select count(distinct run_id) from run_inputs") == [(2,)]


def test_a_file_written_before_a_column_existed_gets_the_column_and_keeps_its_rows(ws):
    basic(ws).run(as_of="2026-03-30")
    con = duckdb.connect(str(ws.db))
    con.execute("ALTER TABLE contact_status DROP COLUMN reason")  # as an older version wrote it
    con.execute("CREATE OR REPLACE VIEW contact_status_latest AS SELECT * FROM contact_status")
    con.close()
    ws.run(as_of="2026-03-31")
    assert ws.query("select as_of, count(*), count(reason) from contact_status group by 1 order by 1") == [
        (date(2026, 3, 30), 3, 0),
        (date(2026, 3, 31), 3, 3),
    ]


def test_two_as_ofs_keep_two_slices_and_latest_views_show_the_newest(ws):
    basic(ws)
    ws.run(as_of="2026-03-30")
    ws.run(as_of="2026-03-31")
    ws.run(as_of="2026-03-15")  # an older backfill does not move the latest view
    for table in ("contact_status", "participant_status", "study_progress", "cooldowns"):
        assert sliced(ws, table) == [date(2026, 3, 15), date(2026, 3, 30), date(2026, 3, 31)], table
        assert ws.query(f"select distinct as_of from {table}_latest") == [(date(2026, 3, 31),)], table
    # the invite cooldown ended 2026-03-31T00:00
    assert ws.query("select as_of, contact_status from contact_status where person_id='p1' order by 1") == [
        (date(2026, 3, 15), "in_cooldown"),
        (date(2026, 3, 30), "in_cooldown"),
        (date(2026, 3, 31), "free_to_contact"),
    ]
    assert ws.query("select count(*) from contact_status_latest") == [(3,)]


def test_retention_keeps_the_newest_slices_and_every_log_row(ws):
    basic(ws, "[retention]\nkeep_as_of = 2\n")
    for day in ("2026-03-28", "2026-03-29", "2026-03-30", "2026-03-31"):
        ws.run(as_of=day)
    for table in ("contact_status", "participant_status", "study_progress", "cooldowns"):
        assert sliced(ws, table) == [date(2026, 3, 30), date(2026, 3, 31)], table
    assert ws.query("select count(*) from runs") == [(4,)]
    assert ws.query("select count(distinct run_id) from run_inputs") == [(4,)]
    assert date(2026, 3, 28) in sliced(ws, "status_changes")


def test_retention_zero_keeps_every_slice(ws):
    basic(ws, "[retention]\nkeep_as_of = 0\n")
    days = [date(2026, 3, 1) + timedelta(days=i) for i in range(8)]  # more than the default 7
    for day in days:
        ws.run(as_of=day.isoformat())
    assert sliced(ws, "contact_status") == days


# --- status_changes ----------------------------------------------------------------------------


def test_status_changes_logs_first_appearances_and_changes_run_over_run(ws):
    rule = '[[do_not_contact]]\nname = "minors"\nwhen = "age < 18"\n'
    ws.write(
        rule,
        people=[person("p1", age=30), person("p2", age=30), person("p3", age=18)],
        studies=[study("S1")],
        events=[event("e1", "p1", "2026-03-01T00:00:00Z", "invited", study_id="S1")],
    )
    ws.run(as_of="2026-03-30")
    log = "select as_of, person_id, previous_status, contact_status from status_changes order by 1, 2"
    assert ws.query(log) == [
        (date(2026, 3, 30), "p1", None, "in_cooldown"),
        (date(2026, 3, 30), "p2", None, "free_to_contact"),
        (date(2026, 3, 30), "p3", None, "free_to_contact"),
    ]
    # a property changes in the export (no event records it) and the cooldown ends; p4 is new
    ws.write(
        rule,
        people=[person("p1", age=30), person("p2", age=30), person("p3", age=17), person("p4", age=30)],
        studies=[study("S1")],
        events=[event("e1", "p1", "2026-03-01T00:00:00Z", "invited", study_id="S1")],
    )
    ws.run(as_of="2026-03-31")
    ws.run(as_of="2026-03-31")  # a rerun replaces its own rows
    assert ws.query(log) == [
        (date(2026, 3, 30), "p1", None, "in_cooldown"),
        (date(2026, 3, 30), "p2", None, "free_to_contact"),
        (date(2026, 3, 30), "p3", None, "free_to_contact"),
        (date(2026, 3, 31), "p1", "in_cooldown", "free_to_contact"),
        (date(2026, 3, 31), "p3", "free_to_contact", "do_not_contact"),
        (date(2026, 3, 31), "p4", None, "free_to_contact"),
    ]
    # nothing changes the next day: nothing appended
    ws.run(as_of="2026-04-01")
    assert ws.query("select count(*) from status_changes where as_of = '2026-04-01'") == [(0,)]


def test_status_changes_compares_with_the_previous_earlier_dated_run(ws):
    basic(ws)
    ws.run(as_of="2026-03-31")  # p1 free (cooldown ended)
    ws.run(as_of="2026-03-15")  # backfill of an earlier day: p1 in cooldown, all first appearances
    ws.run(as_of="2026-03-31")  # rerun: p1 now differs from the earlier-dated run
    rows = ws.query("select as_of, person_id, previous_status, contact_status from status_changes order by 1, 2")
    assert (date(2026, 3, 31), "p1", "in_cooldown", "free_to_contact") in rows
    assert [r for r in rows if r[0] == date(2026, 3, 15)] == [
        (date(2026, 3, 15), "p1", None, "in_cooldown"),
        (date(2026, 3, 15), "p2", None, "free_to_contact"),
        (date(2026, 3, 15), "p3", None, "active_in_study"),
    ]


# --- locks, parquet, validate, defaults --------------------------------------------------------


def test_a_database_locked_by_another_process_fails_with_exit_1_naming_the_holder(ws):
    basic(ws).run(as_of="2026-03-30")
    before = digest(ws.db)
    holder = subprocess.Popen(
        [sys.executable, "-c", f"import duckdb, sys, time\nc = duckdb.connect({str(ws.db)!r})\nprint('ready', flush=True)\nsys.stdin.read()"],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert holder.stdout.readline().strip() == "ready"
        # the run itself in-process: the holder is another process, which is what matters
        result = ws.run("--lock-timeout", "1", as_of="2026-03-31", check=False)
    finally:
        holder.stdin.close()
        holder.wait(timeout=30)
    assert result.exit_code == 1, result.output
    last = result.stderr.strip().splitlines()[-1]
    assert "lock" in last and str(holder.pid) in last, last
    assert digest(ws.db) == before
    assert ws.query("select count(*) from runs") == [(1,)]


def test_parquet_option_writes_every_table_as_parquet(ws, tmp_path):
    basic(ws).run("--parquet", str(tmp_path / "pq"))
    written = {p.stem for p in (tmp_path / "pq").glob("*.parquet")}
    assert {"contact_status", "participant_status", "study_progress", "cooldowns", "rejected_rows", "status_changes", "runs", "run_inputs"} <= written
    frame = pl.read_parquet(tmp_path / "pq" / "contact_status.parquet")
    assert frame.height == 3
    assert frame.filter(pl.col("person_id") == "p3")["contact_status"].to_list() == ["active_in_study"]


def test_a_failed_parquet_copy_replaces_no_file_and_says_the_database_was_published(ws, tmp_path):
    """The copies are staged and their places checked before any is replaced: a failure leaves every
    file of the previous run, never some tables of one day and some of another."""
    pq = tmp_path / "pq"
    basic(ws).run("--parquet", str(pq), as_of="2026-03-30")
    (pq / "cooldowns.parquet").unlink()
    (pq / "cooldowns.parquet").mkdir()
    result = ws.run("--parquet", str(pq), as_of="2026-03-31", check=False)
    assert result.exit_code == 1, result.output
    last = result.stderr.strip().splitlines()[-1]
    assert "is published in the database" in last and "no Parquet copy was replaced" in last, last
    assert ws.query("select as_of, outcome from runs order by 1") == [(date(2026, 3, 30), "success"), (date(2026, 3, 31), "success")]
    for name in ("channel_status", "contact_status", "status_changes"):
        assert pl.read_parquet(pq / f"{name}.parquet").get_column("as_of").unique().to_list() == [date(2026, 3, 30)]
    assert not list(pq.glob(".*.tmp"))


def test_parquet_directory_may_have_a_quote_in_its_name(ws, tmp_path):
    basic(ws).run("--parquet", str(tmp_path / "o'brien's exports"))
    assert pl.read_parquet(tmp_path / "o'brien's exports" / "contact_status.parquet").height == 3


def test_parquet_from_the_job_file_is_relative_to_the_job_file(ws):
    ws.write(people=[person("p1")])
    ws.job.write_text(ws.job.read_text().replace("[job]\n", '[job]\nparquet = "pq"\n'))
    ws.run()
    assert (ws.root / "pq" / "contact_status.parquet").is_file()


def test_validate_exits_0_prints_counts_and_writes_nothing(ws):
    from test_loading import EVENTS_CSV, PARTICIPANTS_CSV, PEOPLE_CSV, STUDIES_CSV

    ws.write(people=PEOPLE_CSV, studies=STUDIES_CSV, participants=PARTICIPANTS_CSV, events=EVENTS_CSV)
    result = cli("validate", str(ws.job))
    assert result.exit_code == 0, result.output
    assert "people: 7 read, 2 accepted, 5 rejected" in result.stdout
    assert "events: 19 read, 3 accepted, 16 rejected" in result.stdout
    assert not ws.db.exists()
    _missing_column(ws)
    result = cli("validate", str(ws.job))
    assert result.exit_code == 2 and "added_at" in result.stderr


def test_input_and_db_options_are_relative_to_the_current_directory(ws, tmp_path, monkeypatch):
    basic(ws)
    other = tmp_path / "elsewhere"
    ws.input.rename(other)
    monkeypatch.chdir(tmp_path)
    result = cli("run", str(ws.job), "--as-of", "2026-03-31", "--input", "elsewhere", "--db", "x.duckdb", "--quiet")
    assert result.exit_code == 0, result.output
    assert (tmp_path / "x.duckdb").is_file() and not ws.db.exists()


def test_default_as_of_is_yesterday_utc(ws):
    basic(ws).run(as_of=None)
    yesterday = datetime.now(UTC).date() - timedelta(days=1)
    assert ws.query("select as_of from runs") == [(yesterday,)]


def test_runs_and_run_inputs_record_a_successful_run(ws):
    basic(ws).run()
    (run_id, as_of, outcome, error, config_digest, version, started, finished) = ws.query(
        "select run_id, as_of, outcome, error, config_digest, version, started_at, finished_at from runs"
    )[0]
    assert (as_of, outcome, error) == (date(2026, 3, 31), "success", None)
    assert config_digest and version and started <= finished
    assert ws.query("select source_table, rows_read, rows_accepted, rows_rejected from run_inputs order by 1") == [
        ("events", 1, 1, 0),
        ("participants", 1, 1, 0),
        ("people", 3, 3, 0),
        ("studies", 1, 1, 0),
    ]
    assert ws.query("select distinct run_id from run_inputs") == [(run_id,)]


def test_the_installed_command_runs_as_a_subprocess(ws):
    basic(ws)
    proc = subprocess.run(
        [str(STATUSBATCH), "run", str(ws.job), "--as-of", "2026-03-31"],
        capture_output=True,
        text=True,
        env=statusbatch_env(),
        timeout=60,
    )
    assert proc.returncode == 0, proc.stderr
    assert "Traceback" not in proc.stderr
    assert ws.query("select count(*) from contact_status") == [(3,)]


# --- latest views and retention follow the published as_ofs, not the rows a table happens to have ----


def _clean_then_quiet(ws: Workspace, job_body: str = "") -> None:
    """Day one: a bad people row and an invite cooldown. Later days: the row is fixed and the cooldown cleared."""
    events = [event("e1", "p1", "2026-03-21T00:00:00Z", "invited", study_id="S1")]
    ws.write(job_body, people="person_id,created_at\np1,2026-01-01\np2,not-a-date\n", studies=[study("S1")], events=events)
    ws.run(as_of="2026-03-28")
    events.append(event("e2", "p1", "2026-03-29T00:00:00Z", "cooldown_cleared"))
    ws.write(job_body, people="person_id,created_at\np1,2026-01-01\np2,2026-01-01\n", studies=[study("S1")], events=events)


def test_latest_views_of_tables_with_rows_on_the_newest_day(ws):
    _clean_then_quiet(ws)
    ws.run(as_of="2026-03-31")
    assert ws.query("select distinct as_of from contact_status_latest") == [(date(2026, 3, 31),)]


def test_latest_views_are_empty_when_the_newest_run_has_no_rows(ws):
    _clean_then_quiet(ws)
    ws.run(as_of="2026-03-31")
    assert ws.query("select count(*) from rejected_rows_latest") == [(0,)]
    assert ws.query("select count(*) from cooldowns_latest") == [(0,)]


def test_retention_drops_old_slices_of_tables_empty_on_newer_days(ws):
    _clean_then_quiet(ws, "[retention]\nkeep_as_of = 2\n")
    for day in ("2026-03-29", "2026-03-30", "2026-03-31"):
        ws.run(as_of=day)
    assert sliced(ws, "contact_status") == [date(2026, 3, 30), date(2026, 3, 31)]
    assert sliced(ws, "rejected_rows") == []
    assert sliced(ws, "cooldowns") == []


def test_every_table_with_an_as_of_has_a_latest_view(ws):
    """§4: the logs and the history too. status_changes_latest is the newest published night's
    changes; the history's view is its rows, whatever as_of last replaced it; runs_latest is every
    run of the newest as_of, failed ones included."""
    basic(ws)
    ws.run(as_of="2026-03-30")
    ws.run(as_of="2026-03-31")
    ws.run(as_of="2026-03-15")  # a backfill: the history now holds 2026-03-15
    con_tables = ws.tables()
    with_as_of = {
        name
        for (name,) in ws.query(
            "select distinct table_name from information_schema.columns where column_name = 'as_of' "
            "and table_name in (select table_name from information_schema.tables where table_type = 'BASE TABLE')"
        )
    }
    assert {f"{name}_latest" for name in with_as_of} <= con_tables
    assert ws.query("select distinct as_of from status_changes_latest") == [(date(2026, 3, 31),)]
    assert ws.query("select count(*) from contact_status_history_latest") == ws.query(
        "select count(*) from contact_status_history"
    )
    assert ws.query("select distinct as_of from contact_status_history_latest") == [(date(2026, 3, 15),)]
    assert ws.query("select as_of, outcome from runs_latest") == [(date(2026, 3, 31), "success")]
