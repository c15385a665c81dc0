"""Maintenance jobs: real-time expiry, compaction sorted by user, and vacuum, run on schedules
while micro-batches keep appending (see ``storage.maintenance`` for why that is safe)."""

from collections.abc import Callable
from datetime import UTC, date, datetime, timedelta

import dagster as dg
from pydantic import Field

from sequence_platform.orchestration.resources import PlatformResource
from sequence_platform.spec.catalog import Catalog
from sequence_platform.storage.layout import TableLayout
from sequence_platform.storage.maintenance import (
    compact_table,
    expire_days,
    vacuum_table,
)

MAINTENANCE_JOB = "table_maintenance"
REALTIME_COMPACTION_JOB = "realtime_compaction"


class VacuumConfig(dg.Config):
    retention_hours: int | None = Field(
        default=None,
        ge=0,
        description=(
            "Delete files unreferenced for longer than this; default the platform's "
            "vacuum_retention_hours (SEQUENCE_PLATFORM_VACUUM_RETENTION_HOURS, 168)."
        ),
    )


def every_table(catalog: Catalog, layout: TableLayout) -> list[str]:
    tables: list[str] = []
    for source in catalog.sources:
        tables += [
            layout.events(source),
            layout.stream_archive(source),
            layout.dead_letters(source),
        ]
    for table in catalog.feature_tables:
        tables += [layout.features(table), layout.dead_letters(table)]
    for signal in catalog.signals:
        tables += [layout.signals(signal), layout.realtime(signal)]
    tables += [layout.sequence(spec) for spec in catalog.sequences.values()]
    tables += [layout.training(name) for name in catalog.training_sets]
    tables.append(layout.tombstones())  # grows by a commit or two with every forgotten user
    return tables


def streamed_tables(catalog: Catalog, layout: TableLayout) -> list[str]:
    """The tables micro-batches append to: where small files pile up by the hour."""
    tables: list[str] = []
    for source in catalog.sources:
        tables += [layout.stream_archive(source), layout.dead_letters(source)]
    tables += [layout.realtime(signal) for signal in catalog.signals]
    return tables


def realtime_expiry(catalog: Catalog, layout: TableLayout, today: date) -> dict[str, date]:
    """Per real-time table, the first day to keep: reads at ``T`` <= now reach back at most the
    longest lookback of the sequences over that signal, plus a day of margin for readers
    whose clock or request is a little behind (a signal no sequence reads keeps one day)."""
    horizons = {signal: 0 for signal in catalog.signals}
    for sequence in catalog.sequences.values():
        horizons[sequence.signal] = max(horizons[sequence.signal], sequence.lookback_days)
    return {
        layout.realtime(signal): today - timedelta(days=days + 1)
        for signal, days in horizons.items()
    }


def _compaction_op(
    name: str, tables: Callable[[Catalog, TableLayout], list[str]], catalog: Catalog
) -> dg.OpDefinition:
    @dg.op(
        name=name,
        ins={"after": dg.In(dg.Nothing)},
        out=dg.Out(dg.Nothing),
        description=(
            "Rewrites the days with small or overlapping files into few files sorted by "
            "user_id (other tables: compacted in place); one commit per day, same rows."
        ),
    )
    def compact(context: dg.OpExecutionContext, platform: PlatformResource) -> None:
        layout = platform.layout
        for uri in tables(catalog, layout):
            outcome = compact_table(uri, layout.storage_options)
            if outcome is not None and outcome.days:
                context.log.info(
                    f"{uri}: {outcome.days} days, {outcome.files_removed} files rewritten into "
                    f"{outcome.files_added}"
                    + (f" sorted by {outcome.sorted_by}" if outcome.sorted_by else "")
                )

    return compact


def maintenance_jobs(catalog: Catalog) -> list[dg.JobDefinition]:
    """``table_maintenance`` (expire, compact, vacuum every table) and ``realtime_compaction``
    (compact only what micro-batches append to)."""

    @dg.op(
        name="expire_realtime_rows",
        out=dg.Out(dg.Nothing),
        description=(
            "Deletes real-time days older than the longest lookback of the sequences that "
            "read them (plus a day)."
        ),
    )
    def expire(context: dg.OpExecutionContext, platform: PlatformResource) -> None:
        layout = platform.layout
        today = datetime.now(UTC).date()
        for uri, keep_from in realtime_expiry(catalog, layout, today).items():
            rows = expire_days(uri, keep_from, layout.storage_options)
            context.log.info(f"{uri}: {rows} rows before {keep_from} expired")

    compact_all = _compaction_op("compact_tables", every_table, catalog)
    compact_streamed = _compaction_op("compact_streamed_tables", streamed_tables, catalog)

    @dg.op(
        name="vacuum_tables",
        ins={"after": dg.In(dg.Nothing)},
        description="Deletes files no table version has needed for the retention period.",
    )
    def vacuum(
        context: dg.OpExecutionContext, config: VacuumConfig, platform: PlatformResource
    ) -> None:
        layout = platform.layout
        hours = (
            config.retention_hours
            if config.retention_hours is not None
            else platform.vacuum_retention_hours
        )
        for uri in every_table(catalog, layout):
            removed = vacuum_table(uri, hours, layout.storage_options)
            if removed:
                context.log.info(f"{uri}: {len(removed)} files older than {hours} h vacuumed")

    @dg.job(
        name=MAINTENANCE_JOB,
        description="Real-time expiry, compaction sorted by user_id, then vacuum of every table.",
    )
    def table_maintenance() -> None:
        vacuum(after=compact_all(after=expire()))

    @dg.job(
        name=REALTIME_COMPACTION_JOB,
        description="Compacts the tables micro-batches append to, sorted by user_id.",
    )
    def realtime_compaction() -> None:
        compact_streamed()

    return [table_maintenance, realtime_compaction]


def maintenance_schedules(jobs: list[dg.JobDefinition]) -> list[dg.ScheduleDefinition]:
    by_name = {job.name: job for job in jobs}
    return [
        dg.ScheduleDefinition(
            job=by_name[MAINTENANCE_JOB],
            cron_schedule="0 3 * * *",
            execution_timezone="UTC",
            description="Expires, compacts and vacuums every table at 03:00 UTC.",
        ),
        dg.ScheduleDefinition(
            job=by_name[REALTIME_COMPACTION_JOB],
            cron_schedule="17 * * * *",
            execution_timezone="UTC",
            description="Compacts the real-time tables every hour.",
        ),
    ]
