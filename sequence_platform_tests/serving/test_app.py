"""The app on a data home it cannot fully read: readiness, 503s, and the JSON 500 for bugs;
its refreshes: one at startup, and each one logged, whoever asks for it."""

from __future__ import annotations

import logging
import time
from datetime import date, datetime
from pathlib import Path
from typing import Any

import httpx
import polars as pl
import pytest

from sequence_platform.runtime.reads import Reader
from sequence_platform.serving import create_app
from sequence_platform.serving.context import ServingContext
from sequence_platform.settings import PlatformSettings
from sequence_platform.spec import Catalog
from sequence_platform.spec.models import SequenceSpec
from sequence_platform.storage.layout import TableLayout
from sequence_platform_tests.serving.conftest import RunningServer, wait_for
from sequence_platform_tests.serving.data_home import DEFINITIONS, write_data_home

TOKEN = "admin-token-of-the-tests"
LONG_INTERVAL = 600.0
"""A refresh interval no test waits out: every refresh after startup is the test's own."""


def test_unreadable_table_bad_json_and_a_bug(
    tmp_path: Path, catalog: Catalog, monkeypatch: pytest.MonkeyPatch
) -> None:
    settings = PlatformSettings(home=tmp_path, tables_uri=None, definitions=DEFINITIONS)
    log = Path(TableLayout(settings.tables_root).features("items")) / "_delta_log"
    log.mkdir(parents=True)
    (log / "00000000000000000000.json").write_text("this is not a delta log\n")
    app = create_app(settings, catalog=catalog, refresh_interval=0.1)
    context: ServingContext = app.state.serving

    def bug(at: datetime) -> None:
        raise RuntimeError("a bug")

    monkeypatch.setattr(context.store.snapshots["recent_engagement"], "snapshot_at", bug)
    with RunningServer(app) as base_url, httpx.Client(base_url=base_url, timeout=30) as client:
        wait_for(client, "/healthz")
        ready = client.get("/readyz")
        assert ready.status_code == 503
        assert any("features table 'items'" in reason for reason in ready.json()["reasons"])

        # Absent tables are fine; the unreadable feature table, tried and failed, is served as
        # empty (readiness names it): no current_category for anyone, but no 503 either.
        wait_for(client, "/v1/sequences/recent_saves/1?fields=item_id", timeout=10)
        needs_items = client.get("/v1/sequences/recent_saves/1")
        assert needs_items.status_code == 200
        assert needs_items.json()["length"] == 0

        broken = client.post(
            "/v1/sequences/recent_saves/batch",
            content=b'{"user_ids": [1,',
            headers={"content-type": "application/json"},
        )
        assert broken.status_code == 422
        assert "not valid JSON" in broken.json()["detail"]

        failed = client.get("/v1/sequences/recent_engagement/1")
        assert failed.status_code == 500
        assert failed.json() == {"detail": "internal error; the server log has the details"}
        metrics = client.get("/metrics").text
        assert 'route="/v1/sequences/{sequence}/{user_id}",status="500"} 1.0' in metrics
        assert 'sequence_platform_refresh_errors_total{kind="features",table="items"}' in metrics


def data_home_app(tmp_path: Path, catalog: Catalog, **settings: Any) -> Any:
    home = PlatformSettings(home=tmp_path, tables_uri=None, definitions=DEFINITIONS, **settings)
    write_data_home(catalog, TableLayout(home.tables_root))
    return create_app(home, catalog=catalog, refresh_interval=LONG_INTERVAL)


def test_startup_reads_every_table_once_and_the_refresher_waits_its_interval(
    tmp_path: Path, catalog: Catalog
) -> None:
    app = data_home_app(tmp_path, catalog)
    context: ServingContext = app.state.serving
    with RunningServer(app) as base_url, httpx.Client(base_url=base_url, timeout=30) as client:
        wait_for(client, "/readyz")  # the lifespan's refresh read every table
        time.sleep(1.0)  # time enough for a refresher that refreshes at once to do so
        assert context.store.refreshes == 1


def test_an_admin_refresh_logs_each_table_it_reloads(
    tmp_path: Path, catalog: Catalog, caplog: pytest.LogCaptureFixture
) -> None:
    app = data_home_app(tmp_path, catalog, admin_token=TOKEN)
    caplog.set_level(logging.INFO, logger="sequence_platform")
    with RunningServer(app) as base_url, httpx.Client(base_url=base_url, timeout=30) as client:
        wait_for(client, "/readyz")
        caplog.clear()
        forgot = client.delete("/v1/admin/users/1", headers={"Authorization": f"Bearer {TOKEN}"})
        assert forgot.status_code == 200, forgot.text
    logged = {
        (getattr(record, "kind", None), getattr(record, "table", None))
        for record in caplog.records
        if getattr(record, "event", None) == "refresh" and record.threadName != "store-refresher"
    }
    # User 1 had rows in both snapshots and in the real-time table; the tombstone is new.
    assert logged >= {
        ("tombstones", "tombstones"),
        ("sequence", "recent_saves"),
        ("sequence", "recent_engagement"),
        ("realtime", "engagement_enriched"),
    }


def test_a_past_read_is_503_only_when_storage_fails_and_a_bug_is_a_500(
    tmp_path: Path, catalog: Catalog, monkeypatch: pytest.MonkeyPatch
) -> None:
    app = data_home_app(tmp_path, catalog)
    failure: list[Exception] = []

    def batch_rows_for_day(
        self: Reader, spec: SequenceSpec, day: date, users: pl.Series | None = None
    ) -> pl.LazyFrame:
        raise failure[0]

    monkeypatch.setattr(Reader, "batch_rows_for_day", batch_rows_for_day)
    # Before the newest snapshot's cutoff (2026-03-03): the batch rows of the day are read.
    past = "/v1/sequences/recent_saves/1?as_of=2026-03-02T12:00:00Z"
    with RunningServer(app) as base_url, httpx.Client(base_url=base_url, timeout=30) as client:
        wait_for(client, "/readyz")
        failure[:] = [FileNotFoundError(2, "No such file or directory", "part-0.parquet")]
        vacuumed = client.get(past)
        assert vacuumed.status_code == 503
        assert "cannot be read right now; retry" in vacuumed.json()["detail"]

        failure[:] = [KeyError("a bug in the read")]
        bug = client.get(past)
        assert bug.status_code == 500
        assert bug.json() == {"detail": "internal error; the server log has the details"}

        # A bad parameter is still a 422 that says what is wrong, before anything is read.
        bad = client.get("/v1/sequences/recent_saves/1?as_of=2026-03-02T12:00:00")
        assert bad.status_code == 422 and "time zone" in bad.json()["detail"]
