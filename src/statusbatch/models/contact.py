"""Workspace-wide contact status and its components (SPEC §3.2, §7.9).

Each component is computed from a stream of the facts that can change it,
ordered by (time, event id), so "the latest of X / Y" and "since the latest Z"
are window operations over that stream.
"""

from __future__ import annotations

from collections.abc import Mapping
from datetime import UTC, date, datetime, timedelta

import polars as pl

from statusbatch import codes
from statusbatch.config.job import CooldownSection
from statusbatch.loading.contract import TIMESTAMP
from statusbatch.models.facts import tie
from statusbatch.models.participants import status_transitions, study_is_open
from statusbatch.models.scans import first_in_run, last_in_run, running_sum, shifted_in_run

__all__ = [
    "opt_out_changes",
    "opted_out",
    "blocklist_changes",
    "blocklist",
    "manual_dnc_changes",
    "active_studies",
    "do_not_contact",
    "cooldown_starts",
    "cooldowns",
    "contact_status",
    "status_by_precedence",
]

_FACT_KEY = ["person_id", "at", "tie"]


def _iso(at: pl.Expr) -> pl.Expr:
    return at.dt.strftime("%Y-%m-%dT%H:%M:%SZ")


def _person_events(events: pl.LazyFrame, kinds: dict[str, object], value_name: str) -> pl.LazyFrame:
    """Events of the given types as facts carrying the value each one sets."""
    return events.filter(pl.col("event_type").is_in(list(kinds))).select(
        "person_id",
        pl.col("occurred_at").alias("at"),
        "event_id",
        pl.col("event_type").cast(pl.String).alias("fact"),
        pl.col("event_type").cast(pl.String).replace_strict(kinds, return_dtype=pl.Boolean).alias(value_name),
        "study_id",
        "reason",
        pl.lit(None, dtype=TIMESTAMP).alias("visible_at"),
    )


def _observation_facts(observations: pl.LazyFrame, fact: str, value_name: str, value: bool) -> pl.LazyFrame:
    """`visible_at`: when a run first knows an observation dated before its participant was added
    (`added_at`, §7.4; see `revealed.py`); null for the others, known at their own time."""
    return observations.select(
        "person_id",
        "at",
        "event_id",
        pl.lit(fact).alias("fact"),
        pl.lit(value).alias(value_name),
        "study_id",
        pl.lit(None, dtype=pl.String).alias("reason"),
        pl.when(pl.col("added_at") > pl.col("at")).then(pl.col("added_at")).alias("visible_at"),
    )


def _latest_per_person(facts: pl.LazyFrame) -> pl.LazyFrame:
    return facts.with_columns(tie(pl.col("event_id")).alias("tie")).sort(_FACT_KEY).group_by("person_id").last()


def _describe(fact: pl.Expr, at: pl.Expr, event_id: pl.Expr, study_id: pl.Expr, reason: pl.Expr) -> pl.Expr:
    """'<fact> in study S (event E) on <time>: <reason>' with absent parts left out."""
    return pl.concat_str(
        fact,
        pl.lit(" in study ") + study_id,
        pl.lit(" (event ") + event_id + pl.lit(")"),
        pl.lit(" on ") + _iso(at),
        pl.lit(": ") + reason,
        ignore_nulls=True,
    )


def opt_out_changes(events: pl.LazyFrame, observations: pl.LazyFrame) -> pl.LazyFrame:
    """Every fact that sets the opted_out component: opt-outs, revocations, hard bounces.

    A hard-bounced address is uncontactable until the opt-out is revoked by hand.
    `visible_at` as `_observation_facts` gives it (the sequence machine's adds need it).
    """
    return pl.concat(
        [
            _person_events(events, {"opted_out": True, "opt_out_revoked": False}, "opted_out"),
            _observation_facts(
                observations.filter(pl.col("participant_status") == "hard_bounced"), "hard bounce", "opted_out", True
            ),
        ]
    ).select(
        "person_id", pl.col("at").alias("changed_at"), "event_id", "opted_out", "fact", "study_id", "reason", "visible_at"
    )


def opted_out(changes: pl.LazyFrame) -> pl.LazyFrame:
    """person_id, opted_out, opted_out_reason — from the latest change."""
    latest = _latest_per_person(changes.rename({"changed_at": "at"}))
    return latest.filter(pl.col("opted_out")).select(
        "person_id",
        pl.lit(True).alias("opted_out"),
        _describe(pl.col("fact").str.replace("_", " "), pl.col("at"), pl.col("event_id"), pl.col("study_id"), pl.col("reason")).alias(
            "opted_out_reason"
        ),
    )


def blocklist_changes(events: pl.LazyFrame, observations: pl.LazyFrame, no_show_threshold: int) -> pl.LazyFrame:
    """Every fact that sets the in_blocklist component, in fact order.

    Manual adds and removals, plus the sticky no-show rule: the Nth no-show
    since the latest removal puts the person in the blocklist until a later
    removal. Columns as `opt_out_changes`, with `in_blocklist`.
    """
    manual = _person_events(events, {"blocklist_added": True, "blocklist_removed": False}, "in_blocklist")
    no_shows = _observation_facts(
        status_transitions(observations, ("no_showed",)), "no-show", "in_blocklist", True
    ).with_columns(pl.lit(None, dtype=pl.Boolean).alias("in_blocklist"))
    return (
        pl.concat([manual, no_shows] if no_show_threshold > 0 else [manual])
        .with_columns(tie(pl.col("event_id")).alias("tie"))
        .sort(_FACT_KEY)
        .with_columns(
            running_sum(
                (pl.col("fact") == "no-show").cast(pl.UInt32),
                first_in_run("person_id") | (pl.col("fact") == "blocklist_removed"),
            ).alias("no_shows")
        )
        .with_columns(
            pl.when((pl.col("fact") == "no-show") & (pl.col("no_shows") == no_show_threshold))
            .then(True)
            .otherwise(pl.col("in_blocklist"))
            .alias("in_blocklist"),
            pl.when(pl.col("fact") == "no-show")
            .then(pl.format("no-show rule: {} no-shows since the latest removal, the last", pl.col("no_shows")))
            .otherwise(pl.col("fact").str.replace("_", " "))
            .alias("fact"),
        )
        .filter(pl.col("in_blocklist").is_not_null())
        .select("person_id", pl.col("at").alias("changed_at"), "event_id", "in_blocklist", "fact", "study_id", "reason")
    )


def blocklist(changes: pl.LazyFrame) -> pl.LazyFrame:
    """person_id, in_blocklist, blocklist_reason — from the latest change."""
    return (
        _latest_per_person(changes.rename({"changed_at": "at"}))
        .filter(pl.col("in_blocklist"))
        .select(
            "person_id",
            "in_blocklist",
            _describe(pl.col("fact"), pl.col("at"), pl.col("event_id"), pl.col("study_id"), pl.col("reason")).alias(
                "blocklist_reason"
            ),
        )
    )


def active_studies(status: pl.LazyFrame, studies: pl.LazyFrame, as_of: datetime) -> pl.LazyFrame:
    """person_id, active_study_ids: open studies where the person is started but not terminal."""
    open_studies = studies.filter(study_is_open(as_of)).select("study_id")
    return (
        status.filter(~pl.col("is_terminal") & (pl.col("stage") != "not_started"))
        .join(open_studies, on="study_id", how="semi")
        .group_by("person_id")
        .agg(pl.col("study_id").sort().alias("active_study_ids"))
    )


def manual_dnc_changes(events: pl.LazyFrame) -> pl.LazyFrame:
    """Manual do-not-contact sets and clears (rule-based DNC has no history)."""
    return _person_events(
        events, {"do_not_contact_set": True, "do_not_contact_cleared": False}, "do_not_contact"
    ).select("person_id", pl.col("at").alias("changed_at"), "event_id", "do_not_contact", "fact", "study_id", "reason")


def do_not_contact(people: pl.LazyFrame, events: pl.LazyFrame, rules: Mapping[str, pl.Expr]) -> pl.LazyFrame:
    """person_id, do_not_contact, do_not_contact_reason: a matching rule or a manual flag.

    `rules` maps each rule name to its compiled condition (true where it matches).
    """
    manual = (
        _latest_per_person(manual_dnc_changes(events).rename({"changed_at": "at"}))
        .filter(pl.col("do_not_contact"))
        .select(
            "person_id",
            _describe(
                pl.lit("do-not-contact set"), pl.col("at"), pl.col("event_id"), pl.lit(None, pl.String), pl.col("reason")
            ).alias("manual_reason"),
        )
    )
    matches = {name: condition.fill_null(False) for name, condition in rules.items()}
    if matches:
        names = pl.concat_str(
            [pl.when(condition).then(pl.lit(f"'{name}'")) for name, condition in matches.items()],
            separator=", ",
            ignore_nulls=True,
        )
        by_rule = people.filter(pl.any_horizontal(matches.values())).select(
            "person_id", (pl.lit("do-not-contact rule ") + names).alias("rule_reason")
        )
    else:
        by_rule = people.select("person_id", pl.lit(None, dtype=pl.String).alias("rule_reason")).head(0)
    return (
        by_rule.join(manual, on="person_id", how="full", coalesce=True)
        .select(
            "person_id",
            pl.lit(True).alias("do_not_contact"),
            pl.concat_str("rule_reason", "manual_reason", separator="; ", ignore_nulls=True).alias(
                "do_not_contact_reason"
            ),
        )
    )


def _start(
    frame: pl.LazyFrame, source: str, until: pl.Expr, at: str = "at", event_id: str = "event_id"
) -> pl.LazyFrame:
    return frame.select(
        "person_id",
        pl.col(at).alias("at"),
        pl.col(event_id).alias("event_id"),
        "study_id",
        pl.lit(source).cast(codes.CooldownSource).alias("source"),
        until.cast(TIMESTAMP).alias("cooldown_until"),
    )


def cooldown_starts(events: pl.LazyFrame, observations: pl.LazyFrame, rules: CooldownSection) -> pl.LazyFrame:
    """Every cooldown started after the person's latest `cooldown_cleared`.

    Columns: person_id, at (start), event_id, study_id (of an invite or a
    completion), source, cooldown_until. Limit triggers before the clear still
    count toward the window; only cooldowns they start after it are kept.
    """
    invites = events.filter(pl.col("event_type") == "invited").select(
        "person_id", pl.col("occurred_at").alias("at"), "event_id", "study_id"
    )
    completions = status_transitions(observations, codes.COMPLETION_STATUSES).select(
        "person_id", "at", "event_id", "study_id"
    )
    starts: list[pl.LazyFrame] = []
    if rules.after_invite_days > 0:
        starts.append(_start(invites, "invite", pl.col("at") + timedelta(days=rules.after_invite_days)))
    if rules.after_completion_days > 0:
        starts.append(_start(completions, "completion", pl.col("at") + timedelta(days=rules.after_completion_days)))
    day = pl.col("value").str.strip_chars().str.to_date("%Y-%m-%d")
    manual = events.filter(pl.col("event_type") == "cooldown_set").select(
        "person_id", pl.col("occurred_at").alias("at"), "event_id", "study_id", day.alias("day")
    )
    until = (
        pl.when(pl.col("day") >= pl.lit(date(9999, 12, 31)))
        .then(pl.lit(datetime(9999, 12, 31, 23, 59, 59, 999999, tzinfo=UTC)))
        .otherwise((pl.col("day") + timedelta(days=1)).cast(pl.Datetime("us")).dt.replace_time_zone("UTC"))
    )
    starts.append(_start(manual, "manual", until))
    for limit in rules.limits:
        triggers = invites if limit.trigger == "invite" else completions
        oldest_in_window = shifted_in_run(pl.col("at"), limit.count - 1, "person_id")
        starts.append(
            _start(
                triggers.with_columns(tie(pl.col("event_id")).alias("tie"))
                .sort(_FACT_KEY)
                .with_columns((oldest_in_window + timedelta(days=limit.window_days)).alias("until"))
                .filter(pl.col("until") > pl.col("at")),
                "limit",
                pl.col("until"),
            )
        )
    all_starts = pl.concat(starts).with_columns(tie(pl.col("event_id")).alias("tie"))
    latest_clear = (
        events.filter(pl.col("event_type") == "cooldown_cleared")
        .select("person_id", pl.col("occurred_at").alias("cleared_at"), tie(pl.col("event_id")).alias("cleared_tie"))
        .sort("person_id", "cleared_at", "cleared_tie")
        .filter(last_in_run("person_id"))
    )
    after_clear = pl.col("cleared_at").is_null() | (pl.col("at") > pl.col("cleared_at")) | (
        (pl.col("at") == pl.col("cleared_at")) & (pl.col("tie") > pl.col("cleared_tie"))
    )
    return (
        all_starts.join(latest_clear, on="person_id", how="left")
        .filter(after_clear)
        .select("person_id", "at", "event_id", "study_id", "source", "cooldown_until", "tie")
    )


def cooldowns(starts: pl.LazyFrame, as_of: datetime, as_of_date: object) -> pl.LazyFrame:
    """One row per person with a cooldown: the one with the latest end, and its state at T."""
    return (
        starts.sort("person_id", "cooldown_until", "at", "tie")
        .group_by("person_id")
        .last()
        .select(
            "person_id",
            "cooldown_until",
            "source",
            pl.col("event_id").alias("source_event_id"),
            pl.col("study_id").alias("source_study_id"),
            pl.col("at").alias("started_at"),
            pl.when(pl.col("cooldown_until") > as_of).then(pl.lit("active")).otherwise(pl.lit("expired")).alias("state"),
            (pl.col("cooldown_until").dt.date() - pl.lit(as_of_date)).dt.total_days().cast(pl.Int64).alias("days_left"),
            (
                (pl.col("cooldown_until") <= as_of) & (pl.col("cooldown_until") > pl.lit(as_of) - timedelta(days=1))
            ).alias("expired_within_last_day"),
        )
    )


_STATUS_REASON = {
    "opted_out": pl.col("opted_out_reason"),
    "in_blocklist": pl.col("blocklist_reason"),
    "active_in_study": pl.lit("active in study ") + pl.col("active_study_ids").list.join(", "),
    "do_not_contact": pl.col("do_not_contact_reason"),
    "in_cooldown": pl.concat_str(
        pl.lit("in cooldown until "),
        _iso(pl.col("cooldown_until")),
        pl.lit(" ("),
        pl.col("cooldown_source").cast(pl.String),
        pl.lit(" in study ") + pl.col("cooldown_study_id"),
        pl.lit(", event ") + pl.col("cooldown_event_id"),
        pl.lit(")"),
        ignore_nulls=True,
    ),
    "free_to_contact": pl.lit("no opt-out, blocklist, active study, do-not-contact or cooldown applies"),
}


def status_by_precedence(holds: dict[str, pl.Expr]) -> pl.Expr:
    """The first status of §3.2's precedence whose component holds; `free_to_contact` when none does.

    Components left out of `holds` are skipped (`stored_status` has no active_in_study).
    """
    *components, free = codes.CONTACT_STATUSES
    present = [status for status in components if status in holds]
    chain = pl.when(holds[present[0]]).then(pl.lit(present[0]))
    for status in present[1:]:
        chain = chain.when(holds[status]).then(pl.lit(status))
    return chain.otherwise(pl.lit(free)).cast(codes.ContactStatus)


def contact_status(
    people: pl.LazyFrame,
    opted_out: pl.LazyFrame,
    blocklist: pl.LazyFrame,
    active_studies: pl.LazyFrame,
    do_not_contact: pl.LazyFrame,
    cooldowns: pl.LazyFrame,
) -> pl.LazyFrame:
    """One row per person: the first component that holds, in SPEC precedence."""
    frame = (
        people.select("person_id")
        .join(opted_out, on="person_id", how="left")
        .join(blocklist, on="person_id", how="left")
        .join(active_studies, on="person_id", how="left")
        .join(do_not_contact, on="person_id", how="left")
        .join(
            cooldowns.filter(pl.col("state") == "active").select(
                "person_id",
                "cooldown_until",
                pl.col("source").alias("cooldown_source"),
                pl.col("source_event_id").alias("cooldown_event_id"),
                pl.col("source_study_id").alias("cooldown_study_id"),
            ),
            on="person_id",
            how="left",
        )
        .with_columns(
            pl.col("opted_out", "in_blocklist", "do_not_contact").fill_null(False),
            pl.col("active_study_ids").fill_null(pl.lit([], dtype=pl.List(pl.String))),
        )
        .with_columns(
            (pl.col("active_study_ids").list.len() > 0).alias("active_in_study"),
            pl.col("cooldown_until").is_not_null().alias("in_cooldown"),
        )
    )
    components = {s: pl.col(s) for s in codes.CONTACT_STATUSES[:-1]}
    stored_components = {s: e for s, e in components.items() if s != "active_in_study"}
    status = pl.col("contact_status")
    reason = pl.when(False).then(pl.lit(None, dtype=pl.String))
    for code, text in _STATUS_REASON.items():
        reason = reason.when(status == code).then(text)
    return (
        frame.with_columns(
            status_by_precedence(components).alias("contact_status"),
            status_by_precedence(stored_components).alias("stored_status"),
        )
        .with_columns(
            pl.when(status.is_in(("active_in_study", "in_cooldown", "do_not_contact")))
            .then(True)
            .when(status.is_in(("opted_out", "in_blocklist")))
            .then(False)
            .otherwise(None)
            .alias("overridable"),
            (status == "free_to_contact").alias("can_contact"),
            reason.alias("reason"),
        )
        .select(
            "person_id",
            "contact_status",
            "stored_status",
            "active_study_ids",
            "overridable",
            "can_contact",
            "cooldown_until",
            "reason",
            "opted_out",
            "in_blocklist",
            "active_in_study",
            "do_not_contact",
            "in_cooldown",
        )
        .sort("person_id")
    )
