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

Spells carry two instants per end: `at`, when the change takes effect, and
`key`, the instant that `governance.py` compares strictly with an invite's
time (a fact at `y` counts for an invite at `x` when `y < x`; a time-based
change at `y` — a cooldown expiring, a study opening or closing — when
`y <= x`, hence `key = y - 1µs`).

Rule-based do-not-contact has no history in the exports and is left out.

Scale: with a million people, sorting by the `person_id` string and window
expressions `over("person_id")` dominate the run time. The large frames are
therefore sorted by `person_key` (a 64-bit hash of `person_id`, checked to be
injective over the people at T) and scanned with plain shifts, each scan
checking that the row it reads from belongs to the same person.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from datetime import datetime, timedelta
from typing import Literal

import polars as pl

from statusbatch import codes
from statusbatch.config.job import CooldownSection
from statusbatch.models import contact
from statusbatch.models.facts import tie
from statusbatch.models.participants import stage_of

__all__ = [
    "ComponentTimelines",
    "MICROSECOND",
    "injective_hash",
    "person_key",
    "all_cooldown_starts",
    "cooldown_clears",
    "state_per_instant",
    "active_spells",
    "cooldown_spells",
    "spell_deltas",
    "component_timelines",
    "component_states",
    "status_of_components",
    "contact_status_history",
    "first_in_run",
    "last_in_run",
    "carried_forward",
    "carried_backward",
    "running_sum",
]

MICROSECOND = timedelta(microseconds=1)
"""The resolution of every instant: a time-based change at `y` is seen by an invite at `y`."""

_INACTIVE_STAGES = ("not_started", *codes.TERMINAL_STAGES)
_MAX_SEEDS = 16


# -- segmented scans over frames sorted by key -------------------------------------------------


def first_in_run(*keys: str) -> pl.Expr:
    """True on the first row of each run of equal non-null `keys` (the frame sorted by them)."""
    return pl.any_horizontal([pl.col(k).ne_missing(pl.col(k).shift(1)) for k in keys])


def last_in_run(*keys: str) -> pl.Expr:
    """True on the last row of each run of equal `keys`."""
    return pl.any_horizontal([pl.col(k).ne_missing(pl.col(k).shift(-1)) for k in keys])


def carried_forward(value: pl.Expr, key: str = "person_key") -> pl.Expr:
    """The latest non-null `value` at or before each row, within the row's `key` (null if none)."""
    owner = pl.when(value.is_not_null()).then(pl.col(key)).forward_fill()
    return pl.when(owner == pl.col(key)).then(value.forward_fill())


def carried_backward(value: pl.Expr, key: str = "person_key") -> pl.Expr:
    """The earliest non-null `value` at or after each row, within the row's `key` (null if none)."""
    owner = pl.when(value.is_not_null()).then(pl.col(key)).backward_fill()
    return pl.when(owner == pl.col(key)).then(value.backward_fill())


def running_sum(value: pl.Expr, first: pl.Expr) -> pl.Expr:
    """Cumulative sum of `value` restarting on every row where `first` holds."""
    total = value.cum_sum()
    return total - pl.when(first).then(total - value).forward_fill()


# -- person key ---------------------------------------------------------------------------------


def injective_hash(frame: pl.LazyFrame, column: str) -> pl.Expr:
    """`column` hashed to UInt64 with a seed under which no two of its values in `frame` collide.

    Sorting and grouping by this integer instead of the string is what makes
    the large frames fast; the check makes it exact (a collision only changes the seed).
    """
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


@dataclass(frozen=True)
class ComponentTimelines:
    """Every event-driven component of the contact status as a timeline per person (lazy)."""

    person_key: pl.Expr
    """How to turn `person_id` into the integer the large frames are sorted by."""
    study_key: pl.Expr
    """How to turn `study_id` into an integer, injective over the studies."""
    opted_out: pl.LazyFrame
    """person_id, at, opted_out: one row per instant where the component was set."""
    in_blocklist: pl.LazyFrame
    """person_id, at, in_blocklist."""
    do_not_contact: pl.LazyFrame
    """person_id, at, do_not_contact (the manual flag only)."""
    active_spells: pl.LazyFrame
    """person_id, study_id, from_at, to_at, from_key, to_key: a participant active in an open study."""
    cooldown_spells: pl.LazyFrame
    """person_id, study_id, source, event_id, from_at, to_at, from_key, to_key: a cooldown in force."""

    def for_people(self, people: pl.LazyFrame) -> ComponentTimelines:
        """The timelines of the people in `people` (a `person_id` column) only."""
        names = ("opted_out", "in_blocklist", "do_not_contact", "active_spells", "cooldown_spells")
        return replace(
            self, **{name: getattr(self, name).join(people, on="person_id", how="semi") for name in names}
        )

    def materialized(self) -> ComponentTimelines:
        """The same timelines computed once, in memory: the history and the governance audit
        both read them, and a lazy plan shared by two queries would be computed twice."""
        names = ("opted_out", "in_blocklist", "do_not_contact", "active_spells", "cooldown_spells")
        frames = pl.collect_all([getattr(self, name) for name in names])
        return replace(self, **{name: frame.lazy() for name, frame in zip(names, frames, strict=True)})


def all_cooldown_starts(events: pl.LazyFrame, observations: pl.LazyFrame, rules: CooldownSection) -> pl.LazyFrame:
    """Every cooldown ever started, including those a later `cooldown_cleared` ended.

    `contact.cooldown_starts` keeps the starts after the latest clear; with no
    clear in its input it keeps them all, so the start rules live in one place.
    """
    return contact.cooldown_starts(events.filter(pl.col("event_type") != "cooldown_cleared"), observations, rules)


def cooldown_clears(events: pl.LazyFrame) -> pl.LazyFrame:
    """person_id, at, tie: every manual end of the cooldowns in force."""
    return events.filter(pl.col("event_type") == "cooldown_cleared").select(
        "person_id", pl.col("occurred_at").alias("at"), tie(pl.col("event_id")).alias("tie")
    )


def state_per_instant(changes: pl.LazyFrame, value: str) -> pl.LazyFrame:
    """person_id, at, <value>: the state each instant leaves; the last fact at an instant wins (§7.1)."""
    return (
        changes.select("person_id", pl.col("changed_at").alias("at"), tie(pl.col("event_id")).alias("tie"), value)
        .sort("person_id", "at", "tie")
        .filter(last_in_run("person_id", "at"))
        .select("person_id", "at", value)
    )


def active_spells(observations: pl.LazyFrame, studies: pl.LazyFrame) -> pl.LazyFrame:
    """Spells during which a participant counts toward active_in_study (§3.2).

    Its status (the latest observation) is neither `not_started` nor terminal,
    and its study is open: `[max(status start, opened_at), min(status end,
    closed_at))`; a spell still running at T has a null end. `observations`
    must be in fact order per participant, as `participant_observations` returns them.
    """
    participant = ("study_id", "person_id")
    active = ~stage_of(pl.col("participant_status")).is_in(_INACTIVE_STAGES)
    changes = (
        observations.filter(last_in_run(*participant, "at"))
        .with_columns(active.alias("active"))
        .filter(pl.col("active") != pl.when(first_in_run(*participant)).then(False).otherwise(pl.col("active").shift(1)))
        .with_columns(pl.when(~last_in_run(*participant)).then(pl.col("at").shift(-1)).alias("status_ends_at"))
        .filter(pl.col("active"))
    )
    return (
        changes.join(studies.select("study_id", "opened_at", "closed_at"), on="study_id", how="left")
        .select(
            "person_id",
            "study_id",
            pl.max_horizontal("at", "opened_at").alias("from_at"),
            pl.min_horizontal("status_ends_at", "closed_at").alias("to_at"),
            pl.max_horizontal("at", pl.col("opened_at") - MICROSECOND).alias("from_key"),
            pl.min_horizontal("status_ends_at", pl.col("closed_at") - MICROSECOND).alias("to_key"),
        )
        .filter(pl.col("to_at").is_null() | (pl.col("from_at") < pl.col("to_at")))
    )


def cooldown_spells(starts: pl.LazyFrame, clears: pl.LazyFrame, key: pl.Expr) -> pl.LazyFrame:
    """Each cooldown from its start to the earlier of its `cooldown_until` and the next clear.

    A start ordered after a clear at the same instant survives it (§7.1); a
    start whose end is not after it (a manual date in the past) is never in force.
    """
    ordered = (
        pl.concat(
            [
                starts.select(
                    "person_id", "at", "tie", "study_id", "source", "event_id", "cooldown_until",
                    pl.lit(False).alias("is_clear"),
                ),
                clears.select("person_id", "at", "tie", pl.lit(True).alias("is_clear")),
            ],
            how="diagonal",
        )
        .with_columns(key.alias("person_key"))
        .sort("person_key", "at", "tie")
    )
    next_clear = carried_backward(pl.when(pl.col("is_clear")).then(pl.col("at")))
    return (
        ordered.with_columns(next_clear.alias("cleared_at"))
        .filter(~pl.col("is_clear"))
        .select(
            "person_id",
            "study_id",
            "source",
            "event_id",
            pl.col("at").alias("from_at"),
            pl.min_horizontal("cleared_at", "cooldown_until").alias("to_at"),
            pl.col("at").alias("from_key"),
            pl.min_horizontal("cleared_at", pl.col("cooldown_until") - MICROSECOND).alias("to_key"),
        )
        .filter(pl.col("from_at") < pl.col("to_at"))
    )


def spell_deltas(spells: pl.LazyFrame, as_of: datetime, by: tuple[str, ...] = ("person_id",)) -> pl.LazyFrame:
    """`by`, at, key, delta: +1 where a spell starts, -1 where it ends, at or before T."""
    columns = list(by)
    starts = spells.select(*columns, pl.col("from_at").alias("at"), pl.col("from_key").alias("key"), pl.lit(1, pl.Int32).alias("delta"))
    ends = spells.filter(pl.col("to_at").is_not_null()).select(
        *columns, pl.col("to_at").alias("at"), pl.col("to_key").alias("key"), pl.lit(-1, pl.Int32).alias("delta")
    )
    return pl.concat([starts, ends]).filter(pl.col("at") <= as_of)


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
    return ComponentTimelines(
        person_key=key,
        study_key=injective_hash(studies, "study_id"),
        opted_out=state_per_instant(contact.opt_out_changes(events, observations), "opted_out"),
        in_blocklist=state_per_instant(
            contact.blocklist_changes(events, observations, no_show_threshold), "in_blocklist"
        ),
        do_not_contact=state_per_instant(contact.manual_dnc_changes(events), "do_not_contact"),
        active_spells=active_spells(observations, studies),
        cooldown_spells=cooldown_spells(
            all_cooldown_starts(events, observations, cooldown), cooldown_clears(events), key
        ),
    )


_FLAGS = ("opted_out", "in_blocklist", "do_not_contact")
_COUNTS = ("active_in_study", "in_cooldown")


def component_states(
    timelines: ComponentTimelines,
    cooldown_spells: pl.LazyFrame,
    as_of: datetime,
    *,
    instant: Literal["at", "key"] = "at",
    extra_points: pl.LazyFrame | None = None,
) -> pl.LazyFrame:
    """person_key, person_id, <instant>, every component: the state after each change point, sorted.

    `instant` chooses where spell ends take effect: `at` for the history,
    `key` for comparisons strictly before an invite (see the module docstring).
    `active_in_study` and `in_cooldown` are counts of spells in force.
    `extra_points` (person_id, <instant>) adds change points without a change.
    """
    flag_streams = [
        getattr(timelines, flag).rename({"at": instant}) if instant != "at" else getattr(timelines, flag)
        for flag in _FLAGS
    ]
    count_streams = [
        spell_deltas(spells, as_of).select("person_id", pl.col(instant), pl.col("delta").alias(count))
        for count, spells in (("active_in_study", timelines.active_spells), ("in_cooldown", cooldown_spells))
    ]
    person_first = first_in_run("person_key")
    return (
        pl.concat([*([extra_points] if extra_points is not None else []), *flag_streams, *count_streams], how="diagonal")
        .filter(pl.col(instant) <= as_of)
        .with_columns(timelines.person_key.alias("person_key"))
        .sort("person_key", instant)
        .with_columns(
            *[carried_forward(pl.col(flag)).fill_null(False).alias(flag) for flag in _FLAGS],
            *[running_sum(pl.col(count).fill_null(0), person_first).alias(count) for count in _COUNTS],
        )
        # the state after every fact at an instant: the last row of the instant
        .filter(last_in_run("person_key", instant))
        .select("person_key", "person_id", instant, *_FLAGS, *_COUNTS)
    )


def status_of_components() -> pl.Expr:
    """The contact status of a row of `component_states` (counts > 0 hold)."""
    holds = {name: pl.col(name) for name in _FLAGS} | {name: pl.col(name) > 0 for name in _COUNTS}
    return contact.status_by_precedence(holds)


def contact_status_history(people: pl.LazyFrame, timelines: ComponentTimelines, as_of: datetime) -> pl.LazyFrame:
    """person_id, contact_status, valid_from, valid_to: every interval of each person's status up to T.

    Change points are every fact, every spell end (cooldown ends, study
    openings and closings) and the person's `created_at`; a history starts at
    the earlier of `created_at` and the first fact. Equal neighbours merge;
    the current interval has a null `valid_to`.
    """
    created = people.select("person_id", pl.col("created_at").alias("at"))
    states = component_states(timelines, timelines.cooldown_spells, as_of, extra_points=created)
    changed = first_in_run("person_key") | pl.col("contact_status").ne_missing(pl.col("contact_status").shift(1))
    return (
        states.select("person_key", "person_id", "at", status_of_components().alias("contact_status"))
        .filter(changed)
        .select(
            "person_id",
            "contact_status",
            pl.col("at").alias("valid_from"),
            pl.when(~last_in_run("person_key")).then(pl.col("at").shift(-1)).alias("valid_to"),
        )
    )
