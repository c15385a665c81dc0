"""What the read service keeps in memory, each table reloaded only when its Delta version changes.

Per sequence: the combined snapshot at the latest stored day's cutoff (older ones on demand, in a
small LRU cache); per signal: the real-time rows for the tail; per request-enriched feature
table: every version. Requests never open a table. The refresher is the only writer: it builds
new state off to the side and swaps one reference, so a request always reads one consistent
version of each table.

Each table is also held in the form the request path reads (see ``columns``): Arrow arrays of
typed values and of their JSON, and numpy arrays to look users and times up. A snapshot lives in
a memory-mapped file that every worker process shares (see ``snapshot_files``).
"""

from __future__ import annotations

import bisect
import hashlib
import json
import logging
import threading
from abc import ABC, abstractmethod
from collections import OrderedDict
from collections.abc import Iterator
from dataclasses import dataclass, replace
from datetime import UTC, date, datetime, timedelta
from functools import cached_property
from typing import NamedTuple

import numpy as np
import polars as pl
import pyarrow as pa
from deltalake import DeltaTable
from deltalake.fs import DeltaStorageHandler
from pyarrow.fs import FileType

from sequence_platform.engine.sequence import empty_snapshot, snapshot_cutoff, stored_days
from sequence_platform.engine.signal import latest_feature_versions
from sequence_platform.runtime.microbatch import STREAM_OFFSET, STREAM_PARTITION
from sequence_platform.runtime.snapshots import snapshot_from_table
from sequence_platform.serving.columns import (
    JSON_PREFIX,
    NULL_JSON,
    arrow_table,
    column,
    int64_values,
    list_offsets,
    with_json,
    with_json_lists,
)
from sequence_platform.serving.errors import UNAVAILABLE_DATA_ERRORS, NotLoaded
from sequence_platform.serving.snapshot_files import MappedTable, SnapshotFiles
from sequence_platform.spec.catalog import Catalog
from sequence_platform.spec.models import FeatureTableSpec, SequenceSpec
from sequence_platform.storage.delta import DT, open_table, table_records
from sequence_platform.storage.layout import TableLayout

log = logging.getLogger(__name__)

EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
ONE_MS = timedelta(milliseconds=1)
ONE_US = timedelta(microseconds=1)


def epoch_ms(moment: datetime) -> int:
    return (moment - EPOCH) // ONE_MS


def epoch_us(moment: datetime) -> int:
    return (moment - EPOCH) // ONE_US


def ragged_range(starts: np.ndarray, ends: np.ndarray) -> np.ndarray:
    """The positions ``starts[i]`` up to ``ends[i]`` of every i, one after another."""
    lengths = ends - starts
    total = int(lengths.sum())
    if total == 0:
        return np.empty(0, dtype=np.int64)
    # Each range's start repeated over its length, plus a ramp restarting at every range.
    shifts = np.repeat(starts - np.cumsum(lengths) + lengths, lengths)
    return (shifts + np.arange(total)).astype(np.int64, copy=False)


def rows_of_keys(sorted_keys: np.ndarray, keys: np.ndarray) -> np.ndarray:
    """Row positions, in ``sorted_keys`` order per key, of every row whose key is in ``keys``.

    ``keys`` must be sorted and distinct; the result is ascending.
    """
    low = np.searchsorted(sorted_keys, keys, side="left")
    high = np.searchsorted(sorted_keys, keys, side="right")
    return ragged_range(low, high)


def read_table(table: DeltaTable, schema: pl.Schema, day: date | None = None) -> pl.DataFrame:
    """Rows of the pinned table version (one day, or all) with columns cast to ``schema``."""
    frame = pl.scan_delta(table)
    if day is not None:
        frame = frame.filter(pl.col(DT) == day)
    return frame.select(pl.col(name).cast(dtype) for name, dtype in schema.items()).collect()


def partition_files(table: DeltaTable) -> dict[date, frozenset[str]]:
    """The data files of each ``dt`` partition of the table version."""
    actions = pl.DataFrame(table.get_add_actions(flatten=True))
    if actions.is_empty():
        return {}
    grouped = actions.group_by(f"partition.{DT}").agg(pl.col("path"))
    return {day: frozenset(paths) for day, paths in grouped.iter_rows() if day is not None}


# -- in-memory tables --------------------------------------------------------------------------


SNAPSHOT_FILE_FORMAT = 1
"""Part of every snapshot file's name: bump it when what a file holds changes."""


class SnapshotColumns:
    """The data of one combined snapshot, as the request path reads it.

    An Arrow table with a row per user, sorted by ``user_id``: ``user_id``, ``length``, one list
    column per stored field and, for each, the list of its values' JSON (``__json__<field>``).
    All list columns share one layout, so a user's events are positions ``offsets[row]`` up to
    ``offsets[row + 1]`` of every flattened column.
    """

    def __init__(self, mapped: MappedTable, stored_fields: list[str]) -> None:
        self.mapped = mapped
        self.stored_fields = list(stored_fields)
        table = mapped.table
        self.user_ids = int64_values(column(table, "user_id"))
        self.offsets = list_offsets(column(table, "event_id"))
        self.values = {name: column(table, name).values for name in stored_fields}
        """Per stored field, every event's value (flattened)."""
        self.json = {name: column(table, JSON_PREFIX + name).values for name in stored_fields}
        """Per stored field, every event's value as JSON and a comma (flattened)."""
        self.event_times = int64_values(self.values["event_time"])
        """Every event's ``event_time`` in epoch milliseconds."""

    @classmethod
    def encode(cls, frame: pl.DataFrame, elements: pl.Schema) -> pa.Table:
        """The table of a snapshot in the snapshot layout (``elements``: its list columns)."""
        return arrow_table(with_json_lists(frame, elements))

    @cached_property
    def frame(self) -> pl.DataFrame:
        """The snapshot in the snapshot layout, as the engine reads it."""
        names = ["user_id", "length", *self.stored_fields]
        return pl.DataFrame(pl.from_arrow(self.mapped.table.select(names)))


@dataclass(frozen=True)
class Snapshot:
    """One combined snapshot: a row per user, sorted by ``user_id``, at a day's cutoff."""

    columns: SnapshotColumns
    day: date | None = None
    """The latest stored day combined, or None for the empty snapshot served when no cutoff is
    early enough."""
    table_version: int | None = None

    @classmethod
    def of(
        cls,
        frame: pl.DataFrame,
        spec: SequenceSpec,
        catalog: Catalog,
        day: date | None = None,
        table_version: int | None = None,
    ) -> Snapshot:
        """A snapshot held in this process's memory, from a frame in the snapshot layout."""
        table = SnapshotColumns.encode(frame, catalog.sequence_element_schema(spec.name))
        columns = SnapshotColumns(MappedTable(table, None), spec.stored_fields)
        return cls(columns, day, table_version)

    @cached_property
    def cutoff(self) -> datetime | None:
        return None if self.day is None else snapshot_cutoff(self.day)

    @property
    def frame(self) -> pl.DataFrame:
        return self.columns.frame

    @property
    def user_ids(self) -> np.ndarray:
        return self.columns.user_ids

    @property
    def users(self) -> int:
        return len(self.columns.user_ids)

    def rows_for(self, user_ids: np.ndarray) -> pl.DataFrame:
        """The snapshot rows of ``user_ids`` (sorted, distinct); absent users have none."""
        return self.frame[rows_of_keys(self.user_ids, user_ids)]


@dataclass
class TableStatus:
    """What the refresher knows about one table, for readiness and metrics."""

    kind: str
    name: str
    uri: str
    checked: bool = False
    """A refresh has tried to read it, whether or not it could."""
    loaded: bool = False
    """Read at least once, or known to be absent."""
    version: int | None = None
    rows: int = 0
    errors: int = 0
    last_error: str | None = None
    """Why the last refresh could not read the table at its newest version; None when it could."""

    @property
    def label(self) -> str:
        return f"{self.kind} table '{self.name}' at {self.uri}"

    def not_ready_reason(self) -> str | None:
        """Why this table keeps the service from being ready; None when it does not."""
        if self.last_error is None:
            return None if self.loaded else f"{self.label} not read yet"
        if not self.loaded:
            return f"{self.label} cannot be read: {self.last_error}; served as empty meanwhile"
        held = "it as absent" if self.version is None else f"version {self.version}"
        return (
            f"{self.label} cannot be read at its newest version: {self.last_error}; "
            f"still serving {held}, as read before"
        )


class BrokenDeltaLog(Exception):
    """The Delta log of a table read before is gone, or its newest commit went missing."""


class NewestCommit(NamedTuple):
    """The newest commit file of a table as last looked up: a rewrite changes size or time."""

    version: int
    size: int | None
    modified_ns: int | None


def describe_error(error: Exception) -> str:
    """The error's type and first line (delta-rs appends a backtrace to its messages)."""
    first_line = (str(error).strip().splitlines() or [""])[0]
    return f"{type(error).__name__}: {first_line}"


class WatchedTable(ABC):
    """One Delta table mirrored in memory and reloaded when its newest commit changes."""

    kind = "table"

    def __init__(self, name: str, uri: str, storage_options: dict[str, str]) -> None:
        self.status = TableStatus(self.kind, name, uri)
        self._storage_options = storage_options
        self._table: DeltaTable | None = None
        self._commit: NewestCommit | None = None
        """The newest commit of ``_table``; None while there is no table."""
        self._loaded_commit: NewestCommit | None = None
        """The commit whose state is in memory."""
        self._log_files: DeltaStorageHandler | None = None

    def _current(self) -> DeltaTable | None:
        """The table at its newest version, its newest commit looked up again.

        An open table reads only the commits it lacks: a log moved away, or a commit rewritten
        after it was read, would go unnoticed without the look-up (one file stat).
        """
        if self._table is not None:
            known = self._commit
            self._table.update_incremental()
            commit = self._look_up(self._table.version())
            if known is None or commit.version != known.version or commit == known:
                self._commit = commit
                return self._table
            # The newest commit was rewritten in place: read the whole log again.
        self._table, self._commit = None, None
        table = open_table(self.status.uri, self._storage_options)
        if table is None:
            if self.status.version is not None:
                raise BrokenDeltaLog(
                    f"its _delta_log is gone (version {self.status.version} was read before)"
                )
            return None
        self._commit = self._look_up(table.version())
        self._table = table
        return table

    def _look_up(self, version: int) -> NewestCommit:
        if self._log_files is None:
            self._log_files = DeltaStorageHandler(self.status.uri, self._storage_options or None)
        path = f"_delta_log/{version:020d}.json"
        [info] = self._log_files.get_file_info([path])
        if info.type == FileType.NotFound:
            raise BrokenDeltaLog(f"its newest commit {path} is gone (log moved or deleted?)")
        return NewestCommit(version, info.size, info.mtime_ns)

    @property
    def loaded(self) -> bool:
        return self.status.loaded

    def refresh(self) -> bool:
        """Check the table's newest commit; reload when it changed. True when it reloaded.

        A failure keeps the state last read (and is counted and reported until the table
        reads again); the next refresh reads the log from scratch.
        """
        status = self.status
        try:
            table = self._current()
            commit = self._commit
            changed = not status.loaded or commit != self._loaded_commit
            if changed:
                status.rows = self._absent() if table is None else self._load(table)
        except Exception as error:
            self._table, self._commit = None, None
            status.errors += 1
            reason = describe_error(error)
            if reason != status.last_error:
                log.warning(
                    "reading %s failed: %s",
                    status.label,
                    reason,
                    extra={"event": "refresh_failed", "kind": status.kind, "table": status.name},
                )
            status.last_error, status.checked = reason, True
            return False
        if status.last_error is not None:
            log.info("%s reads again", status.label)
        self._loaded_commit = commit
        status.version = None if commit is None else commit.version
        status.loaded, status.checked, status.last_error = True, True, None
        return changed

    @abstractmethod
    def _load(self, table: DeltaTable) -> int:
        """Replace the in-memory state with this table version; return its row count."""

    @abstractmethod
    def _absent(self) -> int:
        """Replace the in-memory state with that of a table not written yet."""

    def _require_loaded(self) -> None:
        """Refuse requests until a refresh has tried the table; after a failed first read,
        its (empty) initial state is served and ``/readyz`` says why."""
        if not self.status.checked:
            name = self.status.name
            raise NotLoaded(f"{self.kind} '{name}' has not been read yet; retry shortly")


@dataclass(frozen=True)
class _SnapshotTableState:
    table: DeltaTable | None
    """The table at the version loaded, pinned, for reading older partitions on demand."""
    files: dict[date, frozenset[str]]
    """The data files of each stored day at that version."""
    latest: Snapshot
    latest_files: frozenset[str]

    @cached_property
    def days(self) -> list[date]:
        return sorted(self.files)


class SnapshotLRU:
    """Older snapshot partitions read on demand, keyed by (table version, day)."""

    def __init__(self, capacity: int) -> None:
        self.capacity = capacity
        self._items: OrderedDict[tuple[int | None, date], Snapshot] = OrderedDict()
        self._lock = threading.Lock()

    def get(self, key: tuple[int | None, date]) -> Snapshot | None:
        with self._lock:
            found = self._items.get(key)
            if found is not None:
                self._items.move_to_end(key)
            return found

    def put(self, key: tuple[int | None, date], snapshot: Snapshot) -> None:
        with self._lock:
            self._items[key] = snapshot
            self._items.move_to_end(key)
            while len(self._items) > self.capacity:
                self._items.popitem(last=False)

    def __len__(self) -> int:
        return len(self._items)

    def clear(self) -> None:
        with self._lock:
            self._items.clear()


class SnapshotTable(WatchedTable):
    """The snapshot table of one sequence: the latest combined snapshot, older ones cached.

    With ``files``, each combined snapshot is kept in a snapshot file that the service's worker
    processes share; without, in this process's memory.
    """

    kind = "sequence"

    def __init__(
        self,
        spec: SequenceSpec,
        catalog: Catalog,
        layout: TableLayout,
        *,
        cached_older: int = 4,
        files: SnapshotFiles | None = None,
    ) -> None:
        super().__init__(spec.name, layout.sequence(spec), layout.storage_options)
        self.spec = spec
        self.files = files
        empty = empty_snapshot(spec, catalog).collect()
        self.schema = empty.schema
        self.elements = catalog.sequence_element_schema(spec.name)
        self._empty = Snapshot.of(empty, spec, catalog).columns
        self.older = SnapshotLRU(cached_older)
        self._state = _SnapshotTableState(None, {}, Snapshot(self._empty), frozenset())

    @property
    def latest(self) -> Snapshot:
        return self._state.latest

    def _absent(self) -> int:
        self._state = _SnapshotTableState(None, {}, Snapshot(self._empty), frozenset())
        return 0

    def _load(self, table: DeltaTable) -> int:
        version = table.version()
        files = partition_files(table)
        days = sorted(files)
        previous = self._state
        window = self._window_files(files, days[-1]) if days else frozenset()
        if not days:
            latest = Snapshot(self._empty, None, version)
        elif previous.latest.day == days[-1] and previous.latest_files == window:
            # A commit that left the newest window alone (e.g. a backfill of older days).
            latest = replace(previous.latest, table_version=version)
        else:
            latest = Snapshot(self._combined(table, days[-1], window), days[-1], version)
        # A table object of its own at this version: the refresher moves the watched one on.
        pinned = DeltaTable(
            table.table_uri, version=version, storage_options=self._storage_options or None
        )
        self._state = _SnapshotTableState(pinned, files, latest, window)
        return latest.users

    def _window_files(self, files: dict[date, frozenset[str]], day: date) -> frozenset[str]:
        first, last = stored_days(self.spec, snapshot_cutoff(day))
        return frozenset().union(*(paths for d, paths in files.items() if first <= d <= last))

    def snapshot_at(self, at: datetime) -> Snapshot:
        """The snapshot of the latest stored day whose cutoff ``C <= at``; the empty snapshot
        when there is none."""
        self._require_loaded()
        state = self._state
        cutoff = state.latest.cutoff
        if cutoff is not None and cutoff <= at:
            return state.latest
        day = self._older_day(state, at)
        if day is None or state.table is None:
            return Snapshot(self._empty, None, state.latest.table_version)
        key = (state.latest.table_version, day)
        cached = self.older.get(key)
        if cached is not None:
            return cached
        try:
            window = self._window_files(state.files, day)
            snapshot = Snapshot(self._combined(state.table, day, window), day, key[0])
        except UNAVAILABLE_DATA_ERRORS as error:
            log.warning("reading snapshot %s of %s failed: %s", day, self.spec.name, error)
            raise NotLoaded(
                f"the snapshot of '{self.spec.name}' for {day} cannot be read right now; retry"
            ) from error
        self.older.put(key, snapshot)
        return snapshot

    @staticmethod
    def _older_day(state: _SnapshotTableState, at: datetime) -> date | None:
        """The latest stored day whose cutoff is ``<= at``, if any."""
        # cutoff(D) = D+1 00:00 <= at  exactly when  D <= at's UTC date - 1 day.
        days = state.days
        position = bisect.bisect_right(days, at.astimezone(UTC).date() - timedelta(days=1))
        return None if position == 0 else days[position - 1]

    def _combined(self, table: DeltaTable, day: date, window: frozenset[str]) -> SnapshotColumns:
        """The snapshot at the cutoff of ``day``: the stored days of its window, combined, from
        the snapshot file of that window when there is one."""

        def build() -> pa.Table:
            frame = snapshot_from_table(table, self.spec, self.schema, day)
            return SnapshotColumns.encode(frame, self.elements)

        if self.files is None:
            mapped = MappedTable(build(), None)
        else:
            group = f"{self.spec.name}-v{self.spec.version}"
            mapped = self.files.load(self._file_name(day, window), group, build)
        return SnapshotColumns(mapped, self.spec.stored_fields)

    def _file_name(self, day: date, window: frozenset[str]) -> str:
        """Named by what determines the contents: the definition, the table and its files."""
        identity = {
            "format": SNAPSHOT_FILE_FORMAT,
            "definition": self.spec.model_dump(mode="json"),
            "elements": {name: str(dtype) for name, dtype in self.elements.items()},
            "table": self.status.uri,
            "files": sorted(window),
        }
        digest = hashlib.sha256(json.dumps(identity, sort_keys=True).encode()).hexdigest()
        return f"{self.spec.name}-v{self.spec.version}-{day.isoformat()}-{digest[:24]}.arrow"


PASSES_PREFIX = "__passes__"
"""Prefix of the column telling whether a real-time row passes a sequence's filter."""


class TailColumns:
    """Real-time rows as the request path reads them, in the order of the tail's rows."""

    def __init__(self, table: pa.Table, fields: list[str], sequences: list[str]) -> None:
        self.user_ids = int64_values(column(table, "user_id"))
        self.event_times = int64_values(column(table, "event_time"))
        self.event_ids = column(table, "event_id")
        self.values = {name: column(table, name) for name in table.column_names}
        """Every signal column (and more), typed."""
        self.json = {name: column(table, JSON_PREFIX + name) for name in fields}
        """Per field a sequence stores, each value's JSON and a comma."""
        self.passes = {
            name: column(table, PASSES_PREFIX + name).to_numpy(zero_copy_only=False)
            for name in sequences
        }
        """Per sequence, whether each row passes its filter."""


@dataclass(frozen=True)
class _TailState:
    encoded: pl.DataFrame
    """Signal rows sorted by ``user_id``, then in delivery order (partition, offset), with the
    JSON of each stored field and whether each row passes each sequence's filter."""
    rows: pl.DataFrame
    """The signal rows alone, in the same order."""
    user_ids: np.ndarray
    event_times: np.ndarray
    """Every row's ``event_time`` in epoch milliseconds, ascending (for the watermark)."""
    columns: TailColumns


class RealtimeTail(WatchedTable):
    """The rows of ``realtime/<signal>`` that serving merges on top of snapshots.

    Micro-batches only append, so a new version is read as the data files it added; only a
    version that removed files (compaction, retention) makes it read the table again. Rows are
    kept in delivery order per user, which is the order the engine's de-duplication relies on.
    The JSON of new rows and whether they pass each sequence's filter are worked out as they
    are read.
    """

    kind = "realtime"

    def __init__(self, signal: str, catalog: Catalog, layout: TableLayout) -> None:
        super().__init__(signal, layout.realtime(signal), layout.storage_options)
        signal_schema = catalog.signal_schema(signal)
        self.schema = pl.Schema(
            {
                **dict(signal_schema),
                STREAM_PARTITION: pl.Int32(),
                STREAM_OFFSET: pl.Int64(),
            }
        )
        sequences = [spec for spec in catalog.sequences.values() if spec.signal == signal]
        stored = dict.fromkeys(name for spec in sequences for name in spec.stored_fields)
        self._stored = pl.Schema({name: signal_schema[name] for name in stored})
        self._filters = {
            spec.name: pl.sql_expr(spec.filter) if spec.filter else pl.lit(True)
            for spec in sequences
        }
        self._files: frozenset[str] = frozenset()
        self.files_read = 0
        """Data files read since start: what the incremental refresh saves is visible here."""
        self.hold(pl.DataFrame(schema=self.schema))

    def hold(self, rows: pl.DataFrame) -> None:
        """Replace the rows in memory (columns of ``schema``; any order of users)."""
        self._state = self._index(self._encode(rows.select(self.schema.names())))

    def _absent(self) -> int:
        self._files = frozenset()
        self.hold(pl.DataFrame(schema=self.schema))
        return 0

    def _load(self, table: DeltaTable) -> int:
        files = frozenset(pl.DataFrame(table.get_add_actions(flatten=True))["path"].to_list())
        if self.status.loaded and self._files <= files:
            added = sorted(files - self._files)
            fresh = self._encode(self._read_files(table, added))
            encoded = pl.concat([self._state.encoded, fresh], how="vertical_relaxed")
            self._state = self._index(encoded)
            self.files_read += len(added)
        else:
            self.hold(self._project(pl.scan_delta(table)))
            self.files_read += len(files)
        self._files = files
        return self._state.rows.height

    def _read_files(self, table: DeltaTable, paths: list[str]) -> pl.DataFrame:
        if not paths:
            return pl.DataFrame(schema=self.schema)
        root = table.table_uri.rstrip("/")
        frame = pl.scan_parquet(
            [f"{root}/{path}" for path in paths],
            storage_options=self._storage_options or None,
            hive_partitioning=False,
        )
        return self._project(frame)

    def _project(self, frame: pl.LazyFrame) -> pl.DataFrame:
        """The signal columns; delivery offsets are null for rows another writer appended."""
        present = frame.collect_schema()
        return frame.select(
            (pl.col(name) if name in present else pl.lit(None)).cast(dtype).alias(name)
            for name, dtype in self.schema.items()
        ).collect()

    def _encode(self, rows: pl.DataFrame) -> pl.DataFrame:
        """``rows`` with their JSON and, per sequence, whether each passes its filter."""
        passes = [
            expression.fill_null(False).alias(PASSES_PREFIX + name)
            for name, expression in self._filters.items()
        ]
        return with_json(rows, self._stored).with_columns(passes)

    def _index(self, encoded: pl.DataFrame) -> _TailState:
        ordered = encoded.filter(pl.col("user_id").is_not_null()).sort(
            "user_id", STREAM_PARTITION, STREAM_OFFSET, maintain_order=True
        )
        rows = ordered.select(self.schema.names())
        times = rows["event_time"].dt.epoch("ms").drop_nulls().sort().to_numpy()
        columns = TailColumns(arrow_table(ordered), list(self._stored), list(self._filters))
        return _TailState(
            ordered, rows, columns.user_ids, times.astype(np.int64, copy=False), columns
        )

    @property
    def rows(self) -> pl.DataFrame:
        """Every real-time row, sorted by ``user_id``, then in delivery order."""
        self._require_loaded()
        return self._state.rows

    @property
    def columns(self) -> TailColumns:
        self._require_loaded()
        return self._state.columns

    def watermark_before(self, at: datetime) -> datetime | None:
        """The greatest ``event_time`` of any real-time row before ``at``, or None."""
        times = self._state.event_times
        position = int(np.searchsorted(times, epoch_ms(at), side="left"))
        return None if position == 0 else EPOCH + int(times[position - 1]) * ONE_MS


class FeatureColumns:
    """One feature table's versions as the request path reads them: one row per (key, as-of),
    sorted, the last copy winning (as the engine's as-of join takes them); after the rows, one
    row of nulls for the events no version applies to (``missing``)."""

    def __init__(self, rows: pl.DataFrame, spec: FeatureTableSpec, schema: pl.Schema) -> None:
        # A version without key or as-of never applies (nor does it in the engine's join).
        latest = (
            latest_feature_versions(rows.lazy(), spec)
            .filter(pl.col(spec.key).is_not_null() & pl.col(spec.as_of).is_not_null())
            .collect()
        )
        fields = pl.Schema({name: schema[name] for name in spec.fields})
        table = arrow_table(with_json(latest.select(list(fields)), fields))
        self.keys = int64_values(latest[spec.key].to_arrow())
        self.as_of = int64_values(latest[spec.as_of].to_arrow())
        self.missing = latest.height
        """The row of nulls after the versions."""
        self.values: dict[str, pa.Array] = {}
        self.json: dict[str, pa.Array] = {}
        for name in fields:
            values = column(table, name)
            self.values[name] = pa.concat_arrays([values, pa.nulls(1, type=values.type)])
            self.json[name] = pa.concat_arrays(
                [column(table, JSON_PREFIX + name), pa.array([NULL_JSON], pa.large_binary())]
            )

    def rows_as_of(self, keys: np.ndarray, valid: np.ndarray, at_ms: int) -> np.ndarray:
        """Per key, the row of the greatest as-of ``<= at_ms`` with that key; ``missing`` when
        there is none or the key is null (``valid`` false)."""
        low = np.searchsorted(self.keys, keys, side="left")
        high = np.searchsorted(self.keys, keys, side="right")
        # Binary search of each key's versions (ascending as-of) for the last one <= at_ms.
        left, right = low, high
        while True:
            active = left < right
            if not active.any():
                break
            middle = (left + right) // 2
            before = active & (self.as_of[np.minimum(middle, len(self.as_of) - 1)] <= at_ms)
            left = np.where(before, middle + 1, left)
            right = np.where(active & ~before, middle, right)
        found = (left > low) & valid
        return np.where(found, left - 1, self.missing)


class FeatureVersions(WatchedTable):
    """Every version of a feature table (they are small), for request-time enrichment."""

    kind = "features"

    def __init__(self, table: str, catalog: Catalog, layout: TableLayout) -> None:
        super().__init__(table, layout.features(table), layout.storage_options)
        self.spec = catalog.feature_tables[table]
        self.schema = catalog.feature_schema(table)
        self._order = [self.spec.key, self.spec.as_of]
        self.hold(pl.DataFrame(schema=self.schema))

    @property
    def rows(self) -> pl.DataFrame:
        """Every version, sorted by key and as-of (as the engine reads them)."""
        self._require_loaded()
        return self._state[0]

    @property
    def columns(self) -> FeatureColumns:
        self._require_loaded()
        return self._state[1]

    def hold(self, rows: pl.DataFrame) -> None:
        """Replace the versions in memory (columns of ``schema``, in the table's order)."""
        # A stable sort: of two copies of a (key, as-of), the same one wins every time.
        ordered = rows.select(self.schema.names()).sort(self._order, maintain_order=True)
        self._state = (ordered, FeatureColumns(ordered, self.spec, self.schema))

    def _absent(self) -> int:
        self.hold(pl.DataFrame(schema=self.schema))
        return 0

    def _load(self, table: DeltaTable) -> int:
        self.hold(read_table(table, self.schema))
        return self._state[0].height


class DeadLetterCount(WatchedTable):
    """How many records ``dead_letters/<source>`` holds, for ``/metrics``, from the Delta log
    alone (no data file is read). Serving never needs it: it is not part of readiness."""

    kind = "dead_letters"

    def __init__(self, name: str, layout: TableLayout) -> None:
        super().__init__(name, layout.dead_letters(name), layout.storage_options)

    def _absent(self) -> int:
        return 0

    def _load(self, table: DeltaTable) -> int:
        return table_records(table)


class TombstoneTable(WatchedTable):
    """``tables/tombstones``: a new version means users were forgotten, and whatever the store
    cached from older table versions must go (see ``SnapshotStore.refresh``)."""

    kind = "tombstones"

    def __init__(self, layout: TableLayout) -> None:
        super().__init__("tombstones", layout.tombstones(), layout.storage_options)

    def _absent(self) -> int:
        return 0

    def _load(self, table: DeltaTable) -> int:
        return table_records(table)  # only the new version matters: no data file is read


# -- the store -------------------------------------------------------------------------------


def log_reload(status: TableStatus) -> None:
    """One ``"event": "refresh"`` line for a table reloaded (see the README's logs)."""
    version = "absent" if status.version is None else f"version {status.version}"
    log.info(
        "loaded %s table %s (%s)",
        status.kind,
        status.name,
        version,
        extra={
            "event": "refresh",
            "kind": status.kind,
            "table": status.name,
            "version": status.version,
            "rows": status.rows,
        },
    )


class SnapshotStore:
    """Every table the read service needs for a catalog, kept in memory.

    With ``files``, combined snapshots live in snapshot files shared by every process that
    serves from the same folder (see ``snapshot_files``).
    """

    def __init__(
        self,
        catalog: Catalog,
        layout: TableLayout,
        *,
        cached_older: int = 4,
        files: SnapshotFiles | None = None,
    ) -> None:
        self.catalog = catalog
        self.layout = layout
        self.files = files
        self.snapshots = {
            name: SnapshotTable(spec, catalog, layout, cached_older=cached_older, files=files)
            for name, spec in catalog.sequences.items()
        }
        signals = sorted({spec.signal for spec in catalog.sequences.values()})
        self.tails = {signal: RealtimeTail(signal, catalog, layout) for signal in signals}
        tables = sorted(
            {e.table for spec in catalog.sequences.values() for e in spec.request_enrich}
        )
        self.features = {table: FeatureVersions(table, catalog, layout) for table in tables}
        # Every landing name has its dead letters: each source's and each feature table's.
        self.dead_letters = {
            name: DeadLetterCount(name, layout)
            for name in sorted({*catalog.sources, *catalog.feature_tables})
        }
        self.tombstones = TombstoneTable(layout)
        self._refresh_lock = threading.Lock()
        self.refreshes = 0
        # Reads before the newest snapshot's cutoff; imported here, as its module imports this one.
        from sequence_platform.serving.instants import PastReads

        self.past = PastReads(catalog, layout)

    def tables(self) -> Iterator[WatchedTable]:
        yield from self.snapshots.values()
        yield from self.tails.values()
        yield from self.features.values()

    def watched(self) -> Iterator[WatchedTable]:
        """``tables`` and the dead-letter tables counted for ``/metrics``."""
        yield from self.tables()
        yield from self.dead_letters.values()

    def refresh(self) -> list[TableStatus]:
        """Check every table once; reload those whose version changed, each logged (a line per
        table, whoever asked: the refresher or the admin endpoint). Returns the reloaded."""
        # Snapshots last: they take longest to load (a new day is combined and encoded), and
        # the small tables are served meanwhile.
        ordered = [
            *self.tails.values(),
            *self.features.values(),
            *self.dead_letters.values(),
            *self.snapshots.values(),
        ]
        with self._refresh_lock:
            # Tombstones first: they are marked purged after every deletion committed, so the
            # tables read after them are already without the forgotten users.
            known = self.tombstones.loaded
            forgot = self.tombstones.refresh() and known
            reloaded = [table.status for table in ordered if table.refresh()]
            self.refreshes += 1
            if forgot:
                reloaded.append(self.tombstones.status)
                self.drop_cached_reads()
            if self.files is not None:
                # After a forget, every snapshot file no process maps goes, however recent.
                removed = self.files.remove_unused(force=forgot, older_than=0 if forgot else None)
                for path in removed:
                    log.info("removed unused snapshot file %s", path)
        for status in reloaded:
            log_reload(status)
        return reloaded

    def drop_cached_reads(self) -> None:
        """Forget the older snapshots and past reads computed from earlier table versions."""
        for table in self.snapshots.values():
            table.older.clear()
        self.past.clear()

    def not_ready(self) -> list[str]:
        """Why the store cannot answer every sequence from each table's newest version; empty
        when it can."""
        return [
            reason for t in self.tables() if (reason := t.status.not_ready_reason()) is not None
        ]

    def tail_of(self, spec: SequenceSpec) -> RealtimeTail:
        return self.tails[spec.signal]
