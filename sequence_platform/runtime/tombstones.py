"""Tombstones: the users forgotten so far, and the rows every write leaves out because of them.

``tables/tombstones`` holds one row per forgotten user and request: ``user_id``, when the forget
was asked for (``forgotten_at``) and when the deletion completed (``purged_at``, null while it is
in progress or after it failed). A tombstone is permanent: the batch steps, the micro-batches and
training sets drop the user's rows before they write, so neither a re-materialization from the
landing files nor a replay of the stream brings the user back.

A row belongs to a forgotten user when its ``user_id`` is one, or, for a raw record kept in
dead letters, when the record names one as its ``user_id`` (a record whose user cannot be read
is nobody's).
"""

from __future__ import annotations

import threading
from collections.abc import Iterable
from datetime import UTC, datetime
from typing import TypeVar

import polars as pl
import pyarrow as pa
from deltalake import DeltaTable, write_deltalake

from sequence_platform.engine.decode import RECORD
from sequence_platform.spec.types import INT64_MAX, INT64_MIN
from sequence_platform.storage.delta import DT, PARQUET, ensure_table, open_table, retry_commits
from sequence_platform.storage.layout import TableLayout

USER_ID = "user_id"
FORGOTTEN_AT = "forgotten_at"
PURGED_AT = "purged_at"
TOMBSTONE_SCHEMA = pl.Schema(
    {
        DT: pl.Date(),
        USER_ID: pl.Int64(),
        FORGOTTEN_AT: pl.Datetime("us", "UTC"),
        PURGED_AT: pl.Datetime("us", "UTC"),
    }
)
_NAMED_USER = r'"user_id"\s*:\s*"?(-?\d+)'
"""A record's ``user_id`` when it is not valid JSON as a whole (cut short, say)."""

Frame = TypeVar("Frame", pl.DataFrame, pl.LazyFrame)


def user_ids(values: Iterable[object]) -> pl.Series:
    """Distinct user ids as an Int64 series, sorted; refuses anything but int64 integers."""
    checked: list[int] = []
    for value in values:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ValueError(f"a user id is an integer, not {value!r}")
        if not INT64_MIN <= value <= INT64_MAX:
            raise ValueError(f"user id {value} is outside the int64 range")
        checked.append(value)
    return pl.Series(USER_ID, sorted(set(checked)), dtype=pl.Int64())


def named_user(record: pl.Expr) -> pl.Expr:
    """The user id a raw record (JSON text) names, as text; null when it names none."""
    from_json = record.str.json_path_match("$.user_id")
    return pl.coalesce(from_json, record.str.extract(_NAMED_USER, 1)).str.strip_chars()


def forgotten_rows(columns: Iterable[str], users: pl.Series) -> pl.Expr | None:
    """True for the rows of ``users``, by ``user_id``, else by the user a ``record`` names;
    None when a table has neither column (its rows are nobody's)."""
    names = set(columns)
    if USER_ID in names:
        return pl.col(USER_ID).is_in(users.implode()).fill_null(False)
    if RECORD in names:
        return named_user(pl.col(RECORD)).is_in(users.cast(pl.String).implode()).fill_null(False)
    return None


def without_forgotten(frame: Frame, users: pl.Series) -> Frame:
    """``frame`` without the rows of ``users``."""
    if users.is_empty():
        return frame
    forgotten = forgotten_rows(frame.collect_schema().names(), users)
    return frame if forgotten is None else frame.filter(~forgotten)


class Tombstones:
    """The users forgotten so far, read again only when the tombstone table has a new version.

    A writer calls ``keep`` just before it commits: a user forgotten while it worked is left out
    all the same (see ``storage.delta.append_once``).
    """

    def __init__(self, layout: TableLayout) -> None:
        self.uri = layout.tombstones()
        self.storage_options = layout.storage_options
        self._table: DeltaTable | None = None
        self._version: int | None = None
        self._users = pl.Series(USER_ID, [], dtype=pl.Int64())
        # A step asks from its own thread and from its writer thread (BackgroundWrites).
        self._lock = threading.Lock()

    def users(self) -> pl.Series:
        """Every forgotten user id, distinct, as of now."""
        with self._lock:
            if self._table is None:
                self._table = open_table(self.uri, self.storage_options)
                if self._table is None:
                    return self._users
            else:
                self._table.update_incremental()
            version = self._table.version()
            if version != self._version:
                self._users = read_forgotten(self._table)
                self._version = version
            return self._users

    def keep(self, frame: pl.DataFrame) -> pl.DataFrame:
        """``frame`` without the rows of every user forgotten so far."""
        return without_forgotten(frame, self.users())


def read_forgotten(table: DeltaTable) -> pl.Series:
    """The distinct user ids of a tombstone table version."""
    users = pl.scan_delta(table).select(pl.col(USER_ID).cast(pl.Int64())).unique().collect()
    return users.to_series().drop_nulls().sort()


def record_tombstones(layout: TableLayout, users: pl.Series, at: datetime) -> None:
    """Append a tombstone (not purged yet) for each of ``users``."""
    rows = pl.DataFrame(
        {
            DT: [at.astimezone(UTC).date()] * users.len(),
            USER_ID: users,
            FORGOTTEN_AT: [at] * users.len(),
            PURGED_AT: [None] * users.len(),
        },
        schema=TOMBSTONE_SCHEMA,
    ).to_arrow()
    table = ensure_table(layout.tombstones(), rows.schema, layout.storage_options)
    # Appends never conflict with appends; delta-rs retries them on its own.
    write_deltalake(
        table,
        rows,
        mode="append",
        partition_by=[DT],
        storage_options=layout.storage_options or None,
        writer_properties=PARQUET,
    )


def mark_purged(layout: TableLayout, users: pl.Series, at: datetime) -> None:
    """Set ``purged_at`` on the tombstones of ``users`` that do not have one yet."""
    table = open_table(layout.tombstones(), layout.storage_options)
    if table is None:
        return
    source = pa.table(
        {
            USER_ID: users.to_arrow(),
            PURGED_AT: pa.array([at] * users.len(), pa.timestamp("us", "UTC")),
        }
    )

    def mark(fresh: DeltaTable) -> None:
        (
            fresh.merge(
                source,
                predicate=f"t.{USER_ID} = s.{USER_ID}",
                source_alias="s",
                target_alias="t",
                writer_properties=PARQUET,
            )
            .when_matched_update({PURGED_AT: f"s.{PURGED_AT}"}, f"t.{PURGED_AT} IS NULL")
            .execute()
        )

    # Another forget appending its tombstones meanwhile means marking again on the new version.
    retry_commits(mark, table)
