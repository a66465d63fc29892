"""Synthetic input exports at scale (`statusbatch generate`, `make bench`).

Design, so that the data is reproducible, chunkable and fast:

* Every random draw is a *counter-based* hash (splitmix64) of the seed, a stream
  name and global indices (person index, participation number, event slot …),
  never a stateful RNG. A person's rows therefore depend only on
  (seed, N, person index): generating in chunks of any size gives the same rows,
  and the same seed gives byte-identical files.
* Everything is vectorised with numpy over one chunk of people (no per-row Python);
  ids are built as fixed-width bytes handed to Arrow, other strings are gathered
  from small vocabularies by Polars. Only one chunk is in memory at a time, so
  memory is bounded by `chunk_people`, not by N.
* Rows follow the input contract (SPEC §1) and exercise the rules of §3; a
  configurable small share of rows is deliberately bad (§5), see
  `MESSY_EVENT_KINDS`, `MESSY_PEOPLE_KINDS`, `MESSY_PARTICIPANT_KINDS`.
"""

from __future__ import annotations

import math
import os
import shutil
import time
import zlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from functools import cache
from pathlib import Path
from typing import Literal, Protocol

import numpy as np
import polars as pl
import pyarrow as pa
import pyarrow.parquet as pq

from statusbatch import codes
from statusbatch.loading.contract import INPUT_TABLES, TIMESTAMP

__all__ = [
    "GENERATOR_VERSION",
    "TABLES",
    "WINDOW_START",
    "WINDOW_END",
    "MESSY_EVENT_KINDS",
    "MESSY_PEOPLE_KINDS",
    "MESSY_PARTICIPANT_KINDS",
    "Format",
    "SyntheticConfig",
    "World",
    "ChunkTables",
    "GenerateResult",
    "build_world",
    "studies_frame",
    "sequences_frame",
    "chunk_tables",
    "iter_chunks",
    "generate",
    "ProgressCallback",
    "existing_table_files",
    "contract_columns",
]

GENERATOR_VERSION = "1"
"""Bump whenever the generated data changes, so cached benchmark data is rebuilt."""

Format = Literal["parquet", "csv"]
TABLES: tuple[str, ...] = ("people", "studies", "participants", "sequences", "events")

_DAY = 86_400
_HOUR = 3_600
WINDOW_START = int(datetime(2024, 11, 20, tzinfo=UTC).timestamp())
"""People are created, and facts happen, from here …"""
_AS_OF_END = int(datetime(2026, 11, 21, tzinfo=UTC).timestamp())
"""… the end of the benchmark's as-of day (2026-11-20) …"""
WINDOW_END = _AS_OF_END + 2 * _DAY
"""… up to here: a thin slice of facts after the as-of exercises 'later facts are ignored'."""
_US = 1_000_000

CSV_DATETIME_FORMAT = "%Y-%m-%dT%H:%M:%SZ"
CSV_DATE_FORMAT = "%Y-%m-%d"

# --- event mix -------------------------------------------------------------------------------

_FREE_EVENT_WEIGHTS: dict[str, float] = {
    # sequence activity: the bulk of every export
    "email_sent": 26.0,
    "email_opened": 16.0,
    "link_clicked": 4.0,
    "replied": 2.5,
    "auto_replied": 0.8,
    "out_of_office": 0.8,
    "bounced": 0.5,
    "missing_data": 0.3,
    "sequence_completed": 1.2,
    "call_step_reached": 1.0,
    "call_logged": 0.8,
    "status_set": 1.2,
    "status_removed": 0.4,
    # messaging
    "inbound_message": 18.0,
    "stopped": 0.35,
    "blocked": 0.08,
    "unblocked": 0.04,
    "archived": 0.12,
    "restored": 0.04,
    "deleted": 0.015,
    # manual research-ops actions: rare
    "opted_out": 0.25,
    "opt_out_revoked": 0.06,
    "unsubscribed": 0.6,
    "blocklist_added": 0.08,
    "blocklist_removed": 0.03,
    "cooldown_set": 0.3,
    "cooldown_cleared": 0.08,
    "do_not_contact_set": 0.08,
    "do_not_contact_cleared": 0.03,
}
"""Relative frequency of the events not tied to a participation or a membership start/end.
`invited`, `participant_status`, `sequence_added` and `sequence_removed` are structural."""

_SET_TARGETS: dict[str, float] = {
    "paused": 25, "finished": 15, "active": 15, "out_of_office": 8, "opted_out": 10,
    "to_call": 12, "replied": 8, "bounced": 5, "missing_data": 2,
}  # fmt: skip
"""status_set values: random targets, so some transitions are invalid for the member's state."""
_REMOVE_TARGETS: dict[str, float] = {
    "called": 30, "to_call": 20, "paused": 20, "out_of_office": 15, "auto_replied": 8, "contacted": 7,
}  # fmt: skip
"""status_removed values; removing auto_replied / contacted is always rejected (SPEC §3.3)."""
_PROGRAMS: tuple[str, ...] = ("newsletter", "product_updates", "beta_program", "research_panel", "events")
_REASONS: tuple[str, ...] = (
    "override approved by research ops",
    "no-show x3",
    "abusive reply",
    "requested by email",
    "participant asked for a break",
    "legacy import",
)
_BAD_VALUES: tuple[str, ...] = ("2026-02-30", "next week", "31/12/2026")
_BAD_TIMESTAMPS: tuple[str, ...] = ("2026-13-45T25:61:00Z", "yesterday", "20/11/2026 10:00", "2026-02-30T10:00:00Z")
_UNKNOWN_EVENT_TYPES: tuple[str, ...] = ("email_bounced", "OptedOut", "unsubscribe")
_UNKNOWN_PARTICIPANT_STATUSES: tuple[str, ...] = ("completed", "Interview Scheduled", "pending")

_COUNTRIES: dict[str, float] = {
    "US": 30, "GB": 10, "DE": 9, "FR": 6, "CA": 5, "AU": 4, "NL": 3, "ES": 3, "IT": 3, "AT": 2,
    "CH": 2, "SE": 2, "PL": 2, "BR": 4, "IN": 6, "JP": 3, "MX": 2, "IE": 1, "DK": 1, "NZ": 1,
}  # fmt: skip
_ROLES: dict[str, float] = {
    "designer": 15, "engineer": 25, "product_manager": 15, "researcher": 10,
    "marketing": 10, "student": 10, "other": 15,
}  # fmt: skip
_DOMAINS: tuple[str, ...] = ("example.org", "example.com", "mail.test")

# --- participant statuses ----------------------------------------------------------------------

_PS = codes.PARTICIPANT_STATUSES
_PS_INDEX = {code: i for i, code in enumerate(_PS)}
_STAGE_RANK = np.array([codes.STAGES.index(codes.PARTICIPANT_STAGE[c]) for c in _PS])
_KIND_FINAL_WEIGHTS: dict[str, dict[str, float]] = {
    "interview": {
        "interview_invited": 5, "interview_scheduled": 6, "interview_completed": 12,
        "interview_canceled": 3, "no_showed": 4,
    },
    "survey": {"survey_started": 6, "survey_completed": 15, "no_showed": 0.3},
    "unmoderated_test": {"test_invited": 5, "test_started": 4, "test_completed": 12, "no_showed": 0.3},
}  # fmt: skip
_COMMON_FINAL_WEIGHTS: dict[str, float] = {
    "not_contacted": 3, "not_eligible": 2, "study_invited": 10, "soft_bounced": 1,
    "screener_started": 3, "screener_qualified": 3, "screener_completed": 3,
    "screener_not_qualified": 5, "incentive_not_sent": 1, "incentive_sent": 2,
    "incentive_claimed": 5, "canceled": 3, "opted_out": 1, "hard_bounced": 0.7,
}  # fmt: skip
_KIND_PATHS: dict[str, tuple[str, ...]] = {
    "interview": (
        "study_invited", "screener_started", "screener_qualified", "screener_completed",
        "interview_invited", "interview_scheduled", "incentive_not_sent", "incentive_sent",
    ),
    "survey": ("study_invited", "screener_started", "screener_completed", "survey_started", "incentive_sent"),
    "unmoderated_test": (
        "study_invited", "screener_started", "screener_qualified", "test_invited", "test_started", "incentive_sent",
    ),
}  # fmt: skip
"""Statuses a participant passes through, by study kind, in stage order: the intermediate
`participant_status` events are drawn from the prefix below the final status's stage."""

MESSY_EVENT_KINDS: tuple[str, ...] = (
    "bad_timestamp",  # Parquet: null occurred_at; CSV: an unparseable string
    "missing_event_id",
    "unknown_event_type",
    "unknown_person",
    "missing_study_id",  # a participant_status event without study_id
    "missing_sequence_id",  # an email_sent without sequence_id
    "bad_value",  # a cooldown_set whose value is not a date
    "unknown_study",  # an invited event for a study that does not exist
    "not_a_participant",  # a participant_status event for a study the person is (almost surely) not in
    "exact_duplicate",  # the row repeated verbatim right after itself
    "conflicting_duplicate",  # the row repeated with the same event_id, one hour later
)
MESSY_PEOPLE_KINDS: tuple[str, ...] = ("missing_created_at", "duplicate_person_id")
MESSY_PARTICIPANT_KINDS: tuple[str, ...] = (
    "unknown_status",
    "unknown_person",
    "unknown_study",
    "duplicate_key",
    "missing_added_at",
)

_ET = codes.EVENT_TYPES
_ET_INDEX = {t: i for i, t in enumerate(_ET)}
_IS_SEQ = np.array([t in codes.SEQUENCE_SCOPED_EVENTS for t in _ET] + [False] * len(_UNKNOWN_EVENT_TYPES))


# --- counter-based randomness ------------------------------------------------------------------

_GOLDEN = np.uint64(0x9E3779B97F4A7C15)
_M1 = np.uint64(0xBF58476D1CE4E5B9)
_M2 = np.uint64(0x94D049BB133111EB)


def _mix(x: np.ndarray) -> np.ndarray:
    """splitmix64 finaliser: a well-mixed 64-bit hash of each element (wrapping arithmetic)."""
    with np.errstate(over="ignore"):
        z = np.asarray(x, dtype=np.uint64) + _GOLDEN
        z ^= z >> np.uint64(30)
        z *= _M1
        z ^= z >> np.uint64(27)
        z *= _M2
        z ^= z >> np.uint64(31)
    return z


def _stream(name: str) -> np.uint64:
    return np.uint64(zlib.crc32(name.encode()) * 0x100000001)


def _key(seed: int, name: str, *ids: np.ndarray) -> np.ndarray:
    """A base hash per element of `ids` (all broadcast together): the root of that row's draws."""
    h = _mix(np.uint64(seed & 0xFFFFFFFFFFFFFFFF) ^ _stream(name))
    for ids_ in ids:
        h = _mix(h ^ np.asarray(ids_, dtype=np.int64).view(np.uint64))
    return h


def _u(base: np.ndarray, name: str) -> np.ndarray:
    """A uniform in [0, 1) per element, independent for each stream `name`."""
    return (_mix(base ^ _stream(name)) >> np.uint64(11)).astype(np.float64) * (1.0 / (1 << 53))


def _normal(base: np.ndarray, name: str) -> np.ndarray:
    """Standard normal by Box–Muller from two uniforms."""
    u1 = 1.0 - _u(base, name + ".1")
    u2 = _u(base, name + ".2")
    return np.sqrt(-2.0 * np.log(u1)) * np.cos(2.0 * np.pi * u2)


def _cum(weights: dict[str, float] | tuple[float, ...] | list[float]) -> np.ndarray:
    w = np.asarray(list(weights.values()) if isinstance(weights, dict) else weights, dtype=np.float64)
    cum = np.cumsum(w) / w.sum()
    cum[-1] = 1.0
    return cum


def _pick(cum: np.ndarray, u: np.ndarray) -> np.ndarray:
    """Categorical draw: index of the bucket of `u` in the cumulative weights."""
    return np.minimum(np.searchsorted(cum, u, side="right"), len(cum) - 1).astype(np.int64)


def _span(u: np.ndarray, lo: np.ndarray, hi: np.ndarray) -> np.ndarray:
    """An integer second uniformly in [lo, hi] (hi < lo collapses to lo)."""
    return lo + np.floor(u * np.maximum(hi - lo, 0)).astype(np.int64)


def _group_index(counts: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """For `counts[i]` items per owner i: (owner of each item, item number within its owner)."""
    owner = np.repeat(np.arange(len(counts), dtype=np.int64), counts)
    first = np.cumsum(counts) - counts
    return owner, np.arange(len(owner), dtype=np.int64) - first[owner]


def _take(vocab: pl.Series, idx: np.ndarray) -> pl.Series:
    """Gather from `vocab` whose last element is null: index -1 gives null."""
    return vocab.gather(idx)


def _categorical(name: str, weights: dict[str, float], u: np.ndarray, null: np.ndarray) -> pl.Series:
    """A weighted draw of one of the keys of `weights` per row, null where `null`."""
    return _take(_vocab(tuple(weights), name), np.where(null, -1, _pick(_cum(weights), u)))


def _vocab(values: tuple[str, ...] | list[str], name: str = "") -> pl.Series:
    return pl.Series(name, [*values, None], dtype=pl.String)


_DIGIT_PAIRS = np.frombuffer("".join(f"{i:02d}" for i in range(100)).encode(), dtype=np.uint16)


def _ids(name: str, prefix: str, numbers: np.ndarray, width: int) -> pl.Series:
    """Zero-padded ids such as p000000042 (so that string order is numeric order); < 0 is null.

    Built as fixed-width bytes in numpy and handed to Arrow as buffers: several times faster
    than formatting with Polars string expressions, and ids are most of an export's bytes.
    """
    numbers = np.asarray(numbers, dtype=np.int64)
    n, head = len(numbers), len(prefix)
    valid = numbers >= 0
    x = np.where(valid, numbers, 0)
    digits = np.empty((n, width + width % 2), dtype=np.uint8)  # even width, so pairs align
    pairs = digits.view(np.uint16)
    for k in range(pairs.shape[1] - 1, -1, -1):
        pairs[:, k] = _DIGIT_PAIRS[x % 100]
        x //= 100
    rows = np.empty((n, head + width), dtype=np.uint8)
    rows[:, :head] = np.frombuffer(prefix.encode(), dtype=np.uint8)
    rows[:, head:] = digits[:, width % 2 :]
    offsets = np.arange(0, (n + 1) * (head + width), head + width, dtype=np.int64)
    bitmap = None if valid.all() else pa.py_buffer(np.packbits(valid, bitorder="little"))
    array = pa.LargeStringArray.from_buffers(n, pa.py_buffer(offsets), pa.py_buffer(rows), bitmap)
    return pl.Series(name, array)


def _timestamps(name: str, seconds: np.ndarray, null: np.ndarray | None = None) -> pl.Series:
    s = pl.Series(name, seconds.astype(np.int64) * _US, dtype=pl.Int64).cast(TIMESTAMP)
    return s if null is None or not null.any() else s.set(pl.Series(null), None)


# --- configuration and the shared world ----------------------------------------------------------


@dataclass(frozen=True)
class SyntheticConfig:
    """What to generate. Rows depend on (people, seed, messy_rate) only, never on chunk_people."""

    people: int
    seed: int = 0
    messy_rate: float = 0.001
    chunk_people: int = 100_000

    def __post_init__(self) -> None:
        if self.people < 1:
            raise ValueError("people must be at least 1")
        if not 0.0 <= self.messy_rate <= 1.0:
            raise ValueError("messy_rate must be between 0 and 1")
        if self.chunk_people < 1:
            raise ValueError("chunk_people must be at least 1")

    @property
    def n_studies(self) -> int:
        """About one study per 200 people, and enough for a small workspace to show every kind."""
        return max(8, round(self.people / 200))

    @property
    def n_sequences(self) -> int:
        return max(3, math.ceil(self.people / 500))

    @property
    def n_users(self) -> int:
        """Workspace users: sequence owners and actors of manual events."""
        return max(5, math.ceil(self.people / 5000))

    @property
    def tail_cap(self) -> int:
        """Events of the heaviest people: 25k at N ≥ 125k, scaled down (≥ 100) for small N."""
        return int(min(25_000, max(100, self.people // 5)))


@dataclass(frozen=True)
class World:
    """The small global tables every chunk refers to: studies, sequences, users."""

    config: SyntheticConfig
    study_kind: np.ndarray
    study_opened: np.ndarray
    study_opened_null: np.ndarray
    study_closed: np.ndarray
    study_closed_null: np.ndarray
    study_limit: np.ndarray
    seq_owner: np.ndarray
    seq_team: np.ndarray
    seq_continue: np.ndarray
    study_ids: pl.Series = field(repr=False)
    sequence_ids: pl.Series = field(repr=False)
    user_ids: pl.Series = field(repr=False)


def build_world(cfg: SyntheticConfig) -> World:
    """Studies (kinds, some closed, some not yet opened, some limited) and sequences."""
    ns, nq = cfg.n_studies, cfg.n_sequences
    sidx = np.arange(ns, dtype=np.int64)
    hs = _key(cfg.seed, "study", sidx)
    kind = _pick(_cum([0.5, 0.3, 0.2]), _u(hs, "kind"))
    u_open = _u(hs, "opened")
    opened_null = u_open < 0.05
    future = (u_open >= 0.05) & (u_open < 0.13)
    opened = _span(_u(hs, "opened_at"), np.full(ns, WINDOW_START), np.full(ns, _AS_OF_END - 14 * _DAY))
    opened = np.where(future, _AS_OF_END + 1 + _span(_u(hs, "future"), np.full(ns, 0), np.full(ns, 10 * _DAY)), opened)
    closes = ~opened_null & ~future & (_u(hs, "closes") < 0.45)
    closed = opened + 7 * _DAY + np.floor(_u(hs, "closed_at") * 173 * _DAY).astype(np.int64)
    limit = np.where(_u(hs, "limited") < 0.35, 5 + np.floor(_u(hs, "limit") * 60).astype(np.int64), -1)

    qidx = np.arange(nq, dtype=np.int64)
    hq = _key(cfg.seed, "sequence", qidx)
    return World(
        config=cfg,
        study_kind=kind,
        study_opened=np.where(opened_null, 0, opened),
        study_opened_null=opened_null,
        study_closed=np.where(closes, closed, 0),
        study_closed_null=~closes,
        study_limit=limit,
        seq_owner=np.floor(_u(hq, "owner") * cfg.n_users).astype(np.int64),
        seq_team=(_u(hq, "team") < 0.3) | (qidx == 1),  # small populations still get one of each
        seq_continue=(_u(hq, "continue") < 0.2) | (qidx == 2),
        study_ids=_ids("study_id", "s", sidx + 1, 7).extend_constant(None, 1),
        sequence_ids=_ids("sequence_id", "q", qidx + 1, 6).extend_constant(None, 1),
        user_ids=_ids("actor_id", "u", np.arange(cfg.n_users, dtype=np.int64) + 1, 5).extend_constant(None, 1),
    )


def studies_frame(world: World) -> pl.DataFrame:
    ns = world.config.n_studies
    sidx = np.arange(ns, dtype=np.int64)
    kind = _vocab(codes.STUDY_KINDS)[world.study_kind]
    return pl.DataFrame(
        [
            world.study_ids[:ns].alias("study_id"),
            pl.Series(
                "name",
                [f"{k.replace('_', ' ').capitalize()} study {i}" for k, i in zip(kind[:ns], sidx + 1, strict=True)],
            ),
            kind.alias("kind"),
            _timestamps("opened_at", world.study_opened, world.study_opened_null),
            _timestamps("closed_at", world.study_closed, world.study_closed_null),
            pl.Series("participation_limit", world.study_limit).set(pl.Series(world.study_limit < 0), None),
        ]
    )


def sequences_frame(world: World) -> pl.DataFrame:
    """Every sequence but each 50th: those get the defaults (SPEC §1, a sequence absent here)."""
    nq = world.config.n_sequences
    keep = np.arange(nq) % 50 != 49
    return pl.DataFrame(
        [
            world.sequence_ids[:nq].alias("sequence_id"),
            _take(world.user_ids, world.seq_owner).alias("owner_id"),
            pl.Series("team_edition", world.seq_team),
            pl.Series("reply_handling", np.where(world.seq_continue, "continue", "finish")),
        ]
    ).filter(pl.Series(keep))


# --- one chunk of people -----------------------------------------------------------------------


@dataclass
class ChunkTables:
    """The rows of one chunk of people: their people, participants and events rows."""

    n_people: int
    people: pl.DataFrame
    participants: pl.DataFrame
    events: pl.DataFrame
    events_numbered: int
    """Event ids consumed (the next chunk's ids start after them; duplicates reuse ids)."""
    messy: dict[str, int]


@dataclass
class _Events:
    """Column arrays of one group of events, before they are merged and sorted."""

    person: np.ndarray  # local person index
    time: np.ndarray
    etype: np.ndarray
    base: np.ndarray  # per-event hash, root of the attribute draws
    study: np.ndarray  # study index or -1
    seq: np.ndarray  # sequence index or -1
    value: np.ndarray  # index into _VALUES or -1

    @staticmethod
    def concat(parts: list[_Events]) -> _Events:
        return _Events(*(np.concatenate([getattr(p, f) for p in parts]) for f in _Events.__dataclass_fields__))

    def take(self, order: np.ndarray) -> _Events:
        return _Events(*(getattr(self, f)[order] for f in _Events.__dataclass_fields__))


_VALUES: tuple[str, ...] = (
    *_PS,
    *_SET_TARGETS,
    *_REMOVE_TARGETS,
    *_PROGRAMS,
    *_BAD_VALUES,
    *_UNKNOWN_PARTICIPANT_STATUSES,
)
_V_SET = len(_PS)
_V_REMOVE = _V_SET + len(_SET_TARGETS)
_V_PROGRAM = _V_REMOVE + len(_REMOVE_TARGETS)
_V_BAD = _V_PROGRAM + len(_PROGRAMS)

_FREE_TYPES = np.array([_ET_INDEX[t] for t in _FREE_EVENT_WEIGHTS])
_FREE_CUM = _cum(_FREE_EVENT_WEIGHTS)
_P_HEAVY = 5e-5


def _people_arrays(cfg: SyntheticConfig, gp: np.ndarray) -> dict[str, np.ndarray]:
    """Per person: creation time, target event count (lognormal + heavy tail), participations, sequences."""
    hp = _key(cfg.seed, "person", gp)
    n = len(gp)
    created = _span(_u(hp, "created") ** 0.75, np.full(n, WINDOW_START), np.full(n, _AS_OF_END - _DAY))
    target = np.maximum(1, np.rint(np.exp(math.log(15.0) + 0.75 * _normal(hp, "events")))).astype(np.int64)
    heavy = (_u(hp, "heavy") < _P_HEAVY) | ((gp == 0) & (cfg.people >= 1000))
    cap = cfg.tail_cap
    heavy_n = np.rint(np.exp(math.log(cap / 10) + _u(hp, "heavy_n") * math.log(10))).astype(np.int64)
    target = np.where(heavy, np.where(gp == 0, cap, heavy_n), target)
    parts = np.array([0, 1, 2, 3, 4, 6])[_pick(_cum([0.5, 0.3, 0.12, 0.05, 0.02, 0.01]), _u(hp, "parts"))]
    parts = np.where(heavy, 8 + np.floor(_u(hp, "heavy_parts") * 25).astype(np.int64), parts)
    parts = np.minimum(parts, cfg.n_studies)
    mems = 1 + np.floor(-np.log1p(-_u(hp, "mems")) * target / 40).astype(np.int64)
    mems = np.where(_u(hp, "no_outreach") < 0.15, 0, np.minimum(mems, min(cfg.n_sequences, 300)))
    return {
        "hash": hp,
        "created": created,
        "target": target,
        "parts": parts,
        "mems": mems,
        "study_base": np.floor(_u(hp, "study_base") * cfg.n_studies).astype(np.int64),
        "seq_base": np.floor(_u(hp, "seq_base") * cfg.n_sequences).astype(np.int64),
    }


def _people_frame(cfg: SyntheticConfig, gp: np.ndarray, p: dict[str, np.ndarray]) -> pl.DataFrame:
    hp, n = p["hash"], len(gp)
    created = p["created"]
    seen_null = _u(hp, "seen_null") < 0.22
    seen = _span(_u(hp, "seen"), created, np.full(n, _AS_OF_END - 1)) // _DAY
    age = np.where(
        _u(hp, "minor") < 0.04,
        14 + np.floor(_u(hp, "age") * 4),
        18 + np.floor(57 * _u(hp, "age") ** 1.6),
    ).astype(np.int64)
    pid = _ids("person_id", "p", gp + 1, 9)
    domain = _take(_vocab(_DOMAINS), _pick(_cum([0.6, 0.3, 0.1]), _u(hp, "domain")))
    phone = np.floor(_u(hp, "phone") * 1e7).astype(np.int64)
    return pl.DataFrame(
        [
            pid,
            pl.select(
                pl.when(pl.lit(_u(hp, "email_null") >= 0.02)).then(
                    pl.concat_str(pl.lit(pid).str.replace("p0*", "user"), pl.lit("@"), pl.lit(domain))
                )
            )
            .to_series()
            .alias("email"),
            pl.select(
                pl.when(pl.lit(_u(hp, "phone_null") >= 0.55)).then(
                    pl.lit("+1555") + pl.lit(phone).cast(pl.String).str.zfill(7)
                )
            )
            .to_series()
            .alias("phone"),
            _timestamps("created_at", created),
            pl.Series("last_seen_on", seen, dtype=pl.Int32).cast(pl.Date).set(pl.Series(seen_null), None),
            _categorical("country", _COUNTRIES, _u(hp, "country"), _u(hp, "country_null") < 0.03),
            pl.Series("age", age).set(pl.Series(_u(hp, "age_null") < 0.12), None),
            _categorical("role", _ROLES, _u(hp, "role"), _u(hp, "role_null") < 0.1),
        ]
    )


def _final_status_tables() -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per study kind: cumulative weights of the final status, its path, and the path prefix length."""
    n_kinds = len(codes.STUDY_KINDS)
    cum = np.zeros((n_kinds, len(_PS)))
    max_path = max(len(p) for p in _KIND_PATHS.values())
    paths = np.zeros((n_kinds, max_path), dtype=np.int64)
    before = np.zeros((n_kinds, len(_PS)), dtype=np.int64)
    for k, kind in enumerate(codes.STUDY_KINDS):
        weights = {c: 0.05 for c in _PS} | _COMMON_FINAL_WEIGHTS | _KIND_FINAL_WEIGHTS[kind]
        cum[k] = _cum([weights[c] for c in _PS])
        path = np.array([_PS_INDEX[c] for c in _KIND_PATHS[kind]])
        paths[k, : len(path)] = path
        before[k] = (_STAGE_RANK[path][None, :] < _STAGE_RANK[:, None]).sum(axis=1)
    return cum, paths, before


_FINAL_CUM, _PATHS, _PATH_BEFORE = _final_status_tables()


def _path_status(kind: np.ndarray, final: np.ndarray, i: np.ndarray, n: np.ndarray, u: np.ndarray) -> np.ndarray:
    """Status of the i-th of n status events: the last is the final status, earlier ones climb the
    kind's path through the stages below it (monotone in i)."""
    before = _PATH_BEFORE[kind, final]
    frac = (i + u) / np.maximum(n - 1, 1)
    pos = np.clip(np.floor(frac * before).astype(np.int64), 0, np.maximum(before - 1, 0))
    inter = np.where(before > 0, _PATHS[kind, pos], final)
    return np.where(i == n - 1, final, inter)


@dataclass
class _Participations:
    """One row per (person, study) participation of a chunk, and what its events need."""

    person: np.ndarray  # local person index
    hash: np.ndarray
    study: np.ndarray
    added: np.ndarray
    row_status: np.ndarray
    row_updated: np.ndarray
    updated_null: np.ndarray
    events: list[_Events]
    """`invited` and `participant_status` events."""


def _participations(cfg: SyntheticConfig, world: World, gp: np.ndarray, p: dict[str, np.ndarray]) -> _Participations:
    """(person, j) → distinct studies; added_at inside the study's window; a status path whose
    last step is the final status, as events, and an export row (mostly current, sometimes stale)."""
    part_p, part_j = _group_index(p["parts"])
    hq = _key(cfg.seed, "participation", gp[part_p], part_j)
    study = (p["study_base"][part_p] + part_j) % cfg.n_studies
    opened = np.where(world.study_opened_null[study], 0, world.study_opened[study] - 14 * _DAY)
    lo = np.maximum(p["created"][part_p], opened)
    hi = np.where(world.study_closed_null[study], _AS_OF_END, world.study_closed[study])
    added = np.minimum(_span(_u(hq, "added"), lo, np.maximum(hi, lo + 7 * _DAY)), WINDOW_END - _HOUR)
    kind = world.study_kind[study]
    final = (_u(hq, "final")[:, None] >= _FINAL_CUM[kind]).sum(axis=1).clip(0, len(_PS) - 1)
    n_status = np.array([0, 1, 2, 3, 4])[_pick(_cum([0.15, 0.35, 0.25, 0.15, 0.10]), _u(hq, "n_status"))]
    span = np.maximum(_HOUR, np.floor(_u(hq, "span") * np.minimum(WINDOW_END - added, 120 * _DAY))).astype(np.int64)

    se_q, se_i = _group_index(n_status)
    hse = _key(cfg.seed, "pstatus", gp[part_p[se_q]], part_j[se_q], se_i)
    statuses = _Events(
        part_p[se_q],
        added[se_q] + span[se_q] * (se_i + 1) // n_status[se_q],
        np.full(len(se_q), _ET_INDEX["participant_status"]),
        hse,
        study[se_q],
        np.full(len(se_q), -1),
        _path_status(kind[se_q], final[se_q], se_i, n_status[se_q], _u(hse, "path")),
    )
    inv = np.flatnonzero(_u(hq, "invited") < 0.85)
    invites = _Events(
        part_p[inv],
        added[inv] + np.floor(_u(hq[inv], "inv_time") * 2 * _DAY).astype(np.int64),
        np.full(len(inv), _ET_INDEX["invited"]),
        hq[inv] ^ _stream("invited"),
        study[inv],
        np.full(len(inv), -1),
        np.full(len(inv), -1),
    )

    stale = (n_status >= 2) & (_u(hq, "stale") < 0.08)
    hst = _key(cfg.seed, "pstatus", gp[part_p], part_j, n_status - 2)  # the hash of event n-2
    row_status = np.where(stale, _path_status(kind, final, n_status - 2, n_status, _u(hst, "path")), final)
    steps = np.where(stale, n_status - 1, n_status)
    row_updated = np.where(n_status == 0, added, added + span * steps // np.maximum(n_status, 1))
    updated_null = _u(hq, "upd_null") < np.where(n_status == 0, 0.3, 0.07)
    return _Participations(part_p, hq, study, added, row_status, row_updated, updated_null, [invites, statuses])


def _sequence_and_free_events(
    cfg: SyntheticConfig, gp: np.ndarray, p: dict[str, np.ndarray], budget: np.ndarray
) -> list[_Events]:
    """Memberships (person, j) → distinct sequences with a start: mostly a `sequence_added`, some a
    `sequence_removed`; then the rest of each person's `budget`, drawn from the event mix."""
    created, mems = p["created"], p["mems"]
    mem_p, mem_j = _group_index(mems)
    hm = _key(cfg.seed, "membership", gp[mem_p], mem_j)
    mem_seq = (p["seq_base"][mem_p] + mem_j) % cfg.n_sequences
    mem_start = _span(_u(hm, "start") * 0.95, created[mem_p], np.full(len(mem_p), WINDOW_END))
    add = np.flatnonzero(_u(hm, "orphan") >= 0.03)
    rem = np.flatnonzero(_u(hm, "removed") < 0.06)
    rem_time = _span(_u(hm[rem], "removed_at"), mem_start[rem] + 1, np.full(len(rem), WINDOW_END))
    structural = np.bincount(mem_p[add], minlength=len(gp)) + np.bincount(mem_p[rem], minlength=len(gp))
    groups = [
        _Events(mem_p[add], mem_start[add], np.full(len(add), _ET_INDEX["sequence_added"]), hm[add],
                np.full(len(add), -1), mem_seq[add], np.full(len(add), -1)),
        _Events(mem_p[rem], rem_time, np.full(len(rem), _ET_INDEX["sequence_removed"]), hm[rem] ^ _stream("removed"),
                np.full(len(rem), -1), mem_seq[rem], np.full(len(rem), -1)),
    ]  # fmt: skip
    fp, fk = _group_index(np.maximum(budget - structural, 0))
    hf = _key(cfg.seed, "free", gp[fp], fk)
    ftype = _FREE_TYPES[_pick(_FREE_CUM, _u(hf, "type"))]
    fmems = mems[fp]
    scoped = _IS_SEQ[ftype] & (fmems > 0)
    ftype[_IS_SEQ[ftype] & (fmems == 0)] = _ET_INDEX["inbound_message"]  # no outreach: they write to us
    time_ = _span(_u(hf, "time"), created[fp], np.full(len(fp), WINDOW_END))
    seq = np.full(len(fp), -1)
    # sequence events follow their membership's start (a few precede it: a missing or late add)
    s = np.flatnonzero(scoped)
    mi = (np.cumsum(mems) - mems)[fp[s]] + np.floor(_u(hf[s], "membership") * fmems[s]).astype(np.int64)
    start = mem_start[mi]
    t = start + np.floor(-np.log1p(-_u(hf[s], "delay")) * 10 * _DAY).astype(np.int64)
    t = np.where(t > WINDOW_END, _span(_u(hf[s], "late"), start, np.full(len(s), WINDOW_END)), t)
    t = np.where(_u(hf[s], "early") < 0.02, _span(_u(hf[s], "late"), created[fp[s]], start), t)
    time_[s] = t
    seq[s] = mem_seq[mi]
    groups.insert(0, _Events(fp, time_, ftype, hf, np.full(len(fp), -1), seq, np.full(len(fp), -1)))
    return groups


def _messy_events(cfg: SyntheticConfig, ev: _Events, hr: np.ndarray, number: np.ndarray,
                  person_number: np.ndarray, value: np.ndarray, value_date: np.ndarray,
                  messy: dict[str, int]) -> tuple[np.ndarray, np.ndarray]:  # fmt: skip
    """Spoil a `messy_rate` share of the rows in place, one kind each (MESSY_EVENT_KINDS).
    Returns (bad timestamp mask, duplicate kind: 0 none, 1 exact, 2 conflicting)."""
    n = len(hr)
    bad_ts = np.zeros(n, dtype=bool)
    dup = np.zeros(n, dtype=np.int8)
    hit = np.flatnonzero(_u(hr, "messy") < cfg.messy_rate)
    kinds = np.floor(_u(hr[hit], "messy_kind") * len(MESSY_EVENT_KINDS)).astype(np.int64)
    for k, name in enumerate(MESSY_EVENT_KINDS):
        rows = hit[kinds == k]
        messy[f"events.{name}"] += len(rows)
        u = _u(hr[rows], "messy_detail")
        if name == "bad_timestamp":
            bad_ts[rows] = True
        elif name == "missing_event_id":
            number[rows] = -1
        elif name == "unknown_event_type":
            ev.etype[rows] = len(_ET) + np.floor(u * len(_UNKNOWN_EVENT_TYPES)).astype(np.int64)
        elif name == "unknown_person":
            person_number[rows] = 900_000_000 + np.floor(u * 99_999_999).astype(np.int64)
        elif name == "exact_duplicate":
            dup[rows] = 1
        elif name == "conflicting_duplicate":
            dup[rows] = 2
        else:  # the row becomes another event type, with that type's scope and value
            etype, study, seq, val = {
                "missing_study_id": ("participant_status", -1, -1, _PS_INDEX["study_invited"]),
                "missing_sequence_id": ("email_sent", -1, -1, -1),
                "bad_value": ("cooldown_set", -1, -1, _V_BAD + np.floor(u * len(_BAD_VALUES)).astype(np.int64)),
                "unknown_study": ("invited", cfg.n_studies + 9_000_000 - 1, -1, -1),
                "not_a_participant": (
                    "participant_status", np.floor(u * cfg.n_studies).astype(np.int64), -1,
                    _PS_INDEX["screener_started"],
                ),
            }[name]  # fmt: skip
            ev.etype[rows], ev.study[rows], ev.seq[rows], value[rows], value_date[rows] = (
                _ET_INDEX[etype], study, seq, val, -1,
            )  # fmt: skip
    return bad_ts, dup


def chunk_tables(
    cfg: SyntheticConfig, world: World, start: int, stop: int, event_offset: int, fmt: Format = "parquet"
) -> ChunkTables:
    """People [start, stop) with their participants and events, events numbered from event_offset.

    `fmt` only decides how a bad timestamp is spelled: null for Parquet (a typed column cannot
    hold garbage), an unparseable string for CSV (occurred_at is then a string column).
    """
    gp = np.arange(start, stop, dtype=np.int64)
    n_people = len(gp)
    p = _people_arrays(cfg, gp)
    messy = dict.fromkeys(_messy_keys(), 0)

    parts = _participations(cfg, world, gp, p)
    part_events = np.bincount(
        np.concatenate([g.person for g in parts.events]), minlength=n_people
    )
    seq_groups = _sequence_and_free_events(cfg, gp, p, p["target"] - part_events)
    ev = _Events.concat(seq_groups + parts.events)
    del seq_groups
    parts.events = []
    np.minimum(ev.time, WINDOW_END, out=ev.time)

    # per person in time order; ties keep the (chunk-independent) group order
    ev = ev.take(np.argsort((ev.person << 34) | (ev.time - WINDOW_START + 366 * _DAY), kind="stable"))
    n_events = len(ev.person)
    per_person = np.bincount(ev.person, minlength=n_people)
    rank = np.arange(n_events, dtype=np.int64) - (np.cumsum(per_person) - per_person)[ev.person]
    hr = _key(cfg.seed, "event", gp[ev.person], rank)
    del rank, per_person
    number = event_offset + 1 + np.arange(n_events, dtype=np.int64)
    person_number = gp[ev.person] + 1
    channel, actor, value, reason, value_date = _decorate(world, ev)

    if cfg.messy_rate > 0:
        bad_ts, dup = _messy_events(cfg, ev, hr, number, person_number, value, value_date, messy)
    else:
        bad_ts, dup = np.zeros(n_events, dtype=bool), np.zeros(n_events, dtype=np.int8)

    # duplicates sit right after their original (a conflicting copy one hour later)
    time_ = ev.time
    if dup.any():
        reps = 1 + (dup > 0)
        rows = np.repeat(np.arange(n_events), reps)
        copy_pos = (np.cumsum(reps) - 1)[reps == 2]
        conflicting = np.zeros(len(rows), dtype=bool)
        conflicting[copy_pos[dup[dup > 0] == 2]] = True
        ev, hr, number, person_number, bad_ts = ev.take(rows), hr[rows], number[rows], person_number[rows], bad_ts[rows]
        channel, actor, value, reason, value_date = (a[rows] for a in (channel, actor, value, reason, value_date))
        time_ = ev.time + np.where(conflicting, _HOUR, 0)

    people = _people_frame(cfg, gp, p)
    if fmt == "csv":
        occurred = _timestamps("occurred_at", time_).dt.strftime(CSV_DATETIME_FORMAT)
        if bad_ts.any():
            which = np.floor(_u(hr[bad_ts], "garbage") * len(_BAD_TIMESTAMPS)).astype(np.int64)
            occurred = occurred.scatter(np.flatnonzero(bad_ts), _take(_vocab(_BAD_TIMESTAMPS), which))
    else:
        occurred = _timestamps("occurred_at", time_, bad_ts)
    person_ids = people["person_id"].gather(ev.person)
    unknown = np.flatnonzero(person_number != gp[ev.person] + 1)
    if len(unknown):
        person_ids = person_ids.scatter(unknown, _ids("", "p", person_number[unknown], 9))
    values = _take(_vocab(_VALUES), value)
    dated = np.flatnonzero(value_date >= 0)
    if len(dated):
        dates = pl.Series(value_date[dated], dtype=pl.Int32).cast(pl.Date).dt.strftime(CSV_DATE_FORMAT)
        values = values.scatter(dated, dates)
    if (ev.study >= cfg.n_studies).any():
        study_ids = _ids("study_id", "s", np.where(ev.study >= 0, ev.study + 1, -1), 7)
    else:
        study_ids = _take(world.study_ids, ev.study)
    events = pl.DataFrame(
        [
            _ids("event_id", "e", number, 11),
            person_ids.alias("person_id"),
            occurred,
            _take(_vocab((*_ET, *_UNKNOWN_EVENT_TYPES)), ev.etype).alias("event_type"),
            study_ids.alias("study_id"),
            _take(world.sequence_ids, ev.seq).alias("sequence_id"),
            _take(_vocab(codes.CHANNELS), channel).alias("channel"),
            _take(world.user_ids, actor).alias("actor_id"),
            values.alias("value"),
            _take(_vocab(_REASONS), reason).alias("reason"),
        ]
    )
    participants = pl.DataFrame(
        [
            _take(world.study_ids, parts.study).alias("study_id"),
            people["person_id"].gather(parts.person),
            _timestamps("added_at", parts.added),
            _take(_vocab(_PS), parts.row_status).alias("participant_status"),
            _timestamps("status_updated_at", parts.row_updated, parts.updated_null),
        ]
    )
    if cfg.messy_rate > 0:
        people = _messy_people(cfg, gp, people, messy)
        participants = _messy_participants(cfg, parts.hash, participants, messy)
    return ChunkTables(n_people, people, participants, events, n_events, messy)


def _messy_keys() -> list[str]:
    return [
        *(f"people.{k}" for k in MESSY_PEOPLE_KINDS),
        *(f"participants.{k}" for k in MESSY_PARTICIPANT_KINDS),
        *(f"events.{k}" for k in MESSY_EVENT_KINDS),
    ]


def _decorate(world: World, ev: _Events) -> tuple[np.ndarray, ...]:
    """Channel, actor, value and reason of each event, from its type and its own hash."""
    t, h = ev.etype, ev.base
    n = len(t)
    ch = np.full(n, -1, dtype=np.int64)
    email, sms, call, web = (codes.CHANNELS.index(c) for c in ("email", "sms", "call", "web"))

    @cache
    def is_(name: str) -> np.ndarray:
        return t == _ET_INDEX[name]
    u_ch = _u(h, "channel")
    for name in ("email_sent", "email_opened", "link_clicked", "bounced", "auto_replied", "out_of_office"):
        ch[is_(name)] = email
    ch[is_("call_step_reached") | is_("call_logged")] = call
    ch[is_("replied")] = np.where(u_ch[is_("replied")] < 0.8, email, sms)
    ch[is_("inbound_message")] = np.array([email, sms, web])[_pick(_cum([0.4, 0.4, 0.2]), u_ch[is_("inbound_message")])]
    ch[is_("stopped")] = np.array([sms, email, web])[_pick(_cum([0.7, 0.2, 0.1]), u_ch[is_("stopped")])]
    ch[is_("invited")] = np.where(u_ch[is_("invited")] < 0.9, email, -1)

    actor = np.full(n, -1, dtype=np.int64)
    random_user = np.floor(_u(h, "actor") * world.config.n_users).astype(np.int64)
    manual_seq = is_("status_set") | is_("status_removed")
    owner = world.seq_owner[np.maximum(ev.seq, 0)]
    actor[manual_seq] = np.where(_u(h[manual_seq], "by_owner") < 0.75, owner[manual_seq], random_user[manual_seq])
    manual_person = is_("invited").copy()
    for name in (
        "opt_out_revoked", "blocklist_added", "blocklist_removed", "cooldown_set", "cooldown_cleared",
        "do_not_contact_set", "do_not_contact_cleared", "blocked", "unblocked", "archived", "restored", "deleted",
    ):  # fmt: skip
        manual_person |= is_(name)
    actor[manual_person] = np.where(_u(h[manual_person], "has_actor") < 0.9, random_user[manual_person], -1)

    value = ev.value.copy()
    u_v = _u(h, "value")
    sel = is_("status_set")
    value[sel] = _V_SET + _pick(_cum(_SET_TARGETS), u_v[sel])
    sel = is_("status_removed")
    value[sel] = _V_REMOVE + _pick(_cum(_REMOVE_TARGETS), u_v[sel])
    sel = is_("unsubscribed")
    value[sel] = _V_PROGRAM + np.floor(u_v[sel] * len(_PROGRAMS)).astype(np.int64)
    value_date = np.full(n, -1, dtype=np.int64)
    sel = is_("cooldown_set")
    value_date[sel] = ev.time[sel] // _DAY + 7 + np.floor(u_v[sel] * 170).astype(np.int64)

    reason = np.full(n, -1, dtype=np.int64)
    u_r = _u(h, "reason")
    for name, share, which in (
        ("invited", 0.04, 0),
        ("blocklist_added", 0.5, 1),
        ("opted_out", 0.3, 3),
        ("cooldown_set", 0.4, 4),
        ("do_not_contact_set", 0.6, 5),
    ):
        sel = is_(name) & (u_r < share)
        reason[sel] = which
    sel = is_("blocklist_added") & (u_r < 0.2)
    reason[sel] = 2
    return ch, actor, value, reason, value_date


def _messy_people(cfg: SyntheticConfig, gp: np.ndarray, people: pl.DataFrame, messy: dict[str, int]) -> pl.DataFrame:
    """Null created_at, or a second conflicting row with the same person_id right after the first."""
    h = _key(cfg.seed, "messy_person", gp)
    kind = np.where(_u(h, "messy") < cfg.messy_rate, np.floor(_u(h, "kind") * len(MESSY_PEOPLE_KINDS)), -1)
    missing, duplicate = kind == 0, kind == 1
    messy["people.missing_created_at"] = int(missing.sum())
    messy["people.duplicate_person_id"] = int(duplicate.sum())
    people = people.with_columns(pl.when(~pl.lit(missing)).then(pl.col("created_at")).alias("created_at"))
    if not duplicate.any():
        return people
    rows = np.repeat(np.arange(len(people)), 1 + duplicate)
    copy = np.zeros(len(rows), dtype=bool)
    copy[(np.cumsum(1 + duplicate) - 1)[duplicate]] = True
    return people[rows].with_columns(
        pl.when(pl.lit(copy)).then(pl.lit("duplicate@example.org")).otherwise(pl.col("email")).alias("email")
    )


def _messy_participants(
    cfg: SyntheticConfig, hq: np.ndarray, parts: pl.DataFrame, messy: dict[str, int]
) -> pl.DataFrame:
    """Unknown status code / person / study, a missing added_at, or the same pair twice."""
    n_kinds = len(MESSY_PARTICIPANT_KINDS)
    kind = np.where(_u(hq, "messy") < cfg.messy_rate, np.floor(_u(hq, "messy_kind") * n_kinds), -1)
    sel = {name: pl.lit(kind == k) for k, name in enumerate(MESSY_PARTICIPANT_KINDS)}
    for k, name in enumerate(MESSY_PARTICIPANT_KINDS):
        messy[f"participants.{name}"] = int((kind == k).sum())
    which = np.floor(_u(hq, "messy_detail") * len(_UNKNOWN_PARTICIPANT_STATUSES)).astype(np.int64)
    bad_code = pl.lit(_take(_vocab(_UNKNOWN_PARTICIPANT_STATUSES), which))
    status, person, study = pl.col("participant_status"), pl.col("person_id"), pl.col("study_id")
    parts = parts.with_columns(  # unknown ids keep their width: p9…, s9… are beyond every real id
        pl.when(sel["unknown_status"]).then(bad_code).otherwise(status).alias("participant_status"),
        pl.when(sel["unknown_person"]).then(pl.lit("p9") + person.str.slice(2)).otherwise(person).alias("person_id"),
        pl.when(sel["unknown_study"]).then(pl.lit("s9") + study.str.slice(2)).otherwise(study).alias("study_id"),
        pl.when(~sel["missing_added_at"]).then(pl.col("added_at")).alias("added_at"),
    )
    dup = kind == MESSY_PARTICIPANT_KINDS.index("duplicate_key")
    return parts[np.repeat(np.arange(len(parts)), 1 + dup)] if dup.any() else parts


# --- writing -----------------------------------------------------------------------------------


class _Writer(Protocol):
    def write(self, frame: pl.DataFrame) -> None: ...
    def close(self) -> None: ...


class _CsvWriter:
    """Appends chunks to one CSV file: header once, ISO-8601 timestamps with Z, empty = null."""

    def __init__(self, path: Path) -> None:
        self._file = path.open("wb")
        self._header = True

    def write(self, frame: pl.DataFrame) -> None:
        frame.write_csv(
            self._file,
            include_header=self._header,
            datetime_format=CSV_DATETIME_FORMAT,
            date_format=CSV_DATE_FORMAT,
        )
        self._header = False

    def close(self) -> None:
        self._file.close()


class _ParquetWriter:
    """Appends chunks as row groups of one Parquet file (schema fixed by the first chunk)."""

    def __init__(self, path: Path) -> None:
        self._path = path
        self._writer: pq.ParquetWriter | None = None

    def write(self, frame: pl.DataFrame) -> None:
        table = frame.to_arrow()
        if self._writer is None:
            self._writer = pq.ParquetWriter(self._path, table.schema, compression="zstd")
        elif table.schema != self._writer.schema:
            table = table.cast(self._writer.schema)
        self._writer.write_table(table, row_group_size=1 << 20)

    def close(self) -> None:
        if self._writer is None:
            raise RuntimeError(f"nothing written to {self._path}")
        self._writer.close()


@dataclass
class GenerateResult:
    out_dir: Path
    fmt: Format
    rows: dict[str, int]
    messy: dict[str, int]
    seconds: float
    files: dict[str, Path]


ProgressCallback = Callable[[int, int], None]
"""Called after each chunk with (people done, event rows written)."""


def iter_chunks(cfg: SyntheticConfig, world: World, fmt: Format = "parquet") -> Iterator[ChunkTables]:
    """Every chunk of people in order, event ids continuing from chunk to chunk."""
    offset = 0
    for start in range(0, cfg.people, cfg.chunk_people):
        chunk = chunk_tables(cfg, world, start, min(cfg.people, start + cfg.chunk_people), offset, fmt)
        offset += chunk.events_numbered
        yield chunk
        del chunk  # not alive while the next chunk is built: one chunk in memory at a time


def existing_table_files(out_dir: Path) -> list[Path]:
    """Files the loader would take for one of our tables (any format), which would clash."""
    return sorted(p for t in TABLES for p in out_dir.glob(f"{t}.*") if p.is_file())


def generate(
    cfg: SyntheticConfig,
    out_dir: Path,
    fmt: Format = "parquet",
    *,
    overwrite: bool = False,
    progress: ProgressCallback | None = None,
) -> GenerateResult:
    """Write every input table into out_dir, chunk by chunk; files appear only once complete."""
    t0 = time.perf_counter()
    out_dir.mkdir(parents=True, exist_ok=True)
    clash = existing_table_files(out_dir)
    if clash and not overwrite:
        raise FileExistsError(f"{out_dir} already holds {', '.join(p.name for p in clash)}")
    ext = "csv" if fmt == "csv" else "parquet"
    staging = out_dir / f".generate-{os.getpid()}"
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir()
    try:
        world = build_world(cfg)
        writers: dict[str, _Writer] = {
            t: (_CsvWriter if fmt == "csv" else _ParquetWriter)(staging / f"{t}.{ext}") for t in TABLES
        }
        rows = dict.fromkeys(TABLES, 0)
        messy = dict.fromkeys(_messy_keys(), 0)
        for name, frame in (("studies", studies_frame(world)), ("sequences", sequences_frame(world))):
            writers[name].write(frame)
            rows[name] = frame.height
        done = 0
        for chunk in iter_chunks(cfg, world, fmt):
            for name in ("people", "participants", "events"):
                frame = getattr(chunk, name)
                if frame.height or rows[name] == 0:
                    writers[name].write(frame)
                rows[name] += frame.height
            for k, v in chunk.messy.items():
                messy[k] += v
            done += chunk.n_people
            del chunk, frame
            if progress is not None:
                progress(done, rows["events"])
        for w in writers.values():
            w.close()
        for p in existing_table_files(out_dir):
            p.unlink()
        files = {}
        for t in TABLES:
            files[t] = out_dir / f"{t}.{ext}"
            (staging / f"{t}.{ext}").replace(files[t])
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return GenerateResult(out_dir, fmt, rows, messy, time.perf_counter() - t0, files)


def contract_columns() -> dict[str, tuple[str, ...]]:
    """The columns each generated table carries: the contract's, plus people's properties."""
    cols = {t.name: tuple(c.name for c in t.columns) for t in INPUT_TABLES}
    cols["people"] = (*cols["people"], "country", "age", "role")
    return cols
