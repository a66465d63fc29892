"""The Polars engine of the run's collects, said once for the pipeline and the models."""

from __future__ import annotations

__all__ = ["ENGINE"]

ENGINE = "in-memory"
"""Polars 2 collects on its streaming engine by default. A range's frames are small (about
100k people and 2.3M events at M) and its plans are many small sorts, scans, joins and as-of
joins: on them the in-memory engine took about a quarter less CPU (Polars 2.1; one range of M,
min of 5: 1.6-1.75 -> 1.2-1.3 CPU-s; its validation 213-270 -> 167-238 CPU-ms; the timelines
and the audit about 1.5x faster). The open stage's scans of whole files keep the default,
which bounds their memory."""
