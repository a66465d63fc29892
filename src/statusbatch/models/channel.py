"""Messaging lifecycle per person (SPEC §3.4, §7.17–18; rapidpro-contact-statuses.txt).

The machine is computed with scans over sorted arrays only, no loop: see
docs/state-machines.md ("Channel status") for why that is exact.

Actions, per person in (occurred_at, event_id) order, starting `active`:

* resetters (set a status whatever the previous one): `stopped`, `blocked`,
  `archived`, `restored` (→ active; from active it is a silent no-op);
* triggers (change only one status): `unblocked` blocked → active,
  `inbound_message` stopped → active, `deleted` archived → deleted;
  from any other status they change nothing (a `deleted` is then refused);
* `deleted` is final: every later action is refused ("contact is deleted").

Most people only ever send inbound messages (always `active`, nothing
refused): for them only the latest message time is needed. Only the people
with another action go through the machine.
"""

from __future__ import annotations

from datetime import date, datetime, timedelta
from typing import NamedTuple

import numpy as np
import polars as pl

from statusbatch import codes
from statusbatch.loading.contract import TIMESTAMP
from statusbatch.models.ordering import small_codes, sort_by_time

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

REASON_DELETED = "contact is deleted"
REASON_NOT_ARCHIVED = "only an archived contact can be deleted"


class ChannelMachine(NamedTuple):
    status: pl.LazyFrame
    """One row per person: `channel_status` columns (without as_of) plus `archived_at`."""
    rejected: pl.LazyFrame
    """Refused actions, `REJECTED_TRANSITIONS_SCHEMA`."""


def _code_to_status(expr: pl.Expr) -> pl.Expr:
    return expr.replace_strict(list(range(len(codes.CHANNEL_STATUSES))), list(codes.CHANNEL_STATUSES), return_dtype=codes.ChannelStatus)


_ACTIONS = ("stopped", "inbound_message", "blocked", "unblocked", "archived", "restored", "deleted")
if set(_ACTIONS) != set(codes.MESSAGING_EVENTS):
    raise ImportError("statusbatch.codes.MESSAGING_EVENTS changed: update the action codes of models/channel.py")
_STOPPED, _INBOUND, _BLOCKED, _UNBLOCKED, _ARCHIVED, _RESTORED, _DELETED = range(1, 8)
_ACTION_CODES = {name: i for i, name in enumerate(_ACTIONS, 1)}
_NONE = 255
_SETS = np.full(8, _NONE, np.uint8)
"""Status a resetter sets, by action code."""
_SETS[[_STOPPED, _BLOCKED, _ARCHIVED, _RESTORED]] = (_S, _B, _AR, _A)
_TRIGGER_FROM = np.full(8, _NONE, np.uint8)
"""Status a trigger leaves, by action code."""
_TRIGGER_FROM[[_UNBLOCKED, _INBOUND, _DELETED]] = (_B, _S, _AR)


def _person_hash(seed: int) -> pl.Expr:
    return pl.col("person_id").hash(seed=seed)


def _person_keys(persons: pl.Series, exact: bool) -> tuple[np.ndarray, np.ndarray]:
    """(k, k2) of each person_id: two independently seeded 64-bit hashes (a wrong
    match needs both to collide, ~2⁻¹²⁸), or, `exact`, a dense rank of the strings."""
    if exact:
        rank = persons.rank("dense").cast(pl.UInt64).fill_null(0).to_numpy()
        return rank, rank
    keys = persons.to_frame("person_id").select("person_id", k=_person_hash(0), k2=_person_hash(1))
    return keys["k"].to_numpy(), keys["k2"].to_numpy()


def _pure(frame: pl.DataFrame, maintain_order: bool = False) -> pl.DataFrame | None:
    """`frame` (k, k2, ...) grouped by k, or None when two persons share a k."""
    groups = frame.group_by("k", maintain_order=maintain_order).agg(
        pl.col("k2").min().alias("_lo"), pl.col("k2").max().alias("k2"), pl.exclude("k", "k2").max()
    )
    return None if (groups["_lo"] != groups["k2"]).any() else groups.drop("_lo")


def _reduce_runs(ufunc: np.ufunc, values: np.ndarray, starts: np.ndarray) -> np.ndarray:
    """`ufunc` over each run of `values` beginning at `starts` (sorted, starting at 0)."""
    return ufunc.reduceat(values, starts) if values.size else values[:0]


class _Machine(NamedTuple):
    rows: np.ndarray
    """Action rows of the people with a status change, by (person, occurred_at, event_id)."""
    ty: np.ndarray
    before: np.ndarray
    after: np.ndarray
    dead_before: np.ndarray
    per_person: pl.DataFrame
    """k, k2, _final, archived_inbound, _last_inbound (µs), _spell_start (µs)."""


def _machine(person: np.ndarray, keys: tuple[np.ndarray, np.ndarray], rows: np.ndarray, ty: np.ndarray,
             t: np.ndarray, event_id: pl.Series) -> _Machine:
    """Every action of the given people with the status before and after it.

    Why scans suffice: a resetter fixes the status; between two resetters the
    status leaves the resetter's value at most once, at the first trigger for it
    (afterwards it is `active`, a fixed point of every trigger, or `deleted`,
    which is final).
    """
    person, rows = sort_by_time(person, t[rows], rows, event_id)
    ty, t = ty[rows], t[rows]
    n = rows.size
    idx = np.arange(n)
    first = np.ones(n, bool)
    np.not_equal(person[1:], person[:-1], out=first[1:])
    person_start = np.maximum.accumulate(np.where(first, idx, 0))
    sets = _SETS[ty]
    is_reset = sets != _NONE
    seg = np.maximum.accumulate(np.where(is_reset | first, idx, 0))
    base = np.where(is_reset[seg], sets[seg], _A).astype(np.uint8)
    trigger = _TRIGGER_FROM[ty] == base
    triggered = np.maximum.accumulate(np.where(trigger, idx, -1)) >= seg  # a trigger in the segment so far
    raw = np.where(triggered, np.where(base == _AR, _D, _A), base).astype(np.uint8)
    # deleted is final: everything after the first applied delete is refused
    deleted = np.maximum.accumulate(np.where(raw == _D, idx, -1))
    dead_before = np.zeros(n, bool)
    dead_before[1:] = deleted[:-1] >= person_start[1:]
    after = np.where(dead_before, _D, raw).astype(np.uint8)
    before = np.full(n, _A, np.uint8)
    before[1:] = after[:-1]
    before[first] = _A

    starts = np.flatnonzero(first)
    inbound = ty == _INBOUND
    last_inbound = _reduce_runs(np.maximum, np.where(inbound & ~dead_before, t, np.iinfo(np.int64).min), starts)
    spell = _reduce_runs(np.maximum, np.where((after == _AR) & (before != _AR), idx, -1), starts)
    k, k2 = keys
    who = person[starts]
    per_person = pl.DataFrame({
        "k": k[who],
        "k2": k2[who],
        "_final": after[np.append(starts[1:], n)[: starts.size] - 1],
        "archived_inbound": _reduce_runs(np.add, (inbound & (before == _B)).astype(np.int64), starts),
        "_last_inbound": pl.Series(last_inbound).set(pl.Series(last_inbound == np.iinfo(np.int64).min), None),
        "_spell_start": pl.Series(np.where(spell >= 0, t[np.maximum(spell, 0)], 0)).set(pl.Series(spell < 0), None),
    })
    return _Machine(rows, ty, before, after, dead_before, per_person)


def _per_person(
    acts: pl.DataFrame, people: pl.DataFrame, ty: np.ndarray, t: np.ndarray, keep: np.ndarray, exact: bool
) -> tuple[pl.DataFrame, tuple[np.ndarray, np.ndarray], _Machine] | None:
    """(per-person states keyed by k, k2; people's k, k2; the machine), or None
    when two persons share a first hash (the caller then asks for exact keys)."""
    k_all, k2_all = _person_keys(pl.concat([acts["person_id"], people["person_id"]]), exact)
    k, k2, people_keys = k_all[: acts.height], k2_all[: acts.height], (k_all[acts.height:], k2_all[acts.height:])
    # runs of rows of one person (a person per run when events come grouped by person)
    head = np.ones(k.size, bool)
    head[1:] = (k[1:] != k[:-1]) | (k2[1:] != k2[:-1])
    run_start = np.flatnonzero(head)
    rk, rk2 = k[run_start], k2[run_start]
    # people with an action other than inbound messages go through the machine
    # (ids in order of appearance: the machine's sort key then follows the input order)
    changes = _reduce_runs(np.logical_or, keep & (ty != _INBOUND), run_start)
    changing = _pure(pl.DataFrame({"k": rk[changes], "k2": rk2[changes]}), maintain_order=True)
    if changing is None:
        return None
    changing = changing.with_row_index("_id")
    run_person = (
        pl.DataFrame({"k": rk, "k2": rk2})
        .join(changing, on="k", how="left", maintain_order="left")
        .select(pl.when(pl.col("k2") == pl.col("k2_right")).then(pl.col("_id")).cast(pl.Int64).fill_null(-1))
        .to_series()
        .to_numpy()
    )
    # the others only send inbound messages: always active, only the latest message matters
    inbound_only = (run_person < 0) & _reduce_runs(np.logical_or, keep, run_start)
    latest = _reduce_runs(np.maximum, np.where(keep, t, np.iinfo(np.int64).min), run_start)
    inbound_only = _pure(
        pl.DataFrame({"k": rk[inbound_only], "k2": rk2[inbound_only], "_last_inbound": latest[inbound_only]})
    )
    if inbound_only is None:
        return None
    person = np.repeat(run_person, np.diff(np.append(run_start, head.size)))
    rows = np.flatnonzero(keep & (person >= 0))
    m = _machine(person[rows], (changing["k"].to_numpy(), changing["k2"].to_numpy()), rows, ty, t, acts["event_id"])
    per_person = pl.concat([m.per_person, inbound_only], how="diagonal_relaxed")
    if per_person["k"].n_unique() != per_person.height:
        return None
    return per_person, people_keys, m


def channel_machine(people: pl.LazyFrame, events: pl.LazyFrame, *, as_of: datetime | None = None) -> ChannelMachine:
    """Channel status of every person in `people`, and the refused actions.

    `people` and `events` follow the input contract and are already restricted
    to T; `as_of`, when given, restricts them again (defensive, cheap).
    """
    acts = events.select("event_id", "person_id", "occurred_at", "event_type").collect()
    ty = small_codes(acts["event_type"], _ACTION_CODES)
    at = acts["occurred_at"].dt.epoch("us")
    keep = (ty != 0) & at.is_not_null().to_numpy()
    t = at.fill_null(0).to_numpy()
    if as_of is not None:
        keep &= t <= int(pl.Series([as_of]).cast(TIMESTAMP).dt.epoch("us")[0])
        people = people.filter(pl.col("created_at") <= as_of)
    people = people.select("person_id", "last_seen_on").collect()
    per_person, people_keys, m = (
        _per_person(acts, people, ty, t, keep, exact=False) or _per_person(acts, people, ty, t, keep, exact=True)
    )
    final = pl.col("_final").fill_null(_A)
    matched = (pl.col("k2") == pl.col("_k2")) & pl.col("person_id").is_not_null()
    status = (
        people.with_columns(k=people_keys[0], _k2=people_keys[1])
        .join(per_person, on="k", how="left", maintain_order="left")
        .with_columns(pl.when(matched).then(pl.col(c)).alias(c)
                      for c in ("_final", "archived_inbound", "_last_inbound", "_spell_start"))
        .select(
            "person_id",
            status=_code_to_status(final),
            can_receive=final == _A,
            in_groups=final == _A,
            runs_flows_on_inbound=final.is_in([_A, _S]),
            archived_inbound=pl.col("archived_inbound").fill_null(0).cast(pl.Int64),
            last_seen_on=pl.max_horizontal("last_seen_on", pl.col("_last_inbound").cast(TIMESTAMP).dt.date()),
            archived_at=pl.when(final == _AR).then(pl.col("_spell_start")).cast(TIMESTAMP),
        )
    )
    return ChannelMachine(status=status.lazy(), rejected=_rejected(acts, t, m).lazy())


def _rejected(acts: pl.DataFrame, t: np.ndarray, m: _Machine) -> pl.DataFrame:
    """Post-deletion actions and deletes of non-archived people, in (occurred_at, event_id) order."""
    refused = m.dead_before | ((m.ty == _DELETED) & (m.before != _AR))
    rows = m.rows[refused]
    by_row = np.argsort(rows)
    rows = rows[by_row]
    frm, ty, dead = m.before[refused][by_row], m.ty[refused][by_row], m.dead_before[refused][by_row]
    mask = np.zeros(acts.height, bool)
    mask[rows] = True
    wide = acts.select("event_id", "person_id").filter(pl.Series(mask)).rechunk()
    _, order = sort_by_time(np.zeros(rows.size, np.int64), t[rows], np.arange(rows.size), wide["event_id"])
    return wide.with_columns(_from=frm, _ty=ty, _dead=dead)[order].select(
        "event_id",
        model=pl.lit("channel", REJECTED_MODEL),
        person_id="person_id",
        sequence_id=pl.lit(None, pl.String),
        from_status=_code_to_status(pl.col("_from")).cast(pl.String),
        requested=pl.col("_ty").replace_strict(list(range(1, 8)), list(_ACTIONS), return_dtype=pl.String),
        reason=pl.when(pl.col("_dead")).then(pl.lit(REASON_DELETED)).otherwise(pl.lit(REASON_NOT_ARCHIVED)),
    )


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
      seen), whole days (§4); `archive` when the person is neither archived nor
      deleted and dormant: `days_dormant > dormant_after_days` for a `last_seen_on`
      (a date), and for someone never seen a `created_at` more than
      `dormant_after_days` × 24 h before T (an instant, §7.2).
    * `delete` when the status is archived and the current archived spell began
      more than `delete_after_archived_days` × 24 h before T (strictly).
    * People in `active_in_study_people` are never candidates.
    """
    run_date: date = as_of.date()
    seen = pl.coalesce(pl.col("last_seen_on"), pl.col("created_at").dt.date())
    status = pl.col("status")
    days = (pl.lit(run_date, pl.Date) - seen).dt.total_days().cast(pl.Int64)
    delete_before = as_of - timedelta(days=delete_after_archived_days)
    dormant = (
        pl.when(pl.col("last_seen_on").is_not_null())
        .then(days > dormant_after_days)
        .otherwise(pl.col("created_at") < as_of - timedelta(days=dormant_after_days))
    )
    candidate = (
        pl.when(~status.is_in(["archived", "deleted"]) & dormant)
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

