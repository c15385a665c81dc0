"""Training sets: for each row of a spine (``user_id``, ``ts``, labels...), the sequences of
that user at ``ts`` — the same engine call as every other read, so a training row sees what
serving answered at ``ts``, ``age_seconds`` and request-time enrichments included (as of
``ts``).

A spine row without a ``user_id`` or a ``ts`` is refused with its reason; every other row
gives exactly one output row, in spine order within each UTC day of ``ts``.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor, wait
from dataclasses import dataclass
from datetime import date
from pathlib import Path
from typing import Any

import polars as pl

from sequence_platform.engine.decode import REASON, RECORD
from sequence_platform.runtime.reads import DayWindowReader, Reader
from sequence_platform.spec.catalog import Catalog
from sequence_platform.spec.models import SequenceSpec
from sequence_platform.storage.delta import day_range
from sequence_platform.storage.layout import TableLayout

SPINE_KEYS = ("user_id", "ts")
SPINE_ROW = "spine_row"
"""In dead letters: the rejected row's position in the spine (from 1)."""


class InvalidSpine(ValueError):
    """The spine as a whole cannot be used (a column missing or of the wrong type)."""


@dataclass(frozen=True)
class CheckedSpine:
    valid: pl.DataFrame
    """The usable rows, ``ts`` as UTC, in spine order."""
    rejected: pl.DataFrame
    """``spine_row``, ``record`` (the row as JSON) and ``reason``."""


def check_spine(spine: pl.DataFrame) -> CheckedSpine:
    """The spine's rows that can be answered, and the others with the reason."""
    missing = [name for name in SPINE_KEYS if name not in spine.columns]
    if missing:
        raise InvalidSpine(
            f"the spine has no column {', '.join(missing)} (it has: {', '.join(spine.columns)})"
        )
    if not spine.schema["user_id"].is_integer():
        raise InvalidSpine(
            f"spine column 'user_id' must be an integer, not {spine['user_id'].dtype}"
        )
    ts = spine.schema["ts"]
    if not isinstance(ts, pl.Datetime):
        raise InvalidSpine(f"spine column 'ts' must be a timestamp, not {ts}")
    utc = (
        pl.col("ts").dt.replace_time_zone("UTC")
        if ts.time_zone is None
        else pl.col("ts").dt.convert_time_zone("UTC")
    )
    spine = spine.with_columns(pl.col("user_id").cast(pl.Int64), utc)
    problem = (
        pl.when(pl.col("user_id").is_null())
        .then(pl.lit("field 'user_id': missing (null)"))
        .when(pl.col("ts").is_null())
        .then(pl.lit("field 'ts': missing (null)"))
    )
    marked = spine.with_columns(problem.alias(REASON))
    rejected = marked.with_row_index(SPINE_ROW, offset=1).filter(pl.col(REASON).is_not_null())
    return CheckedSpine(
        marked.filter(pl.col(REASON).is_null()).drop(REASON),
        rejected.select(
            SPINE_ROW,
            pl.struct(pl.exclude(SPINE_ROW, REASON)).struct.json_encode().alias(RECORD),
            REASON,
        ),
    )


def spine_days(valid: pl.DataFrame) -> Iterator[tuple[date, pl.DataFrame]]:
    """The checked spine split by the UTC day of ``ts``, days ascending, spine order kept."""
    keyed = valid.with_columns(pl.col("ts").dt.date().alias("__day"))
    for (day,), rows in sorted(
        keyed.partition_by("__day", as_dict=True, maintain_order=True).items(),
        key=lambda item: item[0],
    ):
        assert isinstance(day, date)
        yield day, rows.drop("__day")


def training_rows(
    reader: Reader, sequences: Sequence[tuple[str, SequenceSpec]], spine_day: pl.DataFrame
) -> pl.DataFrame:
    """The spine rows of one day, then for each ``(prefix, sequence)`` its ``length`` and list
    columns at each row's ``ts``."""
    columns = [spine_day]
    for prefix, spec in sequences:
        answered = reader.at_instants(spec, spine_day.select(SPINE_KEYS), "ts")
        added = reader.with_request_fields(spec, answered, "ts").drop(*SPINE_KEYS)
        columns.append(added.rename({name: f"{prefix}{name}" for name in added.columns}))
    return pl.concat(columns, how="horizontal")


def prefixed(catalog: Catalog, names: Sequence[str]) -> list[tuple[str, SequenceSpec]]:
    """Each sequence with the prefix of its columns: none for one, ``<name>__`` for several."""
    several = len(names) > 1
    return [(f"{name}__" if several else "", catalog.sequences[name]) for name in names]


def training_days(
    reader: Reader, sequences: Sequence[tuple[str, SequenceSpec]], checked: CheckedSpine
) -> Iterator[pl.DataFrame]:
    """The training rows of a checked spine, a day of ``ts`` at a time (days ascending), so
    that a caller writing them as they come holds one day, never the whole set (and the days
    of the sequences' windows, each read once: see ``DayWindowReader``)."""
    window = DayWindowReader(reader.catalog, reader.layout, checked.valid["user_id"].unique())
    produced = False
    for _, rows in spine_days(checked.valid):
        produced = True
        yield training_rows(window, sequences, rows)
    if not produced:
        yield training_rows(window, sequences, checked.valid.head(0))


def build_training_set(
    reader: Reader, sequences: Sequence[tuple[str, SequenceSpec]], spine: pl.DataFrame
) -> tuple[pl.DataFrame, pl.DataFrame]:
    """The whole training set of ``spine`` (days ascending) and the rejected spine rows."""
    checked = check_spine(spine)
    rows = pl.concat(list(training_days(reader, sequences, checked)), how="vertical")
    return rows, checked.rejected


def write_training_set(
    reader: Reader,
    sequences: Sequence[tuple[str, SequenceSpec]],
    spine: pl.DataFrame,
    out: Path,
) -> tuple[int, pl.DataFrame]:
    """Write the training set of ``spine`` to the Parquet file ``out`` a day at a time;
    returns the rows written and the rejected spine rows.

    A day is written on a thread of its own while the next day is computed (Arrow's Parquet
    writer does not hold the GIL), so at most two days of training rows are in memory, besides
    the days of one window of each sequence (see ``DayWindowReader``)."""
    import pyarrow.parquet as pq

    checked = check_spine(spine)
    written = 0
    writer: pq.ParquetWriter | None = None
    pending: Future[None] | None = None
    with ThreadPoolExecutor(max_workers=1, thread_name_prefix="training-writes") as thread:
        try:
            for part in training_days(reader, sequences, checked):
                table = part.to_arrow()
                if writer is None:
                    # Dictionaries only where values repeat (text), statistics only where a
                    # reader can prune with them (the spine's own columns): trying both on
                    # every float of the embeddings took most of the writing time.
                    text = [name for name, dtype in part.schema.items() if _is_text(dtype)]
                    flat = [n for n, dtype in part.schema.items() if not isinstance(dtype, pl.List)]
                    writer = pq.ParquetWriter(
                        out,
                        table.schema,
                        compression="zstd",
                        use_dictionary=text,
                        write_statistics=flat,
                    )
                if pending is not None:
                    pending.result()
                pending = thread.submit(writer.write_table, table)
                written += part.height
            if pending is not None:
                pending.result()
        finally:
            if pending is not None:
                wait([pending])
            if writer is not None:
                writer.close()
    return written, checked.rejected


def _is_text(dtype: pl.DataType) -> bool:
    inner: Any = dtype
    while isinstance(inner, pl.List):
        inner = inner.inner
    return inner in (pl.String, pl.Categorical) or isinstance(inner, pl.Enum)


def read_spine(location: str, storage_options: dict[str, str] | None = None) -> pl.DataFrame:
    """A spine from a Parquet file (or a folder/glob of them) or a Delta table URI."""
    path = Path(location)
    if (path / "_delta_log").is_dir() or "://" in location:
        return pl.read_delta(location, storage_options=storage_options or None)
    if not path.exists() and not any(ch in location for ch in "*?["):
        raise FileNotFoundError(f"no spine at {location}")
    return pl.read_parquet(location)


@dataclass(frozen=True)
class TrainingSet:
    rows: pl.DataFrame
    """One row per usable spine row: the spine's columns, then each sequence's."""
    rejected: pl.DataFrame
    """Spine rows that could not be answered, with the reason."""


def training_set(
    spine: pl.DataFrame,
    sequences: Sequence[str],
    *,
    catalog: Catalog | None = None,
    layout: TableLayout | None = None,
) -> TrainingSet:
    """Point-in-time training rows for ``spine`` (a DataFrame with ``user_id`` and ``ts``),
    for a notebook or a script. Tables and definitions default to the platform's settings;
    columns are prefixed ``<sequence>__`` when there is more than one sequence."""
    from sequence_platform.runtime.reads import default_tables

    catalog, layout = default_tables(catalog, layout)
    unknown = [name for name in sequences if name not in catalog.sequences]
    if unknown or not sequences:
        raise KeyError(
            f"unknown sequence {', '.join(unknown) or '(none given)'}; "
            f"known: {', '.join(catalog.sequences)}"
        )
    rows, rejected = build_training_set(
        Reader(catalog, layout), prefixed(catalog, sequences), spine
    )
    return TrainingSet(rows, rejected)


def spine_rows(home: Path, spine: str, day: date) -> int:
    """Rows of the spine's landing files of the day, from their Parquet footers alone."""
    from sequence_platform.ingest.landing import landing_files

    files = [p for p in landing_files(home, spine, day) if p.suffix.lower() == ".parquet"]
    return sum(pl.scan_parquet(path).select(pl.len()).collect().item() for path in files)


def read_spine_days(home: Path, spine: str, start: date, end: date) -> pl.DataFrame:
    """The spine's landing files of the days (``landing/<spine>/dt=YYYY-MM-DD/*.parquet``)."""
    from sequence_platform.ingest.landing import landing_files

    frames = [
        pl.read_parquet(path)
        for day in day_range(start, end)
        for path in landing_files(home, spine, day)
        if path.suffix.lower() == ".parquet"
    ]
    return pl.concat(frames, how="vertical_relaxed") if frames else pl.DataFrame()
