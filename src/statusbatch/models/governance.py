"""Governance audit: invites sent to people who were not free to contact (SPEC §3.2, §7.10).

Every `invited` event at or before T is checked against the person's contact
status just before it, read from the component timelines of `history.py` with
backward as-of joins that exclude exact matches: only what happened strictly
earlier than the invite's `occurred_at` counts, whatever the event ids. That
holds for events (an opt-out at the very instant of an invite does not make it
a violation) and for time-based changes alike (a cooldown ending at the
invite's instant is still in force just before it; a study opening then is
not yet open).

What the inviting study itself contributes is left out: its participant's
share of active_in_study, the cooldowns its own invites and completions
started, and its triggers in the counts of the rolling limits. Its opt-outs,
hard bounces and no-shows still count. Rule-based do-not-contact has no
history and is left out.

Every as-of join is on `instant_code` (person and instant in one Int128), not
`by` person: see `history.instant_code`.
"""

from __future__ import annotations

from datetime import datetime, timedelta

import polars as pl

from statusbatch import codes
from statusbatch.config.job import CooldownLimit, CooldownSection
from statusbatch.engine import ENGINE
from statusbatch.models.facts import tie
from statusbatch.models.history import (
    NEVER,
    ComponentTimelines,
    as_status,
    cooldown_clears,
    instant_code,
    status_code,
)
from statusbatch.models.scans import carried_forward, first_in_run, last_in_run, running_sum
from statusbatch.models.participants import status_transitions

__all__ = [
    "VIOLATION_KINDS",
    "invites",
    "limit_triggers",
    "limit_in_force",
    "status_before_invites",
    "governance_violations",
]

VIOLATION_KINDS: tuple[str, ...] = ("not_overridable", "override_required", "overridden")
_NOT_OVERRIDABLE = ("opted_out", "in_blocklist")
_OWN_SOURCES = ("invite", "completion")
_FLAGS = ("opted_out", "in_blocklist", "do_not_contact")
_NOT_OWN = -1
"""The study of a spell no invite owns (a manual cooldown): no study key is negative."""


def _as_of(
    left: pl.LazyFrame,
    right: pl.LazyFrame,
    values: list[str],
    *,
    on: str = "code",
    owner: str = "person_key",
    strictly_before: bool = True,
) -> pl.LazyFrame:
    """`left` with `values` of the latest `right` row of the same `owner` whose `code` is before
    the left row's `on` (null if none).

    `right` is sorted by `code`, `left` by `on`; codes are `instant_code(owner, instant)`, so
    the row found belongs to the left row's owner or to an earlier one. `strictly_before`
    leaves out a right row at the very instant.
    """
    found = left.join_asof(
        right.select(pl.col("code").alias("_code"), pl.col(owner).alias("_owner"), *values),
        left_on=on,
        right_on="_code",
        strategy="backward",
        allow_exact_matches=not strictly_before,
        check_sortedness=False,
        coalesce=False,
    )
    mine = pl.col("_owner") == pl.col(owner)
    return found.with_columns(pl.when(mine).then(pl.col(v)).alias(v) for v in values).drop("_code", "_owner")


def _count_in_run(first: pl.Expr) -> pl.Expr:
    """1, 2, 3, ... restarting on every row where `first` holds."""
    row = pl.int_range(pl.len(), dtype=pl.Int64)
    return row + 1 - pl.when(first).then(row).forward_fill()


def invites(events: pl.LazyFrame, as_of: datetime) -> pl.LazyFrame:
    """event_id, person_id, study_id, occurred_at, reason: every invite by T, in the log's order."""
    return events.filter((pl.col("event_type") == "invited") & (pl.col("occurred_at") <= as_of)).select(
        "event_id", "person_id", "study_id", "occurred_at", "reason"
    )


def _in_fact_order(invited: pl.LazyFrame, key: pl.Expr, study_key: pl.Expr) -> pl.LazyFrame:
    """row, person_key, study_key, occurred_at, tie, code: `invited` in fact order per person
    (`row`: the index in `invited`; `code`: the person and `occurred_at`). The strings stay
    behind: only the violations need them."""
    return invited.select(
        pl.int_range(pl.len(), dtype=pl.UInt32).alias("row"),
        key.alias("person_key"),
        study_key.alias("study_key"),
        "occurred_at",
        tie(pl.col("event_id")).alias("tie"),
        instant_code(key, pl.col("occurred_at")).alias("code"),
    ).sort("code", "tie")


def limit_triggers(
    invited: pl.LazyFrame, observations: pl.LazyFrame, limit: CooldownLimit, key: pl.Expr, study_key: pl.Expr
) -> pl.LazyFrame:
    """person_key, study_key, at, tie, code: the facts a rolling limit counts, in fact order per person.

    Invites after T are left out: only triggers before an invite count, and every invite is by T.
    """
    if limit.trigger == "invite":
        return invited.select("person_key", "study_key", pl.col("occurred_at").alias("at"), "tie", "code")
    return (
        status_transitions(observations, codes.COMPLETION_STATUSES)
        .select(key.alias("person_key"), study_key.alias("study_key"), "at", tie(pl.col("event_id")).alias("tie"))
        .with_columns(instant_code(pl.col("person_key"), pl.col("at")).alias("code"))
        .sort("code", "tie")
    )


def _seen(triggers: pl.LazyFrame, owner: str) -> pl.LazyFrame:
    """code, `owner`, seen: how many of the owner's triggers happened at or before each instant
    (`triggers` sorted by `code`)."""
    return (
        triggers.with_columns(_count_in_run(first_in_run(owner)).alias("seen"))
        .filter(last_in_run("code"))
        .select("code", owner, "seen")
    )


def _latest_with_other_study(triggers: pl.LazyFrame) -> pl.LazyFrame:
    """code, person_key, latest_at, latest_study, latest_tie, other_at, other_tie: per instant, the
    latest trigger and the latest one before it from another study (the end of the previous same-study run)."""
    run_end = last_in_run("person_key", "study_key")
    previous = ~first_in_run("person_key")
    return (
        triggers.with_columns(
            carried_forward(pl.when(previous).then(pl.when(run_end).then(pl.col(c)).shift(1))).alias(f"other_{c}")
            for c in ("at", "tie")
        )
        .filter(last_in_run("code"))
        .select(
            "code",
            "person_key",
            pl.col("at").alias("latest_at"),
            pl.col("study_key").alias("latest_study"),
            pl.col("tie").alias("latest_tie"),
            "other_at",
            "other_tie",
        )
    )


def _own_seen(invited: pl.LazyFrame, triggers: pl.LazyFrame, limit: CooldownLimit) -> pl.LazyFrame:
    """own_now, own_then: per invite of `invited` (in its order), how many triggers of its own
    participant happened before it and before the opening of its window.

    Invites and triggers are sorted together by participant and instant; `part`, the
    participant's rank in that order, makes the instant codes of a participant.
    """
    probes = invited.select(
        pl.int_range(pl.len(), dtype=pl.UInt32).alias("position"),
        "person_key",
        "study_key",
        pl.col("occurred_at").alias("at"),
    )
    participant = instant_code(pl.col("person_key"), pl.col("study_key").reinterpret(signed=True)).alias("participant")
    if limit.trigger == "invite":  # the invites are the triggers, already in instant order per person
        rows = probes.with_columns(pl.lit(1, pl.Int64).alias("trigger"), participant)
        rows = rows.sort("participant", maintain_order=True)
    else:
        rows = pl.concat(
            [
                probes.with_columns(pl.lit(0, pl.Int64).alias("trigger")),
                triggers.select("person_key", "study_key", "at", pl.lit(1, pl.Int64).alias("trigger")),
            ],
            how="diagonal",
        )
        rows = rows.with_columns(participant).sort("participant", "at")
    first = first_in_run("participant")
    seen = running_sum(pl.col("trigger"), first)
    before = pl.when(first_in_run("participant", "at")).then(pl.col("seen") - pl.col("trigger")).forward_fill()
    counted = rows.with_columns(first.cum_sum().cast(pl.UInt64).alias("part"), seen.alias("seen")).with_columns(
        instant_code(pl.col("part"), pl.col("at")).alias("code"),
        before.alias("own_now"),  # the triggers before the first row at this instant
    )
    by_then = counted.filter(last_in_run("code")).select("code", "part", pl.col("seen").alias("own_then"))
    window = pl.col("at") - timedelta(days=limit.window_days)
    asked = counted.filter(pl.col("position").is_not_null()).select(
        "position", "part", "own_now", instant_code(pl.col("part"), window).alias("window_code")
    )
    asked = _as_of(asked, by_then, ["own_then"], on="window_code", owner="part")
    return asked.sort("position").select("own_now", "own_then")


def limit_in_force(
    invited: pl.LazyFrame,
    triggers: pl.LazyFrame,
    clears: pl.LazyFrame,
    limit: CooldownLimit,
    name: str,
) -> pl.LazyFrame:
    """`name`: per invite of `invited` (`_in_fact_order`, in its order), whether the rolling limit
    holds just before it, the inviting study's own triggers taken out of its counts.

    A limit holds just before x when at least `count` other-study triggers fall in
    `[x - window, x)` and the latest of them is after the latest clear: the
    latest limit cooldown started after the clear ends when the oldest of the
    last `count` triggers leaves the window (§2, §3.2).
    """
    window = pl.col("occurred_at") - timedelta(days=limit.window_days)
    total = _seen(triggers, "person_key")
    latest = _latest_with_other_study(triggers)
    latest_clear = (
        clears.with_columns(instant_code(pl.col("person_key"), pl.col("at")).alias("code"))
        .sort("code", "tie")
        .filter(last_in_run("code"))
        .select("code", "person_key", pl.col("at").alias("clear_at"), pl.col("tie").alias("clear_tie"))
    )
    checked = invited.select(
        "row", "person_key", "study_key", "code", instant_code(pl.col("person_key"), window).alias("window_code")
    )
    checked = _as_of(checked, total.rename({"seen": "total_now"}), ["total_now"])
    checked = _as_of(checked, total.rename({"seen": "total_then"}), ["total_then"], on="window_code")
    checked = _as_of(checked, latest, ["latest_at", "latest_study", "latest_tie", "other_at", "other_tie"])
    checked = _as_of(checked, latest_clear, ["clear_at", "clear_tie"])
    checked = pl.concat([checked, _own_seen(invited, triggers, limit)], how="horizontal")

    latest_is_other = pl.col("latest_study") != pl.col("study_key")
    other_at = pl.when(latest_is_other).then(pl.col("latest_at")).otherwise(pl.col("other_at"))
    other_tie = pl.when(latest_is_other).then(pl.col("latest_tie")).otherwise(pl.col("other_tie"))
    after_clear = pl.col("clear_at").is_null() | (other_at > pl.col("clear_at")) | (
        (other_at == pl.col("clear_at")) & (other_tie > pl.col("clear_tie"))
    )
    now, then, own_now, own_then = (pl.col(c).fill_null(0) for c in ("total_now", "total_then", "own_now", "own_then"))
    in_window = (now - then) - (own_now - own_then)
    holds = (other_at.is_not_null() & after_clear & (in_window >= limit.count)).fill_null(False)
    return checked.select(holds.alias(name))


def _flags_before(timelines: ComponentTimelines, as_of: datetime) -> pl.LazyFrame:
    """code, person_key, opted_out, in_blocklist, do_not_contact: the flags each instant leaves."""
    changes = pl.concat(
        [
            getattr(timelines, flag).select(
                "person_key", "at", pl.lit(kind, pl.Int8).alias("kind"), pl.col(flag).alias("value")
            )
            for kind, flag in enumerate(_FLAGS)
        ]
    )
    return (
        changes.filter(pl.col("at") <= as_of)
        .with_columns(instant_code(pl.col("person_key"), pl.col("at")).alias("code"))
        .sort("code")
        .with_columns(
            carried_forward(pl.when(pl.col("kind") == kind).then(pl.col("value"))).alias(flag)
            for kind, flag in enumerate(_FLAGS)
        )
        .filter(last_in_run("code"))
        .select("code", "person_key", *_FLAGS)
    )


def _latest_ends(spells: pl.LazyFrame, study: pl.Expr, prefix: str) -> pl.LazyFrame:
    """code, person_key, <prefix>_end, <prefix>_study, <prefix>_other: per instant where a person's
    spells start (`spells` sorted by person_key, from_at), over the spells started by then: the
    latest end, the study of a spell ending then, and the latest end of a spell of another study.

    Ends are instant codes (a spell still running at T ends at `NEVER`). A spell of a study other
    than S is in force just before x when `study != S and end >= x`, or `other >= x`: with a
    count of the spells in force per participant this would need a second sort, by participant.
    """
    person = pl.col("person_key")
    end, latest, latest_study = f"{prefix}_end", f"{prefix}_latest", f"{prefix}_study"
    nothing = instant_code(person, pl.lit(-(2**63), pl.Int64))
    first = first_in_run("person_key")
    renewed = first | (pl.col(end) > pl.col(latest).shift(1))
    other = (
        pl.when(first)
        .then(nothing)
        .when(pl.col("study") != pl.col(latest_study).shift(1))
        .then(pl.when(pl.col("renewed")).then(pl.col(latest).shift(1)).otherwise(pl.col(end)))
        .otherwise(nothing)
    )
    return (
        spells.select(
            "person_key",
            instant_code(person, pl.col("from_at")).alias("code"),
            instant_code(person, pl.col("to_at").cast(pl.Int64).fill_null(NEVER)).alias(end),
            study.alias("study"),
        )
        .with_columns(pl.col(end).cum_max().alias(latest))
        .with_columns(renewed.alias("renewed"))
        .with_columns(pl.when(pl.col("renewed")).then(pl.col("study")).forward_fill().alias(latest_study))
        .with_columns(other.cum_max().alias(f"{prefix}_other"))
        .filter(last_in_run("code"))
        .select("code", "person_key", pl.col(latest).alias(end), latest_study, f"{prefix}_other")
    )


def _other_in_force(prefix: str) -> pl.Expr:
    """A spell of a study other than the invite's was in force just before it (see `_latest_ends`)."""
    own = pl.col("study_key").cast(pl.Int128)
    latest_other = (pl.col(f"{prefix}_study") != own) & (pl.col(f"{prefix}_end") >= pl.col("code"))
    return (latest_other | (pl.col(f"{prefix}_other") >= pl.col("code"))).fill_null(False)


def status_before_invites(
    events: pl.LazyFrame,
    observations: pl.LazyFrame,
    timelines: ComponentTimelines,
    cooldown: CooldownSection,
    as_of: datetime,
) -> pl.LazyFrame:
    """event_id, person_id, study_id, occurred_at, reason, status_at_invite: every invite by T with
    the status just before it, the inviting study's own share left out."""
    key = timelines.person_key
    study_key = timelines.study_key
    invited = invites(events, as_of).collect()
    # read by every join below: a lazy plan would recompute it per use
    ordered = _in_fact_order(invited.lazy(), key, study_key).collect(engine=ENGINE).lazy()
    cooling = timelines.cooldown_spells.filter(pl.col("source") != "limit")
    own_cooldown = pl.when(pl.col("source").is_in(_OWN_SOURCES)).then(pl.col("study_key").cast(pl.Int128))
    checked = _as_of(ordered, _flags_before(timelines, as_of), list(_FLAGS))
    for prefix, spells, study in (
        ("active", timelines.active_spells, pl.col("study_key").cast(pl.Int128)),
        ("cooldown", cooling, own_cooldown.otherwise(_NOT_OWN)),
    ):
        state = _latest_ends(spells, study, prefix)
        checked = _as_of(checked, state, [f"{prefix}_end", f"{prefix}_study", f"{prefix}_other"])
    frames = [checked]
    limits: list[str] = []
    if cooldown.limits:
        clears = cooldown_clears(events, key)
        for index, limit in enumerate(cooldown.limits):
            name = f"limit_{index}"
            triggers = limit_triggers(ordered, observations, limit, key, study_key)
            frames.append(limit_in_force(ordered, triggers, clears, limit, name))
            limits.append(name)
    holds = {
        "opted_out": pl.col("opted_out").fill_null(False),
        "in_blocklist": pl.col("in_blocklist").fill_null(False),
        "active_in_study": _other_in_force("active"),
        "do_not_contact": pl.col("do_not_contact").fill_null(False),
        "in_cooldown": pl.any_horizontal(_other_in_force("cooldown"), *limits),
    }
    checked = pl.concat(pl.collect_all(frames, engine=ENGINE), how="horizontal")
    status = checked.select("row", status_code(holds).alias("status")).sort("row")
    return invited.lazy().with_columns(as_status(pl.lit(status.get_column("status"))).alias("status_at_invite"))


def governance_violations(
    events: pl.LazyFrame,
    observations: pl.LazyFrame,
    timelines: ComponentTimelines,
    cooldown: CooldownSection,
    as_of: datetime,
) -> pl.LazyFrame:
    """event_id, person_id, study_id, occurred_at, status_at_invite, kind, override_reason.

    Only invites whose status was not free_to_contact are rows. `kind`:
    `not_overridable` (opted_out, in_blocklist), else `overridden` when the
    invite carries a non-blank `reason` (logged, not a violation), else
    `override_required`.
    """
    status = pl.col("status_at_invite")
    reason = pl.col("reason").str.strip_chars()
    kind = (
        pl.when(status.is_in(_NOT_OVERRIDABLE))
        .then(pl.lit("not_overridable"))
        .when(reason.fill_null("") != "")
        .then(pl.lit("overridden"))
        .otherwise(pl.lit("override_required"))
    )
    return (
        status_before_invites(events, observations, timelines, cooldown, as_of)
        .filter(status != "free_to_contact")
        .select(
            "event_id",
            "person_id",
            "study_id",
            "occurred_at",
            "status_at_invite",
            kind.cast(pl.Enum(VIOLATION_KINDS)).alias("kind"),
            pl.when(reason != "").then(reason).alias("override_reason"),
        )
        .sort("occurred_at", "event_id")
    )
