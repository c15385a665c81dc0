"""A real uvicorn server over a tiny data home, shared by the serving tests."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest
import uvicorn
from fastapi import FastAPI

from sequence_platform.serving import create_app
from sequence_platform.settings import PlatformSettings
from sequence_platform.spec import Catalog, load_catalog
from sequence_platform.storage.layout import TableLayout
from sequence_platform_tests.serving.data_home import DEFINITIONS, write_data_home

REFRESH_INTERVAL = 0.2


@dataclass
class Served:
    catalog: Catalog
    layout: TableLayout
    client: httpx.Client
    app: FastAPI


class RunningServer:
    """uvicorn in a background thread on a free localhost port."""

    def __init__(self, app: FastAPI) -> None:
        config = uvicorn.Config(app, host="127.0.0.1", port=0, log_level="warning")
        self.server = uvicorn.Server(config)
        self.thread = threading.Thread(target=self.server.run, daemon=True)

    def __enter__(self) -> str:
        self.thread.start()
        deadline = time.monotonic() + 20
        while not self.server.started:
            if time.monotonic() > deadline or not self.thread.is_alive():
                raise RuntimeError("uvicorn did not start")
            time.sleep(0.02)
        port = self.server.servers[0].sockets[0].getsockname()[1]
        return f"http://127.0.0.1:{port}"

    def __exit__(self, *_: object) -> None:
        self.server.should_exit = True
        self.thread.join(10)


def wait_for(client: httpx.Client, path: str, timeout: float = 20) -> httpx.Response:
    deadline = time.monotonic() + timeout
    while True:
        try:
            response = client.get(path)
            if response.status_code == 200:
                return response
        except httpx.TransportError:
            pass
        if time.monotonic() > deadline:
            raise TimeoutError(f"{path} did not answer 200 in {timeout} s")
        time.sleep(0.05)


@pytest.fixture(scope="package")
def catalog() -> Catalog:
    return load_catalog(DEFINITIONS)


@pytest.fixture(scope="package")
def served(tmp_path_factory: pytest.TempPathFactory, catalog: Catalog) -> Iterator[Served]:
    home: Path = tmp_path_factory.mktemp("serving_home")
    settings = PlatformSettings(home=home, tables_uri=None, definitions=DEFINITIONS)
    layout = TableLayout(settings.tables_root)
    write_data_home(catalog, layout)
    app = create_app(settings, catalog=catalog, refresh_interval=REFRESH_INTERVAL)
    with RunningServer(app) as base_url, httpx.Client(base_url=base_url, timeout=30) as client:
        wait_for(client, "/healthz")
        wait_for(client, "/readyz")
        yield Served(catalog, layout, client, app)
