"""The synthetic exports generator (`statusbatch generate`): contract, realism, messiness, determinism.

Chunking decision under test: the rows depend only on (people, seed, messy_rate), never on
--chunk-people; CSV files are byte-identical across chunk sizes, Parquet files hold the same
rows (only their row-group layout differs).
"""

from __future__ import annotations

import importlib.util
import re
import sys
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import polars as pl
import pytest
from click.testing import CliRunner

from statusbatch import codes, synthetic
from statusbatch.cli import main
from statusbatch.synthetic import SyntheticConfig

N = 3000
TS = re.compile(r"^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}Z$")
DATE = re.compile(r"^\d{4}-\d{2}-\d{2}$")


def _read(out: Path, table: str) -> pl.DataFrame:
    return pl.read_parquet(out / f"{table}.parquet")


@pytest.fixture(scope="module")
def clean(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, synthetic.GenerateResult]:
    out = tmp_path_factory.mktemp("clean")
    result = synthetic.generate(SyntheticConfig(people=N, seed=7, messy_rate=0.0, chunk_people=1000), out)
    return out, result


@pytest.fixture(scope="module")
def messy(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, synthetic.GenerateResult]:
    out = tmp_path_factory.mktemp("messy")
    result = synthetic.generate(SyntheticConfig(people=N, seed=7, messy_rate=0.03), out)
    return out, result


def test_every_table_has_exactly_the_contract_columns(clean: tuple[Path, synthetic.GenerateResult]) -> None:
    out, result = clean
    expected = synthetic.contract_columns()
    for table in synthetic.TABLES:
        frame = _read(out, table)
        assert tuple(frame.columns) == expected[table], table
        assert frame.height == result.rows[table] > 0
    assert _read(out, "events")["occurred_at"].dtype == pl.Datetime("us", "UTC")
    assert _read(out, "people")["last_seen_on"].dtype == pl.Date


def test_rows_are_realistic(clean: tuple[Path, synthetic.GenerateResult]) -> None:
    out, _ = clean
    events, people = _read(out, "events"), _read(out, "people")
    participants, studies, sequences = _read(out, "participants"), _read(out, "studies"), _read(out, "sequences")

    assert set(events["event_type"]) == set(codes.EVENT_TYPES)
    counts = events["event_type"].value_counts().to_dict(as_series=False)
    by_type = dict(zip(counts["event_type"], counts["count"], strict=True))
    assert by_type["email_sent"] > 20 * by_type["blocklist_added"]
    assert by_type["inbound_message"] > 20 * by_type["cooldown_set"]

    per_person = events.group_by("person_id").len()["len"]
    assert 10 <= per_person.median() <= 20  # type: ignore[operator]
    assert per_person.max() >= 20 * per_person.median()  # type: ignore[operator]  # a heavy tail

    statuses = set(participants["participant_status"]) | set(
        events.filter(pl.col("event_type") == "participant_status")["value"]
    )
    assert statuses == set(codes.PARTICIPANT_STATUSES)
    assert set(studies["kind"]) == set(codes.STUDY_KINDS)
    assert studies.height == N // 200
    assert studies["closed_at"].null_count() < studies.height  # some closed …
    assert (studies["opened_at"] > datetime(2026, 11, 21, tzinfo=UTC)).any()  # … some not yet opened
    assert studies["participation_limit"].is_not_null().any()
    assert sequences["team_edition"].any() and not sequences["team_edition"].all()
    assert set(sequences["reply_handling"]) == set(codes.REPLY_HANDLING)

    assert people["last_seen_on"].null_count() > 0
    assert (people["age"] < 18).any() and people["age"].null_count() > 0
    assert people["country"].n_unique() > 10

    manual = events.filter(pl.col("event_type").is_in(["status_set", "status_removed"]))
    owners = manual.join(sequences, on="sequence_id", how="left")
    assert (owners["actor_id"] != owners["owner_id"]).any()
    first, last = events["occurred_at"].min(), events["occurred_at"].max()
    assert (last - first).days > 600  # type: ignore[operator]


def test_clean_data_is_valid(clean: tuple[Path, synthetic.GenerateResult]) -> None:
    out, result = clean
    assert sum(result.messy.values()) == 0
    events, people = _read(out, "events"), _read(out, "people")
    participants, studies = _read(out, "participants"), _read(out, "studies")

    assert people["person_id"].is_unique().all() and people["created_at"].null_count() == 0
    assert studies["study_id"].is_unique().all()
    assert participants.select(pl.struct("study_id", "person_id").is_unique().all()).item()
    assert participants["person_id"].is_in(people["person_id"].implode()).all()
    assert participants["study_id"].is_in(studies["study_id"].implode()).all()
    assert participants["participant_status"].is_in(list(codes.PARTICIPANT_STATUSES)).all()

    assert events["event_id"].null_count() == 0 and events["event_id"].is_unique().all()
    assert events.select("occurred_at", "event_type", "person_id").null_count().sum_horizontal().item() == 0
    assert events["event_type"].is_in(list(codes.EVENT_TYPES)).all()
    assert events["person_id"].is_in(people["person_id"].implode()).all()
    assert events["study_id"].drop_nulls().is_in(studies["study_id"].implode()).all()
    assert events["channel"].drop_nulls().is_in(list(codes.CHANNELS)).all()

    def of(*types: str) -> pl.DataFrame:
        return events.filter(pl.col("event_type").is_in(types))

    assert of(*codes.STUDY_SCOPED_EVENTS)["study_id"].null_count() == 0
    assert of(*codes.SEQUENCE_SCOPED_EVENTS)["sequence_id"].null_count() == 0
    statuses = of("participant_status")
    assert statuses["value"].is_in(list(codes.PARTICIPANT_STATUSES)).all()
    assert statuses.join(participants, on=["study_id", "person_id"], how="anti").height == 0
    assert of("cooldown_set")["value"].str.to_date("%Y-%m-%d", strict=False).null_count() == 0
    assert of("unsubscribed")["value"].null_count() == 0
    assert of("status_set", "status_removed")["value"].null_count() == 0

    # sequence events mostly follow a sequence_added of the same membership
    added = of("sequence_added").group_by("person_id", "sequence_id").agg(pl.col("occurred_at").min().alias("added"))
    follow = of("email_sent", "email_opened", "replied").join(added, on=["person_id", "sequence_id"], how="left")
    assert (follow["occurred_at"] >= follow["added"]).mean() > 0.9  # type: ignore[operator]


def test_messy_mode_produces_every_kind_of_bad_row(messy: tuple[Path, synthetic.GenerateResult]) -> None:
    out, result = messy
    assert all(n > 0 for n in result.messy.values()), result.messy
    events, people = _read(out, "events"), _read(out, "people")
    participants, studies = _read(out, "participants"), _read(out, "studies")
    found = {
        "bad_timestamp": events["occurred_at"].null_count() > 0,
        "missing_event_id": events["event_id"].null_count() > 0,
        "unknown_event_type": (~events["event_type"].is_in(list(codes.EVENT_TYPES))).any(),
        "unknown_person": (~events["person_id"].is_in(people["person_id"].implode())).any(),
        "missing_study_id": events.filter(
            (pl.col("event_type") == "participant_status") & pl.col("study_id").is_null()
        ).height > 0,
        "missing_sequence_id": events.filter(
            pl.col("event_type").is_in(list(codes.SEQUENCE_SCOPED_EVENTS)) & pl.col("sequence_id").is_null()
        ).height > 0,
        "bad_value": events.filter(pl.col("event_type") == "cooldown_set")["value"]
        .str.to_date("%Y-%m-%d", strict=False).null_count() > 0,
        "unknown_study": (~events["study_id"].drop_nulls().is_in(studies["study_id"].implode())).any(),
        "not_a_participant": events.filter(
            pl.col("event_type") == "participant_status", pl.col("study_id").is_not_null()
        ).join(participants, on=["study_id", "person_id"], how="anti").height > 0,
        "exact_duplicate": events.drop_nulls("event_id").height
        > events.drop_nulls("event_id").unique(maintain_order=True).height,
        "conflicting_duplicate": events.drop_nulls("event_id").unique().group_by("event_id").len()["len"].max() == 2,
    }  # fmt: skip
    assert set(found) == set(synthetic.MESSY_EVENT_KINDS)
    assert all(found.values()), found
    assert people["created_at"].null_count() > 0 and not people["person_id"].is_unique().all()
    assert (~participants["participant_status"].is_in(list(codes.PARTICIPANT_STATUSES))).any()
    assert participants["added_at"].null_count() > 0
    assert not participants.select(pl.struct("study_id", "person_id").is_unique().all()).item()
    assert 0.015 < sum(result.messy.values()) / sum(result.rows.values()) < 0.05


def test_csv_format_and_messy_timestamps(tmp_path: Path) -> None:
    synthetic.generate(SyntheticConfig(people=800, seed=3, messy_rate=0.05), tmp_path, "csv")
    events = pl.read_csv(tmp_path / "events.csv", infer_schema=False)
    people = pl.read_csv(tmp_path / "people.csv", infer_schema=False)
    assert tuple(events.columns) == synthetic.contract_columns()["events"]
    ok = events["occurred_at"].str.contains(TS.pattern)
    assert ok.mean() > 0.9 and not ok.all()  # type: ignore[operator]  # garbage, not nulls, in CSV
    assert events["occurred_at"].null_count() == 0
    assert people["created_at"].drop_nulls().str.contains(TS.pattern).all()
    assert people["last_seen_on"].drop_nulls().str.contains(DATE.pattern).all()
    assert people["last_seen_on"].null_count() > 0  # empty cells are nulls


def test_same_seed_gives_identical_files(tmp_path: Path) -> None:
    cfg = SyntheticConfig(people=1200, seed=11)
    for fmt in ("parquet", "csv"):
        a, b = tmp_path / f"a-{fmt}", tmp_path / f"b-{fmt}"
        synthetic.generate(cfg, a, fmt)  # type: ignore[arg-type]
        synthetic.generate(cfg, b, fmt)  # type: ignore[arg-type]
        for table in synthetic.TABLES:
            name = f"{table}.{fmt}"
            assert (a / name).read_bytes() == (b / name).read_bytes(), name
    other = tmp_path / "other"
    synthetic.generate(SyntheticConfig(people=1200, seed=12), other)
    assert (other / "events.parquet").read_bytes() != (tmp_path / "a-parquet" / "events.parquet").read_bytes()


def test_chunk_size_does_not_change_the_rows(tmp_path: Path) -> None:
    def frames(chunk: int) -> dict[str, pl.DataFrame]:
        cfg = SyntheticConfig(people=2500, seed=5, messy_rate=0.01, chunk_people=chunk)
        chunks = list(synthetic.iter_chunks(cfg, synthetic.build_world(cfg)))
        return {t: pl.concat([getattr(c, t) for c in chunks]) for t in ("people", "participants", "events")}

    one, many = frames(2500), frames(333)
    for table, frame in one.items():
        assert frame.equals(many[table]), table
    assert many["events"]["event_id"].drop_nulls().n_unique() > 0.99 * many["events"].height

    for chunk in (400, 2500):
        synthetic.generate(SyntheticConfig(people=2500, seed=5, chunk_people=chunk), tmp_path / str(chunk), "csv")
    for table in synthetic.TABLES:
        assert (tmp_path / "400" / f"{table}.csv").read_bytes() == (tmp_path / "2500" / f"{table}.csv").read_bytes()


def test_tiny_population(tmp_path: Path) -> None:
    result = synthetic.generate(SyntheticConfig(people=1, seed=0, messy_rate=0.0), tmp_path)
    assert result.rows["people"] == 1 and result.rows["studies"] == 8
    assert _read(tmp_path, "events").height == result.rows["events"] >= 1


def test_cli_generate(tmp_path: Path) -> None:
    runner = CliRunner()
    out = tmp_path / "in"
    args = ["generate", "--people", "600", "--out", str(out), "--seed", "2", "--messy-rate", "0"]
    first = runner.invoke(main, args)
    assert first.exit_code == 0, first.output
    assert "events" in first.output and "600" in first.output
    assert sorted(p.name for p in out.iterdir()) == sorted(f"{t}.parquet" for t in synthetic.TABLES)

    clash = runner.invoke(main, [*args, "--format", "csv"])
    assert clash.exit_code == 2 and "--force" in clash.output

    replaced = runner.invoke(main, [*args, "--format", "csv", "--force", "--chunk-people", "250"])
    assert replaced.exit_code == 0, replaced.output
    assert sorted(p.name for p in out.iterdir()) == sorted(f"{t}.csv" for t in synthetic.TABLES)

    bad = runner.invoke(main, ["generate", "--people", "0", "--out", str(out)])
    assert bad.exit_code == 2


def _bench_module() -> object:
    spec = importlib.util.spec_from_file_location("bench_harness", Path(__file__).parents[1] / "bench" / "bench.py")
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses resolve annotations through sys.modules
    spec.loader.exec_module(module)
    return module


def test_bench_parses_stage_lines_and_reports_a_failed_run(tmp_path: Path) -> None:
    bench: Any = _bench_module()
    lines = [
        "stage load: 1.234s",
        "2026-11-21 02:00:01 INFO stage compute contact_status: 0.5s (12 tables)",
        "stage load: 0.766s",
        "backstage load: 3s",  # 'stage' must be a word of its own …
        "stage_cancelled: 3",  # … followed by a space, a name, a colon, seconds and 's'
        "stage limit: 3 people",
        "stage publish:2e-1s",
    ]
    assert bench.parse_stages(lines) == {"load": 2.0, "compute contact_status": 0.5, "publish": 0.2}

    script = "import sys; print('stage load: 0.25s', file=sys.stderr); print('boom: no pipeline'); sys.exit(3)"
    run = bench.run_job(
        [sys.executable, "-c", script], tmp_path / "job.toml", tmp_path, tmp_path / "out.duckdb", tmp_path / "run.log"
    )
    assert run.exit_code == 3 and not run.ok
    assert run.stages == {"load": 0.25} and run.peak_rss_bytes > 0
    line = bench.summary_line("S", run, 0.1, 200_000)
    assert line.startswith("bench S: run FAILED (exit 3)") and "boom: no pipeline" in line
    killed = bench.summary_line("M", bench.RunResult(-9, 190.0, 21 * 2**30), 6.4, 20_600_000)
    assert "killed by SIGKILL" in killed and "21.0 GiB peak" in killed and "out of memory?" in killed
    ok = bench.RunResult(0, 8.7, int(1.9 * 2**30))
    assert bench.summary_line("M", ok, 0.9, 20_100_000) == (
        "bench M: run 8.7s (1.9 GiB peak), scan 0.9s, ratio 9.7x, 20.1M events, 2.3M events/s"
    )


def test_bench_watchdog_kills_a_run_that_outgrows_its_memory_limit(tmp_path: Path) -> None:
    bench: Any = _bench_module()
    script = "import time; b = bytearray(400 * 2**20); b[::4096] = b'x' * len(b[::4096]); time.sleep(30)"
    started = time.perf_counter()
    run = bench.run_job(
        [sys.executable, "-c", script], tmp_path / "job.toml", tmp_path, tmp_path / "db", tmp_path / "log", 200 * 2**20
    )
    assert time.perf_counter() - started < 20
    assert run.exit_code == -9
    assert "passed --max-rss 200 MiB" in bench.summary_line("S", run, 0.1, 1000)
