"""Ranges of people: a run computed a range at a time equals the run of everyone at once."""

from __future__ import annotations

import shutil
import tempfile
import time
from datetime import date
from pathlib import Path

import duckdb
import polars as pl
import pytest
from conftest import cli, event, person, write_inputs
from hypothesis import given, settings
from hypothesis import strategies as st

import statusbatch.engine
import statusbatch.pipeline
from statusbatch.loading import InputError, Workspace, load_inputs, open_workspace
from statusbatch.loading import events as events_module
from statusbatch.loading.contract import input_table
from statusbatch.loading.quarantine import ROW
from statusbatch.loading.readers import scan_table_file
from statusbatch.loading.partitions import PersonRange, person_ranges, range_count, range_index
from statusbatch.publish import store

ROOT = Path(__file__).resolve().parents[1]
IDS = st.text(alphabet="ab1", max_size=4)


@settings(max_examples=200, deadline=None)
@given(st.lists(IDS, max_size=30), st.integers(1, 8), st.lists(st.one_of(st.none(), IDS), max_size=30))
def test_every_id_falls_in_exactly_one_range(people, count, probes):
    ranges = person_ranges(pl.Series(people, dtype=pl.String), count)
    assert person_ranges(pl.Series(people, dtype=pl.String).sort(), count) == ranges  # already sorted: not sorted again
    assert 1 <= len(ranges) <= max(1, min(count + 1, len(set(people))))
    if len(ranges) > 1:  # no range without people
        ids = pl.DataFrame({"person_id": sorted(set(people))})
        assert all(ids.filter(r.holds(pl.col("person_id"))).height for r in ranges)
    probe = pl.DataFrame({"person_id": people + probes}, schema={"person_id": pl.String})
    held = probe.with_columns(
        held=pl.sum_horizontal(r.holds(pl.col("person_id")).cast(pl.Int32) for r in ranges)
    ).get_column("held")
    assert held.to_list() == [1] * probe.height
    holder = probe.with_columns(
        holder=pl.coalesce(pl.when(r.holds(pl.col("person_id"))).then(pl.lit(i, pl.UInt32)) for i, r in enumerate(ranges))
    ).get_column("holder")
    assert range_index(ranges, probe.get_column("person_id")).to_list() == holder.to_list()


def test_ranges_hold_as_many_people_each_but_the_first_and_last_half_as_many():
    ids = pl.Series([f"p{i:03d}" for i in range(100)])
    ranges = person_ranges(ids, 4)
    sizes = [ids.to_frame("person_id").filter(r.holds(pl.col("person_id"))).height for r in ranges]
    assert sizes == [12, 25, 25, 25, 13]
    assert ranges[0] == PersonRange(None, "p012") and ranges[-1] == PersonRange("p087", None)


@pytest.mark.parametrize(("events", "per_range", "count"), [(10, 0, 1), (10, 10, 1), (11, 10, 2), (0, 5, 1), (100, 7, 15)])
def test_range_count(events, per_range, count):
    assert range_count(events, per_range) == count


PEOPLE = [person(f"p{i}") for i in range(1, 7)]
EVENTS = [
    # e1 under two people in different ranges: the first row wins
    event("e1", "p1", "2026-03-01T00:00:00Z", "opted_out"),
    event("e1", "p6", "2026-03-02T00:00:00Z", "opted_out"),
    # e2: the first row is bad, so the first *valid* row (another person's) wins
    event("e2", "p2", "2026-03-01T00:00:00Z", "frobbed"),
    event("e2", "p5", "2026-03-01T00:00:00Z", "email_opened", sequence_id="Q1"),
    # e3: an exact duplicate counts once
    event("e3", "p3", "2026-03-01T00:00:00Z", "unsubscribed", value="news"),
    event("e3", "p3", "2026-03-01T00:00:00Z", "unsubscribed", value="news"),
    event("e4", "p4", "2026-03-01T00:00:00Z", "stopped"),
    event("e5", "nobody", "2026-03-01T00:00:00Z", "stopped"),
    event("", "p4", "2026-03-01T00:00:00Z", "stopped"),
    event("e6", "p6", "2026-03-03T00:00:00Z", "blocklist_added"),
    # e7, e8: keys repeated within one person, settled by that person's range
    event("e7", "p4", "2026-03-01T00:00:00Z", "frobbed"),
    event("e7", "p4", "2026-03-02T00:00:00Z", "stopped"),
    event("e8", "p2", "2026-03-01T00:00:00Z", "stopped"),
    event("e8", "p2", "2026-03-02T00:00:00Z", "stopped"),
    # a second missing id, in another range: missing, not a repeated key
    event("", "p6", "2026-03-04T00:00:00Z", "stopped"),
]


def _sorted(frame: pl.DataFrame, *by: str) -> pl.DataFrame:
    return frame.sort(by, nulls_last=True)


@pytest.mark.parametrize("block_rows", [65_536, 2])
@pytest.mark.parametrize("per_range", [1, 2, 4])
def test_events_read_by_range_are_the_events_read_whole(tmp_path, monkeypatch, per_range, block_rows):
    """With blocks of 2 rows a range's people lie in several runs of blocks, read as several slices."""
    monkeypatch.setattr(events_module, "BLOCK_ROWS", block_rows)
    write_inputs(tmp_path, people=PEOPLE, studies=[], participants=[], events=EVENTS)
    whole = load_inputs(tmp_path)
    workspace = open_workspace(tmp_path, per_range)
    assert len(workspace.ranges) == min(len(PEOPLE) // 2, range_count(len(EVENTS), per_range)) + 1
    shares = [workspace.share(people) for people in workspace.ranges]

    for name, log in whole.event_logs.items():
        by_range = pl.concat([inputs.event_logs[name] for inputs, _ in shares])
        assert _sorted(by_range, "event_id").equals(_sorted(log, "event_id")), name
    rejected = pl.concat([workspace.rejected_rows, *[events.rejected for _, events in shares]])
    assert _sorted(rejected, "source_table", "row_number").equals(_sorted(whole.rejected_rows, "source_table", "row_number"))
    read = sum(events.rows_read for _, events in shares)
    assert workspace.run_inputs(read, rejected.height - workspace.rejected_rows.height).equals(whole.run_inputs)

    accepted = whole.events.sort("event_id")
    assert accepted.select("event_id", "person_id").rows() == [
        ("e1", "p1"), ("e2", "p5"), ("e3", "p3"), ("e4", "p4"), ("e6", "p6"), ("e7", "p4"), ("e8", "p2")
    ]
    events_rejected = whole.rejected_rows.filter(pl.col("source_table") == "events").sort("row_number")
    assert events_rejected.select("row_number", "column").rows() == [
        (2, "event_id"), (3, "event_type"), (8, "person_id"), (9, "event_id"), (11, "event_type"), (14, "event_id"),
        (15, "event_id"),
    ]
    problems = dict(events_rejected.select("row_number", "problem").rows())
    assert problems[2] == "duplicate event_id (row 1 was kept)"
    assert problems[14] == "duplicate event_id (row 13 was kept)"
    assert problems[15] == problems[9] == "missing required value"


def _job(root: Path, input_dir: Path, per_range: int) -> Path:
    job = root / "job.toml"
    job.write_text(
        f'[job]\ninput = "{input_dir}"\ndb = "{root / "out.duckdb"}"\nevents_per_range = {per_range}\n\n'
        '[[do_not_contact]]\nname = "minors"\nwhen = "age < 18"\n\n[sequences]\nooo_resume_days = 14\n'
    )
    return job


def _published(db: Path) -> dict[str, pl.DataFrame]:
    con = duckdb.connect(str(db), read_only=True)
    try:
        names = [r[0] for r in con.execute("select table_name from information_schema.tables where table_type = 'BASE TABLE'").fetchall()]
        frames = {name: con.sql(f'select * from "{name}"').pl() for name in names}
    finally:
        con.close()
    frames["runs"] = frames["runs"].select("as_of", "outcome", "error")
    if "run_inputs" in frames:
        frames["run_inputs"] = frames["run_inputs"].drop("run_id")
    return {name: frame.sort(pl.all(), nulls_last=True) for name, frame in frames.items()}


@pytest.fixture
def small_row_groups(monkeypatch):
    """Row groups of 5 rows, inserted 3 at a time: ranges' rows go in mid-run, cut inside a range's frame."""
    monkeypatch.setattr(store, "ROW_GROUP_ROWS", 5)
    monkeypatch.setattr(store, "INSERT_ROW_GROUPS", 3)


def test_a_run_by_ranges_publishes_what_the_run_of_everyone_publishes(tmp_path, monkeypatch):
    outputs = {}
    for per_range in (0, 600):
        root = tmp_path / str(per_range)
        root.mkdir()
        if per_range:
            monkeypatch.setattr(store, "ROW_GROUP_ROWS", 5)
            monkeypatch.setattr(store, "INSERT_ROW_GROUPS", 3)
            monkeypatch.setattr(events_module, "BLOCK_ROWS", 100)  # ranges read as slices of the file
        result = cli("run", str(_job(root, ROOT / "sample_data", per_range)), "--as-of", "2026-03-31")
        assert result.exit_code == 0, result.output
        outputs[per_range] = _published(root / "out.duckdb")
    assert "computed in 15 ranges of people" in result.output
    assert outputs[0].keys() == outputs[600].keys()
    for name, frame in outputs[0].items():
        assert frame.equals(outputs[600][name]), name
    assert outputs[0]["contact_status"].height > 200 and outputs[0]["rejected_rows"].height > 100


def test_a_run_collects_in_memory_and_leaves_polars_as_it_found_it(tmp_path, monkeypatch):
    """The engine is set for the run's collects that pipeline does not call itself, pandera's on the writer thread."""
    engines = []
    real = statusbatch.pipeline.validate_tables

    def noting_the_engine(tables):
        engines.append(pl.Config.state(if_set=True).get("POLARS_ENGINE_AFFINITY"))
        return real(tables)

    monkeypatch.setattr(statusbatch.pipeline, "validate_tables", noting_the_engine)
    before = pl.Config.state(if_set=True)
    result = cli("run", str(_job(tmp_path, ROOT / "sample_data", 2000)), "--as-of", "2026-03-31")
    assert result.exit_code == 0, result.output
    assert len(engines) > 2 and set(engines) == {statusbatch.engine.ENGINE}
    assert pl.Config.state(if_set=True) == before


def test_a_failure_in_a_later_range_writes_nothing(tmp_path, monkeypatch, small_row_groups):
    root = tmp_path / "ws"
    shutil.copytree(ROOT / "sample_data", root / "input")
    job = _job(root, root / "input", 2000)
    assert cli("run", str(job), "--as-of", "2026-03-30").exit_code == 0
    before = _published(root / "out.duckdb")
    real = statusbatch.pipeline.range_tables
    ranges_seen = []

    def fails_in_the_third_range(inputs, config, as_of, rules):
        ranges_seen.append(inputs.people.height)
        if len(ranges_seen) == 3:
            raise RuntimeError("disk on fire")
        return real(inputs, config, as_of, rules)

    monkeypatch.setattr(statusbatch.pipeline, "range_tables", fails_in_the_third_range)
    result = cli("run", str(job), "--as-of", "2026-03-31")
    assert result.exit_code == 1 and "disk on fire" in result.output
    after = _published(root / "out.duckdb")
    assert len(ranges_seen) == 3 and all(height > 0 for height in ranges_seen)
    assert after["runs"].select("as_of", "outcome").rows() == [
        (date(2026, 3, 30), "success"),
        (date(2026, 3, 31), "failed"),
    ]
    for name, frame in before.items():
        if name != "runs":
            assert frame.equals(after[name]), name


def test_an_events_file_failing_midway_is_bad_input_and_writes_nothing(tmp_path, monkeypatch):
    root = tmp_path / "ws"
    root.mkdir()
    job = _job(root, ROOT / "sample_data", 2000)
    real = Workspace.share
    shares = []

    def unreadable_on_the_second_range(self, people):
        shares.append(people)
        if len(shares) == 2:
            raise InputError("events.csv: unreadable file (simulated)")
        return real(self, people)

    monkeypatch.setattr(Workspace, "share", unreadable_on_the_second_range)
    result = cli("run", str(job), "--as-of", "2026-03-31")
    assert result.exit_code == 2 and "unreadable file (simulated)" in result.output
    after = _published(root / "out.duckdb")
    assert set(after) == {"runs"}
    assert after["runs"].rows() == [(date(2026, 3, 31), "failed", "events.csv: unreadable file (simulated)")]


class _Shares:
    """A stand-in workspace whose shares are their range's name; it notes each read as it starts."""

    def __init__(self, ranges: tuple[str, ...], failing: str | None = None) -> None:
        self.ranges, self.failing, self.started = ranges, failing, []

    def share(self, people: str) -> str:
        self.started.append(people)
        if people == self.failing:
            raise InputError(f"{people}: unreadable (simulated)")
        return people


def _started_soon(shares: _Shares, count: int) -> list[str]:
    deadline = time.monotonic() + 5
    while len(shares.started) < count and time.monotonic() < deadline:
        time.sleep(0.01)
    time.sleep(0.05)  # time enough for a read that should not start
    return list(shares.started)


def test_ranges_are_read_in_order_one_ahead_of_the_one_computed():
    workspace = _Shares(("a", "b", "c"))
    shares = statusbatch.pipeline._read_ahead(workspace)
    assert next(shares) == "a"
    assert _started_soon(workspace, 2) == ["a", "b"]  # b is read while a is computed, c not yet
    assert next(shares) == "b"
    assert _started_soon(workspace, 3) == ["a", "b", "c"]
    assert list(shares) == ["c"]
    assert list(statusbatch.pipeline._read_ahead(_Shares(("everyone",)))) == ["everyone"]


def test_a_range_that_fails_to_read_fails_when_its_turn_comes():
    workspace = _Shares(("a", "b", "c"), failing="b")
    shares = statusbatch.pipeline._read_ahead(workspace)
    assert next(shares) == "a"
    with pytest.raises(InputError, match="b: unreadable"):
        next(shares)
    assert workspace.started == ["a", "b"]


@pytest.mark.parametrize(("per_range", "reads"), [(0, 1), (2, 2)])
def test_one_range_is_read_once_for_every_day_of_a_backfill(tmp_path, monkeypatch, per_range, reads):
    write_inputs(tmp_path, people=PEOPLE, studies=[], participants=[], events=EVENTS)
    workspace = open_workspace(tmp_path, per_range)
    calls = []
    real = type(workspace.events).share
    monkeypatch.setattr(type(workspace.events), "share", lambda self, *args: calls.append(args[0]) or real(self, *args))
    first = workspace.ranges[0]
    assert workspace.share(first)[0].event_logs["messaging"].equals(workspace.share(first)[0].event_logs["messaging"])
    assert len(calls) == reads


def test_a_range_reads_the_runs_of_blocks_that_hold_its_people():
    ranges = (PersonRange(None, "b"), PersonRange("b", None))
    placement = pl.DataFrame(
        {
            "__block": [0, 0, 1, 3, 3, 4, 4, 5, 6, 6, 7, 8, 9, 9, 9],
            "person_id": ["a", "c", "a", "a", "c", "c", "A", None, "a", "z", "z", "y", "c", "d", "z"],
        },
        schema={"__block": pl.UInt32, "person_id": pl.String},
    )
    by_id = events_module.with_id_range(placement, ranges)
    strays = events_module.stray_homes(by_id, pl.Series(["a", "c", "d"]))
    # unknown ids go with the first range with people in their first block; alone there, they keep their place
    assert strays.sort("person_id").rows() == [("A", 1), ("y", 1), ("z", 0)]
    block = events_module.BLOCK_ROWS
    assert events_module._spans(events_module.rehomed(by_id, strays), ranges) == {
        # a null person is the first range's; z's rows go with it wherever they are, block 9 too
        ranges[0]: [(0, 2 * block), (3 * block, block), (5 * block, 3 * block), (9 * block, block)],
        ranges[1]: [(0, block), (3 * block, 2 * block), (8 * block, 2 * block)],
    }


def test_unknown_people_strewn_through_the_file_do_not_make_a_range_read_it_all(tmp_path, monkeypatch):
    """Ids of nobody sorting after every person's, one per block: each range still reads its own blocks."""
    monkeypatch.setattr(events_module, "BLOCK_ROWS", 4)
    people = [person(f"p{i:02d}") for i in range(12)]
    events = []
    for i in range(12):
        events += [event(f"e{i}-{k}", f"p{i:02d}", "2026-03-01T00:00:00Z", "stopped") for k in range(3)]
        events.append(event(f"x{i}", f"z{i:02d}", "2026-03-01T00:00:00Z", "stopped"))
    events.append(event("x0", "p11", "2026-03-02T00:00:00Z", "stopped"))  # a stray's key repeated in another range
    write_inputs(tmp_path, people=people, studies=[], participants=[], events=events)
    whole = load_inputs(tmp_path)
    workspace = open_workspace(tmp_path, 16)
    assert len(workspace.ranges) == 5
    read = sum(length for spans in workspace.events._spans.values() for _, length in spans)
    assert read <= len(events) + 4 * 4  # at most a block shared at each of the 4 cuts
    shares = [workspace.share(r)[1] for r in workspace.ranges]
    rejected = pl.concat([workspace.rejected_rows, *[share.rejected for share in shares]])
    assert _sorted(rejected, "row_number").equals(_sorted(whole.rejected_rows, "row_number"))
    assert rejected.get_column("problem").str.starts_with("unknown person").all() and rejected.height == 12
    assert sum(share.rows_read for share in shares) + 2 == len(events)  # the two rows of x0 are settled up front
    accepted = pl.concat([share.logs["messaging"] for share in shares])
    assert accepted.filter(pl.col("event_id") == "x0").get_column("person_id").to_list() == ["p11"]


_KNOWN = [f"p{i}" for i in range(8)]
_ROW = st.tuples(
    st.sampled_from(["e1", "e2", "e3", "e4", None]),  # few ids: keys repeat, within and across people
    st.one_of(st.sampled_from(_KNOWN), st.sampled_from(["a0", "q1", "z9"]), st.none()),  # known, strays, missing
    st.sampled_from(["stopped", "opted_out", "frobbed"]),
)


@settings(max_examples=30, deadline=None)
@given(
    st.lists(st.tuples(st.integers(0, 1000), _ROW), min_size=6, max_size=40),
    st.booleans(),
    st.integers(1, 5),
    st.integers(1, 6),
)
def test_any_file_read_by_ranges_is_the_file_read_whole(rows, by_person, block_rows, per_range):
    """Rows in person order or not, with unknown ids anywhere and keys repeated across them: the ranges
    together accept and reject exactly what one read of the whole file does."""
    if by_person:
        rows = sorted(rows, key=lambda row: (row[1][1] or "", row[0]))
    events = [
        event(f"{event_id}{i}" if event_id == "e4" else event_id, person_id, f"2026-03-0{1 + i % 9}T00:00:00Z", kind)
        for i, (_, (event_id, person_id, kind)) in enumerate(rows)
    ]
    with tempfile.TemporaryDirectory() as directory, pytest.MonkeyPatch.context() as patch:
        patch.setattr(events_module, "BLOCK_ROWS", block_rows)
        root = write_inputs(Path(directory), people=[person(p) for p in _KNOWN], studies=[], participants=[], events=events)
        whole = load_inputs(root)
        workspace = open_workspace(root, per_range)
        shares = [workspace.share(people) for people in workspace.ranges]
    for name, log in whole.event_logs.items():
        by_range = pl.concat([inputs.event_logs[name] for inputs, _ in shares])
        assert _sorted(by_range, "event_id", "person_id").equals(_sorted(log, "event_id", "person_id")), name
    rejected = pl.concat([workspace.rejected_rows, *[share.rejected for _, share in shares]])
    assert _sorted(rejected, "row_number").equals(_sorted(whole.rejected_rows, "row_number"))
    read = sum(share.rows_read for _, share in shares)
    assert workspace.run_inputs(read, rejected.height - workspace.rejected_rows.height).equals(whole.run_inputs)


@pytest.mark.parametrize(("per_range", "planned"), [(0, False), (100, False), (2, True)])
def test_only_a_file_of_several_ranges_is_planned_in_blocks(tmp_path, per_range, planned):
    write_inputs(tmp_path, people=PEOPLE, studies=[], participants=[], events=EVENTS)
    path = tmp_path / "events.csv"
    first = events_module.first_pass(path, scan_table_file(path, input_table("events"), row_index=ROW), per_range)
    assert (first.placement is not None) == planned
    assert first.file_rows == len(EVENTS)
