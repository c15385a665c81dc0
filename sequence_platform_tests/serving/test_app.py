"""The app on a data home it cannot fully read: readiness, 503s, and the JSON 500 for bugs."""

from __future__ import annotations

from datetime import datetime
from pathlib import Path

import httpx
import pytest

from sequence_platform.serving import create_app
from sequence_platform.serving.context import ServingContext
from sequence_platform.settings import PlatformSettings
from sequence_platform.spec import Catalog
from sequence_platform.storage.layout import TableLayout
from sequence_platform_tests.serving.conftest import RunningServer, wait_for
from sequence_platform_tests.serving.data_home import DEFINITIONS


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
