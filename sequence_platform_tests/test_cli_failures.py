"""Infrastructure failures as a user meets them at the command line: a broken export, a full
disk while producing, a full disk while indexing. Each stops with a message that names the
file or table and says what to do, and loses nothing."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import polars as pl

from sequence_platform.ingest.stream import LocalStream
from sequence_platform.spec import load_catalog
from sequence_platform_tests.disks import fill, tiny_disk
from sequence_platform_tests.test_cli import run_cli


def test_materialize_names_a_truncated_landing_file(tmp_path: Path) -> None:
    home = tmp_path / "home"
    folder = home / "landing" / "engagement" / "dt=2026-03-01"
    folder.mkdir(parents=True)
    broken = folder / "part-00000.parquet"
    broken.write_bytes(b"")
    env = {
        "SEQUENCE_PLATFORM_HOME": str(home),
        "SEQUENCE_PLATFORM_START_DATE": "2026-03-01",
        "DAGSTER_HOME": str(tmp_path / "dagster"),
    }
    result = run_cli("materialize", "--end", "2026-03-01", env=env)
    output = result.stdout + result.stderr
    assert result.returncode == 1, output
    assert (
        f"landing file {broken.absolute()} (of 'engagement', day 2026-03-01) cannot be read: "
        "not a complete Parquet file; is it truncated or empty?"
    ) in output
    assert "Export the file again, or remove it, then re-run 2026-03-01." in output
    assert "events/engagement" in output and "FAILED" in output


def test_produce_on_a_full_disk_says_where_and_how_many_then_resumes(tmp_path: Path) -> None:
    with tiny_disk(tmp_path / "disk", "2m") as disk:
        env = {"SEQUENCE_PLATFORM_HOME": str(disk)}
        produce = ("produce", "--count", "20000", "--rate", "20000")
        result = run_cli(*produce, env=env)
        stream = LocalStream(disk / "stream")
        held = stream.end_offsets("engagement")[0]
        assert result.returncode == 2, result.stdout + result.stderr
        data = disk / "stream" / "engagement"
        assert 0 < held < 20_000
        lines = result.stderr.splitlines()
        assert lines[0].startswith(f"Stopped after {held:,} messages: [Errno 28] ")
        named = (f"'{data / 'messages.jsonl'}'", f"'{data / 'messages.idx'}'")
        assert lines[0].endswith(named), lines[0]
        assert lines[1] == (
            f"The stream holds those {held:,} messages and nothing after them. Free space on "
            "that disk (or set SEQUENCE_PLATFORM_HOME to a folder on a disk with room), then "
            f"add --skip {held} to this command to send the rest."
        )
        assert "Traceback" not in result.stderr

        # Doing what it says sends exactly the rest, each message once.
        subprocess.run(["mount", "-o", "remount,size=16m", str(disk)], check=True)
        rest = run_cli(*produce, "--skip", str(held), env=env)
        assert rest.returncode == 0, rest.stderr
        assert f"Sent {20_000 - held:,} messages." in rest.stdout
        messages = stream.read("engagement", 0, 0, 20_001)
        ids = [json.loads(message.value or b"")["event_id"] for message in messages]
        assert len(ids) == len(set(ids)) == 20_000


def test_index_on_a_full_disk_names_the_table_and_loses_nothing(tmp_path: Path) -> None:
    home = tmp_path / "home"
    topic = load_catalog().sources["engagement"].topic_name
    events = [
        {
            "event_id": f"e-{index:04d}",
            "user_id": 1 + index % 9,
            "item_id": 100 + index % 11,
            "event_type": "save",
            "event_time": f"2026-03-02T10:00:{index % 60:02d}.000Z",
        }
        for index in range(300)
    ]
    LocalStream(home / "stream").produce(
        topic, [(str(e["user_id"]).encode(), json.dumps(e).encode()) for e in events]
    )
    with tiny_disk(tmp_path / "disk", "4m") as disk:
        tables = disk / "tables"
        env = {"SEQUENCE_PLATFORM_HOME": str(home), "SEQUENCE_PLATFORM_TABLES_URI": str(tables)}
        filler = fill(disk)
        result = run_cli("index", env=env)
        assert result.returncode == 2, result.stdout + result.stderr
        first, second = result.stderr.splitlines()[:2]
        archive = tables / "stream_archive" / "engagement"
        assert first.startswith(
            f"Indexing stopped: could not write table {archive} (the disk is full: "
        ), first
        assert first.endswith(
            f"it holds the messages of {topic}/0 before offset 0, and the next run resumes "
            "from there."
        )
        assert second == (
            "Nothing was lost: each table commits its stream offsets with its rows, so what was "
            f"not written is still in the stream. Free space on the disk of {archive}, then run "
            "'sequence-platform index' again: it resumes where each table stopped."
        )
        assert "Traceback" not in result.stderr

        filler.unlink()
        again = run_cli("index", env=env)
        assert again.returncode == 0, again.stderr
        realtime = pl.read_delta(str(tables / "realtime" / "engagement_enriched"))
        assert sorted(realtime["event_id"]) == [e["event_id"] for e in events]
