"""Train/serve skew checks on real tables: generated landing data, days materialized through
Dagster, stream events delivered through the sensor's micro-batch runs (the local stream), and
the checks read as the asset checks would, as of each run's start.

Clean data shows no skew on any day. Then a feature row lands late: events of an item were
enriched by the real-time path before the row existed, the batch re-runs the day after it
landed, and both checks report exactly those events — the sequence check only for sequences
that carry the enriched field.
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import date, datetime, timedelta
from pathlib import Path
from typing import Any

import dagster as dg
import polars as pl
import pytest
from deltalake import DeltaTable

from sequence_platform.ingest.generate import GenerationConfig, generate_landing
from sequence_platform.ingest.landing import landing_dir, read_landing_days
from sequence_platform.ingest.stream import open_stream
from sequence_platform.orchestration import build_definitions
from sequence_platform.orchestration.runner import materialize_days
from sequence_platform.orchestration.skew import (
    REALTIME_MATCHES_BATCH,
    SERVED_MATCHES_SNAPSHOT,
    run_started_at,
    skew_check_results,
    skew_check_specs,
)
from sequence_platform.settings import PlatformSettings
from sequence_platform.spec import Catalog, load_catalog
from sequence_platform.spec.models import REQUIRED_EVENT_FIELDS
from sequence_platform.storage.delta import DT
from sequence_platform.storage.layout import TableLayout
from sequence_platform_tests.realtime_runs import produce_and_index

REPO = Path(__file__).resolve().parents[2]
START = date(2026, 3, 1)
STREAMED = date(2026, 3, 4)  # its events come through the stream as well as the landing zone
SIGNAL = dg.AssetKey(["signals", "engagement_enriched"])
SEQUENCES = ["recent_saves", "recent_engagement", "no_category"]
NO_CATEGORY = {
    "kind": "sequence",
    "name": "no_category",
    "signal": "engagement_enriched",
    "filter": "event_type IN ('save', 'click')",
    "fields": ["item_id", "event_type"],
    "max_length": 20,
    "lookback_days": 3,
}
LATE_ITEM = 900_001  # an item of its own, so no generated event shares it
LATE_ROW = {
    "item_id": LATE_ITEM,
    "updated_at": "2026-03-04T20:00:00Z",
    "category": "late-arrival",
    "embedding": [0.25] * 32,
}
EARLY_ROW = {**LATE_ROW, "updated_at": "2026-03-01T00:00:00Z", "category": "early"}
EARLY_ROW["embedding"] = [0.5] * 32


def event(event_id: str, user: int, kind: str, when: str) -> dict[str, Any]:
    return {
        "event_id": event_id,
        "user_id": user,
        "item_id": LATE_ITEM,
        "event_type": kind,
        "event_time": when,
        "surface": "search",
        "dwell_ms": 3000,
    }


# Late stream events of 03-04, after the day was first materialized.
LATE_EVENTS = [
    event("late-1", 1, "save", "2026-03-04T23:50:00Z"),  # enriched before the late row: skew
    event("late-2", 1, "click", "2026-03-04T23:51:00Z"),  # skew
    event("late-3", 2, "save", "2026-03-04T23:52:00Z"),  # skew
    event("late-4", 2, "impression", "2026-03-04T23:53:00Z"),  # not in the signal
    event("late-5", 2, "save", "2026-03-04T19:00:00Z"),  # before the late row's time: no skew
]
SKEWED = ["late-1", "late-2", "late-3"]


@dataclass
class World:
    home: Path
    catalog: Catalog
    layout: TableLayout
    defs: dg.Definitions
    instance: dg.DagsterInstance
    warned: dict[dg.AssetKey, list[str]] = field(default_factory=dict)
    """The checks of WARN severity that did not pass in the last run, per asset."""

    def run(self, start: date, end: date, keys: list[dg.AssetKey] | None = None) -> datetime:
        """Materialize the days in one run; returns when the run started."""
        runs = materialize_days(self.defs, self.instance, start, end, keys=keys)
        assert all(run.success and not run.failed_checks for run in runs), runs
        self.warned = {run.key: run.warnings for run in runs}
        started = run_started_at(self.instance, runs[0].run_id)
        assert started is not None
        return started

    def checks(self, key: dg.AssetKey, day: date, started: datetime | None) -> dg.AssetCheckResult:
        (found,) = skew_check_results(self.layout, self.catalog, key, day, run_started=started)
        return found

    def stream(self, records: list[dict[str, Any]]) -> None:
        stream = open_stream(None, self.home)
        try:
            produce_and_index(self.defs, stream, "engagement", records, self.instance)
        finally:
            stream.close()


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> Iterator[World]:
    tmp = tmp_path_factory.mktemp("skew")
    definitions = tmp / "definitions"
    shutil.copytree(REPO / "definitions", definitions, ignore=shutil.ignore_patterns("__pycache__"))
    (definitions / "no_category.json").write_text(json.dumps(NO_CATEGORY))
    home = tmp / "home"
    config = GenerationConfig(start=START, days=4, users=40, items=60, events_per_day=400)
    generate_landing(config, home)
    early = landing_dir(home, "items", START) / "part-late-item.jsonl"
    early.write_text(json.dumps(EARLY_ROW) + "\n")
    settings = PlatformSettings(
        home=home, start_date=START, definitions=definitions, realtime_linger_seconds=0
    )
    catalog = load_catalog(definitions)
    with dg.DagsterInstance.ephemeral() as instance:
        yield World(
            home,
            catalog,
            TableLayout(settings.tables_root),
            build_definitions(catalog=catalog, settings=settings),
            instance,
        )


def figures(result: dg.AssetCheckResult) -> dict[str, Any]:
    """A check's metadata as plain values."""
    return {name: value.value for name, value in result.metadata.items()}


def sequence_key(name: str) -> dg.AssetKey:
    return dg.AssetKey(["sequences", name])


def landing_events(world: World, day: date) -> list[dict[str, Any]]:
    schema = world.catalog.event_schema("engagement")
    valid = read_landing_days(
        world.home,
        "engagement",
        [day],
        schema,
        required=tuple(REQUIRED_EVENT_FIELDS),
        time_field="event_time",
    ).valid
    rows = valid.select(schema.names()).with_columns(
        pl.col("event_time").dt.strftime("%Y-%m-%dT%H:%M:%S%.3fZ")
    )
    return [{k: v for k, v in row.items() if v is not None} for row in rows.iter_rows(named=True)]


def test_skew_checks_find_nothing_on_clean_data_and_a_late_feature_row(world: World) -> None:
    # Features first: the stream enriches with the versions the platform holds when it runs.
    world.run(START, STREAMED, keys=[dg.AssetKey(["features", "items"])])
    first = world.run(START, STREAMED - timedelta(days=1))
    world.stream(landing_events(world, STREAMED))
    assert pl.read_delta(world.layout.realtime("engagement_enriched")).height > 0
    second = world.run(STREAMED, STREAMED)
    # The run pruned the real-time rows of the day; the checks read them as the run found them.
    assert pl.read_delta(world.layout.realtime("engagement_enriched")).height == 0

    # -- clean: the days without a stream, and the day that came through both paths ----------
    for day in (START, STREAMED - timedelta(days=1)):
        signal = world.checks(SIGNAL, day, first)
        assert signal.passed, signal.metadata
        assert figures(signal)["realtime_events"] == 0
        for name in SEQUENCES:
            served = world.checks(sequence_key(name), day, first)
            assert served.passed, (name, served.metadata)
            # Nothing was streamed: every event of the day is landing-only, none is skew.
            assert figures(served)["events_not_streamed"] > 0
    signal = world.checks(SIGNAL, STREAMED, second)
    assert signal.check_name == REALTIME_MATCHES_BATCH
    assert signal.severity == dg.AssetCheckSeverity.WARN
    assert signal.passed, signal.metadata
    streamed = figures(signal)["streamed_batch_events"]
    assert streamed > 50
    assert figures(signal)["compared_events"] == streamed
    assert figures(signal)["realtime_events"] == streamed
    assert figures(signal)["missing_in_realtime"] == 0
    for name in SEQUENCES:
        served = world.checks(sequence_key(name), STREAMED, second)
        assert served.check_name == SERVED_MATCHES_SNAPSHOT
        assert served.passed, (name, served.metadata)
        compared = figures(served)["users_compared"]
        assert 0 < compared == figures(served)["candidate_users"]
        assert figures(served)["common_events"] > 100
        assert figures(served)["events_not_streamed"] == 0

    # Read as the tables are now, the pruned rows would look missing: why `before` exists.
    now = world.checks(SIGNAL, STREAMED, None)
    assert not now.passed
    assert figures(now)["missing_in_realtime"] == streamed

    # -- a feature row lands late -----------------------------------------------------------
    world.stream(LATE_EVENTS)
    late = landing_dir(world.home, "items", STREAMED) / "part-late.jsonl"
    late.write_text(json.dumps(LATE_ROW) + "\n")
    third = world.run(STREAMED, STREAMED)
    # The run's own checks found it, on the day's partition.
    assert REALTIME_MATCHES_BATCH in world.warned[SIGNAL]
    assert SERVED_MATCHES_SNAPSHOT in world.warned[sequence_key("recent_saves")]
    assert SERVED_MATCHES_SNAPSHOT not in world.warned[sequence_key("no_category")]
    recorded = world.instance.event_log_storage.get_latest_asset_check_execution_by_key(
        [dg.AssetCheckKey(SIGNAL, REALTIME_MATCHES_BATCH)]
    )
    (execution,) = recorded.values()
    assert execution.event is not None and execution.event.dagster_event is not None
    evaluation = execution.event.dagster_event.event_specific_data
    assert isinstance(evaluation, dg.AssetCheckEvaluation)
    assert (evaluation.partition, evaluation.passed) == (STREAMED.isoformat(), False)

    signal = world.checks(SIGNAL, STREAMED, third)
    assert not signal.passed
    found = figures(signal)
    mismatched = found["mismatched_events"]
    assert {k: v for k, v in mismatched.items() if v} == {"category": 3, "embedding": 3}
    assert found["compared_events"] == 4  # late-1, -2, -3, -5 (late-4 is an impression)
    # The earlier streamed events lost their real-time rows to the first run's pruning.
    assert (found["missing_in_realtime"], found["pruned_before_check"]) == (0, streamed)
    assert found["extra_in_realtime"] == 0
    assert found["mismatch_rate"]["category"] == 0.75
    examples = found["examples"]["mismatch:category"]
    assert examples == [
        {"event_id": e, "batch": "late-arrival", "realtime": "early"} for e in SKEWED
    ]
    assert found["examples"]["mismatch:embedding"][0]["batch"] == [0.25] * 32

    for name, fields in (("recent_saves", 1), ("recent_engagement", 2)):
        served = world.checks(sequence_key(name), STREAMED, third)
        assert not served.passed, name
        found = figures(served)
        assert found["users_differing"] == 0  # the same events, in the same order
        assert found["edit_distance_max"] == 0
        assert found["users_with_field_mismatch"] == 2  # users 1 and 2
        rates = found["field_mismatch_rate"]
        assert sum(1 for rate in rates.values() if rate) == fields, rates
        example = found["examples"][0]
        assert example["user_id"] == 1
        assert example["field_differences"]["category"] == [
            {"event_id": e, "served": "early", "snapshot": "late-arrival"}
            for e in ["late-2", "late-1"]
        ]
    # A sequence without the enriched field serves what training sees.
    served = world.checks(sequence_key("no_category"), STREAMED, third)
    assert served.passed, served.metadata

    # Once the old versions are vacuumed (forgetting a user does so at once), the check reads
    # the tables as they are and takes what the batch holds as possibly pruned, not missing.
    DeltaTable(world.layout.realtime("engagement_enriched")).vacuum(
        retention_hours=0, enforce_retention_duration=False, dry_run=False
    )
    again = figures(world.checks(SIGNAL, STREAMED, second))
    assert (again["missing_in_realtime"], again["realtime_events"]) == (0, 0)
    assert again["pruned_before_check"] == streamed + 4  # the late events are held now

    batch = pl.read_delta(world.layout.signals("engagement_enriched")).filter(
        pl.col(DT) == STREAMED
    )
    assert (
        batch.filter(pl.col("event_id").is_in(SKEWED))["category"].to_list() == ["late-arrival"] * 3
    )


def test_check_specs_name_the_asset() -> None:
    (signal,) = skew_check_specs(SIGNAL)
    (served,) = skew_check_specs(sequence_key("recent_saves"))
    assert (signal.name, signal.asset_key) == (REALTIME_MATCHES_BATCH, SIGNAL)
    assert (served.name, served.asset_key) == (
        SERVED_MATCHES_SNAPSHOT,
        sequence_key("recent_saves"),
    )
    assert skew_check_specs(dg.AssetKey(["events", "engagement"])) == []
