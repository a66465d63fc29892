"""Messaging lifecycle per person (SPEC §3.4, §7.17–18; rapidpro-contact-statuses.txt).

The machine is computed with window functions only, no loop: see
docs/state-machines.md ("Channel status") for why that is exact.

Actions, per person in (occurred_at, event_id) order, starting `active`:

* resetters (set a status whatever the previous one): `stopped`, `blocked`,
  `archived`, `restored` (→ active; from active it is a silent no-op);
* triggers (change only one status): `unblocked` blocked → active,
  `inbound_message` stopped → active, `deleted` archived → deleted;
  from any other status they change nothing (a `deleted` is then refused);
* `deleted` is final: every later action is refused ("contact is deleted").
"""

from __future__ import annotations

from datetime import date, datetime, timedelta
from collections.abc import Callable
from typing import NamedTuple

import polars as pl

from statusbatch import codes
from statusbatch.loading.contract import TIMESTAMP

__all__ = [
    "REJECTED_MODEL",
    "REJECTED_TRANSITIONS_SCHEMA",
    "ChannelMachine",
    "channel_machine",
    "channel_status",
    "channel_rejected_transitions",
    "archival_candidates",
    "ArchivalCandidate",
]

REJECTED_MODEL = pl.Enum(["sequence", "channel"])
"""`rejected_transitions.model`."""

REJECTED_TRANSITIONS_SCHEMA: dict[str, pl.DataType] = {
    "event_id": pl.String(),
    "model": REJECTED_MODEL,
    "person_id": pl.String(),
    "sequence_id": pl.String(),
    "from_status": pl.String(),
    "requested": pl.String(),
    "reason": pl.String(),
}
"""Both models' rejected frames have exactly this schema, so they concat."""

ArchivalCandidate = pl.Enum(["archive", "delete"])

# Status codes inside the machine: positions in codes.CHANNEL_STATUSES.
_A, _S, _B, _AR, _D = (codes.CHANNEL_STATUSES.index(s) for s in ("active", "stopped", "blocked", "archived", "deleted"))
_CODE = pl.UInt8

REASON_DELETED = "contact is deleted"
REASON_NOT_ARCHIVED = "only an archived contact can be deleted"


class ChannelMachine(NamedTuple):
    status: pl.LazyFrame
    """One row per person: `channel_status` columns (without as_of) plus `archived_at`."""
    rejected: pl.LazyFrame
    """Refused actions, `REJECTED_TRANSITIONS_SCHEMA`."""


def _code_to_status(expr: pl.Expr) -> pl.Expr:
    return expr.replace_strict(list(range(len(codes.CHANNEL_STATUSES))), list(codes.CHANNEL_STATUSES), return_dtype=codes.ChannelStatus)


def _is_sorted_by(df: pl.DataFrame, order: list[str]) -> bool:
    """Whether `df` is already in lexicographic `order`, nulls first.

    Never wrongly true; may say no for an ordered frame with nulls (then the
    caller sorts, which is only slower). The first column is checked alone, the
    others only on rows tying on it.
    """
    if df.height <= 1:
        return True
    head = df[order[0]]
    if head.null_count() or not head.is_sorted():
        return False
    if len(order) == 1:
        return True
    c = pl.col(order[0])
    tied = df.filter(((c == c.shift(1)) | (c == c.shift(-1))).fill_null(False))
    if tied.height <= 1:
        return True
    greater, equal = pl.lit(False), pl.lit(True)
    for name in order:
        col, prev = pl.col(name), pl.col(name).shift(1)
        greater = greater | (equal & (col > prev))
        equal = equal & (col == prev)
    return bool(tied.select((greater | equal).slice(1).fill_null(False).all()).item())


def _sort_lex(df: pl.DataFrame, order: list[str]) -> pl.DataFrame:
    """`df` sorted by the columns `order`, nulls first: a stable single-column sort
    by the first column, then only the rows that tie on it are sorted by all of
    them and put back in place (multi-column sorts with strings are slow).
    """
    if _is_sorted_by(df, order):
        return df
    head = order[0]
    df = df.sort(head, maintain_order=True)
    if len(order) == 1:
        return df
    c = pl.col(head)
    tied = ((c == c.shift(1)) | (c == c.shift(-1))).fill_null(False) | c.is_null()
    rows = df.select(pl.arg_where(tied)).to_series()
    if rows.len() == 0:
        return df
    sub = df[rows]
    if _is_sorted_by(sub, order):
        return df
    # tie blocks are contiguous and already ordered by `head`: sorting the tied
    # rows by the full order and writing them back in the same positions is exact
    sub = sub.sort(order, maintain_order=True)
    return df.with_columns(df[col].scatter(rows, sub[col]) for col in df.columns)


def _ordered_runs(
    frame: pl.LazyFrame, keys: list[str], order: list[str], *, hasher: Callable[[list[str]], pl.Expr] | None = None
) -> pl.DataFrame:
    """`frame` collected and sorted by `keys` then `order`, each key's rows contiguous.

    Adds `_first` (first row of its key) and `_run` (an integer id per key).
    Sorting is the dominant cost of the models, so it is done as cheaply as an
    exact order allows: by `order` (skipped when the input already is in that
    order, e.g. events pre-sorted by the pipeline), then a stable single-column
    sort by a 64-bit hash of the keys (far cheaper than a multi-column sort with
    strings). A hash collision, two keys sharing one hash, is detected and the
    frame is then sorted by the keys themselves, so the result is exact either way.
    """
    df = _sort_lex(frame.collect(), order)
    h = hasher(keys) if hasher else pl.struct(keys).hash() if len(keys) > 1 else pl.col(keys[0]).hash()
    df = df.with_columns(_h=h).sort("_h", maintain_order=True)
    changed = pl.any_horizontal([pl.col(k) != pl.col(k).shift(1) for k in keys])
    collided = df.select((changed & (pl.col("_h") == pl.col("_h").shift(1))).any()).item()
    if collided:
        df = df.sort(*keys, *order, maintain_order=True)
    return df.drop("_h").with_columns(_first=changed.fill_null(True)).with_columns(
        _run=pl.col("_first").cum_sum().cast(pl.Int64)
    )


# Window helpers over a frame made by _ordered_runs: `first` marks the first
# row of each run (person, membership...). Global scans reset at run starts are
# much cheaper than `.over()` with millions of small groups.


def _ffill_in(expr: pl.Expr, first: pl.Expr, default: pl.Expr) -> pl.Expr:
    """Forward fill inside each run; `default` before the run's first value."""
    return pl.when(first & expr.is_null()).then(default).otherwise(expr).forward_fill()


def _prev_in(expr: pl.Expr, first: pl.Expr, default: pl.Expr) -> pl.Expr:
    """The previous row's value inside each run; `default` on the run's first row."""
    return pl.when(first).then(default).otherwise(expr.shift(1))


def _cum_sum_in(expr: pl.Expr, first: pl.Expr) -> pl.Expr:
    """Inclusive running sum inside each run."""
    x = expr.cast(pl.Int64)
    total = x.cum_sum()
    return total - pl.when(first).then(total - x).forward_fill()


def _applied_actions(events: pl.LazyFrame, as_of: datetime | None) -> pl.DataFrame:
    """Every messaging action with the status before and after it.

    Why scans suffice: a resetter fixes the status; between two resetters the
    status leaves the resetter's value at most once, at the first trigger for it
    (afterwards it is `active`, a fixed point of every trigger, or `deleted`,
    which is final).
    """
    t = pl.col("event_type")
    acts = events.filter(t.is_in(codes.MESSAGING_EVENTS))
    if as_of is not None:
        acts = acts.filter(pl.col("occurred_at") <= as_of)
    p = "person_id"
    reset = (
        pl.when(t == "stopped").then(_S)
        .when(t == "blocked").then(_B)
        .when(t == "archived").then(_AR)
        .when(t == "restored").then(_A)
        .otherwise(None)
        .cast(_CODE)
    )
    first = pl.col("_first")
    df = _ordered_runs(acts.select("event_id", p, "occurred_at", "event_type"), [p], ["occurred_at", "event_id"])
    return (
        df.lazy()
        .with_columns(_reset=reset)
        .with_columns(
            _seg_first=first | pl.col("_reset").is_not_null(),
            _base=_ffill_in(pl.col("_reset"), first, pl.lit(_A, _CODE)),
        )
        .with_columns(
            _trigger=((t == "unblocked") & (pl.col("_base") == _B))
            | ((t == "inbound_message") & (pl.col("_base") == _S))
            | ((t == "deleted") & (pl.col("_base") == _AR))
        )
        .with_columns(
            _raw=pl.when(_cum_sum_in(pl.col("_trigger"), pl.col("_seg_first")) == 0)
            .then(pl.col("_base"))
            .when(pl.col("_base") == _AR)
            .then(pl.lit(_D, _CODE))
            .otherwise(pl.lit(_A, _CODE))
        )
        .with_columns(
            # deleted is final: everything after the first applied delete is refused
            dead_before=(_cum_sum_in(pl.col("_raw") == _D, first) - (pl.col("_raw") == _D).cast(pl.Int64)) > 0,
        )
        .with_columns(after=pl.when(pl.col("dead_before")).then(pl.lit(_D, _CODE)).otherwise(pl.col("_raw")))
        .with_columns(before=_prev_in(pl.col("after"), first, pl.lit(_A, _CODE)))
        .select("_run", "event_id", p, "occurred_at", "event_type", "before", "after", "dead_before")
        .collect()
    )


def channel_machine(people: pl.LazyFrame, events: pl.LazyFrame, *, as_of: datetime | None = None) -> ChannelMachine:
    """Channel status of every person in `people`, and the refused actions.

    `people` and `events` follow the input contract and are already restricted
    to T; `as_of`, when given, restricts them again (defensive, cheap).
    """
    acts = _applied_actions(events, as_of)
    t = pl.col("event_type")
    before, after = pl.col("before"), pl.col("after")
    counted = ~pl.col("dead_before")
    per_person = acts.lazy().group_by("_run").agg(
        pl.col("person_id").first(),
        _final=after.last(),
        archived_inbound=((t == "inbound_message") & (before == _B)).sum().cast(pl.Int64),
        _last_inbound=pl.col("occurred_at").filter((t == "inbound_message") & counted).max(),
        _spell_start=pl.col("occurred_at").filter((after == _AR) & (before != _AR)).last(),
    )
    if as_of is not None:
        people = people.filter(pl.col("created_at") <= as_of)
    final = pl.col("_final").fill_null(_A)
    status = (
        people.select("person_id", pl.col("last_seen_on").alias("_export_seen"))
        .join(per_person.drop("_run"), on="person_id", how="left", maintain_order="left")
        .select(
            "person_id",
            status=_code_to_status(final),
            can_receive=final == _A,
            in_groups=final == _A,
            runs_flows_on_inbound=final.is_in([_A, _S]),
            archived_inbound=pl.col("archived_inbound").fill_null(0),
            last_seen_on=pl.max_horizontal("_export_seen", pl.col("_last_inbound").dt.date()),
            archived_at=pl.when(final == _AR).then(pl.col("_spell_start")).cast(TIMESTAMP),
        )
    )
    dead = pl.col("dead_before")
    refused = _sort_lex(acts.filter(dead | ((t == "deleted") & (before != _AR))), ["occurred_at", "event_id"])
    rejected = refused.lazy().select(
        pl.col("event_id").cast(pl.String),
        model=pl.lit("channel", REJECTED_MODEL),
        person_id=pl.col("person_id").cast(pl.String),
        sequence_id=pl.lit(None, pl.String),
        from_status=_code_to_status(before).cast(pl.String),
        requested=t.cast(pl.String),
        reason=pl.when(dead).then(pl.lit(REASON_DELETED)).otherwise(pl.lit(REASON_NOT_ARCHIVED)),
    )
    return ChannelMachine(status=status, rejected=rejected)


def channel_status(people: pl.LazyFrame, events: pl.LazyFrame, *, as_of: datetime | None = None) -> pl.LazyFrame:
    """`channel_status` rows: what each person may receive on messaging channels at T."""
    return channel_machine(people, events, as_of=as_of).status


def channel_rejected_transitions(
    people: pl.LazyFrame, events: pl.LazyFrame, *, as_of: datetime | None = None
) -> pl.LazyFrame:
    """`rejected_transitions` rows of the channel model: deletes of non-archived and post-deletion actions."""
    return channel_machine(people, events, as_of=as_of).rejected


def archival_candidates(
    channel_status: pl.LazyFrame,
    people: pl.LazyFrame,
    active_in_study_people: pl.LazyFrame,
    *,
    as_of: datetime,
    dormant_after_days: int,
    delete_after_archived_days: int,
) -> pl.LazyFrame:
    """People to archive (dormant) or delete (archived long enough), for the cleanup workflow.

    * `days_dormant` = as_of date − (last_seen_on, or created_at's date when never
      seen), whole days; `archive` when `days_dormant > dormant_after_days` and
      the person is neither archived nor deleted.
    * `delete` when the status is archived and the current archived spell began
      more than `delete_after_archived_days` × 24 h before T (strictly).
    * People in `active_in_study_people` are never candidates.
    """
    run_date: date = as_of.date()
    seen = pl.coalesce(pl.col("last_seen_on"), pl.col("created_at").dt.date())
    status = pl.col("status")
    days = (pl.lit(run_date, pl.Date) - seen).dt.total_days().cast(pl.Int64)
    delete_before = as_of - timedelta(days=delete_after_archived_days)
    candidate = (
        pl.when(~status.is_in(["archived", "deleted"]) & (days > dormant_after_days))
        .then(pl.lit("archive", ArchivalCandidate))
        .when((status == "archived") & (pl.col("archived_at") < delete_before))
        .then(pl.lit("delete", ArchivalCandidate))
    )
    return (
        channel_status.select("person_id", "status", "last_seen_on", "archived_at")
        .join(people.select("person_id", "created_at"), on="person_id", how="left")
        .join(active_in_study_people.select("person_id").unique(), on="person_id", how="anti")
        .with_columns(candidate=candidate, days_dormant=days)
        .filter(pl.col("candidate").is_not_null())
        .select("person_id", "candidate", "last_seen_on", "days_dormant", "status", "archived_at")
        .sort("person_id")
    )

