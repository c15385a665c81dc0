"""Forgetting users: every row of theirs out of every table, the old files vacuumed, a tombstone
kept so that no later write brings them back.

``forget_users`` works in this order, so that it is safe while micro-batches append:

1. a tombstone per user (``runtime.tombstones``): from this commit on, every writer leaves the
   users out — a micro-batch checks the tombstones against the very table version it commits on;
2. in every Delta table under the root (found by listing it, so older sequence versions and
   tables of removed definitions count too), an empty commit first fences out the writers
   (micro-batches and batch writes: neither lets delta-rs rebase a commit) that read the
   tombstones before step 1, then the users' rows are deleted: by ``user_id``, or
   in dead letters by the user a raw record names. A writer that commits meanwhile makes Delta
   refuse the deletion, which then starts again on the table brought up to date;
3. each table is vacuumed with a retention of zero, so the files that held the rows are gone
   from disk — time travel to a version before the deletion is no longer possible — and the
   data files of failed commits (never part of any version) that hold their rows go too;
4. the tombstones are marked purged: the read service, seeing that commit, drops what it
   cached of older table versions.

Landing files are the caller's to purge; the tombstone keeps the batch from reading them back.
"""

from __future__ import annotations

import time
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import polars as pl
import pyarrow as pa
import pyarrow.fs as pafs
import pyarrow.parquet as pq
from deltalake import CommitProperties, DeltaTable, write_deltalake
from deltalake.exceptions import CommitFailedError, DeltaError
from deltalake.fs import DeltaStorageHandler

from sequence_platform.engine.decode import RECORD
from sequence_platform.runtime.tombstones import (
    USER_ID,
    forgotten_rows,
    mark_purged,
    record_tombstones,
    user_ids,
)
from sequence_platform.storage.delta import (
    COMMIT_ATTEMPTS,
    PARQUET,
    delete_matching,
    open_table,
    retry_commits,
)
from sequence_platform.storage.layout import TOMBSTONES, TableLayout
from sequence_platform.storage.maintenance import vacuum_table

TABLE_DEPTH = 3
"""Tables lie at most this deep under the root: ``sequences/<name>/v<version>``."""
APPEND_ONLY_FAMILIES = frozenset({"realtime", "stream_archive"})
"""Tables written by micro-batches alone (and rewritten by compaction and deletions)."""
ORPHAN_AGE_SECONDS = 600
"""An unreferenced data file older than this belongs to no write in progress."""


@dataclass(frozen=True)
class TablePurge:
    """What forgetting did to one table."""

    table: str
    """The table's path under the root, e.g. ``events/engagement``."""
    rows_deleted: int
    files_vacuumed: int


@dataclass(frozen=True)
class ForgetOutcome:
    user_ids: list[int]
    forgotten_at: datetime
    tables: list[TablePurge]

    @property
    def rows_deleted(self) -> int:
        return sum(table.rows_deleted for table in self.tables)


class ForgetIncomplete(RuntimeError):
    """A table kept changing under the deletion; the tombstones stay, and running the forget
    again completes it."""


FORGET_INTERRUPTED: tuple[type[Exception], ...] = (
    ForgetIncomplete,
    DeltaError,
    OSError,
    pl.exceptions.PolarsError,
)
"""What can stop a forget part way (a commit race lost too often, a table or file that cannot
be read or written right now): the tombstones are recorded first, so running it again is safe
and completes it. The CLI and the admin endpoint both say so."""


class _RowsLeft(Exception):
    """The table still holds rows of the users after a deletion: the keys are read again."""


def forget_users(
    layout: TableLayout, users: Iterable[object], *, now: datetime | None = None
) -> ForgetOutcome:
    """Forget ``users`` (int64 user ids) everywhere in the tables of ``layout`` (see module doc).

    Raises ``ValueError`` for a user id that is not an int64 integer, before touching anything.
    """
    ids = user_ids(users)
    if ids.is_empty():
        raise ValueError("no user id given")
    forgotten_at = (now or datetime.now(UTC)).astimezone(UTC)
    record_tombstones(layout, ids, forgotten_at)
    purged = [
        purge_table(name, uri, ids, layout.storage_options) for name, uri in data_tables(layout)
    ]
    mark_purged(layout, ids, datetime.now(UTC))
    return ForgetOutcome(ids.to_list(), forgotten_at, purged)


def data_tables(layout: TableLayout) -> list[tuple[str, str]]:
    """Every Delta table under the root but the tombstones: ``(path under the root, uri)``."""
    root = layout.root.rstrip("/")
    if "://" not in root and not Path(root).is_dir():
        return []
    files = pafs.PyFileSystem(DeltaStorageHandler(root, layout.storage_options or None))
    found: list[tuple[str, str]] = []
    folders = [""]
    for _ in range(TABLE_DEPTH):
        deeper: list[str] = []
        for folder in folders:
            for info in files.get_file_info(pafs.FileSelector(folder, allow_not_found=True)):
                name = info.path.strip("/")
                last = name.rsplit("/", 1)[-1]
                if info.type != pafs.FileType.Directory or last.startswith(("_", ".")):
                    continue
                if name == TOMBSTONES or "=" in last:  # a partition folder is no table
                    continue
                uri = f"{root}/{name}"
                if open_table(uri, layout.storage_options) is None:
                    deeper.append(name)
                else:
                    found.append((name, uri))
        folders = deeper
    return sorted(found)


def purge_table(
    name: str, uri: str, users: pl.Series, storage_options: dict[str, str] | None = None
) -> TablePurge:
    """Delete the rows of ``users`` from the table, then vacuum it with a retention of zero and
    remove the data files of failed commits that hold their rows."""
    table = open_table(uri, storage_options)
    if table is None or forgotten_rows(table.schema().to_arrow().names, users) is None:
        return TablePurge(name, 0, 0)  # no such table, or one that holds no user's rows
    _fence(table, storage_options)
    deleted = 0

    def delete(fresh: DeltaTable) -> None:
        nonlocal deleted
        keys = _keys_of(fresh, users)
        if keys is None or keys.is_empty():
            return
        read = fresh.version()
        # The deletion is made on the newest version: a writer that appends before it commits
        # makes Delta refuse it, and the keys are read again from the newer version.
        fresh.update_incremental()
        moved = fresh.version() != read
        deleted += delete_matching(fresh, keys, keys.columns[0])
        if moved:
            # Rows committed after the keys were read may hold keys not among them; with no
            # commit in between, the deletion took every row of the users.
            fresh.update_incremental()
            left = _keys_of(fresh, users)
            if left is not None and not left.is_empty():
                raise _RowsLeft

    try:
        retry_commits(delete, table, retry_on=(CommitFailedError, _RowsLeft))
    except (CommitFailedError, _RowsLeft) as error:
        raise ForgetIncomplete(
            f"{uri} still holds rows of user(s) {users.to_list()} after "
            f"{COMMIT_ATTEMPTS} attempts (writers kept committing); run the forget again"
        ) from error
    vacuumed = len(vacuum_table(uri, 0, storage_options) or [])
    swept = _sweep_orphans(name, uri, table, users, storage_options)
    return TablePurge(name, deleted, vacuumed + swept)


def _fence(table: DeltaTable, storage_options: dict[str, str] | None) -> None:
    """Commit nothing (an empty append) after the tombstones: a micro-batch commits against the
    version it read the tombstones after, so one that read them before can no longer commit
    on this table, and the files it wrote are doomed to stay unreferenced."""
    empty = pl.DataFrame(schema=pl.scan_delta(table).collect_schema()).to_arrow()
    write_deltalake(
        table,
        empty,
        mode="append",
        partition_by=table.metadata().partition_columns or None,
        storage_options=storage_options or None,
        writer_properties=PARQUET,
        commit_properties=CommitProperties(custom_metadata={"sequence_platform": "forget"}),
    )


def _sweep_orphans(
    name: str,
    uri: str,
    table: DeltaTable,
    users: pl.Series,
    storage_options: dict[str, str] | None,
) -> int:
    """Remove the data files the newest version of ``table`` (at ``uri``) does not reference (a
    writer's commit failed after it wrote them) that hold rows of ``users``; the number removed.

    In the tables only micro-batches append to, any such file is doomed (see ``_fence``); in
    the others, a batch run may be about to commit a file it just wrote, so only files older
    than ``ORPHAN_AGE_SECONDS`` go.
    """
    table.update_incremental()
    unreferenced = table.vacuum(
        retention_hours=0, enforce_retention_duration=False, dry_run=True, full=True
    )
    files = pafs.PyFileSystem(DeltaStorageHandler(uri, storage_options or None))
    any_age = name.split("/", 1)[0] in APPEND_ONLY_FAMILIES
    removed = 0
    for path in unreferenced:
        [info] = files.get_file_info([path])
        if info.type != pafs.FileType.File or not path.endswith(".parquet"):
            continue
        age = time.time() - (info.mtime.timestamp() if info.mtime else time.time())
        if not any_age and age < ORPHAN_AGE_SECONDS:
            continue
        try:
            with files.open_input_file(path) as source:
                parquet = pq.ParquetFile(source)
                names = parquet.schema_arrow.names
                # Only the columns that name a user.
                frame = pl.from_arrow(
                    parquet.read(columns=[n for n in (USER_ID, RECORD) if n in names])
                )
        except (OSError, pa.ArrowInvalid):
            continue  # still being written
        assert isinstance(frame, pl.DataFrame)
        forgotten = forgotten_rows(frame.columns, users)
        if forgotten is not None and frame.select(forgotten.any()).item():
            files.delete_file(path)
            removed += 1
    return removed


def _keys_of(table: DeltaTable, users: pl.Series) -> pl.DataFrame | None:
    """The values to delete by: the users' ids where the table has a ``user_id``, else the raw
    records (dead letters) naming one of them; None for a table that holds no user's rows."""
    frame = pl.scan_delta(table)
    names = frame.collect_schema().names()
    forgotten = forgotten_rows(names, users)
    if forgotten is None:
        return None
    column = USER_ID if USER_ID in names else RECORD
    return frame.filter(forgotten).select(column).unique().collect()
