"""Event-sourced history of each person's contact status (SPEC §4 `contact_status_history`).

The at-T model (`contact.py`) answers "what is the status at T". The history
answers it for every instant up to T at once: each component of §3.2 becomes
a timeline per person, every change point of any component becomes a row, the
components are carried forward to every row, the status is computed per row,
and runs of equal status collapse into intervals.

Components as timelines:

- opted_out, in_blocklist, manual do_not_contact: the change streams of
  `contact.py`, reduced to one state per instant (the last fact wins, §7.1).
- active_in_study: per participant, *spells* during which its status is
  started-but-not-terminal and its study is open; +1 / -1 at their ends and a
  running sum.
- in_cooldown: per cooldown start, a spell from the start to its end (the
  earlier of `cooldown_until` and the next `cooldown_cleared`); +1 / -1 and a
  running sum. The end needs no event: it is a change point of its own.

A spell is in force from `from_at` up to (not at) `to_at`. `governance.py`
reads the same spells just before an invite at `x`: a spell counts when
`from_at < x <= to_at`, whether its ends are events or time-based changes
(a cooldown expiring, a study opening or closing), since SPEC §3.2 reads
only facts strictly earlier than the invite.

Rule-based do-not-contact has no history in the exports and is left out.

Scale: with a million people, sorting by the `person_id` string and window
expressions `over("person_id")` dominate the run time. Every frame is therefore
keyed by `person_key` (a 64-bit hash of `person_id`, checked to be injective
over the people at T) and ordered by `instant_code`, the pair (person_key,
instant) packed into one Int128: a one-column sort, and as-of joins without
`by`. Scans are plain shifts that check the row they read belongs to the same
person. `person_id` strings are attached only to the finished history.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from datetime import datetime

import polars as pl

from statusbatch import codes
from statusbatch.config.job import CooldownSection
from statusbatch.engine import ENGINE
from statusbatch.models import contact
from statusbatch.models.facts import tie
from statusbatch.models.scans import carried_backward, first_in_run, last_in_run, running_sum

__all__ = [
    "ComponentTimelines",
    "injective_hash",
    "person_key",
    "instant_code",
    "all_cooldown_starts",
    "cooldown_clears",
    "state_per_instant",
    "active_spells",
    "cooldown_spells",
    "component_timelines",
    "status_code",
    "as_status",
    "status_of_components",
    "first_facts",
    "contact_status_history",
]

_INACTIVE_STAGES = ("not_started", *codes.TERMINAL_STAGES)
_INACTIVE_STATUSES = [status for status, stage in codes.PARTICIPANT_STAGE.items() if stage in _INACTIVE_STAGES]
"""The statuses of those stages: comparing the Enum is cheaper than mapping each row to its stage."""
_MAX_SEEDS = 16
_HALF = 2**63
_SPAN = 2**64
NEVER = 2**63 - 1
"""An Int64 instant after every real one: the end of a spell still running."""
_NO_ROW = 2**32 - 1
_COOLING = 2**32
"""The weight of a cooldown in the one running sum of both counts (an active spell weighs 1)."""


def instant_code(group: pl.Expr, instant: pl.Expr) -> pl.Expr:
    """(group, instant) as one Int128 that orders like the pair.

    `group` is an unsigned integer of up to 64 bits (`person_key`), `instant` a
    microsecond Datetime or its Int64. Sorting on one Int128 column is about twice
    as fast as on the two columns, and an as-of join on it needs no `by` (which
    hashes every row): the row it finds belongs to the same group when its group
    is the left row's.
    """
    return (group.cast(pl.Int128) - _HALF) * _SPAN + (instant.cast(pl.Int64).cast(pl.Int128) + _HALF)


# -- person key ---------------------------------------------------------------------------------


def injective_hash(frame: pl.LazyFrame, column: str) -> pl.Expr:
    """`column` hashed to UInt64 with a seed under which no two of its values in `frame` collide.

    Sorting and grouping by this integer instead of the string is what makes
    the large frames fast; the check makes it exact (a collision only changes the seed).
    The usual case, distinct values and no collision at seed 0, needs one pass over integers.
    """
    quick = frame.select(pl.len().alias("rows"), pl.col(column).hash(0).n_unique().alias("hashes")).collect()
    if quick.get_column("rows").item() == quick.get_column("hashes").item():
        return pl.col(column).hash(0)
    candidates = frame.select(
        pl.col(column).n_unique().alias("values"),
        *[pl.col(column).hash(seed).n_unique().alias(str(seed)) for seed in range(_MAX_SEEDS)],
    ).collect()
    values = candidates.get_column("values").item()
    for seed in range(_MAX_SEEDS):
        if candidates.get_column(str(seed)).item() == values:
            return pl.col(column).hash(seed)
    raise RuntimeError(f"no collision-free hash of {column} among {_MAX_SEEDS} seeds")


def person_key(people: pl.LazyFrame) -> pl.Expr:
    """The UInt64 that stands for `person_id` among the people at T."""
    return injective_hash(people, "person_id")


# -- component timelines ------------------------------------------------------------------------

_FRAMES = ("opted_out", "in_blocklist", "do_not_contact", "active_spells", "cooldown_spells")


@dataclass(frozen=True)
class ComponentTimelines:
    """Every event-driven component of the contact status as a timeline per person (lazy).

    Frames carry `person_key`, not `person_id`; each is sorted by (person_key, its first instant).
    """

    person_key: pl.Expr
    """How to turn `person_id` into the integer the frames are keyed by."""
    study_key: pl.Expr
    """How to turn `study_id` into an integer, injective over the studies."""
    opted_out: pl.LazyFrame
    """person_key, at, opted_out: one row per instant where the component was set."""
    in_blocklist: pl.LazyFrame
    """person_key, at, in_blocklist."""
    do_not_contact: pl.LazyFrame
    """person_key, at, do_not_contact (the manual flag only)."""
    active_spells: pl.LazyFrame
    """person_key, study_key, from_at, to_at: a participant active in an open study, in force from
    `from_at` up to (not at) `to_at`."""
    cooldown_spells: pl.LazyFrame
    """person_key, study_key, source, from_at, to_at: a cooldown in force from `from_at` up to (not at)
    `to_at`."""
    names: pl.LazyFrame
    """person_key, person_id of everyone with a fact: read only for a person missing from `people`."""

    def for_people(self, people: pl.LazyFrame) -> ComponentTimelines:
        """The timelines of the people in `people` (a `person_id` column) only."""
        keys = people.select(self.person_key.alias("person_key"))
        return replace(self, **{name: getattr(self, name).join(keys, on="person_key", how="semi") for name in _FRAMES})

    def materialized(self) -> ComponentTimelines:
        """The same timelines computed once, in memory: the history and the governance audit
        both read them, and a lazy plan shared by two queries would be computed twice.
        `names` stays lazy: it is rarely read."""
        frames = pl.collect_all([getattr(self, name) for name in _FRAMES], engine=ENGINE)
        return replace(self, **{name: frame.lazy() for name, frame in zip(_FRAMES, frames, strict=True)})


def _keyed(frame: pl.LazyFrame, key: pl.Expr, study_key: pl.Expr) -> pl.LazyFrame:
    """`frame` with `person_id` and `study_id` replaced by their keys: the change streams of
    `contact.py` then sort, compare and window on integers."""
    return frame.with_columns(key.alias("person_id"), study_key.alias("study_id"))


def all_cooldown_starts(events: pl.LazyFrame, observations: pl.LazyFrame, rules: CooldownSection) -> pl.LazyFrame:
    """Every cooldown ever started, including those a later `cooldown_cleared` ended.

    `contact.cooldown_starts` keeps the starts after the latest clear; with no
    clear in its input it keeps them all, so the start rules live in one place.
    `person_id` and `study_id` may be keys (`_keyed`).
    """
    return contact.cooldown_starts(events.filter(pl.col("event_type") != "cooldown_cleared"), observations, rules)


def cooldown_clears(events: pl.LazyFrame, key: pl.Expr) -> pl.LazyFrame:
    """person_key, at, tie: every manual end of the cooldowns in force."""
    return events.filter(pl.col("event_type") == "cooldown_cleared").select(
        key.alias("person_key"), pl.col("occurred_at").alias("at"), tie(pl.col("event_id")).alias("tie")
    )


def state_per_instant(changes: pl.LazyFrame, value: str) -> pl.LazyFrame:
    """person_key, at, <value>: the state each instant leaves; the last fact at an instant wins (§7.1).

    `changes` as `contact.py` makes them from `_keyed` inputs."""
    return (
        changes.select(
            pl.col("person_id").alias("person_key"),
            pl.col("changed_at").alias("at"),
            tie(pl.col("event_id")).alias("tie"),
            value,
        )
        .sort("person_key", "at", "tie")
        .filter(last_in_run("person_key", "at"))
        .select("person_key", "at", value)
    )


def active_spells(observations: pl.LazyFrame, studies: pl.LazyFrame, study_key: pl.Expr) -> pl.LazyFrame:
    """Spells during which a participant counts toward active_in_study (§3.2).

    Its status (the latest observation) is neither `not_started` nor terminal,
    and its study is open: `[max(status start, opened_at), min(status end,
    closed_at))`; a spell still running at T has a null end. `observations`
    (`_keyed`) must be in fact order per participant, as `participant_observations`
    returns them. Sorted by (person_key, from_at).
    """
    participant = ("study_id", "person_id")
    active = ~pl.col("participant_status").is_in(_INACTIVE_STATUSES)
    changes = (
        observations.filter(last_in_run(*participant, "at"))
        .with_columns(active.alias("active"))
        .filter(pl.col("active") != pl.when(first_in_run(*participant)).then(False).otherwise(pl.col("active").shift(1)))
        .with_columns(pl.when(~last_in_run(*participant)).then(pl.col("at").shift(-1)).alias("status_ends_at"))
        .filter(pl.col("active"))
    )
    windows = studies.select(study_key.alias("study_id"), "opened_at", "closed_at")
    return (
        changes.join(windows, on="study_id", how="left")
        .select(
            pl.col("person_id").alias("person_key"),
            pl.col("study_id").alias("study_key"),
            pl.max_horizontal("at", "opened_at").alias("from_at"),
            pl.min_horizontal("status_ends_at", "closed_at").alias("to_at"),
        )
        .filter(pl.col("to_at").is_null() | (pl.col("from_at") < pl.col("to_at")))
        .sort(instant_code(pl.col("person_key"), pl.col("from_at")))
    )


def cooldown_spells(starts: pl.LazyFrame, clears: pl.LazyFrame) -> pl.LazyFrame:
    """Each cooldown from its start to the earlier of its `cooldown_until` and the next clear.

    `starts` as `all_cooldown_starts` from `_keyed` inputs, `clears` as `cooldown_clears`.
    A start ordered after a clear at the same instant survives it (§7.1); a
    start whose end is not after it (a manual date in the past) is never in force.
    Sorted by (person_key, from_at).
    """
    ordered = pl.concat(
        [
            starts.select(
                pl.col("person_id").alias("person_key"),
                "at",
                "tie",
                pl.col("study_id").alias("study_key"),
                "source",
                "cooldown_until",
                pl.lit(False).alias("is_clear"),
            ),
            clears.select("person_key", "at", "tie", pl.lit(True).alias("is_clear")),
        ],
        how="diagonal",
    ).sort(instant_code(pl.col("person_key"), pl.col("at")), "tie")
    next_clear = carried_backward(pl.when(pl.col("is_clear")).then(pl.col("at")))
    return (
        ordered.with_columns(next_clear.alias("cleared_at"))
        .filter(~pl.col("is_clear"))
        .select(
            "person_key",
            "study_key",
            "source",
            pl.col("at").alias("from_at"),
            pl.min_horizontal("cleared_at", "cooldown_until").alias("to_at"),
        )
        .filter(pl.col("from_at") < pl.col("to_at"))
    )


def component_timelines(
    people: pl.LazyFrame,
    events: pl.LazyFrame,
    observations: pl.LazyFrame,
    studies: pl.LazyFrame,
    cooldown: CooldownSection,
    no_show_threshold: int,
) -> ComponentTimelines:
    """Every event-driven component of §3.2 as a timeline, from the facts that exist at T."""
    key = person_key(people)
    study_key = injective_hash(studies, "study_id")
    keyed_events, keyed_observations = (_keyed(frame, key, study_key) for frame in (events, observations))
    names = pl.concat([events.select("person_id"), observations.select("person_id")]).unique()
    return ComponentTimelines(
        person_key=key,
        study_key=study_key,
        opted_out=state_per_instant(contact.opt_out_changes(keyed_events, keyed_observations), "opted_out"),
        in_blocklist=state_per_instant(
            contact.blocklist_changes(keyed_events, keyed_observations, no_show_threshold), "in_blocklist"
        ),
        do_not_contact=state_per_instant(contact.manual_dnc_changes(keyed_events), "do_not_contact"),
        active_spells=active_spells(keyed_observations, studies, study_key),
        cooldown_spells=cooldown_spells(
            all_cooldown_starts(keyed_events, keyed_observations, cooldown), cooldown_clears(events, key)
        ),
        names=names.select(key.alias("person_key"), "person_id"),
    )


# -- the history --------------------------------------------------------------------------------

_FLAGS = ("opted_out", "in_blocklist", "do_not_contact")
_COUNTS = ("active_in_study", "in_cooldown")


def status_code(holds: dict[str, pl.Expr]) -> pl.Expr:
    """`contact.status_by_precedence` as the status's index in `codes.CONTACT_STATUSES` (UInt8).

    Comparing and filtering small integers, and making the Enum once at the end with
    `as_status`, is about 30x faster than a chain of Enum literals over millions of rows.
    """
    *components, _ = codes.CONTACT_STATUSES
    chain = pl.when(False).then(pl.lit(None, pl.UInt8))
    for index, status in enumerate(components):
        if status in holds:
            chain = chain.when(holds[status]).then(pl.lit(index, pl.UInt8))
    return chain.otherwise(pl.lit(len(components), pl.UInt8))


def as_status(code: pl.Expr) -> pl.Expr:
    """The `codes.ContactStatus` of a `status_code`."""
    return pl.lit(pl.Series(codes.CONTACT_STATUSES).cast(codes.ContactStatus)).gather(code)


def status_of_components() -> pl.Expr:
    """The `status_code` of a row with every component (counts > 0 hold)."""
    holds = {name: pl.col(name) for name in _FLAGS} | {name: pl.col(name) > 0 for name in _COUNTS}
    return status_code(holds)


def _change_points(timelines: ComponentTimelines) -> list[pl.LazyFrame]:
    """person_key, at, kind, value: one row per change of a component (kind: its index in
    _FLAGS + _COUNTS); value: a flag as 0/1, +1 / -1 where a spell starts or ends."""
    flags = [
        getattr(timelines, flag).select(
            "person_key", "at", pl.lit(kind, pl.Int8).alias("kind"), pl.col(flag).cast(pl.Int8).alias("value")
        )
        for kind, flag in enumerate(_FLAGS)
    ]
    counts = [
        spells.filter(pl.col(f"{end}_at").is_not_null()).select(
            "person_key",
            pl.col(f"{end}_at").alias("at"),
            pl.lit(kind, pl.Int8).alias("kind"),
            pl.lit(delta, pl.Int8).alias("value"),
        )
        for kind, spells in enumerate((timelines.active_spells, timelines.cooldown_spells), start=len(_FLAGS))
        for end, delta in (("from", 1), ("to", -1))
    ]
    return [*flags, *counts]


def first_facts(events: list[pl.DataFrame], observations: pl.LazyFrame, as_of: datetime) -> pl.LazyFrame:
    """person_id, first_fact_at: each person's earliest fact up to T of any kind — an event of any
    log, an observation from when a run first knows it — where a history starts if it is before
    `created_at` (SPEC §4), though a fact that sets no component changes no status."""
    known = pl.max_horizontal("at", "added_at") if "added_at" in observations.collect_schema() else pl.col("at")
    times = [_earliest_per_person(log.select("person_id", pl.col("occurred_at").alias("at"))) for log in events]
    times.append(observations.select("person_id", known.alias("at")))
    return (
        pl.concat(times)
        .filter(pl.col("at") <= as_of)
        .group_by("person_id")
        .agg(pl.col("at").min().alias("first_fact_at"))
    )


def _earliest_per_person(log: pl.DataFrame) -> pl.LazyFrame:
    """Each person's rows reduced to the earliest: the first row of each person's run when the log is
    in (person, time) order, as a file written person by person in time order reads (a check of a
    few ms); otherwise every row, left to the caller's group-by (~5x the time)."""
    person, at = log.get_column("person_id"), log.get_column("at")
    if log.height < 2 or person.null_count() or not person.is_sorted():
        return log.lazy()
    starts = person.ne_missing(person.shift(1)).fill_null(True)
    if not (starts | at.ge(at.shift(1)).fill_null(True)).all():
        return log.lazy()
    return log.filter(starts).lazy()


def contact_status_history(
    people: pl.LazyFrame, timelines: ComponentTimelines, as_of: datetime, first_facts: pl.LazyFrame | None = None
) -> pl.LazyFrame:
    """person_id, contact_status, valid_from, valid_to: every interval of each person's status up to T.

    Change points are every fact, every spell end (cooldown ends, study
    openings and closings) and the person's `created_at`; a history starts at
    the earliest of `created_at`, the first fact that changes a component and
    the first fact of any kind (`first_facts`, when given). Equal neighbours
    merge; the current interval has a null `valid_to`.
    """
    directory = people.select("person_id", "created_at")
    starts = ["created_at"]
    if first_facts is not None:
        directory = directory.join(first_facts, on="person_id", how="left", maintain_order="left")
        starts.append("first_fact_at")
    directory = directory.collect()
    ids = directory.get_column("person_id").rechunk()  # gathers from one chunk are fast
    created = directory.lazy().select(
        timelines.person_key.alias("person_key"),
        pl.min_horizontal(starts).alias("at"),
        pl.int_range(pl.len(), dtype=pl.UInt32).alias("person_row"),
    )
    kind, first, last = pl.col("kind"), pl.col("first"), pl.col("last")

    def flag(index: int) -> pl.Expr:
        # the latest value of this flag, reset to 0 on the person's first row
        return pl.when(kind == index).then(pl.col("value")).when(first).then(0).forward_fill() == 1

    # both counts in one running sum: active spells + _COOLING x cooldowns (never negative at
    # the last row of an instant, the only one read)
    value = pl.col("value").cast(pl.Int64)
    weighted = pl.when(kind == len(_FLAGS)).then(value).when(kind == len(_FLAGS) + 1).then(value * _COOLING).otherwise(0)
    counts = running_sum(weighted, first)

    # the row of the person in `people`: the created row's, carried to the person's other rows
    none = pl.lit(_NO_ROW, pl.UInt32)
    row = pl.col("person_row")
    after = pl.when(row.is_not_null()).then(row).when(first).then(none).forward_fill()
    before = pl.when(row.is_not_null()).then(row).when(last).then(none).backward_fill()
    states = (
        pl.concat([created, *_change_points(timelines)], how="diagonal")
        .filter(pl.col("at") <= as_of)
        .sort(instant_code(pl.col("person_key"), pl.col("at")))
        .with_columns(first_in_run("person_key").alias("first"), last_in_run("person_key").alias("last"))
        .with_columns(
            *[flag(index).alias(name) for index, name in enumerate(_FLAGS)],
            (counts % _COOLING).alias("active_in_study"),
            (counts // _COOLING).alias("in_cooldown"),
            pl.when(after != none).then(after).when(before != none).then(before).alias("person_row"),
        )
        # the state after every fact at an instant: the last row of the instant
        .filter(last_in_run("person_key", "at"))
        .select("person_key", "person_row", "at", status_of_components().alias("status"))
    )
    changed = first_in_run("person_key") | (pl.col("status") != pl.col("status").shift(1))
    intervals = (
        states.filter(changed)
        .select(
            "person_key",
            "person_row",
            "status",
            pl.col("at").alias("valid_from"),
            pl.when(~last_in_run("person_key")).then(pl.col("at").shift(-1)).alias("valid_to"),
        )
        .collect()  # the caller's engine: streaming alone was faster here than ENGINE, equal within a run's range
    )
    named = intervals.select(
        pl.lit(ids).gather(pl.col("person_row")).alias("person_id"),
        as_status(pl.col("status")).alias("contact_status"),
        "valid_from",
        "valid_to",
    )
    if intervals.get_column("person_row").null_count():
        # someone with facts but not in `people` (created after T): named from the facts
        names = timelines.names.unique("person_key", keep="first").collect()
        found = intervals.select("person_key").join(names, on="person_key", how="left", maintain_order="left")
        named = named.with_columns(pl.col("person_id").fill_null(found.get_column("person_id")))
    return named.lazy()
