"""``/v1/sequences``: a user's sequence, or many users' in one pass."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Depends, Path, Query
from fastapi.responses import Response

from sequence_platform.serving.context import ServingContext, serving_context
from sequence_platform.serving.models import (
    BatchRequest,
    BatchResponse,
    ErrorResponse,
    SequenceResponse,
)
from sequence_platform.serving.query import (
    INT64_MAX,
    INT64_MIN,
    MAX_BATCH_USERS,
    Format,
    check_batch_users,
    resolve_query,
    sequence_spec,
)
from sequence_platform.serving.reader import read_sequences

router = APIRouter(prefix="/v1/sequences", tags=["sequences"])

Context = Annotated[ServingContext, Depends(serving_context)]
SequenceName = Annotated[
    str, Path(description="A sequence definition's name.", examples=["recent_saves"])
]
ERRORS: dict[int | str, dict[str, Any]] = {
    404: {"model": ErrorResponse, "description": "Unknown sequence (the message lists them)."},
    422: {"model": ErrorResponse, "description": "A parameter is invalid (the message says why)."},
    503: {"model": ErrorResponse, "description": "The tables have not been read yet."},
}


@router.get(
    "/{sequence}/{user_id}",
    response_model=SequenceResponse,
    responses=ERRORS,
    summary="One user's sequence",
)
def get_sequence(
    context: Context,
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
        Format, Query(description="`records` (a list of events) or `columnar` (list per field).")
    ] = "records",
) -> Response:
    """The user's newest events at `as_of`: the latest batch snapshot with cutoff <= as_of plus
    the real-time tail, merged, trimmed, with request-time fields. An unknown user has length 0.
    """
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
    served = read_sequences(context.store, context.catalog, query)
    return json_response(served.documents()[0])


@router.post(
    "/{sequence}/batch",
    response_model=BatchResponse,
    responses=ERRORS,
    summary=f"Many users' sequences (up to {MAX_BATCH_USERS:,})",
)
def batch_sequences(context: Context, sequence: SequenceName, body: BatchRequest) -> Response:
    """One response per user id, in request order, computed in one pass over all users."""
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
    return json_response('{"results":[' + ",".join(served.documents()) + "]}")


def json_response(document: str) -> Response:
    # The documents are written by Polars (see reader.py) in the shape of the response models.
    return Response(content=document, media_type="application/json")
