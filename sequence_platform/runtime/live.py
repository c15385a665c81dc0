"""Long-running real-time work: the continuous indexer and the live event producer.

The indexer runs the very micro-batch code the Dagster sensor launches, in a loop, for
sub-second freshness; both can run at once, since a micro-batch skips what a table holds.
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import polars as pl
from deltalake.exceptions import CommitFailedError

from sequence_platform.ingest.stream import EventStream, StreamUnavailable
from sequence_platform.runtime.microbatch import MicroBatchOutcome, RealtimeWriter
from sequence_platform.spec.catalog import Catalog
from sequence_platform.storage.delta import DT, scan_days, table_version
from sequence_platform.storage.layout import TableLayout


@dataclass(frozen=True)
class IndexerSettings:
    idle_sleep_seconds: float = 0.05
    max_batch_messages: int = 10_000
    feature_refresh_seconds: float = 30.0
    retry_seconds: float = 2.0


class ContinuousIndexer:
    """Polls every source's partitions and processes whatever is new, until stopped."""

    def __init__(
        self,
        catalog: Catalog,
        layout: TableLayout,
        stream: EventStream,
        settings: IndexerSettings | None = None,
        on_batch: Callable[[MicroBatchOutcome], None] | None = None,
        on_error: Callable[[Exception], None] | None = None,
        on_idle: Callable[[], None] | None = None,
    ) -> None:
        self.catalog = catalog
        self.layout = layout
        self.stream = stream
        self.settings = settings or IndexerSettings()
        self.on_batch = on_batch
        self.on_error = on_error
        self.on_idle = on_idle
        self.stop_event = threading.Event()
        self._feature_versions: dict[str, int | None] = {}
        self._features: dict[str, pl.DataFrame] = {}
        self._features_checked = 0.0
        self._positions: dict[tuple[str, int], int] = {}
        # One writer for the indexer's life: it keeps what it read of the tombstones, and
        # reads the feature frames _fresh_features refreshes in place.
        self._writer = RealtimeWriter(catalog, layout, stream, features=self._features)

    def run(self) -> None:
        while not self.stop_event.is_set():
            try:
                worked = self.poll_once()
            except (StreamUnavailable, CommitFailedError) as error:
                # Stream down, or another writer (a sensor run) committed first: start over
                # from the offsets the tables hold.
                if self.on_error is not None:
                    self.on_error(error)
                self._positions.clear()
                self.stop_event.wait(self.settings.retry_seconds)
                continue
            if not worked:
                if self.on_idle is not None:
                    self.on_idle()
                self.stop_event.wait(self.settings.idle_sleep_seconds)

    def stop(self) -> None:
        self.stop_event.set()

    def poll_once(self) -> bool:
        """Process one batch of every partition that has new messages; True if any had."""
        self._fresh_features()
        writer = self._writer
        worked = False
        for source in self.catalog.sources.values():
            ends = self.stream.end_offsets(source.topic_name)
            unseen = [p for p in ends if (source.name, p) not in self._positions]
            for partition, offset in writer.committed_offset_of_partitions(
                source.name, unseen
            ).items():
                self._positions[(source.name, partition)] = offset
            for partition, end in ends.items():
                key = (source.name, partition)
                start = self._positions[key]
                if start >= end:
                    continue
                stop = min(end, start + self.settings.max_batch_messages)
                outcome = writer.process(source.name, partition, start, stop)
                self._positions[key] = stop
                worked = True
                if self.on_batch is not None:
                    self.on_batch(outcome)
        return worked

    def _fresh_features(self) -> None:
        """Refresh the feature tables in memory (in place), re-reading only those whose Delta
        version moved."""
        now = time.monotonic()
        if self._features and now - self._features_checked < self.settings.feature_refresh_seconds:
            return
        self._features_checked = now
        for table in self.catalog.feature_tables:
            uri = self.layout.features(table)
            version = table_version(uri, self.layout.storage_options)
            if table in self._features and self._feature_versions.get(table) == version:
                continue
            self._features[table] = (
                scan_days(
                    uri,
                    self.catalog.feature_schema(table),
                    storage_options=self.layout.storage_options,
                )
                .drop(DT)
                .collect()
            )
            self._feature_versions[table] = version


Message = tuple[bytes | None, bytes | None]


class ProduceStopped(Exception):
    """Producing stopped part-way (a full disk, a broker gone): the first ``sent`` messages are
    on the stream. The local stream takes a batch whole or not at all; a Kafka broker may also
    hold part of the batch that failed."""

    def __init__(self, topic: str, sent: int, cause: OSError | StreamUnavailable) -> None:
        self.topic = topic
        self.sent = sent
        self.cause = cause
        super().__init__(f"producing to '{topic}' stopped after {sent:,} messages: {cause}")


def produce_messages(
    stream: EventStream,
    topic: str,
    messages: Iterable[Message],
    *,
    rate: float,
    on_sent: Callable[[int], None] | None = None,
) -> int:
    """Send ``(key, value)`` messages at ``rate`` per second in small batches; returns the count.

    Raises :class:`ProduceStopped`, with the count sent so far, when the stream cannot take more.
    """
    sent = 0
    began = time.monotonic()
    for batch in _batches(messages, max(1, int(rate // 20))):
        try:
            sent += stream.produce(topic, batch)
        except (OSError, StreamUnavailable) as error:
            raise ProduceStopped(topic, sent, error) from error
        if on_sent is not None:
            on_sent(sent)
        ahead = sent / rate - (time.monotonic() - began)
        if ahead > 0:
            time.sleep(ahead)
    return sent


def live_messages(events: Iterable[dict[str, object]]) -> Iterator[Message]:
    """Events as messages keyed by user id, each stamped with the moment it is taken (sent)."""
    for event in events:
        stamped = {**event, "event_time": _now_iso()}
        yield str(stamped.get("user_id")).encode(), json.dumps(stamped).encode()


def jsonl_messages(path: Path) -> Iterator[Message]:
    """Each line of a JSON Lines file, verbatim (bad lines included), keyed by its user id."""
    with path.open("rb") as lines:
        for line in lines:
            value = line.rstrip(b"\n")
            if not value.strip():
                continue
            try:
                key = str(json.loads(value).get("user_id")).encode()
            except (ValueError, AttributeError):
                key = None
            yield key, value


def _batches(items: Iterable[Message], size: int) -> Iterator[list[Message]]:
    batch: list[Message] = []
    for item in items:
        batch.append(item)
        if len(batch) >= size:
            yield batch
            batch = []
    if batch:
        yield batch


def _now_iso() -> str:
    return datetime.now(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")
