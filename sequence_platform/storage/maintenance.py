"""Keeping tables healthy under load: compaction, vacuum and real-time expiry.

Micro-batches append small files many times an hour. Compaction rewrites a day's files into few
large ones sorted by ``user_id`` (where the table has one), vacuum deletes files that no version
needs any more, and expiry drops real-time days that no read can reach. None of them changes what
a table holds (expiry aside) nor the stream offsets recorded in it.

Each is one Delta commit per table (per day for compaction) made while micro-batches keep
appending. Delta settles every race: an append never conflicts with a compaction, which commits
on top of it; a commit that conflicts for real (an expiry racing a late event's append, a
compaction racing a batch overwrite of its day) is refused, and the operation starts over on the
newest version of the table. A micro-batch that loses a race retries in ``append_once``.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from datetime import date
from typing import Any, TypeVar

import polars as pl
from deltalake import DeltaTable
from deltalake.table import FilterConjunctionType

from sequence_platform.storage.delta import DT, PARQUET, open_table, retry_commits

SORT_KEY = "user_id"
"""Compaction sorts each day by this column (when a table has it): most reads are per user."""
DEFAULT_RETENTION_HOURS = 168
ORPHAN_GRACE_HOURS = 1
"""Files no commit references yet may belong to a write still under way: they are left alone
for at least this long, whatever the retention."""
SMALL_FILE_BYTES = 32 * 1024 * 1024
MAINTENANCE_ATTEMPTS = 10
"""How often a maintenance operation whose commit lost a race is tried in all."""

T = TypeVar("T")


@dataclass(frozen=True)
class CompactionOutcome:
    uri: str
    days: int
    files_removed: int
    files_added: int
    sorted_by: str | None


def on_fresh_table(
    uri: str,
    operation: Callable[[DeltaTable], T],
    storage_options: dict[str, str] | None = None,
) -> T | None:
    """``operation`` on the newest version of the table, again on the table brought up to date
    each time Delta refuses its commit because a concurrent one conflicts. None without a table.
    """
    table = open_table(uri, storage_options)
    if table is None:
        return None
    return retry_commits(operation, table, MAINTENANCE_ATTEMPTS)


def expire_days(uri: str, before: date, storage_options: dict[str, str] | None = None) -> int:
    """Delete the days before ``before``; returns how many rows went (whole files: ``dt`` is
    the partition column, so nothing is rewritten)."""

    def expire(table: DeltaTable) -> int:
        deleted = table.delete(f"{DT} < '{before.isoformat()}'", writer_properties=PARQUET)
        return int(deleted.get("num_deleted_rows", 0) or 0)

    return on_fresh_table(uri, expire, storage_options) or 0


def compact_table(
    uri: str,
    storage_options: dict[str, str] | None = None,
    *,
    target_size: int | None = None,
) -> CompactionOutcome | None:
    """Rewrite the days that need it into few files, sorted by ``user_id`` when the table has
    that column; each day is one commit, holding exactly the rows it held.

    A day needs it when it has several small files, or (sorted tables) files whose ``user_id``
    ranges overlap, or a single file out of order. A compacted day is left alone next time.
    Returns None when the table does not exist yet.
    """
    table = open_table(uri, storage_options)
    if table is None:
        return None
    key = SORT_KEY if SORT_KEY in table.schema().to_arrow().names else None
    days = days_to_compact(table, key)
    removed = added = 0
    for day in days:
        day_filter: FilterConjunctionType = [(DT, "=", day.isoformat())]

        def rewrite(fresh: DeltaTable, day_filter: FilterConjunctionType = day_filter) -> Any:
            if key is None:
                return fresh.optimize.compact(day_filter, target_size, writer_properties=PARQUET)
            # A Z-order over one column is a sort by it; its files hold consecutive ranges.
            return fresh.optimize.z_order([key], day_filter, target_size, writer_properties=PARQUET)

        metrics = on_fresh_table(uri, rewrite, storage_options) or {}
        removed += int(metrics.get("numFilesRemoved", 0) or 0)
        added += int(metrics.get("numFilesAdded", 0) or 0)
    return CompactionOutcome(uri, len(days), removed, added, key)


def days_to_compact(table: DeltaTable, key: str | None) -> list[date]:
    """The days whose files compaction would improve (see ``compact_table``)."""
    actions = pl.DataFrame(table.get_add_actions(flatten=True))
    if actions.is_empty():
        return []
    stats = [f"min.{key}", f"max.{key}"] if key else []
    files = actions.select(
        pl.col(f"partition.{DT}").alias(DT),
        "size_bytes",
        *(pl.col(name) if name in actions.columns else pl.lit(None) for name in stats),
    )
    days: list[date] = []
    for (day,), group in files.sort(DT, *stats).group_by(DT, maintain_order=True):
        if not isinstance(day, date):
            continue
        small = group.filter(pl.col("size_bytes") < SMALL_FILE_BYTES).height
        if small > 1:
            days.append(day)
        elif key is None:
            continue
        elif group.height > 1:
            lows, highs = group[stats[0]], group[stats[1]]
            missing = lows.null_count() + highs.null_count() > 0
            if missing or (lows.slice(1) < highs.slice(0, group.height - 1)).any():
                days.append(day)
        elif not _sorted_day(table, day, key):
            days.append(day)
    return days


def _sorted_day(table: DeltaTable, day: date, key: str) -> bool:
    """Whether the day's rows are in ``key`` order (it has one file; only that column is read)."""
    values = pl.scan_delta(table).filter(pl.col(DT) == day).select(key).collect().to_series()
    return bool((values.diff().drop_nulls() >= 0).all())


def vacuum_table(
    uri: str,
    retention_hours: int = DEFAULT_RETENTION_HOURS,
    storage_options: dict[str, str] | None = None,
) -> list[str] | None:
    """Delete files the table stopped referencing more than ``retention_hours`` ago; returns
    them (None without a table).

    Files that no commit references at all (written by a commit that lost a race, or by a
    write still under way) go only after ``max(retention_hours, ORPHAN_GRACE_HOURS)``: a
    micro-batch's files must outlive its commit. A reader of an older version (time travel, a
    long query) needs the retention to exceed how far back it reads.
    """
    if retention_hours < 0:
        raise ValueError(f"the vacuum retention must be 0 hours or more, not {retention_hours}")

    def vacuum(table: DeltaTable) -> list[str]:
        gone: list[str] = []
        if retention_hours < ORPHAN_GRACE_HOURS:
            # Only files that earlier versions held: no writer is still about to commit them.
            gone += table.vacuum(
                retention_hours=retention_hours,
                dry_run=False,
                enforce_retention_duration=False,
                full=False,
            )
        gone += table.vacuum(
            retention_hours=max(retention_hours, ORPHAN_GRACE_HOURS),
            dry_run=False,
            enforce_retention_duration=False,
            full=True,
        )
        return gone

    return on_fresh_table(uri, vacuum, storage_options)
