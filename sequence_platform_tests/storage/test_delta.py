"""Delta writes: predicate overwrites own their days, appends record their offsets once."""

from __future__ import annotations

import threading
from datetime import UTC, date, datetime
from pathlib import Path

import polars as pl
import pyarrow.parquet as pq
import pytest
from deltalake import DeltaTable

from sequence_platform.runtime.tombstones import mark_purged, record_tombstones
from sequence_platform.storage.delta import (
    append_once,
    committed_version,
    committed_versions,
    delete_keys,
    overwrite_days,
    scan_days,
)
from sequence_platform.storage.layout import TableLayout
from sequence_platform.storage.maintenance import compact_table, expire_days, vacuum_table

SCHEMA = pl.Schema({"x": pl.Int64()})


def rows(*pairs: tuple[date, int]) -> pl.DataFrame:
    return pl.DataFrame({"dt": [d for d, _ in pairs], "x": [x for _, x in pairs]})


def content(uri: str) -> list[tuple[date, int]]:
    return sorted(scan_days(uri, SCHEMA).collect().iter_rows())


def test_overwrite_replaces_exactly_its_days(tmp_path: Path) -> None:
    uri = str(tmp_path / "t")
    d1, d2, d3 = date(2026, 3, 1), date(2026, 3, 2), date(2026, 3, 3)
    overwrite_days(uri, rows((d1, 1), (d2, 2), (d3, 3)), d1, d3)
    overwrite_days(uri, rows((d2, 20), (d2, 21)), d2, d2)
    assert content(uri) == [(d1, 1), (d2, 20), (d2, 21), (d3, 3)]
    stats = overwrite_days(uri, rows((d2, 20), (d2, 21)), d2, d2)
    assert content(uri) == [(d1, 1), (d2, 20), (d2, 21), (d3, 3)]
    assert (stats.rows, stats.files) == (2, 1)
    overwrite_days(uri, rows().cast({"x": pl.Int64, "dt": pl.Date}), d1, d1)
    assert content(uri) == [(d2, 20), (d2, 21), (d3, 3)]


def test_overwrite_filters_rows_through_keep_before_it_commits(tmp_path: Path) -> None:
    """``keep`` is asked when the write commits, not when its rows were computed: a user
    forgotten while a batch step worked stays out of what it writes."""
    uri = str(tmp_path / "t")
    d1 = date(2026, 3, 1)
    banned: set[int] = set()
    asked: list[int] = []

    def keep(frame: pl.DataFrame) -> pl.DataFrame:
        asked.append(frame.height)
        return frame.filter(~pl.col("x").is_in(list(banned)))

    computed = rows((d1, 1), (d1, 2), (d1, 3))
    banned.add(2)  # forgotten after the rows were computed, before the write
    stats = overwrite_days(uri, computed, d1, d1, keep=keep)
    assert content(uri) == [(d1, 1), (d1, 3)]
    assert (stats.rows, stats.days[d1].rows, asked) == (2, 2, [3])


def test_overwrite_refuses_rows_outside_its_days(tmp_path: Path) -> None:
    uri = str(tmp_path / "t")
    d1, d2 = date(2026, 3, 1), date(2026, 3, 2)
    overwrite_days(uri, rows((d1, 1)), d1, d1)
    with pytest.raises(Exception, match="failed validation"):
        overwrite_days(uri, rows((d2, 2)), d1, d1)
    assert content(uri) == [(d1, 1)]


def test_append_once_and_maintenance_keep_offsets_and_contents(tmp_path: Path) -> None:
    uri = str(tmp_path / "t")
    d1, d2 = date(2026, 3, 1), date(2026, 3, 2)
    assert append_once(uri, rows((d1, 1)), "topic/0", 10) is not None
    assert append_once(uri, rows((d1, 1)), "topic/0", 10) is None
    assert append_once(uri, rows((d1, 1)), "topic/0", 9) is None
    assert append_once(uri, rows((d2, 2)), "topic/0", 20) is not None
    assert append_once(uri, rows((d2, 3)), "topic/1", 5) is not None
    assert (committed_version(uri, "topic/0"), committed_version(uri, "topic/1")) == (20, 5)
    assert committed_version(uri, "other/0") == 0

    # Maintenance as table_maintenance runs it: expire, compact, vacuum.
    assert expire_days(uri, d2) == 1
    compacted = compact_table(uri)
    assert compacted is not None
    assert (compacted.files_removed, compacted.files_added) == (2, 1)
    assert vacuum_table(uri) is not None
    assert content(uri) == [(d2, 2), (d2, 3)]
    assert (committed_version(uri, "topic/0"), committed_version(uri, "topic/1")) == (20, 5)
    assert compact_table(str(tmp_path / "absent")) is None


@pytest.mark.parametrize("attempt", range(25))
def test_first_writes_racing_to_create_a_table_lose_nothing(tmp_path: Path, attempt: int) -> None:
    """Writers that each find no table and create it at once: every row of every one stays.

    Before creation was a commit of its own, a first write went out as a whole-table
    overwrite and wiped whatever another writer had committed in between.
    """
    uri = str(tmp_path / "t")
    days = [date(2026, 3, day) for day in range(1, 4)]
    start = threading.Barrier(len(days) + 1)
    errors: list[BaseException] = []

    def overwrite(day: date) -> None:
        start.wait()
        try:
            overwrite_days(uri, rows((day, day.day), (day, 10 * day.day)), day, day)
        except BaseException as error:
            errors.append(error)

    def append() -> None:
        start.wait()
        try:
            assert append_once(uri, rows((date(2026, 3, 9), 99)), "topic/0", 1) is not None
        except BaseException as error:
            errors.append(error)

    writers = [threading.Thread(target=overwrite, args=(day,)) for day in days]
    writers.append(threading.Thread(target=append))
    for writer in writers:
        writer.start()
    for writer in writers:
        writer.join()
    assert errors == []
    expected = [(day, x) for day in days for x in (day.day, 10 * day.day)]
    assert content(uri) == [*expected, (date(2026, 3, 9), 99)]


@pytest.mark.parametrize(
    "step",
    [
        # Between the write's filtering and its commit: the commit is refused rather than
        # rebased, and the attempt after it filters the rows again.
        "write_deltalake",
        # Before the write reads the table: it filters the rows after that read.
        "ensure_table",
    ],
)
def test_a_batch_write_leaves_out_a_user_forgotten_while_it_runs(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, step: str
) -> None:
    """A user forgotten while a batch write is under way (a tombstone, then the forget's empty
    commit: its fence), just before the write's ``step``: the user stays out of its commit."""
    from datetime import UTC, datetime
    from typing import Any

    import deltalake

    from sequence_platform.runtime.tombstones import Tombstones, record_tombstones
    from sequence_platform.storage import delta
    from sequence_platform.storage.layout import TableLayout

    layout = TableLayout(str(tmp_path))
    uri = str(tmp_path / "events")
    day = date(2026, 3, 1)
    frame = pl.DataFrame({"dt": [day, day], "user_id": [1, 2]})
    overwrite_days(uri, frame, day, day)  # the table exists
    tombstones = Tombstones(layout)
    real_step = getattr(delta, step)
    fenced: list[int] = []

    def forget_first(*args: Any, **kwargs: Any) -> Any:
        if not fenced:  # the forget happens once
            fenced.append(1)
            record_tombstones(layout, pl.Series([2], dtype=pl.Int64), datetime.now(UTC))
            empty = pl.DataFrame(schema=frame.schema).to_arrow()
            deltalake.write_deltalake(uri, empty, mode="append", partition_by=["dt"])
        return real_step(*args, **kwargs)

    monkeypatch.setattr(delta, step, forget_first)
    overwrite_days(uri, frame, day, day, keep=tombstones.keep)
    assert pl.read_delta(uri)["user_id"].to_list() == [1]


def test_retry_commits_tries_again_on_the_new_version_then_gives_up(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A lost race is tried again on the table brought up to date, at most ``attempts`` times
    in all, the last refusal raised; any other error is not retried."""
    import deltalake
    from deltalake.exceptions import CommitFailedError

    from sequence_platform.storage import delta

    monkeypatch.setattr(delta, "RETRY_PAUSE_SECONDS", 0)
    uri = str(tmp_path / "t")
    d1 = date(2026, 3, 1)
    overwrite_days(uri, rows((d1, 1)), d1, d1)
    table = deltalake.DeltaTable(uri)
    seen: list[int] = []

    def lose_twice(fresh: deltalake.DeltaTable) -> int:
        seen.append(fresh.version())
        if len(seen) < 3:
            overwrite_days(uri, rows((d1, len(seen))), d1, d1)  # a concurrent commit
            raise CommitFailedError("lost")
        return len(seen)

    assert delta.retry_commits(lose_twice, table, 3) == 3
    assert seen == [1, 2, 3]

    def always_lose(fresh: deltalake.DeltaTable) -> int:
        seen.append(fresh.version())
        raise CommitFailedError("lost")

    seen.clear()
    with pytest.raises(CommitFailedError):
        delta.retry_commits(always_lose, table, 4)
    assert len(seen) == 4

    def broken(fresh: deltalake.DeltaTable) -> int:
        seen.append(fresh.version())
        raise ValueError("not a race")

    seen.clear()
    with pytest.raises(ValueError, match="not a race"):
        delta.retry_commits(broken, table)
    assert len(seen) == 1


def test_committed_versions_reads_every_writer_from_one_log(tmp_path: Path) -> None:
    uri = str(tmp_path / "t")
    assert committed_versions(uri, ["topic/0", "topic/1"]) == {"topic/0": 0, "topic/1": 0}
    append_once(uri, rows((date(2026, 3, 1), 1)), "topic/0", 10)
    append_once(uri, rows((date(2026, 3, 1), 2)), "topic/1", 4)
    assert committed_versions(uri, ["topic/0", "topic/1", "topic/2"]) == {
        "topic/0": 10,
        "topic/1": 4,
        "topic/2": 0,
    }
    assert committed_version(uri, "topic/1") == 4


def test_every_write_path_writes_zstd_files_without_dictionaries(tmp_path: Path) -> None:
    """Batch overwrites, stream appends, compaction (sorted by user or not) and deletions all
    write files of one kind (``PARQUET``): zstd, plain-encoded, whichever path wrote last."""
    uri, by_user = str(tmp_path / "t"), str(tmp_path / "users")
    d1, d2 = date(2026, 3, 1), date(2026, 3, 2)
    repeated = [(d1, x % 3) for x in range(1000)]
    overwrite_days(uri, rows(*repeated), d1, d1)
    append_once(uri, rows(*[(d2, x % 3) for x in range(1000)]), "topic/0", 1)
    append_once(uri, rows((d2, 7)), "topic/0", 2)
    for offset in (1, 2):
        users = pl.DataFrame({"dt": [d1] * 100, "user_id": [u % 3 for u in range(100)]})
        append_once(by_user, users, "topic/0", offset)

    def encodings(table: str) -> set[tuple[str, tuple[str, ...]]]:
        found = set()
        for path in DeltaTable(table).file_uris():
            column = pq.ParquetFile(path).metadata.row_group(0).column(0)
            found.add((column.compression, tuple(sorted(column.encodings))))
        return found

    written = {("ZSTD", ("PLAIN", "RLE"))}
    assert encodings(uri) == encodings(by_user) == written
    for table in (uri, by_user):
        compacted = compact_table(table)
        assert compacted is not None and compacted.files_added == 1
    assert encodings(uri) == encodings(by_user) == written
    assert delete_keys(uri, pl.DataFrame({"x": [7]}), "x") == 1
    assert encodings(uri) == encodings(by_user) == written
    # The tombstones of forgotten users: appended, then marked purged (a merge rewrites them).
    layout = TableLayout(str(tmp_path / "tables"))
    record_tombstones(layout, pl.Series([1, 2, 3] * 100), datetime(2026, 3, 2, tzinfo=UTC))
    assert encodings(layout.tombstones()) == written
    mark_purged(layout, pl.Series([2]), datetime(2026, 3, 3, tzinfo=UTC))
    assert encodings(layout.tombstones()) == written
    assert content(uri) == sorted([*repeated, *[(d2, x % 3) for x in range(1000)]])
