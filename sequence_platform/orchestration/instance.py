"""The platform's Dagster instance: Dagster's SQLite storage, with connections kept open.

A range run of every asset records one materialization per asset and day and one result per
check and day (so the UI shows each day's own figures); at 30 days that is about 600 events.
Dagster's SQLite event log opens a new engine and connection for each write and closes it
after, and closing the last connection to a SQLite file in WAL mode checkpoints it: 10-13 ms
an event on this kind of machine, most of a 1M-event batch run. This storage keeps Dagster's
files and schema, with one engine per database file kept for the life of the process, so
statements are compiled once; an event's statements share one transaction per database, and
so do the events Dagster hands over as a batch (a run's planned events, a step's per-day
materializations; the storage sets ``DAGSTER_EVENT_BATCH_SIZE`` in the process, unless it is
set, for Dagster to hand those over); an asset's row is upserted rather than inserted, failed
and updated. About 1.4 ms an event, Dagster's own work included
(``benchmarks/bench_dagster_events.py``).
The ``dagster.yaml`` the platform writes names it, so the UI, the daemon and ``dagster``
commands on the instance use it too.

What changes with connections held open: a run's events reach its ``<run>.db-wal`` file
first (SQLite copies them into ``<run>.db`` at checkpoints), so the run log's file watch
follows both files. A process reading the same files through Dagster's own class (a ``dg dev``
started on the instance before its ``dagster.yaml`` named this class, say) sees everything,
but follows a live run only at checkpoints: restart it.

Commits are synced at checkpoints rather than one by one (SQLite's
``synchronous=NORMAL`` in WAL mode): a power cut can lose the last events recorded, never
corrupt the files; a process that crashes loses nothing.
"""

import fcntl
import os
import sys
import threading
from collections import OrderedDict
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import dagster as dg
import sqlalchemy as sa
from dagster._core.definitions.asset_checks.asset_check_evaluation import (
    AssetCheckEvaluationPlanned,
)
from dagster._core.errors import DagsterInvariantViolationError
from dagster._core.events.log import EventLogEntry
from dagster._core.storage.asset_check_execution_record import AssetCheckExecutionRecordStatus
from dagster._core.storage.event_log.schema import AssetCheckExecutionsTable, AssetKeyTable
from dagster._core.storage.event_log.sqlite.sqlite_event_log import (
    INDEX_SHARD_NAME,
    SqliteEventLogStorage,
    SqliteEventLogStorageWatchdog,
)
from dagster._core.storage.sqlite import SQLITE_BUSY_TIMEOUT_SECONDS
from dagster._serdes import ConfigurableClassData, serialize_value
from sqlalchemy.dialects.sqlite import insert as sqlite_insert
from sqlalchemy.engine import Connection, Engine
from watchdog.events import FileSystemEvent

EVENT_BATCH_SIZE = 1000
"""Events Dagster may group into one ``store_event_batch`` (one transaction per database)."""
OPEN_RUN_SHARDS = 4
"""Run databases kept open besides the index: a run writes to one, the UI reads a few."""


def _check_execution_update(partitioned: bool) -> sa.Update:
    """Dagster's update of a planned check execution with its result (``SqlEventLogStorage.
    _update_asset_check_evaluation``), built once with bound parameters."""
    table = AssetCheckExecutionsTable
    partition = (
        table.c.partition == sa.bindparam("on_partition")
        if partitioned
        else table.c.partition.is_(None)
    )
    return (
        table.update()
        .where(
            table.c.asset_key == sa.bindparam("key"),
            table.c.check_name == sa.bindparam("check"),
            table.c.run_id == sa.bindparam("run"),
            partition,
        )
        .values(
            execution_status=sa.bindparam("status"),
            evaluation_event=sa.bindparam("text"),
            evaluation_event_timestamp=sa.bindparam(
                "at", type_=table.c.evaluation_event_timestamp.type
            ),
            evaluation_event_storage_id=sa.bindparam("event_id"),
            materialization_event_storage_id=sa.bindparam("materialization_id"),
        )
    )


CHECK_EXECUTION_UPDATES = {
    True: _check_execution_update(True),
    False: _check_execution_update(False),
}
"""By whether the result names a partition."""

EARLIER_CONFIG = "telemetry:\n  enabled: false\n"
"""What the platform wrote into a new DAGSTER_HOME before it had a storage of its own."""
INSTANCE_CONFIG = """\
# The platform's Dagster instance (written by `sequence-platform`; edit freely).
telemetry:
  enabled: false
# Dagster's SQLite event log with its connections kept open: same files, same schema,
# several times faster to record a run's per-day materializations and check results.
event_log_storage:
  module: sequence_platform.orchestration.instance
  class: PooledSqliteEventLogStorage
  config:
    base_dir: {events}
"""


def instance_config(dagster_home: Path) -> str:
    """The ``dagster.yaml`` the platform writes into a new ``DAGSTER_HOME``."""
    return INSTANCE_CONFIG.format(events=dagster_home.absolute() / "history" / "runs")


def prepare_dagster_home(dagster_home: Path) -> None:
    """Give ``dagster_home`` the platform's ``dagster.yaml`` (unless it has one of its own)
    and create the instance's databases (an instance whose databases exist is left alone)."""
    created = [
        dagster_home / "history" / "runs.db",
        dagster_home / "history" / "runs" / f"{INDEX_SHARD_NAME}.db",
        dagster_home / "schedules" / "schedules.db",
    ]
    with _configured(dagster_home):
        if not all(path.exists() for path in created):
            # Opening the instance creates (or migrates) them, here under the lock.
            dg.DagsterInstance.from_config(str(dagster_home)).dispose()


def open_instance(dagster_home: Path) -> dg.DagsterInstance:
    """The Dagster instance in ``dagster_home``, prepared as ``prepare_dagster_home`` does;
    the caller disposes of it (``with open_instance(home) as instance``)."""
    with _configured(dagster_home):
        return dg.DagsterInstance.from_config(str(dagster_home))


@contextmanager
def _configured(dagster_home: Path) -> Iterator[None]:
    """Holds a file lock on ``dagster_home`` with its ``dagster.yaml`` in place: two first runs
    started together would otherwise both create the SQLite tables, and one would fail."""
    dagster_home.mkdir(parents=True, exist_ok=True)
    config = dagster_home / "dagster.yaml"
    with (dagster_home / ".prepare.lock").open("w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if not config.exists() or config.read_text() == EARLIER_CONFIG:
            config.write_text(instance_config(dagster_home))
        yield


class PooledSqliteEventLogStorage(SqliteEventLogStorage):
    """Dagster's ``SqliteEventLogStorage`` keeping one engine per database file open."""

    def __init__(self, base_dir: str, inst_data: ConfigurableClassData | None = None):
        self._engines: OrderedDict[str, Engine] = OrderedDict()
        self._engines_pid = os.getpid()
        self._engines_lock = threading.Lock()
        self._tables: set[str] = set()
        self._asset_key_columns: set[str] = set()
        self._local = threading.local()
        # Dagster hands the events it can group (a run's planned events, a step's per-day
        # materializations) to store_event_batch only when this is set; a user's value wins.
        os.environ.setdefault("DAGSTER_EVENT_BATCH_SIZE", str(EVENT_BATCH_SIZE))
        super().__init__(base_dir, inst_data)

    @classmethod
    def from_config_value(
        cls, inst_data: ConfigurableClassData | None, config_value: Mapping[str, Any]
    ) -> "PooledSqliteEventLogStorage":
        return cls(inst_data=inst_data, **config_value)

    def _engine(self, shard: str) -> Engine:
        with self._engines_lock:
            if self._engines_pid != os.getpid():
                # A forked child must not use its parent's connections: forget, never close.
                for inherited in self._engines.values():
                    inherited.dispose(close=False)
                self._engines.clear()
                self._engines_pid = os.getpid()
            engine = self._engines.get(shard)
            if engine is None:
                engine = sa.create_engine(
                    self.conn_string_for_shard(shard),
                    poolclass=sa.pool.QueuePool,
                    pool_size=1,
                    max_overflow=4,
                    connect_args={
                        "timeout": SQLITE_BUSY_TIMEOUT_SECONDS,
                        "check_same_thread": False,
                    },
                )
                sa.event.listen(engine, "connect", _tune_connection)
                self._engines[shard] = engine
                self._evict()
            self._engines.move_to_end(shard)
            return engine

    def _evict(self) -> None:
        runs = [shard for shard in self._engines if shard != INDEX_SHARD_NAME]
        for shard in runs[: max(0, len(runs) - OPEN_RUN_SHARDS)]:
            self._engines.pop(shard).dispose()

    def _dispose_engines(self) -> None:
        with self._engines_lock:
            for engine in self._engines.values():
                engine.dispose()
            self._engines.clear()

    def has_table(self, table_name: str) -> bool:
        # Asked before most writes, and sometimes inside one (so without the storage's lock);
        # tables are never dropped, so a table found stays found.
        if table_name not in self._tables:
            with self._engine(INDEX_SHARD_NAME).connect() as conn:
                if conn.dialect.has_table(conn, table_name):
                    self._tables.add(table_name)
        return table_name in self._tables

    def _has_asset_key_col_on_connection(self, conn: Connection, column_name: str) -> bool:
        # Asked at every materialization; migrations add columns, never drop them.
        if column_name not in self._asset_key_columns and super()._has_asset_key_col_on_connection(
            conn, column_name
        ):
            self._asset_key_columns.add(column_name)
        return column_name in self._asset_key_columns

    def _event_to_row(self, event: EventLogEntry) -> dict[str, Any]:
        row = super()._event_to_row(event)
        # Kept for the check execution row stored next, which holds the same text.
        self._local.serialized = (event, row["event"])
        return row

    def _serialized(self, event: EventLogEntry) -> str:
        """The event as text: as serialized for its log row when that was this event."""
        last = getattr(self._local, "serialized", None)
        return last[1] if last is not None and last[0] is event else serialize_value(event)

    def _store_asset_check_evaluation_planned(
        self, event: EventLogEntry, event_id: int | None
    ) -> None:
        # Dagster's own method, serializing the event once rather than once per partition (a
        # 30-day run's 13 checks: 390 times).
        dagster_event = event.dagster_event
        assert dagster_event is not None
        planned = dagster_event.event_specific_data
        assert isinstance(planned, AssetCheckEvaluationPlanned)
        keys = (
            planned.partitions_subset.get_partition_keys() if planned.partitions_subset else [None]
        )
        shared = {
            "asset_key": planned.asset_key.to_string(),
            "check_name": planned.check_name,
            "run_id": event.run_id,
            "execution_status": AssetCheckExecutionRecordStatus.PLANNED.value,
            "evaluation_event": self._serialized(event),
            "evaluation_event_timestamp": self._event_insert_timestamp(event),
            "evaluation_event_storage_id": event_id,
        }
        with self.index_connection() as conn:
            conn.execute(
                AssetCheckExecutionsTable.insert(), [{**shared, "partition": k} for k in keys]
            )

    def _update_asset_check_evaluation(self, event: EventLogEntry, event_id: int | None) -> None:
        # Dagster's own method, with its statement built once (not for each of a run's 390 check
        # results at 1M events) and the event's text as serialized for its log row (not again):
        # 0.83 -> 0.5 ms a result. Same rows; a result without a planned row, rarely, takes
        # Dagster's path, which inserts one.
        dagster_event = event.dagster_event
        assert dagster_event is not None
        evaluation = dagster_event.asset_check_evaluation_data
        text = self._serialized(event)
        target = evaluation.target_materialization_data
        status = (
            AssetCheckExecutionRecordStatus.SUCCEEDED
            if evaluation.passed
            else AssetCheckExecutionRecordStatus.FAILED
        )
        with self.index_connection() as conn:
            updated = conn.execute(
                CHECK_EXECUTION_UPDATES[evaluation.partition is not None],
                {
                    "key": evaluation.asset_key.to_string(),
                    "check": evaluation.check_name,
                    "run": event.run_id,
                    "on_partition": evaluation.partition,
                    "status": status.value,
                    "text": text,
                    "at": self._event_insert_timestamp(event),
                    "event_id": event_id,
                    "materialization_id": target.storage_id if target else None,
                },
            ).rowcount
        if updated == 0:
            super()._update_asset_check_evaluation(event, event_id)
        elif updated > 1:
            raise DagsterInvariantViolationError(
                f"Updated {updated} rows for asset check evaluation "
                f"{evaluation.asset_check_key} as a result of duplicate AssetCheckPlanned events."
            )

    def _store_asset_event(self, conn: Connection, event: EventLogEntry, event_id: int) -> None:
        # Dagster inserts the asset's row and, when it exists (every event but an asset's
        # first), catches the integrity error and updates: one upsert does both.
        dagster_event = event.dagster_event
        if dagster_event is None or dagster_event.asset_key is None:
            return
        values = self._get_asset_entry_values(
            event, event_id, self._has_asset_key_index_cols_on_connection(conn)
        )
        if values:
            conn.execute(
                sqlite_insert(AssetKeyTable)
                .values(asset_key=dagster_event.asset_key.to_string(), **values)
                .on_conflict_do_update(index_elements=[AssetKeyTable.c.asset_key], set_=values)
            )

    def store_event(self, event: EventLogEntry) -> None:
        with self._one_transaction_per_database():
            super().store_event(event)

    def store_event_batch(self, events: Sequence[EventLogEntry]) -> None:
        with self._one_transaction_per_database():
            for event in events:
                super().store_event(event)

    @contextmanager
    def _one_transaction_per_database(self) -> Iterator[None]:
        """Within it, this thread's statements share one transaction per database file (the
        run's and the index), committed at its end: the run's first, the index last. An error
        before the commits leaves neither database changed, so Dagster's fallback of storing a
        failed batch event by event adds nothing twice. (Should the index's commit fail after
        the run's, the fallback's copies land in the run's log only: the index, whose rows
        Dagster expects to be unique per run and check, never holds twins.)"""
        if getattr(self._local, "open", None) is not None:
            yield
            return
        opened: dict[str, Connection] = {}
        with self._db_lock:
            self._local.open = opened
            try:
                yield
                for shard in sorted(opened, key=lambda shard: shard == INDEX_SHARD_NAME):
                    opened[shard].commit()
            finally:
                self._local.open = None
                for conn in opened.values():
                    conn.close()  # rolls back what was not committed

    @contextmanager
    def _connect(self, shard: str) -> Iterator[Connection]:
        opened = getattr(self._local, "open", None)
        if opened is None:
            with self._db_lock, self._connection(shard) as conn, conn.begin():
                yield conn
            return
        if shard not in opened:
            conn = self._connection(shard)
            conn.begin()
            opened[shard] = conn
        yield opened[shard]

    def _connection(self, shard: str) -> Connection:
        engine = self._engine(shard)
        if shard not in self._initialized_dbs:
            self._initdb(engine)
            self._initialized_dbs.add(shard)
        return engine.connect()

    def watch(self, run_id: str, cursor: str | None, callback: Any) -> None:
        if not self._obs:
            from watchdog.observers import Observer

            observer = Observer()
            observer.start()
            self._obs = observer  # type: ignore[assignment]  # Dagster declares it None
        watchdog = _WalAwareWatchdog(self, run_id, callback, cursor)
        self._watchers[run_id][callback] = (
            watchdog,
            self._obs.schedule(watchdog, self._base_dir, recursive=True),  # type: ignore[attr-defined]
        )

    def wipe(self) -> None:
        self._dispose_engines()
        self._tables.clear()
        super().wipe()

    def dispose(self) -> None:
        super().dispose()  # stops the run-log watch first: it could open a connection again
        self._dispose_engines()


def _tune_connection(connection: Any, _record: Any) -> None:
    # WAL is the file's mode already (Dagster sets it when it creates a database); NORMAL
    # syncs at checkpoints instead of at every commit, which WAL keeps consistent.
    cursor = connection.cursor()
    cursor.execute("PRAGMA synchronous=NORMAL")
    cursor.close()


class _WalAwareWatchdog(SqliteEventLogStorageWatchdog):
    """Dagster's run-log watch, also woken by writes to the run's WAL file."""

    def __init__(self, storage: SqliteEventLogStorage, run_id: str, callback: Any, cursor: Any):
        super().__init__(storage, run_id, callback, cursor)
        self._patterns = [self._log_path, f"{self._log_path}-wal"]

    def on_modified(self, event: FileSystemEvent) -> None:
        self._process_log()


if __name__ == "__main__":
    # make install: the instance `dg dev` (make ui) opens is the one the commands write to.
    prepare_dagster_home(Path(sys.argv[1] if len(sys.argv) > 1 else os.environ["DAGSTER_HOME"]))
