"""Loading: input files → accepted frames (contract dtypes) + rejected rows (SPEC §1, §5)."""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from pathlib import Path

import polars as pl

from statusbatch import codes
from statusbatch.loading.contract import INPUT_TABLES, TIMESTAMP, InputTable, input_table
from statusbatch.loading.errors import InputError
from statusbatch.loading.events import EventFile, EventsShare, first_pass
from statusbatch.loading.partitions import PersonRange, person_ranges, range_count
from statusbatch.loading.quarantine import REJECTED_ROWS_SCHEMA, ROW, Part, Quarantined, quarantine, typed
from statusbatch.loading.readers import find_input_file, read_table_file, scan_table_file
from statusbatch.loading.tables import (
    event_code_checks,
    event_code_values,
    participant_reference_check,
    reference_check,
)

__all__ = [
    "EventsShare",
    "Inputs",
    "InputError",
    "ModelInputs",
    "PersonRange",
    "Workspace",
    "load_inputs",
    "open_workspace",
    "TIMESTAMP",
    "INPUT_TABLES",
    "RUN_INPUTS_SCHEMA",
]

RUN_INPUTS_SCHEMA: dict[str, pl.DataType] = {
    "source_table": pl.String,
    "rows_read": pl.Int64,
    "rows_accepted": pl.Int64,
    "rows_rejected": pl.Int64,
}


@dataclass(frozen=True)
class ModelInputs:
    """What the models read: the accepted rows of every input table (of one range of people, or all)."""

    people: pl.DataFrame
    studies: pl.DataFrame
    participants: pl.DataFrame
    sequences: pl.DataFrame
    event_logs: dict[str, pl.DataFrame]
    """The accepted events, one log per reader (`codes.EVENT_LOGS`): never copied whole."""

    @property
    def events(self) -> pl.DataFrame:
        """Every accepted event once, in one frame (for tools and tests; the run reads `event_logs`)."""
        seen: set[str] = set()
        shares = []
        for name, log in codes.EVENT_LOGS.items():
            shares.append(self.event_logs[name].filter(~pl.col("event_type").is_in(sorted(seen))))
            seen.update(log.event_types)
        return pl.concat(shares, how="diagonal").select(input_table("events").schema.keys())


@dataclass(frozen=True)
class Inputs(ModelInputs):
    """Every accepted row, plus the bookkeeping of what was rejected."""

    rejected_rows: pl.DataFrame
    run_inputs: pl.DataFrame
    files: dict[str, Path]


def _property_columns_as_read(raw: pl.DataFrame, table: InputTable) -> dict[str, pl.Expr]:
    """People's extra columns, kept as the file has them until the bad rows are out."""
    known = {c.name for c in table.columns}
    return {name: pl.col(name) for name in raw.columns if name not in known and name != ROW}


def _property_columns(people: pl.DataFrame, table: InputTable) -> dict[str, pl.Expr]:
    """People's extra columns, typed by inference over their values (SPEC §7.7)."""
    known = {c.name for c in table.columns}
    return {name: _inferred(name, people.get_column(name)) for name in people.columns if name not in known}


def _with_typed_properties(people: Quarantined, table: InputTable) -> Quarantined:
    """The accepted people with their property columns typed over the accepted rows' values only:
    a rejected row's text must not turn a numeric column into text, and a rule over it into a
    failed run (§5: a bad row never stops the run)."""
    accepted = people.accepted
    return replace(people, parts={table.name: accepted.with_columns(**_property_columns(accepted, table))})


def _inferred(name: str, values: pl.Series) -> pl.Expr:
    """A property column typed over its values. NaN ("not a number", how pandas writes a missing
    float) is a missing value: as a number it would compare greater than every other, so a rule
    `age > 90` would match every person without an age."""
    column = pl.col(name)
    if values.dtype.is_float():
        return column.fill_nan(None)
    if values.dtype != pl.String:
        return column
    present = values.drop_nulls()
    if present.len() == 0:
        return pl.lit(None, dtype=pl.Null)
    text = pl.first().str.strip_chars()
    if _holds_for_every(present, text.str.to_lowercase().is_in(["true", "false"])):
        return column.str.strip_chars().str.to_lowercase() == "true"
    if _holds_for_every(present, text.str.to_integer(strict=False).is_not_null()):
        return column.str.strip_chars().str.to_integer()
    if _holds_for_every(present, text.cast(pl.Float64, strict=False).is_not_null()):
        return column.str.strip_chars().cast(pl.Float64).fill_nan(None)
    return column


def _holds_for_every(values: pl.Series, test: pl.Expr) -> bool:
    """Whether `test` holds for every value. The first value is tried alone first: text columns
    (names, codes) fail there, without a pass over a million rows."""
    return all(frame.select(test.all()).item() for frame in (values.head(1).to_frame(), values.to_frame()))


def _empty(table: InputTable) -> pl.DataFrame:
    return pl.DataFrame(schema=table.schema)


@dataclass(frozen=True)
class Workspace:
    """Every input table read and checked but the events, which are read per range of people.

    `rejected_rows` and `counts` hold what is settled before any range is read:
    the small tables and the events' repeated keys; `share` reads the rest.
    """

    people: pl.DataFrame
    studies: pl.DataFrame
    participants: pl.DataFrame
    sequences: pl.DataFrame
    ranges: tuple[PersonRange, ...]
    rejected_rows: pl.DataFrame
    counts: dict[str, tuple[int, int]]
    """(rows read, rows rejected) per table; the events' cover their repeated keys only."""
    files: dict[str, Path]
    events: EventFile
    rows_of: dict[PersonRange, tuple[tuple[int, int], tuple[int, int]]]
    """Where each range's people and participants lie (offset, length): both are sorted by person
    when there are several ranges, so a range's rows are a slice, not a filter of everyone's."""
    _kept: dict[PersonRange, tuple[ModelInputs, EventsShare]] = field(default_factory=dict, repr=False, compare=False)

    def share(self, people: PersonRange) -> tuple[ModelInputs, EventsShare]:
        """The model inputs of one range of people, and what happened to that range's events.

        With a single range the share is read once and kept: a backfill computes
        every day from it, as it did before ranges. Several ranges are read anew
        each time, since keeping them all would undo what ranges are for.
        """
        if people in self._kept:
            return self._kept[people]
        share = self._read(people)
        if len(self.ranges) == 1:
            self._kept[people] = share
        return share

    def _read(self, people: PersonRange) -> tuple[ModelInputs, EventsShare]:
        people_rows, participant_rows = self.rows_of[people]
        own_people, own_participants = self.people.slice(*people_rows), self.participants.slice(*participant_rows)
        events = self.events.share(people, own_people, own_participants)
        inputs = ModelInputs(
            people=own_people,
            studies=self.studies,
            participants=own_participants,
            sequences=self.sequences,
            event_logs=events.logs,
        )
        return inputs, events

    def run_inputs(self, events_read: int, events_rejected: int) -> pl.DataFrame:
        """`run_inputs` rows once every range is read: the events' ranges added to their repeated keys."""
        counts = dict(self.counts)
        read, rejected = counts["events"]
        counts["events"] = (read + events_read, rejected + events_rejected)
        return pl.DataFrame(
            [
                {"source_table": name, "rows_read": read, "rows_accepted": read - rejected, "rows_rejected": rejected}
                for name, (read, rejected) in counts.items()
            ],
            schema=RUN_INPUTS_SCHEMA,
        )


def _rejected_keys(raw: pl.DataFrame, checked: Quarantined, accepted: pl.Series) -> pl.Series:
    """The keys (column `accepted.name`), as text, of a table's rejected rows that no accepted row has (a duplicate's
    key is accepted). Looked up from the few rejected rows: a set of every accepted key would take
    seconds to build at 10M people."""
    rows = checked.rejected.get_column("row_number") - 1
    candidates = raw.get_column(accepted.name).gather(rows).cast(pl.String).drop_nulls().unique()
    also_accepted = accepted.filter(accepted.is_in(candidates.implode()))  # a set of the few candidates
    return candidates.filter(~candidates.is_in(also_accepted.implode()))


def open_workspace(input_dir: Path, events_per_range: int = 0) -> Workspace:
    """Read and check every table but the events; plan ranges of about `events_per_range` events (0: one range).

    A fatal problem (missing file or column, unreadable file) raises InputError
    here, before any work; only an events file that fails midway can raise later.
    """
    files = {t.name: find_input_file(input_dir, t) for t in INPUT_TABLES}
    events_scan = scan_table_file(files["events"], input_table("events"), row_index=ROW)
    first = first_pass(files["events"], events_scan, events_per_range)
    raws = {
        name: read_table_file(path, input_table(name)) for name, path in files.items() if path is not None and name != "events"
    }

    results: dict[str, Quarantined] = {}
    people_table = input_table("people")
    results["people"] = _with_typed_properties(
        quarantine(raws["people"], people_table, extra_columns=_property_columns_as_read(raws["people"], people_table)),
        people_table,
    )
    results["studies"] = quarantine(raws["studies"], input_table("studies"))
    person_ids = results["people"].accepted.get_column("person_id")
    study_ids = results["studies"].accepted.get_column("study_id")
    # a reference to a row the file holds but rejected is told from one to nothing
    rejected_people, rejected_studies = (
        _rejected_keys(raws[name], results[name], ids) for name, ids in (("people", person_ids), ("studies", study_ids))
    )
    results["participants"] = quarantine(
        raws["participants"],
        input_table("participants"),
        reference_checks=[
            reference_check("study_id", study_ids, "study", rejected_studies),
            reference_check("person_id", person_ids, "person", rejected_people),
        ],
    )
    if "sequences" in raws:
        results["sequences"] = quarantine(raws["sequences"], input_table("sequences"))
    count = range_count(first.file_rows, events_per_range)
    people, participants = results["people"].accepted, results["participants"].accepted
    if count > 1:
        people, participants = (frame.sort("person_id", maintain_order=True) for frame in (people, participants))
    # the ids sorted once: person_ranges finds them sorted and unique (accepted people are)
    ranges = person_ranges(people.get_column("person_id"), count)
    rows_of = {r: (_rows_in(people, r), _rows_in(participants, r)) for r in ranges}

    def check_events(
        raw: pl.DataFrame, own: tuple[pl.DataFrame, pl.DataFrame] | None, repeated_rows: pl.Series | None
    ) -> Quarantined:
        """Events of one range of people are checked against that range's people and participants."""
        own_people, own_participants = own if own is not None else (people, participants)
        return quarantine(
            raw,
            input_table("events"),
            extra_code_checks=event_code_checks(),
            codes_where=event_code_values(),
            reference_checks=[
                reference_check("person_id", own_people.get_column("person_id"), "person", rejected_people),
                reference_check("study_id", study_ids, "study", rejected_studies),
                participant_reference_check(own_participants),
            ],
            exact_duplicates_allowed=True,
            repeated_rows=repeated_rows,
            split={
                name: Part(typed("event_type").is_in(log.event_types), log.columns)
                for name, log in codes.EVENT_LOGS.items()
            },
        )

    events = EventFile(files["events"], events_scan, first, check_events, ranges, people.get_column("person_id"))
    results["events"] = events.repeated
    sequences = results["sequences"].accepted if "sequences" in results else _empty(input_table("sequences"))
    sequences = sequences.with_columns(
        pl.col("team_edition").fill_null(False),
        pl.col("reply_handling").fill_null("finish"),
    )
    rejected = pl.concat(
        [pl.DataFrame(schema=REJECTED_ROWS_SCHEMA)] + [q.rejected for q in results.values()], how="vertical"
    )
    return Workspace(
        people=people,
        studies=results["studies"].accepted,
        participants=participants,
        sequences=sequences,
        ranges=ranges,
        rejected_rows=rejected,
        counts={name: (q.rows_read, q.rejected.height) for name, q in results.items()},
        files={k: v for k, v in files.items() if v is not None},
        events=events,
        rows_of=rows_of,
    )


def _rows_in(frame: pl.DataFrame, people: PersonRange) -> tuple[int, int]:
    """(offset, length) of the range's rows in a frame sorted by `person_id` (or of all, for one range)."""
    ids = frame.get_column("person_id")
    start = 0 if people.low is None else int(ids.search_sorted(people.low, side="left"))
    end = ids.len() if people.high is None else int(ids.search_sorted(people.high, side="left"))
    return start, end - start


def load_inputs(input_dir: Path) -> Inputs:
    """Every input table read and checked, the events whole (one range of people)."""
    workspace = open_workspace(input_dir)
    (everyone,) = workspace.ranges
    inputs, events = workspace.share(everyone)
    return Inputs(
        people=inputs.people,
        studies=inputs.studies,
        participants=inputs.participants,
        sequences=inputs.sequences,
        event_logs=inputs.event_logs,
        rejected_rows=pl.concat([workspace.rejected_rows, events.rejected], how="vertical"),
        run_inputs=workspace.run_inputs(events.rows_read, events.rejected.height),
        files=workspace.files,
    )
