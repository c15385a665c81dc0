"""Prometheus metrics of one app: requests by route and status, and the store's tables.

Each app has its own ``CollectorRegistry``, so apps (and tests) never share counters.
"""

from __future__ import annotations

import time
from collections.abc import Iterator

from prometheus_client import CollectorRegistry, Counter, Histogram
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from sequence_platform.serving.store import SnapshotStore

PREFIX = "sequence_platform"
UNMATCHED = "unmatched"
"""Route label of requests no route matched, so that random paths cannot add label values."""
METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"})


class ServingMetrics:
    def __init__(self, store: SnapshotStore) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        labels = ["method", "route", "status"]
        self.requests = Counter(
            f"{PREFIX}_http_requests",
            "HTTP requests answered, by route template and status.",
            labels,
            registry=self.registry,
        )
        self.latency = Histogram(
            f"{PREFIX}_http_request_duration_seconds",
            "Time to answer an HTTP request, by route template and status.",
            labels,
            buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10),
            registry=self.registry,
        )
        self.registry.register(StoreCollector(store))
        self._children: dict[tuple[str, str, int], tuple[Counter, Histogram]] = {}

    def observe(self, method: str, route: str, status: int, seconds: float) -> None:
        key = (method, route, status)
        children = self._children.get(key)
        if children is None:
            # Looked up once per label set (a few per route), not per request.
            labels = (method, route, str(status))
            children = self.requests.labels(*labels), self.latency.labels(*labels)
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
        for name, table in self.store.snapshots.items():
            status = table.status
            version.add_metric([name], -1 if status.version is None else status.version)
            rows.add_metric([name], table.latest.users)
            latest_cutoff = table.latest.cutoff
            if latest_cutoff is not None:
                cutoff.add_metric([name], latest_cutoff.timestamp())
            cached.add_metric([name], len(table.older))
        yield from (version, rows, cutoff, cached)

        table_rows = GaugeMetricFamily(
            f"{PREFIX}_table_rows",
            "Rows in memory per table (snapshot: latest partition).",
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
        for watched in self.store.tables():
            status = watched.status
            table_rows.add_metric([status.kind, status.name], status.rows)
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
    """Counts and times every HTTP request by its route template (not its raw path)."""

    def __init__(self, app: ASGIApp, metrics: ServingMetrics) -> None:
        self.app = app
        self.metrics = metrics

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
            route = getattr(scope.get("route"), "path", UNMATCHED)
            method = scope["method"] if scope["method"] in METHODS else "other"
            self.metrics.observe(method, route, status, time.perf_counter() - began)
