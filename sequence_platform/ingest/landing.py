"""The landing zone: ``<home>/landing/<name>/dt=YYYY-MM-DD/`` holding the day's export files.

A file is read by its suffix, whatever its case: ``.parquet`` as Parquet; ``.jsonl`` and
``.json`` as JSON Lines (one JSON object per line), since warehouses and Spark write newline-
delimited JSON as ``*.json``. Any other file is skipped with a warning that names it, because
a skipped export is lost data: a compressed ``part-0.json.gz`` or a ``.csv`` is never read.
Hidden and underscore files and checksums (``_SUCCESS``, ``.part-0.parquet.crc``,
``_temporary/``) are the bookkeeping of the tools that write exports, and are skipped quietly
(logged at debug level).
"""

from __future__ import annotations

import hashlib
import logging
from datetime import UTC, date, datetime, time, timedelta
from pathlib import Path

import polars as pl

from sequence_platform.engine.decode import (
    ORIGIN,
    REASON,
    RECORD,
    DecodedEvents,
    decode_json_records,
    validate_events,
)
from sequence_platform.spec.types import TIMESTAMP

log = logging.getLogger(__name__)

PARQUET_SUFFIXES = (".parquet",)
JSON_LINES_SUFFIXES = (".jsonl", ".json")
LANDING_SUFFIXES = PARQUET_SUFFIXES + JSON_LINES_SUFFIXES
"""Read whatever their case (``.JSONL`` too)."""


class UnreadableLandingFile(Exception):
    """A landing file that cannot be read at all (truncated, empty, not Parquet).

    The export is broken, not a record in it: the day fails (an infrastructure failure) rather
    than dead-lettering a whole file, and the message names the file, the day and the remedy.
    """

    def __init__(self, path: Path, name: str, day: date, problem: str) -> None:
        self.path = path
        self.day = day
        super().__init__(
            f"landing file {path} (of '{name}', day {day.isoformat()}) cannot be read: "
            f"{problem}. Export the file again, or remove it, then re-run "
            f"{day.isoformat()}."
        )


def landing_dir(home: Path, name: str, day: date) -> Path:
    return home / "landing" / name / f"dt={day.isoformat()}"


def landing_files(home: Path, name: str, day: date) -> list[Path]:
    """The day's files in name order, so that reading them is deterministic; what is skipped
    is logged (see the module docstring)."""
    folder = landing_dir(home, name, day)
    if not folder.is_dir():
        return []
    found: list[Path] = []
    for path in sorted(folder.iterdir()):
        if path.name.startswith((".", "_")) or path.suffix.lower() == ".crc":
            log.debug("landing: skipping %s (hidden or bookkeeping file)", path)
        elif path.is_file() and path.suffix.lower() in LANDING_SUFFIXES:
            found.append(path)
        else:
            log.warning(
                "landing: skipping %s: not read, because only files ending in %s are "
                "(in any case); rename it or export it in one of those formats",
                path,
                ", ".join(LANDING_SUFFIXES),
            )
    return found


def read_landing_day(
    home: Path,
    name: str,
    day: date,
    schema: pl.Schema,
    *,
    required: tuple[str, ...],
    time_field: str,
) -> DecodedEvents:
    """Validated rows of one landing day and the rejects, each with its file and row as origin.

    A row whose time is not on ``day`` is refused: the landing contract puts every row in the
    folder of its UTC date, and a day is rewritten as a whole.
    """
    parts: list[DecodedEvents] = []
    for path in landing_files(home, name, day):
        label = f"landing/{name}/dt={day.isoformat()}/{path.name}"
        if path.suffix.lower() in JSON_LINES_SUFFIXES:
            lines = path.read_bytes().splitlines()
            origins = [f"{label}:{line}" for line in range(1, len(lines) + 1)]
            parts.append(
                decode_json_records(
                    lines, origins, schema, required=required, time_field=time_field
                )
            )
        else:
            frame = _read_parquet(path, name, day)
            frame = frame.with_columns(
                pl.format("{}:{}", pl.lit(label), pl.int_range(1, pl.len() + 1)).alias(ORIGIN)
            )
            parts.append(validate_events(frame, schema, required=required, time_field=time_field))
    valid = (
        pl.concat([part.valid for part in parts], how="vertical_relaxed")
        if parts
        else pl.DataFrame(schema={**dict(schema), ORIGIN: pl.String()})
    )
    rejected = (
        pl.concat([part.rejected for part in parts], how="vertical_relaxed")
        if parts
        else pl.DataFrame(schema={RECORD: pl.String(), REASON: pl.String(), ORIGIN: pl.String()})
    )
    return _refuse_other_days(DecodedEvents(valid, rejected), day, time_field)


def _read_parquet(path: Path, name: str, day: date) -> pl.DataFrame:
    try:
        return pl.read_parquet(path)
    except pl.exceptions.PolarsError as error:
        problem = f"not a complete Parquet file; is it truncated or empty? ({error})"
        raise UnreadableLandingFile(path, name, day, problem) from error


def _refuse_other_days(decoded: DecodedEvents, day: date, time_field: str) -> DecodedEvents:
    start = datetime.combine(day, time(0), tzinfo=UTC)
    end = start + timedelta(days=1)
    on_day = pl.col(time_field).is_between(
        pl.lit(start, dtype=TIMESTAMP), pl.lit(end, dtype=TIMESTAMP), closed="left"
    )
    elsewhere = decoded.valid.filter(~on_day)
    if elsewhere.is_empty():
        return decoded
    moved = elsewhere.select(
        pl.struct(pl.exclude(ORIGIN)).struct.json_encode().alias(RECORD),
        pl.format(
            "field '{}': {} is not on the landing day dt={}",
            pl.lit(time_field),
            pl.col(time_field).dt.to_string("%Y-%m-%dT%H:%M:%S%.3fZ"),
            pl.lit(day.isoformat()),
        ).alias(REASON),
        pl.col(ORIGIN),
    )
    return DecodedEvents(
        decoded.valid.filter(on_day), pl.concat([decoded.rejected, moved], how="vertical_relaxed")
    )


def landing_fingerprint(home: Path, name: str, day: date) -> str:
    """What a day's landing files are: their names, sizes and modification times, hashed.

    Recorded with every build that reads the day, so that a file added, replaced or removed
    later is seen as late data (an empty day's fingerprint is the empty string)."""
    files = landing_files(home, name, day)
    if not files:
        return ""
    digest = hashlib.sha256()
    for path in files:
        status = path.stat()
        digest.update(f"{path.name}\0{status.st_size}\0{status.st_mtime_ns}\n".encode())
    return digest.hexdigest()[:16]


def landing_days(home: Path, name: str) -> list[date]:
    """Every day that has a landing folder for ``name``, in order."""
    root = home / "landing" / name
    if not root.is_dir():
        return []
    days: list[date] = []
    for folder in root.iterdir():
        if folder.is_dir() and folder.name.startswith("dt="):
            try:
                days.append(date.fromisoformat(folder.name[3:]))
            except ValueError:
                log.warning("landing: skipping folder %s (not dt=YYYY-MM-DD)", folder)
    return sorted(days)
