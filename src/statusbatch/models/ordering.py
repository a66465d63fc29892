"""Putting event logs in order fast: the sorts and run helpers the state machines share.

Multi-column sorts with strings are slow in Polars; these sort by one integer
key (or one column, then only the tied rows) and mark runs of a key so that
window work becomes a global scan restarted at each run.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import polars as pl
import pyarrow as pa

__all__ = ["ffill_in", "is_sorted_by", "ordered_runs", "small_codes", "sort_by_time", "sort_lex"]


def is_sorted_by(df: pl.DataFrame, order: list[str]) -> bool:
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


def sort_lex(df: pl.DataFrame, order: list[str]) -> pl.DataFrame:
    """`df` sorted by the columns `order`, nulls first: a stable single-column sort
    by the first column, then only the rows that tie on it are sorted by all of
    them and put back in place (multi-column sorts with strings are slow).
    """
    if is_sorted_by(df, order):
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
    if is_sorted_by(sub, order):
        return df
    # tie blocks are contiguous and already ordered by `head`: sorting the tied
    # rows by the full order and writing them back in the same positions is exact
    sub = sub.sort(order, maintain_order=True)
    return df.with_columns(df[col].scatter(rows, sub[col]) for col in df.columns)


def ordered_runs(
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
    df = sort_lex(frame.collect(), order)
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


def sort_by_time(
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
        dense, row = sort_by_time(group.astype(np.int64), t, row, event_id)
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


def small_codes(values: pl.Series, mapping: dict[str, int]) -> np.ndarray:
    """`mapping[value]` of every row as uint8, 0 for other values and null (via the Enum's physical codes)."""
    if isinstance(values.dtype, pl.Enum) and len(values.dtype.categories) < 256:
        categories = values.dtype.categories.to_list()
        table = bytes([mapping.get(c, 0) for c in categories] + [0] * (256 - len(categories)))
        physical = values.to_physical().cast(pl.UInt8).fill_null(255)
        # a 256-byte translation table: far cheaper than a numpy lookup over millions of rows
        return np.frombuffer(physical.to_numpy().tobytes().translate(table), np.uint8)
    return values.cast(pl.String).replace_strict(mapping, default=0, return_dtype=pl.UInt8).fill_null(0).to_numpy()


# Window helper over a frame made by ordered_runs: `first` marks the first
# row of each run (person...). A global scan reset at run starts is much
# cheaper than `.over()` with many small groups.


def ffill_in(expr: pl.Expr, first: pl.Expr, default: pl.Expr) -> pl.Expr:
    """Forward fill inside each run; `default` before the run's first value."""
    return pl.when(first & expr.is_null()).then(default).otherwise(expr).forward_fill()
