"""Plain, per-membership reference implementations of the status machines.

Used only by tests: they apply events one at a time, exactly as SPEC §3.3/§3.4
and docs/state-machines.md describe them, so the vectorised models can be
compared with them on random inputs. Written independently of the models
(no shared code), on purpose.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

import polars as pl

from statusbatch.loading.contract import TIMESTAMP, input_table

PRIMARY = ("active", "paused", "missing_data", "bounced", "out_of_office", "finished", "opted_out")
KNOWN_VALUES = PRIMARY + ("replied", "to_call", "called", "contacted", "opened", "clicked", "auto_replied")
SYSTEM_ONLY = ("contacted", "opened", "clicked", "auto_replied", "called")
NOT_REMOVABLE = ("contacted", "opened", "clicked", "auto_replied", "active")
TEAM_REASON = "only the sequence owner can change statuses (Team Edition)"

# §3.3 table: from -> allowed targets (bounced from active also needs contacted;
# active from finished also needs no sequence_completed)
ALLOWED = {
    "active": {"paused", "finished", "out_of_office", "opted_out", "bounced"},
    "paused": {"active", "opted_out"},
    "missing_data": {"active", "opted_out"},
    "bounced": {"active", "opted_out"},
    "out_of_office": {"active", "opted_out"},
    "finished": {"active", "opted_out"},
    "opted_out": {"active"},
}
SEQUENCE_SCOPED = (
    "sequence_added", "sequence_removed", "email_sent", "sequence_completed", "email_opened", "link_clicked",
    "replied", "auto_replied", "out_of_office", "bounced", "missing_data", "call_step_reached", "call_logged",
    "status_set", "status_removed",
)
MESSAGING = ("stopped", "inbound_message", "blocked", "unblocked", "archived", "restored", "deleted")


@dataclass
class _Membership:
    added_at: datetime
    status: str = "active"
    since: datetime | None = None
    contacted: bool = False
    opened: bool = False
    clicked: bool = False
    replied: bool = False
    replied_by: str | None = None
    auto_replied: bool = False
    to_call: bool = False
    called: bool = False
    completed: bool = False


def _key(e: dict[str, Any]) -> tuple:
    return (e["occurred_at"], e["event_id"])


def _opted_out_at(changes: list[dict[str, Any]], add: dict[str, Any]) -> bool:
    """The §3.2 opted_out component at an add: latest change ordered at or before it, among those a
    run as of the add knows (one with a `visible_at` only from then on)."""
    add_key = (add["occurred_at"], 1, add["event_id"])
    value = False
    best = None
    for c in changes:
        k = (c["changed_at"], 0, "") if c["event_id"] is None else (c["changed_at"], 1, c["event_id"])
        visible_at = c.get("visible_at")
        known = k <= add_key if visible_at is None else visible_at <= add["occurred_at"]
        if known and (best is None or k >= best):
            best, value = k, bool(c["opted_out"])
    return value


def reference_sequences(
    events: list[dict[str, Any]],
    sequences: list[dict[str, Any]],
    opt_out_changes: list[dict[str, Any]],
    *,
    as_of: datetime,
    ooo_resume_days: int,
) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """(sequence_status rows, rejected rows), one event at a time per membership."""
    props = {s["sequence_id"]: s for s in sequences}
    resume = timedelta(days=ooo_resume_days)
    events = [e for e in events if e["occurred_at"] <= as_of]
    pairs = sorted({(e["sequence_id"], e["person_id"]) for e in events
                    if e["event_type"] in SEQUENCE_SCOPED and e["sequence_id"] is not None})
    status_rows: list[dict[str, Any]] = []
    rejected: list[dict[str, Any]] = []

    for sid, pid in pairs:
        p = props.get(sid, {})
        owner = p.get("owner_id")
        team = bool(p.get("team_edition") or False)
        finish = (p.get("reply_handling") or "finish") == "finish"
        stream = sorted(
            [e for e in events if e["person_id"] == pid and (
                (e["event_type"] in SEQUENCE_SCOPED and e["sequence_id"] == sid) or e["event_type"] == "opted_out")],
            key=_key,
        )
        changes = [c for c in opt_out_changes if c["person_id"] == pid]
        m: _Membership | None = None

        def refuse(e, frm, reason, requested=None):
            rejected.append(dict(
                event_id=e["event_id"], model="sequence", person_id=pid, sequence_id=sid, from_status=frm,
                requested=requested if requested is not None else (e["value"] if e["value"] is not None else e["event_type"]),
                reason=reason,
            ))

        def resume_if_due(now):
            if m is not None and ooo_resume_days and m.status == "out_of_office" and now >= m.since + resume:
                m.status = "active"

        for e in stream:
            ty = e["event_type"]
            resume_if_due(e["occurred_at"])
            if ty == "sequence_added":
                if m is not None:
                    continue  # already a member: ignored
                if _opted_out_at(changes, e):
                    refuse(e, None, "person is opted out", "sequence_added")
                    continue
                m = _Membership(added_at=e["occurred_at"])
            elif ty == "sequence_removed":
                m = None
            elif ty in ("status_set", "status_removed"):
                if m is None:
                    refuse(e, None, "not in the sequence")
                else:
                    reason = _manual(m, e, team=team, owner=owner, finish=finish)
                    if reason is not None:
                        refuse(e, reason[0], reason[1])
            elif m is not None:
                _system(m, e, finish=finish)

        resume_if_due(as_of)
        if m is not None:
            status_rows.append(dict(
                sequence_id=sid, person_id=pid, status=m.status, contacted=m.contacted, opened=m.opened,
                clicked=m.clicked, replied=m.replied, replied_by=m.replied_by, auto_replied=m.auto_replied,
                to_call=m.to_call, called=m.called, can_receive_emails=m.status == "active",
                replies_tracked=m.status in ("active", "out_of_office") and m.contacted and not m.replied,
                added_at=m.added_at, completed=m.completed,
            ))
    return status_rows, sorted(rejected, key=lambda r: r["event_id"])


def _system(m: _Membership, e: dict[str, Any], *, finish: bool) -> None:
    ty, t = e["event_type"], e["occurred_at"]
    if ty == "email_sent":
        m.contacted = True
    elif ty == "email_opened":
        m.opened = True
    elif ty == "link_clicked":
        m.clicked = True
    elif ty == "auto_replied":
        m.auto_replied = True
    elif ty == "replied":
        m.replied = True
        if e["channel"] in ("email", "sms"):
            m.replied_by = e["channel"]
    elif ty == "call_step_reached":
        m.to_call = True
    elif ty == "call_logged":
        m.called = True
    elif ty == "sequence_completed":
        m.completed = True
    if m.status == "opted_out":
        return  # left only by a manual change
    new = {
        "bounced": "bounced", "out_of_office": "out_of_office", "auto_replied": "finished",
        "sequence_completed": "finished", "missing_data": "missing_data", "opted_out": "opted_out",
        # an out-of-office contact who replies is handled by the reply setting (seed): continue → active
        "replied": "finished" if finish else ("active" if m.status == "out_of_office" else None),
    }.get(ty)
    if new is not None:
        m.status = new
        if new == "out_of_office":
            m.since = t


def _manual(m: _Membership, e: dict[str, Any], *, team: bool, owner, finish: bool) -> tuple[str, str] | None:
    """Apply a manual change; returns (from_status, reason) when it is refused."""
    v, setting, s = e["value"], e["event_type"] == "status_set", m.status
    if team and not (e["actor_id"] is not None and e["actor_id"] == owner) and not (setting and v == "opted_out"):
        return s, TEAM_REASON
    if v not in KNOWN_VALUES:
        return s, f"unknown status '{v if v is not None else e['event_type']}'"
    if setting and v in SYSTEM_ONLY:
        return s, f"{v} is set by the system only"
    if not setting and v in NOT_REMOVABLE:
        return s, f"{v} cannot be removed"
    if setting:
        if v in PRIMARY:
            if v == s:
                return s, f"already {v}"
            if v not in ALLOWED[s]:
                return s, f"not allowed from {s}"
            if s == "active" and v == "bounced" and not m.contacted:
                return s, "bounced needs at least one email sent (contacted)"
            if s == "finished" and v == "active" and m.completed:
                return s, "not allowed from finished: all steps were sent (sequence_completed)"
            m.status = v
            if v == "out_of_office":
                m.since = e["occurred_at"]
            return None
        if v == "replied":
            if m.replied:
                return s, "already replied"
            if s != "active":
                return s, f"not allowed from {s}"
            if not m.contacted:
                return s, "replied needs at least one email sent (contacted)"
            m.replied = True
            if e["channel"] in ("email", "sms"):
                m.replied_by = e["channel"]
            if finish:
                m.status = "finished"
            return None
        assert v == "to_call"
        if m.to_call:
            return s, "already to_call"
        m.to_call = True
        return None
    # status_removed
    if v in PRIMARY:
        if s != v:
            return s, f"current status is {s}, not {v}"
        if s == "finished" and m.completed:
            return s, "not allowed from finished: all steps were sent (sequence_completed)"
        m.status = "active"
        return None
    flag = {"replied": "replied", "to_call": "to_call", "called": "called"}[v]
    if not getattr(m, flag):
        return s, f"{v} is not set"
    setattr(m, flag, False)
    if v == "replied":
        m.replied_by = None
    return None


@dataclass
class _Contact:
    status: str = "active"
    archived_inbound: int = 0
    last_inbound: datetime | None = None
    archived_at: datetime | None = None
    rejected: list = field(default_factory=list)


def reference_channel(
    people: list[dict[str, Any]], events: list[dict[str, Any]]
) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """(channel_status rows, rejected rows), one action at a time per person."""
    rows, rejected = [], []
    for person in sorted(people, key=lambda p: p["person_id"]):
        pid = person["person_id"]
        c = _Contact()
        for e in sorted((e for e in events if e["person_id"] == pid and e["event_type"] in MESSAGING), key=_key):
            ty, s = e["event_type"], c.status
            if s == "deleted":
                rejected.append(_channel_reject(e, s, "contact is deleted"))
                continue
            if ty == "stopped":
                c.status = "stopped"
            elif ty == "blocked":
                c.status = "blocked"
            elif ty == "archived":
                if s != "archived":
                    c.archived_at = e["occurred_at"]
                c.status = "archived"
            elif ty == "restored":
                c.status = "active"
            elif ty == "unblocked":
                if s == "blocked":
                    c.status = "active"
            elif ty == "inbound_message":
                c.last_inbound = e["occurred_at"]
                if s == "stopped":
                    c.status = "active"
                elif s == "blocked":
                    c.archived_inbound += 1
            elif ty == "deleted":
                if s == "archived":
                    c.status = "deleted"
                else:
                    rejected.append(_channel_reject(e, s, "only an archived contact can be deleted"))
        seen = [d for d in (person.get("last_seen_on"), c.last_inbound.date() if c.last_inbound else None) if d]
        rows.append(dict(
            person_id=pid, status=c.status, can_receive=c.status == "active", in_groups=c.status == "active",
            runs_flows_on_inbound=c.status in ("active", "stopped"), archived_inbound=c.archived_inbound,
            last_seen_on=max(seen) if seen else None,
            archived_at=c.archived_at if c.status == "archived" else None,
        ))
    return rows, sorted(rejected, key=lambda r: r["event_id"])


def _channel_reject(e, frm, reason):
    return dict(event_id=e["event_id"], model="channel", person_id=e["person_id"], sequence_id=None,
                from_status=frm, requested=e["event_type"], reason=reason)


# ----------------------------------------------------------------------------
# frame helpers for tests


def frame(table: str, rows: list[dict[str, Any]]) -> pl.LazyFrame:
    """A contract-typed LazyFrame of `table` from row dicts (missing columns are null)."""
    schema = input_table(table).schema
    return pl.DataFrame([{c: r.get(c) for c in schema} for r in rows], schema=schema, orient="row").lazy()


def read_contract_csv(table: str, path: str) -> pl.LazyFrame:
    """A worked-example CSV typed by the input contract (tests only; the loader is the lead's)."""
    schema = input_table(table).schema
    df = pl.read_csv(path, infer_schema=False)

    def conv(c: str, dt: pl.DataType) -> pl.Expr:
        if c not in df.columns:
            return pl.lit(None, dt).alias(c)
        if dt == TIMESTAMP:
            return pl.col(c).str.to_datetime(time_zone="UTC")
        if dt == pl.Date:
            return pl.col(c).str.to_date()
        if dt == pl.Boolean:
            return pl.col(c) == "true"
        return pl.col(c).cast(dt)

    return df.select([conv(c, dt) for c, dt in schema.items()]).lazy()


OPT_OUT_CHANGES_SCHEMA = {
    "person_id": pl.String, "changed_at": TIMESTAMP, "event_id": pl.String, "opted_out": pl.Boolean, "visible_at": TIMESTAMP,
}


def opt_out_changes_frame(rows: list[dict[str, Any]]) -> pl.LazyFrame:
    rows = [{"visible_at": None} | row for row in rows]
    return pl.DataFrame(rows, schema=OPT_OUT_CHANGES_SCHEMA).lazy() if rows else pl.LazyFrame(
        schema=OPT_OUT_CHANGES_SCHEMA)
