"""The real-time path against a real Kafka broker: exactly once, bad messages, broker outages."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Iterator
from datetime import date
from pathlib import Path

import dagster as dg
import polars as pl
import pytest
from deltalake.exceptions import CommitFailedError

from sequence_platform.ingest.kafka_broker import KafkaBroker
from sequence_platform.ingest.stream import KafkaStream
from sequence_platform.orchestration import build_definitions
from sequence_platform.orchestration.realtime import LINGERS_UNTIL_TAG
from sequence_platform.runtime.microbatch import RealtimeWriter
from sequence_platform.settings import PlatformSettings
from sequence_platform.spec import load_catalog
from sequence_platform.spec.catalog import Catalog, LoadedDefinition
from sequence_platform.storage.layout import TableLayout

REPO = Path(__file__).resolve().parents[2]
pytestmark = pytest.mark.kafka


def event(index: int, *, event_type: str = "save", user: int | None = None) -> dict[str, object]:
    return {
        "event_id": f"k-{index:05d}",
        "user_id": user if user is not None else 1 + index % 7,
        "item_id": 100 + index % 13,
        "event_type": event_type,
        "event_time": f"2026-03-02T10:{index // 60 % 60:02d}:{index % 60:02d}.000Z",
        "surface": "home_feed",
        "dwell_ms": 1000 + index,
    }


def encode(record: dict[str, object]) -> tuple[bytes, bytes]:
    return str(record["user_id"]).encode(), json.dumps(record).encode()


@pytest.fixture
def topic_catalog() -> Catalog:
    """The example catalog, with the source reading a fresh topic of its own."""
    catalog = load_catalog()
    topic = f"engagement-{uuid.uuid4().hex[:8]}"
    definitions = [
        LoadedDefinition(
            loaded.spec.model_copy(update={"topic": topic})
            if loaded.spec.kind == "source"
            else loaded.spec,
            loaded.origin,
        )
        for loaded in catalog.definitions
    ]
    return Catalog(definitions)


@pytest.fixture
def stream(kafka_broker: KafkaBroker) -> Iterator[KafkaStream]:
    kafka = KafkaStream(kafka_broker.bootstrap, timeout_ms=5_000)
    yield kafka
    kafka.close()


def table(layout: TableLayout, family: str, name: str) -> pl.DataFrame:
    return pl.read_delta(f"{layout.root}/{family}/{name}")


def topic_of(catalog: Catalog) -> str:
    return catalog.sources["engagement"].topic_name


def test_retried_duplicated_and_overlapping_ranges_write_once(
    topic_catalog: Catalog, stream: KafkaStream, tmp_path: Path
) -> None:
    topic = topic_of(topic_catalog)
    assert stream.produce(topic, [encode(event(i)) for i in range(30)]) == 30
    assert stream.end_offsets(topic) == {0: 30}
    layout = TableLayout(str(tmp_path / "tables"))
    writer = RealtimeWriter(topic_catalog, layout, stream)

    first = writer.process("engagement", 0, 0, 20)
    assert first.valid == 20
    # The same range again (a duplicated run, or a retry after the commit): nothing written.
    again = writer.process("engagement", 0, 0, 20)
    assert again.appended == {}
    # An overlapping range only adds what is new.
    overlap = writer.process("engagement", 0, 10, 30)
    assert overlap.messages == 10

    archive = table(layout, "stream_archive", "engagement")
    assert sorted(archive["event_id"]) == [f"k-{i:05d}" for i in range(30)]
    assert sorted(archive["stream_offset"]) == list(range(30))
    realtime = table(layout, "realtime", "engagement_enriched")
    assert realtime["event_id"].n_unique() == realtime.height == 30
    assert writer.committed_offset("engagement", 0) == 30


def test_two_writers_at_once_write_each_message_once(
    topic_catalog: Catalog, kafka_broker: KafkaBroker, tmp_path: Path
) -> None:
    """The indexer and a sensor run on the same partition at the same time."""
    topic = topic_of(topic_catalog)
    layout = TableLayout(str(tmp_path / "tables"))
    streams = [KafkaStream(kafka_broker.bootstrap) for _ in range(2)]
    streams[0].produce(topic, [encode(event(i)) for i in range(60)])
    start = threading.Barrier(2)
    errors: list[BaseException] = []

    def write(stream: KafkaStream) -> None:
        writer = RealtimeWriter(topic_catalog, layout, stream)
        start.wait()
        for end in range(10, 61, 10):
            for _attempt in range(5):  # a lost commit race is retried, as the indexer does
                try:
                    writer.process("engagement", 0, 0, end)
                    break
                except CommitFailedError as error:
                    errors.append(error)

    threads = [threading.Thread(target=write, args=(stream,)) for stream in streams]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    for stream in streams:
        stream.close()
    for family, name in (("stream_archive", "engagement"), ("realtime", "engagement_enriched")):
        rows = table(layout, family, name)
        assert sorted(rows["event_id"]) == [f"k-{i:05d}" for i in range(60)], family


class DiesAfterFirstTable(RealtimeWriter):
    """A writer whose process dies right after the first table's Delta commit."""

    def process(self, source: str, partition: int, start: int, end: int):  # type: ignore[no-untyped-def]
        from sequence_platform.storage import delta

        original = delta.append_once
        calls = {"n": 0}

        def append_then_die(*args, **kwargs):  # type: ignore[no-untyped-def]
            if calls["n"] == 1:
                raise SystemExit("killed between commits")
            calls["n"] += 1
            return original(*args, **kwargs)

        import sequence_platform.runtime.microbatch as microbatch

        microbatch.append_once = append_then_die  # type: ignore[assignment]
        try:
            return super().process(source, partition, start, end)
        finally:
            microbatch.append_once = original


def test_run_that_dies_after_a_commit_is_completed_by_its_retry(
    topic_catalog: Catalog, stream: KafkaStream, tmp_path: Path
) -> None:
    topic = topic_of(topic_catalog)
    stream.produce(topic, [encode(event(i)) for i in range(12)])
    layout = TableLayout(str(tmp_path / "tables"))
    with pytest.raises(SystemExit):
        DiesAfterFirstTable(topic_catalog, layout, stream).process("engagement", 0, 0, 12)
    writer = RealtimeWriter(topic_catalog, layout, stream)
    committed = writer.committed_offsets("engagement", 0)
    assert sorted(committed.values()) == [0, 0, 12]  # the archive got its commit, the rest not
    writer.process("engagement", 0, 0, 12)
    assert set(writer.committed_offsets("engagement", 0).values()) == {12}
    for family, name in (("stream_archive", "engagement"), ("realtime", "engagement_enriched")):
        rows = table(layout, family, name)
        assert sorted(rows["event_id"]) == [f"k-{i:05d}" for i in range(12)], family


def test_bad_messages_go_to_dead_letters_and_the_good_ones_around_them_are_kept(
    topic_catalog: Catalog, stream: KafkaStream, tmp_path: Path
) -> None:
    topic = topic_of(topic_catalog)
    missing = {k: v for k, v in event(91).items() if k != "user_id"}
    bad: list[tuple[bytes | None, bytes | None]] = [
        (b"1", b"{not json"),
        (b"1", json.dumps(missing).encode()),
        (b"1", json.dumps({**event(92), "user_id": "abc"}).encode()),
        (b"1", json.dumps({**event(93), "dwell_ms": "long"}).encode()),
        (b"1", json.dumps({**event(94), "event_time": "3000-01-01T00:00:00Z"}).encode()),
        (b"1", json.dumps({**event(95), "event_time": "1901-01-01T00:00:00Z"}).encode()),
        (b"1", b"x" * (5 * 1024 * 1024)),
        (b"1", b""),
        (b"1", None),
    ]
    messages = [encode(event(0))]
    for index, message in enumerate(bad, start=1):
        messages += [message, encode(event(index))]
    stream.produce(topic, messages)
    layout = TableLayout(str(tmp_path / "tables"))
    outcome = RealtimeWriter(topic_catalog, layout, stream).process(
        "engagement", 0, 0, len(messages)
    )
    assert (outcome.valid, outcome.rejected) == (10, 9)

    archive = table(layout, "stream_archive", "engagement")
    assert sorted(archive["event_id"]) == [f"k-{i:05d}" for i in range(10)]
    dead = table(layout, "dead_letters", "engagement").sort("stream_offset")
    assert dead["stream_offset"].to_list() == [1, 3, 5, 7, 9, 11, 13, 15, 17]
    reasons = dead["reason"].to_list()
    assert reasons[0].startswith("not valid JSON")
    assert reasons[1] == "missing required field 'user_id'"
    assert reasons[2] == "field 'user_id': expected int64, got JSON str 'abc'"
    assert reasons[3] == "field 'dwell_ms': expected int64, got JSON str 'long'"
    assert "outside 2000-01-01..2100-01-01" in reasons[4]
    assert "outside 2000-01-01..2100-01-01" in reasons[5]
    assert reasons[6] == "record of 5,242,880 bytes exceeds the limit of 1,048,576"
    assert reasons[7:] == ["empty record", "empty record"]
    assert set(dead["channel"]) == {"stream"}
    assert dead["origin"][0] == f"{topic}/0@1"


def _sensor_and_job(
    catalog: Catalog, home: Path, bootstrap: str, linger_seconds: float = 0
) -> tuple[dg.Definitions, dg.SensorDefinition, dg.JobDefinition]:
    settings = PlatformSettings(
        home=home,
        start_date=date(2026, 3, 1),
        kafka_bootstrap=bootstrap,
        realtime_max_batch=8,
        realtime_linger_seconds=linger_seconds,
    )
    defs = build_definitions(catalog=catalog, settings=settings)
    return (
        defs,
        defs.resolve_sensor_def("engagement_stream"),
        defs.resolve_job_def("realtime_engagement"),
    )


def _tick(
    defs: dg.Definitions,
    sensor: dg.SensorDefinition,
    instance: dg.DagsterInstance,
    cursor: str | None = None,
) -> dg.SensorResult | dg.SkipReason:
    context = dg.build_sensor_context(
        instance=instance, cursor=cursor, resources={"platform": defs.resources["platform"]}
    )
    result = sensor(context)
    assert isinstance(result, dg.SensorResult | dg.SkipReason)
    return result


def test_sensor_requests_ranges_and_survives_a_lost_cursor_and_a_broker_outage(
    topic_catalog: Catalog, kafka_broker: KafkaBroker, stream: KafkaStream, tmp_path: Path
) -> None:
    topic = topic_of(topic_catalog)
    defs, sensor, job = _sensor_and_job(topic_catalog, tmp_path, kafka_broker.bootstrap)
    stream.produce(topic, [encode(event(i)) for i in range(20)])
    with dg.instance_for_test() as instance:
        first = _tick(defs, sensor, instance)
        assert isinstance(first, dg.SensorResult)
        [request] = first.run_requests or []
        assert request.run_key == f"{topic}/0@0-8"
        assert job.execute_in_process(
            run_config=request.run_config, instance=instance, tags=request.tags
        ).success

        # Cursor lost (a new sensor, a wiped daemon): the next range comes from Delta.
        second = _tick(defs, sensor, instance, cursor=None)
        assert isinstance(second, dg.SensorResult)
        [request] = second.run_requests or []
        assert request.run_key == f"{topic}/0@8-16"
        # The same request launched twice: the second run writes nothing.
        for _ in range(2):
            assert job.execute_in_process(
                run_config=request.run_config, instance=instance, tags=request.tags
            ).success

        kafka_broker.pause()
        try:
            down = _tick(defs, sensor, instance)
            assert isinstance(down, dg.SkipReason)
            assert (down.skip_message or "").startswith("stream down:")
        finally:
            kafka_broker.resume()
        stream.produce(topic, [encode(event(i)) for i in range(20, 25)])

        while True:
            tick = _tick(defs, sensor, instance)
            if isinstance(tick, dg.SkipReason):
                assert f"{topic}/0 idle at offset 25" in (tick.skip_message or "")
                break
            for request in tick.run_requests or []:
                assert job.execute_in_process(
                    run_config=request.run_config, instance=instance, tags=request.tags
                ).success

    realtime = pl.read_delta(str(tmp_path / "tables/realtime/engagement_enriched"))
    assert sorted(realtime["event_id"]) == [f"k-{i:05d}" for i in range(25)]


def test_the_next_run_is_requested_when_the_one_in_flight_stops_lingering_before_the_next_tick(
    topic_catalog: Catalog, kafka_broker: KafkaBroker, stream: KafkaStream, tmp_path: Path
) -> None:
    topic = topic_of(topic_catalog)
    defs, sensor, job = _sensor_and_job(
        topic_catalog, tmp_path, kafka_broker.bootstrap, linger_seconds=20
    )
    stream.produce(topic, [encode(event(i)) for i in range(5)])
    with dg.instance_for_test() as instance:
        [request] = _requests(_tick(defs, sensor, instance))
        run = instance.create_run_for_job(
            job_def=job, run_config=request.run_config, tags=request.tags
        )
        stream.produce(topic, [encode(event(i)) for i in range(5, 8)])
        # Still on its first range (no linger deadline yet): the sensor waits for it.
        waiting = _tick(defs, sensor, instance)
        assert isinstance(waiting, dg.SkipReason)
        assert f"{topic}/0 lagging 8 messages, a run is in flight" in (waiting.skip_message or "")

        # It committed its range and lingers for 19 s more: still its to take.
        RealtimeWriter(topic_catalog, TableLayout(str(tmp_path / "tables")), stream).process(
            "engagement", 0, 0, 5
        )

        def lingers_until(seconds: float, run_id: str = run.run_id) -> None:
            tag = f"{run_id} {time.time() + seconds}"
            instance.add_run_tags(run.run_id, {LINGERS_UNTIL_TAG: tag})

        # A tag it did not write (mangled; inherited from the run it re-executes): it waits.
        instance.add_run_tags(run.run_id, {LINGERS_UNTIL_TAG: "soon"})
        assert isinstance(_tick(defs, sensor, instance), dg.SkipReason)
        lingers_until(2, run_id="an-earlier-run")
        assert isinstance(_tick(defs, sensor, instance), dg.SkipReason)

        lingers_until(19)
        waiting = _tick(defs, sensor, instance)
        assert isinstance(waiting, dg.SkipReason)
        assert f"{topic}/0 lagging 3 messages, a run is in flight" in (waiting.skip_message or "")

        # It stops lingering before the next tick: the next range is asked for now.
        lingers_until(2)
        [handover] = _requests(_tick(defs, sensor, instance))
        assert handover.run_key == f"{topic}/0@5-8"

        # A run tags itself once its range is committed (here it lingers no time at all).
        result = job.execute_in_process(
            run_config=handover.run_config, instance=instance, tags=handover.tags
        )
        tag = instance.get_run_by_id(result.run_id).tags[LINGERS_UNTIL_TAG]  # type: ignore[union-attr]
        assert tag.split()[0] == result.run_id
        assert abs(float(tag.split()[1]) - time.time()) < 60


def _requests(tick: dg.SensorResult | dg.SkipReason) -> list[dg.RunRequest]:
    assert isinstance(tick, dg.SensorResult), tick
    return list(tick.run_requests or [])


def test_killed_indexer_resumes_without_loss_or_duplicates(
    topic_catalog: Catalog, kafka_broker: KafkaBroker, stream: KafkaStream, tmp_path: Path
) -> None:
    topic = topic_of(topic_catalog)
    definitions = tmp_path / "definitions"
    definitions.mkdir()
    for path in (REPO / "definitions").iterdir():
        if path.suffix in (".json", ".py") and path.name != "__init__.py":
            text = path.read_text()
            if path.name == "engagement.json":
                text = text.replace('"topic": "engagement"', f'"topic": "{topic}"')
            (definitions / path.name).write_text(text)
    env = {
        **os.environ,
        "SEQUENCE_PLATFORM_HOME": str(tmp_path / "home"),
        "SEQUENCE_PLATFORM_KAFKA_BOOTSTRAP": kafka_broker.bootstrap,
        "SEQUENCE_PLATFORM_DEFINITIONS": str(definitions),
    }
    command = [
        sys.executable,
        "-m",
        "sequence_platform.cli",
        "index",
        "--continuous",
        "--max-batch",
        "40",
    ]
    realtime = tmp_path / "home/tables/realtime/engagement_enriched"

    def start() -> subprocess.Popen[bytes]:
        return subprocess.Popen(
            command, cwd=REPO, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE
        )

    def indexed() -> int:
        try:
            return pl.read_delta(str(realtime)).height
        except Exception:
            return 0

    def wait_for(count: int, timeout: float = 60) -> None:
        deadline = time.monotonic() + timeout
        while indexed() < count and time.monotonic() < deadline:
            time.sleep(0.2)

    indexer = start()
    try:
        stream.produce(topic, [encode(event(i)) for i in range(200)])
        wait_for(40)
        indexer.send_signal(signal.SIGKILL)  # killed mid-stream, wherever it is
        indexer.wait(timeout=10)
        stream.produce(topic, [encode(event(i)) for i in range(200, 300)])
        indexer = start()
        wait_for(300)
    finally:
        indexer.send_signal(signal.SIGTERM)
        indexer.wait(timeout=10)
    rows = pl.read_delta(str(realtime))
    assert sorted(rows["event_id"]) == [f"k-{i:05d}" for i in range(300)]
    assert sorted(rows["stream_offset"]) == list(range(300))


def test_messages_that_are_not_utf8_are_dead_letters_with_their_bytes(
    topic_catalog: Catalog, stream: KafkaStream, tmp_path: Path
) -> None:
    """Read with replacement characters, the first two would be one event (one then dropped
    as a duplicate, with no dead letter) and the third would be stored altered."""
    topic = topic_of(topic_catalog)
    bad = [
        json.dumps(event(1)).encode().replace(b"k-00001", b"badutf8-X\xff"),
        json.dumps(event(2)).encode().replace(b"k-00002", b"badutf8-X\xfe"),
        json.dumps(event(3)).encode().replace(b"home_feed", b"home\xc3\x28feed"),
    ]
    stream.produce(topic, [encode(event(0)), *((b"1", value) for value in bad), encode(event(4))])
    layout = TableLayout(str(tmp_path / "tables"))
    outcome = RealtimeWriter(topic_catalog, layout, stream).process("engagement", 0, 0, 5)
    assert (outcome.valid, outcome.rejected) == (2, 3)

    archive = table(layout, "stream_archive", "engagement")
    assert sorted(archive["event_id"]) == ["k-00000", "k-00004"]
    dead = table(layout, "dead_letters", "engagement").sort("stream_offset")
    assert dead.select("stream_offset", "reason", "origin").rows() == [
        (1, "not valid UTF-8 at byte 23 (\\xff)", f"{topic}/0@1"),
        (2, "not valid UTF-8 at byte 23 (\\xfe)", f"{topic}/0@2"),
        (3, f"not valid UTF-8 at byte {bad[2].index(bytes([0xC3]))} (\\xc3)", f"{topic}/0@3"),
    ]
    assert dead["record"].to_list() == [value.decode("utf-8", "backslashreplace") for value in bad]
