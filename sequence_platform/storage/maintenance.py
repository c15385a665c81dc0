"""Keeping tables healthy: compaction of small files, vacuum, and real-time retention.

Micro-batches append small files many times an hour; compaction rewrites them into few large
ones and vacuum removes what no version still needs. Neither changes a table's contents nor the
offsets recorded in it.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import date

from sequence_platform.storage.delta import DT, open_table


@dataclass(frozen=True)
class MaintenanceOutcome:
    uri: str
    files_removed: int
    files_added: int
    files_vacuumed: int
    rows_expired: int


def maintain_table(
    uri: str,
    *,
    expire_before: date | None = None,
    retention_hours: int = 168,
    storage_options: dict[str, str] | None = None,
) -> MaintenanceOutcome | None:
    """Compact and vacuum the table; with ``expire_before``, first delete older days.

    Returns None when the table does not exist yet.
    """
    table = open_table(uri, storage_options)
    if table is None:
        return None
    expired = 0
    if expire_before is not None:
        deleted = table.delete(f"{DT} < '{expire_before.isoformat()}'")
        expired = int(deleted.get("num_deleted_rows", 0) or 0)
    compacted = table.optimize.compact()
    vacuumed = table.vacuum(
        retention_hours=retention_hours, enforce_retention_duration=False, dry_run=False
    )
    return MaintenanceOutcome(
        uri,
        int(compacted.get("numFilesRemoved", 0) or 0),
        int(compacted.get("numFilesAdded", 0) or 0),
        len(vacuumed),
        expired,
    )
