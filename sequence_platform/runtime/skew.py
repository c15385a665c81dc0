"""Train/serve skew of a day, read from the tables: the engine's comparisons (``engine.skew``)
on what each path wrote.

Both comparisons need the real-time rows as the real-time path wrote them, but the batch
deletes real-time rows it holds once every sequence of the signal has a snapshot of their day
(``runtime.batch.prune_realtime``), possibly within the very run being checked. So the real-time
side is read as the tables stood at ``before`` (the start of the run, by Delta time travel),
and an event the batch already held then may have lost its real-time row to an earlier run's
pruning: it is not counted as missing, and serving is taken to have had its batch copy (which
is what serving uses once the row is pruned). Without ``before`` the tables are read as they
are now and nothing is taken to be pruned. When the old versions cannot be read any more
(vacuumed, as forgetting a user does at once), the tables are read as they are now and every
event the batch holds is taken to be possibly pruned: nothing is reported missing wrongly.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from datetime import date, datetime, timedelta

import polars as pl
from deltalake.exceptions import DeltaError

from sequence_platform.engine.sequence import sequence_rows, snapshot_cutoff
from sequence_platform.engine.skew import (
    EXAMPLES,
    SAMPLE_USERS,
    ServedSkew,
    SignalSkew,
    compare_sequences,
    compare_signal_rows,
    expected_snapshot,
    sample_users,
    served_sequences,
)
from sequence_platform.runtime.microbatch import STREAM_OFFSET, STREAM_PARTITION
from sequence_platform.runtime.snapshots import read_snapshot
from sequence_platform.spec.catalog import Catalog
from sequence_platform.storage.delta import DT, scan_days
from sequence_platform.storage.layout import TableLayout

_IDS = pl.Schema({"event_id": pl.String()})
log = logging.getLogger(__name__)


def signal_skew(
    layout: TableLayout,
    catalog: Catalog,
    signal: str,
    day: date,
    *,
    before: datetime | None = None,
) -> SignalSkew:
    """``realtime/<signal>`` against ``signals/<signal>`` for ``day``, by ``event_id``.

    Run it once the batch has written the day and before the day's real-time rows are pruned,
    or pass ``before`` (see the module doc)."""
    schema = catalog.signal_schema(signal)
    batch = scan_days(layout.signals(signal), schema, day, day, layout.storage_options)
    side = realtime_side(layout, catalog, signal, day, day, before)
    return compare_signal_rows(
        batch.drop(DT).collect(),
        side.rows,
        schema.names(),
        streamed=side.streamed,
        pruned=side.maybe_pruned,
        examples=EXAMPLES,
    )


def served_skew(
    layout: TableLayout,
    catalog: Catalog,
    sequence: str,
    day: date,
    *,
    sample: int = SAMPLE_USERS,
    before: datetime | None = None,
) -> ServedSkew:
    """What serving answered at ``day``'s cutoff from the previous day's snapshot plus the
    real-time tail, against the new snapshot of ``day``, for a fixed sample of the users with
    events of the day on either path.

    Events of the day the stream never delivered (landing-only) are left out of the snapshot
    side: serving could not have had them, and a day loaded from the warehouse alone would
    otherwise always differ. Run it once the sequence has written the day and before the
    real-time rows are pruned, or pass ``before`` (see the module doc).
    """
    spec = catalog.sequences[sequence]
    at = snapshot_cutoff(day)
    schema = catalog.signal_schema(spec.signal)
    batch = (
        scan_days(layout.signals(spec.signal), schema, day, day, layout.storage_options)
        .drop(DT)
        .collect()
    )
    first = (at - timedelta(days=spec.lookback_days)).date()
    side = realtime_side(layout, catalog, spec.signal, first, day, before)
    # A pruned row was served by its batch copy from then on: the closest record of it left.
    pruned = batch.filter(pl.col("event_id").is_in(side.maybe_pruned.implode()))
    tail = pl.concat([side.rows, pruned])
    not_streamed = batch.filter(~pl.col("event_id").is_in(side.streamed.implode()))
    day_rows = sequence_rows(batch.lazy(), spec).collect()
    tail_rows = sequence_rows(tail.lazy(), spec).collect()
    candidates = pl.concat([day_rows["user_id"], tail_rows["user_id"]]).unique()
    users = sample_users(candidates, sample)

    def of_users(frame: pl.DataFrame) -> pl.DataFrame:
        return frame.filter(pl.col("user_id").is_in(users.implode()))

    previous = read_snapshot(layout, catalog, spec, day - timedelta(days=1), users)
    new = read_snapshot(layout, catalog, spec, day, users)
    served = served_sequences(previous, of_users(tail), spec, at)
    expected = expected_snapshot(new, previous, not_streamed["event_id"], spec, at)
    left_out = sequence_rows(not_streamed.lazy(), spec).collect().height
    return compare_sequences(
        served,
        expected,
        users,
        spec.stored_fields,
        candidates=candidates.len(),
        not_streamed=left_out,
        examples=EXAMPLES,
    )


@dataclass(frozen=True)
class RealtimeSide:
    """What the real-time path wrote, as a check compares it."""

    rows: pl.DataFrame
    """Real-time signal rows of the days read, in delivery order."""
    streamed: pl.Series
    """Event ids of the checked day the stream delivered (the stream archive)."""
    maybe_pruned: pl.Series
    """Streamed event ids without a real-time row whose row pruning may have deleted."""


def realtime_side(
    layout: TableLayout,
    catalog: Catalog,
    signal: str,
    first: date,
    day: date,
    before: datetime | None,
) -> RealtimeSide:
    """The real-time rows of ``first..day`` and the stream's events of ``day``, as the tables
    stood at ``before`` (see the module doc)."""
    source = catalog.signals[signal].source
    archive, events = layout.stream_archive(source), layout.events(source)
    nothing = pl.Series("event_id", [], dtype=pl.String)
    if before is not None:
        try:
            rows = _realtime(layout, catalog, signal, first, day, before)
            streamed = _event_ids(archive, day, layout, before)
            held = _event_ids(events, day, layout, before)
        except (OSError, pl.exceptions.PolarsError, DeltaError) as error:
            log.warning(
                "skew of %s on %s: versions at %s unreadable (%s)", signal, day, before, error
            )
        else:
            return RealtimeSide(rows, streamed, _without_rows(streamed, held, rows))
    rows = _realtime(layout, catalog, signal, first, day, None)
    streamed = _event_ids(archive, day, layout, None)
    held = nothing if before is None else _event_ids(events, day, layout, None)
    return RealtimeSide(rows, streamed, _without_rows(streamed, held, rows))


def _realtime(
    layout: TableLayout,
    catalog: Catalog,
    signal: str,
    first: date,
    last: date,
    before: datetime | None,
) -> pl.DataFrame:
    """Real-time signal rows of days ``first..last``, in delivery order."""
    schema = catalog.signal_schema(signal)
    rows = scan_days(
        layout.realtime(signal),
        pl.Schema({**dict(schema), STREAM_PARTITION: pl.Int32(), STREAM_OFFSET: pl.Int64()}),
        first,
        last,
        layout.storage_options,
        as_of=before,
    )
    return (
        rows.sort(STREAM_PARTITION, STREAM_OFFSET, nulls_last=True, maintain_order=True)
        .select(schema.names())
        .collect()
    )


def _event_ids(uri: str, day: date, layout: TableLayout, before: datetime | None) -> pl.Series:
    ids = scan_days(uri, _IDS, day, day, layout.storage_options, as_of=before)
    return ids.select("event_id").unique().collect()["event_id"]


def _without_rows(streamed: pl.Series, held: pl.Series, realtime: pl.DataFrame) -> pl.Series:
    """Streamed events without a real-time row that the batch held: pruning, which deletes
    only events the batch holds, may have taken their rows."""
    return streamed.filter(
        streamed.is_in(held.implode()) & ~streamed.is_in(realtime["event_id"].implode())
    )
