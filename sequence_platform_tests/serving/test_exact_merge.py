"""Served through the store equals the sequence computed directly from every event (rules 1-4).

Random events around a snapshot cutoff: the batch holds events before the cutoff (some users
beyond max_length, some outside the window, some filtered out); real time holds late events,
newer events, and copies of batch events whose non-filter fields differ (the batch copy wins).
"""

from __future__ import annotations

import json
import random
from datetime import UTC, datetime, timedelta
from pathlib import Path

import polars as pl

from sequence_platform.engine.sequence import assemble_snapshot, merge_rows, sequence_rows
from sequence_platform.serving.query import resolve_query
from sequence_platform.serving.reader import read_sequences
from sequence_platform.serving.store import SnapshotStore
from sequence_platform.spec import Catalog
from sequence_platform.storage.delta import DT, overwrite_days
from sequence_platform.storage.layout import TableLayout
from sequence_platform_tests.serving.data_home import D2

CUTOFF = datetime(2026, 3, 3, tzinfo=UTC)


def random_events(rng: random.Random, count: int, start: datetime, end: datetime) -> list[dict]:
    span = int((end - start).total_seconds())
    return [
        {
            "event_id": f"e{rng.randrange(10**9):09d}",
            "user_id": rng.randrange(12),
            "item_id": rng.randrange(5),
            "event_type": rng.choice(["save", "click", "like"]),
            # Whole minutes on few values: many ties on event_time, broken by event_id.
            "event_time": start + timedelta(minutes=rng.randrange(span // 60) // 600 * 600),
            "surface": "home",
            "dwell_ms": 10,
            "category": f"batch-{rng.randrange(3)}",
            "embedding": [1.0],
            "dwell_bucket": 0,
        }
        for _ in range(count)
    ]


def test_served_equals_direct_computation(tmp_path: Path, catalog: Catalog) -> None:
    rng = random.Random(20260303)
    spec = catalog.sequences["recent_saves"]
    schema = catalog.signal_schema(spec.signal)
    batch = pl.DataFrame(
        random_events(rng, 2_500, CUTOFF - timedelta(days=20), CUTOFF), schema=schema, orient="row"
    )
    copies = batch.sample(300, seed=1).with_columns(pl.lit("realtime-copy").alias("category"))
    fresh = pl.DataFrame(
        random_events(rng, 300, CUTOFF - timedelta(days=2), CUTOFF + timedelta(days=2)),
        schema=schema,
        orient="row",
    )
    realtime = pl.concat([copies, fresh])

    layout = TableLayout(str(tmp_path / "tables"))
    snapshot = assemble_snapshot(sequence_rows(batch.lazy(), spec), spec, CUTOFF).collect()
    assert snapshot["length"].max() == spec.max_length  # some users are trimmed
    overwrite_days(layout.sequence(spec), snapshot.with_columns(pl.lit(D2).alias(DT)), D2, D2)
    realtime_days = realtime.with_columns(pl.col("event_time").dt.date().alias(DT))
    overwrite_days(
        layout.realtime(spec.signal),
        realtime_days,
        realtime_days[DT].min(),  # type: ignore[arg-type]
        realtime_days[DT].max(),  # type: ignore[arg-type]
    )
    store = SnapshotStore(catalog, layout)
    store.refresh()

    everything = merge_rows(sequence_rows(batch.lazy(), spec), sequence_rows(realtime.lazy(), spec))
    users = list(range(12))
    for hours in (0, 1, 13, 30, 49):
        at = CUTOFF + timedelta(hours=hours)
        for max_length in (1, 3, spec.max_length):
            direct = assemble_snapshot(everything, spec, at, max_length=max_length).collect()
            expected = {
                user: list(zip(ids, categories, strict=True))
                for user, ids, categories in direct.select(
                    "user_id", "event_id", "category"
                ).iter_rows()
            }
            query = resolve_query(
                catalog,
                spec,
                users,
                max_length=max_length,
                max_age_seconds=None,
                fields="category",
                as_of=at.isoformat(),
                format="columnar",
            )
            served = [json.loads(d) for d in read_sequences(store, catalog, query).documents()]
            got = {
                response["user_id"]: list(
                    zip(response["events"]["event_id"], response["events"]["category"], strict=True)
                )
                for response in served
                if response["length"]
            }
            assert got == expected, (at, max_length)
