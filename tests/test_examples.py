"""Every worked example in tests/examples, run through the CLI and compared like shared/tools/run-examples.

Expected CSVs hold key columns plus the columns checked; a list is written
`a|b`, booleans `true`/`false`, an empty cell is null, timestamps as
`YYYY-MM-DDTHH:MM:SS` (UTC). Rows not listed are not checked.
"""

from __future__ import annotations

import csv
import datetime as dt
import shutil
from pathlib import Path

import duckdb
import pytest
from conftest import AS_OF, cli

EXAMPLES = Path(__file__).parent / "examples"

# Tables still being built by other engineers: their examples may fail until then.


def text(v: object) -> str:
    """A value as run-examples writes it."""
    if v is None:
        return ""
    if isinstance(v, bool):
        return str(v).lower()
    if isinstance(v, (list, tuple)):
        return "|".join(sorted(str(x) for x in v))
    if isinstance(v, dt.datetime):
        if v.tzinfo is not None:
            v = v.astimezone(dt.UTC).replace(tzinfo=None)
        return v.isoformat(timespec="seconds")
    return str(v)


def _cases():
    for folder in sorted(p for p in EXAMPLES.iterdir() if p.is_dir()):
        yield pytest.param(folder.name, id=folder.name)


def test_examples_are_all_collected():
    names = {p.name for p in EXAMPLES.iterdir() if p.is_dir()}
    assert {"research_ops", "messaging", "sequences"} <= names
    for name in names:
        assert list((EXAMPLES / name / "expected").glob("*.csv")), name


def compare(con: duckdb.DuckDBPyConnection, expected_csv: Path) -> list[str]:
    table = expected_csv.stem
    with expected_csv.open(newline="") as handle:
        want = list(csv.DictReader(handle))
    assert want, f"{expected_csv} has no rows"
    cur = con.execute(f'select * from "{table}"')
    cols = [c[0] for c in cur.description]
    got = [dict(zip(cols, r, strict=True)) for r in cur.fetchall()]
    first = want[0]
    key = ["event_id"] if "event_id" in first else [c for c in ("sequence_id", "study_id", "person_id") if c in first]
    index = {tuple(text(g.get(k)) for k in key): g for g in got}
    problems = []
    for w in want:
        g = index.get(tuple(w[k] for k in key))
        where = {k: w[k] for k in key}
        if g is None:
            problems.append(f"{table}: missing row {where}")
            continue
        for col, val in w.items():
            if col not in g:
                problems.append(f"{table} {where}: no column {col!r}")
            elif text(g[col]) != val:
                problems.append(f"{table} {where}: {col} = {text(g[col])!r}, expected {val!r}")
    return problems


@pytest.mark.parametrize("name", list(_cases()))
def test_example(name: str, tmp_path: Path):
    work = tmp_path / name
    shutil.copytree(EXAMPLES / name, work)
    db = work / "out.duckdb"
    result = cli("run", str(work / "job.toml"), "--as-of", AS_OF, "--db", str(db), "--quiet")
    assert result.exit_code == 0, result.output
    con = duckdb.connect(str(db), read_only=True)
    try:
        problems = [p for f in sorted((work / "expected").glob("*.csv")) for p in compare(con, f)]
    finally:
        con.close()
    assert not problems, "\n".join(problems)
