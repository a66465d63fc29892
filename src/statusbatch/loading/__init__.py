"""Loading: input files → accepted frames (contract dtypes) + rejected rows (SPEC §1, §5)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import polars as pl

from statusbatch import codes
from statusbatch.loading.contract import INPUT_TABLES, TIMESTAMP, InputTable, input_table
from statusbatch.loading.errors import InputError
from statusbatch.loading.quarantine import REJECTED_ROWS_SCHEMA, Part, Quarantined, quarantine, typed
from statusbatch.loading.readers import find_input_file, read_table_file
from statusbatch.loading.tables import event_code_checks, participant_reference_check, reference_check

__all__ = ["Inputs", "InputError", "load_inputs", "TIMESTAMP", "INPUT_TABLES", "RUN_INPUTS_SCHEMA"]

RUN_INPUTS_SCHEMA: dict[str, pl.DataType] = {
    "source_table": pl.String,
    "rows_read": pl.Int64,
    "rows_accepted": pl.Int64,
    "rows_rejected": pl.Int64,
}


@dataclass(frozen=True)
class Inputs:
    """Accepted rows of every input table, plus the bookkeeping of what was rejected."""

    people: pl.DataFrame
    studies: pl.DataFrame
    participants: pl.DataFrame
    sequences: pl.DataFrame
    event_logs: dict[str, pl.DataFrame]
    """The accepted events, one log per reader (`codes.EVENT_LOGS`): never copied whole."""
    rejected_rows: pl.DataFrame
    run_inputs: pl.DataFrame
    files: dict[str, Path]

    @property
    def events(self) -> pl.DataFrame:
        """Every accepted event once, in one frame (for tools and tests; the run reads `event_logs`)."""
        seen: set[str] = set()
        shares = []
        for name, log in codes.EVENT_LOGS.items():
            shares.append(self.event_logs[name].filter(~pl.col("event_type").is_in(sorted(seen))))
            seen.update(log.event_types)
        return pl.concat(shares, how="diagonal").select(input_table("events").schema.keys())


def _property_columns(raw: pl.DataFrame, table: InputTable) -> dict[str, pl.Expr]:
    """People's extra columns, typed by inference over their values (SPEC §7.7)."""
    known = {c.name for c in table.columns}
    return {name: _inferred(name, raw.get_column(name)) for name in raw.columns if name not in known}


def _inferred(name: str, values: pl.Series) -> pl.Expr:
    column = pl.col(name)
    if values.dtype != pl.String:
        return column
    present = values.drop_nulls().str.strip_chars()
    if present.len() == 0:
        return pl.lit(None, dtype=pl.Null)
    lowered = present.str.to_lowercase()
    if lowered.is_in(["true", "false"]).all():
        return column.str.strip_chars().str.to_lowercase() == "true"
    as_int = present.str.to_integer(strict=False)
    if as_int.null_count() == 0:
        return column.str.strip_chars().str.to_integer()
    as_float = present.cast(pl.Float64, strict=False)
    if as_float.null_count() == 0:
        return column.str.strip_chars().cast(pl.Float64)
    return column


def _empty(table: InputTable) -> pl.DataFrame:
    return pl.DataFrame(schema=table.schema)


def load_inputs(input_dir: Path) -> Inputs:
    """Read and check every input table; a fatal problem raises InputError before any work."""
    files = {t.name: find_input_file(input_dir, t) for t in INPUT_TABLES}
    raws = {name: read_table_file(path, input_table(name)) for name, path in files.items() if path is not None}

    results: dict[str, Quarantined] = {}
    people_table = input_table("people")
    results["people"] = quarantine(
        raws["people"], people_table, extra_columns=_property_columns(raws["people"], people_table)
    )
    results["studies"] = quarantine(raws["studies"], input_table("studies"))
    person_ids = results["people"].accepted.get_column("person_id")
    study_ids = results["studies"].accepted.get_column("study_id")
    results["participants"] = quarantine(
        raws["participants"],
        input_table("participants"),
        reference_checks=[
            reference_check("study_id", study_ids, "study"),
            reference_check("person_id", person_ids, "person"),
        ],
    )
    if "sequences" in raws:
        results["sequences"] = quarantine(raws["sequences"], input_table("sequences"))
    results["events"] = quarantine(
        raws.pop("events"),
        input_table("events"),
        extra_code_checks=event_code_checks(),
        reference_checks=[
            reference_check("person_id", person_ids, "person"),
            reference_check("study_id", study_ids, "study"),
            participant_reference_check(results["participants"].accepted),
        ],
        exact_duplicates_allowed=True,
        split={
            name: Part(typed("event_type").is_in(log.event_types), log.columns) for name, log in codes.EVENT_LOGS.items()
        },
    )
    sequences = results["sequences"].accepted if "sequences" in results else _empty(input_table("sequences"))
    sequences = sequences.with_columns(
        pl.col("team_edition").fill_null(False),
        pl.col("reply_handling").fill_null("finish"),
    )
    rejected = pl.concat(
        [pl.DataFrame(schema=REJECTED_ROWS_SCHEMA)] + [q.rejected for q in results.values()], how="vertical"
    )
    run_inputs = pl.DataFrame(
        [
            {
                "source_table": name,
                "rows_read": q.rows_read,
                "rows_accepted": q.rows_accepted,
                "rows_rejected": q.rejected.height,
            }
            for name, q in results.items()
        ],
        schema=RUN_INPUTS_SCHEMA,
    )
    return Inputs(
        people=results["people"].accepted,
        studies=results["studies"].accepted,
        participants=results["participants"].accepted,
        sequences=sequences,
        event_logs=results["events"].parts,
        rejected_rows=rejected,
        run_inputs=run_inputs,
        files={k: v for k, v in files.items() if v is not None},
    )
