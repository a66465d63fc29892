"""Per-sequence contact status with flags and manual transitions (SPEC §3.3, §7.12–16).

Source of truth where SPEC is silent: reply-sequence-statuses.txt; every such
decision is written in docs/state-machines.md ("Sequence status").

How it is computed (details and cost in docs/state-machines.md):

1. Membership: adds and removes are resetters of a member/non-member bit
   (an add refused for an opted-out person changes nothing), so one forward
   fill over each (sequence, person)'s events, sorted by one integer key, gives
   every membership *episode* (add → remove).
2. System events never depend on the previous status except for the sticky
   `opted_out` (§7.12), so between two manual changes their effect is a few
   aggregates per *segment* (any opted_out, last status resetter and its time,
   any flag setter).
3. Only manual `status_set`/`status_removed` need the previous state. They are
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
from statusbatch.models.channel import (
    REJECTED_MODEL,
    REJECTED_TRANSITIONS_SCHEMA,
    _cum_sum_in,
    _ffill_in,
    _ordered_runs,
    _prev_in,
    _sort_lex,
)

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
# replied_by codes (0 = none)
_REPLY_CHANNELS = ("email", "sms")

# Reasons of a refused change.
OK, TEAM, UNKNOWN, SYSTEM_ONLY, NOT_REMOVABLE, ALREADY, NOT_ALLOWED, NEEDS_CONTACTED, COMPLETED, NOT_CURRENT, \
    NOT_SET = range(11)
_TEAM_REASON = "only the sequence owner can change statuses (Team Edition)"


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

    Inputs (contract dtypes, already restricted to T; `as_of` restricts events
    again, defensively):
      events: event_id, person_id, occurred_at, event_type, sequence_id, channel, actor_id, value
      sequences: sequence_id, owner_id, team_edition, reply_handling
      opt_out_changes: person_id, changed_at, event_id (null = export observation), opted_out
    The manual-change loop needs materialised data, so this collects its
    inputs once; the returned frames are lazy views of the results.
    """
    if ooo_resume_days < 0:
        raise ValueError("ooo_resume_days must be >= 0")
    resume_us = ooo_resume_days * 86_400_000_000
    as_of_us = _to_us(as_of)

    timeline, pairs, stream, early_rejects = _membership_stream(events, opt_out_changes, as_of)
    episodes, current, member, membership_rejects = _episodes(timeline, pairs, stream, sequences)
    member = _with_segment_scans(member)
    manual = _manual_events(timeline, episodes, member)
    manual_out = _apply_manual(manual, resume_us)

    final = _final_state(episodes, current, member, manual_out, as_of_us, resume_us)
    rejected = pl.concat(
        [early_rejects, membership_rejects, _manual_rejects(manual_out)], how="vertical"
    ).sort("_ord").drop("_ord")  # in the order the refused events happened
    return SequenceMachine(status=final.lazy(), rejected=rejected.lazy())


# ----------------------------------------------------------------------------
# 1. membership episodes


def _to_us(ts: datetime) -> int:
    return int(pl.Series([ts]).cast(TIMESTAMP).dt.epoch("us")[0])


def _opted_out_at_adds(adds: pl.LazyFrame, opt_out_changes: pl.LazyFrame) -> pl.DataFrame:
    """The §3.2 opted_out component at each add (`_ord`, `_opted`).

    The latest change ordered at or before the add, by (time, event_id), an
    export observation (null event_id) first at its instant; none → false.
    """
    changes = opt_out_changes.select(
        pl.col("person_id"), pl.col("changed_at").alias("occurred_at"), pl.col("event_id"),
        pl.col("opted_out").cast(pl.Boolean).fill_null(False), _ord=pl.lit(None, pl.UInt32),
    )
    both = pl.concat(
        [
            adds.select("person_id", "occurred_at", "event_id", opted_out=pl.lit(None, pl.Boolean), _ord="_ord"),
            changes,
        ],
        how="vertical",
    ).with_columns(_is_add=pl.col("_ord").is_not_null())
    runs = _ordered_runs(both, ["person_id"], ["occurred_at", "event_id", "_is_add"])
    return runs.with_columns(_opted=_ffill_in(pl.col("opted_out"), pl.col("_first"), pl.lit(False))).filter(
        pl.col("_is_add")
    ).select("_ord", "_opted")


_WIDE = ["event_id", "person_id", "sequence_id", "actor_id", "value"]


def _membership_stream(
    events: pl.LazyFrame, opt_out_changes: pl.LazyFrame, as_of: datetime
) -> tuple[pl.DataFrame, pl.DataFrame, pl.DataFrame, pl.DataFrame]:
    """(timeline, pairs, stream, early rejects).

    timeline: the relevant events in (occurred_at, event_id) order, `_ord` = row
    number (one sort, skipped when the input is already in that order);
    pairs: one row per (sequence, person) with an add, `_pair` = row number;
    stream: narrow (no strings) events of each pair that can matter, person-level
    opt-outs replicated into each pair, sorted by one integer key (pair, _ord);
    early rejects: manual changes of a pair before its first add (never a member).
    Strings are gathered back from the timeline by `_ord` only where needed.
    """
    t = pl.col("event_type")
    events = events.filter(pl.col("occurred_at") <= as_of)
    manual = t.is_in(["status_set", "status_removed"])
    wanted = (t.is_in(codes.SEQUENCE_SCOPED_EVENTS) & pl.col("sequence_id").is_not_null()) | (t == "opted_out")
    timeline = events.filter(wanted).select(
        *_WIDE, "occurred_at", "event_type",
        pl.when(t.is_in(["replied", "status_set"])).then(pl.col("channel")).alias("channel"),
    ).collect()
    timeline = _sort_lex(timeline, ["occurred_at", "event_id"]).with_row_index("_ord")
    tl = timeline.lazy()
    adds = tl.filter(t == "sequence_added")
    opted = _opted_out_at_adds(adds, opt_out_changes)
    pairs = (
        adds.group_by("sequence_id", "person_id")
        .agg(_first_add=pl.col("_ord").min())
        .sort("_first_add")
        .with_row_index("_pair")
        .collect()
    )
    narrow = ["_pair", "_ord", "occurred_at", "event_type", "channel"]
    seq_rows = _with_pair(tl.filter(t != "opted_out"), pairs, narrow[1:])
    # before the pair's first add (or with no add at all) nobody is a member
    early = pl.col("_pair").is_null() | (pl.col("_ord") < pl.col("_first_add"))
    early_rejects = _gather_wide(timeline, seq_rows.filter(early & manual).select("_ord")).select(
        "_ord",
        "event_id",
        model=pl.lit("sequence", REJECTED_MODEL),
        person_id=pl.lit(timeline["person_id"]).gather(pl.col("_ord")),
        sequence_id=pl.lit(timeline["sequence_id"]).gather(pl.col("_ord")),
        from_status=pl.lit(None, pl.String),
        requested=pl.coalesce(pl.col("value"), pl.lit(timeline["event_type"]).gather(pl.col("_ord")).cast(pl.String)),
        reason=pl.lit("not in the sequence"),
    )
    # a person-level opted_out applies to every sequence the person is in at that time
    person_opt_outs = (
        tl.filter(t == "opted_out")
        .select("person_id", *narrow[1:])
        .join(pairs.lazy().select("person_id", "_pair", "_first_add"), on="person_id", how="inner")
        .filter(pl.col("_ord") > pl.col("_first_add"))
        .select(narrow)
    )
    stream = pl.concat([seq_rows.filter(~early).select(narrow), person_opt_outs], how="vertical")
    stream, early_rejects = pl.collect_all([stream, early_rejects])
    stream = stream.with_columns(
        _key=pl.col("_pair").cast(pl.UInt64) * (1 << 32) + pl.col("_ord").cast(pl.UInt64)
    ).sort("_key")
    opted_by_ord = pl.repeat(None, timeline.height, dtype=pl.Boolean, eager=True).scatter(opted["_ord"], opted["_opted"])
    stream = stream.with_columns(
        _first=(pl.col("_pair") != pl.col("_pair").shift(1)).fill_null(True),
        _opted=pl.lit(opted_by_ord).gather(pl.col("_ord")),
    ).drop("_key")
    return timeline, pairs, stream, early_rejects


def _pair_hash(keys: list[str], seed: int) -> pl.Expr:
    return pl.struct(keys).hash(seed=seed)


def _with_pair(rows: pl.LazyFrame, pairs: pl.DataFrame, columns: list[str]) -> pl.LazyFrame:
    """`rows[columns]` with `_pair` and `_first_add` of their (sequence, person), null when it has no add.

    Joined on a 64-bit hash of the pair (far cheaper than on two strings) and
    checked with a second, independently seeded 64-bit hash: a wrong match needs
    both to collide at once (~2⁻¹²⁸). When two pairs with adds share the first
    hash, the strings are joined instead.
    """
    keys = ["sequence_id", "person_id"]
    hashed = pairs.select("_pair", "_first_add", _h=_pair_hash(keys, 0), _h2p=_pair_hash(keys, 1))
    if hashed["_h"].n_unique() != hashed.height:
        return rows.select(*columns, *keys).join(pairs.lazy(), on=keys, how="left").drop(keys)
    return (
        rows.select(*columns, _h=_pair_hash(keys, 0), _h2=_pair_hash(keys, 1))
        .join(hashed.lazy(), on="_h", how="left")
        .with_columns(
            pl.when(pl.col("_h2") == pl.col("_h2p")).then(pl.col(c)).alias(c) for c in ("_pair", "_first_add")
        )
        .drop("_h", "_h2", "_h2p")
    )


def _gather_wide(timeline: pl.DataFrame, frame: pl.LazyFrame) -> pl.LazyFrame:
    """`frame` with the string columns of its events, found by `_ord`."""
    return frame.with_columns(
        **{c: pl.lit(timeline[c]).gather(pl.col("_ord")) for c in ("event_id", "actor_id", "value")}
    )


def _episodes(
    timeline: pl.DataFrame, pairs: pl.DataFrame, stream: pl.DataFrame, sequences: pl.LazyFrame
) -> tuple[pl.DataFrame, pl.DataFrame, pl.DataFrame, pl.DataFrame]:
    """(episodes, current episode ids, events inside a membership, refused adds and non-member changes).

    Membership is a bit with resetters: an add that is not refused sets it, a
    remove clears it; an add refused for an opted-out person changes nothing.
    """
    t = pl.col("event_type")
    first = pl.col("_first")
    is_add, is_remove = t == "sequence_added", t == "sequence_removed"
    opted = pl.col("_opted").fill_null(False)
    manual = t.is_in(["status_set", "status_removed"])
    mem_write = pl.when(is_add & ~opted).then(pl.lit(1, pl.Int8)).when(is_remove).then(pl.lit(0, pl.Int8))
    df = (
        stream.lazy()
        .with_columns(_after=_ffill_in(mem_write, first, pl.lit(0, pl.Int8)))
        .with_columns(_before=_prev_in(pl.col("_after"), first, pl.lit(0, pl.Int8)))
        .with_columns(_start=is_add & ~opted & (pl.col("_before") == 0))
        # one global, increasing id per episode (runs are contiguous, in time order)
        .with_columns(epi=pl.col("_start").cum_sum().cast(pl.Int64) - 1)
        .collect()
    )
    props = sequences.select(
        "sequence_id",
        _owner=pl.col("owner_id"),
        _team=pl.col("team_edition"),
        _finish=pl.col("reply_handling").cast(pl.String).fill_null("finish") == "finish",
    )
    episodes = (
        df.lazy()
        .filter(pl.col("_start"))
        .select("epi", "_pair", added_at=pl.col("occurred_at"))
        .join(pairs.lazy().select("_pair", "sequence_id", "person_id"), on="_pair", how="left", maintain_order="left")
        .join(props, on="sequence_id", how="left", maintain_order="left")
        .with_columns(pl.col("_team").fill_null(False), pl.col("_finish").fill_null(True))
        .collect()
    )
    # the pair's last episode is current when the pair ends as a member
    is_last = first.shift(-1).fill_null(True)
    current = df.filter(is_last & (pl.col("_after") == 1)).select("epi")
    member = df.filter((pl.col("_before") == 1) & ~is_add & ~is_remove).select(
        "epi", "_ord", "occurred_at", "event_type", "channel", _manual=manual
    )
    rejects = _gather_wide(
        timeline, df.lazy().filter((pl.col("_before") == 0) & ((is_add & opted) | manual)).select("_ord", "event_type")
    ).select(
        "_ord",
        "event_id",
        model=pl.lit("sequence", REJECTED_MODEL),
        person_id=pl.lit(timeline["person_id"]).gather(pl.col("_ord")),
        sequence_id=pl.lit(timeline["sequence_id"]).gather(pl.col("_ord")),
        from_status=pl.lit(None, pl.String),
        requested=pl.when(is_add).then(pl.lit("sequence_added")).otherwise(
            pl.coalesce(pl.col("value"), t.cast(pl.String))
        ),
        reason=pl.when(is_add).then(pl.lit("person is opted out")).otherwise(pl.lit("not in the sequence")),
    ).collect()
    member = member.with_columns(_finish=pl.lit(episodes["_finish"]).gather(pl.col("epi")))
    return episodes, current, member, rejects


# ----------------------------------------------------------------------------
# 2. system events: what each segment between manual changes does


def _status_resetter() -> pl.Expr:
    t = pl.col("event_type")
    return (
        pl.when(pl.col("_manual")).then(None)
        .when(t == "bounced").then(BOUNCED)
        .when(t == "out_of_office").then(OUT_OF_OFFICE)
        .when(t.is_in(["auto_replied", "sequence_completed"])).then(FINISHED)
        .when((t == "replied") & pl.col("_finish")).then(FINISHED)
        .when(t == "missing_data").then(MISSING_DATA)
        .otherwise(None)
        .cast(pl.UInt8)
    )


def _reply_channel(type_is_reply: pl.Expr) -> pl.Expr:
    ch = pl.col("channel").cast(pl.String)
    return pl.when(type_is_reply & ch.is_in(_REPLY_CHANNELS)).then(
        pl.when(ch == "email").then(pl.lit(1, pl.UInt8)).otherwise(pl.lit(2, pl.UInt8))
    )


_SEGMENT_FLAGS = {
    "contacted": "email_sent",
    "completed": "sequence_completed",
    "replied": "replied",
    "to_call": "call_step_reached",
    "called": "call_logged",
}
_EPISODE_FLAGS = {
    "contacted": "email_sent",
    "opened": "email_opened",
    "clicked": "link_clicked",
    "auto_replied": "auto_replied",
    "completed": "sequence_completed",
}


def _with_segment_scans(member: pl.DataFrame) -> pl.DataFrame:
    """Adds, on every row, what the system events of its segment did up to it.

    A segment is the run of system events between two manual changes of an
    episode; a manual change is the last row of the block that holds its
    preceding segment, so on that row the scans are exactly the segment's
    effect, whatever state it starts from (system events are resetters, the
    sticky opted_out aside, and flag setters). Scans reset at every block start.
    """
    t = pl.col("event_type")
    m = pl.col("_manual")
    epi = pl.col("epi")
    sys_ = ~m
    epi_first = (epi != epi.shift(1)).fill_null(True)
    block_first = pl.col("_block_first")
    reset = pl.col("_reset")
    return (
        member.lazy()
        .with_columns(
            _epi_first=epi_first,
            _block_first=epi_first | m.shift(1).fill_null(False),
            _reset=_status_resetter(),
        )
        .with_columns(
            seg=(_cum_sum_in(m, pl.col("_epi_first")) - m.cast(pl.Int64)),
            s_optout=_cum_sum_in(sys_ & (t == "opted_out"), block_first) > 0,
            s_status=_ffill_in(reset, block_first, pl.lit(_NO_STATUS, pl.UInt8)),
            s_status_at=_ffill_in(
                pl.when(reset.is_not_null()).then(pl.col("occurred_at").dt.epoch("us")), block_first, pl.lit(0, pl.Int64)
            ),
            s_replied_by=_ffill_in(_reply_channel(sys_ & (t == "replied")), block_first, pl.lit(0, pl.UInt8)),
            **{f"s_{f}": _cum_sum_in(sys_ & (t == ty), block_first) > 0 for f, ty in _SEGMENT_FLAGS.items()},
            **{f"e_{f}": _cum_sum_in(t == ty, pl.col("_epi_first")) > 0 for f, ty in _EPISODE_FLAGS.items()},
        )
        .collect()
    )


# ----------------------------------------------------------------------------
# 3. manual changes: static checks, then the loop over their rank


def _manual_events(timeline: pl.DataFrame, episodes: pl.DataFrame, member: pl.DataFrame) -> pl.DataFrame:
    """Manual changes with their static refusals, sorted by (rank in episode, episode)."""
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
    seg_cols = ["s_optout", "s_status", "s_status_at", "s_replied_by", *[f"s_{f}" for f in _SEGMENT_FLAGS]]
    by_epi = {c: pl.lit(episodes[c]).gather(pl.col("epi")) for c in ("_owner", "_team", "sequence_id", "person_id")}
    return (
        _gather_wide(timeline, member.lazy().filter(pl.col("_manual")))
        .with_columns(**by_epi)
        .select(
            "epi", "seg", "_ord", "event_id", "person_id", "sequence_id", "value", "event_type", *seg_cols,
            x=pl.col("occurred_at").dt.epoch("us"),
            is_set=is_set,
            code=code,
            static=static,
            finish=pl.col("_finish"),
            rch=_reply_channel(pl.lit(True)).fill_null(0),
            has_next=(pl.col("epi") == pl.col("epi").shift(-1)).fill_null(False),
        )
        .sort("seg", "epi")
        .collect()
    )


_STATE = ("status", "since", "contacted", "completed", "replied", "replied_by", "to_call", "called")


def _apply_manual(manual: pl.DataFrame, resume_us: int) -> pl.DataFrame:
    """Apply every manual change in order; returns `manual` with the state before and after each.

    Loop over rank r: the changes of rank r (sorted by episode) carry the state
    left by rank r-1 of the same episodes (a prefix-aligned subset, since every
    episode with a change of rank r also had one of rank r-1).
    """
    m = manual
    n = m.height
    col = {c: m[c].to_numpy() for c in ("x", "is_set", "code", "static", "finish", "rch", "has_next")}
    s_optout = m["s_optout"].fill_null(False).to_numpy()
    s_status = m["s_status"].fill_null(_NO_STATUS).to_numpy()
    s_status_at = m["s_status_at"].fill_null(0).to_numpy()
    s_flags = {f: m[f"s_{f}"].fill_null(False).to_numpy() for f in ("contacted", "completed", "replied", "to_call", "called")}
    s_replied_by = m["s_replied_by"].fill_null(0).to_numpy()

    out_from = np.zeros(n, np.uint8)
    out_reason = np.zeros(n, np.uint8)
    out = {k: np.zeros(n, np.int64 if k == "since" else (np.uint8 if k in ("status", "replied_by") else bool)) for k in _STATE}

    seg_rank = m["seg"].to_numpy()
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
        raw = np.where((st["status"] == OPTED_OUT) | optout, OPTED_OUT, np.where(sstat != _NO_STATUS, sstat, st["status"]))
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

    return manual.with_columns(
        from_code=pl.Series(out_from),
        reason_code=pl.Series(out_reason),
        **{f"post_{k}": pl.Series(v) for k, v in out.items()},
    )


def _status_name(expr: pl.Expr) -> pl.Expr:
    return expr.replace_strict(list(range(7)), list(codes.SEQUENCE_STATUSES), return_dtype=codes.SequenceStatus)


def _manual_rejects(manual_out: pl.DataFrame) -> pl.DataFrame:
    r = pl.col("reason_code")
    v = pl.coalesce(pl.col("value"), pl.col("event_type").cast(pl.String))
    frm = _status_name(pl.col("from_code")).cast(pl.String)
    reason = (
        pl.when(r == TEAM).then(pl.lit(_TEAM_REASON))
        .when(r == UNKNOWN).then(pl.format("unknown status '{}'", v))
        .when(r == SYSTEM_ONLY).then(pl.format("{} is set by the system only", v))
        .when(r == NOT_REMOVABLE).then(pl.format("{} cannot be removed", v))
        .when(r == ALREADY).then(pl.format("already {}", v))
        .when(r == NOT_ALLOWED).then(pl.format("not allowed from {}", frm))
        .when(r == NEEDS_CONTACTED).then(pl.format("{} needs at least one email sent (contacted)", v))
        .when(r == COMPLETED).then(pl.lit("not allowed from finished: all steps were sent (sequence_completed)"))
        .when(r == NOT_CURRENT).then(pl.format("current status is {}, not {}", frm, v))
        .when(r == NOT_SET).then(pl.format("{} is not set", v))
    )
    return manual_out.filter(r != OK).select(
        "_ord",
        "event_id",
        model=pl.lit("sequence", REJECTED_MODEL),
        person_id="person_id",
        sequence_id="sequence_id",
        from_status=frm,
        requested=v,
        reason=reason,
    ).cast({"_ord": pl.UInt32, **REJECTED_TRANSITIONS_SCHEMA})


# ----------------------------------------------------------------------------
# 4. state at T of the current memberships


def _final_state(
    episodes: pl.DataFrame,
    current: pl.DataFrame,
    member: pl.DataFrame,
    manual_out: pl.DataFrame,
    as_of_us: int,
    resume_us: int,
) -> pl.DataFrame:
    """Each current membership at T: the state after its last manual change plus its last segment."""
    s = pl.col
    epi = s("epi")
    last_rows = member.lazy().filter((epi != epi.shift(-1)).fill_null(True))
    # when the episode ends with a manual change, its last segment is empty
    seg_end = last_rows.select(
        "epi",
        *[s(f"e_{f}").alias(f) for f in _EPISODE_FLAGS],
        **{
            c: pl.when(s("_manual")).then(pl.lit(empty)).otherwise(s(c))
            for c, empty in [("s_optout", False), ("s_status", _NO_STATUS), ("s_replied_by", 0)]
            + [(f"s_{f}", False) for f in _SEGMENT_FLAGS]
        },
        s_status_at=s("s_status_at"),
    )
    last_manual = manual_out.lazy().filter(~s("has_next")).select(
        "epi", *[s(f"post_{k}").alias(f"_m_{k}") for k in _STATE]
    )
    df = (
        episodes.lazy()
        .join(current.lazy(), on="epi", how="semi")
        .join(seg_end, on="epi", how="left")
        .join(last_manual, on="epi", how="left")
        .with_columns(
            _st=s("_m_status").fill_null(ACTIVE),
            _since=s("_m_since").fill_null(0),
            _sstat=s("s_status").fill_null(_NO_STATUS),
        )
        .with_columns(
            _raw=pl.when((s("_st") == OPTED_OUT) | s("s_optout").fill_null(False))
            .then(pl.lit(OPTED_OUT, pl.UInt8))
            .when(s("_sstat") != _NO_STATUS)
            .then(s("_sstat"))
            .otherwise(s("_st")),
            _since=pl.when(s("_sstat") != _NO_STATUS).then(s("s_status_at")).otherwise(s("_since")),
        )
        .with_columns(
            _eff=pl.when(
                pl.lit(resume_us > 0) & (s("_raw") == OUT_OF_OFFICE) & (pl.lit(as_of_us) >= s("_since") + resume_us)
            )
            .then(pl.lit(ACTIVE, pl.UInt8))
            .otherwise(s("_raw")),
            replied=s("_m_replied").fill_null(False) | s("s_replied").fill_null(False),
            _rb=pl.when(s("s_replied_by").fill_null(0) != 0).then(s("s_replied_by")).otherwise(s("_m_replied_by").fill_null(0)),
            to_call=s("_m_to_call").fill_null(False) | s("s_to_call").fill_null(False),
            called=s("_m_called").fill_null(False) | s("s_called").fill_null(False),
        )
        .with_columns(
            status=_status_name(s("_eff")),
            replied_by=pl.when(s("_rb") == 1).then(pl.lit("email")).when(s("_rb") == 2).then(pl.lit("sms")).cast(codes.Channel),
        )
        .select(
            "sequence_id",
            "person_id",
            "status",
            *[s(c).fill_null(False) for c in ("contacted", "opened", "clicked")],
            "replied",
            "replied_by",
            s("auto_replied").fill_null(False),
            "to_call",
            "called",
            can_receive_emails=s("status") == "active",
            replies_tracked=s("status").is_in(["active", "out_of_office"]) & s("contacted").fill_null(False) & ~s("replied"),
            added_at=s("added_at"),
            completed=s("completed").fill_null(False),
        )
        .sort("sequence_id", "person_id")
    )
    return df.collect()
