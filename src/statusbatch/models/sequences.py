"""Per-sequence contact status with flags and manual transitions (SPEC §3.3, §7.12–16).

Source of truth where SPEC is silent: reply-sequence-statuses.txt; every such
decision is written in docs/state-machines.md ("Sequence status").

How it is computed (details and cost in docs/state-machines.md):

1. Stream: each (sequence, person) pair is an integer made of the ranks of its
   strings (exact, no hashing). Its events, plus the person's opted_out
   events replicated into each of its pairs, are sorted once by a single
   128-bit integer key (pair, time, row); strings stay in the input frame and
   are read by row only where needed.
2. Membership: adds and removes are resetters of a member/non-member bit
   (an add refused for an opted-out person changes nothing), so the adds and
   removes alone give every membership *episode* (add → remove).
3. System events never depend on the previous status except for the sticky
   `opted_out` (§7.12), so between two manual changes their effect is a few
   aggregates per *segment* (any opted_out, last status resetter and its time,
   any flag setter): reductions over contiguous blocks of the stream.
4. Only manual `status_set`/`status_removed` need the previous state. They are
   applied by a loop over their rank inside the episode; each step is a handful
   of numpy array operations over every episode that has a manual change of
   that rank (no per-row Python), folding in the preceding segment's aggregates.
"""

from __future__ import annotations

from datetime import datetime
from typing import NamedTuple

import numpy as np
import polars as pl

from statusbatch import codes
from statusbatch.loading.contract import TIMESTAMP
from statusbatch.models.channel import REJECTED_MODEL, REJECTED_TRANSITIONS_SCHEMA
from statusbatch.models.facts import tie
from statusbatch.models.ordering import ffill_in, ordered_runs, small_codes, sort_by_time

__all__ = [
    "SequenceMachine",
    "sequence_machine",
    "sequence_status",
    "sequence_rejected_transitions",
    "REJECTED_TRANSITIONS_SCHEMA",
]

# Primary status codes: positions in codes.SEQUENCE_STATUSES.
ACTIVE, PAUSED, MISSING_DATA, BOUNCED, OUT_OF_OFFICE, FINISHED, OPTED_OUT = range(7)
if codes.SEQUENCE_STATUSES != ("active", "paused", "missing_data", "bounced", "out_of_office", "finished", "opted_out"):
    raise ImportError("statusbatch.codes.SEQUENCE_STATUSES changed: update the status codes of models/sequences.py")
_OPT_MAX = OPTED_OUT  # codes 0..6 are primary statuses
_NO_STATUS = 255  # a segment without a status resetter
# Values of a manual change beyond the primary statuses (flags), and unknown.
REPLIED, TO_CALL, CALLED, CONTACTED, OPENED, CLICKED, AUTO_REPLIED = range(7, 14)
_UNKNOWN = 99
_VALUE_CODES = {**{s: i for i, s in enumerate(codes.SEQUENCE_STATUSES)}, "replied": REPLIED, "to_call": TO_CALL,
                "called": CALLED, "contacted": CONTACTED, "opened": OPENED, "clicked": CLICKED,
                "auto_replied": AUTO_REPLIED}
_SYSTEM_ONLY_FLAGS = ("contacted", "opened", "clicked", "auto_replied", "called")
_NOT_REMOVABLE = ("contacted", "opened", "clicked", "auto_replied", "active")

# Reasons of a refused change.
OK, TEAM, UNKNOWN, SYSTEM_ONLY, NOT_REMOVABLE, ALREADY, NOT_ALLOWED, NEEDS_CONTACTED, COMPLETED, NOT_CURRENT, \
    NOT_SET = range(11)
_TEAM_REASON = "only the sequence owner can change statuses (Team Edition)"

# Event codes in the stream: type << 2 | reply channel (1 email, 2 sms; only on replied and status_set).
_TYPES = (
    "sequence_added", "sequence_removed", "email_sent", "sequence_completed", "email_opened", "link_clicked",
    "replied", "auto_replied", "out_of_office", "bounced", "missing_data", "call_step_reached", "call_logged",
    "status_set", "status_removed", "opted_out",
)
if set(_TYPES) != set(codes.SEQUENCE_SCOPED_EVENTS) | {"opted_out"}:
    raise ImportError("statusbatch.codes.SEQUENCE_SCOPED_EVENTS changed: update the event codes of models/sequences.py")
(T_ADD, T_REMOVE, T_SENT, T_COMPLETED, T_OPENED, T_CLICKED, T_REPLIED, T_AUTO_REPLIED, T_OOO, T_BOUNCED, T_MISSING,
 T_TO_CALL, T_CALLED, T_SET, T_UNSET, T_OPT_OUT) = range(1, 17)
T_REFUSED_ADD = 17  # an add while the opt-out component holds
_TYPE_CODES = {name: i for i, name in enumerate(_TYPES, 1)}
_REPLY_CHANNELS = {"email": 1, "sms": 2}

_RESET = np.full(32, _NO_STATUS, np.uint8)
"""Status set by a system event type; `replied` only when the sequence finishes on reply."""
_RESET[[T_BOUNCED, T_OOO, T_AUTO_REPLIED, T_COMPLETED, T_MISSING, T_REPLIED]] = (
    BOUNCED, OUT_OF_OFFICE, FINISHED, FINISHED, MISSING_DATA, FINISHED)
_BIT = np.uint32(1) << np.arange(32, dtype=np.uint32)
_SEGMENT_FLAGS = {"contacted": T_SENT, "completed": T_COMPLETED, "replied": T_REPLIED, "to_call": T_TO_CALL,
                  "called": T_CALLED}
_EPISODE_FLAGS = {"contacted": T_SENT, "opened": T_OPENED, "clicked": T_CLICKED, "auto_replied": T_AUTO_REPLIED,
                  "completed": T_COMPLETED}


class SequenceMachine(NamedTuple):
    status: pl.LazyFrame
    """`sequence_status` rows (without as_of), plus `added_at` and `completed`."""
    rejected: pl.LazyFrame
    """Refused adds and manual changes, `REJECTED_TRANSITIONS_SCHEMA`."""


def sequence_status(
    events: pl.LazyFrame,
    sequences: pl.LazyFrame,
    opt_out_changes: pl.LazyFrame,
    *,
    as_of: datetime,
    ooo_resume_days: int,
) -> pl.LazyFrame:
    """`sequence_status` rows: each current membership's status and flags at T."""
    return sequence_machine(events, sequences, opt_out_changes, as_of=as_of, ooo_resume_days=ooo_resume_days).status


def sequence_rejected_transitions(
    events: pl.LazyFrame,
    sequences: pl.LazyFrame,
    opt_out_changes: pl.LazyFrame,
    *,
    as_of: datetime,
    ooo_resume_days: int,
) -> pl.LazyFrame:
    """`rejected_transitions` rows of the sequence model (what users tried and was not applied)."""
    return sequence_machine(events, sequences, opt_out_changes, as_of=as_of, ooo_resume_days=ooo_resume_days).rejected


def sequence_machine(
    events: pl.LazyFrame,
    sequences: pl.LazyFrame,
    opt_out_changes: pl.LazyFrame,
    *,
    as_of: datetime,
    ooo_resume_days: int,
) -> SequenceMachine:
    """Run the sequence machine once; both output tables are cheap projections of it.

    Inputs (contract dtypes; `as_of` restricts the events, so the log can be
    passed whole, without a filtered copy; each pair's result depends on its
    own person's events only):
      events: event_id, person_id, occurred_at, event_type, sequence_id, channel, actor_id, value
      sequences: sequence_id, owner_id, team_edition, reply_handling
      opt_out_changes: person_id, changed_at, event_id (null = export observation), opted_out,
        and optionally visible_at (`contact.opt_out_changes`)
    The manual-change loop needs materialised data, so this collects its
    inputs once; the returned frames are lazy views of the results.
    """
    if ooo_resume_days < 0:
        raise ValueError("ooo_resume_days must be >= 0")
    resume_us = ooo_resume_days * 86_400_000_000
    as_of_us = _to_us(as_of)

    timeline = _timeline(events, as_of_us)
    pairs = _pairs(timeline)
    props = _props(pairs, sequences)
    _refuse_opted_out_adds(timeline, opt_out_changes)
    stream = _stream(timeline, pairs)
    ep = _episodes(stream)
    manual = _manual_events(timeline, pairs, props, stream, ep)
    manual_out = _apply_manual(manual, resume_us)

    final = _final_state(pairs, props, stream, ep, manual, manual_out, as_of_us, resume_us)
    rejected = _rejected(timeline, stream, ep, manual, manual_out)
    return SequenceMachine(status=final.lazy(), rejected=rejected.lazy())


# ----------------------------------------------------------------------------
# 1. timeline, pairs and the sorted stream


def _to_us(ts: datetime) -> int:
    return int(pl.Series([ts]).cast(TIMESTAMP).dt.epoch("us")[0])


class _Timeline(NamedTuple):
    frame: pl.DataFrame
    """The events as given (not copied); row number = position. Strings are read from here."""
    t: np.ndarray
    """occurred_at, epoch µs."""
    code: np.ndarray
    """uint8 event code: type << 2 | reply channel; 0 = not relevant (other type, or after T)."""


def _take(frame: pl.DataFrame, rows: np.ndarray, columns: list[str]) -> pl.DataFrame:
    """`frame[rows, columns]` for a few distinct rows: a filter (sequential, unlike a gather
    from many chunks of strings), then a gather from the small result."""
    mask = np.zeros(frame.height, bool)
    mask[rows] = True
    sub = frame.select(columns).filter(pl.Series(mask)).rechunk()
    return sub[np.searchsorted(np.flatnonzero(mask), rows)]


def _timeline(events: pl.LazyFrame, as_of_us: int) -> _Timeline:
    """The events as given (not copied or sorted); the filters (type, sequence, T) only zero the code."""
    # in memory: a projection of a frame in memory is then no copy; one chunk: the array work
    # below is ~1.5x slower over the tens of chunks a streaming collect gives
    frame = (
        events.select("event_id", "person_id", "sequence_id", "actor_id", "value", "event_type", "channel", "occurred_at")
        .collect(engine="in-memory")
        .rechunk()
    )
    ty = small_codes(frame["event_type"], _TYPE_CODES)
    at = frame["occurred_at"].dt.epoch("us")
    keep = frame["sequence_id"].is_not_null().to_numpy() & (ty != 0) | (ty == T_OPT_OUT)
    if at.null_count():
        keep &= at.is_not_null().to_numpy()
        at = at.fill_null(0)
    t = at.to_numpy()
    keep &= t <= as_of_us
    code = np.where(keep, ty << 2, 0).astype(np.uint8)
    replied = np.flatnonzero((code == T_REPLIED << 2) | (code == T_SET << 2))
    code[replied] |= small_codes(frame["channel"].gather(replied), _REPLY_CHANNELS)
    return _Timeline(frame, t, code)


class _Pairs(NamedTuple):
    """(sequence, person) pairs as integers: pair id = person rank · len(sequences) + sequence rank,
    ranks being positions in the sorted distinct strings (exact, no hashing)."""

    persons: pl.Series
    sequences: pl.Series
    of_row: np.ndarray
    """Pair of every timeline row, -1 without a sequence."""
    heads: np.ndarray
    """First row of each run of rows of one pair (or one person, without a sequence) ..."""
    person_of_run: np.ndarray
    """... and the run's person rank."""

    def seq(self, pair: np.ndarray) -> np.ndarray:
        return pair % max(self.sequences.len(), 1)

    def person(self, pair: np.ndarray) -> np.ndarray:
        return pair // max(self.sequences.len(), 1)

    def person_of_rows(self, rows: np.ndarray) -> np.ndarray:
        return self.person_of_run[np.searchsorted(self.heads, rows, side="right") - 1]


def _dense_rank(values: pl.Series) -> tuple[pl.Series, np.ndarray]:
    """(sorted distinct values, nulls first; position of each value in it)."""
    if values.is_sorted():  # (when events come grouped by person, exported in person order)
        head = values.ne_missing(values.shift(1)).to_numpy(writable=True)
        if head.size:
            head[0] = True
        return values.filter(pl.Series(head)), np.cumsum(head) - 1
    distinct = values.unique().sort()
    rank = values.to_frame("v").join(
        distinct.to_frame("v").with_row_index("_r"), on="v", how="left", maintain_order="left", nulls_equal=True
    )["_r"]
    return distinct, rank.cast(pl.Int64).to_numpy()


def _pairs(timeline: _Timeline) -> _Pairs:
    """Pair of every row, from the strings once per run of rows of one pair
    (cheap when events come grouped by person: few runs, persons presorted)."""
    p, s = pl.col("person_id"), pl.col("sequence_id")
    changed = timeline.frame.select(p.ne_missing(p.shift(1)), s.ne_missing(s.shift(1)))  # (two threads)
    head = changed["person_id"].to_numpy() | changed["sequence_id"].to_numpy()
    if head.size:
        head[0] = True
    runs = timeline.frame.select("person_id", "sequence_id").filter(pl.Series(head)).rechunk()
    persons, person_of_run = _dense_rank(runs["person_id"])
    sequences = runs["sequence_id"].drop_nulls().unique().sort()
    seq_of_run = (
        runs.select("sequence_id")
        .join(pl.DataFrame({"sequence_id": sequences, "_r": np.arange(sequences.len())}),
              on="sequence_id", how="left", maintain_order="left")["_r"]
        .fill_null(-1)
        .to_numpy()
    )
    pair_of_run = np.where(seq_of_run >= 0, person_of_run * max(sequences.len(), 1) + seq_of_run, -1)
    heads = np.flatnonzero(head)
    of_row = np.repeat(pair_of_run, np.diff(np.append(heads, head.size)))
    return _Pairs(persons, sequences, of_row, heads, person_of_run)


def _props(pairs: _Pairs, sequences: pl.LazyFrame) -> pl.DataFrame:
    """Per sequence rank: `_owner`, `_team`, `_finish`."""
    return (
        pl.LazyFrame({"sequence_id": pairs.sequences})
        .join(
            sequences.select(
                "sequence_id",
                _owner=pl.col("owner_id"),
                _team=pl.col("team_edition"),
                _finish=pl.col("reply_handling").cast(pl.String).fill_null("finish") == "finish",
            ),
            on="sequence_id",
            how="left",
            maintain_order="left",
        )
        .with_columns(pl.col("_team").fill_null(False), pl.col("_finish").fill_null(True))
        .collect()
    )


def _opted_out_at_adds(adds: pl.LazyFrame, changes: pl.LazyFrame) -> pl.DataFrame:
    """The §3.2 opted_out component at each add (`_ord`, `_opted`), as a run as of the add sees it.

    The latest change ordered at or before the add, by (time, event_id), an
    export observation (null event_id) first at its instant; none → false.
    A hard bounce dated before its participant was added is known only from
    `visible_at` on, and then at its own date (`_opted_out_at_late_adds`).
    """
    late = changes.filter(pl.col("visible_at").is_not_null()).select("person_id").unique()
    prompt_adds, late_adds = adds.join(late, on="person_id", how="anti"), adds.join(late, on="person_id", how="semi")
    both = pl.concat(
        [
            prompt_adds.select("person_id", "occurred_at", "event_id", opted_out=pl.lit(None, pl.Boolean), _ord="_ord"),
            changes.join(late, on="person_id", how="anti").select(
                pl.col("person_id"), pl.col("changed_at").alias("occurred_at"), pl.col("event_id"),
                pl.col("opted_out").cast(pl.Boolean).fill_null(False), _ord=pl.lit(None, pl.UInt32),
            ),
        ],
        how="vertical",
    ).with_columns(_is_add=pl.col("_ord").is_not_null())
    runs = ordered_runs(both, ["person_id"], ["occurred_at", "event_id", "_is_add"])
    prompt = runs.with_columns(_opted=ffill_in(pl.col("opted_out"), pl.col("_first"), pl.lit(False))).filter(
        pl.col("_is_add")
    ).select("_ord", "_opted")
    return pl.concat([prompt, _opted_out_at_late_adds(late_adds, changes.join(late, on="person_id", how="semi"))])


def _opted_out_at_late_adds(adds: pl.LazyFrame, changes: pl.LazyFrame) -> pl.DataFrame:
    """`_opted_out_at_adds` for the few people with a change known after its own date: each add
    against each of its person's changes, the latest known at the add winning."""
    known = (
        pl.when(pl.col("visible_at").is_not_null())
        .then(pl.col("visible_at") <= pl.col("occurred_at"))
        .otherwise(
            (pl.col("changed_at") < pl.col("occurred_at"))
            | ((pl.col("changed_at") == pl.col("occurred_at")) & (tie(pl.col("change_id")) < pl.col("event_id")))
        )
    )
    latest = (
        adds.select("person_id", "occurred_at", "event_id", "_ord")
        .join(
            changes.select("person_id", "changed_at", pl.col("event_id").alias("change_id"), "opted_out", "visible_at"),
            on="person_id",
        )
        .filter(known)
        .sort("_ord", "changed_at", tie(pl.col("change_id")))
        .group_by("_ord")
        .agg(pl.col("opted_out").last().fill_null(False).alias("_opted"))
    )
    return adds.select("_ord").join(latest, on="_ord", how="left").select(
        "_ord", pl.col("_opted").fill_null(False)
    ).collect()


def _refuse_opted_out_adds(timeline: _Timeline, opt_out_changes: pl.LazyFrame) -> None:
    """Recode (in place) the adds made while the person's opt-out component holds
    (only people with opt-out changes can have one)."""
    changes = opt_out_changes.collect()
    if "visible_at" not in changes.columns:
        changes = changes.with_columns(pl.lit(None, dtype=TIMESTAMP).alias("visible_at"))
    is_add = (timeline.code >> 2) == T_ADD
    rows = np.flatnonzero(is_add)
    with_changes = timeline.frame["person_id"].filter(pl.Series(is_add)).is_in(changes["person_id"].implode())
    rows = rows[with_changes.fill_null(True).to_numpy()]
    adds = _take(timeline.frame, rows, ["person_id", "occurred_at", "event_id"]).with_columns(
        _ord=pl.Series(rows, dtype=pl.UInt32)
    )
    opted = _opted_out_at_adds(adds.lazy(), changes.lazy()).filter(pl.col("_opted"))
    timeline.code[opted["_ord"].to_numpy()] = T_REFUSED_ADD << 2


class _Stream(NamedTuple):
    """Events of the pairs in (pair, occurred_at, event_id) order."""

    pair: np.ndarray
    row: np.ndarray
    """Row in the timeline (a replicated opted_out keeps its row)."""
    code: np.ndarray
    t_of_row: np.ndarray
    """The timeline's times, by row."""

    def t(self, pos: np.ndarray) -> np.ndarray:
        return self.t_of_row[self.row[pos]]


def _stream(timeline: _Timeline, pairs: _Pairs) -> _Stream:
    ty = timeline.code >> 2
    # a person-level opted_out applies to every sequence the person is in at that time
    with_add = pl.Series(pairs.of_row[(ty == T_ADD) | (ty == T_REFUSED_ADD)]).unique()
    opt_out = np.flatnonzero(ty == T_OPT_OUT)
    replicated = pl.DataFrame({"_person": pairs.person_of_rows(opt_out), "_row": opt_out}).join(
        pl.DataFrame({"_person": pairs.person(with_add.to_numpy()), "_pair": with_add}),
        on="_person", how="inner", maintain_order="left",
    )
    # every row as many times as it has pairs, in row order: the sort is much
    # cheaper on keys mostly in order already
    copies = ((pairs.of_row >= 0) & (ty != 0) & (ty != T_OPT_OUT)).astype(np.int64)
    opt_rows, n_pairs = np.unique(replicated["_row"].to_numpy(), return_counts=True)
    copies[opt_rows] = n_pairs
    row = np.repeat(np.arange(copies.size), copies)
    pair = pairs.of_row[row]
    pair[(ty[row] == T_OPT_OUT)] = replicated["_pair"].to_numpy()
    pair, row = sort_by_time(pair, timeline.t[row], row, timeline.frame["event_id"])
    return _Stream(pair, row, timeline.code[row], timeline.t)


# ----------------------------------------------------------------------------
# 2. membership episodes and what the system events of each segment did

_RESETTERS = (T_BOUNCED, T_OOO, T_AUTO_REPLIED, T_COMPLETED, T_MISSING)
"""Status resetters, `replied` aside (it is one only when the sequence finishes on reply)."""


def _is_any(ty: np.ndarray, types: tuple[int, ...]) -> np.ndarray:
    """`ty` in `types`, by comparisons: far cheaper than a lookup table over millions of rows."""
    out = ty == types[0]
    for other in types[1:]:
        out |= ty == other
    return out


class _Episodes(NamedTuple):
    starts: np.ndarray
    """Stream position of each episode's accepted add (episode id = index)."""
    ends: np.ndarray
    """Position just after each episode (its remove, or the end of its pair)."""
    current: np.ndarray
    """Ids of the episodes open at the end of their pair (ascending = pair order)."""
    manual: np.ndarray
    """Positions of the manual changes made inside an episode ..."""
    manual_epi: np.ndarray
    """... and their episode."""
    outside: np.ndarray
    """Positions of manual changes and refused adds outside any episode."""
    block: np.ndarray
    """Block of every row: blocks start at episode starts and ends and after each member manual change."""
    block_bits: np.ndarray
    """Per block: bit `1 << type` of every event in it."""
    episode_bits: np.ndarray
    """Per episode: the same over the whole episode."""
    last_reset: np.ndarray
    """Per block: position of the last status resetter other than `replied`, or -1."""
    last_replied: np.ndarray
    """Per block: position of the last `replied`, or -1."""
    last_reply_channel: np.ndarray
    """Per block: position of the last `replied` by email or sms, or -1."""


def _inside(starts: np.ndarray, ends: np.ndarray, pos: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(inside, episode) of stream positions that are not accepted adds."""
    epi = np.searchsorted(starts, pos, side="right") - 1
    return (epi >= 0) & (pos < ends[np.maximum(epi, 0)] if ends.size else False), epi


def _episodes(s: _Stream) -> _Episodes:
    """Membership is a bit with resetters: an add that is not refused sets it, a
    remove clears it, an add refused for an opted-out person changes nothing;
    so it only needs the (few) adds and removes.

    Segments: a manual change is the last row of the block that holds its
    preceding segment; system events are resetters (the sticky opted_out aside)
    and flag setters, so a block's effect is a few reductions, whatever state it
    starts from. Blocks are also cut at episode ends, so rows outside
    memberships never mix in, and the events inside a membership that are not
    system events (adds, manual changes) have types that no reduction reads.
    """
    n = s.row.size
    ty = s.code >> 2
    first = np.ones(n, bool)
    np.not_equal(s.pair[1:], s.pair[:-1], out=first[1:])
    pair_starts = np.append(np.flatnonzero(first), n)
    writers = np.flatnonzero(_is_any(ty, (T_ADD, T_REMOVE)))
    adds = ty[writers] == T_ADD
    before = np.zeros(writers.size, bool)  # member just before each writer
    before[1:] = adds[:-1] & (s.pair[writers[1:]] == s.pair[writers[:-1]])
    starts = writers[adds & ~before]
    removes = writers[~adds & before]
    # an episode ends at the first remove after it in its pair, else at the pair's end
    pair_end = pair_starts[np.searchsorted(pair_starts, starts, side="right")]
    nxt = np.searchsorted(removes, starts)
    removed_at = np.append(removes, n)[nxt]
    ends = np.minimum(removed_at, pair_end)
    current = np.flatnonzero(removed_at >= pair_end)

    candidates = np.flatnonzero(_is_any(ty, (T_SET, T_UNSET)))
    inside, epi = _inside(starts, ends, candidates)
    manual, manual_epi = candidates[inside], epi[inside]
    refused = np.flatnonzero(ty == T_REFUSED_ADD)
    outside = np.sort(np.concatenate([candidates[~inside], refused[~_inside(starts, ends, refused)[0]]]))

    cuts = np.concatenate([[0], starts, manual + 1, ends])
    block_first = np.zeros(n + 1, bool)
    block_first[cuts] = True
    block_first = block_first[:n]
    block = np.cumsum(block_first, dtype=np.int32) - 1
    block_pos = np.flatnonzero(block_first)
    bits = np.left_shift(np.uint32(1), ty, dtype=np.uint32)
    block_bits = np.bitwise_or.reduceat(bits, block_pos) if n else np.zeros(0, np.uint32)
    # per episode: reduce its blocks only (pairs of bounds; odd results span the gaps)
    bounds = np.empty(2 * starts.size, np.int64)
    bounds[0::2], bounds[1::2] = block[starts], block[ends - 1] + 1
    episode_bits = (
        np.bitwise_or.reduceat(np.append(block_bits, np.uint32(0)), bounds)[0::2]
        if starts.size else np.zeros(0, np.uint32)
    )

    def last_in_block(pos: np.ndarray) -> np.ndarray:
        b = block[pos]
        keep = np.ones(pos.size, bool)
        keep[:-1] = b[1:] != b[:-1]
        out = np.full(block_pos.size, -1, np.int64)
        out[b[keep]] = pos[keep]
        return out

    replied = np.flatnonzero(ty == T_REPLIED)
    return _Episodes(
        starts=starts,
        ends=ends,
        current=current,
        manual=manual,
        manual_epi=manual_epi,
        outside=outside,
        block=block,
        block_bits=block_bits,
        episode_bits=episode_bits,
        last_reset=last_in_block(np.flatnonzero(_is_any(ty, _RESETTERS))),
        last_replied=last_in_block(replied),
        last_reply_channel=last_in_block(replied[(s.code[replied] & 3) != 0]),
    )


def _segment(s: _Stream, ep: _Episodes, blocks: np.ndarray, finish: np.ndarray) -> dict[str, np.ndarray]:
    """What the system events of `blocks` (-1 = an empty segment) did: the `s_*` values.

    With `reply_handling = continue`, a reply wakes an out-of-office contact (seed: the reply
    setting decides, "continue sending emails"): after an `out_of_office` of the segment it makes
    the segment's status `active`; in a segment with no status resetter, `s_wakes` tells the fold
    to do the same to an out-of-office status carried in.
    """
    empty = blocks < 0
    b = np.where(empty, 0, blocks)
    bits = np.where(empty, np.uint32(0), ep.block_bits[b])
    reset = np.where(empty, -1, np.maximum(ep.last_reset[b], np.where(finish, ep.last_replied[b], -1)))
    channel = np.where(empty, -1, ep.last_reply_channel[b])
    has_reset, has_channel = reset >= 0, channel >= 0
    r, c = np.where(has_reset, reset, 0), np.where(has_channel, channel, 0)
    status = np.where(has_reset, _RESET[s.code[r] >> 2], _NO_STATUS).astype(np.uint8)
    status_at = np.where(has_reset, s.t(r), 0).astype(np.int64)
    woken = np.where(empty | finish, -1, ep.last_replied[b])
    wakes = woken > reset
    resumed = wakes & (status == OUT_OF_OFFICE)
    return {
        "s_optout": (bits & _BIT[T_OPT_OUT]) != 0,
        "s_status": np.where(resumed, ACTIVE, status).astype(np.uint8),
        "s_status_at": np.where(resumed, s.t(np.maximum(woken, 0)), status_at).astype(np.int64),
        "s_wakes": wakes & ~has_reset,
        "s_replied_by": np.where(has_channel, s.code[c] & 3, 0).astype(np.uint8),
        **{f"s_{f}": (bits & _BIT[ty]) != 0 for f, ty in _SEGMENT_FLAGS.items()},
    }


def _folded(carried: np.ndarray, optout: np.ndarray, s_status: np.ndarray, wakes: np.ndarray) -> np.ndarray:
    """The status after a segment, from the one carried into it: opted_out is sticky (§7.12), then
    the segment's last resetter, then a continue-reply waking an out-of-office contact."""
    woken = np.where(wakes & (carried == OUT_OF_OFFICE), ACTIVE, carried)
    return np.where((carried == OPTED_OUT) | optout, OPTED_OUT, np.where(s_status != _NO_STATUS, s_status, woken))


# ----------------------------------------------------------------------------
# 3. manual changes: static checks, then the loop over their rank


def _manual_events(
    timeline: _Timeline, pairs: _Pairs, props: pl.DataFrame, s: _Stream, ep: _Episodes
) -> dict[str, np.ndarray]:
    """Manual changes with their static refusals and preceding segment, sorted by (rank in episode, episode)."""
    pos, epi = ep.manual, ep.manual_epi
    k = pos.size
    new_epi = np.ones(k, bool)
    new_epi[1:] = epi[1:] != epi[:-1]
    idx = np.arange(k)
    seg = idx - np.maximum.accumulate(np.where(new_epi, idx, 0))
    has_next = np.zeros(k, bool)
    has_next[:-1] = ~new_epi[1:]
    seq = pairs.seq(s.pair[ep.starts[epi]])
    finish = props["_finish"].to_numpy()[seq]
    row = s.row[pos]

    t = pl.col("event_type")
    v = pl.col("value")
    is_set = t == "status_set"
    code = v.replace_strict(_VALUE_CODES, default=_UNKNOWN, return_dtype=pl.UInt8).fill_null(_UNKNOWN)
    owner_ok = pl.col("actor_id").is_not_null() & (pl.col("actor_id") == pl.col("_owner")).fill_null(False)
    static = (
        pl.when(pl.col("_team") & ~owner_ok & ~(is_set & (v == "opted_out")).fill_null(False))
        .then(TEAM)
        .when(code == _UNKNOWN).then(UNKNOWN)
        .when(is_set & v.is_in(_SYSTEM_ONLY_FLAGS)).then(SYSTEM_ONLY)
        .when(~is_set & v.is_in(_NOT_REMOVABLE)).then(NOT_REMOVABLE)
        .otherwise(OK)
        .cast(pl.UInt8)
    )
    checks = (
        _take(timeline.frame, row, ["event_type", "value", "actor_id"])
        .hstack(props.select("_owner", "_team")[seq])
        .select(is_set=is_set, code=code, static=static)
    )
    columns = {
        "pos": pos, "row": row, "epi": epi, "seg": seg, "has_next": has_next, "finish": finish,
        "x": s.t(pos), "rch": s.code[pos] & 3,
        **{c: checks[c].to_numpy() for c in checks.columns},
        **_segment(s, ep, ep.block[pos], finish),
    }
    # computed in stream order (memory access in order), then sorted; rows are in episode order already
    order = np.argsort(seg, kind="stable")
    return {name: values[order] for name, values in columns.items()}


_STATE = ("status", "since", "contacted", "completed", "replied", "replied_by", "to_call", "called")
def _apply_manual(manual: dict[str, np.ndarray], resume_us: int) -> dict[str, np.ndarray]:
    """Apply every manual change in order; returns the state before (`from_code`), the reason and the state after each.

    Loop over rank r: the changes of rank r (sorted by episode) carry the state
    left by rank r-1 of the same episodes (a prefix-aligned subset, since every
    episode with a change of rank r also had one of rank r-1).
    """
    col = manual
    n = col["x"].size
    s_optout, s_status, s_status_at = col["s_optout"], col["s_status"], col["s_status_at"]
    s_flags = {f: col[f"s_{f}"] for f in ("contacted", "completed", "replied", "to_call", "called")}
    s_replied_by = col["s_replied_by"]

    out_from = np.zeros(n, np.uint8)
    out_reason = np.zeros(n, np.uint8)
    out = {k: np.zeros(n, np.int64 if k == "since" else (np.uint8 if k in ("status", "replied_by") else bool)) for k in _STATE}

    seg_rank = col["seg"]
    bounds = np.flatnonzero(np.diff(seg_rank)) + 1 if n else np.array([], np.int64)
    starts = np.concatenate([[0], bounds]).astype(np.int64) if n else np.array([], np.int64)
    ends = np.concatenate([bounds, [n]]).astype(np.int64) if n else np.array([], np.int64)

    first = ends[0] - starts[0] if n else 0
    st = {
        "status": np.full(first, ACTIVE, np.uint8),
        "since": np.zeros(first, np.int64),
        "replied_by": np.zeros(first, np.uint8),
        **{f: np.zeros(first, bool) for f in ("contacted", "completed", "replied", "to_call", "called")},
    }
    for a, b in zip(starts, ends):
        sl = slice(a, b)
        # fold in the system events since the previous manual change
        optout = s_optout[sl]
        sstat = s_status[sl]
        raw = _folded(st["status"], optout, sstat, col["s_wakes"][sl])
        since = np.where(sstat != _NO_STATUS, s_status_at[sl], st["since"])
        x = col["x"][sl]
        eff = raw
        if resume_us:
            eff = np.where((raw == OUT_OF_OFFICE) & (x >= since + resume_us), ACTIVE, raw).astype(np.uint8)
        contacted = st["contacted"] | s_flags["contacted"][sl]
        completed = st["completed"] | s_flags["completed"][sl]
        replied = st["replied"] | s_flags["replied"][sl]
        rb = s_replied_by[sl]
        replied_by = np.where(rb != 0, rb, st["replied_by"]).astype(np.uint8)
        to_call = st["to_call"] | s_flags["to_call"][sl]
        called = st["called"] | s_flags["called"][sl]

        code, is_set, reason = col["code"][sl], col["is_set"][sl], col["static"][sl].copy()
        todo = reason == OK
        prim = code <= _OPT_MAX
        # status_set of a primary status
        sp = todo & is_set & prim
        allowed = (
            ((eff == ACTIVE) & np.isin(code, (PAUSED, FINISHED, OUT_OF_OFFICE, OPTED_OUT)))
            | ((eff == ACTIVE) & (code == BOUNCED) & contacted)
            | (np.isin(eff, (PAUSED, MISSING_DATA, BOUNCED, OUT_OF_OFFICE)) & np.isin(code, (ACTIVE, OPTED_OUT)))
            | ((eff == FINISHED) & ((code == OPTED_OUT) | ((code == ACTIVE) & ~completed)))
            | ((eff == OPTED_OUT) & (code == ACTIVE))
        )
        reason[sp & (eff == code)] = ALREADY
        bad = sp & (eff != code) & ~allowed
        reason[bad] = NOT_ALLOWED
        reason[bad & (eff == ACTIVE) & (code == BOUNCED)] = NEEDS_CONTACTED
        reason[bad & (eff == FINISHED) & (code == ACTIVE)] = COMPLETED
        # status_removed of a primary status: S -> active when S is current
        rp = todo & ~is_set & prim
        reason[rp & (eff != code)] = NOT_CURRENT
        reason[rp & (eff == code) & (eff == FINISHED) & completed] = COMPLETED
        # status_set replied
        sr = todo & is_set & (code == REPLIED)
        reason[sr & replied] = ALREADY
        reason[sr & ~replied & (eff != ACTIVE)] = NOT_ALLOWED
        reason[sr & ~replied & (eff == ACTIVE) & ~contacted] = NEEDS_CONTACTED
        # to_call / called / replied as flags
        st_call = todo & is_set & (code == TO_CALL)
        reason[st_call & to_call] = ALREADY
        rm = todo & ~is_set
        reason[rm & (code == REPLIED) & ~replied] = NOT_SET
        reason[rm & (code == TO_CALL) & ~to_call] = NOT_SET
        reason[rm & (code == CALLED) & ~called] = NOT_SET

        ok = reason == OK
        new_status = np.where(ok & sp, code, eff)
        new_status = np.where(ok & rp, ACTIVE, new_status)
        new_status = np.where(ok & sr & col["finish"][sl], FINISHED, new_status).astype(np.uint8)
        new_since = np.where(ok & sp & (code == OUT_OF_OFFICE), x, since)
        new_replied = np.where(ok & sr, True, np.where(ok & rm & (code == REPLIED), False, replied))
        rch = col["rch"][sl]
        new_rb = np.where(ok & sr & (rch != 0), rch, replied_by)
        new_rb = np.where(ok & rm & (code == REPLIED), 0, new_rb).astype(np.uint8)
        new_to_call = np.where(ok & st_call, True, np.where(ok & rm & (code == TO_CALL), False, to_call))
        new_called = np.where(ok & rm & (code == CALLED), False, called)

        out_from[sl] = eff
        out_reason[sl] = reason
        new = {
            "status": new_status, "since": new_since, "contacted": contacted, "completed": completed,
            "replied": new_replied, "replied_by": new_rb, "to_call": new_to_call, "called": new_called,
        }
        for k in _STATE:
            out[k][sl] = new[k]
        keep = col["has_next"][sl]
        st = {k: v[keep] for k, v in new.items()}

    return {"from_code": out_from, "reason_code": out_reason, **{f"post_{k}": v for k, v in out.items()}}


def _status_name(expr: pl.Expr) -> pl.Expr:
    return expr.replace_strict(list(range(7)), list(codes.SEQUENCE_STATUSES), return_dtype=codes.SequenceStatus)


# ----------------------------------------------------------------------------
# 4. state at T of the current memberships, and the refused events


def _final_state(
    pairs: _Pairs,
    props: pl.DataFrame,
    s: _Stream,
    ep: _Episodes,
    manual: dict[str, np.ndarray],
    manual_out: dict[str, np.ndarray],
    as_of_us: int,
    resume_us: int,
) -> pl.DataFrame:
    """Each current membership at T: the state after its last manual change plus its last segment,
    in (sequence_id, person_id) order."""
    epi = ep.current  # in pair order: by person, then sequence (memory access in stream order)
    start = ep.starts[epi]
    pair = s.pair[start]
    seq, person = pairs.seq(pair), pairs.person(pair)
    finish = props["_finish"].to_numpy()[seq]
    # the last segment is the block of the episode's last row, empty when that row is a manual change
    last = ep.ends[epi] - 1
    ends_manual = _is_any(s.code[last] >> 2, (T_SET, T_UNSET))  # (the episode's own add is never manual)
    seg = _segment(s, ep, np.where(ends_manual, -1, ep.block[last]), finish)

    last_manual = np.full(ep.starts.size, -1, np.int64)
    final_change = ~manual["has_next"]
    last_manual[manual["epi"][final_change]] = np.flatnonzero(final_change)
    which = last_manual[epi]
    has_manual = which >= 0
    which = np.where(has_manual, which, 0)

    def after_manual(name: str, default: int | bool) -> np.ndarray:
        values = manual_out[f"post_{name}"]
        return np.where(has_manual, values[which], default) if values.size else np.full(epi.size, default)

    status, since = after_manual("status", ACTIVE), after_manual("since", 0)
    s_status = seg["s_status"]
    raw = _folded(status, seg["s_optout"], s_status, seg["s_wakes"])
    since = np.where(s_status != _NO_STATUS, seg["s_status_at"], since)
    eff = raw
    if resume_us > 0:
        eff = np.where((raw == OUT_OF_OFFICE) & (as_of_us >= since + resume_us), ACTIVE, raw)
    bits = ep.episode_bits[epi]
    s_rb = seg["s_replied_by"]
    c = pl.col
    return pl.DataFrame(
        {
            "sequence_id": pairs.sequences.gather(seq),
            "person_id": pairs.persons.gather(person),
            "_eff": eff.astype(np.uint8),
            **{f: (bits & _BIT[ty]) != 0 for f, ty in _EPISODE_FLAGS.items()},
            "replied": after_manual("replied", False) | seg["s_replied"],
            "_rb": np.where(s_rb != 0, s_rb, after_manual("replied_by", 0)),
            "to_call": after_manual("to_call", False) | seg["s_to_call"],
            "called": after_manual("called", False) | seg["s_called"],
            "added_at": pl.Series(s.t(start), dtype=pl.Int64).cast(TIMESTAMP),
        }
    ).select(
        "sequence_id",
        "person_id",
        _status_name(c("_eff")).alias("status"),
        "contacted",
        "opened",
        "clicked",
        "replied",
        replied_by=pl.when(c("_rb") == 1).then(pl.lit("email")).when(c("_rb") == 2).then(pl.lit("sms")).cast(codes.Channel),
        auto_replied="auto_replied",
        to_call="to_call",
        called="called",
        can_receive_emails=c("_eff") == ACTIVE,
        replies_tracked=c("_eff").is_in([ACTIVE, OUT_OF_OFFICE]) & c("contacted") & ~c("replied"),
        added_at="added_at",
        completed="completed",
    )[np.argsort(seq.astype(np.uint16) if pairs.sequences.len() <= 1 << 16 else seq, kind="stable")]
    # (then stable by sequence: a radix sort when the ranks fit in 16 bits)


_OUTSIDE = 255  # reason code of an add or manual change outside any membership
_REASONS = {  # reason code: (text, "v"/"frm"/"", text, "v"/"", text)
    TEAM: (_TEAM_REASON, "", "", "", ""),
    UNKNOWN: ("unknown status '", "v", "'", "", ""),
    SYSTEM_ONLY: ("", "v", " is set by the system only", "", ""),
    NOT_REMOVABLE: ("", "v", " cannot be removed", "", ""),
    ALREADY: ("already ", "v", "", "", ""),
    NOT_ALLOWED: ("not allowed from ", "frm", "", "", ""),
    NEEDS_CONTACTED: ("", "v", " needs at least one email sent (contacted)", "", ""),
    COMPLETED: ("not allowed from finished: all steps were sent (sequence_completed)", "", "", "", ""),
    NOT_CURRENT: ("current status is ", "frm", ", not ", "v", ""),
    NOT_SET: ("", "v", " is not set", "", ""),
    _OUTSIDE: ("", "", "", "", ""),
}


def _rejected(
    timeline: _Timeline,
    s: _Stream,
    ep: _Episodes,
    manual: dict[str, np.ndarray],
    manual_out: dict[str, np.ndarray],
) -> pl.DataFrame:
    """Refused adds and manual changes, in the order they happened (occurred_at, event_id)."""
    outside = s.row[ep.outside]
    refused = manual_out["reason_code"] != OK
    rows = np.concatenate([outside, manual["row"][refused]])
    from_code = np.concatenate([np.zeros(outside.size, np.uint8), manual_out["from_code"][refused]])
    reason_code = np.concatenate([np.full(outside.size, _OUTSIDE, np.uint8), manual_out["reason_code"][refused]])
    by_row = np.argsort(rows)
    rows, from_code, reason_code = rows[by_row], from_code[by_row], reason_code[by_row]
    wide = _take(timeline.frame, rows, ["event_id", "person_id", "sequence_id", "event_type", "value"])
    _, order = sort_by_time(np.zeros(rows.size, np.int64), timeline.t[rows], np.arange(rows.size), wide["event_id"])

    r = pl.col("_reason")
    ty_name = pl.col("event_type").cast(pl.String)
    v = pl.coalesce(pl.col("value"), ty_name)
    frm = _status_name(pl.col("_from")).cast(pl.String)
    # reason = text, value or from-status, text, value, text: the parts by reason code
    # (one concatenation instead of a format per reason, each over every row)
    part = [r.replace_strict(list(_REASONS), [p[i] for p in _REASONS.values()], return_dtype=pl.String)
            for i in range(5)]
    reason = pl.concat_str(
        part[0],
        pl.when(part[1] == "v").then(v).when(part[1] == "frm").then(frm).otherwise(pl.lit("")),
        part[2],
        pl.when(part[3] == "v").then(v).otherwise(pl.lit("")),
        part[4],
    )
    not_member = pl.when(ty_name == "sequence_added").then(pl.lit("person is opted out")).otherwise(
        pl.lit("not in the sequence")
    )
    reason = pl.when(r == _OUTSIDE).then(not_member).otherwise(reason)
    return (
        wide.with_columns(_from=pl.Series(from_code), _reason=pl.Series(reason_code))[order]
        .select(
            "event_id",
            model=pl.lit("sequence", REJECTED_MODEL),
            person_id="person_id",
            sequence_id="sequence_id",
            from_status=pl.when(r != _OUTSIDE).then(frm),
            requested=pl.when(ty_name == "sequence_added").then(pl.lit("sequence_added")).otherwise(v),
            reason=reason,
        )
        .cast(REJECTED_TRANSITIONS_SCHEMA)
    )
