"""Small hand-written inputs for engine tests: UTC instants from text, typed signal rows."""

from __future__ import annotations

from datetime import UTC, datetime

import polars as pl

from sequence_platform.spec.types import TIMESTAMP

ROW_SCHEMA = pl.Schema(
    {
        "user_id": pl.Int64(),
        "event_id": pl.String(),
        "event_time": TIMESTAMP,
        "item_id": pl.Int64(),
        "event_type": pl.String(),
    }
)

Row = tuple[int, str, str, int, str]
"""``(user_id, event_id, event_time as ISO text in UTC, item_id, event_type)``."""


def utc(text: str) -> datetime:
    """``2026-03-01T00:00:00.000`` read as an instant in UTC."""
    return datetime.fromisoformat(text).replace(tzinfo=UTC)


def signal_rows(*rows: Row) -> pl.LazyFrame:
    """Signal rows with the columns a sequence over ``item_id`` and ``event_type`` needs."""
    return pl.LazyFrame(
        [(user, event_id, utc(time), item, kind) for user, event_id, time, item, kind in rows],
        schema=ROW_SCHEMA,
        orient="row",
    )


def event_ids_by_user(snapshot: pl.LazyFrame | pl.DataFrame) -> dict[int, list[str]]:
    """``{user_id: [event_id, ...]}`` of a snapshot (list columns), in its row order."""
    frame = snapshot.collect() if isinstance(snapshot, pl.LazyFrame) else snapshot
    return {row["user_id"]: row["event_id"] for row in frame.iter_rows(named=True)}
