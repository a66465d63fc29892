"""Benchmark harness (`make bench`): the full nightly run on synthetic data at scale.

For each scale it (1) generates the synthetic exports as Parquet, cached under
bench/data/<scale>/ and keyed by generator version, seed and size, (2) measures the floor, a
DuckDB scan that hashes every column of every events row, (3) runs `statusbatch run` as a child
process and measures its wall time, its peak RSS and the per-stage times it logs on stderr
(`stage <name>: <seconds>s`), and (4) prints a table and one summary line, and writes
bench/results/<scale>.json.

    .venv/bin/python bench/bench.py --scale S --scale M
    .venv/bin/python bench/bench.py --scale L
"""

from __future__ import annotations

import json
import os
import platform
import re
import shutil
import signal
import subprocess
import sys
import threading
import time
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import IO

import click
import duckdb
import polars as pl
from rich.console import Console
from rich.table import Table

from statusbatch import __version__ as statusbatch_version
from statusbatch.commands.generate import progress_reporter
from statusbatch.synthetic import GENERATOR_VERSION, TABLES, SyntheticConfig, generate

ROOT = Path(__file__).resolve().parent.parent
DATA = ROOT / "bench" / "data"
RESULTS = ROOT / "bench" / "results"
SCALES: dict[str, int] = {"S": 10_000, "M": 1_000_000, "L": 10_000_000}
AS_OF = "2026-11-20"
STAGE_LINE = re.compile(r"\bstage\s+(?P<name>[^:\n]+?)\s*:\s*(?P<seconds>\d+(?:\.\d*)?(?:[eE][-+]?\d+)?)\s*s\b")
"""A per-stage timing in the run's log, e.g. `stage load: 1.234s` (any prefix before it)."""

JOB_TOML = """\
# Written by bench/bench.py: the governance rules the benchmark runs with (every rule enabled).
[job]
input = "input"
db = "out.duckdb"

[cooldown]
after_invite_days = 30
after_completion_days = 90

[[cooldown.limits]]
trigger = "invite"
count = 3
window_days = 90

[blocklist]
no_show_threshold = 2

[[do_not_contact]]
name = "minors"
when = "age < 18"

[[do_not_contact]]
name = "dach_minors"
when = "country in ('DE','AT') and age < 18"

[sequences]
ooo_resume_days = 14

[dormancy]
dormant_after_days = 365
delete_after_archived_days = 90
"""

SCAN_METHOD = "duckdb: SELECT count(*), sum(hash(<every column>)) FROM read_parquet('events.parquet')"

console = Console()


@dataclass
class RunResult:
    exit_code: int
    wall_seconds: float
    peak_rss_bytes: int
    stages: dict[str, float] = field(default_factory=dict)
    stderr_tail: list[str] = field(default_factory=list)
    log: str = ""

    @property
    def ok(self) -> bool:
        return self.exit_code == 0


# --- data -------------------------------------------------------------------------------------


def ensure_dataset(scale: str, people: int, seed: int, messy_rate: float, regenerate: bool) -> dict[str, object]:
    """The cached exports of a scale, regenerated when the generator, seed or size changed."""
    scale_dir = DATA / scale
    input_dir = scale_dir / "input"
    meta_path = scale_dir / "dataset.json"
    key = {"generator_version": GENERATOR_VERSION, "seed": seed, "people": people, "messy_rate": messy_rate}
    if not regenerate and meta_path.exists():
        meta = json.loads(meta_path.read_text())
        if meta.get("key") == key and all((input_dir / f"{t}.parquet").exists() for t in TABLES):
            console.print(f"[dim]bench {scale}: cached exports in {input_dir.relative_to(ROOT)}[/dim]")
            return meta | {"generated_now": False}
    meta_path.unlink(missing_ok=True)  # a half-written dataset is never mistaken for a cached one
    console.print(f"bench {scale}: generating {people:,} people (seed {seed}) into {input_dir.relative_to(ROOT)}")
    cfg = SyntheticConfig(people=people, seed=seed, messy_rate=messy_rate)
    with progress_reporter(people, label=f"bench {scale}: generate", console=console) as progress:
        result = generate(cfg, input_dir, "parquet", overwrite=True, progress=progress)
    meta = {
        "key": key,
        "rows": result.rows,
        "messy": result.messy,
        "generate_seconds": round(result.seconds, 3),
        "bytes": {t: p.stat().st_size for t, p in result.files.items()},
    }
    meta_path.write_text(json.dumps(meta, indent=2) + "\n")
    console.print(f"bench {scale}: generated {result.rows['events']:,} events in {result.seconds:.1f}s")
    return meta | {"generated_now": True}


# --- the floor ----------------------------------------------------------------------------------


def scan_floor(events: Path) -> float:
    """Seconds to read and decode every column of every events row: DuckDB hashes them all.

    A `count(*)` alone would be answered from Parquet metadata; a full Polars `collect()` would
    need the whole table in memory (tens of GiB at L). Hashing streams with bounded memory.
    """
    con = duckdb.connect()
    try:
        con.execute("SET enable_progress_bar = false")
        columns = [
            r[0]
            for r in con.execute(
                "SELECT name FROM parquet_schema(?) WHERE num_children IS NULL", [str(events)]
            ).fetchall()
        ]
        quoted = ", ".join('"' + c.replace('"', '""') + '"' for c in columns)
        t0 = time.perf_counter()
        con.execute(f"SELECT count(*), sum(hash({quoted})) FROM read_parquet(?)", [str(events)]).fetchall()
        return time.perf_counter() - t0
    finally:
        con.close()


# --- the run ----------------------------------------------------------------------------------


def statusbatch_command(explicit: str | None) -> list[str]:
    if explicit:
        return [explicit]
    venv = ROOT / ".venv" / "bin" / "statusbatch"
    if venv.exists():
        return [str(venv)]
    found = shutil.which("statusbatch")
    return [found] if found else [sys.executable, "-c", "from statusbatch.cli import main; main()"]


def _drain(stream: IO[bytes], lines: list[str], log: IO[str]) -> None:
    for raw in stream:
        line = raw.decode(errors="replace").rstrip("\n")
        lines.append(line)
        log.write(line + "\n")
        log.flush()


def parse_stages(lines: list[str]) -> dict[str, float]:
    """Per-stage seconds in order of first appearance; a stage logged twice is summed."""
    stages: dict[str, float] = {}
    for line in lines:
        for m in STAGE_LINE.finditer(line):
            name = m["name"].strip()
            stages[name] = stages.get(name, 0.0) + float(m["seconds"])
    return stages


def _rss_bytes(pid: int) -> int:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    return 0


def _watchdog(child: subprocess.Popen[bytes], limit: int, tripped: list[int]) -> None:
    """Kill the child once its RSS passes `limit`: on a shared machine the kernel's OOM killer
    might otherwise pick someone else's process."""
    while child.returncode is None:
        rss = _rss_bytes(child.pid)
        if rss > limit:
            tripped.append(rss)
            os.kill(child.pid, signal.SIGKILL)  # not send_signal: its poll() could reap the child
            return
        time.sleep(0.2)


def default_rss_limit() -> int:
    """75% of physical memory (0 when unknown: no watchdog)."""
    try:
        return int(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") * 0.75)
    except (ValueError, OSError):
        return 0


def run_job(
    command: list[str], job: Path, input_dir: Path, db: Path, log_path: Path, rss_limit: int = 0
) -> RunResult:
    """Run the nightly job as a child on a fresh database; wall time, peak RSS, stage times.

    Peak RSS comes from wait4() on this very child (its ru_maxrss), so neither the bench process
    nor earlier children inflate it. With `rss_limit` (bytes, Linux) a watchdog kills the child
    when its RSS passes the limit.
    """
    for stale in (db, db.with_name(db.name + ".wal")):
        stale.unlink(missing_ok=True)
    args = [*command, "run", str(job), "--as-of", AS_OF, "--input", str(input_dir), "--db", str(db)]
    lines: list[str] = []
    with log_path.open("w") as log:
        log.write("$ " + " ".join(args) + "\n")
        t0 = time.perf_counter()
        try:
            child = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, cwd=ROOT)
        except OSError as exc:
            return RunResult(127, 0.0, 0, stderr_tail=[f"cannot start {args[0]}: {exc}"], log=str(log_path))
        assert child.stdout is not None
        reader = threading.Thread(target=_drain, args=(child.stdout, lines, log), daemon=True)
        reader.start()
        tripped: list[int] = []
        if rss_limit > 0 and sys.platform.startswith("linux"):
            threading.Thread(target=_watchdog, args=(child, rss_limit, tripped), daemon=True).start()
        _, status, usage = os.wait4(child.pid, 0)
        wall = time.perf_counter() - t0
        child.returncode = os.waitstatus_to_exitcode(status)
        reader.join()
        child.stdout.close()
    rss = usage.ru_maxrss * (1 if sys.platform == "darwin" else 1024)
    if tripped:
        lines.append(f"bench: killed the run, RSS {human_bytes(tripped[0])} passed --max-rss {human_bytes(rss_limit)}")
    return RunResult(child.returncode, wall, rss, parse_stages(lines), lines[-20:], str(log_path))


# --- reporting ---------------------------------------------------------------------------------


def human_count(n: float) -> str:
    for unit, size in (("G", 1e9), ("M", 1e6), ("k", 1e3)):
        if n >= size:
            return f"{n / size:.1f}{unit}"
    return f"{n:.0f}"


def human_seconds(x: float) -> str:
    return f"{x:.1f}s" if x >= 0.1 else f"{x:.3f}s"  # scale S scans in milliseconds


def human_bytes(n: int) -> str:
    return f"{n / 2**30:.1f} GiB" if n >= 2**30 else f"{n / 2**20:.0f} MiB"


def summary_line(scale: str, run: RunResult, scan: float, events: int) -> str:
    if not run.ok:
        last = next((line.strip() for line in reversed(run.stderr_tail) if line.strip()), "no output")
        if run.exit_code < 0:
            how = f"killed by {signal.Signals(-run.exit_code).name}"
            if last.startswith("bench: killed"):
                why = last.removeprefix("bench: ")
            else:
                why = "out of memory?" if run.exit_code == -signal.SIGKILL else "signal"
        else:
            how, why = f"exit {run.exit_code}", last
        return (
            f"bench {scale}: run FAILED ({how}) after {run.wall_seconds:.1f}s "
            f"({human_bytes(run.peak_rss_bytes)} peak): {why} [log: {run.log}]; "
            f"scan {human_seconds(scan)}, {human_count(events)} events"
        )
    return (
        f"bench {scale}: run {human_seconds(run.wall_seconds)} ({human_bytes(run.peak_rss_bytes)} peak), "
        f"scan {human_seconds(scan)}, "
        f"ratio {run.wall_seconds / scan:.1f}x, {human_count(events)} events, "
        f"{human_count(events / run.wall_seconds)} events/s"
    )


def stage_table(scale: str, run: RunResult, scan: float, events: int) -> Table:
    table = Table(title=f"bench {scale}: stages of `statusbatch run`", title_justify="left")
    for col, justify in (("stage", "left"), ("seconds", "right"), ("share", "right"), ("events/s", "right")):
        table.add_column(col, justify=justify)  # type: ignore[arg-type]
    for name, secs in run.stages.items():
        share = secs / run.wall_seconds if run.wall_seconds else 0.0
        rate = human_count(events / secs) if secs > 0 else "–"
        table.add_row(name, f"{secs:.3f}", f"{share:.0%}", rate)
    if not run.stages:
        table.add_row("[dim](no `stage <name>: <seconds>s` lines logged)[/dim]", "", "", "")
    table.add_section()
    run_rate = human_count(events / run.wall_seconds) if run.ok else "–"
    table.add_row("run (wall)", f"{run.wall_seconds:.3f}", "100%", run_rate)
    table.add_row("scan floor", f"{scan:.3f}", "", human_count(events / scan) if scan else "–")
    table.add_row("peak RSS", human_bytes(run.peak_rss_bytes), "", "")
    return table


def bench_scale(scale: str, args: dict[str, object]) -> bool:
    people = SCALES[scale]
    seed, messy_rate = int(args["seed"]), float(args["messy_rate"])  # type: ignore[arg-type]
    meta = ensure_dataset(scale, people, seed, messy_rate, bool(args["regenerate"]))
    scale_dir = DATA / scale
    input_dir = scale_dir / "input"
    job = scale_dir / "job.toml"
    job.write_text(JOB_TOML)
    events_file = input_dir / "events.parquet"
    events = int(meta["rows"]["events"])  # type: ignore[index]

    scan = min(scan_floor(events_file) for _ in range(int(args["repeat"])))  # type: ignore[call-overload]
    command = statusbatch_command(args["statusbatch"])  # type: ignore[arg-type]
    runs = []
    for i in range(int(args["repeat"])):  # type: ignore[call-overload]
        console.print(f"[dim]bench {scale}: statusbatch run ({i + 1}/{args['repeat']}) …[/dim]")
        rss_limit = int(float(args["max_rss_gib"]) * 2**30)  # type: ignore[arg-type]
        runs.append(run_job(command, job, input_dir, scale_dir / "out.duckdb", scale_dir / "run.log", rss_limit))
        if not runs[-1].ok:
            break
    run = runs[-1] if not runs[-1].ok else min(runs, key=lambda r: r.wall_seconds)

    if run.ok or run.stages:  # a failed run still shows the stages it finished
        console.print(stage_table(scale, run, scan, events))
    line = summary_line(scale, run, scan, events)
    console.print(line, style=None if run.ok else "bold red", markup=False, highlight=False, soft_wrap=True)

    RESULTS.mkdir(parents=True, exist_ok=True)
    result = {
        "scale": scale,
        "people": people,
        "seed": seed,
        "generator_version": GENERATOR_VERSION,
        "statusbatch_version": statusbatch_version,
        "as_of": AS_OF,
        "rows": meta["rows"],
        "messy_rows": meta["messy"],
        "input_bytes": meta.get("bytes"),
        "generate_seconds": meta["generate_seconds"],
        "run": asdict(run) | {"ok": run.ok},
        "run_wall_seconds_all": [round(r.wall_seconds, 3) for r in runs],
        "scan": {"method": SCAN_METHOD, "seconds": scan},
        "ratio": run.wall_seconds / scan if run.ok and scan else None,
        "events_per_second": events / run.wall_seconds if run.ok else None,
        "summary": line,
        "host": {
            "python": platform.python_version(),
            "polars": pl.__version__,
            "duckdb": duckdb.__version__,
            "cpus": os.cpu_count(),
            "machine": platform.machine(),
            "system": platform.system(),
            "load_average_1m_after": os.getloadavg()[0],  # a busy shared host explains slow figures
        },
        "finished_at": datetime.now(UTC).isoformat(timespec="seconds"),
    }
    (RESULTS / f"{scale}.json").write_text(json.dumps(result, indent=2) + "\n")
    return run.ok


@click.command()
@click.option(
    "--scale",
    "scales",
    multiple=True,
    help="S (10k people), M (1M) or L (10M); repeat or comma-separate. Default: S and M.",
)
@click.option("--seed", type=int, default=42, show_default=True)
@click.option("--messy-rate", type=float, default=0.001, show_default=True)
@click.option("--regenerate", is_flag=True, help="Regenerate the exports even when cached.")
@click.option(
    "--repeat", type=click.IntRange(min=1), default=1, show_default=True, help="Runs per scale; the fastest counts."
)
@click.option(
    "--max-rss-gib",
    type=click.FloatRange(min=0),
    default=round(default_rss_limit() / 2**30, 1),
    show_default="75% of RAM",
    help="Kill the run when its RSS passes this (0: never), before the OOM killer picks a neighbour.",
)
@click.option("--statusbatch", default=None, help="The statusbatch executable (default: .venv/bin/statusbatch).")
def main(scales: tuple[str, ...], **args: object) -> None:
    """Benchmark the nightly run at scale S / M / L; exit 1 when a run failed."""
    wanted = [s.strip().upper() for part in (scales or ("S", "M")) for s in part.split(",") if s.strip()]
    unknown = [s for s in wanted if s not in SCALES]
    if unknown:
        choices = ", ".join(SCALES)
        raise click.BadParameter(f"unknown scale {', '.join(unknown)} (choose from {choices})", param_hint="--scale")
    ok = [bench_scale(scale, args) for scale in dict.fromkeys(wanted)]
    console.print(f"[dim]results in {RESULTS.relative_to(ROOT)}/[/dim]")
    sys.exit(0 if all(ok) else 1)


if __name__ == "__main__":
    main()
