"""Landing files on disk, read as the batch reads them: which files, how bad bytes and broken
exports are refused, and one size limit whatever the format."""

from __future__ import annotations

import json
import logging
from datetime import date
from pathlib import Path
from typing import Any

import polars as pl
import pytest
from polars.testing import assert_frame_equal

from sequence_platform.engine.decode import MAX_RECORD_BYTES
from sequence_platform.ingest.landing import (
    UnreadableLandingFile,
    landing_dir,
    landing_files,
    read_landing_days,
)
from sequence_platform.spec import Catalog, LoadedDefinition, SourceSpec
from sequence_platform.spec.models import REQUIRED_EVENT_FIELDS

DAY = date(2026, 3, 1)
SOURCE = SourceSpec(name="engagement", fields={"surface": "string", "dwell_ms": "int64"})
SCHEMA = Catalog([LoadedDefinition(SOURCE, "test")]).event_schema("engagement")
LABEL = "landing/engagement/dt=2026-03-01"


def event(event_id: str, **changes: Any) -> dict[str, Any]:
    return {
        "event_id": event_id,
        "user_id": 7,
        "item_id": 9,
        "event_type": "save",
        "event_time": "2026-03-01T10:00:00Z",
        "surface": "home",
        **changes,
    }


def line(event_id: str, **changes: Any) -> bytes:
    return json.dumps(event(event_id, **changes)).encode()


def read_days(home: Path, days: list[date]) -> tuple[pl.DataFrame, pl.DataFrame]:
    """The valid rows and the rejects of the days, each with its landing day (``dt``)."""
    decoded = read_landing_days(
        home,
        "engagement",
        days,
        SCHEMA,
        required=tuple(REQUIRED_EVENT_FIELDS),
        time_field="event_time",
    )
    return decoded.valid, decoded.rejected


def read_day(home: Path) -> tuple[pl.DataFrame, pl.DataFrame]:
    valid, rejected = read_days(home, [DAY])
    return valid.drop("dt"), rejected.drop("dt")


@pytest.fixture
def folder(tmp_path: Path) -> Path:
    day = landing_dir(tmp_path, "engagement", DAY)
    day.mkdir(parents=True)
    return day


def write_parquet(path: Path, *events: dict[str, Any]) -> None:
    pl.DataFrame(list(events)).with_columns(
        pl.col("event_time").str.to_datetime(time_zone="UTC")
    ).write_parquet(path)


@pytest.mark.parametrize("damage", ["empty", "truncated", "garbled pages"])
def test_a_broken_parquet_file_fails_the_day_naming_the_file(folder: Path, damage: str) -> None:
    """Empty and truncated files have no footer; a file with garbled pages has one, and fails
    only when its rows are read (between two healthy files)."""
    write_parquet(folder / "part-00000.parquet", *(event(f"e{i}") for i in range(2000)))
    whole = (folder / "part-00000.parquet").read_bytes()
    broken = folder / "part-00001.parquet"
    if damage == "garbled pages":
        broken.write_bytes(whole[:8] + b"\xff" * (len(whole) // 2 - 8) + whole[len(whole) // 2 :])
        (folder / "part-00002.parquet").write_bytes(whole)
    else:
        broken.write_bytes(b"" if damage == "empty" else whole[: len(whole) // 2])

    with pytest.raises(UnreadableLandingFile) as raised:
        read_day(folder.parents[2])
    message = str(raised.value)
    assert message.startswith(f"landing file {broken} (of 'engagement', day 2026-03-01) ")
    assert "not a complete Parquet file" in message
    assert message.endswith("Export the file again, or remove it, then re-run 2026-03-01.")
    assert (raised.value.path, raised.value.day) == (broken, DAY)


def test_lines_that_are_not_utf8_are_dead_letters_with_their_bytes(folder: Path) -> None:
    # Decoded with replacement characters, the first two would be one event_id, and the third
    # would be stored as 'home\ufffd(feed'.
    lines = [
        line("good-1"),
        line("badutf8-X").replace(b"badutf8-X", b"badutf8-X\xff"),
        line("badutf8-X").replace(b"badutf8-X", b"badutf8-X\xfe"),
        line("good-2", surface="homeXfeed").replace(b"homeXfeed", b"home\xc3\x28feed"),
        line("good-3"),
    ]
    (folder / "part-00000.jsonl").write_bytes(b"\n".join(lines) + b"\n")
    valid, rejected = read_day(folder.parents[2])

    assert valid["event_id"].to_list() == ["good-1", "good-3"]
    assert rejected.rows() == [
        (
            lines[1].decode("utf-8", "backslashreplace"),
            "not valid UTF-8 at byte 23 (\\xff)",
            f"{LABEL}/part-00000.jsonl:2",
        ),
        (
            lines[2].decode("utf-8", "backslashreplace"),
            "not valid UTF-8 at byte 23 (\\xfe)",
            f"{LABEL}/part-00000.jsonl:3",
        ),
        (
            lines[3].decode("utf-8", "backslashreplace"),
            f"not valid UTF-8 at byte {lines[3].index(bytes([0xC3]))} (\\xc3)",
            f"{LABEL}/part-00000.jsonl:4",
        ),
    ]
    # The bad bytes are shown escaped, so an operator can see them.
    assert '"event_id": "badutf8-X\\xff"' in rejected["record"][0]
    assert '"surface": "home\\xc3(feed"' in rejected["record"][2]


def test_suffixes_are_read_in_any_case_and_other_files_are_skipped_loudly(
    folder: Path, caplog: pytest.LogCaptureFixture
) -> None:
    (folder / "part-00000.jsonl").write_bytes(line("jsonl"))
    (folder / "part-00001.json").write_bytes(line("json") + b"\n" + line("json-2"))
    (folder / "part-00002.JSONL").write_bytes(line("upper-jsonl"))
    write_parquet(folder / "part-00003.PARQUET", event("upper-parquet"))
    write_parquet(folder / "part-00004.snappy.parquet", event("parquet"))
    skipped = [folder / "part-00005.csv", folder / "part-00006.json.gz", folder / "notes"]
    for path in skipped:
        path.write_text("event_id\nlost\n")
    (folder / "nested").mkdir()
    quiet = ["_SUCCESS", ".part-00004.snappy.parquet.crc", "part-00000.jsonl.crc", "_temporary"]
    for name in quiet[:3]:
        (folder / name).write_bytes(b"")
    (folder / quiet[3]).mkdir()

    with caplog.at_level(logging.DEBUG, logger="sequence_platform.ingest.landing"):
        valid, rejected = read_day(folder.parents[2])

    assert sorted(valid["event_id"]) == [
        "json",
        "json-2",
        "jsonl",
        "parquet",
        "upper-jsonl",
        "upper-parquet",
    ]
    assert rejected.height == 0
    warned = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    expected = [*sorted([*skipped, folder / "nested"])]
    assert len(warned) == len(expected)
    for message, path in zip(warned, expected, strict=True):
        assert message.startswith(f"landing: skipping {path}: not read, because only files ")
        assert "ending in .parquet, .jsonl, .json are (in any case)" in message
    debugged = sorted(r.getMessage() for r in caplog.records if r.levelno == logging.DEBUG)
    assert debugged == sorted(
        f"landing: skipping {folder / name} (hidden or bookkeeping file)" for name in quiet
    )
    assert landing_files(folder.parents[2], "engagement", date(2026, 3, 2)) == []


def as_parquet_row(record: dict[str, Any]) -> pl.DataFrame:
    return pl.DataFrame([record]).with_columns(
        pl.col("event_time").str.to_datetime(time_zone="UTC")
    )


def json_size(frame: pl.DataFrame) -> int:
    """The size of a typed row as JSON, the measure of its record."""
    return len(frame.select(pl.struct(pl.all()).struct.json_encode()).item().encode())


def test_one_size_limit_for_parquet_rows_and_json_lines(folder: Path) -> None:
    """A 10 MB string is refused whichever format brings it, with the field that made it big."""
    big = "x" * (10 * 1024 * 1024)
    padding = MAX_RECORD_BYTES - json_size(as_parquet_row(event("edge", surface="")))
    rows = [
        event("small"),
        event("big-parquet", surface=big),
        event("edge", surface="y" * padding),
        event("over", surface="y" * (padding + 1)),
    ]
    pl.concat([as_parquet_row(row) for row in rows]).write_parquet(folder / "part-0.parquet")
    json_line = line("big-json", surface=big)
    edge_line = line("edge-json", surface="")
    edge_line = line("edge-json", surface="y" * (MAX_RECORD_BYTES - len(edge_line)))
    (folder / "part-1.jsonl").write_bytes(b"\n".join([json_line, edge_line]))
    valid, rejected = read_day(folder.parents[2])

    assert sorted(valid["event_id"]) == ["edge", "edge-json", "small"]
    assert len(edge_line) == MAX_RECORD_BYTES
    assert valid.filter(pl.col("event_id") == "edge")["surface"].str.len_bytes().item() == padding
    big_size = json_size(as_parquet_row(rows[1]))
    limit = f"exceeds the limit of {MAX_RECORD_BYTES:,}"
    assert rejected.rows() == [
        (
            f"<{big_size:,} bytes, not kept>",
            f"record of {big_size:,} bytes {limit} (field 'surface' holds {len(big) + 2:,} bytes)",
            f"{LABEL}/part-0.parquet:2",
        ),
        (
            f"<{MAX_RECORD_BYTES + 1:,} bytes, not kept>",
            f"record of {MAX_RECORD_BYTES + 1:,} bytes {limit} "
            f"(field 'surface' holds {padding + 3:,} bytes)",
            f"{LABEL}/part-0.parquet:4",
        ),
        (
            f"<{len(json_line):,} bytes, not kept>",
            f"record of {len(json_line):,} bytes {limit}",
            f"{LABEL}/part-1.jsonl:1",
        ),
    ]


def test_days_read_together_give_each_day_read_alone_in_file_order(tmp_path: Path) -> None:
    """A range validates consecutive Parquet files of one schema in one pass (here the two files
    of March 1 and the file of March 2): the rows, the rejects, their origins (``file:row``,
    counted in each file) and their order are those of reading each day on its own. A JSON
    export and a file of another schema interleave, so results left in the order of the passes
    would differ."""
    days = [date(2026, 3, d) for d in (1, 2, 3, 4, 5)]
    folders = [landing_dir(tmp_path, "engagement", day) for day in days]
    for folder in folders:
        folder.mkdir(parents=True)
    write_parquet(
        folders[0] / "part-0.parquet",
        event("x", surface="first"),
        event("a", user_id=None),
        event("next-day", event_time="2026-03-02T01:00:00Z"),
        event("b"),
    )
    write_parquet(
        folders[0] / "part-1.parquet",
        event("", surface="empty id"),
        event("g"),
        event("h", event_time="2026-03-02T02:00:00Z"),
    )
    write_parquet(
        folders[1] / "part-0.parquet",
        event("i", event_time="2026-03-02T09:00:00Z"),
        event("j", event_time="2026-03-02T09:00:00Z", item_id=None),
    )
    (folders[2] / "part-0.jsonl").write_bytes(
        b"\n".join(
            [
                line("x", event_time="2026-03-03T09:00:00Z", surface="json"),
                b"{not json",
                line("c", event_time="2026-03-01T23:00:00Z"),
            ]
        )
    )
    # Another schema: times as text, and a column the definition does not name.
    pl.DataFrame(
        [
            event("x", event_time="2026-03-04T08:00:00Z", surface="text", note="n"),
            event("d", event_time="not a time", note="n"),
        ]
    ).write_parquet(folders[3] / "part-0.parquet")
    write_parquet(
        folders[4] / "part-0.parquet",
        event("e", event_time="2026-03-05T07:00:00Z"),
        event("y", event_time="2026-03-05T07:00:00Z", item_id=None),
    )

    together = read_days(tmp_path, days)
    alone = [read_days(tmp_path, [day]) for day in days]
    assert_frame_equal(together[0], pl.concat([valid for valid, _ in alone]))
    assert_frame_equal(together[1], pl.concat([rejected for _, rejected in alone]))
    assert together[0]["event_id"].to_list() == ["x", "b", "g", "i", "x", "x", "e"]
    assert [day.day for day in together[0]["dt"]] == [1, 1, 1, 2, 3, 4, 5]
    label = "landing/engagement/dt=2026-03-0"
    assert together[1].select("origin", "dt").rows() == [
        (f"{label}1/part-0.parquet:2", days[0]),
        (f"{label}1/part-1.parquet:1", days[0]),
        (f"{label}1/part-0.parquet:3", days[0]),
        (f"{label}1/part-1.parquet:3", days[0]),
        (f"{label}2/part-0.parquet:2", days[1]),
        (f"{label}3/part-0.jsonl:2", days[2]),
        (f"{label}3/part-0.jsonl:3", days[2]),
        (f"{label}4/part-0.parquet:2", days[3]),
        (f"{label}5/part-0.parquet:2", days[4]),
    ]
    moved = together[1].filter(pl.col("reason").str.contains("not on the landing day"))
    assert moved["reason"].to_list() == [
        "field 'event_time': 2026-03-02T01:00:00.000Z is not on the landing day dt=2026-03-01",
        "field 'event_time': 2026-03-02T02:00:00.000Z is not on the landing day dt=2026-03-01",
        "field 'event_time': 2026-03-01T23:00:00.000Z is not on the landing day dt=2026-03-03",
    ]
    with pytest.raises(ValueError, match="must ascend"):
        read_days(tmp_path, [days[1], days[0]])
