"""The platform's Dagster instance: Dagster's SQLite files, written through connections kept
open. Whatever it records, Dagster's own storage reads back the same; a run log being watched
(the UI's live view) sees events that are still in the WAL file. (Annotations stay real
objects here: Dagster inspects them.)"""

import sqlite3
import threading
import time
import warnings
from collections.abc import Sequence
from pathlib import Path

import dagster as dg
import pytest
from dagster._core.events.log import EventLogEntry
from dagster._core.storage.event_log.sqlite.sqlite_event_log import (
    INDEX_SHARD_NAME,
    SqliteEventLogStorage,
)
from dagster._serdes import deserialize_value

from sequence_platform.orchestration.instance import (
    EARLIER_CONFIG,
    PooledSqliteEventLogStorage,
    prepare_dagster_home,
)

DAYS = dg.DailyPartitionsDefinition(start_date="2026-03-01", end_date="2026-03-05")


def recording_job(evaluated: int = 4) -> dg.JobDefinition:
    """A range run of a daily asset; the check is evaluated on the first ``evaluated`` days."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # partitioned checks: preview
        spec = dg.AssetCheckSpec("has_rows", asset="days", partitions_def=DAYS)

        @dg.asset(
            partitions_def=DAYS,
            check_specs=[spec],
            backfill_policy=dg.BackfillPolicy.single_run(),
        )
        def days(context: dg.AssetExecutionContext):  # type: ignore[no-untyped-def]
            for number, key in enumerate(context.partition_keys):
                context.add_asset_metadata({"rows": number}, partition_key=key)
            yield dg.MaterializeResult()
            for number, key in enumerate(context.partition_keys[:evaluated]):
                context.log_event(
                    dg.AssetCheckEvaluation(
                        asset_key=spec.asset_key,
                        check_name=spec.name,
                        passed=number > 0,
                        partition=key,
                    )
                )
            yield dg.Output(None, output_name="days_has_rows")

    return dg.Definitions(assets=[days]).resolve_implicit_global_asset_job_def()


def run_range(instance: dg.DagsterInstance, evaluated: int = 4) -> str:
    result = recording_job(evaluated).execute_in_process(
        instance=instance,
        tags={
            "dagster/asset_partition_range_start": "2026-03-01",
            "dagster/asset_partition_range_end": "2026-03-04",
        },
    )
    assert result.success
    return result.run_id


def recorded(storage: SqliteEventLogStorage, run_id: str) -> tuple[list, dict]:
    """Rows per day from the materializations, and check outcomes per day."""
    records = storage.fetch_materializations(dg.AssetKey("days"), limit=100).records
    rows = sorted(
        (record.partition_key, record.asset_materialization.metadata["rows"].value)
        for record in records
        if record.run_id == run_id and record.asset_materialization is not None
    )
    check = dg.AssetCheckKey(dg.AssetKey("days"), "has_rows")
    executions = storage.get_asset_check_execution_history(check, limit=100)
    outcomes = {
        execution.partition: execution.status.value
        for execution in executions
        if execution.run_id == run_id
    }
    return rows, outcomes


def test_what_the_platform_records_dagsters_own_storage_reads(tmp_path: Path) -> None:
    prepare_dagster_home(tmp_path)
    with dg.DagsterInstance.from_config(str(tmp_path)) as instance:
        assert isinstance(instance.event_log_storage, PooledSqliteEventLogStorage)
        run_id = run_range(instance)
        ours = recorded(instance.event_log_storage, run_id)  # type: ignore[arg-type]
    assert ours[0] == [("2026-03-01", 0), ("2026-03-02", 1), ("2026-03-03", 2), ("2026-03-04", 3)]
    assert ours[1] == {
        "2026-03-01": "FAILED",
        "2026-03-02": "SUCCEEDED",
        "2026-03-03": "SUCCEEDED",
        "2026-03-04": "SUCCEEDED",
    }
    # Dagster's own class on the same files, as a process without the platform would open them.
    theirs = SqliteEventLogStorage(str(tmp_path / "history" / "runs"))
    assert recorded(theirs, run_id) == ours
    assert len(theirs.get_logs_for_run(run_id)) > 0


def test_a_watched_run_log_sees_events_still_in_the_wal(tmp_path: Path) -> None:
    """The UI follows a run through a file watch; with connections held open the events are
    in ``<run>.db-wal`` until a checkpoint, so the watch follows that file too."""
    prepare_dagster_home(tmp_path)
    with dg.DagsterInstance.from_config(str(tmp_path)) as writer:
        first = run_range(writer)  # creates the run's database, so a watch has a file
        reader = PooledSqliteEventLogStorage(str(tmp_path / "history" / "runs"))
        arrived = threading.Event()

        def on_event(entry, cursor):  # type: ignore[no-untyped-def]
            if entry.dagster_event and entry.dagster_event.message == "written while watched":
                arrived.set()

        reader.watch(first, None, on_event)
        try:
            time.sleep(0.5)  # the watch is registered before the write
            writer.report_engine_event("written while watched", writer.get_run_by_id(first))
            assert arrived.wait(timeout=10), "the watch never saw the new event"
        finally:
            reader.end_watch(first, on_event)
            reader.dispose()


def test_a_home_gets_the_platform_config_unless_it_has_its_own(tmp_path: Path) -> None:
    fresh, earlier, own = tmp_path / "fresh", tmp_path / "earlier", tmp_path / "own"
    earlier.mkdir()
    (earlier / "dagster.yaml").write_text(EARLIER_CONFIG)
    own.mkdir()
    (own / "dagster.yaml").write_text("telemetry:\n  enabled: true\n")
    for home in (fresh, earlier, own):
        prepare_dagster_home(home)
        assert (home / "history" / "runs" / "index.db").exists()
    for home in (fresh, earlier):
        assert "PooledSqliteEventLogStorage" in (home / "dagster.yaml").read_text()
        assert str(home.absolute() / "history" / "runs") in (home / "dagster.yaml").read_text()
    assert (own / "dagster.yaml").read_text() == "telemetry:\n  enabled: true\n"


def test_a_second_run_becomes_the_latest_as_dagsters_class_reads_it(tmp_path: Path) -> None:
    """The asset's row is inserted by its first event and updated by every later one (an
    upsert here, an insert that fails then an update in Dagster's class)."""
    prepare_dagster_home(tmp_path)
    with dg.DagsterInstance.from_config(str(tmp_path)) as instance:
        run_range(instance)
        second = run_range(instance)
    theirs = SqliteEventLogStorage(str(tmp_path / "history" / "runs"))
    [record] = theirs.get_asset_records([dg.AssetKey("days")])
    latest = record.asset_entry.last_materialization_record
    assert latest is not None and latest.run_id == second
    assert latest.partition_key == "2026-03-04"
    assert record.asset_entry.last_run_id == second


def recorded_materializations(dagster_home: Path) -> tuple[str, list[EventLogEntry]]:
    """A range run's id and its four materialization events, as Dagster logged them."""
    prepare_dagster_home(dagster_home)
    with dg.DagsterInstance.from_config(str(dagster_home)) as instance:
        run_id = run_range(instance)
        return run_id, [
            entry
            for entry in instance.all_logs(run_id)
            if entry.dagster_event is not None and entry.dagster_event.is_step_materialization
        ]


def test_a_batch_of_events_is_stored_whole_or_not_at_all(tmp_path: Path) -> None:
    run_id, events = recorded_materializations(tmp_path / "source")
    assert len(events) == 4
    storage = PooledSqliteEventLogStorage(str(tmp_path / "copy"))
    stored = 0
    store_asset_event = storage._store_asset_event

    def failing_third(conn, event, event_id):  # type: ignore[no-untyped-def]
        nonlocal stored
        stored += 1
        if stored == 3:
            raise OSError("disk full")
        store_asset_event(conn, event, event_id)

    storage._store_asset_event = failing_third  # type: ignore[method-assign]
    with pytest.raises(OSError, match="disk full"):
        storage.store_event_batch(events)
    assert storage.get_logs_for_run(run_id) == []
    assert storage.get_asset_records([dg.AssetKey("days")]) == []

    storage._store_asset_event = store_asset_event  # type: ignore[method-assign]
    storage.store_event_batch(events)
    assert len(storage.get_logs_for_run(run_id)) == 4
    [record] = storage.get_asset_records([dg.AssetKey("days")])
    assert record.asset_entry.last_materialization_record.partition_key == "2026-03-04"  # type: ignore[union-attr]
    storage.dispose()


def test_the_run_log_commits_before_the_index(tmp_path: Path) -> None:
    """Should the index's commit fail, Dagster stores the batch again event by event: the
    copies may land in the run's log, never in the index (whose rows it expects unique)."""
    run_id, events = recorded_materializations(tmp_path / "source")
    storage = PooledSqliteEventLogStorage(str(tmp_path / "copy"))
    connection = storage._connection

    def index_fails_to_commit(shard: str):  # type: ignore[no-untyped-def]
        conn = connection(shard)
        if shard == INDEX_SHARD_NAME:

            def commit() -> None:
                raise OSError("disk I/O error")

            conn.commit = commit  # type: ignore[method-assign]
        return conn

    storage._connection = index_fails_to_commit  # type: ignore[method-assign]
    with pytest.raises(OSError, match="disk I/O error"):
        storage.store_event_batch(events)
    storage._connection = connection  # type: ignore[method-assign]
    assert len(storage.get_logs_for_run(run_id)) == 4
    assert storage.get_asset_records([dg.AssetKey("days")]) == []
    storage.dispose()


def check_executions(dagster_home: Path, run_id: str) -> list[tuple[object, ...]]:
    """The index's check execution rows of the run, as Dagster's UI reads them: what each says
    and that its event is the one the event log holds under its storage id."""
    with sqlite3.connect(dagster_home / "history" / "runs" / "index.db") as db:
        rows = db.execute(
            "SELECT asset_key, check_name, partition, execution_status, evaluation_event, "
            "evaluation_event_storage_id, materialization_event_storage_id, "
            "evaluation_event_timestamp FROM asset_check_executions WHERE run_id = ? "
            "ORDER BY partition, execution_status",
            (run_id,),
        ).fetchall()
        logged = dict(db.execute("SELECT id, event FROM event_logs").fetchall())
    described = []
    for key, check, partition, status, text, storage_id, materialization, at in rows:
        event = deserialize_value(text, EventLogEntry)
        assert at is not None and event.dagster_event is not None
        # The event stored with the result is its own log row's (planned rows: the planned one).
        assert storage_id is None or logged[storage_id] == text
        kind = event.dagster_event_type
        described.append((key, check, partition, status, kind, storage_id, materialization))
    return described


def test_check_results_leave_the_rows_dagsters_own_storage_leaves(tmp_path: Path) -> None:
    """The platform stores planned checks and their results with statements of its own (built
    once, the event serialized once): the rows are those of Dagster's class for the same run,
    a day whose check was planned and never evaluated included."""
    ours_home, theirs_home = tmp_path / "platform", tmp_path / "dagster"
    prepare_dagster_home(ours_home)
    theirs_home.mkdir()
    with dg.DagsterInstance.from_config(str(ours_home)) as instance:
        assert isinstance(instance.event_log_storage, PooledSqliteEventLogStorage)
        ours = check_executions(ours_home, run_range(instance, evaluated=3))
    with dg.DagsterInstance.from_config(str(theirs_home)) as instance:
        assert type(instance.event_log_storage) is SqliteEventLogStorage
        theirs = check_executions(theirs_home, run_range(instance, evaluated=3))
    assert ours == theirs
    assert [(row[2], row[3]) for row in ours] == [
        ("2026-03-01", "FAILED"),
        ("2026-03-02", "SUCCEEDED"),
        ("2026-03-03", "SUCCEEDED"),
        ("2026-03-04", "PLANNED"),
    ]


def test_a_run_hands_its_per_day_events_over_in_batches(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Dagster groups a run's planned events and a step's per-day materializations only when
    ``DAGSTER_EVENT_BATCH_SIZE`` is set: the platform's storage sets it (unless the user did)."""
    monkeypatch.delenv("DAGSTER_EVENT_BATCH_SIZE", raising=False)
    batches: list[int] = []
    store_batch = PooledSqliteEventLogStorage.store_event_batch

    def counted(self: PooledSqliteEventLogStorage, events: Sequence[EventLogEntry]) -> None:
        batches.append(len(events))
        store_batch(self, events)

    monkeypatch.setattr(PooledSqliteEventLogStorage, "store_event_batch", counted)
    prepare_dagster_home(tmp_path)
    with dg.DagsterInstance.from_config(str(tmp_path)) as instance:
        run_range(instance)
    # The 4 days' materializations, and the planned events, each as one batch.
    assert 4 in batches and max(batches) > 4
