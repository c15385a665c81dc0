"""A daily maintenance job: compact and vacuum every table, expire old real-time rows."""

from datetime import UTC, datetime, timedelta

import dagster as dg

from sequence_platform.orchestration.resources import PlatformResource
from sequence_platform.spec.catalog import Catalog
from sequence_platform.storage.maintenance import maintain_table

MAINTENANCE_JOB = "table_maintenance"


def maintenance_job(catalog: Catalog) -> dg.JobDefinition:
    @dg.op(
        name="compact_and_vacuum",
        description=(
            "Compacts small files and vacuums files older than a week in every table; deletes "
            "real-time rows older than the longest lookback of the sequences that read them."
        ),
    )
    def compact_and_vacuum(context: dg.OpExecutionContext, platform: PlatformResource) -> None:
        layout = platform.layout
        today = datetime.now(UTC).date()
        horizons: dict[str, int] = {}
        for sequence in catalog.sequences.values():
            horizons[sequence.signal] = max(
                horizons.get(sequence.signal, 0), sequence.lookback_days
            )
        tables: list[tuple[str, int | None]] = []
        for source in catalog.sources:
            tables += [(layout.events(source), None), (layout.stream_archive(source), None)]
            tables.append((layout.dead_letters(source), None))
        for table in catalog.feature_tables:
            tables += [(layout.features(table), None), (layout.dead_letters(table), None)]
        for signal in catalog.signals:
            tables.append((layout.signals(signal), None))
            tables.append((layout.realtime(signal), horizons.get(signal, 0) + 1))
        tables += [(layout.sequence(spec), None) for spec in catalog.sequences.values()]
        for uri, keep_days in tables:
            expire = today - timedelta(days=keep_days) if keep_days else None
            outcome = maintain_table(
                uri, expire_before=expire, storage_options=layout.storage_options
            )
            if outcome is None:
                continue
            context.log.info(
                f"{uri}: {outcome.files_removed} files compacted into {outcome.files_added}, "
                f"{outcome.files_vacuumed} vacuumed, {outcome.rows_expired} rows expired"
            )

    @dg.job(name=MAINTENANCE_JOB, description="Compaction, vacuum and real-time retention.")
    def job() -> None:
        compact_and_vacuum()

    return job
