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
from collections.abc import Callable
from typing import NamedTuple

import numpy as np
import polars as pl
import pyarrow as pa

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


def _sort_u128(words: np.ndarray) -> np.ndarray:
    """Rows of `words` (n × 2 uint64: low, high) sorted as 128-bit keys; needs high < 2**62.

    One sort of a 128-bit integer is several times cheaper than a sort by two
    columns (or an arg-sort and gathers). numpy has no 128-bit integer, so the
    keys cross to Polars as Arrow decimal128(38, 0) (an i128; the bound on the
    high word keeps it positive and within 38 digits), zero-copy both ways.
    """
    n = words.shape[0]
    if n == 0:
        return words
    if words[:, 1].max() >= 1 << 62:
        raise ValueError("sort key out of range")
    keys = pa.Array.from_buffers(pa.decimal128(38, 0), n, [None, pa.py_buffer(np.ascontiguousarray(words))])
    out = pl.Series(keys).sort().rechunk().to_arrow()
    if isinstance(out, pa.ChunkedArray):
        out = out.combine_chunks()
    return np.frombuffer(out.buffers()[1], np.uint64, count=2 * n, offset=out.offset * 16).reshape(n, 2)


def _sort_by_time(
    group: np.ndarray, t: np.ndarray, row: np.ndarray, event_id: pl.Series
) -> tuple[np.ndarray, np.ndarray]:
    """(group, row) sorted by group, time (epoch µs), event_id (nulls first), row.

    Non-negative int64 `group` and `row`; `event_id[i]` is row i's (`row` may
    repeat across groups). One 128-bit integer sort by (group, time, row) — row
    in as few bits as it needs, groups renumbered densely when they do not fit
    in the rest; then only the rows tying on (group, time) — rare — are put in
    event_id order in place.
    """
    n = row.size
    if n == 0:
        return np.asarray(group, np.int64), np.asarray(row, np.int64)
    bits = max(int(row.max()).bit_length(), 1)
    if bits > 32:
        raise ValueError("too many rows")
    if int(group.max()) >> (62 - bits):
        distinct, group = np.unique(group, return_inverse=True)
        dense, row = _sort_by_time(group.astype(np.int64), t, row, event_id)
        return distinct[dense], row
    one, shift, low = np.uint64(1 << 63), np.uint64(bits), np.uint64((1 << bits) - 1)
    words = np.empty((n, 2), np.uint64)
    tb = np.asarray(t, np.int64).view(np.uint64) ^ one  # order-preserving
    np.left_shift(np.asarray(group, np.int64).view(np.uint64), shift, out=words[:, 1])
    words[:, 1] |= tb >> np.uint64(64 - bits)
    np.left_shift(tb, shift, out=tb)
    np.bitwise_or(tb, np.asarray(row, np.int64).view(np.uint64), out=words[:, 0])
    del tb
    words = _sort_u128(words)
    hi, lo = words[:, 1], words[:, 0]
    group, row = (hi >> shift).view(np.int64), (lo & low).view(np.int64)
    same = hi[1:] == hi[:-1]
    same &= (lo[1:] ^ lo[:-1]) <= low
    if same.any():
        tied = np.zeros(n, bool)
        tied[1:] |= same
        tied[:-1] |= same
        at = np.flatnonzero(tied)
        sub = pl.DataFrame({"hi": hi[at], "lo": lo[at] >> shift, "e": event_id.gather(row[at]), "r": row[at]})
        order = sub.select(pl.arg_sort_by("hi", "lo", "e", "r")).to_series().to_numpy()
        row[at] = row[at][order]
    return group, row


def _small_codes(values: pl.Series, mapping: dict[str, int]) -> np.ndarray:
    """`mapping[value]` of every row as uint8, 0 for other values and null (via the Enum's physical codes)."""
    if isinstance(values.dtype, pl.Enum) and len(values.dtype.categories) < 256:
        categories = values.dtype.categories.to_list()
        table = bytes([mapping.get(c, 0) for c in categories] + [0] * (256 - len(categories)))
        physical = values.to_physical().cast(pl.UInt8).fill_null(255)
        # a 256-byte translation table: far cheaper than a numpy lookup over millions of rows
        return np.frombuffer(physical.to_numpy().tobytes().translate(table), np.uint8)
    return values.cast(pl.String).replace_strict(mapping, default=0, return_dtype=pl.UInt8).fill_null(0).to_numpy()


# Window helper over a frame made by _ordered_runs: `first` marks the first
# row of each run (person...). A global scan reset at run starts is much
# cheaper than `.over()` with many small groups.


def _ffill_in(expr: pl.Expr, first: pl.Expr, default: pl.Expr) -> pl.Expr:
    """Forward fill inside each run; `default` before the run's first value."""
    return pl.when(first & expr.is_null()).then(default).otherwise(expr).forward_fill()


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
    person, rows = _sort_by_time(person, t[rows], rows, event_id)
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
    ty = _small_codes(acts["event_type"], _ACTION_CODES)
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
    _, order = _sort_by_time(np.zeros(rows.size, np.int64), t[rows], np.arange(rows.size), wide["event_id"])
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

