"""Operating the read service: what ``/metrics`` says, the JSON logs of ``serve`` and ``/docs``
without a network. Real uvicorn servers over the tiny data home (see ``data_home``)."""

from __future__ import annotations

import itertools
import json
import os
import re
import subprocess
import sys
import time
from collections.abc import Callable
from datetime import UTC, date, datetime
from pathlib import Path
from typing import Any

import httpx
import polars as pl
import pytest
from prometheus_client.parser import text_string_to_metric_families

from sequence_platform import cli
from sequence_platform.engine.decode import ORIGIN, REASON, RECORD
from sequence_platform.runtime.microbatch import CHANNEL, DEAD_LETTER_COLUMNS, STREAM_OFFSET
from sequence_platform.serving import create_app
from sequence_platform.settings import PlatformSettings
from sequence_platform.spec import Catalog
from sequence_platform.storage.delta import DT, overwrite_days
from sequence_platform.storage.layout import TableLayout
from sequence_platform_tests.serving.conftest import RunningServer, Served, wait_for
from sequence_platform_tests.serving.data_home import D1, D2, DEFINITIONS, write_data_home
from sequence_platform_tests.serving.test_workers import free_port

REPO = Path(__file__).resolve().parents[2]
ONE_GET = "/v1/sequences/{sequence}/{user_id}"
DURATION = "sequence_platform_http_request_duration_seconds"
SNAPSHOT_CUTOFF = datetime(2026, 3, 3, tzinfo=UTC)
"""Cutoff of the newest stored day (D2) of both sequences in the data home."""
NEWEST_REALTIME = datetime(2026, 3, 3, 12, tzinfo=UTC)
"""The newest real-time event (e7) of the data home."""

Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]


def samples(text: str) -> Samples:
    """Every sample of a Prometheus text page, by name and labels."""
    return {
        (sample.name, frozenset(sample.labels.items())): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }


def value(found: Samples, name: str, **labels: str) -> float:
    return found[(name, frozenset(labels.items()))]


def label_values(found: Samples, name: str, label: str) -> set[str]:
    return {dict(labels)[label] for sample, labels in found if sample == name}


def write_dead_letters(layout: TableLayout, name: str, day: date, reasons: list[str]) -> None:
    """Rejected records of ``name`` for ``day``, as the batch writes them (one commit)."""
    frame = pl.DataFrame(
        {
            DT: [day] * len(reasons),
            RECORD: [f'{{"broken": {i}' for i in range(len(reasons))],
            REASON: reasons,
            ORIGIN: [f"landing/{name}/dt={day}/part.jsonl:{i + 1}" for i in range(len(reasons))],
            CHANNEL: ["landing"] * len(reasons),
            STREAM_OFFSET: pl.Series([None] * len(reasons), dtype=pl.Int64),
        }
    ).select(DEAD_LETTER_COLUMNS)
    overwrite_days(layout.dead_letters(name), frame, day, day)


def until(condition: Callable[[], bool], what: str, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.05)


def test_metrics_latency_per_route_and_sequence_snapshot_age_lag_and_dead_letters(
    tmp_path: Path, catalog: Catalog
) -> None:
    settings = PlatformSettings(home=tmp_path, tables_uri=None, definitions=DEFINITIONS)
    layout = TableLayout(settings.tables_root)
    write_data_home(catalog, layout)
    write_dead_letters(layout, "engagement", D1, ["user_id is null", "not JSON"])
    write_dead_letters(layout, "engagement", D2, ["event_time is not a timestamp"])
    app = create_app(settings, catalog=catalog, refresh_interval=0.1)
    with RunningServer(app) as base_url, httpx.Client(base_url=base_url, timeout=30) as client:
        wait_for(client, "/readyz")
        for _ in range(3):
            assert client.get("/v1/sequences/recent_saves/1").status_code == 200
        assert client.get("/v1/sequences/recent_engagement/2").status_code == 200
        assert client.get("/v1/sequences/recent_saves/1?max_length=0").status_code == 422
        assert client.get("/v1/sequences/no_such_sequence/1").status_code == 404
        assert client.post("/v1/sequences/recent_saves/batch", json={"user_ids": [1, 2]}).is_success

        before = datetime.now(UTC)
        found = samples(client.get("/metrics").text)
        after = datetime.now(UTC)

        def count(sequence: str, status_class: str, route: str = ONE_GET) -> float:
            labels = {"route": route, "sequence": sequence, "status_class": status_class}
            return value(found, f"{DURATION}_count", **labels)

        assert count("recent_saves", "2xx") == 3
        assert count("recent_engagement", "2xx") == 1
        assert count("recent_saves", "4xx") == 1
        assert count("", "4xx") == 1  # an unknown name adds no label value
        assert count("recent_saves", "2xx", "/v1/sequences/{sequence}/batch") == 1
        assert "no_such_sequence" not in label_values(found, f"{DURATION}_count", "sequence")
        # The buckets of one route and sequence: cumulative, ending in every request at +Inf.
        saves = {"route": ONE_GET, "sequence": "recent_saves", "status_class": "2xx"}
        buckets = sorted(
            (float(dict(labels)["le"]), number)
            for (name, labels), number in found.items()
            if name == f"{DURATION}_bucket" and {**dict(labels), "le": ""} == {**saves, "le": ""}
        )
        assert [le for le, _ in buckets][:3] == [0.001, 0.0025, 0.005]
        assert buckets[-1] == (float("inf"), 3)
        assert all(a <= b for (_, a), (_, b) in itertools.pairwise(buckets))
        assert value(found, f"{DURATION}_sum", **saves) > 0

        for sequence in ("recent_saves", "recent_engagement"):
            age = value(found, "sequence_platform_snapshot_age_seconds", sequence=sequence)
            low = (before - SNAPSHOT_CUTOFF).total_seconds()
            high = (after - SNAPSHOT_CUTOFF).total_seconds()
            assert low <= age <= high
        lag = value(found, "sequence_platform_realtime_lag_seconds", signal="engagement_enriched")
        low = (before - NEWEST_REALTIME).total_seconds()
        high = (after - NEWEST_REALTIME).total_seconds()
        assert low <= lag <= high
        assert value(found, "sequence_platform_dead_letters", source="engagement") == 3
        assert value(found, "sequence_platform_dead_letters", source="items") == 0
        # Counted in one place: table_rows has the tables the service reads, not dead letters.
        kinds = label_values(found, "sequence_platform_table_rows", "kind")
        assert kinds == {"sequence", "realtime", "features"}
        assert value(found, "sequence_platform_table_rows", kind="sequence", table="recent_saves")

        # Dead letters are followed with the tables' versions, not read per request.
        write_dead_letters(layout, "items", D2, ["updated_at is null", "item_id is not an int"])
        write_dead_letters(layout, "engagement", D2, [])  # the day's one record corrected

        def dead_letters() -> tuple[float, float]:
            now = samples(client.get("/metrics").text)
            metric = "sequence_platform_dead_letters"
            return value(now, metric, source="engagement"), value(now, metric, source="items")

        until(lambda: dead_letters() == (2, 2), "the new dead-letter counts")
        # Not part of readiness: the read service does not need them to answer.
        assert all(t["kind"] != "dead_letters" for t in client.get("/readyz").json()["tables"])


def serve_in_background(
    home: Path, log: Path, *options: str
) -> tuple[subprocess.Popen[bytes], str]:
    port = free_port()
    env = {key: value for key, value in os.environ.items() if not key.startswith("SEQUENCE_")}
    env |= {
        "SEQUENCE_PLATFORM_HOME": str(home),
        "SEQUENCE_PLATFORM_DEFINITIONS": str(DEFINITIONS),
        "SEQUENCE_PLATFORM_REFRESH_SECONDS": "0.2",
    }
    command = [sys.executable, "-m", "sequence_platform.cli", "serve", f"--port={port}", *options]
    with log.open("w") as output:
        process = subprocess.Popen(
            command, cwd=REPO, env=env, stdout=output, stderr=subprocess.STDOUT
        )
    return process, f"http://127.0.0.1:{port}"


def json_lines(log: Path) -> list[dict[str, Any]]:
    """Every line of the log, each a JSON object (a line that is not fails the test)."""
    lines = [line for line in log.read_text().splitlines() if line.strip()]
    parsed = []
    for line in lines:
        try:
            parsed.append(json.loads(line))
        except json.JSONDecodeError as error:
            raise AssertionError(f"not a JSON log line: {line!r}") from error
    return parsed


def run_and_stop(
    home: Path, log: Path, requests: Callable[[httpx.Client], None], *options: str
) -> list[dict[str, Any]]:
    """``serve`` with ``options`` over ``home`` until ``requests`` are done; its log lines."""
    process, base = serve_in_background(home, log, *options)
    try:
        with httpx.Client(base_url=base, timeout=30) as client:

            def ready() -> bool:
                assert process.poll() is None, f"serve exited:\n{log.read_text()}"
                try:
                    return client.get("/readyz").status_code == 200
                except httpx.TransportError:
                    return False

            until(ready, "the service to be ready", timeout=60)
            requests(client)
    finally:
        process.terminate()
        process.wait(timeout=20)
    return json_lines(log)


def test_serve_logs_json_lines_one_per_request_with_access_log(
    tmp_path: Path, catalog: Catalog
) -> None:
    write_data_home(catalog, TableLayout(str(tmp_path / "tables")))

    def requests(client: httpx.Client) -> None:
        assert client.get("/v1/sequences/recent_saves/2?fields=item_id").status_code == 200
        assert client.get("/v1/sequences/recent_saves/x").status_code == 422
        assert client.get("/v1/sequences/nope/7").status_code == 404
        assert client.post("/v1/sequences/recent_saves/batch", json={"user_ids": [1]}).is_success

    lines = run_and_stop(tmp_path, tmp_path / "access.log", requests, "--access-log")
    access = [line for line in lines if line["logger"] == "sequence_platform.access"]
    mine = [line for line in access if line["path"].startswith("/v1/")]
    assert [
        (line["method"], line["route"], line["sequence"], line["user_id"], line["status"])
        for line in mine
    ] == [
        ("GET", ONE_GET, "recent_saves", 2, 200),
        ("GET", ONE_GET, "recent_saves", "x", 422),
        ("GET", ONE_GET, None, 7, 404),
        ("POST", "/v1/sequences/{sequence}/batch", "recent_saves", None, 200),
    ]
    assert all(isinstance(line["latency_ms"], float) and line["latency_ms"] > 0 for line in mine)
    assert all(line["level"] == "INFO" and line["time"].endswith("+00:00") for line in mine)
    # Every /readyz poll is a request too: one line each, no more.
    assert {line["path"] for line in access} == {"/readyz", *(line["path"] for line in mine)}
    refreshes = [line for line in lines if line.get("event") == "refresh"]
    assert {(line["kind"], line["table"]) for line in refreshes} >= {
        ("sequence", "recent_saves"),
        ("realtime", "engagement_enriched"),
    }
    # uvicorn's own lines go through the same formatter.
    assert any(line["logger"].startswith("uvicorn") for line in lines)


def test_serve_without_access_log_still_logs_refreshes_and_errors_as_json(
    tmp_path: Path, catalog: Catalog
) -> None:
    layout = TableLayout(str(tmp_path / "tables"))
    write_data_home(catalog, layout)
    log = Path(layout.features("items")) / "_delta_log"
    newest = max(int(commit.stem) for commit in log.glob("*.json"))
    broken = log / f"{newest + 1:020d}.json"

    def requests(client: httpx.Client) -> None:
        assert client.get("/v1/sequences/recent_saves/2").status_code == 200
        broken.write_text("{not a delta commit\n")
        until(lambda: client.get("/readyz").status_code == 503, "/readyz to fail")

    lines = run_and_stop(tmp_path, tmp_path / "quiet.log", requests)
    assert not [line for line in lines if line["logger"] == "sequence_platform.access"]
    assert any(line.get("event") == "refresh" for line in lines)
    failed = [line for line in lines if line.get("event") == "refresh_failed"]
    assert failed and failed[0]["level"] == "WARNING"
    assert (failed[0]["kind"], failed[0]["table"]) == ("features", "items")


def test_the_serve_command_turns_the_access_log_on_through_the_settings(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    served: list[PlatformSettings] = []

    def serve(settings: PlatformSettings, host: str, port: int, *, workers: int) -> None:
        served.append(settings)

    monkeypatch.setattr("sequence_platform.serving.app.serve", serve)
    monkeypatch.delenv("SEQUENCE_PLATFORM_ACCESS_LOG", raising=False)
    assert cli.main(["serve"]) == 0
    assert cli.main(["serve", "--access-log"]) == 0
    monkeypatch.setenv("SEQUENCE_PLATFORM_ACCESS_LOG", "true")
    assert cli.main(["serve"]) == 0
    assert [settings.access_log for settings in served] == [False, True, True]


def test_docs_and_redoc_use_only_local_files(served: Served) -> None:
    for page in ("/docs", "/redoc"):
        html = served.client.get(page)
        assert html.status_code == 200 and html.headers["content-type"].startswith("text/html")
        assert "http://" not in html.text and "https://" not in html.text, html.text
        urls = re.findall(r'(?:src|href)="([^"]+)"', html.text)
        assert urls and all(url.startswith("/") for url in urls), urls
        assets = {url.rsplit(".", 1)[-1]: served.client.get(url) for url in urls}
        assert all(a.status_code == 200 and len(a.content) > 1000 for a in assets.values())
        assert "javascript" in assets["js"].headers["content-type"]
        if page == "/docs":
            assert assets["css"].headers["content-type"].startswith("text/css")
            # Swagger UI 5 or later: the first to render the OpenAPI 3.1 that FastAPI writes.
            assert served.client.get("/openapi.json").json()["openapi"].startswith("3.1")
            major = re.search(r'PACKAGE_VERSION:"(\d+)\.', assets["js"].text)
            assert major and int(major.group(1)) >= 5
        assert "/openapi.json" in html.text
