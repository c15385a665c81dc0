"""The landing zone: ``<home>/landing/<name>/dt=YYYY-MM-DD/*.parquet`` or ``*.jsonl``."""

from __future__ import annotations

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

LANDING_SUFFIXES = (".parquet", ".jsonl")


def landing_dir(home: Path, name: str, day: date) -> Path:
    return home / "landing" / name / f"dt={day.isoformat()}"


def landing_files(home: Path, name: str, day: date) -> list[Path]:
    """The day's files in name order, so that reading them is deterministic."""
    folder = landing_dir(home, name, day)
    if not folder.is_dir():
        return []
    return sorted(path for path in folder.iterdir() if path.suffix in LANDING_SUFFIXES)


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
        if path.suffix == ".jsonl":
            lines = path.read_bytes().splitlines()
            origins = [f"{label}:{line}" for line in range(1, len(lines) + 1)]
            parts.append(
                decode_json_records(
                    lines, origins, schema, required=required, time_field=time_field
                )
            )
        else:
            frame = pl.read_parquet(path)
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
