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
import itertools
import logging
from collections.abc import Sequence
from datetime import date
from pathlib import Path

import polars as pl

from sequence_platform.engine.decode import (
    DEAD_LETTER_SCHEMA,
    ORIGIN,
    REASON,
    RECORD,
    DecodedEvents,
    decode_json_records,
    validate_events,
)
from sequence_platform.engine.sequence import DAY

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


def read_landing_days(
    home: Path,
    name: str,
    days: Sequence[date],
    schema: pl.Schema,
    *,
    required: tuple[str, ...],
    time_field: str,
) -> DecodedEvents:
    """Validated rows of the landing days and the rejects, in the order of the days and of
    their files, each with its landing day in column ``dt``; a reject with its file and row
    as origin (the valid rows are returned without one).

    A row whose time is not on its landing day is refused: the landing contract puts every
    row in the folder of its UTC date, and a day is rewritten as a whole. Consecutive Parquet
    files of one schema are validated together, in one pass, which gives the same rows (each
    rule looks at one row) for less: validating a 30-day chunk's files one by one took 0.23 s,
    one pass 0.05 s. A Parquet row's origin is written out only when it is refused (not a
    string for every row).
    """
    if any(later <= earlier for earlier, later in itertools.pairwise(days)):
        raise ValueError(f"landing days must ascend, each once; got {list(days)}")
    parts: list[DecodedEvents] = []
    run: list[pl.DataFrame] = []

    def validate_run() -> None:
        if run:
            together = pl.concat(run)
            run.clear()
            parts.append(
                validate_events(
                    together, schema, required=required, time_field=time_field, carry=(_ROW, _DAY)
                )
            )

    for day in days:
        for path in landing_files(home, name, day):
            label = f"landing/{name}/dt={day.isoformat()}/{path.name}"
            if path.suffix.lower() in JSON_LINES_SUFFIXES:
                validate_run()
                lines = path.read_bytes().splitlines()
                origins = [f"{label}:{line}" for line in range(1, len(lines) + 1)]
                decoded = decode_json_records(
                    lines, origins, schema, required=required, time_field=time_field
                )
                whole = (pl.lit(None, dtype=pl.UInt32).alias(_ROW), pl.lit(day).alias(_DAY))
                parts.append(
                    DecodedEvents(
                        decoded.valid.with_columns(whole), decoded.rejected.with_columns(whole)
                    )
                )
                continue
            frame = _read_parquet(path, name, day).with_columns(
                pl.lit(label).alias(ORIGIN),
                pl.int_range(1, pl.len() + 1, dtype=pl.UInt32).alias(_ROW),
                pl.lit(day).alias(_DAY),
            )
            if run and run[0].schema != frame.schema:
                validate_run()
            run.append(frame)
    validate_run()
    if not parts:
        return DecodedEvents(
            pl.DataFrame(schema={**dict(schema), DAY: pl.Date()}),
            pl.DataFrame(schema={**dict(DEAD_LETTER_SCHEMA), DAY: pl.Date()}),
        )
    decoded = DecodedEvents(
        pl.concat([part.valid for part in parts], how="vertical_relaxed"),
        pl.concat([part.rejected for part in parts], how="vertical_relaxed"),
    )
    return _refuse_other_days(decoded, time_field)


_DAY = "__landing_day__"
"""While days are read: a row's landing day (``dt`` once read; a file's own ``dt`` column, not
a field of the definition, stays part of a refused row's record)."""
_ROW = "__landing_row__"
"""While days are read: a Parquet row's number in its file (its origin is the file, until it
is refused); null for a JSON line (whose origin is whole)."""


def _origin() -> pl.Expr:
    """A row's origin as ``<file>:<row>``."""
    row = pl.col(_ROW)
    return (
        pl.when(row.is_null())
        .then(pl.col(ORIGIN))
        .otherwise(pl.format("{}:{}", pl.col(ORIGIN), row))
        .alias(ORIGIN)
    )


def _read_parquet(path: Path, name: str, day: date) -> pl.DataFrame:
    try:
        return pl.read_parquet(path)
    except pl.exceptions.PolarsError as error:
        problem = f"not a complete Parquet file; is it truncated or empty? ({error})"
        raise UnreadableLandingFile(path, name, day, problem) from error


def _refuse_other_days(decoded: DecodedEvents, time_field: str) -> DecodedEvents:
    """The rows whose time is not on their landing day join that day's rejects (after them);
    the valid rows leave their origin behind."""
    on_day = pl.col(time_field).dt.date() == pl.col(_DAY)
    moved = decoded.valid.filter(~on_day).select(
        pl.struct(pl.exclude(ORIGIN, _ROW, _DAY)).struct.json_encode().alias(RECORD),
        pl.format(
            "field '{}': {} is not on the landing day dt={}",
            pl.lit(time_field),
            pl.col(time_field).dt.to_string("%Y-%m-%dT%H:%M:%S%.3fZ"),
            pl.col(_DAY).dt.to_string("%Y-%m-%d"),
        ).alias(REASON),
        _origin(),
        pl.col(_DAY),
    )
    rejected = decoded.rejected.with_columns(_origin()).drop(_ROW)
    if not moved.is_empty():
        # Each day's rejects, then the rows its files held for other days (a stable sort).
        rejected = pl.concat([rejected, moved]).sort(_DAY, maintain_order=True)
    return DecodedEvents(
        decoded.valid.filter(on_day).drop(ORIGIN, _ROW).rename({_DAY: DAY}),
        rejected.rename({_DAY: DAY}),
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
