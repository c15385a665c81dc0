"""Event streams behind one interface: Kafka, or the embedded local stream.

Readers are explicit about what they read: a topic partition and an offset range
``[start, end)``. Nothing is committed to the stream itself; the offsets a consumer has
processed live in the Delta tables it writes (see ``runtime.microbatch``).
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import struct
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO, Protocol

_INDEX_ENTRY = struct.Struct(">Q")


@dataclass(frozen=True)
class StreamMessage:
    partition: int
    offset: int
    key: bytes | None
    value: bytes | None
    timestamp_ms: int


class StreamUnavailable(RuntimeError):
    """The stream cannot be reached (broker down, folder missing): nothing was read."""


class EventStream(Protocol):
    """What the sensor, the micro-batch and the indexer need from a stream."""

    def end_offsets(self, topic: str) -> dict[int, int]:
        """Per partition, the offset the next message will get (an empty topic gives 0)."""
        ...

    def read(self, topic: str, partition: int, start: int, end: int) -> list[StreamMessage]:
        """Messages with ``start <= offset < end`` (fewer if the range reaches past the end)."""
        ...

    def produce(self, topic: str, messages: Iterable[tuple[bytes | None, bytes | None]]) -> int:
        """Append ``(key, value)`` messages; returns how many were written."""
        ...

    def close(self) -> None: ...


class LocalStream:
    """An append-only stream in a folder: one partition per topic, for demos and laptops.

    ``<root>/<topic>/messages.jsonl`` holds one JSON envelope per message; ``messages.idx``
    holds each message's byte position, so reading offset N is one seek. Appends take a file
    lock, so several producers may write at once.
    """

    def __init__(self, root: Path) -> None:
        self.root = Path(root)

    def _paths(self, topic: str) -> tuple[Path, Path]:
        folder = self.root / topic
        return folder / "messages.jsonl", folder / "messages.idx"

    def end_offsets(self, topic: str) -> dict[int, int]:
        _, index = self._paths(topic)
        size = index.stat().st_size if index.exists() else 0
        return {0: size // _INDEX_ENTRY.size}

    def read(self, topic: str, partition: int, start: int, end: int) -> list[StreamMessage]:
        if partition != 0:
            raise ValueError(f"the local stream has one partition (0), not {partition}")
        data, index = self._paths(topic)
        end = min(end, self.end_offsets(topic)[0])
        if start >= end:
            return []
        with index.open("rb") as index_file:
            index_file.seek(start * _INDEX_ENTRY.size)
            first = _INDEX_ENTRY.unpack(index_file.read(_INDEX_ENTRY.size))[0]
        messages: list[StreamMessage] = []
        with data.open("rb") as data_file:
            data_file.seek(first)
            for offset in range(start, end):
                envelope = json.loads(data_file.readline())
                messages.append(
                    StreamMessage(
                        partition=0,
                        offset=offset,
                        key=_bytes(envelope["key"]),
                        value=_bytes(envelope["value"]),
                        timestamp_ms=int(envelope["timestamp_ms"]),
                    )
                )
        return messages

    def produce(self, topic: str, messages: Iterable[tuple[bytes | None, bytes | None]]) -> int:
        """Append all of ``messages`` or none: a failed write (a full disk) is undone and raised
        as an ``OSError`` that names the file."""
        data, index = self._paths(topic)
        data.parent.mkdir(parents=True, exist_ok=True)
        lines: list[bytes] = []
        positions: list[bytes] = []
        # Unbuffered, so that nothing of a failed write is left to be flushed at close.
        with (
            _locked(data.parent / "lock"),
            data.open("ab", buffering=0) as data_file,
            index.open("ab", buffering=0) as idx,
        ):
            data_size, index_size = data_file.tell(), idx.tell()
            position = data_size
            timestamp_ms = _now_ms()
            for key, value in messages:
                envelope = {"key": _text(key), "value": _text(value), "timestamp_ms": timestamp_ms}
                line = json.dumps(envelope, separators=(",", ":")).encode() + b"\n"
                positions.append(_INDEX_ENTRY.pack(position))
                lines.append(line)
                position += len(line)
            writing = data
            try:
                # Data before index: a reader never sees an offset whose bytes are not there yet.
                _write_all(data_file, b"".join(lines))
                os.fsync(data_file.fileno())
                writing = index
                _write_all(idx, b"".join(positions))
            except OSError as error:
                # Part of an index entry would shift every later offset: cut both files back,
                # which also frees the space the failed write took.
                _truncate(idx, index_size)
                _truncate(data_file, data_size)
                raise OSError(error.errno, error.strerror, str(writing)) from error
        return len(lines)

    def close(self) -> None:
        return None


class KafkaStream:
    """Kafka through kafka-python: explicit partition assignment, no consumer group, no commits."""

    def __init__(self, bootstrap: str, *, timeout_ms: int = 10_000) -> None:
        self.bootstrap = bootstrap
        self.timeout_ms = timeout_ms
        self._consumer: Any = None
        self._producer: Any = None

    def _consumer_client(self) -> Any:
        from kafka import KafkaConsumer
        from kafka.errors import KafkaError

        if self._consumer is None:
            try:
                self._consumer = KafkaConsumer(
                    bootstrap_servers=self.bootstrap,
                    enable_auto_commit=False,
                    group_id=None,
                    auto_offset_reset="earliest",
                    request_timeout_ms=max(self.timeout_ms, 3_000) + 1_000,
                    bootstrap_timeout_ms=self.timeout_ms,
                    reconnect_backoff_max_ms=1_000,
                    max_partition_fetch_bytes=16 * 1024 * 1024,
                    fetch_max_bytes=64 * 1024 * 1024,
                )
            except KafkaError as error:
                raise StreamUnavailable(
                    f"Kafka at {self.bootstrap} is unreachable: {error}"
                ) from error
        return self._consumer

    def end_offsets(self, topic: str) -> dict[int, int]:
        from kafka import TopicPartition
        from kafka.errors import KafkaError

        consumer = self._consumer_client()
        try:
            partitions = consumer.partitions_for_topic(topic)
            if not partitions:
                return {}
            ends = consumer.end_offsets([TopicPartition(topic, p) for p in sorted(partitions)])
        except KafkaError as error:
            self._reset()
            raise StreamUnavailable(f"Kafka at {self.bootstrap} is unreachable: {error}") from error
        return {tp.partition: int(offset) for tp, offset in ends.items()}

    def read(self, topic: str, partition: int, start: int, end: int) -> list[StreamMessage]:
        from kafka import TopicPartition
        from kafka.errors import KafkaError

        consumer = self._consumer_client()
        assigned = TopicPartition(topic, partition)
        messages: list[StreamMessage] = []
        try:
            consumer.assign([assigned])
            consumer.seek(assigned, start)
            idle_polls = 0
            # Done when the position passes end - 1: offsets may have gaps (transaction
            # markers, compaction), so the last message need not carry offset end - 1.
            while start < end and consumer.position(assigned) < end:
                batch = consumer.poll(timeout_ms=500, max_records=5_000).get(assigned, [])
                if not batch:
                    idle_polls += 1
                    if idle_polls * 500 >= self.timeout_ms:
                        reached = consumer.position(assigned)
                        raise StreamUnavailable(
                            f"Kafka {topic}/{partition}: read stalled at offset {reached} "
                            f"before {end} after {self.timeout_ms} ms"
                        )
                    continue
                idle_polls = 0
                for record in batch:
                    if start <= record.offset < end:
                        messages.append(
                            StreamMessage(
                                partition, record.offset, record.key, record.value, record.timestamp
                            )
                        )
        except KafkaError as error:
            self._reset()
            raise StreamUnavailable(f"Kafka at {self.bootstrap} failed: {error}") from error
        return messages

    def produce(self, topic: str, messages: Iterable[tuple[bytes | None, bytes | None]]) -> int:
        from kafka.errors import KafkaError

        try:
            return self._send(topic, list(messages))
        except KafkaError as error:
            # Not retried with a new producer: that could write the batch twice. The
            # idempotent producer already retries within its delivery timeout.
            self._close_producer()
            raise StreamUnavailable(
                f"Kafka at {self.bootstrap}: produce failed: {error}"
            ) from error

    def _send(self, topic: str, batch: list[tuple[bytes | None, bytes | None]]) -> int:
        from kafka import KafkaProducer

        if self._producer is None:
            self._producer = KafkaProducer(
                bootstrap_servers=self.bootstrap,
                acks="all",
                linger_ms=5,
                max_request_size=8 * 1024 * 1024,
                bootstrap_timeout_ms=self.timeout_ms,
                max_block_ms=self.timeout_ms,
                # Back within a second of a broker restart, not after the 30 s default.
                reconnect_backoff_max_ms=1_000,
                enable_idempotence=True,
            )
        futures = [self._producer.send(topic, key=key, value=value) for key, value in batch]
        self._producer.flush(timeout=self.timeout_ms / 1000)
        for future in futures:
            future.get(timeout=self.timeout_ms / 1000)
        return len(futures)

    def _close_producer(self) -> None:
        if self._producer is not None:
            with contextlib.suppress(Exception):
                self._producer.close(timeout=1)
            self._producer = None

    def _reset(self) -> None:
        if self._consumer is not None:
            try:
                self._consumer.close()
            finally:
                self._consumer = None

    def close(self) -> None:
        self._reset()
        self._close_producer()


def open_stream(kafka_bootstrap: str | None, home: Path) -> EventStream:
    """Kafka when bootstrap servers are configured, else the local stream under ``home``."""
    if kafka_bootstrap:
        return KafkaStream(kafka_bootstrap)
    return LocalStream(Path(home) / "stream")


@contextmanager
def _locked(path: Path) -> Iterator[None]:
    with path.open("a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def _write_all(handle: BinaryIO, data: bytes) -> None:
    view = memoryview(data)
    while view:
        # An unbuffered write may take only part; a full disk then raises on the next one.
        view = view[handle.write(view) or 0 :]


def _truncate(handle: BinaryIO, size: int) -> None:
    with contextlib.suppress(OSError):
        handle.truncate(size)


def _text(value: bytes | None) -> str | None:
    return None if value is None else value.decode("utf-8", errors="surrogateescape")


def _bytes(value: str | None) -> bytes | None:
    return None if value is None else value.encode("utf-8", errors="surrogateescape")


def _now_ms() -> int:
    import time

    return int(time.time() * 1000)
