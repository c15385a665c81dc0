"""Sequence semantics, exactly as the design states them, in one place.

For a sequence ``S`` and a time ``T``: rows pass ``S.filter``; the window is
``T - lookback <= event_time < T``; order is ``event_time`` then ``event_id``, both
descending; the first ``max_length`` are kept. A snapshot holds that per user as list
columns. A sequence table stores, per day, what that day adds (:func:`day_rows`); the
snapshot at a cutoff combines the days of its window (:func:`combine_days`). Combining days
and serving a snapshot plus a real-time tail are the same operation: merge event rows
(earlier copies win), then apply the rule.
"""

from __future__ import annotations

from datetime import UTC, date, datetime, time, timedelta

import polars as pl

from sequence_platform.spec.catalog import Catalog
from sequence_platform.spec.models import PARTITION_COLUMN, SequenceSpec
from sequence_platform.spec.types import TIMESTAMP

LENGTH = "length"
DAY = PARTITION_COLUMN
"""The partition column of stored day rows."""
NEWEST_FIRST = (["event_time", "event_id"], [True, True])


def sequence_rows(signal: pl.LazyFrame, spec: SequenceSpec, *keep: str) -> pl.LazyFrame:
    """Signal rows that pass ``S.filter``, reduced to ``user_id`` and the stored fields (after
    the columns named in ``keep``)."""
    frame = signal.filter(pl.sql_expr(spec.filter)) if spec.filter else signal
    return frame.select(*keep, "user_id", *spec.stored_fields)


def snapshot_cutoff(day: date) -> datetime:
    """The snapshot of day ``D`` is the sequence at ``D+1 00:00 UTC``."""
    return datetime.combine(day + timedelta(days=1), time(0), tzinfo=UTC)


def in_window(spec: SequenceSpec, at: datetime, max_age: timedelta | None = None) -> pl.Expr:
    """``T - lookback <= event_time < T``, optionally narrowed to the newest ``max_age``."""
    at = as_utc(at)
    start = at - timedelta(days=spec.lookback_days)
    if max_age is not None:
        start = max(start, at - max_age)
    time = pl.col("event_time")
    # Event times are whole milliseconds, so rounding both bounds up keeps both comparisons
    # exact for a bound with microseconds (``t < T`` is ``t < ceil(T)`` for such t).
    return (time >= _millisecond_literal(start)) & (time < _millisecond_literal(at))


def as_utc(at: datetime) -> datetime:
    """``at`` in UTC; a time without a zone is refused rather than guessed."""
    if at.tzinfo is None:
        raise ValueError(f"{at.isoformat()} has no time zone; pass an aware datetime")
    return at.astimezone(UTC)


def _millisecond_literal(at: datetime) -> pl.Expr:
    remainder = at.microsecond % 1000
    if remainder:
        at += timedelta(microseconds=1000 - remainder)
    return pl.lit(at, dtype=TIMESTAMP)


def newest_first(rows: pl.LazyFrame, max_length: int) -> pl.LazyFrame:
    """Per user, rows ordered newest first (ties broken by ``event_id``), at most ``max_length``."""
    columns, descending = NEWEST_FIRST
    return (
        rows.sort(["user_id", *columns], descending=[False, *descending])
        .group_by("user_id", maintain_order=True)
        .head(max_length)
    )


def merge_rows(*rows_by_priority: pl.LazyFrame) -> pl.LazyFrame:
    """Union of event rows; where an ``event_id`` appears twice the earlier frame wins."""
    # A vertical concatenation keeps the frames' order, then each frame's row order.
    return pl.concat(rows_by_priority, how="vertical_relaxed").filter(
        pl.col("event_id").is_first_distinct()
    )


def assemble_snapshot(
    rows: pl.LazyFrame, spec: SequenceSpec, at: datetime, *, max_length: int | None = None
) -> pl.LazyFrame:
    """One row per user with at least one row in the window: ``user_id``, ``length`` and one
    list column per stored field, newest first. Users are in ascending order."""
    limit = max_length or spec.max_length
    columns, descending = NEWEST_FIRST
    # An event appears once even if its copies disagree (rule 1): the first row given wins.
    ordered = (
        rows.filter(in_window(spec, at))
        .filter(pl.col("event_id").is_first_distinct())
        .sort(["user_id", *columns], descending=[False, *descending])
    )
    return ordered.group_by("user_id", maintain_order=True).agg(
        pl.len().clip(upper_bound=limit).cast(pl.Int32).alias(LENGTH),
        *(pl.col(f).head(limit) for f in spec.stored_fields),
    )


def explode_snapshot(snapshot: pl.LazyFrame, spec: SequenceSpec, *keep: str) -> pl.LazyFrame:
    """The event rows a snapshot holds: ``user_id`` and the stored fields, one row per event
    (after the columns named in ``keep``)."""
    return snapshot.select(*keep, "user_id", *spec.stored_fields).explode(spec.stored_fields)


def day_rows(signal: pl.LazyFrame, spec: SequenceSpec) -> pl.LazyFrame:
    """What each day adds to the sequence; this is what a sequence table stores.

    Per day of ``event_time`` (column ``dt``) and user: the newest ``max_length`` rows of the
    day that pass ``S.filter``, in the snapshot layout, ordered by day then user. Nothing that
    matters is lost by the cut: a row beyond its day's newest ``max_length`` has that many
    newer rows of the same user and day, which stay in every window it is in.
    """
    limit = spec.max_length
    columns, descending = NEWEST_FIRST
    rows = sequence_rows(signal, spec).with_columns(pl.col("event_time").dt.date().alias(DAY))
    # The first copy of an event on a day wins (a filter: three times cheaper than ``unique``
    # keeping order, the same rows).
    ordered = rows.filter(pl.struct(DAY, "event_id").is_first_distinct()).sort(
        [DAY, "user_id", *columns], descending=[False, False, *descending]
    )
    return ordered.group_by(DAY, "user_id", maintain_order=True).agg(
        pl.len().clip(upper_bound=limit).cast(pl.Int32).alias(LENGTH),
        *(pl.col(f).head(limit) for f in spec.stored_fields),
    )


def combine_days(
    days: pl.LazyFrame, spec: SequenceSpec, at: datetime, *, max_length: int | None = None
) -> pl.LazyFrame:
    """The snapshot at ``at`` from stored day rows (``dt`` plus the snapshot layout).

    ``days`` must hold every stored day in the window of ``at``; earlier days win when an
    event id appears on two (the copy stored first is the one a snapshot keeps).
    """
    rows = explode_snapshot(days.sort(DAY, "user_id"), spec)
    return assemble_snapshot(rows, spec, at, max_length=max_length)


def stored_days(spec: SequenceSpec, at: datetime) -> tuple[date, date]:
    """The stored days a read at ``at`` combines: from the day the window starts in to the
    last whole day before ``at``. Rows of ``at``'s own day come from the signal instead: a
    stored day keeps its newest rows, which may all be at or after ``at``."""
    at = as_utc(at)
    return (at - timedelta(days=spec.lookback_days)).date(), at.date() - timedelta(days=1)


def sequences_at(
    rows: pl.LazyFrame,
    queries: pl.LazyFrame,
    spec: SequenceSpec,
    *,
    at: str,
    max_length: int | None = None,
) -> pl.LazyFrame:
    """The sequence of each query's user at the query's own instant (column ``at``).

    ``rows`` are event rows (``user_id`` and the stored fields) that passed ``S.filter``, one
    per event id (merged by priority beforehand). One row per query comes back, in query
    order: the query's columns, then ``length`` and one list column per stored field (empty
    for a user with nothing in the window). Instants are compared at millisecond precision,
    the upper bound exclusive (``at`` is rounded up to a whole millisecond, which is exact for
    millisecond event times).
    """
    limit = max_length or spec.max_length
    columns, descending = NEWEST_FIRST
    events = rows.select("user_id", *spec.stored_fields).collect()
    moment = pl.col(_AT)
    window = (pl.col("event_time") < moment) & (
        pl.col("event_time") >= moment - pl.duration(days=spec.lookback_days)
    )
    asked = queries.with_row_index(_QUERY).with_columns(_ceil_to_millisecond(pl.col(at)).alias(_AT))
    picked = (
        asked.select(_QUERY, "user_id", _AT)
        .join(
            events.lazy().select("user_id", *columns).with_row_index(_ROW),
            on="user_id",
            how="inner",
        )
        .filter(window)
        .sort([_QUERY, *columns], descending=[False, *descending])
        .group_by(_QUERY, maintain_order=True)
        .head(limit)
        .select(_QUERY, _ROW)
        .collect()
    )
    # Gathered by position, not joined: the stored fields may be wide (embeddings).
    chosen = events.drop("user_id")[picked[_ROW]].with_columns(picked[_QUERY])
    lists = (
        chosen.lazy()
        .group_by(_QUERY, maintain_order=True)
        .agg(pl.len().cast(pl.Int32).alias(LENGTH), *(pl.col(f) for f in spec.stored_fields))
    )
    return (
        asked.join(lists, on=_QUERY, how="left", maintain_order="left")
        .with_columns(
            pl.col(LENGTH).fill_null(0),
            *(
                pl.col(f).fill_null(pl.lit([], dtype=pl.List(events.schema[f])))
                for f in spec.stored_fields
            ),
        )
        .drop(_QUERY, _AT)
    )


_ROW, _QUERY, _AT = "__row", "__query", "__ceiled_at"


def _ceil_to_millisecond(moment: pl.Expr) -> pl.Expr:
    """``moment`` as a millisecond UTC timestamp, rounded up (``t < T`` iff ``t < ceil(T)``)."""
    micros = moment.dt.convert_time_zone("UTC").dt.cast_time_unit("us").cast(pl.Int64)
    return ((micros + 999) // 1000).cast(TIMESTAMP)


def empty_snapshot(spec: SequenceSpec, catalog: Catalog) -> pl.LazyFrame:
    elements = catalog.sequence_element_schema(spec.name)
    schema: dict[str, pl.DataType] = {"user_id": pl.Int64(), LENGTH: pl.Int32()}
    schema.update({name: pl.List(dtype) for name, dtype in elements.items()})
    return pl.LazyFrame(schema=schema)
