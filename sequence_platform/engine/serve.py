"""Request time: snapshot plus real-time tail, trimmed, with request-time fields added."""

from __future__ import annotations

from collections.abc import Mapping
from datetime import datetime, timedelta

import numpy as np
import polars as pl

from sequence_platform.engine.sequence import (
    as_utc,
    explode_snapshot,
    in_window,
    merge_rows,
    newest_first,
    sequence_rows,
)
from sequence_platform.engine.signal import deduplicate_events, enrich_as_of
from sequence_platform.spec.catalog import Catalog
from sequence_platform.spec.models import AGE_FIELD, SequenceSpec
from sequence_platform.spec.types import TIMESTAMP

FROM_REALTIME = "from_realtime"
"""Marks rows that came from the real-time tail rather than the snapshot."""
REQUEST_TIME = "__request_time"


def merge_realtime_tail(
    snapshot: pl.LazyFrame,
    tail: pl.LazyFrame,
    spec: SequenceSpec,
    at: datetime,
    *,
    max_length: int | None = None,
    max_age: timedelta | None = None,
) -> pl.LazyFrame:
    """The served rows at ``at``: the snapshot's events plus real-time signal rows not already in
    it, re-ordered and trimmed by the sequence rule. One row per event, newest first per user,
    with ``from_realtime`` telling where each came from."""
    batch = explode_snapshot(snapshot, spec).with_columns(pl.lit(False).alias(FROM_REALTIME))
    # Rule 1 before the filter: which copy of a twice-delivered event counts must not depend
    # on whether one copy passes the filter.
    fresh = sequence_rows(deduplicate_events(tail), spec).with_columns(
        pl.lit(True).alias(FROM_REALTIME)
    )
    rows = merge_rows(batch, fresh).filter(in_window(spec, at, max_age))
    return newest_first(rows, max_length or spec.max_length)


def add_request_fields(
    rows: pl.LazyFrame,
    spec: SequenceSpec,
    catalog: Catalog,
    features: Mapping[str, pl.LazyFrame],
    at: datetime | pl.Expr,
) -> pl.LazyFrame:
    """``age_seconds`` and the ``request_enrich`` columns, joined as of the request time:
    ``at``, or each row's own instant when ``at`` is an expression (a training row's ``ts``).
    """
    moment = (
        pl.lit(as_utc(at), dtype=TIMESTAMP)
        if isinstance(at, datetime)
        else at.dt.convert_time_zone("UTC").dt.cast_time_unit("ms")
    )
    frame = rows.with_columns(moment.alias(REQUEST_TIME))
    for enrichment in spec.request_enrich:
        table = catalog.feature_tables[enrichment.table]
        frame = enrich_as_of(frame, features[enrichment.table], table, enrichment, REQUEST_TIME)
    milliseconds = (pl.col(REQUEST_TIME) - pl.col("event_time")).dt.total_milliseconds()
    age = milliseconds.map_batches(_seconds, return_dtype=pl.Float64)
    return frame.with_columns(age.alias(AGE_FIELD)).drop(REQUEST_TIME)


def _seconds(milliseconds: pl.Series) -> pl.Series:
    """Milliseconds as seconds, correctly rounded. Not Polars' ``/ 1000``: it divides by a
    constant as a multiplication by the reciprocal, which gives 2750.4030000000002 where the
    age is 2750.403 s; NumPy divides."""
    values = milliseconds.to_numpy().astype(np.float64) / 1000.0
    return pl.Series(milliseconds.name, values, dtype=pl.Float64)
