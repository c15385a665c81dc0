"""``/v1/sequences``: a user's sequence, or many users' in one pass."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Path, Query, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import Response

from sequence_platform.serving.context import ServingContext, context_of
from sequence_platform.serving.models import (
    BatchRequest,
    BatchResponse,
    ErrorResponse,
    SequenceResponse,
)
from sequence_platform.serving.query import (
    MAX_BATCH_USERS,
    Format,
    SequenceQuery,
    check_batch_users,
    resolve_query,
    sequence_spec,
)
from sequence_platform.serving.reader import (
    ARROW_STREAM,
    ServedSequences,
    read_sequences,
    reads_from_memory,
)
from sequence_platform.spec.types import INT64_MAX, INT64_MIN

router = APIRouter(prefix="/v1/sequences", tags=["sequences"])

SequenceName = Annotated[
    str, Path(description="A sequence definition's name.", examples=["recent_saves"])
]
ARROW_DESCRIPTION = (
    "With `format=arrow`: an Arrow IPC stream (`application/vnd.apache.arrow.stream`), one row "
    "per event, newest first per user, users in request order: `user_id`, then `event_id`, "
    "`event_time` and the requested fields, typed as in `/v1/definitions` (timestamps in UTC "
    "milliseconds). The schema's metadata holds `sequence`, `version`, `as_of`, "
    "`snapshot_cutoff`, `snapshot_version` and `realtime_watermark` (empty when none)."
)
ERRORS: dict[int | str, dict[str, Any]] = {
    404: {"model": ErrorResponse, "description": "Unknown sequence (the message lists them)."},
    422: {"model": ErrorResponse, "description": "A parameter is invalid (the message says why)."},
    503: {"model": ErrorResponse, "description": "The tables have not been read yet."},
}


def answers(description: str) -> dict[int | str, dict[str, Any]]:
    """The documented responses: JSON in the shape of the response model, or Arrow."""
    arrow = {ARROW_STREAM: {"schema": {"type": "string", "format": "binary"}}}
    return {200: {"description": f"{description} {ARROW_DESCRIPTION}", "content": arrow}, **ERRORS}


@router.get(
    "/{sequence}/{user_id}",
    response_model=SequenceResponse,
    responses=answers("The sequence (JSON, `records` or `columnar`)."),
    summary="One user's sequence",
)
async def get_sequence(
    request: Request,
    sequence: SequenceName,
    user_id: Annotated[
        int, Path(ge=INT64_MIN, le=INT64_MAX, description="The user (int64).", examples=[1])
    ],
    max_length: Annotated[
        int | None,
        Query(ge=1, description="1 up to the definition's max_length (the default).", examples=[5]),
    ] = None,
    max_age_seconds: Annotated[
        float | None,
        Query(
            gt=0,
            allow_inf_nan=False,
            description="Only events newer than as_of minus this many seconds.",
            examples=[86400],
        ),
    ] = None,
    fields: Annotated[
        str | None,
        Query(
            description=(
                "Comma list of served fields (see /v1/definitions); default all of them. "
                "event_id and event_time are always included."
            ),
            examples=["item_id,category,current_category"],
        ),
    ] = None,
    as_of: Annotated[
        str | None,
        Query(
            description="The time T served: ISO-8601 with Z or an offset; default now.",
            examples=["2026-03-03T12:00:00Z"],
        ),
    ] = None,
    format: Annotated[
        Format,
        Query(
            description=(
                "`records` (a list of events), `columnar` (a list per field) or `arrow` (an "
                "Arrow IPC stream, one row per event)."
            )
        ),
    ] = "records",
) -> Response:
    """The user's newest events at `as_of` (default now), exact at any instant: every event
    the platform holds with `event_time < as_of` — the batch snapshot, the batch's events of
    the day after it, and the real-time tail — merged by the sequence rule, trimmed, with
    request-time fields as of `as_of`. An unknown user has length 0. `format=arrow` answers an
    Arrow IPC stream (`application/vnd.apache.arrow.stream`), one row per event with `user_id`
    and the requested fields, for model servers.
    """
    context = context_of(request)
    spec = sequence_spec(context.catalog, sequence)
    query = resolve_query(
        context.catalog,
        spec,
        [user_id],
        max_length=max_length,
        max_age_seconds=max_age_seconds,
        fields=fields,
        as_of=as_of,
        format=format,
    )
    served = await serve(context, query)
    if query.format == "arrow":
        return Response(content=served.arrow_stream(), media_type=ARROW_STREAM)
    return json_response(served.documents()[0])


@router.post(
    "/{sequence}/batch",
    response_model=BatchResponse,
    responses=answers("One result per user id (JSON)."),
    summary=f"Many users' sequences (up to {MAX_BATCH_USERS:,})",
)
def batch_sequences(request: Request, sequence: SequenceName, body: BatchRequest) -> Response:
    """One response per user id, in request order, computed in one pass over all users."""
    context = context_of(request)
    spec = sequence_spec(context.catalog, sequence)
    check_batch_users(body.user_ids)
    query = resolve_query(
        context.catalog,
        spec,
        body.user_ids,
        max_length=body.max_length,
        max_age_seconds=body.max_age_seconds,
        fields=body.fields,
        as_of=body.as_of,
        format=body.format,
    )
    served = read_sequences(context.store, context.catalog, query)
    if query.format == "arrow":
        return Response(content=served.arrow_stream(), media_type=ARROW_STREAM)
    return json_response(b'{"results":[' + b",".join(served.documents()) + b"]}")


async def serve(context: ServingContext, query: SequenceQuery) -> ServedSequences:
    """Read on the event loop when everything is in memory (no thread hand-off for a fetch
    that takes a fraction of a millisecond); on a worker thread when a table must be read."""
    if reads_from_memory(context.store, query):
        return read_sequences(context.store, context.catalog, query)
    return await run_in_threadpool(read_sequences, context.store, context.catalog, query)


def json_response(document: bytes) -> Response:
    # The documents are joined from pre-encoded JSON (see reader.py) in the shape of the
    # response models; they are not validated again here.
    return Response(content=document, media_type="application/json")
