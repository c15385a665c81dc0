"""``/healthz``, ``/readyz`` and ``/metrics``: the service's own state."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Depends
from fastapi.responses import JSONResponse, Response
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from sequence_platform.serving.context import ServingContext, serving_context
from sequence_platform.serving.models import HealthResponse, ReadinessResponse, TableReadiness

router = APIRouter(tags=["health"])
Context = Annotated[ServingContext, Depends(serving_context)]


@router.get("/healthz", response_model=HealthResponse, summary="The process is alive")
def healthz() -> HealthResponse:
    return HealthResponse()


@router.get(
    "/readyz",
    response_model=ReadinessResponse,
    responses={503: {"model": ReadinessResponse, "description": "Not ready; reasons say why."}},
    summary="Ready to serve every sequence",
)
def readyz(context: Context) -> JSONResponse:
    """200 when every table was read at its newest version or is known to be absent; 503 with
    the reasons before the first read and while any table cannot be read (a broken Delta log),
    meanwhile answering from what was read before."""
    reasons = context.store.not_ready()
    tables = [
        TableReadiness(
            kind=t.status.kind,
            name=t.status.name,
            uri=t.status.uri,
            loaded=t.status.loaded,
            version=t.status.version,
            rows=t.status.rows,
            errors=t.status.errors,
            last_error=t.status.last_error,
        )
        for t in context.store.tables()
    ]
    body = ReadinessResponse(
        status="not ready" if reasons else "ready", reasons=reasons, tables=tables
    )
    return JSONResponse(body.model_dump(mode="json"), status_code=503 if reasons else 200)


@router.get(
    "/metrics",
    response_class=Response,
    responses={200: {"content": {CONTENT_TYPE_LATEST: {}}, "description": "Prometheus text."}},
    summary="Prometheus metrics",
)
def metrics(context: Context) -> Response:
    return Response(generate_latest(context.metrics.registry), media_type=CONTENT_TYPE_LATEST)
