"""Reads before the newest snapshot's cutoff: exact at any instant, not only at midnights.

A snapshot at cutoff ``C`` cannot answer for ``T > C`` on its own when the batch holds events
with ``C <= event_time < T`` (an ``as_of`` between two midnights of a day the batch has). For
such a read the service combines what the batch holds for ``T``'s window — the stored days,
and the signal rows of ``T``'s own day before ``T`` — by the engine's own call
(``runtime.reads.Reader``, ``engine.sequences_at``), and hands that to the fast path as the
snapshot, so that the real-time tail is merged by the very same code as for a read now.

The batch's rows of a day are read once per sequence table version and day (a small LRU),
never once per request.
"""

from __future__ import annotations

import logging
import threading
from collections import OrderedDict
from datetime import UTC, date, datetime, timedelta

import numpy as np
import polars as pl

from sequence_platform.engine.sequence import LENGTH, sequences_at
from sequence_platform.runtime.reads import Reader
from sequence_platform.serving.errors import UNAVAILABLE_DATA_ERRORS, NotLoaded
from sequence_platform.serving.store import Snapshot, rows_of_keys
from sequence_platform.spec.catalog import Catalog
from sequence_platform.spec.models import SequenceSpec
from sequence_platform.storage.layout import TableLayout

_AT = "__as_of"
log = logging.getLogger(__name__)


class PastReads:
    """The batch's rows of recent days, for reads at instants the latest snapshot is too new
    for."""

    def __init__(self, catalog: Catalog, layout: TableLayout, *, capacity: int = 4) -> None:
        self.reader = Reader(catalog, layout)
        self.catalog = catalog
        self.capacity = capacity
        self._days: OrderedDict[tuple[str, int | None, date], tuple[pl.DataFrame, np.ndarray]]
        self._days = OrderedDict()
        self._lock = threading.Lock()

    def snapshot_at(
        self, spec: SequenceSpec, users: np.ndarray, at: datetime, table_version: int | None
    ) -> Snapshot:
        """The sequences of ``users`` (sorted, distinct) at ``at`` over every batch row with
        ``event_time < at``, as a snapshot for the fast path to merge the real-time tail into;
        its cutoff is the start of ``at``'s day (the last stored day's)."""
        day = at.astimezone(UTC).date()
        rows, user_ids = self._batch_rows(spec, day, table_version)
        mine = rows[rows_of_keys(user_ids, users)]
        queries = pl.DataFrame({"user_id": users}, schema={"user_id": pl.Int64()}).with_columns(
            pl.lit(at, dtype=pl.Datetime("us", "UTC")).alias(_AT)
        )
        answered = sequences_at(mine.lazy(), queries.lazy(), spec, at=_AT).collect()
        frame = answered.filter(pl.col(LENGTH) > 0).drop(_AT)
        return Snapshot.of(frame, spec, self.catalog, day - timedelta(days=1), table_version)

    def clear(self) -> None:
        """Drop every day's rows (their users may have been forgotten since)."""
        with self._lock:
            self._days.clear()

    def _batch_rows(
        self, spec: SequenceSpec, day: date, table_version: int | None
    ) -> tuple[pl.DataFrame, np.ndarray]:
        key = (spec.name, table_version, day)
        with self._lock:
            found = self._days.get(key)
            if found is not None:
                self._days.move_to_end(key)
                return found
        # Sorted by user, stably: the order within a user is the merge's priority order.
        try:
            rows = self.reader.batch_rows_for_day(spec, day).collect()
        except UNAVAILABLE_DATA_ERRORS as error:
            # A file vacuumed while it was read (a user forgotten meanwhile, say): transient.
            log.warning("reading the batch rows of %s for %s failed: %s", spec.name, day, error)
            raise NotLoaded(
                f"the batch rows of '{spec.name}' for {day} cannot be read right now; retry"
            ) from error
        rows = rows.sort("user_id", maintain_order=True)
        found = (rows, rows["user_id"].to_numpy().astype(np.int64, copy=False))
        with self._lock:
            self._days[key] = found
            while len(self._days) > self.capacity:
                self._days.popitem(last=False)
        return found
