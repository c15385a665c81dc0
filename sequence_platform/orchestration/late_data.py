"""The late-data sensor: rebuilds, through Dagster runs, every materialized day whose inputs
changed, and nothing else (see ``runtime.late`` for what makes a day stale).

Each tick it also records the landing folders as materializations of the ``landing/<name>``
assets, one per day whose files changed, so the UI shows which days have landed and when.
A rebuild run carries its reasons in the ``sequence_platform/reason`` tag.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable
from datetime import date
from pathlib import Path

import dagster as dg

from sequence_platform.ingest.landing import landing_files
from sequence_platform.orchestration.keys import key_of, landing_key
from sequence_platform.orchestration.realtime import ACTIVE, FAILED
from sequence_platform.orchestration.resources import PlatformResource
from sequence_platform.orchestration.runner import RANGE_END_TAG, RANGE_START_TAG
from sequence_platform.runtime.late import (
    LANDING_FINGERPRINT,
    Built,
    Fingerprints,
    Rebuild,
    asset_reads,
    landing_fingerprints,
    landing_folders,
    plan_rebuilds,
    stale_days,
)
from sequence_platform.spec.catalog import Catalog

SENSOR = "late_data"
REASON_TAG = "sequence_platform/reason"
REBUILD_TAG = "sequence_platform/rebuild"
MAX_ATTEMPTS = 3
"""A rebuild that failed this often is not requested again until its inputs change."""


def latest_materializations(instance: dg.DagsterInstance, key: dg.AssetKey) -> dict[date, Built]:
    """The latest materialization of each day of a daily-partitioned asset: two indexed
    queries, whatever the history's length."""
    latest = instance.event_log_storage.get_latest_storage_id_by_partition(
        key, dg.DagsterEventType.ASSET_MATERIALIZATION
    )
    found: dict[date, Built] = {}
    ids = sorted(latest.values())
    for first in range(0, len(ids), 500):
        page = instance.fetch_materializations(
            dg.AssetRecordsFilter(asset_key=key, storage_ids=ids[first : first + 500]), limit=500
        )
        for record in page.records:
            event = record.asset_materialization
            if event is None or event.partition is None:
                continue
            metadata = {name: value.value for name, value in event.metadata.items()}
            found[date.fromisoformat(event.partition)] = Built(record.timestamp, metadata)
    return found


def _busy(instance: dg.DagsterInstance, assets: set[str]) -> set[str]:
    """Assets that a queued or running run writes (a run without a selection: all ``assets``)."""
    busy: set[str] = set()
    for run in instance.get_runs(filters=dg.RunsFilter(statuses=ACTIVE), limit=200):
        selection = run.asset_selection
        if selection is None:
            return set(assets)
        busy |= {key.to_user_string() for key in selection}
    return busy


def _attempts(instance: dg.DagsterInstance, rebuild_key: str) -> int:
    failed = instance.get_runs(
        filters=dg.RunsFilter(tags={REBUILD_TAG: rebuild_key}, statuses=FAILED), limit=50
    )
    return len(failed)


def _landing_events(
    home: Path, landing: Fingerprints, instance: dg.DagsterInstance
) -> list[dg.AssetMaterialization]:
    """A materialization of ``landing/<name>`` for each day whose files changed since the last
    one recorded (or that was never recorded)."""
    events: list[dg.AssetMaterialization] = []
    for name, fingerprints in landing.items():
        key = landing_key(name)
        recorded = latest_materializations(instance, key)
        for day, fingerprint in sorted(fingerprints.items()):
            before = recorded.get(day)
            if before is not None and before.metadata.get(LANDING_FINGERPRINT) == fingerprint:
                continue
            files = landing_files(home, name, day)
            events.append(
                dg.AssetMaterialization(
                    asset_key=key,
                    partition=day.isoformat(),
                    description="first seen" if before is None else "files changed",
                    metadata={
                        "files": len(files),
                        "bytes": dg.MetadataValue.int(sum(p.stat().st_size for p in files)),
                        LANDING_FINGERPRINT: fingerprint,
                    },
                )
            )
    return events


def _request(rebuild: Rebuild, attempts: int, rebuild_key: str) -> dg.RunRequest:
    reason = "; ".join(rebuild.reasons)
    return dg.RunRequest(
        run_key=f"{rebuild_key}#{attempts}",
        asset_selection=[key_of(asset) for asset in rebuild.assets],
        tags={
            RANGE_START_TAG: rebuild.first.isoformat(),
            RANGE_END_TAG: rebuild.last.isoformat(),
            REBUILD_TAG: rebuild_key,
            # Tag values are limited in length; the sensor's log has them all.
            REASON_TAG: reason if len(reason) <= 250 else reason[:247] + "...",
        },
    )


def _rebuild_key(rebuild: Rebuild, built: dict[str, dict[date, Built]]) -> str:
    """Names a rebuild of the same days from the same inputs, whatever tick requests it."""
    stamps: Iterable[str] = (
        f"{asset}:{day}:{build.at}"
        for asset in rebuild.assets
        for day, build in sorted(built.get(asset, {}).items())
        if rebuild.first <= day <= rebuild.last
    )
    digest = hashlib.sha256("|".join([*stamps, *rebuild.reasons]).encode()).hexdigest()[:12]
    return f"{'+'.join(rebuild.assets)}@{rebuild.first}..{rebuild.last}:{digest}"


def late_data_sensor(catalog: Catalog, job_name: str, interval_seconds: int) -> dg.SensorDefinition:
    @dg.sensor(
        name=SENSOR,
        job_name=job_name,
        minimum_interval_seconds=interval_seconds,
        default_status=dg.DefaultSensorStatus.RUNNING,
        description=(
            "Rebuilds every materialized day whose inputs changed since it was built — a late "
            "or corrected landing file, late stream events archived by a micro-batch, a landing "
            "copy of a stream event on another day, an upstream day rebuilt — and every day "
            "that reads it, no more. The reason is on each run (tag sequence_platform/reason)."
        ),
    )
    def late_data(
        context: dg.SensorEvaluationContext, platform: PlatformResource
    ) -> dg.SensorResult | dg.SkipReason:
        instance = context.instance
        home = Path(platform.home)
        # One look at the landing folders per tick, for what is recorded and what is stale.
        fingerprints = landing_fingerprints(home, landing_folders(catalog))
        landing = _landing_events(home, fingerprints, instance)
        built = {
            asset: latest_materializations(instance, key_of(asset))
            for asset in asset_reads(catalog)
        }
        batch = platform.batch_context(catalog)
        stale = stale_days(batch, built, fingerprints)
        busy = _busy(instance, set(built))
        requests: list[dg.RunRequest] = []
        notes: list[str] = []
        for rebuild in plan_rebuilds(catalog, stale, built, busy):
            key = _rebuild_key(rebuild, built)
            attempts = _attempts(instance, key)
            days = f"{rebuild.first}..{rebuild.last}"
            if attempts >= MAX_ATTEMPTS:
                notes.append(f"{key}: failed {attempts} times, not retried until inputs change")
                continue
            requests.append(_request(rebuild, attempts, key))
            context.log.info(
                f"rebuilding {', '.join(rebuild.assets)} for {days}: {'; '.join(rebuild.reasons)}"
            )
        waiting = sorted(asset for asset, days in stale.items() if days)
        if not requests:
            summary = "; ".join(notes) or (
                f"waiting: {', '.join(waiting)} (a run is writing them or what they read)"
                if waiting
                else "every materialized day matches its inputs"
            )
            if landing:
                return dg.SensorResult(asset_events=landing, skip_reason=summary)
            return dg.SkipReason(summary)
        return dg.SensorResult(run_requests=requests, asset_events=landing)

    return late_data
