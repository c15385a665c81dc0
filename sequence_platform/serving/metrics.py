"""Prometheus metrics of one app: requests by route, sequence and status, and the store's tables
(snapshot age, real-time lag, dead letters), read at scrape time.

Each app has its own ``CollectorRegistry``, so apps (and tests) never share counters.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterator
from contextlib import suppress
from datetime import UTC, datetime
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Histogram
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from sequence_platform.serving.logs import ACCESS_LOGGER
from sequence_platform.serving.store import SnapshotStore

PREFIX = "sequence_platform"
UNMATCHED = "unmatched"
"""Route label of requests no route matched, so that random paths cannot add label values."""
access_log = logging.getLogger(ACCESS_LOGGER)
METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"})


class ServingMetrics:
    def __init__(self, store: SnapshotStore) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        self.requests = Counter(
            f"{PREFIX}_http_requests",
            "HTTP requests answered, by route template and status.",
            ["method", "route", "status"],
            registry=self.registry,
        )
        self.latency = Histogram(
            f"{PREFIX}_http_request_duration_seconds",
            "Time to answer an HTTP request, by route template, sequence (empty for a route "
            "without one, or a name that is not a sequence) and status class (2xx, 4xx, 5xx).",
            ["route", "sequence", "status_class"],
            buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10),
            registry=self.registry,
        )
        self.registry.register(StoreCollector(store))
        self.sequences = frozenset(store.catalog.sequences)
        """Names the ``sequence`` label may take: random paths cannot add label values."""
        self._children: dict[tuple[str, str, int, str], tuple[Counter, Histogram]] = {}

    def sequence_label(self, path_params: dict[str, Any] | None) -> str:
        """The sequence a request asked for when it is one, else empty."""
        name = path_params.get("sequence") if path_params else None
        return name if name in self.sequences else ""

    def observe(self, method: str, route: str, status: int, sequence: str, seconds: float) -> None:
        key = (method, route, status, sequence)
        children = self._children.get(key)
        if children is None:
            # Looked up once per label set (a few per route), not per request.
            children = (
                self.requests.labels(method, route, str(status)),
                self.latency.labels(route, sequence, f"{status // 100}xx"),
            )
            self._children[key] = children
        children[0].inc()
        children[1].observe(seconds)


class StoreCollector(Collector):
    """Reads the store's table states at scrape time."""

    def __init__(self, store: SnapshotStore) -> None:
        self.store = store

    def collect(self) -> Iterator[Metric]:
        version = GaugeMetricFamily(
            f"{PREFIX}_snapshot_table_version",
            "Delta version of the sequence's snapshot table in memory (-1: table absent).",
            labels=["sequence"],
        )
        rows = GaugeMetricFamily(
            f"{PREFIX}_snapshot_rows",
            "Users in the latest snapshot partition in memory.",
            labels=["sequence"],
        )
        cutoff = GaugeMetricFamily(
            f"{PREFIX}_snapshot_cutoff_timestamp_seconds",
            "Cutoff of the latest snapshot partition in memory (Unix time).",
            labels=["sequence"],
        )
        cached = GaugeMetricFamily(
            f"{PREFIX}_older_snapshots_cached",
            "Older snapshot partitions held in the LRU cache.",
            labels=["sequence"],
        )
        age = GaugeMetricFamily(
            f"{PREFIX}_snapshot_age_seconds",
            "Now minus the cutoff of the latest snapshot partition in memory.",
            labels=["sequence"],
        )
        now = datetime.now(UTC)
        for name, table in self.store.snapshots.items():
            status = table.status
            version.add_metric([name], -1 if status.version is None else status.version)
            rows.add_metric([name], table.latest.users)
            latest_cutoff = table.latest.cutoff
            if latest_cutoff is not None:
                cutoff.add_metric([name], latest_cutoff.timestamp())
                age.add_metric([name], (now - latest_cutoff).total_seconds())
            cached.add_metric([name], len(table.older))
        yield from (version, rows, cutoff, age, cached)

        lag = GaugeMetricFamily(
            f"{PREFIX}_realtime_lag_seconds",
            "Now minus the newest event_time before now among the real-time rows in memory "
            "(the watermark a read now reports); absent while there is none.",
            labels=["signal"],
        )
        for signal, tail in self.store.tails.items():
            watermark = tail.watermark_before(now)
            if watermark is not None:
                lag.add_metric([signal], (now - watermark).total_seconds())
        yield lag

        dead = GaugeMetricFamily(
            f"{PREFIX}_dead_letters",
            "Records in dead_letters/<source> (a source's or a feature table's rejected "
            "records), as of the table version last read; 0 while the table does not exist.",
            labels=["source"],
        )
        for name, counted in self.store.dead_letters.items():
            if counted.status.loaded:
                dead.add_metric([name], counted.status.rows)
        yield dead

        table_rows = GaugeMetricFamily(
            f"{PREFIX}_table_rows",
            "Rows in memory per table the service reads (snapshot: latest partition); dead "
            f"letters are counted in {PREFIX}_dead_letters.",
            labels=["kind", "table"],
        )
        errors = CounterMetricFamily(
            f"{PREFIX}_refresh_errors",
            "Failed reads of a table by the refresher.",
            labels=["kind", "table"],
        )
        loaded = GaugeMetricFamily(
            f"{PREFIX}_table_loaded",
            "1 when the table has been read at least once or is known to be absent.",
            labels=["kind", "table"],
        )
        readable = GaugeMetricFamily(
            f"{PREFIX}_table_readable",
            "1 when the last refresh read the table at its newest version (or found it absent); "
            "0 before the first read and while it cannot (the service keeps what it read before).",
            labels=["kind", "table"],
        )
        for held in self.store.tables():
            table_rows.add_metric([held.status.kind, held.status.name], held.status.rows)
        for watched in self.store.watched():
            status = watched.status
            errors.add_metric([status.kind, status.name], status.errors)
            loaded.add_metric([status.kind, status.name], 1 if status.loaded else 0)
            readable.add_metric(
                [status.kind, status.name], int(status.loaded and status.last_error is None)
            )
        yield from (table_rows, errors, loaded, readable)
        refreshes = CounterMetricFamily(
            f"{PREFIX}_refreshes", "Refresh rounds over every table since start."
        )
        refreshes.add_metric([], self.store.refreshes)
        yield refreshes


class RequestMetricsMiddleware:
    """Counts and times every HTTP request by its route template (not its raw path) and its
    sequence; with ``access_log``, also logs it as one line (see ``logs``)."""

    def __init__(self, app: ASGIApp, metrics: ServingMetrics, access_log: bool = False) -> None:
        self.app = app
        self.metrics = metrics
        self.access_log = access_log

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        status = 500
        began = time.perf_counter()

        async def send_and_remember(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = int(message["status"])
            await send(message)

        try:
            await self.app(scope, receive, send_and_remember)
        finally:
            seconds = time.perf_counter() - began
            route = getattr(scope.get("route"), "path", UNMATCHED)
            method = scope["method"] if scope["method"] in METHODS else "other"
            params = scope.get("path_params")
            sequence = self.metrics.sequence_label(params)
            self.metrics.observe(method, route, status, sequence, seconds)
            if self.access_log:
                log_request(scope, method, route, sequence, params, status, seconds)


def log_request(
    scope: Scope,
    method: str,
    route: str,
    sequence: str,
    params: dict[str, Any] | None,
    status: int,
    seconds: float,
) -> None:
    user_id = (params or {}).get("user_id")
    with suppress(TypeError, ValueError):
        user_id = None if user_id is None else int(user_id)
    access_log.info(
        "%s %s %d",
        method,
        scope["path"],
        status,
        extra={
            "method": method,
            "route": route,
            "path": scope["path"],
            "sequence": sequence or None,
            "user_id": user_id,
            "status": status,
            "latency_ms": round(seconds * 1000, 3),
        },
    )
