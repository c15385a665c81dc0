"""The read service: an app factory, its lifespan (the store refresher) and error handling."""

from __future__ import annotations

import asyncio
import copy
import json
import logging
import os
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import uvicorn
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from fastapi_offline import FastAPIOffline
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from sequence_platform.serving.context import ServingContext
from sequence_platform.serving.errors import ServingError
from sequence_platform.serving.logs import LOG_CONFIG, log_json_to_stderr
from sequence_platform.serving.metrics import RequestMetricsMiddleware, ServingMetrics
from sequence_platform.serving.refresher import StoreRefresher
from sequence_platform.serving.routers import admin, definitions, health, sequences
from sequence_platform.serving.snapshot_files import SnapshotFiles
from sequence_platform.serving.store import SnapshotStore, describe_error
from sequence_platform.settings import PlatformSettings
from sequence_platform.spec.catalog import Catalog
from sequence_platform.spec.loader import load_catalog
from sequence_platform.storage.delta import table_version
from sequence_platform.storage.layout import TableLayout

log = logging.getLogger(__name__)

INTERNAL_ERROR = "internal error; the server log has the details"

DESCRIPTION = """Per-user event sequences for ML models, as of any time: the latest batch
snapshot merged with the real-time tail, trimmed, with request-time enrichment. The same
definitions (see `/v1/definitions`) drive the batch, real-time and serving runtimes."""


def create_app(
    settings: PlatformSettings | None = None,
    *,
    catalog: Catalog | None = None,
    refresh_interval: float | None = None,
) -> FastAPI:
    """A read service over the tables of ``settings`` for the definitions of ``catalog``.

    The catalog is loaded here (a wrong definition raises ``DefinitionError`` before anything
    serves); the tables are read by a background thread started with the app's lifespan.
    Combined snapshots are kept in snapshot files under the data home, shared by every process
    serving the same home.
    """
    settings = settings or PlatformSettings()
    catalog = catalog or load_catalog(settings.definitions)
    layout = TableLayout(settings.tables_root, settings.storage_options)
    store = SnapshotStore(catalog, layout, files=SnapshotFiles(snapshot_folder(settings)))
    refresher = StoreRefresher(store, refresh_interval or settings.refresh_seconds)
    context = ServingContext(catalog, store, ServingMetrics(store))

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        # Read every table once before taking requests: with several workers, each worker
        # accepts connections only when it can answer (a table it cannot read is reported by
        # /readyz, as ever, and retried by the refresher, which starts an interval later).
        await asyncio.to_thread(store.refresh)
        refresher.start()
        try:
            yield
        finally:
            await asyncio.to_thread(refresher.stop)

    # /docs and /redoc from the files fastapi-offline installs, not from a CDN.
    app = FastAPIOffline(
        title="Sequence Platform read service",
        version="1",
        description=DESCRIPTION,
        lifespan=lifespan,
        static_url="/docs-assets",
    )
    app.state.serving = context
    app.include_router(sequences.router)
    app.include_router(definitions.router)
    app.include_router(health.router)
    if settings.admin_token:  # no token configured: the admin endpoints do not exist
        app.include_router(admin.admin_router(settings.admin_token))
    # The last added is the outermost: metrics see the 500 that the error middleware writes.
    app.add_middleware(InternalErrorMiddleware)
    app.add_middleware(
        RequestMetricsMiddleware, metrics=context.metrics, access_log=settings.access_log
    )
    app.add_exception_handler(ServingError, _serving_error)
    app.add_exception_handler(RequestValidationError, _validation_error)
    return app


def snapshot_folder(settings: PlatformSettings) -> Path:
    """Where the read service keeps its snapshot files."""
    return settings.home / "cache" / "serving"


def create_app_from_environment() -> FastAPI:
    """The app of each worker process of ``serve(workers=N)``: settings from the environment."""
    log_json_to_stderr()
    return create_app(PlatformSettings())


def serve(
    settings: PlatformSettings | None = None,
    host: str = "127.0.0.1",
    port: int = 8000,
    *,
    workers: int = 1,
) -> None:
    """Run the read service with uvicorn until interrupted, in ``workers`` processes.

    Each worker keeps its own small state (versions, real-time rows, feature versions) and maps
    the same snapshot files, so memory does not grow with the number of workers. Requests are
    counted and timed in ``/metrics``; a log line per request (``settings.access_log``) is a
    measurable share of a fetch's time (see the README), so it is off unless asked for. Every
    log line is a JSON object on stderr (see ``logs``).
    """
    log_json_to_stderr()
    settings = settings or PlatformSettings()
    catalog = load_catalog(settings.definitions)
    _warn_about_tables(settings, catalog)
    options: dict[str, Any] = {
        "host": host,
        "port": port,
        "log_level": "info",
        "log_config": copy.deepcopy(LOG_CONFIG),
        # uvicorn's access log is off: the app writes its own (see RequestMetricsMiddleware).
        "access_log": False,
    }
    if workers == 1:
        uvicorn.run(create_app(settings, catalog=catalog), **options)
        return
    # Worker processes build their app from the environment: pass the settings on that way.
    for name, value in settings.model_dump(mode="json").items():
        variable = f"SEQUENCE_PLATFORM_{name.upper()}"
        if value is None:
            os.environ.pop(variable, None)
        else:
            os.environ[variable] = value if isinstance(value, str) else json.dumps(value)
    target = f"{__name__}:{create_app_from_environment.__name__}"
    uvicorn.run(target, factory=True, workers=workers, **options)


def _warn_about_tables(settings: PlatformSettings, catalog: Catalog) -> None:
    """Say which snapshot tables do not exist yet or cannot be read (the service starts
    anyway)."""
    layout = TableLayout(settings.tables_root, settings.storage_options)
    missing: list[str] = []
    for name, spec in catalog.sequences.items():
        uri = layout.sequence(spec)
        try:
            if table_version(uri, layout.storage_options) is None:
                missing.append(name)
        except Exception as error:
            # Not fatal: the refresher retries, /readyz says why, and the rest is served.
            log.warning(
                "the snapshot table of %s at %s cannot be read (%s): the service starts not "
                "ready and serves what it can until the table reads again",
                name,
                uri,
                describe_error(error),
            )
    if missing:
        log.warning(
            "no snapshot table yet for %s under %s: every user reads as empty until the batch "
            "runs ('make demo', or 'sequence-platform materialize')",
            ", ".join(missing),
            settings.tables_root,
        )


async def _serving_error(request: Request, error: Exception) -> JSONResponse:
    assert isinstance(error, ServingError)
    return JSONResponse({"detail": error.message}, status_code=error.status_code)


async def _validation_error(request: Request, error: Exception) -> JSONResponse:
    assert isinstance(error, RequestValidationError)
    return JSONResponse({"detail": describe_validation(error)}, status_code=422)


class InternalErrorMiddleware:
    """A bug becomes a logged JSON 500, and the connection stays usable.

    (Starlette's own handler for ``Exception`` re-raises after answering, and uvicorn then
    drops the connection.)
    """

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = False

        async def send_and_track(message: Message) -> None:
            nonlocal started
            started = started or message["type"] == "http.response.start"
            await send(message)

        try:
            await self.app(scope, receive, send_and_track)
        except Exception:
            log.exception("unhandled error on %s %s", scope["method"], scope["path"])
            if started:
                raise
            response = JSONResponse({"detail": INTERNAL_ERROR}, status_code=500)
            await response(scope, receive, send)


def describe_validation(error: RequestValidationError) -> str:
    """FastAPI's validation errors as one sentence per problem, naming the parameter."""
    problems: list[str] = []
    for detail in error.errors():
        location = [str(part) for part in detail.get("loc", ())]
        kind, rest = (location[0], location[1:]) if location else ("request", [])
        if kind in ("query", "path") and rest:
            where = f"{kind} parameter '{rest[0]}'"
        elif kind == "body" and detail.get("type") == "json_invalid":
            where = "body (not valid JSON)"
        elif kind == "body":
            where = f"body field '{'.'.join(rest)}'" if rest else "body"
        else:
            where = ".".join(location) or "request"
        message = f"{where}: {detail.get('msg', 'invalid')}"
        if kind in ("query", "path") and "input" in detail:
            message += f" (got {detail['input']!r:.80})"
        problems.append(message)
    return "; ".join(problems) or "invalid request"
