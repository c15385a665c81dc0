"""The embedded local stream on a real disk: what bytes go in come out, a full disk takes a
batch whole or not at all, and micro-batches refuse what is not UTF-8 as the batch does."""

from __future__ import annotations

import json
import os
from datetime import UTC, datetime
from pathlib import Path

import polars as pl
import pytest

from sequence_platform.ingest.stream import LocalStream
from sequence_platform.runtime.live import ProduceStopped, produce_messages
from sequence_platform.runtime.microbatch import RealtimeWriter
from sequence_platform.runtime.tombstones import Tombstones, record_tombstones
from sequence_platform.spec import load_catalog
from sequence_platform.storage.layout import TableLayout
from sequence_platform_tests.disks import fill, tiny_disk

TOPIC = "engagement"


def message(index: int, **changes: object) -> tuple[bytes, bytes]:
    event = {
        "event_id": f"m-{index:05d}",
        "user_id": 1 + index % 5,
        "item_id": 100 + index % 7,
        "event_type": "save",
        "event_time": "2026-03-02T10:00:00.000Z",
        "surface": "home_feed",
        **changes,
    }
    return str(event["user_id"]).encode(), json.dumps(event).encode()


def test_micro_batches_refuse_messages_that_are_not_utf8(tmp_path: Path) -> None:
    stream = LocalStream(tmp_path / "stream")
    bad = [
        message(1)[1].replace(b"m-00001", b"badutf8-X\xff"),
        message(2)[1].replace(b"m-00002", b"badutf8-X\xfe"),
        message(3)[1].replace(b"home_feed", b"home\xc3\x28feed"),
    ]
    stream.produce(TOPIC, [message(0), *((b"1", value) for value in bad), message(4)])
    # The local stream hands back the very bytes it was given.
    assert [m.value for m in stream.read(TOPIC, 0, 1, 4)] == bad

    layout = TableLayout(str(tmp_path / "tables"))
    outcome = RealtimeWriter(load_catalog(), layout, stream).process("engagement", 0, 0, 5)
    assert (outcome.valid, outcome.rejected) == (2, 3)

    archive = pl.read_delta(layout.stream_archive("engagement"))
    assert sorted(archive["event_id"]) == ["m-00000", "m-00004"]
    assert sorted(archive["surface"]) == ["home_feed", "home_feed"]
    dead = pl.read_delta(layout.dead_letters("engagement")).sort("stream_offset")
    home_feed = bad[2].index(b"\xc3")
    assert dead.select("stream_offset", "reason", "origin", "channel").rows() == [
        (1, "not valid UTF-8 at byte 23 (\\xff)", "engagement/0@1", "stream"),
        (2, "not valid UTF-8 at byte 23 (\\xfe)", "engagement/0@2", "stream"),
        (3, f"not valid UTF-8 at byte {home_feed} (\\xc3)", "engagement/0@3", "stream"),
    ]
    assert dead["record"].to_list() == [value.decode("utf-8", "backslashreplace") for value in bad]
    assert '"badutf8-X\\xff"' in dead["record"][0]


def test_a_full_disk_stops_produce_between_batches_and_names_the_file(tmp_path: Path) -> None:
    with tiny_disk(tmp_path / "disk", "1m") as disk:
        stream = LocalStream(disk / "stream")
        stream.produce(TOPIC, [message(0)])
        filler = fill(disk)
        data = disk / "stream" / TOPIC / "messages.jsonl"
        index = data.with_name("messages.idx")
        sizes = (data.stat().st_size, index.stat().st_size)

        with pytest.raises(OSError) as raised:
            stream.produce(TOPIC, [message(i) for i in range(1, 200)])
        assert raised.value.filename == str(data)
        assert "No space left on device" in str(raised.value)
        # Nothing of the failed batch is left behind, so the next append lines up.
        assert (data.stat().st_size, index.stat().st_size) == sizes

        # Room for some batches of ten messages (about 2 kB each), not for all of them.
        os.truncate(filler, filler.stat().st_size - 32 * 1024)
        with pytest.raises(ProduceStopped) as stopped:
            produce_messages(stream, TOPIC, (message(i) for i in range(1, 2_000)), rate=200)
        assert stopped.value.sent % 10 == 0 and 0 < stopped.value.sent < 1_999
        assert isinstance(stopped.value.cause, OSError)
        assert stopped.value.cause.filename in (str(data), str(index))
        assert str(stopped.value).startswith(
            f"producing to '{TOPIC}' stopped after {stopped.value.sent:,} messages: "
        )
        # Exactly the messages counted are on the stream, each readable at its offset.
        end = stream.end_offsets(TOPIC)[0]
        assert end == 1 + stopped.value.sent
        values = [json.loads(m.value or b"")["event_id"] for m in stream.read(TOPIC, 0, 0, end)]
        assert values == [f"m-{i:05d}" for i in range(end)]


def test_a_micro_batch_counts_the_rows_it_committed(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Forgotten users' messages are filtered once, at the commit, and the counts are of what
    was committed: a user forgotten after the archive's commit read the tombstones is left out
    of the next table written, and of its count."""
    stream = LocalStream(tmp_path / "stream")
    stream.produce(TOPIC, [message(index) for index in range(10)])  # users 1..5, two each
    layout = TableLayout(str(tmp_path / "tables"))
    keep = Tombstones.keep
    calls: list[int] = []

    def forgotten_after_the_first_look(self: Tombstones, frame: pl.DataFrame) -> pl.DataFrame:
        kept = keep(self, frame)
        if not calls:
            record_tombstones(layout, pl.Series("user_id", [3]), datetime(2026, 3, 1, tzinfo=UTC))
        calls.append(kept.height)
        return kept

    monkeypatch.setattr(Tombstones, "keep", forgotten_after_the_first_look)
    outcome = RealtimeWriter(load_catalog(), layout, stream).process("engagement", 0, 0, 10)

    for uri in (layout.stream_archive("engagement"), layout.realtime("engagement_enriched")):
        stored = pl.read_delta(uri)
        assert outcome.appended[uri] == stored.height
    assert 3 in set(pl.read_delta(layout.stream_archive("engagement"))["user_id"])
    assert 3 not in set(pl.read_delta(layout.realtime("engagement_enriched"))["user_id"])


def test_overlapping_micro_batches_append_each_message_once(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Two writers of one partition (the indexer and a sensor's run, say), the second having
    read the committed offsets before the first committed part of its range: each message is
    appended once, and each writer counts only what it appended."""
    from threading import Event, Thread, current_thread

    import sequence_platform.runtime.microbatch as microbatch

    stream = LocalStream(tmp_path / "stream")
    stream.produce(TOPIC, [message(index) for index in range(40)])
    layout = TableLayout(str(tmp_path / "tables"))
    second_looked, first_committed = Event(), Event()
    append_once = microbatch.append_once
    committed_offsets = RealtimeWriter.committed_offsets

    def looked(self: RealtimeWriter, source: str, partition: int) -> dict[str, int]:
        done = committed_offsets(self, source, partition)
        if current_thread().name == "second":
            second_looked.set()
        return done

    def in_turn(*args, **kwargs):  # type: ignore[no-untyped-def]
        # The first commits only once the second has read the offsets; the second after it.
        assert (first_committed if current_thread().name == "second" else second_looked).wait(30)
        return append_once(*args, **kwargs)

    monkeypatch.setattr(RealtimeWriter, "committed_offsets", looked)
    monkeypatch.setattr(microbatch, "append_once", in_turn)
    outcomes = {}

    def process(name: str, end: int) -> None:
        writer = RealtimeWriter(load_catalog(), layout, LocalStream(tmp_path / "stream"))
        outcomes[name] = writer.process("engagement", 0, 0, end)
        if name == "first":
            first_committed.set()

    second = Thread(target=process, args=("second", 40), name="second")
    second.start()
    process("first", 20)
    second.join()

    for uri in (layout.stream_archive("engagement"), layout.realtime("engagement_enriched")):
        offsets = pl.read_delta(uri)["stream_offset"]
        assert sorted(offsets) == list(range(40)), uri
        assert outcomes["first"].appended[uri] == 20
        assert outcomes["second"].appended[uri] == 20
