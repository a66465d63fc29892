"""Wiring: inputs → models → published tables. No rule lives here, only the order of things."""

from __future__ import annotations

import contextlib
import uuid
from collections import Counter
from collections.abc import Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from datetime import UTC, date, datetime, time, timedelta

import polars as pl

from statusbatch import __version__
from statusbatch.config import JobConfig
from statusbatch.config.conditions import compile_condition, condition_schema
from statusbatch.engine import ENGINE
from statusbatch.loading import EventsShare, InputError, ModelInputs, Workspace, open_workspace
from statusbatch.models import channel, contact, facts, governance, history, participants, revealed, sequences
from statusbatch.progress import Reporter
from statusbatch.publish.parquet import ParquetCopyError, export_parquet
from statusbatch.publish.store import Publication, RunRecord, open_database, previous_statuses, record_run
from statusbatch.validation import validate_tables

__all__ = [
    "AsOf",
    "ContactModels",
    "Prepared",
    "RunFailed",
    "RunSummary",
    "compute_tables",
    "contact_models",
    "default_as_of",
    "history_and_violations",
    "parse_as_of",
    "prepare",
    "published_form",
    "range_tables",
    "run_job",
    "run_prepared",
]


@dataclass(frozen=True)
class AsOf:
    """The run's instant T and its date (the `as_of` column)."""

    instant: datetime
    day: date


def parse_as_of(text: str) -> AsOf:
    """A date means the end of that UTC day; a full timestamp is taken as given (naive = UTC)."""
    text = text.strip()
    try:
        day = date.fromisoformat(text)
    except ValueError:
        instant = datetime.fromisoformat(text.replace("Z", "+00:00"))
        instant = instant.replace(tzinfo=UTC) if instant.tzinfo is None else instant.astimezone(UTC)
        return AsOf(instant, instant.date())
    return AsOf(datetime.combine(day, time.max, tzinfo=UTC), day)


def default_as_of(now: datetime | None = None) -> AsOf:
    """Yesterday (UTC): the last complete day."""
    today = (now or datetime.now(UTC)).astimezone(UTC).date()
    return parse_as_of((today - timedelta(days=1)).isoformat())


class RunFailed(Exception):
    """The run failed after its inputs were read; it is recorded in `runs` when the database opens."""


def dnc_rules(config: JobConfig, people: pl.DataFrame) -> dict[str, pl.Expr]:
    """Compile every do_not_contact rule against the people export; a bad rule is a ConfigError."""
    schema = condition_schema(people)
    return {
        rule.name: compile_condition(rule.name, rule.when, schema) for rule in config.do_not_contact
    }


def _once(frame: pl.LazyFrame) -> pl.LazyFrame:
    """Materialise an intermediate several models read, so it is computed once, not per consumer."""
    return frame.collect(engine=ENGINE).lazy()


@dataclass(frozen=True)
class ContactModels:
    """The at-T research facts a contact status is made of, and that status: several tables read them."""

    people: pl.LazyFrame
    research_events: pl.LazyFrame
    observations: pl.LazyFrame
    participant_status: pl.LazyFrame
    opt_outs: pl.LazyFrame
    cooldowns: pl.LazyFrame
    contact_status: pl.LazyFrame


def contact_models(inputs: ModelInputs, config: JobConfig, as_of: AsOf, rules: dict[str, pl.Expr]) -> ContactModels:
    """The contact status of one range of people as of T, with the intermediates other tables share."""
    t = as_of.instant
    people = _once(facts.people_as_of(inputs.people.lazy(), t))
    studies = inputs.studies.lazy()
    members = facts.participants_as_of(inputs.participants.lazy(), people, t)
    # left lazy: each reader filters as it scans, so no as-of copy of the log is held through the run
    research_events = facts.events_as_of(inputs.event_logs["research"].lazy(), inputs.people.lazy(), t)
    observations = _once(participants.participant_observations(members, research_events, t))
    participant_status = _once(participants.participant_status(members, observations))
    starts = contact.cooldown_starts(research_events, observations, config.cooldown)
    cooldowns = _once(contact.cooldowns(starts, t, as_of.day))
    opt_outs = _once(contact.opt_out_changes(research_events, observations))
    contact_status = _once(contact.contact_status(
        people,
        contact.opted_out(opt_outs),
        contact.blocklist(contact.blocklist_changes(research_events, observations, config.blocklist.no_show_threshold)),
        contact.active_studies(participant_status, studies, t),
        # the rules read the export as it is (§2), a visit dated after T included: only the channel
        # model forgets it (`facts.people_as_of`)
        contact.do_not_contact(facts.people_created_by(inputs.people.lazy(), t), research_events, rules),
        cooldowns,
    ))
    return ContactModels(people, research_events, observations, participant_status, opt_outs, cooldowns, contact_status)


def history_and_violations(
    people: pl.LazyFrame,
    events: pl.LazyFrame,
    observations: pl.LazyFrame,
    studies: pl.LazyFrame,
    config: JobConfig,
    as_of: datetime,
    first_facts: pl.LazyFrame | None = None,
) -> tuple[pl.LazyFrame, pl.LazyFrame]:
    """contact_status_history and governance_violations, both read from the component timelines;
    exact too for observations dated before their participant was added (`revealed`). With
    `first_facts` (`history.first_facts`) a history starts at a first fact of any kind."""

    def audit(people: pl.LazyFrame, events: pl.LazyFrame, observations: pl.LazyFrame) -> tuple[pl.LazyFrame, pl.LazyFrame]:
        timelines = history.component_timelines(
            people, events, observations, studies, config.cooldown, config.blocklist.no_show_threshold
        ).materialized()
        return (
            history.contact_status_history(people, timelines, as_of, first_facts),
            governance.governance_violations(events, observations, timelines, config.cooldown, as_of),
        )

    return revealed.revealed(people, events, observations, *audit(people, events, observations), audit)


def range_tables(
    inputs: ModelInputs, config: JobConfig, as_of: AsOf, rules: dict[str, pl.Expr]
) -> dict[str, pl.LazyFrame]:
    """Every per-person result table of one range of people, as lazy queries, and the range's `study_tallies`."""
    t = as_of.instant
    c = contact_models(inputs, config, as_of, rules)
    people, research_events, observations = c.people, c.research_events, c.observations
    messaging_events = facts.events_as_of(inputs.event_logs["messaging"].lazy(), inputs.people.lazy(), t)
    first_facts = history.first_facts(list(inputs.event_logs.values()), observations, t)
    status_history, violations = history_and_violations(
        people, research_events, observations, inputs.studies.lazy(), config, t, _once(first_facts)
    )
    # the machine reads the whole log (it applies T itself, so no filtered copy of 11M events);
    # the pairs of people not yet created are dropped from its results
    sequence = sequences.sequence_machine(
        inputs.event_logs["sequence"].lazy(),
        inputs.sequences.lazy(),
        c.opt_outs,
        as_of=t,
        ooo_resume_days=config.sequences.ooo_resume_days,
    )
    sequence_status, sequence_rejected = (
        facts.of_people_as_of(frame, inputs.people.lazy(), t) for frame in (sequence.status, sequence.rejected)
    )
    messaging = channel.channel_machine(people, messaging_events, as_of=t)
    channel_status = _once(messaging.status)
    active_people = c.contact_status.filter(pl.col("active_in_study")).select("person_id")
    return {
        "contact_status": c.contact_status,
        "participant_status": c.participant_status,
        "study_tallies": participants.study_tallies(c.participant_status, observations),
        "cooldowns": c.cooldowns,
        "sequence_status": sequence_status,
        "channel_status": channel_status,
        "archival_candidates": channel.archival_candidates(
            channel_status,
            people,
            active_people,
            as_of=t,
            dormant_after_days=config.dormancy.dormant_after_days,
            delete_after_archived_days=config.dormancy.delete_after_archived_days,
        ),
        "rejected_transitions": pl.concat([sequence_rejected, messaging.rejected]),
        "contact_status_history": status_history,
        "governance_violations": violations,
    }


def compute_tables(inputs: ModelInputs, config: JobConfig, as_of: AsOf, rules: dict[str, pl.Expr]) -> dict[str, pl.LazyFrame]:
    """Every result table as a lazy query over the accepted inputs of everyone, as of T."""
    tables = range_tables(inputs, config, as_of, rules)
    tallies = tables.pop("study_tallies")
    return tables | {"study_progress": participants.study_progress(inputs.studies.lazy(), tallies, as_of.instant)}


def published_form(frame: pl.DataFrame, as_of: date | None) -> pl.DataFrame:
    """Codes as text, instants as naive UTC, `as_of` first: what DuckDB stores and analysts read."""
    casts = []
    for name, dtype in frame.schema.items():
        if isinstance(dtype, (pl.Enum, pl.Categorical)):
            casts.append(pl.col(name).cast(pl.String))
        elif isinstance(dtype, pl.Datetime) and dtype.time_zone is not None:
            casts.append(pl.col(name).dt.convert_time_zone("UTC").dt.replace_time_zone(None))
    frame = frame.with_columns(casts) if casts else frame
    if as_of is None:
        return frame
    return frame.select(pl.lit(as_of, dtype=pl.Date).alias("as_of"), pl.exclude("as_of"))


def status_changes(contact_status: pl.DataFrame, previous: pl.DataFrame, as_of: date) -> pl.DataFrame:
    """People whose status differs from the previous earlier-dated run (first appearances included)."""
    return (
        contact_status.select("person_id", "contact_status")
        .join(previous, on="person_id", how="left")
        .filter(pl.col("previous_status").is_null() | (pl.col("previous_status") != pl.col("contact_status")))
        .select(pl.lit(as_of, dtype=pl.Date).alias("as_of"), "person_id", "previous_status", "contact_status")
        .sort("person_id")
    )


@dataclass(frozen=True)
class RunSummary:
    run_id: str
    as_of: AsOf
    rows: dict[str, int]
    run_inputs: pl.DataFrame


@dataclass(frozen=True)
class Prepared:
    """Inputs read (the events planned by range of people) and rules compiled once, for one run or
    every day of a backfill."""

    workspace: Workspace
    rules: dict[str, pl.Expr]


def prepare(config: JobConfig, reporter: Reporter) -> Prepared:
    """Read the inputs and compile the rules. InputError/ConfigError escape before any write."""
    with reporter.stage("load"):
        workspace = open_workspace(config.job.input, config.job.events_per_range)
        rules = dnc_rules(config, workspace.people)
    ranges = len(workspace.ranges)
    reporter.log(
        f"events: {workspace.events.rows} rows, computed in {ranges} range{'s' if ranges > 1 else ''} of people"
    )
    return Prepared(workspace, rules)


def run_job(
    config: JobConfig, as_of: AsOf, reporter: Reporter, *, lock_timeout: float = 60.0, command: str = "run"
) -> RunSummary:
    """Load, compute, validate and publish one as_of."""
    return run_prepared(config, prepare(config, reporter), as_of, reporter, lock_timeout=lock_timeout, command=command)


class _Failed(Exception):
    """A step of the run failed: its message is for the command line, `recorded` for `runs.error`."""

    def __init__(self, message: str, recorded: str) -> None:
        super().__init__(message)
        self.recorded = recorded


@contextlib.contextmanager
def _step(label: str | None) -> Iterator[None]:
    """Name a step's failure: an internal error says where it happened; a check failure says itself."""
    try:
        yield
    except (InputError, _Failed):
        raise
    except Exception as exc:
        detail = f"{type(exc).__name__}: {exc}"
        if label is None:
            raise _Failed(str(exc), str(exc)) from exc
        raise _Failed(f"{label}: {detail}", detail) from exc


def run_prepared(
    config: JobConfig,
    prepared: Prepared,
    as_of: AsOf,
    reporter: Reporter,
    *,
    lock_timeout: float = 60.0,
    command: str = "run",
) -> RunSummary:
    """Compute, validate and publish one as_of, a range of people at a time, in one transaction.

    A failure rolls everything back, is recorded in `runs` and raised as
    RunFailed (an events file unreadable midway: InputError, exit 2).
    """
    workspace = prepared.workspace
    run_id = str(uuid.uuid4())
    started_at = datetime.now(UTC).replace(tzinfo=None)

    def record(outcome: str, error: str | None) -> RunRecord:
        return RunRecord(
            run_id,
            as_of.day,
            started_at,
            datetime.now(UTC).replace(tzinfo=None),
            outcome,
            error,
            config.digest(),
            __version__,
            command,
            str(config.job.input),
        )

    rows: Counter[str] = Counter()
    # the collects this module does not call itself too: pandera's checks, the models' own
    with pl.Config(engine_affinity=ENGINE), open_database(config.job.db, lock_timeout) as con:
        publication = Publication(con, as_of.day, keep_as_of=config.retention.keep_as_of)
        writer = _Writer(publication, rows, reporter)
        try:
            with _step(None):
                previous = previous_statuses(con, as_of.day)
            tallies, event_rejects, events_read = None, [workspace.rejected_rows], 0
            with contextlib.closing(_read_ahead(workspace)) as shares:
                for _ in workspace.ranges:
                    with reporter.stage("load"):
                        inputs, events = next(shares)
                    event_rejects.append(events.rejected)
                    events_read += events.rows_read
                    with reporter.stage("compute"), _step("internal error while computing"):
                        lazy = range_tables(inputs, config, as_of, prepared.rules)
                        computed = dict(zip(lazy, pl.collect_all(list(lazy.values()), engine=ENGINE), strict=True))
                        range_tallies = computed.pop("study_tallies")
                        tallies = (
                            range_tallies
                            if tallies is None
                            else participants.summed_tallies([tallies.lazy(), range_tallies.lazy()]).collect()
                        )
                        tables = {name: published_form(frame, as_of.day) for name, frame in computed.items()}
                        tables["status_changes"] = status_changes(tables["contact_status"], previous, as_of.day)
                    del inputs, events, lazy, computed
                    writer.submit(tables)
                    del tables
            with reporter.stage("compute"), _step("internal error while computing"):
                rejected_rows = pl.concat(event_rejects, how="vertical")
                progress = participants.study_progress(workspace.studies.lazy(), tallies.lazy(), as_of.instant)
                tables = {
                    "study_progress": published_form(progress.collect(), as_of.day),
                    "rejected_rows": published_form(rejected_rows, as_of.day),
                    "run_inputs": workspace.run_inputs(events_read, rejected_rows.height - workspace.rejected_rows.height)
                    .select(pl.lit(run_id).alias("run_id"), pl.all()),
                }
            writer.submit(tables)
            writer.wait()
            with reporter.stage("publish"), _step("publishing failed, nothing was written"):
                publication.commit(record("success", None))
        except BaseException as exc:
            writer.close()
            publication.rollback()
            if isinstance(exc, (InputError, _Failed)):
                record_run(con, record("failed", exc.recorded if isinstance(exc, _Failed) else str(exc)))
            elif isinstance(exc, KeyboardInterrupt):  # Ctrl-C: a failed run too (§5), nothing else written
                record_run(con, record("failed", "interrupted"))
            if isinstance(exc, _Failed):
                raise RunFailed(str(exc)) from exc
            raise
        writer.close()
        if config.job.parquet is not None:
            with reporter.stage("parquet"):
                try:
                    export_parquet(con, sorted({*rows, "runs"}), config.job.parquet)
                except ParquetCopyError as exc:
                    raise RunFailed(
                        f"as_of {as_of.day} is published in the database (run {run_id}), "
                        f"but its Parquet copy in {config.job.parquet} failed: {exc}"
                    ) from exc
    reporter.log(
        "read "
        + ", ".join(
            f"{name} {read} ({rejected} rejected)"
            for name, read, rejected in tables["run_inputs"].select("source_table", "rows_read", "rows_rejected").iter_rows()  # noqa: rows-ok (one row per input table)
        )
    )
    return RunSummary(run_id, as_of, dict(rows), tables["run_inputs"].drop("run_id"))


def _read_ahead(workspace: Workspace) -> Iterator[tuple[ModelInputs, EventsShare]]:
    """Each range's share in turn, the next one read on a thread of its own while this one is
    computed: reading is Polars work that lets go of the GIL, so load and compute stop taking turns
    on the cores. One range is read ahead, no more (memory)."""
    ranges = workspace.ranges
    with ThreadPoolExecutor(max_workers=1, thread_name_prefix="statusbatch-reader") as reader:
        ahead = reader.submit(workspace.share, ranges[0])
        for following in ranges[1:]:
            share = ahead.result()
            ahead = reader.submit(workspace.share, following)
            yield share
            del share  # not held while the next one is awaited
        yield ahead.result()


class _Writer:
    """Validates and writes one range's tables on a thread of its own while the next range is
    computed (Polars and DuckDB both let go of the GIL); one range at a time is pending."""

    def __init__(self, publication: Publication, rows: Counter[str], reporter: Reporter) -> None:
        self._publication = publication
        self._rows = rows
        self._reporter = reporter
        self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="statusbatch-writer")
        self._pending: Future[None] | None = None

    def submit(self, tables: dict[str, pl.DataFrame]) -> None:
        self.wait()
        self._pending = self._pool.submit(self._write, tables)

    def wait(self) -> None:
        """Until the pending range is written; its failure is raised here."""
        pending, self._pending = self._pending, None
        if pending is not None:
            pending.result()

    def close(self) -> None:
        """Let the pending write finish (its outcome no longer matters) before the transaction ends."""
        with contextlib.suppress(Exception):
            self.wait()
        self._pool.shutdown()

    def _write(self, tables: dict[str, pl.DataFrame]) -> None:
        with self._reporter.stage("validate", spinner=False), _step(None):
            validate_tables(tables)
        with self._reporter.stage("publish", spinner=False), _step("publishing failed, nothing was written"):
            self._publication.append(tables)
        self._rows.update({name: frame.height for name, frame in tables.items()})
