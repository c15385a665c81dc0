"""Serving sequences: the engine's rule, executed per request on the in-memory tables.

``engine.serve`` (``merge_realtime_tail`` and ``add_request_fields``) defines what is served;
this is another execution of the same rule, shaped by what a request holds: a few users, each
with their newest events already in order in the snapshot, and seldom any real-time rows.

- A user's snapshot events are a run of positions, newest first (binary search on ``user_id``);
  the window ``T - lookback <= event_time < T`` (narrowed by ``max_age``) keeps a run of them,
  and ``max_length`` a shorter one.
- The user's real-time rows, in delivery order, are de-duplicated (first copy wins), filtered by
  the sequence's filter, dropped where the snapshot holds the same event (its copy wins) and
  windowed; the rest are merged with the run by ``event_time`` then ``event_id``, descending.
- ``age_seconds`` comes from the event time, ``request_enrich`` values from the feature version
  with the greatest as-of ``<= T`` (binary search on key, then as-of).

Responses are joined from each value's JSON, encoded when the table was loaded (see
``columns``): no Python object per value, no query plan per request. ``format=arrow`` gathers
the typed values the same way. A property test proves the result equal to the engine's.
"""

from __future__ import annotations

import itertools
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from functools import cached_property, lru_cache
from typing import overload

import numpy as np
import polars as pl
import pyarrow as pa
import pyarrow.compute as pc

from sequence_platform.serving.columns import binary_offsets, int64_values
from sequence_platform.serving.query import SequenceQuery
from sequence_platform.serving.store import (
    ONE_US,
    FeatureColumns,
    FeatureVersions,
    RealtimeTail,
    Snapshot,
    SnapshotColumns,
    SnapshotStore,
    TailColumns,
    epoch_us,
    ragged_range,
)
from sequence_platform.spec.catalog import Catalog
from sequence_platform.spec.models import AGE_FIELD

ARROW_STREAM = "application/vnd.apache.arrow.stream"
# Called directly rather than through pyarrow.compute's wrappers (they inspect every argument).
_JOIN = pc.get_function("binary_join_element_wise")
_SLICE = pc.get_function("binary_slice")
_WITHOUT_LAST_BYTE = pc.SliceOptions(0, -1)
_EMPTY = pa.scalar(b"", pa.large_binary())
_END_OF_STREAM = b"\xff\xff\xff\xff\x00\x00\x00\x00"
_RECORD_END = pa.scalar(b"},", pa.large_binary())
_FRACTIONS = pa.array(
    [(f".{n:03d}".rstrip("0") if n else ".0").encode() + b"," for n in range(1000)],
    pa.large_binary(),
)
"""The decimals of a whole number of milliseconds as seconds (``.5,`` for 500), with a comma."""


@overload
def format_timestamp(moment: datetime) -> str: ...
@overload
def format_timestamp(moment: None) -> None: ...
def format_timestamp(moment: datetime | None) -> str | None:
    """ISO-8601 UTC with milliseconds and ``Z``, as every timestamp in a response."""
    if moment is None:
        return None
    return moment.astimezone(UTC).isoformat(timespec="milliseconds")[:-6] + "Z"


# -- which events ------------------------------------------------------------------------------


@dataclass(frozen=True)
class Selection:
    """The events served, in response order: each user's events (newest first) in turn."""

    users: np.ndarray
    """The distinct users, ascending."""
    ends: np.ndarray
    """Per user, where its events end in response order (they start where the previous end)."""
    from_realtime: np.ndarray
    """Per user, how many of its events come from the real-time tail."""
    snapshot: np.ndarray | slice
    """The snapshot positions of the events from the snapshot, in response order."""
    tail: np.ndarray
    """The tail rows of the events from real time, in response order."""
    order: np.ndarray | None
    """With real-time events: each event's place among the snapshot's then the tail's."""

    @cached_property
    def bounds(self) -> np.ndarray:
        """Where each user's events start, then where the last one's end."""
        return np.concatenate([[0], self.ends])

    @property
    def total(self) -> int:
        return int(self.ends[-1])

    def gather(self, snapshot: pa.Array, tail: pa.Array) -> pa.Array:
        """One value per event served, from the snapshot's values or the tail's."""
        if isinstance(self.snapshot, slice):
            head = snapshot.slice(self.snapshot.start, self.snapshot.stop - self.snapshot.start)
        else:
            head = snapshot.take(self.snapshot)
        if self.order is None:
            return head
        return pa.concat_arrays([head, tail.take(self.tail)]).take(self.order)

    def gather_numpy(self, snapshot: np.ndarray, tail: np.ndarray) -> np.ndarray:
        head = snapshot[self.snapshot]
        if self.order is None:
            return head
        return np.concatenate([head, tail[self.tail]])[self.order]


@dataclass(frozen=True)
class Window:
    """``start <= event_time < end`` in epoch milliseconds, and at most ``max_length``."""

    start: int
    end: int
    max_length: int

    @classmethod
    def of(cls, query: SequenceQuery) -> Window:
        at = epoch_us(query.at)
        start = at - query.spec.lookback_days * 86_400_000_000
        if query.max_age is not None:
            start = max(start, at - query.max_age // ONE_US)
        # Event times are whole milliseconds: t >= start exactly when t >= ceil(start).
        return cls(-(-start // 1000), -(-at // 1000), query.max_length)


def select_events(
    snapshot: SnapshotColumns,
    tail: TailColumns,
    sequence: str,
    users: np.ndarray,
    window: Window,
) -> Selection:
    """The events of ``users`` (distinct, ascending) served at ``window`` (see module doc)."""
    if len(users) == 1:
        return _select_one(snapshot, tail, sequence, users, window)
    count = len(snapshot.user_ids)
    rows = np.searchsorted(snapshot.user_ids, users)
    present = rows < count
    present[present] = snapshot.user_ids[rows[present]] == users[present]
    first = np.where(present, snapshot.offsets[np.minimum(rows, count)], 0)
    last = np.where(present, snapshot.offsets[np.minimum(rows + 1, count)], 0)
    # Newest first: the events at or after T lead, those before the window trail.
    times = snapshot.event_times[ragged_range(first, last)]
    bounds = np.concatenate([[0], np.cumsum(last - first)])

    def leading(condition: np.ndarray) -> np.ndarray:
        running = np.concatenate([[0], np.cumsum(condition)])
        return running[bounds[1:]] - running[bounds[:-1]]

    run_start = first + leading(times >= window.end)
    run_end = np.minimum(first + leading(times >= window.start), run_start + window.max_length)
    lengths = np.maximum(run_end - run_start, 0)

    low = np.searchsorted(tail.user_ids, users, side="left")
    high = np.searchsorted(tail.user_ids, users, side="right")
    merged: dict[int, list[tuple[int, str, int, int]]] = {}
    for user in np.flatnonzero(high > low).tolist():
        events = merge_tail(
            snapshot, tail, sequence, window, (int(first[user]), int(last[user])),
            (int(run_start[user]), int(run_end[user])), (int(low[user]), int(high[user])),
        )  # fmt: skip
        if events is not None:
            merged[user] = events
    return _selection(users, run_start, lengths, merged)


def _select_one(
    snapshot: SnapshotColumns, tail: TailColumns, sequence: str, users: np.ndarray, window: Window
) -> Selection:
    """``select_events`` for one user, in scalars."""
    user = int(users[0])
    ids = snapshot.user_ids
    row = int(ids.searchsorted(user))
    first = last = 0
    if row < len(ids) and ids[row] == user:
        first, last = int(snapshot.offsets[row]), int(snapshot.offsets[row + 1])
    times = snapshot.event_times[first:last]
    run_start = first + int(np.count_nonzero(times >= window.end))
    old_enough = first + int(np.count_nonzero(times >= window.start))
    run_end = max(run_start, min(old_enough, run_start + window.max_length))
    merged: dict[int, list[tuple[int, str, int, int]]] = {}
    low = int(tail.user_ids.searchsorted(user, side="left"))
    if low < len(tail.user_ids) and tail.user_ids[low] == user:
        high = int(tail.user_ids.searchsorted(user, side="right"))
        events = merge_tail(
            snapshot, tail, sequence, window, (first, last), (run_start, run_end), (low, high)
        )
        if events is not None:
            merged[0] = events
    length = np.array([run_end - run_start], dtype=np.int64)
    return _selection(users, np.array([run_start], dtype=np.int64), length, merged)


def _selection(
    users: np.ndarray,
    run_start: np.ndarray,
    lengths: np.ndarray,
    merged: dict[int, list[tuple[int, str, int, int]]],
) -> Selection:
    """Each user's snapshot run (``run_start``, ``lengths``) in turn, or its ``merged`` events
    where real-time rows add to it."""
    for user, events in merged.items():
        lengths[user] = len(events)
    ends = np.cumsum(lengths).astype(np.int64)
    from_realtime = np.zeros(len(users), dtype=np.int64)
    if not merged:
        if len(users) == 1:
            start = int(run_start[0])
            positions: np.ndarray | slice = slice(start, start + int(lengths[0]))
        else:
            positions = ragged_range(run_start, run_start + lengths)
        return Selection(users, ends, from_realtime, positions, np.empty(0, np.int64), None)

    source = np.zeros(int(ends[-1]), dtype=np.int8)
    index = np.empty(int(ends[-1]), dtype=np.int64)
    starts = ends - lengths
    runs = np.ones(len(users), dtype=bool)
    runs[list(merged)] = False
    index[ragged_range(starts[runs], ends[runs])] = ragged_range(
        run_start[runs], run_start[runs] + lengths[runs]
    )
    for user, events in merged.items():
        begin = int(starts[user])
        source[begin : begin + len(events)] = [kind for _, _, kind, _ in events]
        index[begin : begin + len(events)] = [position for _, _, _, position in events]
        from_realtime[user] = sum(kind for _, _, kind, _ in events)
    from_tail = source == 1
    order = np.empty(len(source), dtype=np.int64)
    held = int(np.count_nonzero(~from_tail))
    order[~from_tail] = np.arange(held)
    order[from_tail] = held + np.arange(len(source) - held)
    return Selection(users, ends, from_realtime, index[~from_tail], index[from_tail], order)


def merge_tail(
    snapshot: SnapshotColumns,
    tail: TailColumns,
    sequence: str,
    window: Window,
    held: tuple[int, int],
    run: tuple[int, int],
    rows: tuple[int, int],
) -> list[tuple[int, str, int, int]] | None:
    """One user's events (``event_time``, ``event_id``, 0 snapshot / 1 tail, position), newest
    first, when real-time rows add any; None when the snapshot ``run`` is the answer.

    ``held``: the user's snapshot events; ``rows``: its tail rows, in delivery order.
    """
    low, high = rows
    ids = tail.event_ids.slice(low, high - low).to_pylist()
    times = tail.event_times[low:high].tolist()
    passing = tail.passes[sequence][low:high].tolist()
    seen: set[str] = set()
    fresh: list[tuple[int, str, int, int]] = []
    for row, event_id, time, passes in zip(range(low, high), ids, times, passing, strict=True):
        if event_id in seen:
            continue
        seen.add(event_id)  # the first delivered copy counts, passing the filter or not
        if passes and window.start <= time < window.end:
            fresh.append((time, event_id, 1, row))
    if not fresh:
        return None
    first, last = held
    in_snapshot = set(snapshot.values["event_id"].slice(first, last - first).to_pylist())
    fresh = [event for event in fresh if event[1] not in in_snapshot]
    if not fresh:
        return None
    start, end = run
    end = min(end, start + window.max_length)
    batch = zip(
        snapshot.event_times[start:end].tolist(),
        snapshot.values["event_id"].slice(start, end - start).to_pylist(),
        [0] * (end - start),
        range(start, end),
        strict=True,
    )
    events = sorted([*batch, *fresh], key=lambda event: (event[0], event[1]), reverse=True)
    return events[: window.max_length]


# -- what is served ----------------------------------------------------------------------------


@dataclass(frozen=True)
class ServedSequences:
    """The sequences of a query's users, ready to be written as JSON or Arrow."""

    query: SequenceQuery
    snapshot: Snapshot
    realtime_watermark: datetime | None
    selection: Selection
    tail: TailColumns
    features: dict[str, FeatureColumns]
    """The feature tables of the requested request-time fields."""
    enriched: dict[str, tuple[str, str, str]]
    """Requested request-time field -> (feature table, its field, the key column)."""

    @cached_property
    def event_times(self) -> np.ndarray:
        return self.selection.gather_numpy(self.snapshot.columns.event_times, self.tail.event_times)

    @cached_property
    def _feature_rows(self) -> dict[str, np.ndarray]:
        """Per feature table used, each event's version as of T (or its row of nulls)."""
        found: dict[str, np.ndarray] = {}
        at = epoch_us(self.query.at) // 1000
        for table, _, key in self.enriched.values():
            if table not in found:
                keys = self._stored(key, typed=True)
                valid = np.asarray(keys.is_valid().to_numpy(zero_copy_only=False), dtype=bool)
                found[table] = self.features[table].rows_as_of(int64_values(keys), valid, at)
        return found

    def _stored(self, name: str, *, typed: bool) -> pa.Array:
        snapshot, tail = self.snapshot.columns, self.tail
        if typed:
            return self.selection.gather(snapshot.values[name], tail.values[name])
        return self.selection.gather(snapshot.json[name], tail.json[name])

    def _ages_ms(self) -> np.ndarray:
        return epoch_us(self.query.at) // 1000 - self.event_times

    def json_values(self, name: str) -> pa.Array:
        """Each served event's value of field ``name`` as JSON followed by a comma."""
        if name == AGE_FIELD:
            seconds, millis = np.divmod(self._ages_ms(), 1000)
            whole = pc.cast(pc.cast(pa.array(seconds), pa.large_string()), pa.large_binary())
            return _JOIN.call([whole, _FRACTIONS.take(millis), _EMPTY])
        if name in self.enriched:
            table, field, _ = self.enriched[name]
            return self.features[table].json[field].take(self._feature_rows[table])
        return self._stored(name, typed=False)

    def typed_values(self, name: str) -> pa.Array:
        """Each served event's value of field ``name``."""
        if name == AGE_FIELD:
            return pa.array(self._ages_ms() / 1000.0, pa.float64())
        if name in self.enriched:
            table, field, _ = self.enriched[name]
            return self.features[table].values[field].take(self._feature_rows[table])
        return self._stored(name, typed=True)

    def documents(self) -> list[bytes]:
        """The JSON response of each requested user, in request order (repeated ids repeat)."""
        query, selection = self.query, self.selection
        events = _records(self) if query.format == "records" else _columns(self)
        template = self._template()
        realtime = selection.from_realtime.tolist()
        ends = selection.ends.tolist()
        starts = [0, *ends[:-1]]
        by_user = {
            user: template % (user, end - start, body, end - start - fresh, fresh)
            for user, start, end, body, fresh in zip(
                selection.users.tolist(), starts, ends, events, realtime, strict=True
            )
        }
        return [by_user[user] for user in query.user_ids]

    def _template(self) -> bytes:
        """A response with ``%`` places for the user, length, events and the two counts."""
        query, snapshot = self.query, self.snapshot
        head = (
            f'{{"sequence":"{query.spec.name}","version":{query.spec.version},"user_id":%d,'
            f'"as_of":"{format_timestamp(query.at)}","length":%d,"events":%b,'
        )
        provenance = (
            f'"provenance":{{"snapshot_cutoff":{_json_text(format_timestamp(snapshot.cutoff))},'
            f'"snapshot_version":{_json_number(snapshot.table_version)},'
            '"from_batch":%d,"from_realtime":%d,'
            f'"realtime_watermark":{_json_text(format_timestamp(self.realtime_watermark))}}}}}'
        )
        return (head + provenance).encode()

    def arrow_stream(self) -> bytes:
        """An Arrow IPC stream: one row per event, ``user_id`` and the requested fields, users
        in request order; the response's other facts are in the schema's metadata."""
        query, selection = self.query, self.selection
        lengths = np.diff(selection.bounds)
        columns = [pa.array(np.repeat(selection.users, lengths), pa.int64())]
        columns += [self.typed_values(name) for name in query.fields]
        metadata = {
            "sequence": query.spec.name,
            "version": str(query.spec.version),
            "as_of": format_timestamp(query.at),
            "snapshot_cutoff": _text(format_timestamp(self.snapshot.cutoff)),
            "snapshot_version": _text(self.snapshot.table_version),
            "realtime_watermark": _text(format_timestamp(self.realtime_watermark)),
        }
        schema = arrow_schema(query).with_metadata(metadata)
        batch = pa.RecordBatch.from_arrays(columns, schema=schema)
        if len(query.user_ids) > 1:
            requested = np.asarray(query.user_ids, dtype=np.int64)
            if not np.array_equal(requested, selection.users):
                place = np.searchsorted(selection.users, requested)
                ends = selection.ends[place]
                batch = batch.take(ragged_range(ends - lengths[place], ends))
        # The stream written by hand: its schema, its one batch, the end-of-stream marker.
        return b"".join([schema.serialize(), batch.serialize(), _END_OF_STREAM])


def _text(value: object) -> str:
    """A metadata value: empty for none."""
    return "" if value is None else str(value)


def _json_text(text: str | None) -> str:
    return "null" if text is None else f'"{text}"'


def _json_number(number: int | None) -> str:
    return "null" if number is None else str(number)


@lru_cache(maxsize=1024)
def _record_keys(fields: tuple[str, ...]) -> list[pa.Scalar]:
    """What precedes each field's value in a record: ``{"event_id":``, ``"event_time":``, ..."""
    keys = [f'"{name}":'.encode() for name in fields]
    keys[0] = b"{" + keys[0]
    return [pa.scalar(key, pa.large_binary()) for key in keys]


def _records(served: ServedSequences) -> list[bytes]:
    """Per user, its events as a JSON list of objects."""
    selection, fields = served.selection, served.query.fields
    if selection.total == 0:
        return [b"[]"] * len(selection.users)
    arguments: list[pa.Array | pa.Scalar] = []
    for key, name in zip(_record_keys(fields), fields, strict=True):
        arguments += [key, served.json_values(name)]
    # Every value ends with a comma: the last one's gives way to the end of the record.
    arguments[-1] = _SLICE.call([arguments[-1]], _WITHOUT_LAST_BYTE)
    records = _JOIN.call([*arguments, _RECORD_END, _EMPTY])
    return [b"[" + part + b"]" for part in _per_user(selection, records)]


def _columns(served: ServedSequences) -> list[bytes]:
    """Per user, its events as a JSON object of one list per field."""
    selection, fields = served.selection, served.query.fields
    opening = [f'"{name}":['.encode() for name in fields]
    opening[0] = b"{" + opening[0]
    if selection.total == 0:
        return [b"],".join(opening) + b"]}"] * len(selection.users)
    parts = [_per_user(selection, served.json_values(name)) for name in fields]
    return [
        b"],".join(key + part for key, part in zip(opening, row, strict=True)) + b"]}"
        for row in zip(*parts, strict=True)
    ]


def _per_user(selection: Selection, values: pa.Array) -> list[memoryview]:
    """Each user's values (JSON, each with a comma) joined, without the last comma."""
    offsets, data = binary_offsets(values)
    bounds = offsets[selection.bounds].tolist()
    return [data[start : max(start, end - 1)] for start, end in itertools.pairwise(bounds)]


@lru_cache(maxsize=1024)
def _arrow_schema(sequence_schema: tuple[tuple[str, pl.DataType], ...]) -> pa.Schema:
    return pl.DataFrame(schema={"user_id": pl.Int64(), **dict(sequence_schema)}).to_arrow().schema


def arrow_schema(query: SequenceQuery) -> pa.Schema:
    """The columns of an Arrow response: ``user_id`` and the requested fields."""
    return _arrow_schema(tuple((name, query.schema[name]) for name in query.fields))


def read_sequences(store: SnapshotStore, catalog: Catalog, query: SequenceQuery) -> ServedSequences:
    """The sequences of ``query`` from the store's tables, exact at any instant: before the
    newest snapshot's cutoff, the batch rows of the instant's own day count too."""
    spec = query.spec
    table = store.snapshots[spec.name]
    if reads_from_memory(store, query):
        snapshot = table.snapshot_at(query.at)
    else:
        users = np.unique(np.asarray(query.user_ids, dtype=np.int64))
        version = table.latest.table_version
        snapshot = store.past.snapshot_at(spec, users, query.at, version)
    return serve_sequences(query, catalog, snapshot, store.tail_of(spec), store.features)


def reads_from_memory(store: SnapshotStore, query: SequenceQuery) -> bool:
    """Whether ``read_sequences`` answers ``query`` from memory alone: at or after the newest
    snapshot's cutoff, or with no snapshot yet. An earlier instant reads the batch's rows of
    its day (once per day, then cached) and combines them per request."""
    cutoff = store.snapshots[query.spec.name].latest.cutoff
    return cutoff is None or query.at >= cutoff


def serve_sequences(
    query: SequenceQuery,
    catalog: Catalog,
    snapshot: Snapshot,
    tail: RealtimeTail,
    features: Mapping[str, FeatureVersions],
) -> ServedSequences:
    """The sequences of ``query`` from ``snapshot`` (cutoff ``<= query.at``), the real-time
    ``tail`` of its signal and the feature tables of its request-time fields."""
    spec = query.spec
    # Only the feature tables a requested field needs: no dependency on the others.
    enriched = {
        e.output_name(f): (e.table, f, catalog.feature_tables[e.table].key)
        for e in spec.request_enrich
        for f in e.fields
        if e.output_name(f) in query.fields
    }
    lookups = {table: features[table].columns for table, _, _ in enriched.values()}
    rows = tail.columns
    if len(query.user_ids) == 1:
        users = np.array(query.user_ids, dtype=np.int64)
    else:
        users = np.unique(np.asarray(query.user_ids, dtype=np.int64))
    selection = select_events(snapshot.columns, rows, spec.name, users, Window.of(query))
    watermark = tail.watermark_before(query.at)
    return ServedSequences(query, snapshot, watermark, selection, rows, lookups, enriched)
