"""The HTTP API over real HTTP: values worked out by hand from ``data_home``'s table."""

from __future__ import annotations

from typing import Any

import httpx
import pyarrow as pa
import pytest

from sequence_platform.serving.models import BatchResponse, SequenceResponse
from sequence_platform_tests.serving.conftest import Served
from sequence_platform_tests.serving.data_home import at

T = "2026-03-03T12:00:00Z"
SAVES_1 = "/v1/sequences/recent_saves/1"
SAVES_1_ITEMS = [("e4", 20), ("e3", 30), ("e2", 20), ("e1", 10)]


def get(served: Served, path: str, **params: Any) -> dict[str, Any]:
    response = served.client.get(path, params=params)
    assert response.status_code == 200, response.text
    body: dict[str, Any] = response.json()
    if path.startswith("/v1/sequences/"):
        # The documents Polars writes must be exactly what the response model describes.
        assert SequenceResponse.model_validate(body).model_dump() == body
    return body


def error(served: Served, path: str, status: int, **params: Any) -> str:
    response = served.client.get(path, params=params)
    assert response.status_code == status, response.text
    detail: str = response.json()["detail"]
    return detail


def test_snapshot_plus_tail_with_request_time_fields(served: Served) -> None:
    body = get(served, SAVES_1, as_of=T)
    assert body["sequence"] == "recent_saves"
    assert body["version"] == 1
    assert body["user_id"] == 1
    assert body["as_of"] == "2026-03-03T12:00:00.000Z"
    assert body["length"] == 4
    assert body["events"] == [
        # Real time, newest. Item 20 is 'luggage' since 03-03 06:00; it was 'bags' when saved.
        {
            "event_id": "e4",
            "event_time": "2026-03-03T08:00:00.000Z",
            "item_id": 20,
            "event_type": "save",
            "category": "bags",
            "current_category": "luggage",
            "age_seconds": 4 * 3600.0,
        },
        # In the snapshot and in real time (as save / WRONG): the snapshot's copy wins.
        {
            "event_id": "e3",
            "event_time": "2026-03-02T10:00:00.000Z",
            "item_id": 30,
            "event_type": "click",
            "category": "shoes",
            "current_category": "shoes",
            "age_seconds": 26 * 3600.0,
        },
        {
            "event_id": "e2",
            "event_time": "2026-03-01T09:00:00.000Z",
            "item_id": 20,
            "event_type": "save",
            "category": "bags",
            "current_category": "luggage",
            "age_seconds": (2 * 24 + 3) * 3600.0,
        },
        {
            "event_id": "e1",
            "event_time": "2026-03-01T08:00:00.000Z",
            "item_id": 10,
            "event_type": "save",
            "category": "hats",
            "current_category": "hats",
            "age_seconds": (2 * 24 + 4) * 3600.0,
        },
    ]
    # e6 (a like) fails the filter; e7 at exactly T is outside the window and the watermark.
    assert body["provenance"] == {
        "snapshot_cutoff": "2026-03-03T00:00:00.000Z",
        "snapshot_version": body["provenance"]["snapshot_version"],
        "from_batch": 3,
        "from_realtime": 1,
        "realtime_watermark": "2026-03-03T09:00:00.000Z",
    }


def test_late_event_only_in_real_time_is_served(served: Served) -> None:
    body = get(served, "/v1/sequences/recent_saves/2", as_of=T, fields="item_id")
    assert body["events"] == [
        {"event_id": "e5", "event_time": "2026-03-02T05:00:00.000Z", "item_id": 20},
        {"event_id": "e0", "event_time": "2026-03-01T06:00:00.000Z", "item_id": 10},
    ]
    assert (body["provenance"]["from_batch"], body["provenance"]["from_realtime"]) == (1, 1)


def test_columnar_with_embeddings_and_no_request_enrichment(served: Served) -> None:
    body = get(
        served,
        "/v1/sequences/recent_engagement/1",
        as_of="2026-03-03T13:00:00+01:00",  # the same instant as T
        format="columnar",
        fields="embedding,dwell_bucket,event_type",
    )
    assert body["as_of"] == "2026-03-03T12:00:00.000Z"
    assert body["events"] == {
        "event_id": ["e6", "e4", "e8", "e3", "e2", "e1"],
        "event_time": [
            "2026-03-03T09:00:00.000Z",
            "2026-03-03T08:00:00.000Z",
            "2026-03-02T11:00:00.000Z",
            "2026-03-02T10:00:00.000Z",
            "2026-03-01T09:00:00.000Z",
            "2026-03-01T08:00:00.000Z",
        ],
        "embedding": [[0.0, 0.5], [1.0, -1.0], [0.0, 0.0], [0.125, 2.0], [1.0, -1.0], [0.5, 0.25]],
        "dwell_bucket": [0, 1, 0, 2, 1, 0],
        "event_type": ["like", "save", "like", "click", "save", "save"],
    }
    assert body["length"] == 6
    assert (body["provenance"]["from_batch"], body["provenance"]["from_realtime"]) == (4, 2)


def test_as_of_in_the_past_reads_what_the_batch_held_before_it(served: Served) -> None:
    body = get(served, SAVES_1, as_of="2026-03-02T12:00:00Z")
    # The 03-02 snapshot (cutoff 03-03) is too new; the 03-01 one lacks e3, which the batch
    # holds in 03-02's signal rows: its landing copy (a click) wins over the stale real-time
    # copy (a save in category 'WRONG'). Item 20 is still 'bags' at this time.
    assert [
        (e["event_id"], e["event_type"], e["category"], e["current_category"], e["age_seconds"])
        for e in body["events"]
    ] == [
        ("e3", "click", "shoes", "shoes", 2 * 3600.0),
        ("e2", "save", "bags", "bags", 27 * 3600.0),
        ("e1", "save", "hats", "hats", 28 * 3600.0),
    ]
    provenance = body["provenance"]
    assert provenance["snapshot_cutoff"] == "2026-03-02T00:00:00.000Z"
    assert (provenance["from_batch"], provenance["from_realtime"]) == (3, 0)
    assert provenance["realtime_watermark"] == "2026-03-02T10:00:00.000Z"


def test_between_two_midnights_the_batch_rows_before_t_count(served: Served) -> None:
    """At 03-01 12:00 no snapshot has passed its cutoff yet (the first is 03-02 00:00), but
    the batch holds 03-01's events: those before T are served, with the real-time ones."""
    user2 = get(served, "/v1/sequences/recent_saves/2", as_of="2026-03-01T12:00:00Z")
    assert [e["event_id"] for e in user2["events"]] == ["e0"]
    assert user2["provenance"] == {
        "snapshot_cutoff": "2026-03-01T00:00:00.000Z",
        "snapshot_version": user2["provenance"]["snapshot_version"],
        "from_batch": 0,
        "from_realtime": 1,
        "realtime_watermark": "2026-03-01T06:00:00.000Z",
    }
    user1 = get(served, SAVES_1, as_of="2026-03-01T12:00:00Z")
    assert [e["event_id"] for e in user1["events"]] == ["e2", "e1"]
    assert (user1["provenance"]["from_batch"], user1["provenance"]["from_realtime"]) == (2, 0)
    # One millisecond after e1 and before e2: only e1.
    between = get(served, SAVES_1, as_of="2026-03-01T08:00:00.001Z")
    assert [e["event_id"] for e in between["events"]] == ["e1"]
    # Before every event of the batch, and before every snapshot: nothing.
    early = get(served, SAVES_1, as_of="2026-03-01T08:00:00Z")
    assert (early["length"], early["events"]) == (0, [])


def test_max_age_and_max_length_trim(served: Served) -> None:
    # 100,000 s before T is 03-02 08:13:20: e4 and e3 remain.
    aged = get(served, SAVES_1, as_of=T, max_age_seconds=100_000)
    assert [e["event_id"] for e in aged["events"]] == ["e4", "e3"]
    assert (aged["provenance"]["from_batch"], aged["provenance"]["from_realtime"]) == (1, 1)
    short = get(served, SAVES_1, as_of=T, max_length=2, format="columnar", fields="age_seconds")
    assert short["events"] == {
        "event_id": ["e4", "e3"],
        "event_time": ["2026-03-03T08:00:00.000Z", "2026-03-02T10:00:00.000Z"],
        "age_seconds": [14400.0, 93600.0],
    }
    assert short["length"] == 2
    longest = get(served, SAVES_1, as_of=T, max_length=50, fields="event_id")
    assert list(longest["events"][0]) == ["event_id", "event_time"]


def test_unknown_user_is_empty(served: Served) -> None:
    body = get(served, "/v1/sequences/recent_saves/424242", as_of=T, format="columnar")
    assert body["length"] == 0
    assert body["events"] == {name: [] for name in body["events"]}
    assert set(body["events"]) >= {"event_id", "event_time", "current_category", "age_seconds"}
    assert (body["provenance"]["from_batch"], body["provenance"]["from_realtime"]) == (0, 0)


def arrow(response: httpx.Response) -> pa.Table:
    assert response.status_code == 200, response.text
    assert response.headers["content-type"] == "application/vnd.apache.arrow.stream"
    with pa.ipc.open_stream(response.content) as reader:
        return reader.read_all()


def test_arrow_stream_one_row_per_event(served: Served) -> None:
    params = {"as_of": T, "fields": "item_id,current_category,age_seconds", "format": "arrow"}
    table = arrow(served.client.get(SAVES_1, params=params))
    assert table.schema.names == [
        "user_id",
        "event_id",
        "event_time",
        "item_id",
        "current_category",
        "age_seconds",
    ]
    assert str(table.schema.field("event_time").type) == "timestamp[ms, tz=UTC]"
    assert table.to_pydict() == {
        "user_id": [1, 1, 1, 1],
        "event_id": ["e4", "e3", "e2", "e1"],
        "event_time": [at("2026-03-03T08:00"), at("2026-03-02T10:00"), at("2026-03-01T09:00"),
                       at("2026-03-01T08:00")],
        "item_id": [20, 30, 20, 10],
        "current_category": ["luggage", "shoes", "luggage", "hats"],
        "age_seconds": [4 * 3600.0, 26 * 3600.0, 51 * 3600.0, 52 * 3600.0],
    }  # fmt: skip
    assert table.schema.metadata == {
        b"sequence": b"recent_saves",
        b"version": b"1",
        b"as_of": b"2026-03-03T12:00:00.000Z",
        b"snapshot_cutoff": b"2026-03-03T00:00:00.000Z",
        b"snapshot_version": table.schema.metadata[b"snapshot_version"],
        b"realtime_watermark": b"2026-03-03T09:00:00.000Z",
    }
    unknown = arrow(served.client.get("/v1/sequences/recent_saves/424242", params=params))
    assert unknown.num_rows == 0 and unknown.schema.names == table.schema.names


def test_batch_as_arrow_keeps_request_order(served: Served) -> None:
    body = {"user_ids": [2, 777, 1, 2], "as_of": T, "fields": "item_id", "format": "arrow"}
    table = arrow(served.client.post("/v1/sequences/recent_saves/batch", json=body))
    assert table.select(["user_id", "event_id", "item_id"]).to_pylist() == [
        {"user_id": 2, "event_id": "e5", "item_id": 20},
        {"user_id": 2, "event_id": "e0", "item_id": 10},
        *[{"user_id": 1, "event_id": e, "item_id": i} for e, i in SAVES_1_ITEMS],
        {"user_id": 2, "event_id": "e5", "item_id": 20},
        {"user_id": 2, "event_id": "e0", "item_id": 10},
    ]


def test_default_as_of_is_now(served: Served) -> None:
    body = get(served, SAVES_1)
    # Now is after every partition's cutoff: the newest snapshot and every real-time row.
    assert body["provenance"]["snapshot_cutoff"] == "2026-03-03T00:00:00.000Z"
    assert body["as_of"].endswith("Z") and len(body["as_of"]) == len("2026-03-03T12:00:00.000Z")


@pytest.mark.parametrize(
    ("path", "params", "status", "message"),
    [
        ("/v1/sequences/nope/1", {}, 404, "known sequences: recent_engagement, recent_saves"),
        (SAVES_1, {"max_length": 0}, 422, "max_length"),
        (SAVES_1, {"max_length": 51}, 422, "between 1 and 50"),
        (SAVES_1, {"max_age_seconds": 0}, 422, "max_age_seconds"),
        (SAVES_1, {"max_age_seconds": "nan"}, 422, "max_age_seconds"),
        (SAVES_1, {"fields": "item_id,colour"}, 422, "allowed: event_id, event_time, item_id"),
        (SAVES_1, {"fields": " , "}, 422, "fields is empty"),
        (SAVES_1, {"as_of": "yesterday"}, 422, "not an ISO-8601 time"),
        (SAVES_1, {"as_of": "2026-03-03T12:00:00"}, 422, "no time zone"),
        (SAVES_1, {"as_of": "0001-01-01T00:00:00+01:00"}, 422, "as_of must be from"),
        (SAVES_1, {"format": "xml"}, 422, "'records', 'columnar' or 'arrow'"),
        ("/v1/sequences/recent_saves/abc", {}, 422, "user_id"),
        ("/v1/sequences/recent_saves/1.5", {}, 422, "user_id"),
        ("/v1/sequences/recent_saves/99999999999999999999", {}, 422, "user_id"),
    ],
)
def test_bad_requests(
    served: Served, path: str, params: dict[str, Any], status: int, message: str
) -> None:
    assert message in error(served, path, status, **params)


def test_batch_matches_single_requests_in_request_order(served: Served) -> None:
    options = {"as_of": T, "max_length": 3, "fields": "item_id,current_category"}
    response = served.client.post(
        "/v1/sequences/recent_saves/batch", json={"user_ids": [2, 777, 1, 2], **options}
    )
    assert response.status_code == 200, response.text
    results = response.json()["results"]
    assert BatchResponse.model_validate(response.json()).model_dump() == response.json()
    assert [r["user_id"] for r in results] == [2, 777, 1, 2]
    assert [r["length"] for r in results] == [2, 0, 3, 2]
    for result in results:
        assert result == get(served, f"/v1/sequences/recent_saves/{result['user_id']}", **options)


def test_batch_columnar_with_list_of_fields(served: Served) -> None:
    body = {"user_ids": [1], "as_of": T, "fields": ["item_id"], "format": "columnar"}
    response = served.client.post("/v1/sequences/recent_saves/batch", json=body)
    assert response.status_code == 200, response.text
    assert response.json()["results"][0]["events"]["item_id"] == [20, 30, 20, 10]


@pytest.mark.parametrize(
    ("body", "message"),
    [
        ({"user_ids": list(range(1_001))}, "at most 1,000 distinct users (got 1,001)"),
        ({"user_ids": []}, "user_ids"),
        ({"user_ids": ["x"]}, "user_ids"),
        ({"user_ids": [2**63]}, "user_ids"),
        # User ids are JSON integers, as in the path of the single endpoint: nothing coerced.
        ({"user_ids": ["1"]}, "body field 'user_ids.0': Input should be a valid integer"),
        ({"user_ids": [1, 1.0]}, "body field 'user_ids.1': Input should be a valid integer"),
        ({"user_ids": [True]}, "body field 'user_ids.0': Input should be a valid integer"),
        ({"user_ids": [1], "max_length": "3"}, "body field 'max_length': Input should be a valid"),
        ({"user_ids": [1], "max_length": True}, "body field 'max_length': Input should be a val"),
        ({"user_ids": [1], "max_length": 0}, "max_length must be between 1 and 50"),
        ({"user_ids": [1], "as_of": "2026-03-03"}, "no time zone"),
        ({"user_ids": [1], "fields": "nope"}, "unknown field"),
        ({"user_ids": [1], "format": "xml"}, "format"),
        ({"user_ids": [1], "colour": "red"}, "colour"),
    ],
)
def test_bad_batches(served: Served, body: dict[str, Any], message: str) -> None:
    response = served.client.post("/v1/sequences/recent_saves/batch", json=body)
    assert response.status_code == 422, response.text
    assert message in response.json()["detail"]


def test_batch_of_a_thousand_users(served: Served) -> None:
    users = [1, 2, *range(10_000, 10_998)]
    response = served.client.post(
        "/v1/sequences/recent_engagement/batch", json={"user_ids": users, "as_of": T}
    )
    assert response.status_code == 200, response.text
    lengths = [r["length"] for r in response.json()["results"]]
    assert lengths[:2] == [6, 2] and set(lengths[2:]) == {0}
    unknown = served.client.post("/v1/sequences/nope/batch", json={"user_ids": [1]})
    assert unknown.status_code == 404


def test_definitions(served: Served) -> None:
    body = get(served, "/v1/definitions")
    by_name = {d["name"]: d for d in body["definitions"]}
    assert {d["kind"] for d in body["definitions"]} == {
        "source",
        "feature_table",
        "signal",
        "sequence",
        "training_set",
    }
    training = by_name["saves_training"]
    assert (training["spine"], training["sequences"]) == (
        "labels",
        ["recent_saves", "recent_engagement"],
    )
    assert training["fields"]["recent_saves__length"] == "int32"
    assert training["fields"]["recent_saves__current_category"] == "list[string]"
    assert training["fields"]["recent_engagement__embedding"] == "list[list[float32]]"
    saves = by_name["recent_saves"]
    assert (saves["kind"], saves["version"], saves["origin"]) == (
        "sequence",
        1,
        "definitions/recent_saves.json",
    )
    assert saves["fields"] == {
        "event_id": "string",
        "event_time": "timestamp",
        "item_id": "int64",
        "event_type": "string",
        "category": "string",
        "current_category": "string",
        "age_seconds": "float64",
    }
    assert by_name["items"]["fields"]["embedding"] == "list[float32]"
    assert by_name["items"]["version"] is None
    assert by_name["engagement_enriched"]["fields"]["dwell_bucket"] == "int32"
    assert by_name["recent_engagement"]["description"].startswith("Newest 100")


def test_health_readiness_metrics_and_docs(served: Served) -> None:
    assert get(served, "/healthz") == {"status": "ok"}
    ready = get(served, "/readyz")
    assert ready["status"] == "ready" and ready["reasons"] == []
    assert {(t["kind"], t["name"]) for t in ready["tables"]} == {
        ("sequence", "recent_saves"),
        ("sequence", "recent_engagement"),
        ("realtime", "engagement_enriched"),
        ("features", "items"),
    }
    served.client.get("/v1/sequences/nope/1")
    served.client.get("/no/such/path/123")
    metrics = served.client.get("/metrics")
    assert metrics.status_code == 200
    assert metrics.headers["content-type"].startswith("text/plain")
    text = metrics.text
    route = 'route="/v1/sequences/{sequence}/{user_id}"'
    assert f'sequence_platform_http_requests_total{{method="GET",{route},status="404"}}' in text
    assert 'route="unmatched",status="404"' in text
    assert "sequence_platform_http_request_duration_seconds_bucket{" in text
    assert 'sequence_platform_snapshot_rows{sequence="recent_saves"} 2.0' in text
    # version 0 creates the table, version 1 the first day, version 2 the second
    assert 'sequence_platform_snapshot_table_version{sequence="recent_saves"} 2.0' in text
    assert (
        'sequence_platform_refresh_errors_total{kind="realtime",table="engagement_enriched"} 0.0'
        in text
    )
    openapi = get(served, "/openapi.json")
    parameters = openapi["paths"]["/v1/sequences/{sequence}/{user_id}"]["get"]["parameters"]
    assert {p["name"] for p in parameters} == {
        "sequence",
        "user_id",
        "max_length",
        "max_age_seconds",
        "fields",
        "as_of",
        "format",
    }
    assert all(p.get("description") for p in parameters)
    formats = next(p for p in parameters if p["name"] == "format")["schema"]
    assert formats["enum"] == ["records", "columnar", "arrow"]
    for path, method in [
        ("/v1/sequences/{sequence}/{user_id}", "get"),
        ("/v1/sequences/{sequence}/batch", "post"),
    ]:
        ok = openapi["paths"][path][method]["responses"]["200"]
        assert set(ok["content"]) == {"application/json", "application/vnd.apache.arrow.stream"}
        assert "Arrow IPC stream" in ok["description"]
