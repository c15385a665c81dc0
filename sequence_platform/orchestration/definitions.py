"""The Dagster code location: assets, jobs, schedule and resources, all from the definitions."""

from __future__ import annotations

from datetime import UTC, datetime, time

import dagster as dg

from sequence_platform.orchestration.assets import build_assets
from sequence_platform.orchestration.keys import DAILY_GROUPS, daily_batch
from sequence_platform.orchestration.late_data import late_data_sensor
from sequence_platform.orchestration.maintenance import maintenance_jobs, maintenance_schedules
from sequence_platform.orchestration.orphans import orphaned_runs_sensor
from sequence_platform.orchestration.realtime import (
    RealtimeSettings,
    realtime_definitions,
    stream_assets,
)
from sequence_platform.orchestration.resources import PlatformResource, tables_only
from sequence_platform.settings import PlatformSettings
from sequence_platform.spec.catalog import Catalog
from sequence_platform.spec.loader import load_catalog

BATCH_JOB = "daily_batch"


def daily_partitions(settings: PlatformSettings) -> dg.DailyPartitionsDefinition:
    """One partition per UTC day from the start date up to the last complete day."""
    start = datetime.combine(settings.first_day, time(0), tzinfo=UTC)
    return dg.DailyPartitionsDefinition(start_date=start.strftime("%Y-%m-%d"), timezone="UTC")


def build_definitions(
    catalog: Catalog | None = None, settings: PlatformSettings | None = None
) -> dg.Definitions:
    settings = settings or PlatformSettings()
    catalog = catalog or load_catalog(settings.definitions)
    partitions = daily_partitions(settings)
    platform = PlatformResource.from_settings(settings)
    realtime, realtime_jobs, sensors = realtime_definitions(
        catalog,
        RealtimeSettings(
            max_batch_messages=settings.realtime_max_batch,
            minimum_interval_seconds=settings.realtime_interval_seconds,
            linger_seconds=settings.realtime_linger_seconds,
        ),
    )
    assets = [
        *build_assets(catalog, partitions, platform),
        *stream_assets(catalog, partitions, kafka=settings.kafka_bootstrap is not None),
        *realtime,
    ]
    batch_job = dg.define_asset_job(
        BATCH_JOB,
        selection=daily_batch(),
        description=f"Every computed asset for one day: {', '.join(DAILY_GROUPS)}.",
    )
    maintenance = maintenance_jobs(catalog)
    return dg.Definitions(
        assets=assets,
        jobs=[batch_job, *realtime_jobs, *maintenance],
        sensors=[
            *sensors,
            late_data_sensor(catalog, BATCH_JOB, settings.late_data_interval_seconds),
            orphaned_runs_sensor(),
        ],
        schedules=[
            *maintenance_schedules(maintenance),
            dg.build_schedule_from_partitioned_job(
                batch_job,
                hour_of_day=1,
                description="Builds yesterday's partitions at 01:00 UTC.",
            ),
        ],
        resources={"platform": platform, "io_manager": tables_only()},
    )
