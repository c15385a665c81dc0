"""A running server picks up new table versions without a restart."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import polars as pl

from sequence_platform.storage.delta import DT, append_once, overwrite_days
from sequence_platform_tests.serving.conftest import REFRESH_INTERVAL, Served
from sequence_platform_tests.serving.data_home import (
    D3,
    D4,
    E1,
    E2,
    E3,
    E4,
    E5,
    E6,
    E7,
    E8,
    event,
    write_snapshot,
)

AS_OF = "2026-03-04T01:00:00Z"
# Detected at the next check and reloaded: allow a couple of intervals plus the reload itself.
PICKUP_SECONDS = 3 * REFRESH_INTERVAL + 1.0


def poll(served: Served, path: str, done: Callable[[dict[str, Any]], bool]) -> float:
    began = time.monotonic()
    while True:
        response = served.client.get(path, params={"as_of": AS_OF})
        assert response.status_code == 200, response.text
        if done(response.json()):
            return time.monotonic() - began
        assert time.monotonic() - began < PICKUP_SECONDS, response.json()
        time.sleep(REFRESH_INTERVAL / 10)


def test_new_snapshot_partition_is_served_without_restart(served: Served) -> None:
    path = "/v1/sequences/recent_engagement/1"
    before = served.client.get(path, params={"as_of": AS_OF}).json()
    # The 03-02 snapshot plus e7, e6 and e4 from real time (e3's real-time copy is a duplicate).
    assert [e["event_id"] for e in before["events"]] == ["e7", "e6", "e4", "e8", "e3", "e2", "e1"]
    assert before["provenance"]["snapshot_cutoff"] == "2026-03-03T00:00:00.000Z"
    assert (before["provenance"]["from_batch"], before["provenance"]["from_realtime"]) == (4, 3)

    version = write_snapshot(
        served.catalog,
        served.layout,
        "recent_engagement",
        D3,
        {1: [E7, E6, E4, E8, E3, E2, E1], 2: [E5]},
    )
    poll(served, path, lambda body: body["provenance"]["snapshot_version"] == version)

    after = served.client.get(path, params={"as_of": AS_OF}).json()
    assert [e["event_id"] for e in after["events"]] == ["e7", "e6", "e4", "e8", "e3", "e2", "e1"]
    assert after["provenance"]["snapshot_cutoff"] == "2026-03-04T00:00:00.000Z"
    assert (after["provenance"]["from_batch"], after["provenance"]["from_realtime"]) == (7, 0)
    # An as-of before the new cutoff still gets the older snapshot.
    older = served.client.get(path, params={"as_of": "2026-03-03T12:00:00Z"}).json()
    assert older["provenance"]["snapshot_cutoff"] == "2026-03-03T00:00:00.000Z"
    metrics = served.client.get("/metrics").text
    assert f'snapshot_table_version{{sequence="recent_engagement"}} {version}.0' in metrics


def test_new_real_time_rows_are_served_without_restart(served: Served) -> None:
    path = "/v1/sequences/recent_saves/3"
    assert served.client.get(path, params={"as_of": AS_OF}).json()["length"] == 0
    fresh = event("e11", 3, 30, "save", "2026-03-04T00:30:00", "shoes", [1.0, 1.0], 100)
    signal = served.catalog.signal_schema("engagement_enriched")
    rows = pl.DataFrame([fresh], schema=signal, orient="row").with_columns(
        pl.col("event_time").dt.date().alias(DT)
    )
    overwrite_days(served.layout.realtime("engagement_enriched"), rows, D4, D4)
    poll(served, path, lambda body: body["length"] == 1)
    body = served.client.get(path, params={"as_of": AS_OF}).json()
    assert body["events"][0]["event_id"] == "e11"
    assert body["provenance"]["from_realtime"] == 1
    assert body["provenance"]["realtime_watermark"] == "2026-03-04T00:30:00.000Z"


def test_appended_real_time_rows_are_read_as_new_files_only(served: Served) -> None:
    """Micro-batches append; the service reads each new commit's files, not the table."""
    uri = served.layout.realtime("engagement_enriched")
    tail = served.app.state.serving.store.tails["engagement_enriched"]
    signal = served.catalog.signal_schema("engagement_enriched")
    before = tail.files_read
    path = "/v1/sequences/recent_saves/4"
    for offset, (event_id, minute) in enumerate([("e21", 10), ("e22", 20)]):
        fresh = event(event_id, 4, 40, "save", f"2026-03-04T00:{minute}:00", "shoes", [1.0], 100)
        rows = pl.DataFrame([fresh], schema=signal, orient="row").with_columns(
            pl.col("event_time").dt.date().alias(DT),
            pl.lit(0, dtype=pl.Int32).alias("stream_partition"),
            pl.lit(offset, dtype=pl.Int64).alias("stream_offset"),
        )
        assert append_once(uri, rows, "engagement/0", offset + 1) is not None
        poll(served, path, lambda body, n=offset + 1: body["length"] == n)
    body = served.client.get(path, params={"as_of": AS_OF}).json()
    assert [e["event_id"] for e in body["events"]] == ["e22", "e21"]
    assert tail.files_read - before == 2
