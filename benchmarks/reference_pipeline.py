"""The batch pipeline as a competent engineer would write it by hand: plain Polars and deltalake.

The baseline of ``bench_batch.py``. It reads the landing zone that ``sequence-platform
generate`` wrote and writes the same tables as ``sequence-platform materialize``, in the same
layout, with none of the platform's code: the definitions of this deployment are written out
below as constants (mirroring ``definitions/``), and every step is a straight Polars query.

    landing/engagement  ->  events/engagement         validate minimally, de-duplicate
    landing/items       ->  features/items            validate minimally
    events + features   ->  signals/engagement_enriched   filter, as-of join, dwell_bucket
    signals             ->  sequences/<name>/v<version>   per day: each user's newest rows
                                                          of the day, one write per day

Run it, then check it against the platform's tables (untimed; that check does use the
platform's engine, to combine stored days into snapshots the same way for both sides)::

    python benchmarks/reference_pipeline.py --home HOME --tables OUT
    python benchmarks/reference_pipeline.py --home HOME --tables OUT --compare-with PLATFORM
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from dataclasses import dataclass
from datetime import date
from pathlib import Path

import polars as pl
from deltalake import write_deltalake

TIMESTAMP = pl.Datetime("ms", "UTC")
EVENT_COLUMNS = {
    "event_id": pl.String(),
    "user_id": pl.Int64(),
    "item_id": pl.Int64(),
    "event_type": pl.String(),
    "event_time": TIMESTAMP,
    "surface": pl.String(),
    "dwell_ms": pl.Int64(),
}
REQUIRED = ("event_id", "user_id", "item_id", "event_type", "event_time")
ITEM_COLUMNS = {
    "item_id": pl.Int64(),
    "updated_at": TIMESTAMP,
    "category": pl.String(),
    "embedding": pl.List(pl.Float32()),
}
DWELL_EDGES = (1000, 5000)
ISO_8601 = "%Y-%m-%dT%H:%M:%S%.f%#z"
DT = "dt"


@dataclass(frozen=True)
class Sequence:
    name: str
    version: int
    fields: tuple[str, ...]
    max_length: int
    event_types: tuple[str, ...] | None = None

    @property
    def stored_fields(self) -> list[str]:
        return ["event_id", "event_time", *self.fields]

    @property
    def table(self) -> str:
        return f"sequences/{self.name}/v{self.version}"


# definitions/recent_engagement.py and definitions/recent_saves.json, written out.
SEQUENCES = (
    Sequence(
        "recent_engagement",
        1,
        ("item_id", "event_type", "surface", "dwell_bucket", "category", "embedding"),
        100,
    ),
    Sequence("recent_saves", 1, ("item_id", "event_type", "category"), 50, ("save", "click")),
)

LANDING = ("engagement", "items")
"""The landing folders read."""
ASSETS = (
    "events/engagement",
    "features/items",
    "signals/engagement_enriched",
    *(f"sequences/{sequence.name}" for sequence in SEQUENCES),
)
"""The platform's assets whose tables this script writes (training sets are not among them)."""


def read_engagement(landing: Path, days: list[date]) -> tuple[pl.DataFrame, int]:
    """Valid, de-duplicated events of the days (first copy wins) and how many were refused."""
    parts: list[pl.LazyFrame] = []
    dropped = 0
    for day in days:
        folder = landing / "engagement" / f"dt={day.isoformat()}"
        for path in sorted(folder.glob("*.parquet")):
            parts.append(pl.scan_parquet(path).with_columns(pl.lit(day).alias(DT)))
        for path in sorted(folder.glob("*.jsonl")):
            lines, unreadable = read_json_lines(path)
            parts.append(lines.with_columns(pl.lit(day).alias(DT)).lazy())
            dropped += unreadable
    raw = (
        pl.concat(parts, how="diagonal_relaxed")
        .select(*(pl.col(name).cast(dtype) for name, dtype in EVENT_COLUMNS.items()), DT)
        .collect()
    )
    valid = raw.filter(
        pl.all_horizontal(pl.col(name).is_not_null() for name in REQUIRED),
        pl.col("event_time").dt.date() == pl.col(DT),
    )
    events = valid.unique(subset="event_id", keep="first", maintain_order=True).sort(
        DT, "event_time", "event_id"
    )
    return events, raw.height - valid.height + dropped


def read_json_lines(path: Path) -> tuple[pl.DataFrame, int]:
    """A JSON Lines export as events, and how many lines were dropped: those that are not JSON
    objects, and records with a value of the wrong type."""
    lines = path.read_text(encoding="utf-8").splitlines()
    records: list[dict[str, object]] = []
    for line in lines:
        try:
            record = json.loads(line)
        except ValueError:
            continue
        if isinstance(record, dict):
            records.append(record)
    columns = {
        name: [record.get(name) for record in records]
        for name in EVENT_COLUMNS
        if name != "event_time"
    }
    frame = pl.DataFrame(
        {
            name: pl.Series(name, values, dtype=EVENT_COLUMNS[name], strict=False)
            for name, values in columns.items()
        }
    )
    times = [record.get("event_time") for record in records]
    epoch = pl.Series([t if isinstance(t, int) else None for t in times], dtype=pl.Int64)
    text = pl.Series([t if isinstance(t, str) else None for t in times], dtype=pl.String)
    event_time = pl.coalesce(
        pl.lit(epoch).cast(pl.Datetime("ms")).dt.replace_time_zone("UTC"),
        pl.lit(text).str.to_datetime(ISO_8601, time_unit="ms", time_zone="UTC", strict=False),
    )
    # A value of the wrong type reads as null; a record with one is refused below.
    wrong = pl.any_horizontal(
        pl.lit(pl.Series([record.get(name) is not None for record in records]))
        & pl.col(name).is_null()
        for name in columns
    )
    typed = frame.with_columns(event_time.alias("event_time")).filter(~wrong)
    return typed, len(lines) - typed.height


def read_items(landing: Path, days: list[date]) -> pl.DataFrame:
    """Item versions of the days; one row per (item, as-of time), the last copy winning."""
    parts = [
        pl.scan_parquet(path).with_columns(pl.lit(day).alias(DT))
        for day in days
        for path in sorted((landing / "items" / f"dt={day.isoformat()}").glob("*.parquet"))
    ]
    return (
        pl.concat(parts, how="diagonal_relaxed")
        .select(*(pl.col(name).cast(dtype) for name, dtype in ITEM_COLUMNS.items()), DT)
        .filter(
            pl.col("item_id").is_not_null(),
            pl.col("updated_at").is_not_null(),
            pl.col("updated_at").dt.date() == pl.col(DT),
        )
        .unique(subset=["item_id", "updated_at"], keep="last", maintain_order=True)
        .sort(DT, "item_id", "updated_at")
        .collect()
    )


def build_signal(events: pl.DataFrame, items: pl.DataFrame) -> pl.DataFrame:
    """Engagement without impressions, with the item's category and embedding as of the event
    time, and the dwell bucket (0 under 1 s, 1 under 5 s, else 2; null without a dwell)."""
    versions = items.select("item_id", pl.col("updated_at"), "category", "embedding").sort(
        "updated_at"
    )
    bucket = pl.sum_horizontal((pl.col("dwell_ms") >= edge).cast(pl.Int32) for edge in DWELL_EDGES)
    return (
        events.filter(pl.col("event_type") != "impression")
        .sort("event_time")
        .join_asof(
            versions,
            left_on="event_time",
            right_on="updated_at",
            by="item_id",
            strategy="backward",
            check_sortedness=False,
        )
        .with_columns(
            pl.when(pl.col("dwell_ms").is_null())
            .then(None)
            .otherwise(bucket)
            .cast(pl.Int32)
            .alias("dwell_bucket")
        )
        .select(*EVENT_COLUMNS, "category", "embedding", "dwell_bucket", DT)
        .sort(DT, "event_time", "event_id")
    )


def day_rows(signal: pl.DataFrame, sequence: Sequence) -> pl.DataFrame:
    """Per day and user: the user's newest ``max_length`` rows of that day, as list columns."""
    rows = signal
    if sequence.event_types is not None:
        rows = rows.filter(pl.col("event_type").is_in(sequence.event_types))
    return (
        rows.sort([DT, "user_id", "event_time", "event_id"], descending=[False, False, True, True])
        .group_by(DT, "user_id", maintain_order=True)
        .agg(
            pl.len().clip(upper_bound=sequence.max_length).cast(pl.Int32).alias("length"),
            *(pl.col(name).head(sequence.max_length) for name in sequence.stored_fields),
        )
    )


def write_table(uri: str, frame: pl.DataFrame) -> None:
    write_deltalake(uri, frame.to_arrow(), mode="overwrite", partition_by=[DT])


def write_day(uri: str, frame: pl.DataFrame, day: date) -> None:
    predicate = f"{DT} = '{day.isoformat()}'"
    write_deltalake(uri, frame.to_arrow(), mode="overwrite", predicate=predicate, partition_by=[DT])


def landing_days(landing: Path) -> list[date]:
    folders = (landing / "engagement").glob("dt=*")
    return sorted(date.fromisoformat(folder.name.removeprefix("dt=")) for folder in folders)


def run(home: Path, tables: Path) -> dict[str, float | int]:
    """The whole pipeline; returns row counts and the seconds of each step."""
    landing = home / "landing"
    days = landing_days(landing)
    steps: dict[str, float | int] = {}
    began = time.perf_counter()
    events, refused = read_engagement(landing, days)
    write_table(str(tables / "events/engagement"), events)
    steps["events_s"] = time.perf_counter() - began
    began = time.perf_counter()
    items = read_items(landing, days)
    write_table(str(tables / "features/items"), items)
    steps["features_s"] = time.perf_counter() - began
    began = time.perf_counter()
    signal = build_signal(events, items)
    write_table(str(tables / "signals/engagement_enriched"), signal)
    steps["signals_s"] = time.perf_counter() - began
    began = time.perf_counter()
    for sequence in SEQUENCES:
        rows = day_rows(signal, sequence)
        uri = str(tables / sequence.table)
        for (day,), part in rows.group_by(DT, maintain_order=True):
            assert isinstance(day, date)
            write_day(uri, part, day)
        steps[f"{sequence.name}_rows"] = rows.height
    steps["sequences_s"] = time.perf_counter() - began
    steps.update(events=events.height, refused=refused, signal_rows=signal.height)
    return steps


def compare_with_platform(reference: Path, platform: Path, checks: int) -> dict[str, object]:
    """Assert that the snapshots the platform's tables give equal those of the reference's.

    For ``checks`` cutoffs spread over the days (always the last), both sides' stored day rows
    of the window are combined with the engine's ``combine_days``: the same reading for both,
    whatever each side stores. Where the platform's table holds day rows (every stored event
    on its row's day), the stored rows are compared directly as well.
    """
    from sequence_platform.engine.sequence import combine_days, snapshot_cutoff, stored_days
    from sequence_platform.spec import load_catalog

    catalog = load_catalog()
    compared: dict[str, object] = {}
    for sequence in SEQUENCES:
        spec = catalog.sequences[sequence.name]
        assert spec.stored_fields == sequence.stored_fields, (
            f"{sequence.name}: the reference's fields {sequence.stored_fields} differ from the "
            f"definition's {spec.stored_fields}; update SEQUENCES in {Path(__file__).name}"
        )
        mine = pl.scan_delta(str(reference / sequence.table))
        theirs = pl.scan_delta(str(platform / sequence.table))
        columns = ["user_id", "length", *sequence.stored_fields]
        days = sorted(theirs.select(pl.col(DT).unique()).collect()[DT].to_list())
        picks = sorted(
            {days[round(i * (len(days) - 1) / max(checks - 1, 1))] for i in range(checks)}
        )
        cutoffs: list[str] = []
        for day in picks:
            at = snapshot_cutoff(day)
            first, last = stored_days(spec, at)
            window = pl.col(DT).is_between(first, last)
            expected = combine_days(mine.filter(window), spec, at).collect().select(columns)
            served = combine_days(theirs.filter(window), spec, at).collect().select(columns)
            assert served.sort("user_id").equals(expected.sort("user_id")), (
                f"{sequence.name}: the platform's snapshot at {at.isoformat()} differs from the "
                f"reference ({served.height} vs {expected.height} users)"
            )
            cutoffs.append(at.isoformat())
        stored = theirs.select(DT, pl.col("event_time")).explode("event_time")
        holds_day_rows = bool(
            stored.select((pl.col("event_time").dt.date() == pl.col(DT)).all()).collect().item()
        )
        if holds_day_rows:
            key = [DT, "user_id"]
            ours = mine.select(DT, *columns).sort(key).collect()
            platform_rows = theirs.select(DT, *columns).sort(key).collect()
            assert platform_rows.equals(ours), f"{sequence.name}: stored day rows differ"
        compared[sequence.name] = {"snapshots_at": cutoffs, "day_rows_compared": holds_day_rows}
    return compared


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--home", type=Path, required=True, help="data home holding landing/")
    parser.add_argument("--tables", type=Path, required=True, help="where to write the tables")
    parser.add_argument(
        "--compare-with", type=Path, help="instead of running: compare with these platform tables"
    )
    parser.add_argument(
        "--checks", type=int, default=3, help="cutoffs compared (with --compare-with)"
    )
    args = parser.parse_args()
    if args.compare_with:
        outcome: dict[str, object] = dict(
            compare_with_platform(args.tables, args.compare_with, args.checks)
        )
    else:
        outcome = dict(run(args.home, args.tables))
    print(json.dumps(outcome, default=str))
    return 0


if __name__ == "__main__":
    sys.exit(main())
