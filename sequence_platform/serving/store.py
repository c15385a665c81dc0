"""What the read service keeps in memory, each table reloaded only when its Delta version changes.

Per sequence: the latest snapshot partition (older ones on demand, in a small LRU cache); per
signal: the real-time rows for the tail; per request-enriched feature table: every version.
Requests never open a table. The refresher is the only writer: it builds new state off to the
side and swaps one reference, so a request always reads one consistent version of each table.
"""

from __future__ import annotations

import bisect
import logging
import threading
from abc import ABC, abstractmethod
from collections import OrderedDict
from collections.abc import Iterator
from dataclasses import dataclass, field, replace
from datetime import UTC, date, datetime, timedelta
from typing import NamedTuple

import numpy as np
import polars as pl
from deltalake import DeltaTable
from deltalake.fs import DeltaStorageHandler
from pyarrow.fs import FileType

from sequence_platform.engine.sequence import empty_snapshot, snapshot_cutoff, stored_days
from sequence_platform.runtime.microbatch import STREAM_OFFSET, STREAM_PARTITION
from sequence_platform.runtime.snapshots import snapshot_from_table
from sequence_platform.serving.errors import NotLoaded
from sequence_platform.spec.catalog import Catalog
from sequence_platform.spec.models import SequenceSpec
from sequence_platform.storage.delta import DT, open_table
from sequence_platform.storage.layout import TableLayout

log = logging.getLogger(__name__)

EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
ONE_MS = timedelta(milliseconds=1)


def epoch_ms(moment: datetime) -> int:
    return (moment - EPOCH) // ONE_MS


def rows_of_keys(sorted_keys: np.ndarray, keys: np.ndarray) -> np.ndarray:
    """Row positions, in ``sorted_keys`` order per key, of every row whose key is in ``keys``.

    ``keys`` must be sorted and distinct; the result is ascending.
    """
    low = np.searchsorted(sorted_keys, keys, side="left")
    high = np.searchsorted(sorted_keys, keys, side="right")
    counts = high - low
    total = int(counts.sum())
    if total == 0:
        return np.empty(0, dtype=np.int64)
    # Consecutive ranges low..high as one vector: each range's start repeated, plus a ramp.
    offsets = np.repeat(low - np.cumsum(counts) + counts, counts)
    return (offsets + np.arange(total)).astype(np.int64)


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


@dataclass(frozen=True)
class Snapshot:
    """One snapshot partition in memory: a row per user, sorted by ``user_id``."""

    frame: pl.DataFrame
    day: date | None = None
    """The partition, or None for the empty snapshot served when no cutoff is early enough."""
    table_version: int | None = None
    user_ids: np.ndarray = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        ids = self.frame["user_id"].to_numpy().astype(np.int64, copy=False)
        object.__setattr__(self, "user_ids", ids)

    @property
    def cutoff(self) -> datetime | None:
        return None if self.day is None else snapshot_cutoff(self.day)

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
                log.warning("reading %s failed: %s", status.label, reason)
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
    days: tuple[date, ...]
    latest: Snapshot
    latest_files: frozenset[str]


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


class SnapshotTable(WatchedTable):
    """The snapshot table of one sequence: the latest partition in memory, older ones cached."""

    kind = "sequence"

    def __init__(
        self,
        spec: SequenceSpec,
        catalog: Catalog,
        layout: TableLayout,
        *,
        cached_older: int = 4,
    ) -> None:
        super().__init__(spec.name, layout.sequence(spec), layout.storage_options)
        self.spec = spec
        self._empty = empty_snapshot(spec, catalog).collect()
        self.schema = self._empty.schema
        self.older = SnapshotLRU(cached_older)
        self._state = _SnapshotTableState(None, (), Snapshot(self._empty), frozenset())

    @property
    def latest(self) -> Snapshot:
        return self._state.latest

    def _absent(self) -> int:
        self._state = _SnapshotTableState(None, (), Snapshot(self._empty), frozenset())
        return 0

    def _load(self, table: DeltaTable) -> int:
        version = table.version()
        files = partition_files(table)
        days = tuple(sorted(files))
        previous = self._state
        window = self._window_files(files, days[-1]) if days else frozenset()
        if not days:
            latest = Snapshot(self._empty, None, version)
        elif previous.latest.day == days[-1] and previous.latest_files == window:
            # A commit that left the newest window alone (e.g. a backfill of older days).
            latest = replace(previous.latest, table_version=version)
        else:
            latest = Snapshot(self._read_day(table, days[-1]), days[-1], version)
        # A table object of its own at this version: the refresher moves the watched one on.
        pinned = DeltaTable(
            table.table_uri, version=version, storage_options=self._storage_options or None
        )
        self._state = _SnapshotTableState(pinned, days, latest, window)
        return latest.frame.height

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
        # cutoff(D) = D+1 00:00 <= at  exactly when  D <= at's UTC date - 1 day.
        position = bisect.bisect_right(state.days, at.astimezone(UTC).date() - timedelta(days=1))
        if position == 0 or state.table is None:
            return Snapshot(self._empty, None, state.latest.table_version)
        day = state.days[position - 1]
        key = (state.latest.table_version, day)
        cached = self.older.get(key)
        if cached is not None:
            return cached
        try:
            snapshot = Snapshot(self._read_day(state.table, day), day, key[0])
        except Exception as error:
            log.warning("reading snapshot %s of %s failed: %s", day, self.spec.name, error)
            raise NotLoaded(
                f"the snapshot of '{self.spec.name}' for {day} cannot be read right now; retry"
            ) from error
        self.older.put(key, snapshot)
        return snapshot

    def _read_day(self, table: DeltaTable, day: date) -> pl.DataFrame:
        """The snapshot at the cutoff of ``day``: the stored days of its window, combined."""
        return snapshot_from_table(table, self.spec, self.schema, day)


@dataclass(frozen=True)
class _TailState:
    rows: pl.DataFrame
    """Signal rows sorted by ``user_id``, then in delivery order (partition, offset)."""
    user_ids: np.ndarray
    event_times: np.ndarray
    """Every row's ``event_time`` in epoch milliseconds, ascending (for the watermark)."""


class RealtimeTail(WatchedTable):
    """The rows of ``realtime/<signal>`` that serving merges on top of snapshots.

    Micro-batches only append, so a new version is read as the data files it added; only a
    version that removed files (compaction, retention) makes it read the table again. Rows are
    kept in delivery order per user, which is the order the engine's de-duplication relies on.
    """

    kind = "realtime"

    def __init__(self, signal: str, catalog: Catalog, layout: TableLayout) -> None:
        super().__init__(signal, layout.realtime(signal), layout.storage_options)
        self.schema = pl.Schema(
            {
                **dict(catalog.signal_schema(signal)),
                STREAM_PARTITION: pl.Int32(),
                STREAM_OFFSET: pl.Int64(),
            }
        )
        self._files: frozenset[str] = frozenset()
        self.files_read = 0
        """Data files read since start: what the incremental refresh saves is visible here."""
        self._state = self._index(pl.DataFrame(schema=self.schema))

    def _absent(self) -> int:
        self._files = frozenset()
        self._state = self._index(pl.DataFrame(schema=self.schema))
        return 0

    def _load(self, table: DeltaTable) -> int:
        files = frozenset(pl.DataFrame(table.get_add_actions(flatten=True))["path"].to_list())
        if self.status.loaded and self._files <= files:
            added = sorted(files - self._files)
            fresh = self._read_files(table, added)
            rows = pl.concat([self._state.rows, fresh], how="vertical_relaxed")
            self.files_read += len(added)
        else:
            rows = self._project(pl.scan_delta(table))
            self.files_read += len(files)
        self._files = files
        self._state = self._index(rows)
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

    @staticmethod
    def _index(rows: pl.DataFrame) -> _TailState:
        ordered = rows.filter(pl.col("user_id").is_not_null()).sort(
            "user_id", STREAM_PARTITION, STREAM_OFFSET
        )
        times = ordered["event_time"].dt.epoch("ms").drop_nulls().sort().to_numpy()
        return _TailState(
            ordered,
            ordered["user_id"].to_numpy().astype(np.int64, copy=False),
            times.astype(np.int64, copy=False),
        )

    def rows_for(self, user_ids: np.ndarray, start: datetime, end: datetime) -> pl.DataFrame:
        """Rows of ``user_ids`` (sorted, distinct) with ``start <= event_time < end``."""
        self._require_loaded()
        state = self._state
        rows = state.rows[rows_of_keys(state.user_ids, user_ids)]
        time_column = pl.col("event_time")
        return rows.filter(
            (time_column >= pl.lit(start, dtype=self.schema["event_time"]))
            & (time_column < pl.lit(end, dtype=self.schema["event_time"]))
        )

    def watermark_before(self, at: datetime) -> datetime | None:
        """The greatest ``event_time`` of any real-time row before ``at``, or None."""
        times = self._state.event_times
        position = int(np.searchsorted(times, epoch_ms(at), side="left"))
        return None if position == 0 else EPOCH + int(times[position - 1]) * ONE_MS


class FeatureVersions(WatchedTable):
    """Every version of a feature table (they are small), for request-time enrichment."""

    kind = "features"

    def __init__(self, table: str, catalog: Catalog, layout: TableLayout) -> None:
        super().__init__(table, layout.features(table), layout.storage_options)
        spec = catalog.feature_tables[table]
        self.schema = catalog.feature_schema(table)
        self._order = [spec.key, spec.as_of]
        self._rows = pl.DataFrame(schema=self.schema)

    @property
    def rows(self) -> pl.DataFrame:
        self._require_loaded()
        return self._rows

    def _absent(self) -> int:
        self._rows = pl.DataFrame(schema=self.schema)
        return 0

    def _load(self, table: DeltaTable) -> int:
        self._rows = read_table(table, self.schema).sort(self._order)
        return self._rows.height


# -- the store -------------------------------------------------------------------------------


class SnapshotStore:
    """Every table the read service needs for a catalog, kept in memory."""

    def __init__(self, catalog: Catalog, layout: TableLayout, *, cached_older: int = 4) -> None:
        self.catalog = catalog
        self.layout = layout
        self.snapshots = {
            name: SnapshotTable(spec, catalog, layout, cached_older=cached_older)
            for name, spec in catalog.sequences.items()
        }
        signals = sorted({spec.signal for spec in catalog.sequences.values()})
        self.tails = {signal: RealtimeTail(signal, catalog, layout) for signal in signals}
        tables = sorted(
            {e.table for spec in catalog.sequences.values() for e in spec.request_enrich}
        )
        self.features = {table: FeatureVersions(table, catalog, layout) for table in tables}
        self._refresh_lock = threading.Lock()
        self.refreshes = 0

    def tables(self) -> Iterator[WatchedTable]:
        yield from self.snapshots.values()
        yield from self.tails.values()
        yield from self.features.values()

    def refresh(self) -> list[TableStatus]:
        """Check every table once; reload those whose version changed. Returns the reloaded."""
        with self._refresh_lock:
            reloaded = [table.status for table in self.tables() if table.refresh()]
            self.refreshes += 1
        return reloaded

    def not_ready(self) -> list[str]:
        """Why the store cannot answer every sequence from each table's newest version; empty
        when it can."""
        return [
            reason for t in self.tables() if (reason := t.status.not_ready_reason()) is not None
        ]

    def tail_of(self, spec: SequenceSpec) -> RealtimeTail:
        return self.tails[spec.signal]

    def feature_rows(self, spec: SequenceSpec) -> dict[str, pl.LazyFrame]:
        """The feature tables ``spec`` enriches from at request time, every version."""
        return {e.table: self.features[e.table].rows.lazy() for e in spec.request_enrich}
