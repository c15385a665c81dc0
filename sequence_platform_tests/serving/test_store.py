"""The in-memory store without HTTP: readiness, absent tables, older snapshots, failures."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from pathlib import Path

import numpy as np
import pytest

from sequence_platform.serving.errors import NotLoaded
from sequence_platform.serving.query import SequenceQuery, resolve_query
from sequence_platform.serving.reader import read_sequences
from sequence_platform.serving.store import SnapshotStore, rows_of_keys
from sequence_platform.spec import Catalog
from sequence_platform.storage.layout import TableLayout
from sequence_platform_tests.serving.data_home import (
    D1,
    D2,
    E1,
    E2,
    write_data_home,
    write_snapshot,
)


def query(catalog: Catalog, sequence: str, users: list[int], as_of: str) -> SequenceQuery:
    spec = catalog.sequences[sequence]
    return resolve_query(
        catalog,
        spec,
        users,
        max_length=None,
        max_age_seconds=None,
        fields=None,
        as_of=as_of,
        format="records",
    )


def test_rows_of_keys_gathers_every_row_of_each_key() -> None:
    keys = np.array([1, 3, 3, 3, 5, 8, 8], dtype=np.int64)
    wanted = np.array([0, 3, 4, 8, 9], dtype=np.int64)
    assert rows_of_keys(keys, wanted).tolist() == [1, 2, 3, 5, 6]
    assert rows_of_keys(keys, np.array([2, 4], dtype=np.int64)).tolist() == []
    assert rows_of_keys(np.array([], dtype=np.int64), wanted).tolist() == []


def test_not_ready_until_read_then_absent_tables_serve_empty(
    tmp_path: Path, catalog: Catalog
) -> None:
    store = SnapshotStore(catalog, TableLayout(str(tmp_path / "tables")))
    assert len(store.not_ready()) == 4
    saves = query(catalog, "recent_saves", [1], "2026-03-03T12:00:00Z")
    with pytest.raises(NotLoaded, match="not been read yet"):
        read_sequences(store, catalog, saves)
    store.refresh()
    assert store.not_ready() == []
    served = read_sequences(store, catalog, saves)
    [document] = [json.loads(d) for d in served.documents()]
    assert (document["user_id"], document["length"]) == (1, 0)
    assert (served.snapshot.cutoff, served.realtime_watermark) == (None, None)
    assert store.refresh() == []  # nothing changed, nothing reloaded


def test_older_snapshots_are_cached_by_version_and_day(tmp_path: Path, catalog: Catalog) -> None:
    layout = TableLayout(str(tmp_path / "tables"))
    write_data_home(catalog, layout)
    store = SnapshotStore(catalog, layout, cached_older=1)
    store.refresh()
    table = store.snapshots["recent_saves"]
    latest = table.latest
    assert (latest.day, latest.frame["user_id"].to_list()) == (D2, [1, 2])
    at = datetime(2026, 3, 2, 12, tzinfo=UTC)
    older = table.snapshot_at(at)
    assert older.day == D1 and table.snapshot_at(at) is older
    assert table.snapshot_at(datetime(2026, 3, 3, tzinfo=UTC)) is latest  # cutoff == T counts
    assert table.snapshot_at(datetime(2026, 3, 1, 23, 59, tzinfo=UTC)).day is None

    # Rewriting a day of the latest window re-reads the latest snapshot, and older ones.
    version = write_snapshot(catalog, layout, "recent_saves", D1, {1: [E2], 5: [E1]})
    assert [s.name for s in store.refresh()] == ["recent_saves"]
    assert table.latest.frame is not latest.frame and table.latest.table_version == version
    assert table.latest.frame["user_id"].to_list() == [1, 2, 5]
    reread = table.snapshot_at(at)
    assert reread is not older and reread.frame["user_id"].to_list() == [1, 5]
    assert len(table.older) == 1

    # A commit that leaves the latest window alone keeps the latest snapshot in memory.
    unchanged = table.latest
    long_ago = D1 - timedelta(days=40)
    write_snapshot(catalog, layout, "recent_saves", long_ago, {})
    assert [s.name for s in store.refresh()] == ["recent_saves"]
    assert table.latest.frame is unchanged.frame


def test_an_older_snapshot_is_not_loaded_only_when_storage_fails(
    tmp_path: Path, catalog: Catalog, monkeypatch: pytest.MonkeyPatch
) -> None:
    layout = TableLayout(str(tmp_path / "tables"))
    write_data_home(catalog, layout)
    store = SnapshotStore(catalog, layout)
    store.refresh()
    table = store.snapshots["recent_saves"]
    at = datetime(2026, 3, 2, 12, tzinfo=UTC)  # before the latest cutoff: the D1 snapshot
    failure: list[Exception] = [FileNotFoundError(2, "No such file or directory")]

    def combined(*_: object) -> None:
        raise failure[0]

    monkeypatch.setattr(table, "_combined", combined)
    with pytest.raises(NotLoaded, match="cannot be read right now"):
        table.snapshot_at(at)
    failure[:] = [KeyError("a bug")]
    with pytest.raises(KeyError, match="a bug"):
        table.snapshot_at(at)


def test_a_table_that_cannot_be_read_is_reported_and_retried(
    tmp_path: Path, catalog: Catalog
) -> None:
    layout = TableLayout(str(tmp_path / "tables"))
    log = Path(layout.features("items")) / "_delta_log"
    log.mkdir(parents=True)
    (log / "00000000000000000000.json").write_text("this is not a delta log\n")
    store = SnapshotStore(catalog, layout)
    store.refresh()
    store.refresh()
    status = store.features["items"].status
    assert (status.loaded, status.errors) == (False, 2)
    assert [reason for reason in store.not_ready() if "items" in reason]
    assert all(t.loaded for t in store.tables() if t is not store.features["items"])
