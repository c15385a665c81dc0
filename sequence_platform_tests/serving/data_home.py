"""A tiny data home with hand-chosen values, written as real Delta tables.

Times are UTC. ``T`` (2026-03-03 12:00) is the as-of most tests use; ``D1``/``D2`` are the
snapshot partitions (cutoffs 2026-03-02 00:00 and 2026-03-03 00:00).

    event  user item type   event_time        category  where
    e1     1    10   save   03-01 08:00       hats      batch (D1, D2)
    e2     1    20   save   03-01 09:00       bags      batch (D1, D2)
    e3     1    30   click  03-02 10:00       shoes     batch (D2); real time has a copy
                                                        saying save / WRONG (batch must win)
    e8     1    40   like   03-02 11:00       toys      batch (D2, recent_engagement only)
    e5     2    20   click  03-02 05:00       bags      batch (D2)
    e0     2    10   click  03-01 06:00       hats      real time only (a late event)
    e4     1    20   save   03-03 08:00       bags      real time only (newest before T)
    e6     1    50   like   03-03 09:00       pets      real time only (not a save/click)
    e7     1    30   click  03-03 12:00       shoes     real time only (at T: excluded)

Item 20's category changes from ``bags`` to ``luggage`` at 03-03 06:00 (request-time
enrichment sees ``luggage`` at T, ``bags`` a day earlier).
"""

from __future__ import annotations

from datetime import UTC, date, datetime
from pathlib import Path
from typing import Any

import polars as pl

from sequence_platform.spec.catalog import Catalog
from sequence_platform.spec.models import SequenceSpec
from sequence_platform.storage.delta import DT, overwrite_days
from sequence_platform.storage.layout import TableLayout

DEFINITIONS = Path(__file__).resolve().parents[2] / "definitions"
D1, D2, D3, D4 = date(2026, 3, 1), date(2026, 3, 2), date(2026, 3, 3), date(2026, 3, 4)


def at(text: str) -> datetime:
    return datetime.fromisoformat(text).replace(tzinfo=UTC)


def event(
    event_id: str,
    user_id: int,
    item_id: int,
    event_type: str,
    event_time: str,
    category: str,
    embedding: list[float],
    dwell_ms: int,
) -> dict[str, Any]:
    return {
        "event_id": event_id,
        "user_id": user_id,
        "item_id": item_id,
        "event_type": event_type,
        "event_time": at(event_time),
        "surface": "home",
        "dwell_ms": dwell_ms,
        "category": category,
        "embedding": embedding,
        "dwell_bucket": 0 if dwell_ms < 1000 else (1 if dwell_ms < 5000 else 2),
    }


E1 = event("e1", 1, 10, "save", "2026-03-01T08:00:00", "hats", [0.5, 0.25], 500)
E2 = event("e2", 1, 20, "save", "2026-03-01T09:00:00", "bags", [1.0, -1.0], 2000)
E3 = event("e3", 1, 30, "click", "2026-03-02T10:00:00", "shoes", [0.125, 2.0], 6000)
E8 = event("e8", 1, 40, "like", "2026-03-02T11:00:00", "toys", [0.0, 0.0], 100)
E5 = event("e5", 2, 20, "click", "2026-03-02T05:00:00", "bags", [1.0, -1.0], 100)
E3_REALTIME = {**E3, "event_type": "save", "category": "WRONG", "embedding": [9.0, 9.0]}
E0 = event("e0", 2, 10, "click", "2026-03-01T06:00:00", "hats", [0.5, 0.25], 100)
E4 = event("e4", 1, 20, "save", "2026-03-03T08:00:00", "bags", [1.0, -1.0], 1500)
E6 = event("e6", 1, 50, "like", "2026-03-03T09:00:00", "pets", [0.0, 0.5], 300)
E7 = event("e7", 1, 30, "click", "2026-03-03T12:00:00", "shoes", [0.125, 2.0], 300)
REALTIME = [E3_REALTIME, E0, E4, E6, E7]

ITEMS = [
    (10, "2026-01-01T00:00:00", "hats"),
    (20, "2026-02-01T00:00:00", "bags"),
    (20, "2026-03-03T06:00:00", "luggage"),
    (30, "2026-01-01T00:00:00", "shoes"),
]


def stored_days(
    catalog: Catalog, spec: SequenceSpec, users: dict[int, list[dict[str, Any]]]
) -> pl.DataFrame:
    """The sequence table rows that store ``users`` (each a newest-first list of events): per
    user and day of ``event_time``, that day's events as list columns (see ``day_rows``)."""
    elements = catalog.sequence_element_schema(spec.name)
    schema = {
        DT: pl.Date(),
        "user_id": pl.Int64(),
        "length": pl.Int32(),
        **{name: pl.List(dtype) for name, dtype in elements.items()},
    }
    rows = []
    for user, events in sorted(users.items()):
        for day in sorted({e["event_time"].date() for e in events}):
            todays = [e for e in events if e["event_time"].date() == day]
            rows.append(
                {
                    DT: day,
                    "user_id": user,
                    "length": len(todays),
                    **{name: [e[name] for e in todays] for name in spec.stored_fields},
                }
            )
    return pl.DataFrame(rows, schema=schema, orient="row").sort(DT, "user_id")


def write_snapshot(
    catalog: Catalog,
    layout: TableLayout,
    sequence: str,
    day: date,
    users: dict[int, list[dict[str, Any]]],
) -> int:
    """Store ``users`` so that the snapshot of ``day`` is exactly them; returns the version."""
    spec = catalog.sequences[sequence]
    frame = stored_days(catalog, spec, users).filter(pl.col(DT) <= day)
    first = min([day, *frame[DT].to_list()])
    return overwrite_days(layout.sequence(spec), frame, first, day).version


def write_data_home(catalog: Catalog, layout: TableLayout) -> None:
    write_snapshot(catalog, layout, "recent_saves", D1, {1: [E2, E1]})
    write_snapshot(catalog, layout, "recent_saves", D2, {1: [E3, E2, E1], 2: [E5]})
    write_snapshot(catalog, layout, "recent_engagement", D2, {1: [E8, E3, E2, E1], 2: [E5]})

    signal = catalog.signal_schema("engagement_enriched")
    # The batch's signal rows of the stored days: a read between two midnights uses them.
    batch = pl.DataFrame([E1, E2, E3, E8, E5], schema=signal, orient="row").with_columns(
        pl.col("event_time").dt.date().alias(DT)
    )
    overwrite_days(layout.signals("engagement_enriched"), batch, D1, D2)
    realtime = pl.DataFrame(REALTIME, schema=signal, orient="row").with_columns(
        pl.col("event_time").dt.date().alias(DT)
    )
    first, last = realtime[DT].min(), realtime[DT].max()
    assert isinstance(first, date) and isinstance(last, date)
    overwrite_days(layout.realtime("engagement_enriched"), realtime, first, last)

    items = pl.DataFrame(
        [
            {"item_id": item, "updated_at": at(when), "category": category, "embedding": [1.0]}
            for item, when, category in ITEMS
        ],
        schema=catalog.feature_schema("items"),
        orient="row",
    ).with_columns(pl.col("updated_at").dt.date().alias(DT))
    overwrite_days(layout.features("items"), items, date(2026, 1, 1), D3)
