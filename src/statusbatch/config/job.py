"""Job files (SPEC §2): strict TOML settings for one scheduled run.

Every key is optional and has the SPEC default. Anything the job file says
that statusbatch would not use (an unknown key, a value of the wrong type, a
negative number) is refused with a one-line `ConfigError` naming the file and
the key, so that a typo never silently falls back to a default.
"""

from __future__ import annotations

import difflib
import hashlib
import json
import tomllib
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any, Literal, NoReturn

from statusbatch.config.conditions import ConditionError, ConfigError, parse_condition

__all__ = [
    "ConfigError",
    "JobSection",
    "CooldownLimit",
    "CooldownSection",
    "BlocklistSection",
    "DoNotContactRule",
    "SequencesSection",
    "DormancySection",
    "RetentionSection",
    "JobConfig",
    "load_job",
    "MAX_DAYS",
]

MAX_DAYS = 100_000
"""Upper bound of every `*_days` setting (about 270 years): larger values are typos and overflow date arithmetic."""

DEFAULT_INPUT = "../sample_data"
DEFAULT_DB = "../out/statusbatch.duckdb"
DEFAULT_EVENTS_PER_RANGE = 2_500_000
"""About 0.5 GiB of working memory per range of people (docs/performance.md)."""


@dataclass(frozen=True)
class JobSection:
    """Absolute paths: the job file's relative paths are resolved against its directory."""

    input: Path
    db: Path
    parquet: Path | None = None
    events_per_range: int = DEFAULT_EVENTS_PER_RANGE
    """The run reads and computes the people a range at a time, each with about this many events
    (0: everyone at once). It bounds memory and never changes a result."""


@dataclass(frozen=True)
class CooldownLimit:
    trigger: Literal["invite", "completion"]
    count: int
    window_days: int


@dataclass(frozen=True)
class CooldownSection:
    after_invite_days: int = 30
    after_completion_days: int = 90
    limits: tuple[CooldownLimit, ...] = ()


@dataclass(frozen=True)
class BlocklistSection:
    no_show_threshold: int = 2


@dataclass(frozen=True)
class DoNotContactRule:
    name: str
    when: str


@dataclass(frozen=True)
class SequencesSection:
    ooo_resume_days: int = 0


@dataclass(frozen=True)
class DormancySection:
    dormant_after_days: int = 365
    delete_after_archived_days: int = 90


@dataclass(frozen=True)
class RetentionSection:
    keep_as_of: int = 7


@dataclass(frozen=True)
class JobConfig:
    path: Path
    """The job file, absolute."""
    job: JobSection
    cooldown: CooldownSection = field(default_factory=CooldownSection)
    blocklist: BlocklistSection = field(default_factory=BlocklistSection)
    do_not_contact: tuple[DoNotContactRule, ...] = ()
    sequences: SequencesSection = field(default_factory=SequencesSection)
    dormancy: DormancySection = field(default_factory=DormancySection)
    retention: RetentionSection = field(default_factory=RetentionSection)

    def settings(self) -> dict[str, Any]:
        """The rules as plain data, every default filled in: what `digest` hashes.

        Locations (the job file and `[job]`) are left out: moving a job file or
        overriding `--db` does not change what the run computes.
        """
        return {
            "cooldown": asdict(self.cooldown),
            "blocklist": asdict(self.blocklist),
            "do_not_contact": [asdict(rule) for rule in self.do_not_contact],
            "sequences": asdict(self.sequences),
            "dormancy": asdict(self.dormancy),
            "retention": asdict(self.retention),
        }

    def digest(self) -> str:
        """SHA-256 of the canonical JSON of `settings()`, recorded in `runs.config_digest`."""
        canonical = json.dumps(self.settings(), sort_keys=True, separators=(",", ":"), ensure_ascii=True)
        return hashlib.sha256(canonical.encode("ascii")).hexdigest()

    def with_overrides(
        self, *, input: Path | None = None, db: Path | None = None, parquet: Path | None = None
    ) -> JobConfig:
        """The command line's `--input/--db/--parquet` (relative to the current directory, SPEC §7.3)."""
        changes = {
            name: Path(value).expanduser().resolve()
            for name, value in (("input", input), ("db", db), ("parquet", parquet))
            if value is not None
        }
        return replace(self, job=replace(self.job, **changes)) if changes else self


def load_job(path: Path) -> JobConfig:
    """Read and check a job file; raises `ConfigError` (one line, naming the file and the key)."""
    path = Path(path)
    reader = _Reader(str(path))
    data = reader.read(path)
    reader.refuse_unknown(data, None, _SECTIONS)
    job = reader.table(data, "job")
    cooldown = reader.table(data, "cooldown")
    blocklist = reader.table(data, "blocklist")
    sequences = reader.table(data, "sequences")
    dormancy = reader.table(data, "dormancy")
    retention = reader.table(data, "retention")
    base = path.expanduser().resolve().parent

    return JobConfig(
        path=path.expanduser().resolve(),
        job=JobSection(
            input=reader.path(job, "[job]", "input", base, DEFAULT_INPUT),
            db=reader.path(job, "[job]", "db", base, DEFAULT_DB),
            parquet=reader.path(job, "[job]", "parquet", base, "") if "parquet" in job else None,
            events_per_range=reader.whole(job, "[job]", "events_per_range", DEFAULT_EVENTS_PER_RANGE),
        ),
        cooldown=CooldownSection(
            after_invite_days=reader.days(cooldown, "[cooldown]", "after_invite_days", 30),
            after_completion_days=reader.days(cooldown, "[cooldown]", "after_completion_days", 90),
            limits=tuple(_limit(reader, where, item) for where, item in reader.array(cooldown, "cooldown.limits")),
        ),
        blocklist=BlocklistSection(
            no_show_threshold=reader.whole(blocklist, "[blocklist]", "no_show_threshold", 2),
        ),
        do_not_contact=_rules(reader, data),
        sequences=SequencesSection(
            ooo_resume_days=reader.days(sequences, "[sequences]", "ooo_resume_days", 0),
        ),
        dormancy=DormancySection(
            dormant_after_days=reader.days(dormancy, "[dormancy]", "dormant_after_days", 365),
            delete_after_archived_days=reader.days(dormancy, "[dormancy]", "delete_after_archived_days", 90),
        ),
        retention=RetentionSection(
            keep_as_of=reader.whole(retention, "[retention]", "keep_as_of", 7),
        ),
    )


_KEYS: dict[str, tuple[str, ...]] = {
    "job": ("input", "db", "parquet", "events_per_range"),
    "cooldown": ("after_invite_days", "after_completion_days", "limits"),
    "blocklist": ("no_show_threshold",),
    "do_not_contact": ("name", "when"),
    "sequences": ("ooo_resume_days",),
    "dormancy": ("dormant_after_days", "delete_after_archived_days"),
    "retention": ("keep_as_of",),
    "cooldown.limits": ("trigger", "count", "window_days"),
}
_SECTIONS = ("job", "cooldown", "blocklist", "do_not_contact", "sequences", "dormancy", "retention")
_TRIGGERS = ("invite", "completion")


def _limit(reader: _Reader, where: str, item: dict[str, Any]) -> CooldownLimit:
    reader.require(item, where, _KEYS["cooldown.limits"])
    trigger = item["trigger"]
    if trigger not in _TRIGGERS:
        reader.fail(f"{where} trigger", f'expected "invite" or "completion", got {_show(trigger)}')
    return CooldownLimit(
        trigger=trigger,
        count=reader.whole(item, where, "count", 0, minimum=1),
        window_days=reader.days(item, where, "window_days", 0, minimum=1),
    )


def _rules(reader: _Reader, data: dict[str, Any]) -> tuple[DoNotContactRule, ...]:
    rules: list[DoNotContactRule] = []
    first_use: dict[str, str] = {}
    for where, item in reader.array(data, "do_not_contact"):
        reader.require(item, where, _KEYS["do_not_contact"])
        name = reader.text(item, where, "name")
        when = reader.text(item, where, "when")
        if name in first_use:
            reader.fail(f"{where} name", f"duplicate rule name '{name}' (already used by {first_use[name]})")
        first_use[name] = where.rsplit(" ", 1)[-1]
        try:
            parse_condition(when, name)
        except ConditionError as error:
            raise error.in_file(reader.label) from None
        rules.append(DoNotContactRule(name=name, when=when))
    return tuple(rules)


class _Reader:
    """Typed access to the parsed TOML, turning every problem into a ConfigError for one file."""

    def __init__(self, label: str) -> None:
        self.label = label

    def fail(self, where: str, problem: str) -> NoReturn:
        raise ConfigError(f"{self.label}: {where}: {problem}")

    def read(self, path: Path) -> dict[str, Any]:
        try:
            text = path.read_bytes().decode("utf-8")
        except FileNotFoundError:
            raise ConfigError(f"{self.label}: job file not found") from None
        except OSError as error:
            raise ConfigError(f"{self.label}: cannot read the job file: {error.strerror or error}") from None
        except UnicodeDecodeError as error:
            raise ConfigError(f"{self.label}: not UTF-8 text (byte {error.start})") from None
        try:
            return tomllib.loads(text)
        except tomllib.TOMLDecodeError as error:
            raise ConfigError(f"{self.label}: invalid TOML: {' '.join(str(error).split())}") from None

    def refuse_unknown(self, data: dict[str, Any], where: str | None, known: tuple[str, ...]) -> None:
        for key in data:
            if key in known:
                continue
            close = difflib.get_close_matches(key, known, n=1)
            if where is None and isinstance(data[key], dict):
                hint = f" (did you mean [{close[0]}]?)" if close else ""
                raise ConfigError(f"{self.label}: unknown section [{key}]{hint}")
            hint = f" (did you mean '{close[0]}'?)" if close else ""
            if where is None:
                raise ConfigError(f"{self.label}: unknown key '{key}'{hint}")
            self.fail(where, f"unknown key '{key}'{hint}")

    def table(self, data: dict[str, Any], section: str) -> dict[str, Any]:
        value = data.get(section, {})
        if not isinstance(value, dict):
            raise ConfigError(f"{self.label}: [{section}]: expected a table, got {_show(value)}")
        self.refuse_unknown(value, f"[{section}]", _KEYS[section])
        return value

    def array(self, data: dict[str, Any], name: str) -> list[tuple[str, dict[str, Any]]]:
        """The tables of an array of tables `[[name]]`, each with its place (`[[name]] #2`) for messages."""
        key = name.rsplit(".", 1)[-1]
        value = data.get(key, [])
        if not isinstance(value, list) or not all(isinstance(item, dict) for item in value):
            where = f"[{name.rsplit('.', 1)[0]}] {key}" if "." in name else key
            raise ConfigError(f"{self.label}: {where}: expected an array of tables [[{name}]], got {_show(value)}")
        places = [(f"[[{name}]] #{number}", item) for number, item in enumerate(value, start=1)]
        for where, item in places:
            self.refuse_unknown(item, where, _KEYS[name])
        return places

    def require(self, item: dict[str, Any], where: str, keys: tuple[str, ...]) -> None:
        for key in keys:
            if key not in item:
                self.fail(where, f"missing required key '{key}'")

    def whole(self, data: dict[str, Any], where: str, key: str, default: int, *, minimum: int = 0) -> int:
        value = data.get(key, default)
        if type(value) is not int or value < minimum:
            self.fail(f"{where} {key}", f"expected a whole number >= {minimum}, got {_show(value)}")
        return value

    def days(self, data: dict[str, Any], where: str, key: str, default: int, *, minimum: int = 0) -> int:
        value = self.whole(data, where, key, default, minimum=minimum)
        if value > MAX_DAYS:
            self.fail(f"{where} {key}", f"expected at most {MAX_DAYS} days, got {value}")
        return value

    def text(self, data: dict[str, Any], where: str, key: str) -> str:
        value = data[key]
        if not isinstance(value, str) or not value.strip():
            self.fail(f"{where} {key}", f"expected a non-empty string, got {_show(value)}")
        return value

    def path(self, data: dict[str, Any], where: str, key: str, base: Path, default: str) -> Path:
        value = data.get(key, default)
        if not isinstance(value, str) or not value.strip():
            self.fail(f"{where} {key}", f"expected a path (a non-empty string), got {_show(value)}")
        return (base / Path(value).expanduser()).resolve()


def _show(value: object) -> str:
    """A value as the job file spells it, with its TOML type when that is the problem."""
    if isinstance(value, bool):
        return f"{str(value).lower()} (a boolean)"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        return f"{value!r} (a float)"
    if isinstance(value, str):
        return f"{json.dumps(value, ensure_ascii=False)} (a string)"
    if isinstance(value, dict):
        return "a table"
    if isinstance(value, list):
        return "an array"
    return f"{value} (a date or time)"
