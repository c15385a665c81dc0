"""Combined snapshots as Arrow IPC files that every worker of the read service memory-maps.

Whichever worker needs a snapshot first computes it, under a file lock, writes it to a temporary
name and renames it; the others map the same file (zero-copy), so N workers share one copy in the
page cache instead of holding N. A file is named by what it holds (sequence, day and a digest of
the definition and the table files it was computed from), so any worker, at any table version,
finds it. Each process holds a shared lock on the files it maps; a file that no process holds is
removed once it has not been written for a while.
"""

from __future__ import annotations

import fcntl
import logging
import os
import time
import weakref
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pyarrow as pa

log = logging.getLogger(__name__)

SUFFIX = ".arrow"
TEMPORARY = ".tmp"


class _SharedLock:
    """A shared ``flock`` on a file, released when this object is garbage collected."""

    def __init__(self, path: Path) -> None:
        self.fd = os.open(path, os.O_RDONLY)
        try:
            fcntl.flock(self.fd, fcntl.LOCK_SH)
        except BaseException:
            os.close(self.fd)
            raise
        weakref.finalize(self, os.close, self.fd)


@dataclass(frozen=True, eq=False)
class MappedTable:
    """An Arrow table and what keeps its memory valid and its file in place."""

    table: pa.Table
    path: Path | None
    """The file mapped; None when the table lives in this process's memory."""
    lock: object = None
    """The shared lock on the file, held as long as the table is in use."""


class SnapshotFiles:
    """A folder of Arrow IPC files, written once each and memory-mapped by every process."""

    def __init__(self, folder: Path, *, keep_unused_seconds: float = 60.0) -> None:
        self.folder = folder
        self.keep_unused_seconds = keep_unused_seconds
        self.built = 0
        """Files this process computed and wrote (the others it only mapped)."""
        self._next_cleaning = 0.0

    def load(self, name: str, group: str, build: Callable[[], pa.Table]) -> MappedTable:
        """The table stored as ``name``, computed by ``build`` and stored first if no process
        has yet; ``group`` names the lock that serialises computing (one per sequence).

        A folder that cannot be written serves the computed table from memory instead.
        """
        path = self.folder / name
        mapped = self._map_existing(path)
        if mapped is not None:
            return mapped
        try:
            self.folder.mkdir(parents=True, exist_ok=True)
            lock = os.open(self.folder / f"{group}.lock", os.O_CREAT | os.O_RDWR, 0o644)
        except OSError as error:
            log.warning("snapshot files cannot be kept in %s (%s): in memory", self.folder, error)
            return MappedTable(build(), None)
        try:
            fcntl.flock(lock, fcntl.LOCK_EX)
            # Another process may have written it while this one waited for the lock.
            mapped = self._map_existing(path)
            if mapped is not None:
                return mapped
            table = build()
            try:
                mapped = self._write(path, table)
            except OSError as error:
                log.warning("writing %s failed (%s): serving it from memory", path, error)
                return MappedTable(table, None)
            self.built += 1
            return mapped
        finally:
            os.close(lock)  # releases the lock

    def _map_existing(self, path: Path) -> MappedTable | None:
        try:
            lock = _SharedLock(path)
        except OSError:  # not written yet (or no folder to hold it)
            return None
        try:
            return MappedTable(_read_mapped(path), path, lock)
        except (OSError, pa.ArrowInvalid) as error:
            # Left incomplete by a crash: computed again.
            log.warning("snapshot file %s cannot be read (%s): writing it again", path, error)
            path.unlink(missing_ok=True)
            return None

    def _write(self, path: Path, table: pa.Table) -> MappedTable:
        temporary = path.with_name(f".{path.name}.{os.getpid()}{TEMPORARY}")
        temporary.touch()
        lock = _SharedLock(temporary)  # held while writing: no cleaning removes it
        try:
            with (
                pa.OSFile(str(temporary), "wb") as sink,
                pa.ipc.new_file(sink, table.schema) as writer,
            ):
                writer.write_table(table)
            mapped = MappedTable(_read_mapped(temporary), path, lock)
            os.replace(temporary, path)
        except BaseException:
            temporary.unlink(missing_ok=True)
            raise
        return mapped

    def remove_unused(self, *, force: bool = False, older_than: float | None = None) -> list[Path]:
        """Remove the files no process maps and nobody wrote for ``keep_unused_seconds`` (or
        ``older_than`` seconds, 0 for any unmapped file, as after a user is forgotten).

        Runs at most once per that period unless ``force``; returns the files removed.
        """
        keep = self.keep_unused_seconds if older_than is None else older_than
        now = time.time()
        if not force and now < self._next_cleaning:
            return []
        self._next_cleaning = now + self.keep_unused_seconds
        removed: list[Path] = []
        try:
            entries = list(os.scandir(self.folder))
        except OSError:  # no such folder: nothing to remove
            return removed
        for entry in entries:
            if not entry.name.endswith((SUFFIX, TEMPORARY)):
                continue
            try:
                if now - entry.stat().st_mtime < keep:
                    continue
                fd = os.open(entry.path, os.O_RDONLY)
            except FileNotFoundError:
                continue
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                os.unlink(entry.path)
                removed.append(Path(entry.path))
            except (BlockingIOError, FileNotFoundError):
                pass  # mapped by a process, or removed by another one meanwhile
            finally:
                os.close(fd)
        return removed


def _read_mapped(path: Path) -> pa.Table:
    """Every record batch of an Arrow IPC file, referencing the mapped file (no copy)."""
    with pa.memory_map(str(path), "r") as source:
        return pa.ipc.open_file(source).read_all()
