"""What the routes of one app share, kept on ``app.state`` (no module-level state)."""

from __future__ import annotations

from dataclasses import dataclass

from fastapi import Request

from sequence_platform.serving.metrics import ServingMetrics
from sequence_platform.serving.store import SnapshotStore
from sequence_platform.spec.catalog import Catalog


@dataclass(frozen=True)
class ServingContext:
    catalog: Catalog
    store: SnapshotStore
    metrics: ServingMetrics


def context_of(request: Request) -> ServingContext:
    """The context of the app that received the request."""
    context: ServingContext = request.app.state.serving
    return context


async def serving_context(request: Request) -> ServingContext:
    """FastAPI dependency: ``context_of`` (``async``: a plain function would be called on a
    worker thread)."""
    return context_of(request)
