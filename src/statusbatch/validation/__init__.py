"""Validation: every output table is checked against its schema before anything is written."""

from __future__ import annotations

import pandera.errors
import polars as pl

from statusbatch.validation.schemas import OUTPUT_SCHEMAS, SLICED_TABLES

__all__ = ["OutputValidationError", "validate_tables", "OUTPUT_SCHEMAS", "SLICED_TABLES"]


class OutputValidationError(Exception):
    """An output table broke its schema: the run fails and nothing is written."""


def validate_tables(tables: dict[str, pl.DataFrame]) -> None:
    """Validate every table that has a schema; report every failure of every table at once."""
    problems: list[str] = []
    for name, frame in tables.items():
        schema = OUTPUT_SCHEMAS.get(name)
        if schema is None:
            continue
        try:
            schema.validate(frame, lazy=True)
        except pandera.errors.SchemaErrors as exc:
            cases = exc.failure_cases
            for check, column, example in (
                cases.group_by("check", "column", maintain_order=True)
                .agg(pl.col("failure_case").first())
                .head(5)
                .iter_rows()  # noqa: rows-ok (at most 5 summary rows)
            ):
                where = f".{column}" if column else ""
                problems.append(f"{name}{where}: failed {check} (e.g. {example})")
        except pandera.errors.SchemaError as exc:
            problems.append(f"{name}: {exc}")
    if problems:
        raise OutputValidationError("output validation failed: " + "; ".join(problems))
