"""Train/serve skew as Dagster asset checks, one result per day (severity WARN).

- ``realtime_matches_batch`` on each ``signals/<signal>``: the day's real-time rows against the
  batch's, field by field, with the events one path has and the other lacks.
- ``served_matches_snapshot`` on each ``sequences/<sequence>``: what serving answered at the
  day's cutoff (previous snapshot plus real-time tail) against the new snapshot, for a fixed
  sample of users.

The real-time side is read as it stood when the run started (``run_started_at``), so pruning
done by the run itself hides nothing. The figures and examples are the checks' metadata.
"""

from __future__ import annotations

from datetime import UTC, date, datetime

import dagster as dg

from sequence_platform.engine.skew import JsonValue, ServedSkew, SignalSkew
from sequence_platform.orchestration.checks import partitioned_specs
from sequence_platform.runtime.skew import served_skew, signal_skew
from sequence_platform.spec.catalog import Catalog
from sequence_platform.storage.layout import TableLayout

REALTIME_MATCHES_BATCH = "realtime_matches_batch"
SERVED_MATCHES_SNAPSHOT = "served_matches_snapshot"

DESCRIPTIONS = {
    REALTIME_MATCHES_BATCH: (
        "The day's real-time rows equal the batch's, event by event and field by field; "
        "every streamed event reached real time and real time holds nothing the batch "
        "lacks (a warning: late feature rows and corrected landing copies show here)."
    ),
    SERVED_MATCHES_SNAPSHOT: (
        "For a fixed sample of users, what serving answered at the day's cutoff (previous "
        "snapshot plus real-time tail) equals the new snapshot: same events, same order, "
        "same values (a warning: training would see other sequences than serving did)."
    ),
}


SKEW_CHECKS = {"signals": REALTIME_MATCHES_BATCH, "sequences": SERVED_MATCHES_SNAPSHOT}
"""The skew check of each asset family that has one."""


def skew_check_names(key: dg.AssetKey) -> list[str]:
    """The skew checks of an asset: one for a signal, one for a sequence, none otherwise."""
    family = key.path[0]
    return [SKEW_CHECKS[family]] if family in SKEW_CHECKS else []


def streamed_source(catalog: Catalog, key: dg.AssetKey) -> str | None:
    """The source whose stream the asset's skew check compares with (None without one)."""
    family, name = key.path[0], key.path[-1]
    if family == "signals":
        return catalog.signals[name].source
    if family == "sequences":
        return catalog.signals[catalog.sequences[name].signal].source
    return None


def skew_check_specs(
    key: dg.AssetKey, partitions: dg.PartitionsDefinition | None = None
) -> list[dg.AssetCheckSpec]:
    """The asset's skew check specs, evaluated per day when ``partitions`` is given."""
    names = skew_check_names(key)
    return partitioned_specs(key, {name: DESCRIPTIONS[name] for name in names}, partitions)


def skew_check_results(
    layout: TableLayout,
    catalog: Catalog,
    key: dg.AssetKey,
    day: date,
    *,
    run_started: datetime | None,
    streamed: bool = True,
) -> list[dg.AssetCheckResult]:
    """The asset's skew check results for ``day`` (none for an asset without skew checks).

    Call it once the asset has written the day; ``run_started`` (see ``run_started_at``) keeps
    the real-time rows pruned since then in the comparison. A day the stream delivered
    nothing to (``streamed`` false) has nothing to compare: it passes without reading."""
    family, name = key.path[0], key.path[-1]
    found: SignalSkew | ServedSkew
    names = skew_check_names(key)
    if names and not streamed:
        return [
            dg.AssetCheckResult(
                asset_key=key,
                check_name=names[0],
                passed=True,
                severity=dg.AssetCheckSeverity.WARN,
                metadata={"day": day.isoformat(), "streamed_events": 0},
                description="The stream delivered no event of this day: nothing to compare.",
            )
        ]
    if family == "signals":
        found = signal_skew(layout, catalog, name, day, before=run_started)
    elif family == "sequences":
        found = served_skew(layout, catalog, name, day, before=run_started)
    else:
        return []
    check = SKEW_CHECKS[family]
    return [
        dg.AssetCheckResult(
            asset_key=key,
            check_name=check,
            passed=found.passed,
            severity=dg.AssetCheckSeverity.WARN,
            metadata={"day": day.isoformat(), **_metadata(found.metadata())},
        )
    ]


def run_started_at(instance: dg.DagsterInstance, run_id: str) -> datetime | None:
    """When the run started (None before it has): ``context.instance`` and
    ``context.run_id`` inside an asset."""
    record = instance.get_run_record_by_id(run_id)
    started = record.start_time if record is not None else None
    return None if started is None else datetime.fromtimestamp(started, UTC)


def _metadata(figures: dict[str, JsonValue]) -> dict[str, dg.RawMetadataValue]:
    return {
        name: dg.MetadataValue.json(value) if isinstance(value, dict | list) else value
        for name, value in figures.items()
    }
