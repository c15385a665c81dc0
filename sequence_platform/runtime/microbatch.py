"""Real-time micro-batches: one offset range of one stream partition, written exactly once.

A micro-batch decodes and validates the messages (rejects to dead letters, with the reason
and the offset), archives the raw events, runs each signal of the source through the engine
(the very code the batch path runs) and appends to ``realtime/<signal>``. Every append records
``<topic>/<partition>`` at the range's end offset in the same Delta commit, so a retried,
duplicated or overlapping run skips what a table already holds and never writes twice. The
messages of a forgotten user are consumed but not kept (see ``runtime.tombstones``).
"""

from __future__ import annotations

import errno
import re
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from datetime import date, datetime

import polars as pl
from deltalake.exceptions import CommitFailedError, DeltaError

from sequence_platform.engine.decode import ORIGIN, REASON, RECORD, decode_json_records
from sequence_platform.engine.signal import build_signal, deduplicate_events
from sequence_platform.ingest.stream import EventStream, StreamMessage, StreamUnavailable
from sequence_platform.runtime.tombstones import Tombstones
from sequence_platform.spec.catalog import Catalog
from sequence_platform.storage.delta import (
    DT,
    append_once,
    committed_versions,
    per_day,
    scan_days,
)
from sequence_platform.storage.layout import TableLayout

STREAM_PARTITION = "stream_partition"
STREAM_OFFSET = "stream_offset"
CHANNEL = "channel"
"""Dead letters say which path a record came by: ``landing`` or ``stream``."""
DEAD_LETTER_COLUMNS = [DT, RECORD, REASON, ORIGIN, CHANNEL, STREAM_OFFSET]


@dataclass(frozen=True)
class MicroBatchOutcome:
    source: str
    partition: int
    start: int
    end: int
    messages: int
    valid: int
    rejected: int
    appended: dict[str, int] = field(default_factory=dict)
    """Rows appended per table; a table that already held the range is absent."""
    appended_days: dict[str, dict[date, int]] = field(default_factory=dict)
    """The same rows per table and day (``dt``)."""
    watermark: datetime | None = None
    seconds: float = 0.0


def app_id(topic: str, partition: int) -> str:
    return f"{topic}/{partition}"


class RealtimeWriteFailed(RuntimeError):
    """A micro-batch could not write one of its tables (a full disk, an object store down).

    Nothing is lost: a table records its stream offsets in the very commit that adds the rows,
    so it holds none of what failed, and the next run reads the stream again from there.
    """

    def __init__(self, uri: str, stream: str, offset: int, cause: Exception) -> None:
        self.uri = uri
        self.cause = cause
        self.disk_full = _is_disk_full(cause)
        problem = "the disk is full" if self.disk_full else "the write failed"
        super().__init__(
            f"could not write table {uri} ({problem}: {_one_line(cause)}); it holds the "
            f"messages of {stream} before offset {offset}, and the next run resumes from there"
        )


def _is_disk_full(error: Exception) -> bool:
    # delta-rs reports the operating system's error only in its message.
    return getattr(error, "errno", None) == errno.ENOSPC or "os error 28" in str(error)


def _one_line(error: Exception) -> str:
    """delta-rs's message without its colours and its tree of causes on separate lines."""
    text = re.sub(r"\x1b\[[0-9;]*m", "", str(error))
    causes = (line.strip().removeprefix("\u21b3").strip() for line in text.splitlines())
    return ": ".join(cause for cause in causes if cause)


class RealtimeWriter:
    """Writes micro-batches of one catalog's sources into the real-time tables."""

    def __init__(
        self,
        catalog: Catalog,
        layout: TableLayout,
        stream: EventStream,
        *,
        features: Mapping[str, pl.DataFrame] | None = None,
    ) -> None:
        self.catalog = catalog
        self.layout = layout
        self.stream = stream
        # Read at every batch: a caller may refresh the frames in place between batches.
        self._features = features
        self.tombstones = Tombstones(layout)

    def tables(self, source: str) -> list[str]:
        """Every table a micro-batch of ``source`` appends to."""
        signals = self.catalog.signals_of_source[source]
        return [
            self.layout.stream_archive(source),
            self.layout.dead_letters(source),
            *(self.layout.realtime(signal.name) for signal in signals),
        ]

    def committed_offsets(self, source: str, partition: int) -> dict[str, int]:
        """Per table of ``source``, the offset up to which it holds the partition's messages."""
        return self._committed(source, [partition])[partition]

    def committed_offset(self, source: str, partition: int) -> int:
        """The offset up to which every table of ``source`` holds the partition's messages."""
        return min(self.committed_offsets(source, partition).values())

    def committed_offset_of_partitions(
        self, source: str, partitions: Iterable[int]
    ) -> dict[int, int]:
        """``committed_offset`` of each of ``partitions``, each table's log read once."""
        committed = self._committed(source, partitions)
        return {partition: min(tables.values()) for partition, tables in committed.items()}

    def _committed(self, source: str, partitions: Iterable[int]) -> dict[int, dict[str, int]]:
        topic = self.catalog.sources[source].topic_name
        ids = {partition: app_id(topic, partition) for partition in partitions}
        if not ids:  # no table is opened for no partition
            return {}
        per_table = {
            uri: committed_versions(uri, ids.values(), self.layout.storage_options)
            for uri in self.tables(source)
        }
        return {
            partition: {uri: versions[identity] for uri, versions in per_table.items()}
            for partition, identity in ids.items()
        }

    def process(self, source: str, partition: int, start: int, end: int) -> MicroBatchOutcome:
        """Process the source's partition up to ``end``; safe to repeat or overlap.

        Reading starts where the tables' committed offsets say, whatever ``start`` is, so a
        range that begins after a gap (a failed run, a lost cursor) can never skip messages.
        """
        began = time.perf_counter()
        spec = self.catalog.sources[source]
        done = self.committed_offsets(source, partition)
        first = min(done.values())
        if first >= end:
            return MicroBatchOutcome(source, partition, start, end, 0, 0, 0)
        messages = self.stream.read(spec.topic_name, partition, first, end)
        if any(not first <= message.offset < end for message in messages):
            raise StreamUnavailable(
                f"{spec.topic_name}/{partition}: asked for offsets {first}..{end - 1}, "
                "the stream returned others"
            )
        archive, dead = self._decode(source, messages)
        tables: dict[str, pl.DataFrame] = {
            self.layout.stream_archive(source): archive,
            self.layout.dead_letters(source): dead,
        }
        events = deduplicate_events(archive.lazy().drop(DT, STREAM_PARTITION, STREAM_OFFSET))
        # Each signal row carries the offset of its event's first copy, the one that counted.
        offsets = archive.select("event_id", STREAM_PARTITION, STREAM_OFFSET).filter(
            pl.col("event_id").is_first_distinct()
        )
        for signal in self.catalog.signals_of_source[source]:
            rows = (
                build_signal(events, self._feature_frames(signal.name), signal, self.catalog)
                .join(offsets.lazy(), on="event_id", how="left")
                .with_columns(pl.col("event_time").dt.date().alias(DT))
                .collect()
            )
            tables[self.layout.realtime(signal.name)] = rows
        appended: dict[str, int] = {}
        appended_days: dict[str, dict[date, int]] = {}
        identity = app_id(spec.topic_name, partition)
        for uri, frame in tables.items():
            try:
                # What the table holds already (``done``, or more if another writer of the
                # partition committed since), and forgotten users' messages (consumed, not
                # kept), are left out at the commit.
                written = append_once(
                    uri,
                    frame,
                    identity,
                    end,
                    self.layout.storage_options,
                    position=STREAM_OFFSET,
                    keep=self.tombstones.keep,
                )
            except CommitFailedError:
                raise  # another writer won the race: the caller re-reads and retries
            except (DeltaError, OSError) as error:
                raise RealtimeWriteFailed(uri, identity, done[uri], error) from error
            if written is not None:
                appended[uri] = written.height
                appended_days[uri] = per_day(written)
        watermark = archive["event_time"].max() if archive.height else None
        return MicroBatchOutcome(
            source,
            partition,
            first,
            end,
            len(messages),
            archive.height,
            dead.height,
            appended,
            appended_days,
            watermark if isinstance(watermark, datetime) else None,
            time.perf_counter() - began,
        )

    def _decode(
        self, source: str, messages: list[StreamMessage]
    ) -> tuple[pl.DataFrame, pl.DataFrame]:
        topic = self.catalog.sources[source].topic_name
        decoded = decode_json_records(
            [message.value for message in messages],
            [f"{topic}/{message.partition}@{message.offset}" for message in messages],
            self.catalog.event_schema(source),
        )
        offset = pl.col(ORIGIN).str.extract(r"@(\d+)$").cast(pl.Int64)
        partition = pl.col(ORIGIN).str.extract(r"/(\d+)@").cast(pl.Int32)
        archive = decoded.valid.with_columns(
            pl.col("event_time").dt.date().alias(DT),
            partition.alias(STREAM_PARTITION),
            offset.alias(STREAM_OFFSET),
        ).drop(ORIGIN)
        received = {message.offset: message.timestamp_ms for message in messages}
        dead = decoded.rejected.with_columns(
            offset.alias(STREAM_OFFSET),
            pl.lit("stream").alias(CHANNEL),
        ).with_columns(
            pl.col(STREAM_OFFSET)
            .replace_strict(received, return_dtype=pl.Int64)
            .cast(pl.Datetime("ms", "UTC"))
            .dt.date()
            .alias(DT)
        )
        return archive, dead.select(DEAD_LETTER_COLUMNS)

    def _feature_frames(self, signal: str) -> dict[str, pl.LazyFrame]:
        spec = self.catalog.signals[signal]
        frames: dict[str, pl.LazyFrame] = {}
        for enrichment in spec.enrich:
            if self._features is not None and enrichment.table in self._features:
                frames[enrichment.table] = self._features[enrichment.table].lazy()
                continue
            frames[enrichment.table] = scan_days(
                self.layout.features(enrichment.table),
                self.catalog.feature_schema(enrichment.table),
                storage_options=self.layout.storage_options,
            ).drop(DT)
        return frames
