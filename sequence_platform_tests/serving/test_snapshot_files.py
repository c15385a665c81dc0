"""Snapshot files: computed once, memory-mapped by every store serving the same folder, computed
again when unreadable, removed once no process maps them."""

from __future__ import annotations

import fcntl
import json
import os
from pathlib import Path

import pytest

from sequence_platform.serving.query import resolve_query
from sequence_platform.serving.reader import read_sequences
from sequence_platform.serving.snapshot_files import SnapshotFiles
from sequence_platform.serving.store import SnapshotStore
from sequence_platform.spec import Catalog
from sequence_platform.storage.layout import TableLayout
from sequence_platform_tests.serving.data_home import (
    D3,
    E1,
    E2,
    E3,
    E4,
    E5,
    E8,
    write_data_home,
    write_snapshot,
)

T = "2026-03-03T12:00:00Z"


@pytest.fixture
def layout(tmp_path: Path, catalog: Catalog) -> TableLayout:
    layout = TableLayout(str(tmp_path / "tables"))
    write_data_home(catalog, layout)
    return layout


def answers(store: SnapshotStore, catalog: Catalog) -> list[dict]:
    """Every sequence of users 1, 2 and 3 at T, as JSON documents."""
    documents = []
    for name, spec in catalog.sequences.items():
        query = resolve_query(
            catalog,
            spec,
            [1, 2, 3],
            max_length=None,
            max_age_seconds=None,
            fields=None,
            as_of=T,
            format="records",
        )
        documents += [json.loads(d) for d in read_sequences(store, catalog, query).documents()]
        assert name in documents[-1]["sequence"]
    return documents


def mapped_files() -> str:
    return Path("/proc/self/maps").read_text()


def test_the_first_store_writes_a_file_the_others_map(
    tmp_path: Path, catalog: Catalog, layout: TableLayout
) -> None:
    folder = tmp_path / "cache"
    first = SnapshotStore(catalog, layout, files=SnapshotFiles(folder))
    first.refresh()
    second = SnapshotStore(catalog, layout, files=SnapshotFiles(folder))
    second.refresh()
    assert first.files is not None and second.files is not None
    assert (first.files.built, second.files.built) == (2, 0)  # one file per sequence
    files = sorted(path.name for path in folder.glob("*.arrow"))
    assert [name.rsplit("-", 1)[0] for name in files] == [
        "recent_engagement-v1-2026-03-02",
        "recent_saves-v1-2026-03-02",
    ]
    for name in catalog.sequences:
        one, other = first.snapshots[name].latest, second.snapshots[name].latest
        assert one.columns.mapped.path == other.columns.mapped.path
        assert str(one.columns.mapped.path) in mapped_files()  # mapped, not read into memory
        assert one.frame.equals(other.frame)
    in_memory = SnapshotStore(catalog, layout)
    in_memory.refresh()
    assert answers(second, catalog) == answers(in_memory, catalog)
    assert [d["length"] for d in answers(second, catalog)] == [6, 2, 0, 4, 2, 0]


def test_a_file_left_incomplete_is_written_again(
    tmp_path: Path, catalog: Catalog, layout: TableLayout
) -> None:
    folder = tmp_path / "cache"
    SnapshotStore(catalog, layout, files=SnapshotFiles(folder)).refresh()
    for path in folder.glob("*.arrow"):
        whole = path.read_bytes()
        path.write_bytes(whole[: len(whole) // 2])
    store = SnapshotStore(catalog, layout, files=SnapshotFiles(folder))
    store.refresh()
    assert store.files is not None and store.files.built == 2
    assert store.not_ready() == []
    assert [d["length"] for d in answers(store, catalog)] == [6, 2, 0, 4, 2, 0]


def test_a_folder_that_cannot_be_written_serves_from_memory(
    tmp_path: Path, catalog: Catalog, layout: TableLayout
) -> None:
    blocked = tmp_path / "a-file"
    blocked.write_text("not a folder")
    store = SnapshotStore(catalog, layout, files=SnapshotFiles(blocked / "cache"))
    store.refresh()
    assert store.not_ready() == []
    assert store.snapshots["recent_saves"].latest.columns.mapped.path is None
    assert [d["length"] for d in answers(store, catalog)] == [6, 2, 0, 4, 2, 0]


def test_files_no_process_maps_are_removed(
    tmp_path: Path, catalog: Catalog, layout: TableLayout
) -> None:
    folder = tmp_path / "cache"
    files = SnapshotFiles(folder, keep_unused_seconds=0)
    store = SnapshotStore(catalog, layout, files=files)
    store.refresh()
    before = {path.name for path in folder.glob("*.arrow")}
    # Another process maps the saves file of 03-02 (a shared lock, as a store takes).
    [saves] = [path for path in folder.glob("recent_saves-*.arrow")]
    other = os.open(saves, os.O_RDONLY)
    fcntl.flock(other, fcntl.LOCK_SH)
    try:
        # A new day: both sequences get a new latest snapshot and let go of the old files.
        write_snapshot(catalog, layout, "recent_saves", D3, {1: [E4, E3, E2, E1], 2: [E5]})
        write_snapshot(catalog, layout, "recent_engagement", D3, {1: [E4, E8, E3, E2, E1], 2: [E5]})
        store.refresh()  # cleans as it goes
        after = {path.name for path in folder.glob("*.arrow")}
        assert saves.name in after  # still mapped by the other process
        [engagement] = [name for name in before if name.startswith("recent_engagement")]
        assert engagement not in after
        assert len(after - before) == 2  # the new latest snapshots
    finally:
        os.close(other)
    assert files.remove_unused(force=True) == [saves]
    assert {path.name for path in folder.glob("*.arrow")} == after - {saves.name}
