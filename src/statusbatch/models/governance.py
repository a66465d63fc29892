"""Governance audit: invites sent to people who were not free to contact (SPEC §3.2, §7.10).

Every `invited` event at or before T is checked against the person's contact
status just before it, read from the component timelines of `history.py` with
backward as-of joins that exclude exact matches:

- facts count when strictly earlier than the invite (`occurred_at`), whatever
  their event id: an opt-out at the very instant of an invite does not make it
  a violation;
- time-based changes (a cooldown expiring, a study opening or closing) count
  at or before the invite: an invite at the instant a cooldown ends is fine.

What the inviting study itself contributes is left out: its participant's
share of active_in_study, the cooldowns its own invites and completions
started, and its triggers in the counts of the rolling limits. Its opt-outs,
hard bounces and no-shows still count. Rule-based do-not-contact has no
history and is left out.
"""

from __future__ import annotations

from datetime import datetime, timedelta

import polars as pl

from statusbatch import codes
from statusbatch.config.job import CooldownLimit, CooldownSection
from statusbatch.models.contact import status_by_precedence
from statusbatch.models.facts import tie
from statusbatch.models.history import (
    ComponentTimelines,
    carried_forward,
    component_states,
    first_in_run,
    last_in_run,
    running_sum,
    spell_deltas,
)
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
_PARTICIPANT = ["person_key", "study_key"]


def _as_of_join(
    left: pl.LazyFrame,
    right: pl.LazyFrame,
    *,
    on: str,
    by: list[str],
    values: list[str],
    at: str = "occurred_at",
    strictly_before: bool = True,
) -> pl.LazyFrame:
    """`left` with `values` of the latest `right` row (same `by`) whose `on` is before `at`.

    Both sides must be sorted by `on` within `by`. `strictly_before` leaves out
    a right row at the very instant `at`.
    """
    return left.join_asof(
        right.select(*by, pl.col(on).alias("_as_of"), *values),
        left_on=at,
        right_on="_as_of",
        by=by,
        strategy="backward",
        allow_exact_matches=not strictly_before,
        check_sortedness=False,
        coalesce=False,
    ).drop("_as_of")


def invites(events: pl.LazyFrame, key: pl.Expr, study_key: pl.Expr, as_of: datetime) -> pl.LazyFrame:
    """event_id, person_id, person_key, study_id, study_key, occurred_at, reason: every invite by T,
    by person and time."""
    return (
        events.filter((pl.col("event_type") == "invited") & (pl.col("occurred_at") <= as_of))
        .select(
            "event_id", "person_id", key.alias("person_key"), "study_id", study_key.alias("study_key"), "occurred_at", "reason"
        )
        .sort("person_key", "occurred_at")
    )


def limit_triggers(
    events: pl.LazyFrame, observations: pl.LazyFrame, limit: CooldownLimit, key: pl.Expr, study_key: pl.Expr
) -> pl.LazyFrame:
    """person_key, study_key, at, tie: the facts a rolling limit counts, in fact order per person."""
    if limit.trigger == "invite":
        triggers = events.filter(pl.col("event_type") == "invited").select(
            "person_id", "study_id", pl.col("occurred_at").alias("at"), "event_id"
        )
    else:
        triggers = status_transitions(observations, codes.COMPLETION_STATUSES).select(
            "person_id", "study_id", "at", "event_id"
        )
    return triggers.select(
        key.alias("person_key"), study_key.alias("study_key"), "at", tie(pl.col("event_id")).alias("tie")
    ).sort("person_key", "at", "tie")


def _seen(triggers: pl.LazyFrame, by: list[str]) -> pl.LazyFrame:
    """`by`, at, seen: how many triggers happened at or before each instant."""
    return (
        triggers.group_by(*by, "at")
        .agg(pl.len().cast(pl.Int64).alias("n"))
        .sort(*by, "at")
        .select(*by, "at", running_sum(pl.col("n"), first_in_run(*by)).alias("seen"))
    )


def _latest_with_other_study(triggers: pl.LazyFrame) -> pl.LazyFrame:
    """person_key, at, latest_study, latest_tie, other_at, other_tie: per instant, the latest
    trigger and the latest one before it from another study (the end of the previous same-study run)."""
    run_end = last_in_run("person_key", "study_key")
    previous = ~first_in_run("person_key")
    return (
        triggers.with_columns(
            carried_forward(pl.when(previous).then(pl.when(run_end).then(pl.col(c)).shift(1))).alias(f"other_{c}")
            for c in ("at", "tie")
        )
        .filter(last_in_run("person_key", "at"))
        .select(
            "person_key",
            "at",
            pl.col("study_key").alias("latest_study"),
            pl.col("tie").alias("latest_tie"),
            "other_at",
            "other_tie",
        )
    )


def limit_in_force(
    invited: pl.LazyFrame, triggers: pl.LazyFrame, clears: pl.LazyFrame, limit: CooldownLimit, name: str
) -> pl.LazyFrame:
    """`invited` plus a boolean column `name`: the rolling limit holds just before each invite,
    the inviting study's own triggers taken out of its counts.

    A limit holds at x when at least `count` other-study triggers fall in
    `(x - window, x)` and the latest of them is after the latest clear: the
    latest limit cooldown started after the clear ends when the oldest of the
    last `count` triggers leaves the window (§2, §3.2).
    """
    window_opens = (pl.col("occurred_at") - timedelta(days=limit.window_days)).alias("window_opens")
    total = _seen(triggers, ["person_key"])
    own = _seen(triggers, _PARTICIPANT)
    latest = _latest_with_other_study(triggers)
    latest_clear = clears.group_by("person_key", "at").agg(pl.col("tie").max().alias("clear_tie")).sort("person_key", "at")

    checked = invited.with_columns(window_opens)
    for frame, by, suffix in ((total, ["person_key"], "total"), (own, _PARTICIPANT, "own")):
        checked = _as_of_join(checked, frame.rename({"seen": f"{suffix}_now"}), on="at", by=by, values=[f"{suffix}_now"])
        checked = _as_of_join(
            checked, frame.rename({"seen": f"{suffix}_then"}), on="at", by=by, values=[f"{suffix}_then"],
            at="window_opens", strictly_before=False,
        )
    checked = _as_of_join(
        checked, latest.with_columns(pl.col("at").alias("latest_at")), on="at", by=["person_key"],
        values=["latest_at", "latest_study", "latest_tie", "other_at", "other_tie"],
    )
    checked = _as_of_join(
        checked, latest_clear.with_columns(pl.col("at").alias("clear_at")), on="at", by=["person_key"],
        values=["clear_at", "clear_tie"],
    )

    latest_is_other = pl.col("latest_study") != pl.col("study_key")
    other_at = pl.when(latest_is_other).then(pl.col("latest_at")).otherwise(pl.col("other_at"))
    other_tie = pl.when(latest_is_other).then(pl.col("latest_tie")).otherwise(pl.col("other_tie"))
    after_clear = pl.col("clear_at").is_null() | (other_at > pl.col("clear_at")) | (
        (other_at == pl.col("clear_at")) & (other_tie > pl.col("clear_tie"))
    )
    now, then, own_now, own_then = (pl.col(c).fill_null(0) for c in ("total_now", "total_then", "own_now", "own_then"))
    in_window = (now - then) - (own_now - own_then)
    holds = (other_at.is_not_null() & after_clear & (in_window >= limit.count)).fill_null(False)
    scratch = ["window_opens", "total_now", "total_then", "own_now", "own_then", "latest_at", "latest_study",
               "latest_tie", "other_at", "other_tie", "clear_at", "clear_tie"]
    return checked.with_columns(holds.alias(name)).drop(scratch)


def _own_share(
    timelines: ComponentTimelines, own_cooldowns: pl.LazyFrame, study_key: pl.Expr, as_of: datetime
) -> pl.LazyFrame:
    """person_key, study_key, key, own_active, own_cooldown: what each participant adds to the counts."""
    by = ("person_id", "study_id")
    deltas = pl.concat(
        [
            spell_deltas(timelines.active_spells, as_of, by).select(*by, "key", pl.col("delta").alias("own_active"), pl.lit(0, pl.Int32).alias("own_cooldown")),
            spell_deltas(own_cooldowns, as_of, by).select(*by, "key", pl.lit(0, pl.Int32).alias("own_active"), pl.col("delta").alias("own_cooldown")),
        ]
    )
    shares = ("own_active", "own_cooldown")
    return (
        deltas.select(timelines.person_key.alias("person_key"), study_key.alias("study_key"), "key", *shares)
        .group_by(*_PARTICIPANT, "key")
        .agg(pl.col(shares).sum())
        .sort(*_PARTICIPANT, "key")
        .select(*_PARTICIPANT, "key", *[running_sum(pl.col(c), first_in_run(*_PARTICIPANT)).alias(c) for c in shares])
    )


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
    invited = events.filter(pl.col("event_type") == "invited").select("person_id").unique()
    timelines = timelines.for_people(invited)
    not_limit = timelines.cooldown_spells.filter(pl.col("source") != "limit")
    # Each intermediate feeds several joins; computed once here, a lazy plan would recompute it per use.
    person, own, invited_at = pl.collect_all(
        [
            component_states(timelines, not_limit, as_of, instant="key"),
            _own_share(timelines, not_limit.filter(pl.col("source").is_in(_OWN_SOURCES)), study_key, as_of),
            invites(events, key, study_key, as_of),
        ]
    )
    components = ["opted_out", "in_blocklist", "do_not_contact", "active_in_study", "in_cooldown"]
    checked = _as_of_join(invited_at.lazy(), person.lazy(), on="key", by=["person_key"], values=components)
    checked = _as_of_join(checked, own.lazy(), on="key", by=_PARTICIPANT, values=["own_active", "own_cooldown"])
    checked = checked.collect().lazy()
    limits: list[str] = []
    if cooldown.limits:
        clears = events.filter(pl.col("event_type") == "cooldown_cleared").select(
            key.alias("person_key"), pl.col("occurred_at").alias("at"), tie(pl.col("event_id")).alias("tie")
        )
        for index, limit in enumerate(cooldown.limits):
            name = f"limit_{index}"
            triggers = limit_triggers(events, observations, limit, key, study_key)
            checked = limit_in_force(checked, triggers, clears, limit, name).collect().lazy()
            limits.append(name)

    def count(name: str) -> pl.Expr:
        return pl.col(name).fill_null(0)

    holds = {
        "opted_out": pl.col("opted_out").fill_null(False),
        "in_blocklist": pl.col("in_blocklist").fill_null(False),
        "active_in_study": count("active_in_study") - count("own_active") > 0,
        "do_not_contact": pl.col("do_not_contact").fill_null(False),
        "in_cooldown": pl.any_horizontal(count("in_cooldown") - count("own_cooldown") > 0, *limits),
    }
    return checked.select(
        "event_id", "person_id", "study_id", "occurred_at", "reason", status_by_precedence(holds).alias("status_at_invite")
    )


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
