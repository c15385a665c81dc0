"""``sequence-platform serve --workers N``: N processes answer, mapping one copy of a snapshot."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import httpx

from sequence_platform.spec import Catalog
from sequence_platform.storage.layout import TableLayout
from sequence_platform_tests.serving.data_home import DEFINITIONS, write_data_home

REPO = Path(__file__).resolve().parents[2]
TIMEOUT = 60.0


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


def until(condition: Callable[[], bool], what: str) -> None:
    deadline = time.monotonic() + TIMEOUT
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.1)


def worker_processes(parent: int) -> list[int]:
    """The uvicorn workers among the children of ``parent``."""
    workers = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            parent_id = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
            command = (entry / "cmdline").read_bytes()
        except OSError:
            continue
        if parent_id == parent and b"multiprocessing.spawn" in command:
            workers.append(int(entry.name))
    return sorted(workers)


def maps(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/maps").read_text()
    except OSError:
        return ""


def test_workers_answer_and_share_one_copy_of_each_snapshot(
    tmp_path: Path, catalog: Catalog
) -> None:
    write_data_home(catalog, TableLayout(str(tmp_path / "tables")))
    port = free_port()
    env = {key: value for key, value in os.environ.items() if not key.startswith("SEQUENCE_")}
    env |= {
        "SEQUENCE_PLATFORM_HOME": str(tmp_path),
        "SEQUENCE_PLATFORM_DEFINITIONS": str(DEFINITIONS),
        "SEQUENCE_PLATFORM_REFRESH_SECONDS": "0.2",
    }
    command = [sys.executable, "-m", "sequence_platform.cli", "serve", f"--port={port}"]
    log = tmp_path / "serve.log"
    with log.open("w") as output:
        process = subprocess.Popen(
            [*command, "--workers=2"], cwd=REPO, env=env, stdout=output, stderr=subprocess.STDOUT
        )
    base = f"http://127.0.0.1:{port}"
    try:

        def ready() -> bool:
            assert process.poll() is None, f"serve exited:\n{log.read_text()}"
            try:
                return httpx.get(f"{base}/readyz", timeout=5).status_code == 200
            except httpx.TransportError:
                return False

        until(ready, "a worker to be ready")
        until(lambda: len(worker_processes(process.pid)) == 2, "two worker processes")
        folder = tmp_path / "cache" / "serving"
        until(lambda: len(list(folder.glob("*.arrow"))) == 2, "one file per sequence")
        files = [str(path) for path in folder.glob("*.arrow")]
        workers = worker_processes(process.pid)
        until(
            lambda: all(path in maps(pid) for pid in workers for path in files),
            "every worker to map both snapshot files",
        )
        # Connections land on either worker: every answer is the same.
        for _ in range(20):
            with httpx.Client(base_url=base, timeout=10) as client:  # a new connection each
                response = client.get(
                    "/v1/sequences/recent_saves/1", params={"as_of": "2026-03-03T12:00:00Z"}
                )
                assert response.status_code == 200, response.text
                assert [e["event_id"] for e in response.json()["events"]] == [
                    "e4",
                    "e3",
                    "e2",
                    "e1",
                ]
    finally:
        process.terminate()
        process.wait(timeout=30)
    assert sorted(str(path) for path in folder.glob("*.arrow")) == sorted(files)
    assert "Traceback" not in log.read_text()
