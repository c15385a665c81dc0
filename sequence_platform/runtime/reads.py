"""Reading sequences at any instant from the tables: the offline reader and training sets.

A read at ``T`` applies the sequence rule to every event the platform holds with
``event_time < T``: for each day of the window, the stored day rows where the sequence table
has that day (what the day adds, already cut to ``max_length``), else the day's batch signal
rows (a day not materialized yet, and always ``T``'s own day, of which only the part before
``T`` counts), then the real-time rows the batch does not hold. Earlier sources win when an
event id appears twice. One engine call (``sequences_at``) then answers every query.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta

import polars as pl
from deltalake import DeltaTable

from sequence_platform.engine.sequence import (
    explode_snapshot,
    merge_rows,
    sequence_rows,
    sequences_at,
)
from sequence_platform.engine.serve import add_request_fields
from sequence_platform.engine.signal import deduplicate_events
from sequence_platform.runtime.microbatch import STREAM_OFFSET, STREAM_PARTITION
from sequence_platform.spec.catalog import Catalog
from sequence_platform.spec.models import SequenceSpec
from sequence_platform.storage.delta import (
    DT,
    day_range,
    day_records,
    open_table,
    scan_days,
    scan_table,
)
from sequence_platform.storage.layout import TableLayout

AT = "__at"


@dataclass(frozen=True)
class Reader:
    """Reads of one catalog's sequences from one set of tables."""

    catalog: Catalog
    layout: TableLayout

    def rows_for_day(
        self, spec: SequenceSpec, day: date, users: pl.Series | None = None
    ) -> pl.LazyFrame:
        """Every event row a read at an instant of ``day`` may need (``user_id`` and the
        stored fields, ``S.filter`` applied, one per event id), for ``users`` or everyone."""
        return merge_rows(
            self.batch_rows_for_day(spec, day, users),
            realtime_rows(self.realtime_for_day(spec, day, users), spec),
        )

    def batch_rows_for_day(
        self, spec: SequenceSpec, day: date, users: pl.Series | None = None
    ) -> pl.LazyFrame:
        """The batch's part of ``rows_for_day``: stored days, else signal days, in day order."""
        first = day - timedelta(days=spec.lookback_days)
        options = self.layout.storage_options
        # One version of the stored table for both: which days it holds, and their rows.
        stored_table = open_table(self.layout.sequence(spec), options)
        stored_days = set(day_records(stored_table, first, day - timedelta(days=1)))
        stored = scan_table(
            stored_table,
            self.catalog.stored_row_schema(spec.name),
            first,
            day - timedelta(days=1),
        )
        missing = [d for d in day_range(first, day) if d not in stored_days]
        signal = scan_days(
            self.layout.signals(spec.signal),
            self.catalog.signal_schema(spec.signal),
            first,
            day,
            options,
        ).filter(pl.col(DT).is_in(missing))
        return merge_rows(
            explode_snapshot(_of(stored, users).sort(DT, "user_id").drop(DT), spec),
            sequence_rows(_of(signal, users).sort(DT).drop(DT), spec),
        )

    def realtime_for_day(
        self, spec: SequenceSpec, day: date, users: pl.Series | None = None
    ) -> pl.LazyFrame:
        """Real-time signal rows of the window of ``day``'s reads, in delivery order."""
        schema = self.catalog.signal_schema(spec.signal)
        first = day - timedelta(days=spec.lookback_days)
        realtime = scan_days(
            self.layout.realtime(spec.signal),
            pl.Schema({**dict(schema), STREAM_PARTITION: pl.Int32(), STREAM_OFFSET: pl.Int64()}),
            first,
            day,
            self.layout.storage_options,
        )
        return (
            _of(realtime, users)
            .sort(STREAM_PARTITION, STREAM_OFFSET, nulls_last=True, maintain_order=True)
            .drop(DT, STREAM_PARTITION, STREAM_OFFSET)
        )

    def at_instants(
        self, spec: SequenceSpec, queries: pl.DataFrame, at: str, *, max_length: int | None = None
    ) -> pl.DataFrame:
        """For each row of ``queries`` (a ``user_id`` and an instant in column ``at``, all on one
        UTC day), the sequence of that user at that instant, in query order."""
        if queries.is_empty():
            element = self.catalog.sequence_element_schema(spec.name)
            rows = pl.LazyFrame(schema={"user_id": pl.Int64(), **dict(element)})
        else:
            day = _utc(queries[at].min()).date()
            rows = self.rows_for_day(spec, day, queries["user_id"].unique())
        return sequences_at(rows, queries.lazy(), spec, at=at, max_length=max_length).collect()

    def with_request_fields(
        self, spec: SequenceSpec, answered: pl.DataFrame, at: str
    ) -> pl.DataFrame:
        """``answered`` (one row per query, list columns) with the request-time fields added as
        lists: ``age_seconds`` and the ``request_enrich`` outputs, as of each row's ``at``."""
        served = self.catalog.served_schema(spec.name)
        extra = [name for name in served.names() if name not in spec.stored_fields]
        stored = spec.stored_fields
        numbered = answered.with_row_index(_QUERY)
        events = (
            numbered.select(_QUERY, at, *stored)
            .explode(stored)
            .filter(pl.col("event_id").is_not_null())
        )
        features = {
            e.table: scan_days(
                self.layout.features(e.table),
                self.catalog.feature_schema(e.table),
                storage_options=self.layout.storage_options,
            ).drop(DT)
            for e in spec.request_enrich
        }
        added = add_request_fields(events.lazy(), spec, self.catalog, features, pl.col(at))
        lists = added.group_by(_QUERY, maintain_order=True).agg(pl.col(extra)).collect()
        return (
            numbered.join(lists, on=_QUERY, how="left", maintain_order="left")
            .with_columns(
                pl.col(name).fill_null(pl.lit([], dtype=pl.List(served[name]))) for name in extra
            )
            .drop(_QUERY)
        )


@dataclass(frozen=True)
class DayWindowReader(Reader):
    """A ``Reader`` for reads at instants of days taken in ascending order (a spine's days),
    of ``users`` only (None: everyone): each stored or signal day of the windows is read once
    and kept while a later day's window holds it, instead of the whole window being read again
    for every day. Every day reads the tables' newest versions, as ``Reader`` does: a table
    that changed since its days were read (a batch run rewrote days and pruned the real-time
    rows it now holds, a user was forgotten) has them read again."""

    users: pl.Series | None = None
    _tables: dict[str, DeltaTable | None] = field(default_factory=dict)
    _days: dict[tuple[str, str, date], pl.DataFrame] = field(default_factory=dict)
    """Rows held, by sequence, table and day (a signal's rows are those of the sequence)."""

    def batch_rows_for_day(
        self, spec: SequenceSpec, day: date, users: pl.Series | None = None
    ) -> pl.LazyFrame:
        first = day - timedelta(days=spec.lookback_days)
        stored_uri, signal_uri = self.layout.sequence(spec), self.layout.signals(spec.signal)
        for uri in (stored_uri, signal_uri):
            self._refresh(uri)
        held = day_records(self._tables[stored_uri], first, day - timedelta(days=1))
        window = day_range(first, day)
        stored_days = [d for d in window if d in held]
        signal_days = [d for d in window if d not in held]
        stored_schema = self.catalog.stored_row_schema(spec.name)
        # In the order Reader.batch_rows_for_day reads them (the first copy of an event wins).
        stored = self._rows(
            spec, stored_uri, stored_schema, stored_days, explode_snapshot, "user_id"
        )
        signal = self._rows(
            spec, signal_uri, self.catalog.signal_schema(spec.signal), signal_days, sequence_rows
        )
        # Only what this window read is kept: a later window (days come in ascending order)
        # holds no earlier day, and reads a day from the stored table once it is stored there.
        read = {(stored_uri, d) for d in stored_days} | {(signal_uri, d) for d in signal_days}
        for key in [k for k in self._days if k[0] == spec.name and (k[1], k[2]) not in read]:
            del self._days[key]
        return merge_rows(_of(stored, users), _of(signal, users))

    def _refresh(self, uri: str) -> None:
        """The table's newest version; the days read from an older one are let go."""
        table = self._tables.get(uri)
        if table is None:
            table = self._tables[uri] = open_table(uri, self.layout.storage_options)
            read = None
        else:
            read = table.version()
            table.update_incremental()
        if table is None or table.version() != read:
            for key in [key for key in self._days if key[1] == uri]:
                del self._days[key]

    def _rows(
        self,
        spec: SequenceSpec,
        uri: str,
        schema: pl.Schema,
        days: list[date],
        as_rows: Callable[[pl.LazyFrame, SequenceSpec, str], pl.LazyFrame],
        *order: str,
    ) -> pl.LazyFrame:
        """``as_rows`` (``explode_snapshot`` or ``sequence_rows``) of ``days`` of the table, in
        day order (then ``order``): the days not held yet read in one scan, then each day held
        (a day without rows as an empty frame)."""
        wanted = [d for d in days if (spec.name, uri, d) not in self._days]
        if wanted:
            scanned = _of(scan_table(self._tables[uri], schema), self.users)
            rows = as_rows(
                scanned.filter(pl.col(DT).is_in(wanted)).sort(DT, *order, maintain_order=True),
                spec,
                DT,
            ).collect()
            parts = rows.partition_by(DT, as_dict=True, maintain_order=True, include_key=False)
            empty = rows.drop(DT).clear()
            for d in wanted:
                self._days[(spec.name, uri, d)] = parts.get((d,), empty)
        if not days:
            return as_rows(scan_table(None, schema), spec, DT).drop(DT)
        return pl.concat([self._days[(spec.name, uri, d)] for d in days], how="vertical").lazy()


_QUERY = "__query"


def realtime_rows(realtime: pl.LazyFrame, spec: SequenceSpec) -> pl.LazyFrame:
    """Real-time signal rows (in delivery order) as sequence rows. Rule 1 comes before the
    filter: which copy of a twice-delivered event counts must not depend on whether one copy
    passes the filter."""
    return sequence_rows(deduplicate_events(realtime), spec)


def _of(frame: pl.LazyFrame, users: pl.Series | None) -> pl.LazyFrame:
    return frame if users is None else frame.filter(pl.col("user_id").is_in(users.implode()))


def read_sequences(
    sequence: str,
    *,
    as_of: datetime,
    users: list[int] | None = None,
    fields: list[str] | None = None,
    catalog: Catalog | None = None,
    layout: TableLayout | None = None,
) -> pl.DataFrame:
    """The sequences of ``sequence`` at ``as_of``, in the snapshot layout (``user_id``,
    ``length``, one list column per field), by the same engine as every other reader.

    With ``users``, one row per user asked for (length 0 for a user with nothing); without,
    one row per user with at least one event in the window. ``fields`` narrows the list
    columns (``event_id`` and ``event_time`` always come). Tables and definitions default to
    the platform's settings.
    """
    catalog, layout = default_tables(catalog, layout)
    spec = catalog.sequences.get(sequence)
    if spec is None:
        raise KeyError(f"unknown sequence '{sequence}'; known: {', '.join(catalog.sequences)}")
    wanted = _fields(spec, fields)
    at = _utc(as_of)
    reader = Reader(catalog, layout)
    if users is None:
        rows = reader.rows_for_day(spec, at.date()).collect()
        everyone = rows["user_id"].unique().sort()
    else:
        everyone = pl.Series("user_id", users, dtype=pl.Int64)
    queries = pl.DataFrame({"user_id": everyone}).with_columns(
        pl.lit(at, dtype=pl.Datetime("us", "UTC")).alias(AT)
    )
    answered = reader.at_instants(spec, queries, AT)
    if users is None:
        answered = answered.filter(pl.col("length") > 0)
    return answered.select("user_id", "length", *wanted)


def default_tables(
    catalog: Catalog | None, layout: TableLayout | None
) -> tuple[Catalog, TableLayout]:
    """The given definitions and tables, or those of the platform's settings."""
    from sequence_platform.settings import PlatformSettings
    from sequence_platform.spec.loader import load_catalog

    if catalog is not None and layout is not None:
        return catalog, layout
    settings = PlatformSettings()
    return (
        catalog or load_catalog(settings.definitions),
        layout or TableLayout(settings.tables_root, dict(settings.storage_options)),
    )


def _fields(spec: SequenceSpec, fields: list[str] | None) -> list[str]:
    if fields is None:
        return spec.stored_fields
    unknown = [f for f in fields if f not in spec.stored_fields]
    if unknown:
        raise ValueError(
            f"sequence '{spec.name}' has no field {', '.join(unknown)} "
            f"(fields: {', '.join(spec.stored_fields)})"
        )
    return ["event_id", "event_time", *(f for f in fields if f not in ("event_id", "event_time"))]


def _utc(moment: object) -> datetime:
    if not isinstance(moment, datetime):
        raise TypeError(f"expected a datetime, not {moment!r}")
    if moment.tzinfo is None:
        raise ValueError(f"{moment.isoformat()} has no time zone; pass an aware datetime")
    return moment.astimezone(UTC)
