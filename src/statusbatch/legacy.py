"""Legacy exports of Rally, Reply and RapidPro turned into input-contract events (SPEC §6).

The normal run rebuilds every status from events, so a legacy status becomes
the events that make the rules of SPEC §3 give that status again at its date.
Labels the legacy system computes rather than stores give no event and are
only reported. Rows of one person (Reply: one membership) are read as a
history, oldest first: a row whose status replaces an earlier one first ends
it, so the replay does not keep both. Everything is a column expression over
the whole file, because exports can hold millions of rows.

docs/migration.md explains every mapping and decision.
"""

from __future__ import annotations

import codecs
import contextlib
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import duckdb
import polars as pl

from statusbatch.loading.contract import InputTable, input_table

__all__ = [
    "SYSTEMS",
    "LABELS",
    "COMPUTED_LABELS",
    "DEFAULT_COLUMNS",
    "LEGACY_ACTOR",
    "REJECTED_DIR",
    "LegacyColumns",
    "LegacyImportError",
    "ImportResult",
    "label_code",
    "import_legacy_file",
]

SYSTEMS: tuple[str, ...] = ("rally", "reply", "rapidpro")

LABELS: dict[str, tuple[str, ...]] = {
    "rally": ("Free to Contact", "Active in Study", "In Cooldown", "Do Not Contact", "Opted Out", "In Blocklist"),
    "reply": (
        "Active",
        "Paused",
        "Missing data",
        "Bounced",
        "Out of office",
        "Finished",
        "Opted Out",
        "Contacted",
        "Opened",
        "Clicked",
        "Replied",
        "Replied by email",
        "Replied by sms",
        "Auto-replied",
        "To call",
        "Called",
    ),
    "rapidpro": ("Active", "Stopped", "Blocked", "Archived"),
}
"""Every label each system displays, spelled as its seed spells it."""

COMPUTED_LABELS: dict[str, tuple[str, ...]] = {
    "rally": ("Free to Contact", "Active in Study"),
    "reply": (),
    "rapidpro": ("Active",),
}
"""Labels that are derived, not stored: they give no event unless they end an earlier status."""

_SYSTEM_NAMES = {"rally": "Rally contact status", "reply": "Reply status", "rapidpro": "RapidPro contact status"}

LEGACY_ACTOR = "legacy-import"
"""actor_id of imported events (a Reply status_set takes the sequence owner when known)."""

REJECTED_DIR = "legacy_rejected"
"""Sub-directory of the output directory for rejected legacy rows; never named like an input table."""

ROW = "__row"
_SLOT_MICROSECONDS = 32
"""Room for every event of one row: rows of a person at the same instant get successive slots."""


@dataclass(frozen=True)
class LegacyColumns:
    """Names of the legacy export's columns (SPEC §6 table; each can be renamed)."""

    id: str
    status: str
    date: str
    sequence: str | None = None


DEFAULT_COLUMNS: dict[str, LegacyColumns] = {
    "rally": LegacyColumns("Person ID", "Contact Status", "Status Updated At"),
    "reply": LegacyColumns("Contact ID", "Status", "Status Updated At", "Sequence ID"),
    "rapidpro": LegacyColumns("Contact UUID", "Status", "Status Changed On"),
}
EMAIL_COLUMN = "Email"
CREATED_COLUMN = "Created On"
LAST_SEEN_COLUMN = "Last Seen On"
COOLDOWN_UNTIL_COLUMN = "Cooldown Until"


class LegacyImportError(Exception):
    """The legacy file or the output directory cannot be used: nothing was written."""


@dataclass(frozen=True)
class ImportResult:
    """What one import did; rows_read = rows_imported + rows_reported + rows_rejected."""

    system: str
    source: Path
    out_dir: Path
    rows_read: int
    rows_imported: int
    rows_reported: int
    rows_rejected: int
    events_written: int
    events_present: int
    people_added: int
    label_counts: dict[str, int]
    reencoded_rows: int
    rejected_file: Path | None
    notes: tuple[str, ...]


def label_code(label: str) -> str:
    """The snake_case code of a display label (`Auto-replied` → `auto_replied`)."""
    return label.lower().replace("-", "_").replace(" ", "_")


# Reading ---------------------------------------------------------------------------------------


def _latin1_for_undefined(error: UnicodeError) -> tuple[str, int]:
    """Windows-1252 leaves five bytes undefined; read them as Latin-1 like browsers do."""
    if not isinstance(error, UnicodeDecodeError):
        raise error
    return error.object[error.start : error.end].decode("latin-1"), error.end


codecs.register_error("statusbatch-latin1", _latin1_for_undefined)


def _read_csv(path: Path, data: bytes, encoding: str = "utf8") -> pl.DataFrame:
    try:
        frame = pl.read_csv(
            data,
            infer_schema=False,
            raise_if_empty=False,
            truncate_ragged_lines=False,
            encoding=encoding,
            row_index_name=ROW,
            row_index_offset=1,
            with_column_names=lambda names: [n.strip() for n in names],
        )
    except pl.exceptions.PolarsError as exc:
        lines = str(exc).strip().splitlines()
        reason = lines[0] if lines else type(exc).__name__
        if "more fields" in reason:
            reason = "a row has more cells than the header; check the delimiter and the quoting"
        raise LegacyImportError(f"{path}: unreadable CSV ({reason})") from exc
    return frame.with_columns(pl.col(ROW).cast(pl.Int64))


def _mixed_encoding(path: Path, data: bytes) -> tuple[pl.DataFrame, int]:
    """Rows that are valid UTF-8 stay UTF-8; the others are read as Windows-1252.

    Both readings split rows and cells identically (delimiters, quotes and line
    ends are ASCII), so a row is taken from the Windows-1252 reading exactly
    where the lossy UTF-8 reading had to replace a byte.
    """
    lossy = _read_csv(path, data, encoding="utf8-lossy")
    single = _read_csv(path, data.decode("cp1252", errors="statusbatch-latin1").encode("utf-8"))
    if lossy.shape != single.shape:
        raise LegacyImportError(f"{path}: unreadable text encoding (neither UTF-8 nor Windows-1252)")
    names = [s if "\ufffd" in u else u for u, s in zip(lossy.columns, single.columns, strict=True)]
    lossy.columns = names
    cells = [c for c in names if c != ROW]
    alternative = single.rename(dict(zip(single.columns, [f"\x00{n}" for n in names], strict=True)))
    replaced = pl.any_horizontal([pl.col(c).str.contains("\ufffd", literal=True).fill_null(False) for c in cells])
    merged = pl.concat([lossy, alternative], how="horizontal").with_columns(replaced.alias("\x00replaced"))
    reencoded = int(merged.get_column("\x00replaced").sum())
    frame = merged.select(
        pl.col(ROW),
        *[pl.when(pl.col("\x00replaced")).then(pl.col(f"\x00{c}")).otherwise(pl.col(c)).alias(c) for c in cells],
    )
    return frame, reencoded


def read_legacy_csv(path: Path) -> tuple[pl.DataFrame, int]:
    """Every cell as text plus a 1-based row number, and how many rows were not UTF-8."""
    if not path.exists():
        raise LegacyImportError(f"{path}: file not found")
    if not path.is_file():
        raise LegacyImportError(f"{path}: not a file")
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise LegacyImportError(f"{path}: cannot read ({exc.strerror})") from exc
    if data.startswith((codecs.BOM_UTF16_LE, codecs.BOM_UTF16_BE)):
        try:
            data = data.decode("utf-16").encode("utf-8")
        except UnicodeDecodeError as exc:
            raise LegacyImportError(f"{path}: unreadable UTF-16 text") from exc
    data = data.removeprefix(codecs.BOM_UTF8)
    if not data.strip():
        raise LegacyImportError(f"{path}: empty file (no header row)")
    try:
        data.decode("utf-8")
    except UnicodeDecodeError:
        return _mixed_encoding(path, data)
    return _read_csv(path, data), 0


def _check_columns(path: Path, frame: pl.DataFrame, columns: LegacyColumns) -> None:
    """A missing required column stops the import, with a hint at the usual cause."""
    required = [c for c in (columns.id, columns.status, columns.date, columns.sequence) if c is not None]
    missing = [c for c in required if c not in frame.columns]
    if not missing:
        return
    header = [c for c in frame.columns if c != ROW]
    hint = f"columns found: {', '.join(header)}"
    separators = {";": "semicolon", "\t": "tab", "|": "pipe"}
    odd = [name for sep, name in separators.items() if len(header) == 1 and sep in header[0]]
    if odd:
        hint = f"the header looks {odd[0]}-separated; the export must be comma-separated"
    elif not set(header) & {*required, EMAIL_COLUMN, CREATED_COLUMN, LAST_SEEN_COLUMN, COOLDOWN_UNTIL_COLUMN}:
        hint = f"no header row? the first line reads: {', '.join(header)}"
    raise LegacyImportError(f"{path}: missing required column '{missing[0]}' ({hint})")


# Parsing ---------------------------------------------------------------------------------------


def _text(frame: pl.DataFrame, name: str | None) -> pl.Expr:
    """A cell without surrounding white space; empty or absent is null."""
    if name is None or name not in frame.columns:
        return pl.lit(None, dtype=pl.String)
    stripped = pl.col(name).str.strip_chars()
    return pl.when(stripped != "").then(stripped)


def _timestamp(text: pl.Expr) -> pl.Expr:
    """ISO-8601 to a UTC instant: offsets converted, naive taken as UTC, a bare date is midnight."""
    iso = text.str.replace(r"^(\d{4}-\d{2}-\d{2}) ", "${1}T")
    naive = [
        iso.str.to_datetime(f, strict=False, time_unit="us").dt.replace_time_zone("UTC")
        for f in ("%Y-%m-%dT%H:%M:%S%.f", "%Y-%m-%dT%H:%M")
    ]
    aware = [
        iso.str.to_datetime(f, time_zone="UTC", strict=False, time_unit="us")
        for f in ("%Y-%m-%dT%H:%M:%S%.f%#z", "%Y-%m-%dT%H:%M%#z")
    ]
    day = iso.str.to_date("%Y-%m-%d", strict=False).cast(pl.Datetime("us")).dt.replace_time_zone("UTC")
    return pl.coalesce(*aware, *naive, day)


def _date(text: pl.Expr) -> pl.Expr:
    """A `YYYY-MM-DD` date, or the date of a timestamp as written."""
    written = text.str.slice(0, 10).str.to_date("%Y-%m-%d", strict=False)
    return pl.when(_timestamp(text).is_not_null()).then(written)


def _parsed_once(rows: pl.DataFrame, source: str, parsed: pl.Expr, name: str) -> pl.DataFrame:
    """Parse each distinct text once: exports repeat the same dates and labels on many rows."""
    distinct = rows.select(source).unique().with_columns(parsed.alias(name))
    return rows.join(distinct, on=source, how="left", nulls_equal=True)


_REPLY_PRIMARY = ("active", "paused", "missing_data", "bounced", "out_of_office", "finished", "opted_out")
"""Reply's primary statuses: a membership has one at a time; the other labels are flags."""


def _label_table(cells: pl.DataFrame, system: str) -> pl.DataFrame:
    """Everything a status cell says, computed once per distinct cell.

    `has_<code>` tells whether the cell carries a label; `code` is its only (or
    first) label and `target` its Reply primary status.
    """
    lookup = {label.lower(): label for label in LABELS[system]}
    codes = {label: label_code(label) for label in LABELS[system]}
    primary_labels = [label for label, code in codes.items() if code in _REPLY_PRIMARY]
    cell = pl.col("cell")
    pieces = cell.str.split(",") if system == "reply" else pl.concat_list(cell)
    pieces = pieces.list.eval(pl.element().str.strip_chars()).list.eval(pl.element().filter(pl.element() != ""))
    labels = (
        pieces.list.eval(pl.element().str.to_lowercase().replace_strict(lookup, default=None))
        .list.drop_nulls()
        .list.unique()
        .list.sort()
    )
    unknown = pieces.list.eval(pl.element().filter(~pl.element().str.to_lowercase().is_in(list(lookup))))
    primaries = pl.col("labels").list.eval(pl.element().filter(pl.element().is_in(primary_labels)))
    return (
        cells.with_columns(
            pl.when(cell.is_not_null()).then(pieces.list.len()).otherwise(0).alias("n_labels"),
            unknown.list.first().alias("unknown"),
            labels.alias("labels"),
        )
        .with_columns(
            pl.col("labels").list.join(", ").alias("label_key"),
            primaries.list.join(", ").alias("primaries"),
            primaries.list.len().alias("n_primaries"),
            pl.col("labels").list.first().replace_strict(codes, default=None).alias("code"),
            primaries.list.first().replace_strict(codes, default=None).alias("target"),
            *[pl.col("labels").list.contains(label).alias(f"has_{code}") for label, code in codes.items()],
        )
        .drop("labels")
    )


def _typed_rows(frame: pl.DataFrame, system: str, columns: LegacyColumns) -> pl.DataFrame:
    """Each legacy row as values (null where absent or unparseable) beside the text they came from."""
    texts = {
        "cell": columns.status,
        "date_text": columns.date,
        "until_text": COOLDOWN_UNTIL_COLUMN,
        "created_text": CREATED_COLUMN,
        "seen_text": LAST_SEEN_COLUMN,
    }
    rows = frame.select(
        pl.col(ROW),
        pl.struct([c for c in frame.columns if c != ROW]).struct.json_encode().alias("raw"),
        _text(frame, columns.id).alias("person_id"),
        _text(frame, columns.sequence).alias("sequence_id"),
        _text(frame, EMAIL_COLUMN).alias("email"),
        *[_text(frame, source).alias(name) for name, source in texts.items()],
    )
    labels = _label_table(rows.select("cell").unique(), system)
    rows = rows.join(labels, on="cell", how="left", nulls_equal=True)
    rows = _parsed_once(rows, "date_text", _timestamp(pl.col("date_text")), "at")
    return rows.with_columns(
        _date(pl.col("until_text")).alias("until"),
        _timestamp(pl.col("created_text")).alias("created_on"),
        _date(pl.col("seen_text")).alias("last_seen_on"),
    ).sort(ROW)


@dataclass(frozen=True)
class _Check:
    column: str
    fails: pl.Expr
    problem: pl.Expr


def _first_failure(checks: list[_Check]) -> list[pl.Expr]:
    return [
        pl.coalesce([pl.when(c.fails.fill_null(False)).then(pl.lit(c.column)) for c in checks]).alias("__column"),
        pl.coalesce([pl.when(c.fails.fill_null(False)).then(c.problem) for c in checks]).alias("__problem"),
    ]


def _row_checks(system: str, columns: LegacyColumns) -> list[_Check]:
    """What makes a row bad, in the order it is reported: id, sequence, date, status, then the optional cells."""
    in_cooldown = pl.col("code") == "in_cooldown"
    checks = [_Check(columns.id, pl.col("person_id").is_null(), pl.lit("missing person id"))]
    if columns.sequence is not None:
        checks.append(_Check(columns.sequence, pl.col("sequence_id").is_null(), pl.lit("missing sequence id")))
    checks += [
        _Check(columns.date, pl.col("date_text").is_null(), pl.lit("missing status date")),
        _Check(
            columns.date,
            pl.col("at").is_null(),
            pl.format("not a valid date or ISO-8601 timestamp: '{}'", pl.col("date_text")),
        ),
        _Check(columns.status, pl.col("n_labels") == 0, pl.lit("missing status")),
        _Check(
            columns.status,
            pl.col("unknown").is_not_null(),
            pl.format("unknown {} '{}'", pl.lit(_SYSTEM_NAMES[system]), pl.col("unknown")),
        ),
    ]
    if system == "reply":
        primary_labels = [label for label in LABELS["reply"] if label_code(label) in _REPLY_PRIMARY]
        checks.append(
            _Check(
                columns.status,
                pl.col("n_primaries") > 1,
                pl.format(
                    "conflicting Reply statuses '{}': a contact has one of {} at a time",
                    pl.col("primaries"),
                    pl.lit(", ".join(primary_labels)),
                ),
            )
        )
    return checks + [
        _Check(
            COOLDOWN_UNTIL_COLUMN,
            in_cooldown & pl.col("until_text").is_not_null() & pl.col("until").is_null(),
            pl.format("not a valid date (YYYY-MM-DD): '{}'", pl.col("until_text")),
        ),
        _Check(
            COOLDOWN_UNTIL_COLUMN,
            in_cooldown & (pl.col("until") < pl.col("at").dt.date()),
            pl.format(
                "cooldown ends {} before its status date {}: the replay would not give In Cooldown",
                pl.col("until"),
                pl.col("at").dt.date(),
            ),
        ),
        _Check(
            CREATED_COLUMN,
            pl.col("created_text").is_not_null() & pl.col("created_on").is_null(),
            pl.format("not a valid date or ISO-8601 timestamp: '{}'", pl.col("created_text")),
        ),
        _Check(
            LAST_SEEN_COLUMN,
            pl.col("seen_text").is_not_null() & pl.col("last_seen_on").is_null(),
            pl.format("not a valid date (YYYY-MM-DD): '{}'", pl.col("seen_text")),
        ),
    ]


def _parse_rows(frame: pl.DataFrame, system: str, columns: LegacyColumns, cooldown_days: int) -> pl.DataFrame:
    """One typed row per legacy row, with the first problem (if any) that makes it bad."""
    # the value date is the cooldown's last day (inclusive, SPEC §4): N days from the status date end
    # at the start of date + N
    default_until = pl.col("at").dt.date().dt.offset_by(f"{cooldown_days - 1}d")
    return (
        _typed_rows(frame, system, columns)
        .with_columns(*_first_failure(_row_checks(system, columns)))
        .with_columns(pl.coalesce("until", default_until).dt.strftime("%Y-%m-%d").alias("cooldown_value"))
    )


# Rows of one person as a history ----------------------------------------------------------------
#
# Rows are sorted by group and time, so "within the group" is a linear pass:
# a value is carried only from rows after the group's first row.

_GROUP_START = "\x00start"


def _group_starts(keys: list[str]) -> pl.Expr:
    """True on the first row of each group of a frame sorted by `keys`."""
    return pl.any_horizontal([pl.col(k).ne_missing(pl.col(k).shift(1)) for k in keys]).fill_null(True)


def _previous_row(value: pl.Expr, starts: pl.Expr) -> pl.Expr:
    """The value on the group's previous row (null on its first row)."""
    return pl.when(~starts).then(value.shift(1))


def _latest_before(value: pl.Expr, starts: pl.Expr) -> pl.Expr:
    """The latest non-null value on an earlier row of the same group."""
    carried = pl.when(starts).then(pl.lit(_GROUP_START)).otherwise(value.shift(1)).forward_fill()
    return pl.when(carried != _GROUP_START).then(carried)


# Planning events --------------------------------------------------------------------------------


@dataclass(frozen=True)
class _Step:
    """One event a row may need: written where `when` holds (always when None), in step-list order."""

    event_type: pl.Expr
    when: pl.Expr | None
    value: pl.Expr | None = None
    channel: str | None = None
    actor: pl.Expr | None = None
    type_in_id: bool = False
    """The type depends on the rows before this one (which status is ended), not on the row alone:
    it is part of the event id, so that the same row in another history is another event."""


def _lit(text: str) -> pl.Expr:
    return pl.lit(text, dtype=pl.String)


_RALLY_SET = {
    "opted_out": "opted_out",
    "in_blocklist": "blocklist_added",
    "do_not_contact": "do_not_contact_set",
    "in_cooldown": "cooldown_set",
}
_RALLY_CLEAR = {
    "opted_out": "opt_out_revoked",
    "in_blocklist": "blocklist_removed",
    "do_not_contact": "do_not_contact_cleared",
    "in_cooldown": "cooldown_cleared",
}


_OUTRANK_ACTIVE_IN_STUDY = ["opted_out", "in_blocklist"]
"""Stored statuses that take priority over Active in Study (the Rally seed): a person shown Active
in Study has neither."""


def _rally_steps(rows: pl.DataFrame) -> tuple[pl.DataFrame, list[_Step]]:
    """A stored status is its set event; the previous stored status of the person is ended first.

    Active in Study is computed from participants, so it sets nothing; it ends
    only an Opted Out or In Blocklist before it, which would have outranked it
    (a cooldown or DNC may hold beneath it, so those stay). Free to Contact is
    the absence of the others, so it only ends the previous one. A cooldown
    after a cooldown is cleared first so that the later row's end wins even
    when it is earlier.
    """
    code = pl.col("code")
    rows = rows.sort("person_id", "at", ROW)
    starts = _group_starts(["person_id"])
    stored = pl.when(code != "active_in_study").then(code)
    outranked = _latest_before(stored, starts).is_in(_OUTRANK_ACTIVE_IN_STUDY)
    # an Active in Study row that ended such a status leaves the person's stored status free
    stored = stored.fill_null(pl.when(outranked).then(pl.lit("free_to_contact")))
    rows = rows.with_columns(_latest_before(stored, starts).alias("previous"))
    previous = pl.col("previous")
    ends_previous = (
        ((code != "active_in_study") | previous.is_in(_OUTRANK_ACTIVE_IN_STUDY))
        & previous.is_in(list(_RALLY_CLEAR))
        & ((previous != code) | (code == "in_cooldown"))
    )
    steps = [
        _Step(previous.replace_strict(_RALLY_CLEAR, default=None), ends_previous, type_in_id=True),
        _Step(
            code.replace_strict(_RALLY_SET, default=None),
            code.is_in(list(_RALLY_SET)),
            value=pl.when(code == "in_cooldown").then(pl.col("cooldown_value")),
        ),
    ]
    return rows, steps


def _rapidpro_steps(rows: pl.DataFrame) -> tuple[pl.DataFrame, list[_Step]]:
    """Stopped, Blocked and Archived are actions; Active is the default, reached again by undoing one."""
    code = pl.col("code")
    rows = rows.sort("person_id", "at", ROW).with_columns(
        _previous_row(code, _group_starts(["person_id"])).fill_null("active").alias("previous")
    )
    previous = pl.col("previous")
    steps = [
        _Step(_lit("unblocked"), (code == "active") & (previous == "blocked")),
        _Step(_lit("restored"), (code == "active") & previous.is_in(["stopped", "archived"])),
        _Step(code, code.is_in(["stopped", "blocked", "archived"])),
    ]
    return rows, steps


_REPLY_FLAGS: tuple[tuple[str, tuple[str, ...], str | None], ...] = (
    ("email_sent", ("contacted",), None),
    ("email_opened", ("opened",), None),
    ("link_clicked", ("clicked",), None),
    ("call_step_reached", ("to_call",), None),
    ("call_logged", ("called",), None),
    ("replied", ("replied", "replied_by_email"), "email"),
    ("replied", ("replied_by_sms",), "sms"),
    ("auto_replied", ("auto_replied",), None),
)
"""Flag labels as the system detections that set them (event type, labels, channel)."""

_REPLY_DETECTED = ("missing_data", "bounced", "out_of_office")
"""Primary statuses the system assigns: imported as the detection event itself."""


def _has(*codes: str) -> pl.Expr:
    return pl.any_horizontal([pl.col(f"has_{c}") for c in codes])


def _reply_steps(rows: pl.DataFrame, sequences: pl.DataFrame) -> tuple[pl.DataFrame, list[_Step]]:
    """Membership, then flag detections, then whatever manual changes reach the row's status.

    The membership's status before the row is the previous row's (same person
    and sequence), or `active` for a new member; a reply or auto-reply in the
    row finishes it (SPEC §3.3) unless it is opted out. Only when the row's
    status differs from that is anything set, through transitions the run
    accepts (SPEC §3.3 table): paused or finished from a non-active status go
    through `active` first, and an opt-out is revoked before reactivating.
    """
    group = ["person_id", "sequence_id"]
    finishes = _has("auto_replied") | (
        _has("replied", "replied_by_email", "replied_by_sms") & pl.col("finishes_on_reply").fill_null(True)
    )
    target = pl.col("target")
    rows = (
        rows.join(sequences, on="sequence_id", how="left")
        .sort(*group, "at", ROW)
        .with_columns(_group_starts(group).alias("starts"), finishes.alias("finishes"))
        .with_columns(_latest_before(target, pl.col("starts")).alias("last_target"))
        .with_columns(
            pl.coalesce(
                target,
                pl.when("finishes").then(
                    pl.when(pl.col("last_target") == "opted_out").then(_lit("opted_out")).otherwise(_lit("finished"))
                ),
            ).alias("after")
        )
        .with_columns(_latest_before(pl.col("after"), pl.col("starts")).fill_null("active").alias("before"))
        .with_columns(
            pl.when(pl.col("before") == "opted_out")
            .then(_lit("opted_out"))
            .when("finishes")
            .then(_lit("finished"))
            .otherwise(pl.col("before"))
            .alias("previous")
        )
    )
    previous = pl.col("previous")
    change = target.is_not_null() & (target != previous)
    reactivate = change & (
        (target == "active")
        | (target.is_in(["paused", "finished"]) & (previous != "active"))
        | (target.is_in(list(_REPLY_DETECTED)) & (previous == "opted_out"))
    )
    manual_actor = pl.coalesce("owner_id", _lit(LEGACY_ACTOR))
    steps = [_Step(_lit("sequence_added"), None)]
    steps += [_Step(_lit(event), _has(*codes), channel=channel) for event, codes, channel in _REPLY_FLAGS]
    steps += [
        _Step(_lit("opt_out_revoked"), reactivate & (previous == "opted_out"), actor=manual_actor),
        _Step(_lit("status_set"), reactivate, value=_lit("active"), actor=manual_actor),
        _Step(_lit("status_set"), change & target.is_in(["paused", "finished"]), value=target, actor=manual_actor),
        _Step(target, change & target.is_in(list(_REPLY_DETECTED))),
        _Step(_lit("opted_out"), change & (target == "opted_out")),
    ]
    return rows, steps


_ISO = "%Y-%m-%dT%H:%M:%S%.6fZ"


def _row_ids(rows: pl.DataFrame, system: str) -> pl.Series:
    """`legacy-<system>-<digest>`: the digest of what the row says (id, labels, date, sequence).

    MD5 in DuckDB rather than Polars' hash, which may change between versions.
    """
    key = pl.concat_str(
        [
            _lit(system),
            pl.col("person_id"),
            pl.col("label_key"),
            pl.col("at").dt.strftime(_ISO),
            pl.col("sequence_id").fill_null(""),
        ],
        separator="\x1f",
    )
    keys = rows.select(pl.int_range(pl.len()).alias("i"), key.alias("k"))
    with duckdb.connect() as con:
        con.register("keys", keys)
        digests = con.sql("SELECT substr(md5(k), 1, 20) AS d FROM keys ORDER BY i").pl().to_series()
    return pl.select(pl.lit(f"legacy-{system}-") + digests.cast(pl.String)).to_series().alias("row_id")


def _step_columns(i: int, step: _Step) -> list[pl.Expr]:
    """A step evaluated on every row at once: whether it applies, and its type, value and actor."""
    return [
        (step.when if step.when is not None else pl.lit(True)).fill_null(False).alias(f"when{i}"),
        step.event_type.cast(pl.String).alias(f"type{i}"),
        (step.value if step.value is not None else pl.lit(None, dtype=pl.String)).alias(f"value{i}"),
        (step.actor if step.actor is not None else _lit(LEGACY_ACTOR)).alias(f"actor{i}"),
    ]


def _plan_events(rows: pl.DataFrame, system: str, steps: list[_Step]) -> pl.DataFrame:
    """Every event of every row: id `<row id>-<step>`, instants distinct and in step order.

    Rows of a person at the same instant take successive slots of
    _SLOT_MICROSECONDS, in file order; a row's events are its slot plus the
    step number, so ties never fall to the event id. They never pass the end
    of the status's UTC day (a status at 23:59:59.999999 holds on its date):
    events held there tie, and are ordered by their ids' step numbers.
    """
    starts = _group_starts(["person_id", "at"])
    index = pl.int_range(pl.len())
    rows = rows.sort("person_id", "at", ROW).with_columns(
        (index - pl.when(starts).then(index).forward_fill()).alias("slot")
    )
    base = rows.select(
        ROW,
        "row_id",
        "person_id",
        "sequence_id",
        (pl.col("at") + pl.duration(microseconds=pl.col("slot") * _SLOT_MICROSECONDS)).alias("slot_at"),
        (pl.col("at").dt.truncate("1d") + pl.duration(days=1, microseconds=-1)).alias("day_end"),
        pl.format("legacy {}: {}", _lit(system), pl.col("label_key")).alias("reason"),
        *[column for i, step in enumerate(steps) for column in _step_columns(i, step)],
    )
    parts = [
        base.filter(f"when{i}").select(
            ROW,
            pl.lit(i, dtype=pl.Int64).alias("step"),
            "row_id",
            (
                pl.format("{}-{}-{}", "row_id", pl.lit(f"{i:02d}"), f"type{i}")
                if step.type_in_id
                else pl.format("{}-{}", "row_id", pl.lit(f"{i:02d}"))
            ).alias("event_id"),
            "person_id",
            pl.min_horizontal(pl.col("slot_at") + pl.duration(microseconds=i), "day_end")
            .dt.strftime(_ISO)
            .alias("occurred_at"),
            pl.col(f"type{i}").alias("event_type"),
            "sequence_id",
            pl.lit(step.channel, dtype=pl.String).alias("channel"),
            pl.col(f"actor{i}").alias("actor_id"),
            pl.col(f"value{i}").alias("value"),
            "reason",
        )
        for i, step in enumerate(steps)
    ]
    return pl.concat(parts, how="vertical").sort(ROW, "step")


def _people(rows: pl.DataFrame) -> pl.DataFrame:
    """One people row per person: earliest creation (or status date, when earlier: a person must exist
    when the file says they had a status), latest email, latest sighting."""
    return (
        rows.sort("person_id", "at", ROW)
        .group_by("person_id", maintain_order=True)
        .agg(
            pl.col("email").drop_nulls().last(),
            pl.min_horizontal("created_on", "at").min().alias("created_at"),
            pl.col("last_seen_on").max(),
        )
        .select(
            "person_id",
            "email",
            pl.col("created_at").dt.strftime(_ISO),
            pl.col("last_seen_on").dt.strftime("%Y-%m-%d"),
        )
    )


# The output directory -------------------------------------------------------------------------


def _csv_header(path: Path) -> list[str] | None:
    """The header of an existing CSV table file; None when absent or empty."""
    if not path.is_file() or path.stat().st_size == 0:
        return None
    try:
        return pl.read_csv(path, n_rows=0, infer_schema=False).columns
    except (pl.exceptions.PolarsError, OSError) as exc:
        raise LegacyImportError(f"{path}: unreadable CSV ({str(exc).strip().splitlines()[0]})") from exc


def _existing_keys(path: Path, header: list[str] | None, key: str) -> pl.Series:
    if header is None:
        return pl.Series(key, [], dtype=pl.String)
    if key not in header:
        raise LegacyImportError(f"{path}: missing required column '{key}'")
    try:
        return pl.read_csv(path, columns=[key], infer_schema=False).get_column(key).str.strip_chars()
    except (pl.exceptions.PolarsError, OSError) as exc:
        raise LegacyImportError(f"{path}: unreadable CSV ({str(exc).strip().splitlines()[0]})") from exc


def _table_files(out_dir: Path, name: str) -> list[Path]:
    return [p for s in (".csv", ".csv.gz", ".parquet") if (p := out_dir / f"{name}{s}").is_file()]


def _check_appendable(out_dir: Path) -> None:
    """people and events are appended as plain CSV; another format there would be a second table."""
    for name in ("people", "events"):
        others = [p.name for p in _table_files(out_dir, name) if p.name != f"{name}.csv"]
        if others:
            raise LegacyImportError(
                f"{out_dir}: holds {others[0]}; import-legacy appends to {name}.csv only "
                f"(convert it to {name}.csv or import into another directory)"
            )


def _sequence_settings(out_dir: Path) -> pl.DataFrame:
    """Owner and reply handling of known sequences: status_set must come from the owner (team edition)."""
    schema = {"sequence_id": pl.String, "owner_id": pl.String, "finishes_on_reply": pl.Boolean}
    files = _table_files(out_dir, "sequences")
    if not files:
        return pl.DataFrame(schema=schema)
    path = files[0]
    try:
        raw = pl.read_parquet(path) if path.suffix == ".parquet" else pl.read_csv(path, infer_schema=False)
    except (pl.exceptions.PolarsError, OSError) as exc:
        raise LegacyImportError(f"{path}: unreadable file ({str(exc).strip().splitlines()[0]})") from exc
    if "sequence_id" not in raw.columns:
        return pl.DataFrame(schema=schema)

    def column(name: str) -> pl.Expr:
        return pl.col(name).cast(pl.String).str.strip_chars() if name in raw.columns else pl.lit(None, pl.String)

    return (
        raw.select(
            column("sequence_id").alias("sequence_id"),
            column("owner_id").alias("owner_id"),
            (column("reply_handling").str.to_lowercase() != "continue").fill_null(True).alias("finishes_on_reply"),
        )
        .filter(pl.col("sequence_id").is_not_null())
        .unique("sequence_id", keep="first", maintain_order=True)
    )


def _append(path: Path, header: list[str] | None, table: InputTable, rows: pl.DataFrame) -> None:
    """Add rows under the file's own header (the contract's when the file is new); existing bytes stay."""
    if rows.is_empty() and header is not None:
        return
    columns = header or [c.name for c in table.columns]
    frame = rows.select([pl.col(c) if c in rows.columns else pl.lit(None, dtype=pl.String).alias(c) for c in columns])
    newline_needed = header is not None and not _ends_with_newline(path)
    with path.open("ab") as handle:
        if newline_needed:
            handle.write(b"\n")
        frame.write_csv(handle, include_header=header is None)


def _ends_with_newline(path: Path) -> bool:
    with path.open("rb") as handle:
        handle.seek(-1, 2)
        return handle.read(1) in (b"\n", b"\r")


@contextlib.contextmanager
def _all_or_nothing(paths: list[Path]) -> Iterator[None]:
    """An import that fails while writing (an error, Ctrl-C) leaves `paths` as they were: each file
    is cut back to its old length, or removed if the import created it."""
    sizes = {path: path.stat().st_size if path.exists() else None for path in paths}
    try:
        yield
    except BaseException:
        for path, size in sizes.items():
            with contextlib.suppress(OSError):
                if size is None:
                    path.unlink(missing_ok=True)
                else:
                    with path.open("r+b") as handle:
                        handle.truncate(size)
        raise


def _write_header_only(out_dir: Path, name: str) -> None:
    """The run needs every required table: an empty studies/participants file makes DIR complete."""
    if not _table_files(out_dir, name):
        (out_dir / f"{name}.csv").write_text(",".join(c.name for c in input_table(name).columns) + "\n")


_EVENT_COLUMNS_NEEDED = {"event_id", "person_id", "occurred_at", "event_type", "sequence_id", "channel", "value"}
"""What the replay reads; an events.csv without one of these cannot take the import."""


def _missing_columns(path: Path, header: list[str] | None, rows: pl.DataFrame, fatal: set[str]) -> list[str]:
    """Columns with values to write that an existing file lacks; fatal ones stop the import."""
    if header is None:
        return []
    lacking = [c for c in rows.columns if c not in header and rows.get_column(c).null_count() < rows.height]
    for column in lacking:
        if column in fatal:
            raise LegacyImportError(f"{path}: missing column '{column}' that imported rows need")
    return lacking


# The import -------------------------------------------------------------------------------------


def _rejected_frame(path: Path, rows: pl.DataFrame) -> pl.DataFrame:
    return rows.filter(pl.col("__problem").is_not_null()).select(
        _lit(path.name).alias("source_file"),
        pl.col(ROW).alias("row_number"),
        pl.col("__column").alias("column"),
        pl.col("__problem").alias("problem"),
        "raw",
    )


def _write_rejected(out_dir: Path, system: str, source: Path, rejected: pl.DataFrame) -> Path | None:
    """One file per imported legacy file, replaced by each import of it (removed when nothing is bad)."""
    path = out_dir / REJECTED_DIR / f"{system}-{source.stem}.csv"
    if rejected.is_empty():
        path.unlink(missing_ok=True)
        return None
    path.parent.mkdir(exist_ok=True)
    rejected.write_csv(path)
    return path


def _plan(valid: pl.DataFrame, system: str, sequences: pl.DataFrame) -> pl.DataFrame:
    """The events of the good rows; a repeated row (same row id) is the same fact and adds nothing."""
    rows = valid.filter(pl.col("row_id").is_first_distinct())
    if system == "rally":
        rows, steps = _rally_steps(rows)
    elif system == "rapidpro":
        rows, steps = _rapidpro_steps(rows)
    else:
        rows, steps = _reply_steps(rows, sequences)
    return _plan_events(rows, system, steps)


def import_legacy_file(
    source: Path,
    out_dir: Path,
    system: str,
    columns: LegacyColumns | None = None,
    cooldown_days: int = 90,
) -> ImportResult:
    """Append the events (and unknown people) of one legacy export to an input directory.

    Everything is read and checked before the first byte is written, so a
    failure (LegacyImportError) leaves the directory as it was.
    """
    if system not in SYSTEMS:
        raise LegacyImportError(f"unknown system '{system}' (one of {', '.join(SYSTEMS)})")
    columns = columns or DEFAULT_COLUMNS[system]
    if out_dir.exists() and not out_dir.is_dir():
        raise LegacyImportError(f"{out_dir}: not a directory")
    frame, reencoded = read_legacy_csv(source)
    _check_columns(source, frame, columns)
    _check_appendable(out_dir)
    sequences = _sequence_settings(out_dir)

    parsed = _parse_rows(frame, system, columns, cooldown_days)
    rejected = _rejected_frame(source, parsed)
    valid = parsed.filter(pl.col("__problem").is_null()).select(
        ROW,
        "person_id",
        "sequence_id",
        "at",
        "label_key",
        "code",
        "target",
        "cooldown_value",
        "email",
        "created_on",
        "last_seen_on",
        pl.col("^has_.*$"),
    )
    rows_read = frame.height
    del parsed, frame
    valid = valid.with_columns(_row_ids(valid, system))
    planned = _plan(valid, system, sequences)
    with_events = valid.get_column("row_id").is_in(planned.get_column("row_id").unique().implode())
    rows_imported = int(with_events.sum())

    people_path, events_path = out_dir / "people.csv", out_dir / "events.csv"
    people_header, events_header = _csv_header(people_path), _csv_header(events_path)
    known_people = _existing_keys(people_path, people_header, "person_id")
    known_events = _existing_keys(events_path, events_header, "event_id")
    event_columns = [c.name for c in input_table("events").columns]
    new_events = planned.filter(~pl.col("event_id").is_in(known_events.implode())).select(
        [pl.col(c) if c in planned.columns else pl.lit(None, dtype=pl.String).alias(c) for c in event_columns]
    )
    new_people = _people(valid).filter(~pl.col("person_id").is_in(known_people.implode()))
    dropped = {
        events_path: _missing_columns(events_path, events_header, new_events, fatal=_EVENT_COLUMNS_NEEDED),
        people_path: _missing_columns(people_path, people_header, new_people, fatal={"person_id", "created_at"}),
    }
    notes = [
        f"{path.name} has no column '{column}': its values were not written"
        for path, lacking in dropped.items()
        for column in lacking
    ]
    if reencoded:
        notes.append(f"{reencoded} row(s) were not UTF-8 and were read as Windows-1252")

    written = [people_path, events_path, *(out_dir / f"{name}.csv" for name in ("studies", "participants"))]
    try:
        out_dir.mkdir(parents=True, exist_ok=True)
        with _all_or_nothing(written):
            _append(people_path, people_header, input_table("people"), new_people)
            _append(events_path, events_header, input_table("events"), new_events)
            for name in ("studies", "participants"):
                _write_header_only(out_dir, name)
            rejected_file = _write_rejected(out_dir, system, source, rejected)
    except OSError as exc:
        raise LegacyImportError(f"{out_dir}: cannot write ({exc.strerror or exc})") from exc

    counts = valid.select(pl.col(f"has_{label_code(label)}").sum().alias(label) for label in LABELS[system]).row(0)
    return ImportResult(
        system=system,
        source=source,
        out_dir=out_dir,
        rows_read=rows_read,
        rows_imported=rows_imported,
        rows_reported=valid.height - rows_imported,
        rows_rejected=rejected.height,
        events_written=new_events.height,
        events_present=planned.height - new_events.height,
        people_added=new_people.height,
        label_counts={label: n for label, n in zip(LABELS[system], counts, strict=True) if n},
        reencoded_rows=reencoded,
        rejected_file=rejected_file,
        notes=tuple(notes),
    )
