"""The batch steps behind the Dagster assets: read, call the engine, write one day.

Plain functions with no Dagster in them, so that an asset body stays a few lines and the same
step can be run from a test or a script. Each step owns the day it is given: it rewrites
exactly that partition, so running it again gives the same table. A range is run a day at a
time, each day written as soon as it is computed, so memory follows one day's volume.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta
from pathlib import Path

import polars as pl

from sequence_platform.engine.decode import ORIGIN
from sequence_platform.engine.sequence import day_rows
from sequence_platform.engine.signal import build_signal as enrich_events
from sequence_platform.engine.signal import deduplicate_events
from sequence_platform.ingest.landing import read_landing_day
from sequence_platform.runtime.microbatch import CHANNEL, DEAD_LETTER_COLUMNS, STREAM_OFFSET
from sequence_platform.spec.catalog import Catalog
from sequence_platform.spec.models import REQUIRED_EVENT_FIELDS, SequenceSpec
from sequence_platform.storage.delta import (
    DT,
    WriteStats,
    delete_keys,
    open_table,
    overwrite_days,
    scan_days,
)
from sequence_platform.storage.layout import TableLayout


@dataclass(frozen=True)
class BatchContext:
    catalog: Catalog
    layout: TableLayout
    home: Path


@dataclass(frozen=True)
class StepOutcome:
    written: pl.DataFrame
    """What was written for the days, for the asset checks."""
    stats: WriteStats
    extra: dict[str, int | float | str] = field(default_factory=dict)


def build_events(ctx: BatchContext, source: str, day: date) -> StepOutcome:
    """Validated, de-duplicated events of ``source`` for the day: the landing files and the
    stream archive, the landing copy winning. Landing rejects go to dead letters."""
    schema = ctx.catalog.event_schema(source)
    decoded = read_landing_day(
        ctx.home,
        source,
        day,
        schema,
        required=tuple(REQUIRED_EVENT_FIELDS),
        time_field="event_time",
    )
    landed = decoded.valid.drop(ORIGIN)
    streamed = scan_days(
        ctx.layout.stream_archive(source), schema, day, day, ctx.layout.storage_options
    ).drop(DT)
    events = (
        deduplicate_events(landed.lazy(), streamed)
        .with_columns(pl.col("event_time").dt.date().alias(DT))
        .sort(DT, "event_time", "event_id")
        .collect()
    )
    dead = _landing_dead_letters(decoded.rejected.with_columns(pl.lit(day).alias(DT)))
    stats = overwrite_days(ctx.layout.events(source), events, day, day, ctx.layout.storage_options)
    # The stream's dead letters share the table; a landing day replaces only its own.
    overwrite_days(
        ctx.layout.dead_letters(source),
        dead,
        day,
        day,
        ctx.layout.storage_options,
        only_where=f"{CHANNEL} = 'landing'",
    )
    from_stream = events.filter(~pl.col("event_id").is_in(landed["event_id"].implode())).height
    return StepOutcome(
        events,
        stats,
        {
            "dead_letters": dead.height,
            "from_stream_archive": from_stream,
            "duplicates_dropped": landed.height - (events.height - from_stream),
        },
    )


def _landing_dead_letters(rejected: pl.DataFrame) -> pl.DataFrame:
    return rejected.with_columns(
        pl.lit("landing").alias(CHANNEL), pl.lit(None, dtype=pl.Int64).alias(STREAM_OFFSET)
    ).select(DEAD_LETTER_COLUMNS)


def build_features(ctx: BatchContext, table: str, day: date) -> StepOutcome:
    """Validated feature versions of ``table`` whose as-of time falls on the day."""
    spec = ctx.catalog.feature_tables[table]
    schema = ctx.catalog.feature_schema(table)
    decoded = read_landing_day(
        ctx.home, table, day, schema, required=(spec.key, spec.as_of), time_field=spec.as_of
    )
    rows = (
        decoded.valid.drop(ORIGIN)
        .with_columns(pl.col(spec.as_of).dt.date().alias(DT))
        .sort(DT, spec.key, spec.as_of)
    )
    stats = overwrite_days(ctx.layout.features(table), rows, day, day, ctx.layout.storage_options)
    dead = _landing_dead_letters(decoded.rejected.with_columns(pl.lit(day).alias(DT)))
    overwrite_days(ctx.layout.dead_letters(table), dead, day, day, ctx.layout.storage_options)
    return StepOutcome(rows, stats, {"dead_letters": dead.height})


def build_signal(ctx: BatchContext, signal: str, day: date) -> StepOutcome:
    """Signal rows for the day, enriched from every feature version up to the day's end."""
    spec = ctx.catalog.signals[signal]
    events = scan_days(
        ctx.layout.events(spec.source),
        ctx.catalog.event_schema(spec.source),
        day,
        day,
        ctx.layout.storage_options,
    )
    features = {
        enrichment.table: scan_days(
            ctx.layout.features(enrichment.table),
            ctx.catalog.feature_schema(enrichment.table),
            None,
            day,
            ctx.layout.storage_options,
        ).drop(DT)
        for enrichment in spec.enrich
    }
    rows = (
        enrich_events(events.drop(DT), features, spec, ctx.catalog)
        .with_columns(pl.col("event_time").dt.date().alias(DT))
        .sort(DT, "event_time", "event_id")
        .collect()
    )
    stats = overwrite_days(ctx.layout.signals(signal), rows, day, day, ctx.layout.storage_options)
    return StepOutcome(rows, stats)


def build_sequence(ctx: BatchContext, sequence: str, day: date) -> StepOutcome:
    """What the day adds to the sequence (see ``engine.day_rows``): the day's own signal only,
    so a day costs the same whatever the lookback."""
    spec = ctx.catalog.sequences[sequence]
    signal = scan_days(
        ctx.layout.signals(spec.signal),
        ctx.catalog.signal_schema(spec.signal),
        day,
        day,
        ctx.layout.storage_options,
    ).drop(DT)
    rows = day_rows(signal, spec, day).collect().select(pl.lit(day).alias(DT), pl.all())
    stats = overwrite_days(ctx.layout.sequence(spec), rows, day, day, ctx.layout.storage_options)
    return StepOutcome(rows, stats)


def prune_realtime(ctx: BatchContext, signal: str) -> int:
    """Delete real-time rows whose event the batch now holds, once every snapshot of the
    signal covers it.

    The batch copy is authoritative (the landing copy wins), and from then on it is in every
    snapshot or rightly left out of it; a stream copy left in the tail could only bring back
    a stale version. Until every sequence of the signal has a snapshot of that day, the tail
    keeps the row, so nothing is ever missing from the served sequence.
    """
    spec = ctx.catalog.signals[signal]
    sequences = [s for s in ctx.catalog.sequences.values() if s.signal == signal]
    covered = [_latest_snapshot_day(ctx, sequence) for sequence in sequences]
    realtime = ctx.layout.realtime(signal)
    if not covered or open_table(realtime, ctx.layout.storage_options) is None:
        return 0
    days = [day for day in covered if day is not None]
    if len(days) < len(covered):
        return 0
    # Serving uses the newest snapshot whose cutoff has passed; a snapshot of today (cutoff
    # tomorrow) is not used yet, so its events must stay in the tail.
    upto = min(*days, datetime.now(UTC).date() - timedelta(days=1))
    tail_days = scan_days(realtime, pl.Schema(), storage_options=ctx.layout.storage_options)
    earliest = tail_days.select(pl.col(DT).min()).collect().item()
    if not isinstance(earliest, date) or earliest > upto:
        return 0
    # A correction may move an event to another day, but never out of every window.
    horizon = max(s.lookback_days for s in sequences)
    batch_ids = scan_days(
        ctx.layout.events(spec.source),
        pl.Schema({"event_id": pl.String()}),
        earliest - timedelta(days=horizon),
        upto,
        ctx.layout.storage_options,
    ).collect()
    return delete_keys(realtime, batch_ids, "event_id", ctx.layout.storage_options)


def _latest_snapshot_day(ctx: BatchContext, spec: SequenceSpec) -> date | None:
    uri = ctx.layout.sequence(spec)
    if open_table(uri, ctx.layout.storage_options) is None:
        return None
    days = scan_days(uri, pl.Schema(), storage_options=ctx.layout.storage_options)
    latest = days.select(pl.col(DT).max()).collect().item()
    return latest if isinstance(latest, date) else None
