"""How much of a run do its store and its validation cost? The run of `make bench`, with either left out.

    .venv/bin/python bench/without.py [--scale M] [--repeat 3]

Runs the bench job of a cached scale (run `make bench` first) as a child
process four ways, alternated round by round: as it is, without inserting
the result tables into DuckDB (the run still opens the database and commits
its `runs` row), without pandera's validation, and without either. Prints
wall time and the child's CPU time (user + system) of each. A diagnostic,
not a mode of the product: a real run always validates and stores.
"""

from __future__ import annotations

import argparse
import os
import resource
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
WAYS = ("as it is", "without the store", "without validation", "without either")

# the child: `statusbatch` with the chosen steps replaced by no-ops
_CHILD = """
import os, sys
os.environ.setdefault("_RJEM_MALLOC_CONF", "dirty_decay_ms:10000,muzzy_decay_ms:0")
skip = sys.argv.pop(1)
import statusbatch.pipeline as pipeline
import statusbatch.publish.store as store
if "store" in skip:
    store.Publication.append = lambda self, tables: None
if "validation" in skip:
    pipeline.validate_tables = lambda tables: None
from statusbatch.cli import main
main()
"""


def run_once(way: str, scale_dir: Path) -> tuple[float, float]:
    skip = {"as it is": "-", "without the store": "store", "without validation": "validation"}.get(
        way, "store+validation"
    )
    db = scale_dir / "without.duckdb"
    db.unlink(missing_ok=True)
    command = [
        sys.executable, "-c", _CHILD, skip, "run", str(scale_dir / "job.toml"), "--as-of", "2026-11-20",
        "--input", str(scale_dir / "input"), "--db", str(db),
    ]  # fmt: skip
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    start = time.perf_counter()
    subprocess.run(command, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, cwd=ROOT)
    wall = time.perf_counter() - start
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    db.unlink(missing_ok=True)
    return wall, (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--scale", default="M")
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()
    scale_dir = ROOT / "bench" / "data" / args.scale
    if not (scale_dir / "job.toml").exists():
        sys.exit(f"no cached bench data in {scale_dir}: run `make bench` first")
    results: dict[str, list[tuple[float, float]]] = {way: [] for way in WAYS}
    for _ in range(args.repeat):
        for way in WAYS:
            results[way].append(run_once(way, scale_dir))
    for way, runs in results.items():
        walls = ", ".join(f"{w:.1f}" for w, _ in runs)
        cpus = ", ".join(f"{c:.1f}" for _, c in runs)
        print(f"{args.scale} {way:20s} wall {walls} s   CPU {cpus} s")


if __name__ == "__main__":
    os.environ.pop("STATUSBATCH_DEBUG", None)
    main()
