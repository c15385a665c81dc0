"""The read service on tables whose Delta log breaks under it, or is broken when it starts.

While a table cannot be read at its newest version, ``/readyz`` is 503 and names it with the
reason, requests keep the data last read (never nothing), and all of it clears once the
table reads again. The logs are damaged for real, on tables the project's writer made.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest

from sequence_platform.serving import create_app
from sequence_platform.serving.context import ServingContext
from sequence_platform.settings import PlatformSettings
from sequence_platform.spec import Catalog
from sequence_platform.storage.layout import TableLayout
from sequence_platform_tests.serving.conftest import RunningServer, wait_for
from sequence_platform_tests.serving.data_home import (
    D2,
    DEFINITIONS,
    E2,
    E3,
    write_data_home,
    write_snapshot,
)

T = "2026-03-03T12:00:00Z"
SAVES = "/v1/sequences/recent_saves/{user}"
# data_home at T: user 1 has e4 from real time on top of the 03-02 snapshot (e3, e2, e1);
# user 2 has e5 from the snapshot and e0, a late real-time event.
SAVES_1 = ["e4", "e3", "e2", "e1"]
SAVES_2 = ["e5", "e0"]
REFRESH_INTERVAL = 0.1
TIMEOUT = 20.0
REPO = Path(__file__).resolve().parents[2]


@dataclass
class Home:
    catalog: Catalog
    settings: PlatformSettings
    layout: TableLayout

    @property
    def saves_uri(self) -> str:
        return self.layout.sequence(self.catalog.sequences["recent_saves"])

    @property
    def saves_log(self) -> Path:
        return Path(self.saves_uri) / "_delta_log"


@pytest.fixture
def home(tmp_path: Path, catalog: Catalog) -> Home:
    settings = PlatformSettings(home=tmp_path, tables_uri=None, definitions=DEFINITIONS)
    layout = TableLayout(settings.tables_root)
    write_data_home(catalog, layout)
    return Home(catalog, settings, layout)


def commit_file(log: Path, version: int) -> Path:
    return log / f"{version:020d}.json"


def newest_version(log: Path) -> int:
    return max(int(path.stem) for path in log.glob("*.json"))


def until(condition: Callable[[], bool], what: str, timeout: float = TIMEOUT) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(REFRESH_INTERVAL / 2)


def event_ids(client: httpx.Client, user: int) -> list[str]:
    response = client.get(SAVES.format(user=user), params={"as_of": T})
    assert response.status_code == 200, response.text
    return [event["event_id"] for event in response.json()["events"]]


def saves_of(client: httpx.Client, user: int) -> dict[str, Any]:
    response = client.get(SAVES.format(user=user), params={"as_of": T})
    assert response.status_code == 200, response.text
    body: dict[str, Any] = response.json()
    return body


def reasons(client: httpx.Client) -> list[str]:
    """The reasons ``/readyz`` gives; empty when it answers 200 (and only then)."""
    response = client.get("/readyz")
    body = response.json()
    assert (response.status_code == 200) == (body["status"] == "ready") == (not body["reasons"])
    found: list[str] = body["reasons"]
    return found


def names_table(found: list[str], uri: str, *fragments: str) -> bool:
    return any(uri in reason and all(f in reason for f in fragments) for reason in found)


@contextmanager
def running(home: Home) -> Iterator[tuple[httpx.Client, ServingContext]]:
    app = create_app(home.settings, catalog=home.catalog, refresh_interval=REFRESH_INTERVAL)
    with RunningServer(app) as base_url, httpx.Client(base_url=base_url, timeout=30) as client:
        wait_for(client, "/readyz")
        yield client, app.state.serving


def wait_for_refreshes(context: ServingContext, rounds: int) -> None:
    """Until the refresher has looked at every table ``rounds`` more times."""
    target = context.store.refreshes + rounds
    until(lambda: context.store.refreshes >= target, f"{rounds} refresh rounds")


# -- damage done to a running service's table, and its repair ----------------------------------


@dataclass(frozen=True)
class Damage:
    name: str
    apply: Callable[[Path], Callable[[], None]]
    """Damage the ``_delta_log`` given; returns what undoes it."""
    reason: str
    """A fragment of the reason ``/readyz`` must give."""


def garbage_next_commit(log: Path) -> Callable[[], None]:
    garbage = commit_file(log, newest_version(log) + 1)
    garbage.write_text("this is not a delta commit\n")
    return garbage.unlink


def truncated_next_commit(log: Path) -> Callable[[], None]:
    # A writer that died half way through a commit (on a store without atomic puts).
    current = commit_file(log, newest_version(log)).read_bytes()
    torn = commit_file(log, newest_version(log) + 1)
    torn.write_bytes(current[: len(current) // 2])
    return torn.unlink


def truncated_current_commit(log: Path) -> Callable[[], None]:
    current = commit_file(log, newest_version(log))
    whole = current.read_bytes()
    current.write_bytes(whole[: len(whole) // 2])
    return lambda: current.write_bytes(whole)


def moved_log(log: Path) -> Callable[[], None]:
    away = log.with_name("_delta_log.moved")
    log.rename(away)
    return lambda: away.rename(log)


DAMAGES = [
    Damage("garbage next commit", garbage_next_commit, "DeltaError"),
    Damage("truncated next commit", truncated_next_commit, "DeltaError"),
    Damage("truncated current commit", truncated_current_commit, "DeltaError"),
    Damage("moved _delta_log", moved_log, "_delta_log"),
]


@pytest.mark.parametrize("damage", DAMAGES, ids=[d.name for d in DAMAGES])
def test_a_damaged_log_fails_readiness_keeps_the_data_and_clears_when_repaired(
    home: Home, damage: Damage
) -> None:
    with running(home) as (client, context):
        assert reasons(client) == []
        before = saves_of(client, 1)
        assert [e["event_id"] for e in before["events"]] == SAVES_1
        version = before["provenance"]["snapshot_version"]

        repair = damage.apply(home.saves_log)
        until(
            lambda: names_table(reasons(client), home.saves_uri, damage.reason),
            f"/readyz to name {home.saves_uri} ({damage.reason})",
        )
        assert client.get("/readyz").status_code == 503
        assert client.get("/healthz").status_code == 200
        status = context.store.snapshots["recent_saves"].status
        assert status.last_error is not None and damage.reason in status.last_error
        # The other tables are fine and say so.
        assert [r for r in reasons(client) if home.saves_uri not in r] == []
        # Still the data of the last good version, for as long as the damage lasts.
        wait_for_refreshes(context, 3)
        assert saves_of(client, 1) == before
        assert event_ids(client, 2) == SAVES_2
        assert names_table(reasons(client), home.saves_uri, damage.reason)

        repair()
        until(lambda: reasons(client) == [], "/readyz to clear")
        assert client.get("/readyz").status_code == 200
        assert status.last_error is None
        assert saves_of(client, 1)["provenance"]["snapshot_version"] == version

        # And the table is followed again: a rewritten 03-02 snapshot is served.
        newer = write_snapshot(home.catalog, home.layout, "recent_saves", D2, {1: [E3, E2]})
        until(
            lambda: saves_of(client, 1)["provenance"]["snapshot_version"] == newer,
            "the new snapshot version",
        )
        assert (event_ids(client, 1), event_ids(client, 2)) == (["e4", "e3", "e2"], ["e0"])
        assert reasons(client) == []


def test_garbage_commit_then_moved_log_keeps_the_last_good_data(home: Home) -> None:
    """The log moved away after a failed read used to look like a table never written: the
    service replaced its data with nothing and called itself ready."""
    with running(home) as (client, context):
        log = home.saves_log
        garbage = commit_file(log, newest_version(log) + 1)
        garbage.write_text("{not json\n")
        until(lambda: names_table(reasons(client), home.saves_uri), "/readyz to name the table")

        away = log.with_name("_delta_log.moved")
        log.rename(away)
        wait_for_refreshes(context, 3)
        found = reasons(client)
        assert client.get("/readyz").status_code == 503
        assert names_table(found, home.saves_uri, "_delta_log"), found
        assert (event_ids(client, 1), event_ids(client, 2)) == (SAVES_1, SAVES_2)
        status = context.store.snapshots["recent_saves"].status
        assert (status.loaded, status.rows) == (True, 2)
        readable = 'sequence_platform_table_readable{kind="sequence",table="recent_saves"}'
        assert f"{readable} 0.0" in client.get("/metrics").text

        away.rename(log)
        wait_for_refreshes(context, 3)
        assert names_table(reasons(client), home.saves_uri, "DeltaError")  # the garbage again
        garbage.unlink()
        until(lambda: reasons(client) == [], "/readyz to clear")
        assert (event_ids(client, 1), event_ids(client, 2)) == (SAVES_1, SAVES_2)
        assert f"{readable} 1.0" in client.get("/metrics").text


# -- a service started on a broken table ------------------------------------------------------


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


def test_started_on_a_truncated_commit_it_names_the_table_and_runs_not_ready(
    home: Home, tmp_path: Path
) -> None:
    current = commit_file(home.saves_log, newest_version(home.saves_log))
    whole = current.read_bytes()
    current.write_bytes(whole[: len(whole) // 2])

    port = free_port()
    env = {key: value for key, value in os.environ.items() if not key.startswith("SEQUENCE_")}
    env |= {
        "SEQUENCE_PLATFORM_HOME": str(home.settings.home),
        "SEQUENCE_PLATFORM_DEFINITIONS": str(home.settings.definitions),
        "SEQUENCE_PLATFORM_REFRESH_SECONDS": str(REFRESH_INTERVAL),
    }
    output = tmp_path / "serve.log"
    with output.open("w") as sink:
        process = subprocess.Popen(
            [sys.executable, "-m", "sequence_platform.cli", "serve", "--port", str(port)],
            cwd=REPO,
            env=env,
            stdout=sink,
            stderr=subprocess.STDOUT,
        )
    try:
        with httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=30) as client:

            def alive_and_answering() -> bool:
                assert process.poll() is None, f"serve exited:\n{output.read_text()}"
                try:
                    return client.get("/healthz").status_code == 200
                except httpx.TransportError:
                    return False

            until(alive_and_answering, "the service to answer /healthz")
            until(lambda: client.get("/readyz").status_code == 503, "/readyz to answer 503")
            until(
                lambda: names_table(reasons(client), home.saves_uri, "DeltaError"),
                "/readyz to name the table",
            )
            # Nothing could be read from the snapshot: real time alone (e3 as its copy there says).
            alone = saves_of(client, 1)
            assert [e["event_id"] for e in alone["events"]] == ["e4", "e3"]
            assert alone["events"][1]["category"] == "WRONG"
            assert alone["provenance"]["snapshot_version"] is None
            assert saves_of(client, 3)["length"] == 0
            # The other sequence's tables are fine and served in full.
            engagement = client.get("/v1/sequences/recent_engagement/1", params={"as_of": T})
            assert engagement.status_code == 200
            ids = [e["event_id"] for e in engagement.json()["events"]]
            assert ids == ["e6", "e4", "e8", "e3", "e2", "e1"]

            current.write_bytes(whole)
            until(lambda: reasons(client) == [], "/readyz to clear once the commit is whole")
            assert event_ids(client, 1) == SAVES_1
            assert client.get("/healthz").status_code == 200
        assert process.poll() is None
    finally:
        process.terminate()
        process.wait(timeout=20)
    logged = output.read_text()
    warnings = [line for line in logged.splitlines() if "WARNING" in line]
    assert any(home.saves_uri in line and "DeltaError" in line for line in warnings), logged
    assert "Traceback" not in logged
