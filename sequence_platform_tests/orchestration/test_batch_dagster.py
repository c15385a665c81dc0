"""The batch runtime through Dagster's own execution, on real Delta tables on disk."""

from __future__ import annotations

import json
import shutil
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from pathlib import Path

import dagster as dg
import polars as pl
import pytest
from deltalake import DeltaTable

from sequence_platform.engine.sequence import assemble_snapshot, sequence_rows, snapshot_cutoff
from sequence_platform.ingest.generate import GenerationConfig, GenerationSummary, generate_landing
from sequence_platform.ingest.landing import landing_dir
from sequence_platform.orchestration import build_definitions
from sequence_platform.orchestration.checks import CONTRACT, ORDERED, UNIQUE
from sequence_platform.orchestration.runner import computed_asset_keys, materialize_days
from sequence_platform.runtime.snapshots import read_snapshot
from sequence_platform.settings import PlatformSettings
from sequence_platform.spec import load_catalog
from sequence_platform.storage.delta import DT
from sequence_platform.storage.layout import TableLayout

START = date(2026, 3, 1)
END = date(2026, 3, 4)


@dataclass
class Platform:
    home: Path
    settings: PlatformSettings
    defs: dg.Definitions
    instance: dg.DagsterInstance
    layout: TableLayout
    summary: GenerationSummary

    def table(self, uri: str) -> pl.DataFrame:
        return pl.read_delta(uri)

    def run(self, start: date, end: date, keys: list[dg.AssetKey] | None = None) -> None:
        runs = materialize_days(self.defs, self.instance, start, end, keys=keys)
        assert all(run.success for run in runs)
        assert [run.failed_checks for run in runs] == [[] for _ in runs]


@pytest.fixture(scope="module")
def platform(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Platform]:
    home = tmp_path_factory.mktemp("home")
    config = GenerationConfig(start=START, days=4, users=150, items=300, events_per_day=1_500)
    summary = generate_landing(config, home)
    settings = PlatformSettings(home=home, start_date=START)
    with dg.DagsterInstance.ephemeral() as instance:
        state = Platform(
            home,
            settings,
            build_definitions(settings=settings),
            instance,
            TableLayout(settings.tables_root),
            summary,
        )
        state.run(START, END)
        yield state


def test_every_generated_record_is_kept_or_dead_lettered(platform: Platform) -> None:
    events = platform.table(platform.layout.events("engagement"))
    dead = platform.table(platform.layout.dead_letters("engagement"))
    # The generator knows exactly how many distinct good events and bad records it planted.
    assert events.height == platform.summary.events
    assert events["event_id"].n_unique() == events.height
    assert dead.height == platform.summary.malformed
    assert dead["reason"].null_count() == 0
    reasons = " | ".join(dead["reason"].unique().sort().to_list())
    assert "missing required field" in reasons
    assert "not valid JSON" in reasons


def test_range_run_records_every_partition(platform: Platform) -> None:
    for key in computed_asset_keys(platform.defs):
        materialized = platform.instance.get_materialized_partitions(key)
        assert materialized == {"2026-03-01", "2026-03-02", "2026-03-03", "2026-03-04"}, key
    # A range backfill is one run for every daily asset.
    assert all(
        isinstance(spec.backfill_policy, dg.BackfillPolicy)
        and spec.backfill_policy.max_partitions_per_run is None
        for spec in platform.defs.assets or []
        if isinstance(spec, dg.AssetsDefinition) and spec.partitions_def is not None
    )


def test_each_day_of_a_range_run_records_its_own_figures_and_checks(platform: Platform) -> None:
    """A range run is one run, but the UI shows each day as it is: that day's rows, bytes and
    files in its materialization, and each check's result on the day it looked at."""
    catalog = load_catalog()
    spec = catalog.sequences["recent_saves"]
    uri = platform.layout.sequence(spec)
    table = DeltaTable(uri)
    files = pl.DataFrame(table.get_add_actions(flatten=True))
    rows = pl.read_delta(uri).group_by(DT).len()
    key = dg.AssetKey(["sequences", "recent_saves"])
    records = platform.instance.fetch_materializations(
        dg.AssetRecordsFilter(asset_key=key), limit=100
    ).records
    latest: dict[str, dg.AssetMaterialization] = {}
    for record in records:  # newest first
        materialization = record.asset_materialization
        assert materialization is not None and materialization.partition is not None
        latest.setdefault(materialization.partition, materialization)
    assert sorted(latest) == ["2026-03-01", "2026-03-02", "2026-03-03", "2026-03-04"]
    figures = set()
    for partition, materialization in latest.items():
        day = date.fromisoformat(partition)
        mine = files.filter(pl.col(f"partition.{DT}") == day)
        metadata = {name: value.value for name, value in materialization.metadata.items()}
        assert metadata["rows"] == rows.filter(pl.col(DT) == day)["len"].item()
        assert metadata["bytes"] == mine["size_bytes"].sum()
        assert metadata["files"] == mine.height
        figures.add(metadata["rows"])
    assert len(figures) > 1, "every day shows the same figure: the range's, not its own"
    evaluations = [
        record.event_log_entry.dagster_event.event_specific_data
        for record in platform.instance.get_records_for_run(
            records[0].run_id, of_type=dg.DagsterEventType.ASSET_CHECK_EVALUATION
        ).records
        if record.event_log_entry.dagster_event is not None
    ]
    contract = [e for e in evaluations if e.asset_key == key and e.check_name == CONTRACT]
    assert sorted(e.partition for e in contract) == sorted(latest)
    assert all(e.passed for e in contract)
    # The contract's rules, the sequence ordering among them, each with its findings.
    for evaluation in contract:
        found = {name: value.value for name, value in evaluation.metadata.items()}
        assert found["failed_rules"] == "none"
        assert found[f"{ORDERED}.out_of_order_users"] == 0
        assert found[f"{UNIQUE}.duplicate_rows"] == 0

    # The events asset rewrote the days' dead letters: each day is recorded with its own count.
    dead = pl.read_delta(platform.layout.dead_letters("engagement")).group_by(DT).len()
    dead_key = dg.AssetKey(["dead_letters", "engagement"])
    recorded = {
        record.asset_materialization.partition: record.asset_materialization.metadata["rows"].value
        for record in platform.instance.fetch_materializations(
            dg.AssetRecordsFilter(asset_key=dead_key), limit=100
        ).records[::-1]  # oldest first: the latest of each day wins
        if record.asset_materialization is not None
    }
    assert recorded == {
        day.isoformat(): dead.filter(pl.col(DT) == day)["len"].sum()
        for day in (START + timedelta(days=n) for n in range(4))
    }


def test_snapshot_equals_direct_computation(platform: Platform) -> None:
    catalog = load_catalog()
    spec = catalog.sequences["recent_saves"]
    signal = platform.table(platform.layout.signals(spec.signal)).drop(DT)
    for day in (START, END):
        direct = assemble_snapshot(
            sequence_rows(signal.lazy(), spec), spec, snapshot_cutoff(day)
        ).collect()
        stored = read_snapshot(platform.layout, catalog, spec, day)
        assert stored.height > 0
        assert stored.equals(direct), day


def test_rematerializing_a_day_gives_identical_tables(platform: Platform) -> None:
    uris = [
        platform.layout.events("engagement"),
        platform.layout.signals("engagement_enriched"),
        platform.layout.sequence(load_catalog().sequences["recent_engagement"]),
    ]
    before = [platform.table(uri).sort(pl.all().exclude(pl.List)) for uri in uris]
    platform.run(date(2026, 3, 2), date(2026, 3, 2))
    after = [platform.table(uri).sort(pl.all().exclude(pl.List)) for uri in uris]
    for uri, old, new in zip(uris, before, after, strict=True):
        assert new.equals(old), uri


def test_corrected_landing_file_replaces_the_old_rows(platform: Platform) -> None:
    day = date(2026, 3, 3)
    folder = landing_dir(platform.home, "engagement", day)
    backup = platform.home / "backup"
    shutil.copytree(folder, backup)
    try:
        shutil.rmtree(folder)
        folder.mkdir()
        corrected = [
            {
                "event_id": "fix-1",
                "user_id": 7,
                "item_id": 11,
                "event_type": "save",
                "event_time": "2026-03-03T10:00:00Z",
                "surface": "search",
                "dwell_ms": 4000,
            },
            {
                "event_id": "fix-2",
                "user_id": 7,
                "item_id": 12,
                "event_type": "click",
                "event_time": "2026-03-03T12:00:00.250+02:00",
                "surface": "home_feed",
            },
            {
                "event_id": "fix-3",
                "user_id": 8,
                "item_id": 13,
                "event_type": "impression",
                "event_time": 1772542800000,
            },
        ]
        lines = [json.dumps(record) for record in corrected] + ["{broken"]
        (folder / "part-00000.jsonl").write_text("\n".join(lines) + "\n")
        platform.run(day, day)

        events = platform.table(platform.layout.events("engagement")).filter(pl.col(DT) == day)
        assert sorted(events["event_id"]) == ["fix-1", "fix-2", "fix-3"]
        fix_2 = events.filter(pl.col("event_id") == "fix-2").row(0, named=True)
        assert fix_2["event_time"] == datetime(2026, 3, 3, 10, 0, 0, 250_000, tzinfo=UTC)
        other_days = platform.table(platform.layout.events("engagement")).filter(pl.col(DT) != day)
        assert other_days.height > 0

        dead = platform.table(platform.layout.dead_letters("engagement")).filter(pl.col(DT) == day)
        assert dead["record"].to_list() == ["{broken"]
        assert dead["origin"].to_list() == ["landing/engagement/dt=2026-03-03/part-00000.jsonl:4"]

        signal = platform.table(platform.layout.signals("engagement_enriched"))
        assert sorted(signal.filter(pl.col(DT) == day)["event_id"]) == ["fix-1", "fix-2"]
        saves = load_catalog().sequences["recent_saves"]
        snapshot = platform.table(platform.layout.sequence(saves)).filter(
            (pl.col(DT) == day) & (pl.col("user_id") == 7)
        )
        # The day's corrected events now lead user 7's sequence, newest first.
        assert snapshot["event_id"][0].to_list()[:2] == ["fix-1", "fix-2"][::-1]
    finally:
        shutil.rmtree(folder)
        shutil.copytree(backup, folder)
        shutil.rmtree(backup)
        platform.run(day, END)


def test_materializing_a_day_with_only_bad_records_succeeds(platform: Platform) -> None:
    day = date(2026, 3, 4)
    folder = landing_dir(platform.home, "engagement", day)
    extra = folder / "part-00009.jsonl"
    extra.write_text('not json\n[]\n{"event_id": "x", "user_id": "abc"}\n')
    try:
        platform.run(day, day, keys=[dg.AssetKey(["events", "engagement"])])
        dead = platform.table(platform.layout.dead_letters("engagement")).filter(
            pl.col("origin").str.contains("part-00009")
        )
        assert dead.sort("origin")["reason"].to_list() == [
            "not valid JSON: Expecting value at position 0",
            "not a JSON object but a JSON list",
            "field 'user_id': expected int64, got JSON str 'abc'",
        ]
    finally:
        extra.unlink()
        platform.run(day, day, keys=[dg.AssetKey(["events", "engagement"])])


def test_a_broken_landing_file_fails_the_run_naming_the_file(tmp_path: Path) -> None:
    """A truncated export is an infrastructure failure: the run fails (not a dead letter) and
    its failure, as the UI shows it, names the file, the day and what to do."""
    home = tmp_path / "home"
    folder = landing_dir(home, "engagement", START)
    folder.mkdir(parents=True)
    good = {
        "event_id": "a",
        "user_id": 1,
        "item_id": 2,
        "event_type": "save",
        "event_time": "2026-03-01T10:00:00Z",
    }
    (folder / "part-00000.jsonl").write_text(json.dumps(good) + "\n")
    pl.DataFrame([good]).write_parquet(folder / "part-00001.parquet")
    broken = folder / "part-00001.parquet"
    broken.write_bytes(broken.read_bytes()[:-9])
    settings = PlatformSettings(home=home, start_date=START)
    key = dg.AssetKey(["events", "engagement"])
    with dg.DagsterInstance.ephemeral() as instance:
        defs = build_definitions(settings=settings)
        runs = materialize_days(defs, instance, START, START, keys=[key], raise_on_error=False)
        assert [run.success for run in runs] == [False]
        (failure,) = instance.all_logs(runs[0].run_id, of_type=dg.DagsterEventType.STEP_FAILURE)
        assert failure.dagster_event is not None
        shown = failure.dagster_event.step_failure_data.user_failure_data
        run = instance.get_run_by_id(runs[0].run_id)
        assert run is not None and run.status == dg.DagsterRunStatus.FAILURE

    assert shown is not None and shown.description == runs[0].error
    assert shown.description is not None
    assert shown.description.startswith(
        f"landing file {broken} (of 'engagement', day 2026-03-01) cannot be read: not a "
        "complete Parquet file; is it truncated or empty? (parquet: "
    )
    assert shown.description.endswith(
        "Export the file again, or remove it, then re-run 2026-03-01."
    )
    assert shown.metadata["file"] == dg.MetadataValue.text(str(broken))
    assert shown.metadata["day"] == dg.MetadataValue.text("2026-03-01")
    # Nothing was written for the day: not the good file's rows, and no dead letters.
    assert not (home / "tables").exists()
