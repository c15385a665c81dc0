"""Compaction sorts a day by user once and then leaves it alone; vacuum refuses nonsense."""

from __future__ import annotations

from datetime import date
from pathlib import Path

import polars as pl
import pytest
from deltalake import DeltaTable, write_deltalake

from sequence_platform.storage.maintenance import compact_table, vacuum_table

D1, D2, D3 = date(2026, 3, 1), date(2026, 3, 2), date(2026, 3, 3)


def append(uri: str, day: date, users: list[int]) -> None:
    frame = pl.DataFrame({"dt": [day] * len(users), "user_id": users, "n": range(len(users))})
    write_deltalake(uri, frame.to_arrow(), mode="append", partition_by=["dt"])


def files_by_day(uri: str) -> dict[date, list[list[int]]]:
    table = DeltaTable(uri)
    days: dict[date, list[list[int]]] = {}
    for file in table.file_uris():
        users = pl.read_parquet(file)
        day = date.fromisoformat(file.split("dt=")[1][:10])
        days.setdefault(day, []).append(users["user_id"].to_list())
    return days


def test_compaction_sorts_each_day_by_user_once(tmp_path: Path) -> None:
    uri = str(tmp_path / "t")
    append(uri, D1, [5, -3, 9])
    append(uri, D1, [2, 7])  # two small files: rewritten into one, sorted
    append(uri, D2, [4, 1, 3])  # one file out of order: sorted
    append(uri, D3, [1, 2, 2, 8])  # one file in order: left alone
    before = pl.read_delta(uri).sort("dt", "user_id", "n")

    outcome = compact_table(uri)
    assert outcome is not None
    assert (outcome.days, outcome.files_removed, outcome.files_added) == (2, 3, 2)
    assert outcome.sorted_by == "user_id"
    assert files_by_day(uri) == {D1: [[-3, 2, 5, 7, 9]], D2: [[1, 3, 4]], D3: [[1, 2, 2, 8]]}
    assert pl.read_delta(uri).sort("dt", "user_id", "n").equals(before)

    version = DeltaTable(uri).version()
    again = compact_table(uri)
    assert again is not None and (again.days, again.files_added) == (0, 0)
    assert DeltaTable(uri).version() == version

    append(uri, D3, [0])  # overlaps the day's file: the day is sorted again
    third = compact_table(uri)
    assert third is not None and third.days == 1
    assert files_by_day(uri)[D3] == [[0, 1, 2, 2, 8]]
    assert compact_table(str(tmp_path / "absent")) is None


def test_tables_without_users_are_compacted_in_place(tmp_path: Path) -> None:
    uri = str(tmp_path / "t")
    for value in (3, 1, 2):
        frame = pl.DataFrame({"dt": [D1], "x": [value]})
        write_deltalake(uri, frame.to_arrow(), mode="append", partition_by=["dt"])
    outcome = compact_table(uri)
    assert outcome is not None
    assert (outcome.days, outcome.files_removed, outcome.files_added) == (1, 3, 1)
    assert outcome.sorted_by is None
    assert sorted(pl.read_delta(uri)["x"]) == [1, 2, 3]


def test_vacuum_refuses_a_negative_retention(tmp_path: Path) -> None:
    uri = str(tmp_path / "t")
    append(uri, D1, [1])
    with pytest.raises(ValueError, match="0 hours or more, not -1"):
        vacuum_table(uri, -1)
    assert vacuum_table(str(tmp_path / "absent")) is None
