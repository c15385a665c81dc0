"""Late data without a person: the late-data sensor finds the materialized days whose inputs
changed and rebuilds them — and only them — through Dagster runs."""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import Any

import dagster as dg
import polars as pl
import pytest

from sequence_platform import read_sequences
from sequence_platform.ingest.generate import GenerationConfig, generate_landing
from sequence_platform.ingest.landing import landing_dir, read_landing_days
from sequence_platform.ingest.stream import open_stream
from sequence_platform.orchestration import build_definitions
from sequence_platform.orchestration.definitions import BATCH_JOB
from sequence_platform.orchestration.late_data import REASON_TAG, SENSOR
from sequence_platform.orchestration.runner import RANGE_END_TAG, RANGE_START_TAG, materialize_days
from sequence_platform.runtime.snapshots import read_snapshot
from sequence_platform.settings import PlatformSettings
from sequence_platform.spec import load_catalog
from sequence_platform.spec.models import REQUIRED_EVENT_FIELDS
from sequence_platform.storage.delta import DT
from sequence_platform.storage.layout import TableLayout
from sequence_platform_tests.realtime_runs import produce_and_index

START = date(2026, 3, 1)
DAYS = 8
END = START + timedelta(days=DAYS - 1)
USER = 900_001
"""A user the generator never makes, so every event of theirs is one the test planted."""


@dataclass
class Cycle:
    """The runs one cycle of the sensor launched: (assets, first day, last day, reason)."""

    runs: list[tuple[frozenset[tuple[str, date]], date, date, str]]

    def touched(self) -> dict[str, set[date]]:
        """The days each asset materialized, over every run of the cycle."""
        days: dict[str, set[date]] = {}
        for written, _, _, _ in self.runs:
            for asset, day in written:
                days.setdefault(asset, set()).add(day)
        return days


@dataclass
class World:
    home: Path
    defs: dg.Definitions
    instance: dg.DagsterInstance
    layout: TableLayout
    settings: PlatformSettings

    def cycle(self) -> Cycle:
        """Evaluate the sensor and run what it requests, through Dagster, until it has
        nothing left to do."""
        sensor = self.defs.resolve_sensor_def(SENSOR)
        job = self.defs.resolve_job_def(BATCH_JOB)
        runs: list[tuple[frozenset[tuple[str, date]], date, date, str]] = []
        for _ in range(10):
            context = dg.build_sensor_context(
                instance=self.instance,
                resources={"platform": self.defs.resources["platform"]},
                definitions=self.defs,
            )
            # Dagster's own tick evaluation, which validates the requests as the daemon does.
            tick = sensor.evaluate_tick(context)
            requests = tick.run_requests
            for event in tick.asset_events:
                self.instance.report_runless_asset_event(event)
            if not requests:
                return Cycle(runs)
            for request in requests:
                result = job.execute_in_process(
                    instance=self.instance,
                    asset_selection=request.asset_selection,
                    tags=request.tags,
                )
                assert result.success
                # What the run really wrote: its materializations, day by day.
                written = {
                    (event.asset_key.to_user_string(), date.fromisoformat(event.partition))
                    for event in result.get_asset_materialization_events()
                    if event.asset_key is not None and event.partition is not None
                }
                runs.append(
                    (
                        frozenset(written),
                        date.fromisoformat(request.tags[RANGE_START_TAG]),
                        date.fromisoformat(request.tags[RANGE_END_TAG]),
                        request.tags[REASON_TAG],
                    )
                )
        raise AssertionError(f"the sensor kept requesting runs: {runs}")

    def land(self, day: date, name: str, records: list[dict[str, Any]]) -> None:
        folder = landing_dir(self.home, "engagement", day)
        (folder / name).write_text("".join(json.dumps(r) + "\n" for r in records))

    def deliver(self, records: list[dict[str, Any]]) -> None:
        stream = open_stream(None, self.home)
        try:
            produce_and_index(self.defs, stream, "engagement", records, self.instance)
        finally:
            stream.close()

    def saved_ids(self, day: date) -> list[str]:
        """The planted user's event ids in the snapshot at the end of ``day``."""
        catalog = load_catalog()
        snapshot = read_snapshot(self.layout, catalog, catalog.sequences["recent_saves"], day)
        mine = snapshot.filter(pl.col("user_id") == USER)
        return mine["event_id"].explode().to_list() if mine.height else []


def save(event_id: str, at: datetime) -> dict[str, Any]:
    return {
        "event_id": event_id,
        "user_id": USER,
        "item_id": 7,
        "event_type": "save",
        "event_time": at.isoformat().replace("+00:00", "Z"),
        "surface": "home",
        "dwell_ms": 1200,
    }


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> Iterator[World]:
    home = tmp_path_factory.mktemp("home")
    config = GenerationConfig(start=START, days=DAYS, users=120, items=200, events_per_day=900)
    generate_landing(config, home)
    settings = PlatformSettings(home=home, start_date=START, realtime_linger_seconds=0)
    defs = build_definitions(settings=settings)
    with dg.instance_for_test() as instance:
        runs = materialize_days(defs, instance, START, END)
        assert all(run.success for run in runs), runs
        yield World(home, defs, instance, TableLayout(settings.tables_root), settings)


def test_nothing_is_rebuilt_when_nothing_changed(world: World) -> None:
    assert world.cycle().runs == []
    # The landing folders are recorded as materializations of the landing assets, one per day.
    landing = world.instance.get_materialized_partitions(dg.AssetKey(["landing", "engagement"]))
    assert len(landing) == DAYS


def test_a_late_landing_file_reaches_every_snapshot_holding_its_day(world: World) -> None:
    late_day = END - timedelta(days=3)
    world.land(late_day, "late-part.jsonl", [save("late-landing-1", _at(late_day, 20))])
    cycle = world.cycle()

    touched = cycle.touched()
    # Its day's events, signals and sequences, in one run ...
    first = cycle.runs[0]
    assert (first[1], first[2]) == (late_day, late_day)
    assert {("events/engagement", late_day), ("signals/engagement_enriched", late_day)} <= first[0]
    assert "landing files of dt=" in first[3]
    for asset in ("events/engagement", "signals/engagement_enriched"):
        assert touched[asset] == {late_day}, (asset, touched)
    for asset in ("sequences/recent_saves", "sequences/recent_engagement"):
        assert touched[asset] == {late_day}, (asset, touched)
    # ... then every training day whose sequences' window holds it, and nothing else.
    assert touched["training/saves_training"] == {
        late_day + timedelta(days=n) for n in range((END - late_day).days + 1)
    }
    assert touched.get("dead_letters/engagement", {late_day}) == {late_day}
    assert not set(touched) - {
        "dead_letters/engagement",
        "events/engagement",
        "signals/engagement_enriched",
        "sequences/recent_saves",
        "sequences/recent_engagement",
        "training/saves_training",
    }
    for day in range((END - late_day).days + 1):
        assert "late-landing-1" in world.saved_ids(late_day + timedelta(days=day))
    assert "late-landing-1" not in world.saved_ids(late_day - timedelta(days=1))
    as_of = datetime.combine(END + timedelta(days=1), datetime.min.time(), UTC)
    offline = read_sequences("recent_saves", as_of=as_of, users=[USER], layout=world.layout)
    assert "late-landing-1" in offline["event_id"].explode().to_list()
    assert world.cycle().runs == []


def test_late_stream_events_are_rebuilt_into_their_day(world: World) -> None:
    late_day = END - timedelta(days=5)
    world.deliver([save("late-stream-1", _at(late_day, 9))])
    # The micro-batch run recorded what it wrote, where the UI shows it: the archive's day and
    # the real-time table, whose automation is the stream sensor.
    archive = dg.AssetKey(["stream_archive", "engagement"])
    realtime = dg.AssetKey(["realtime", "engagement_enriched"])
    assert late_day.isoformat() in world.instance.get_materialized_partitions(archive)
    latest = world.instance.get_latest_materialization_event(realtime)
    assert latest is not None and latest.asset_materialization is not None
    assert latest.asset_materialization.metadata["rows_appended"].value == 1
    graph = world.defs.resolve_asset_graph()
    assert archive in graph.get(dg.AssetKey(["events", "engagement"])).parent_keys
    assert dg.AssetKey(["stream", "engagement"]) in graph.get(archive).parent_keys
    sensor = world.defs.resolve_sensor_def("engagement_stream")
    job = world.defs.resolve_job_def(sensor.job_name)
    assert job.asset_layer.selected_asset_keys == {realtime}

    cycle = world.cycle()
    touched = cycle.touched()
    assert touched["events/engagement"] == {late_day}
    assert "stream_archive/engagement" in cycle.runs[0][3]
    events = pl.read_delta(world.layout.events("engagement"))
    assert events.filter(pl.col("event_id") == "late-stream-1")[DT].to_list() == [late_day]
    assert "late-stream-1" in world.saved_ids(late_day)
    # The day's figures say where its rows came from.
    built = world.instance.fetch_materializations(
        dg.AssetRecordsFilter(
            asset_key=dg.AssetKey(["events", "engagement"]),
            asset_partitions=[late_day.isoformat()],
        ),
        limit=1,
    ).records[0]
    assert built.asset_materialization is not None
    figures = {k: v.value for k, v in built.asset_materialization.metadata.items()}
    assert figures["from_stream_archive"] == 1
    assert figures["rows"] == events.filter(pl.col(DT) == late_day).height
    landing_rows = figures["rows"] - figures["from_stream_archive"]
    assert figures["duplicates_dropped"] == landing_rows_read(world, late_day) - landing_rows


def test_a_landing_copy_on_another_day_displaces_the_stream_copy(world: World) -> None:
    stream_day, landing_day = END - timedelta(days=1), END - timedelta(days=2)
    world.deliver([save("moved-1", _at(stream_day, 1))])
    world.cycle()
    events = pl.read_delta(world.layout.events("engagement"))
    assert events.filter(pl.col("event_id") == "moved-1")[DT].to_list() == [stream_day]

    # The warehouse export corrects the event's time to the day before.
    corrected = {**save("moved-1", _at(landing_day, 23)), "dwell_ms": 4321}
    world.land(landing_day, "correction.jsonl", [corrected])
    cycle = world.cycle()
    touched = cycle.touched()
    assert touched["events/engagement"] == {landing_day, stream_day}
    assert any("stream copy of an event landed on" in run[3] for run in cycle.runs)
    events = pl.read_delta(world.layout.events("engagement"))
    kept = events.filter(pl.col("event_id") == "moved-1")
    assert kept[DT].to_list() == [landing_day]
    assert kept["dwell_ms"].to_list() == [4321]
    assert "moved-1" in world.saved_ids(landing_day)
    signals = pl.read_delta(world.layout.signals("engagement_enriched"))
    assert signals.filter(pl.col("event_id") == "moved-1")[DT].to_list() == [landing_day]


def landing_rows_read(world: World, day: date) -> int:
    """Valid landing rows of the day, duplicates included."""
    catalog = load_catalog()
    decoded = read_landing_days(
        world.home,
        "engagement",
        [day],
        catalog.event_schema("engagement"),
        required=tuple(REQUIRED_EVENT_FIELDS),
        time_field="event_time",
    )
    return decoded.valid.height


def _at(day: date, hour: int) -> datetime:
    return datetime.combine(day, datetime.min.time(), UTC) + timedelta(hours=hour)
