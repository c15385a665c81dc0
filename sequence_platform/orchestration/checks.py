"""Asset checks: each looks at exactly what a run wrote and says what it found."""

from __future__ import annotations

import warnings
from collections.abc import Mapping, Sequence

import dagster as dg
import polars as pl

from sequence_platform.storage.delta import DT

SCHEMA = "schema_matches_definition"
UNIQUE = "unique_keys"
REQUIRED = "required_fields_not_null"
ROWS = "rows_written"
ORDERED = "sequences_newest_first"

CHECK_DESCRIPTIONS = {
    SCHEMA: "The written columns and types are exactly those the definition derives.",
    UNIQUE: "No key appears twice in a partition.",
    REQUIRED: "Required fields are never null.",
    ROWS: "The day has at least one row (a warning: a quiet day is possible).",
    ORDERED: "Every sequence is newest first, within max_length, and its lists are aligned.",
}


def check_specs(
    key: dg.AssetKey, names: Sequence[str], partitions: dg.PartitionsDefinition
) -> list[dg.AssetCheckSpec]:
    """The standard checks, evaluated per day."""
    return partitioned_specs(key, {name: CHECK_DESCRIPTIONS[name] for name in names}, partitions)


def partitioned_specs(
    key: dg.AssetKey, described: Mapping[str, str], partitions: dg.PartitionsDefinition | None
) -> list[dg.AssetCheckSpec]:
    """Checks evaluated per day: each result belongs to the partition it looked at."""
    # Partitioned checks are marked preview; we rely on them knowingly and keep logs clean.
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", dg.PreviewWarning)
        return [
            dg.AssetCheckSpec(name, asset=key, description=text, partitions_def=partitions)
            for name, text in described.items()
        ]


def schema_check(written: pl.DataFrame, expected: pl.Schema) -> dg.AssetCheckResult:
    actual = {name: str(dtype) for name, dtype in written.schema.items() if name != DT}
    wanted = {name: str(dtype) for name, dtype in expected.items()}
    differences = {
        name: f"{actual.get(name, 'missing')} (expected {wanted.get(name, 'nothing')})"
        for name in sorted(set(actual) | set(wanted))
        if actual.get(name) != wanted.get(name)
    }
    return dg.AssetCheckResult(
        check_name=SCHEMA,
        passed=not differences,
        metadata={"columns": len(actual), "differences": dg.MetadataValue.json(differences)},
    )


def unique_check(written: pl.DataFrame, keys: Sequence[str]) -> dg.AssetCheckResult:
    duplicates = written.height - written.select(DT, *keys).n_unique()
    return dg.AssetCheckResult(
        check_name=UNIQUE,
        passed=duplicates == 0,
        metadata={"keys": ", ".join(keys), "duplicate_rows": duplicates},
    )


def required_check(written: pl.DataFrame, required: Sequence[str]) -> dg.AssetCheckResult:
    nulls = {name: int(written[name].null_count()) for name in required}
    return dg.AssetCheckResult(
        check_name=REQUIRED,
        passed=not any(nulls.values()),
        metadata={"null_counts": dg.MetadataValue.json(nulls)},
    )


def rows_check(written: pl.DataFrame) -> dg.AssetCheckResult:
    return dg.AssetCheckResult(
        check_name=ROWS,
        passed=written.height > 0,
        severity=dg.AssetCheckSeverity.WARN,
        metadata={"rows": written.height},
    )


def ordering_check(
    written: pl.DataFrame, max_length: int, fields: Sequence[str]
) -> dg.AssetCheckResult:
    if written.is_empty():
        return dg.AssetCheckResult(
            check_name=ORDERED,
            passed=True,
            metadata={"out_of_order_users": 0, "bad_length_users": 0},
        )
    # Each list element against the one before it in the same row: (time, id) must fall.
    time, event_id, row = pl.col("event_time"), pl.col("event_id"), pl.col("row")
    newer_later = (
        written.lazy()
        .select(pl.int_range(pl.len()).alias("row"), "event_time", "event_id")
        .explode("event_time", "event_id")
        .filter(
            (row == row.shift(1))
            & ((time > time.shift(1)) | ((time == time.shift(1)) & (event_id > event_id.shift(1))))
        )
        .select(row.n_unique())
        .collect()
        .item()
    )
    lengths = [pl.col(f).list.len() for f in fields]
    misaligned = written.filter(
        pl.any_horizontal([length != pl.col("length") for length in lengths])
        | (pl.col("length") > max_length)
        | (pl.col("length") < 1)
    ).height
    bad = newer_later + misaligned
    return dg.AssetCheckResult(
        check_name=ORDERED,
        passed=bad == 0,
        metadata={"out_of_order_users": newer_later, "bad_length_users": misaligned},
    )
