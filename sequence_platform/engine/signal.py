"""From validated events to signal rows: de-duplication, filter, as-of enrichment, executors."""

from __future__ import annotations

from collections.abc import Mapping

import polars as pl

from sequence_platform.spec.catalog import Catalog
from sequence_platform.spec.executors import bind_executor
from sequence_platform.spec.models import Enrichment, FeatureTableSpec, SignalSpec


def deduplicate_events(*frames_by_priority: pl.LazyFrame) -> pl.LazyFrame:
    """One row per ``event_id``: the copy from the earliest frame wins, then the earliest row.

    Callers pass landing-zone events before stream events: the landing copy is the corrected one.
    """
    # Concatenation keeps frame order, then row order: the first copy is the one that wins.
    return pl.concat(frames_by_priority, how="vertical_relaxed").filter(
        pl.col("event_id").is_first_distinct()
    )


def latest_feature_versions(features: pl.LazyFrame, spec: FeatureTableSpec) -> pl.LazyFrame:
    """Feature rows with one row per (key, as-of), sorted for as-of joins; the last copy wins."""
    return (
        features.with_row_index("__row")
        .sort(spec.key, spec.as_of, "__row")
        .unique(subset=[spec.key, spec.as_of], keep="last", maintain_order=True)
        .drop("__row")
    )


def enrich_as_of(
    frame: pl.LazyFrame,
    features: pl.LazyFrame,
    table: FeatureTableSpec,
    enrichment: Enrichment,
    at: str,
) -> pl.LazyFrame:
    """Join ``enrichment.fields`` from the feature row with the same key and the greatest
    as-of value ``<= frame[at]``; no such row gives nulls. Row order of ``frame`` is kept."""
    right = latest_feature_versions(features, table).select(
        pl.col(table.key).alias("__key"),
        pl.col(table.as_of).alias("__as_of"),
        *(pl.col(f).alias(enrichment.output_name(f)) for f in enrichment.fields),
    )
    left = frame.with_row_index("__order").sort(at)
    joined = left.join_asof(
        right.sort("__as_of"),
        left_on=at,
        right_on="__as_of",
        by_left=table.key,
        by_right="__key",
        strategy="backward",
        allow_exact_matches=True,
        check_sortedness=False,
    )
    return joined.sort("__order").drop("__order", "__as_of", "__key", strict=False)


def build_signal(
    events: pl.LazyFrame,
    features: Mapping[str, pl.LazyFrame],
    spec: SignalSpec,
    catalog: Catalog,
) -> pl.LazyFrame:
    """Signal rows of ``spec`` from validated, de-duplicated events of its source.

    ``features`` holds, per enriching table, every version that may apply to these events.
    """
    frame = events.select(catalog.event_schema(spec.source).names())
    if spec.filter:
        frame = frame.filter(pl.sql_expr(spec.filter))
    for enrichment in spec.enrich:
        table = catalog.feature_tables[enrichment.table]
        frame = enrich_as_of(frame, features[enrichment.table], table, enrichment, "event_time")
    for call in spec.executors:
        frame = bind_executor(call.name, call.params)(frame)
    schema = catalog.signal_schema(spec.name)
    return frame.select(pl.col(name).cast(dtype) for name, dtype in schema.items())
