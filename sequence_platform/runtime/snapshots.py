"""Reading a snapshot back from a sequence table, for every reader (serving, tests, scripts).

A sequence table stores, per day, what that day adds (``engine.day_rows``); the snapshot at a
day's cutoff combines the stored days of its window (``engine.combine_days``). This is the one
place that knows which days to read.
"""

from __future__ import annotations

from datetime import date

import polars as pl
from deltalake import DeltaTable

from sequence_platform.engine.sequence import (
    combine_days,
    empty_snapshot,
    snapshot_cutoff,
    stored_days,
)
from sequence_platform.spec.catalog import Catalog
from sequence_platform.spec.models import SequenceSpec
from sequence_platform.storage.delta import DT, open_table
from sequence_platform.storage.layout import TableLayout


def snapshot_from_table(
    table: DeltaTable,
    spec: SequenceSpec,
    schema: pl.Schema,
    day: date,
    users: pl.Series | None = None,
) -> pl.DataFrame:
    """The snapshot of ``spec`` at the cutoff of ``day`` from this table version, one row per
    user in ascending ``user_id`` order, with the columns of ``schema``; only ``users`` when
    given (the filter is pushed into the read)."""
    cutoff = snapshot_cutoff(day)
    first, last = stored_days(spec, cutoff)
    wanted = pl.col("user_id").is_not_null()
    if users is not None:
        wanted = pl.col("user_id").is_in(users.implode())
    stored = (
        pl.scan_delta(table)
        .filter(pl.col(DT).is_between(first, last) & wanted)
        .select(pl.col(DT), *(pl.col(name).cast(dtype) for name, dtype in schema.items()))
    )
    return combine_days(stored, spec, cutoff).collect()


def read_snapshot(
    layout: TableLayout,
    catalog: Catalog,
    spec: SequenceSpec,
    day: date,
    users: pl.Series | None = None,
) -> pl.DataFrame:
    """The snapshot of ``spec`` at the cutoff of ``day`` (of ``users`` only, when given);
    empty when nothing is stored yet."""
    schema = empty_snapshot(spec, catalog).collect_schema()
    table = open_table(layout.sequence(spec), layout.storage_options)
    if table is None:
        return pl.DataFrame(schema=schema)
    return snapshot_from_table(table, spec, schema, day, users)
