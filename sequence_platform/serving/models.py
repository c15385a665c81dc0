"""Request and response bodies of the HTTP API; their descriptions are the API documentation."""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, JsonValue, StrictInt

from sequence_platform.serving.query import MAX_BATCH_USERS, Format
from sequence_platform.spec.types import INT64_MAX, INT64_MIN

UserId = Annotated[StrictInt, Field(ge=INT64_MIN, le=INT64_MAX)]
"""A JSON integer: ``"1"``, ``1.0`` and ``true`` are refused, not read as 1."""
TIMESTAMP_EXAMPLE = "2026-03-03T12:00:00.000Z"

RECORDS_EXAMPLE: list[JsonValue] = [
    {
        "event_id": "e-9f2c",
        "event_time": "2026-03-03T08:00:00.000Z",
        "item_id": 20,
        "event_type": "save",
        "category": "bags",
        "current_category": "luggage",
        "age_seconds": 14400.0,
    }
]


class Provenance(BaseModel):
    """Where the events came from."""

    snapshot_cutoff: str | None = Field(
        description=(
            "Cutoff of the batch snapshot used: the latest with cutoff <= as_of "
            "(ISO-8601 UTC); null when no snapshot is that early (real-time rows only)."
        ),
        examples=["2026-03-03T00:00:00.000Z"],
    )
    snapshot_version: int | None = Field(
        description="Delta table version the snapshot was read from; null when none exists.",
        examples=[7],
    )
    from_batch: int = Field(description="Events taken from the batch snapshot.", examples=[3])
    from_realtime: int = Field(
        description="Events taken from the real-time tail (not in the snapshot).", examples=[1]
    )
    realtime_watermark: str | None = Field(
        description=(
            "Greatest event_time before as_of among all real-time rows the service has loaded "
            "(any user): how far real-time data reaches. Null when there is none."
        ),
        examples=["2026-03-03T09:00:00.000Z"],
    )


class SequenceResponse(BaseModel):
    """One user's sequence at ``as_of``, newest first."""

    model_config = ConfigDict(
        json_schema_extra={
            "examples": [
                {
                    "sequence": "recent_saves",
                    "version": 1,
                    "user_id": 1,
                    "as_of": TIMESTAMP_EXAMPLE,
                    "length": 1,
                    "events": RECORDS_EXAMPLE,
                    "provenance": {
                        "snapshot_cutoff": "2026-03-03T00:00:00.000Z",
                        "snapshot_version": 7,
                        "from_batch": 0,
                        "from_realtime": 1,
                        "realtime_watermark": "2026-03-03T09:00:00.000Z",
                    },
                }
            ]
        }
    )

    sequence: str = Field(description="The sequence definition's name.", examples=["recent_saves"])
    version: int = Field(description="The sequence definition's version.", examples=[1])
    user_id: int = Field(examples=[1])
    as_of: str = Field(
        description="The time T served (ISO-8601 UTC, milliseconds): events before T only.",
        examples=[TIMESTAMP_EXAMPLE],
    )
    length: int = Field(description="Number of events; 0 for an unknown user.", examples=[1])
    events: list[dict[str, Any]] | dict[str, list[Any]] = Field(
        description=(
            "Newest first. `records`: a list of objects, one per event. `columnar`: one list "
            "per field, all of the same length. Timestamps are ISO-8601 UTC strings with "
            "milliseconds; embeddings are lists of floats."
        ),
        examples=[RECORDS_EXAMPLE, {"event_id": ["e-9f2c"], "event_time": [TIMESTAMP_EXAMPLE]}],
    )
    provenance: Provenance


class BatchRequest(BaseModel):
    """Several users of one sequence with the same options, served in one pass."""

    model_config = ConfigDict(
        extra="forbid",
        json_schema_extra={
            "examples": [{"user_ids": [1, 2, 3], "max_length": 3, "fields": "item_id,category"}]
        },
    )

    user_ids: list[UserId] = Field(
        min_length=1,
        max_length=10 * MAX_BATCH_USERS,
        description=f"Users to serve, at most {MAX_BATCH_USERS:,} distinct; results keep order.",
        examples=[[1, 2, 3]],
    )
    max_length: StrictInt | None = Field(
        default=None, description="1 up to the definition's max_length; default the latter."
    )
    max_age_seconds: float | None = Field(
        default=None,
        gt=0,
        allow_inf_nan=False,
        description="Only events newer than as_of minus this many seconds.",
    )
    fields: str | list[str] | None = Field(
        default=None,
        description="Comma list (or JSON list) of served fields; default all of them.",
        examples=["item_id,category"],
    )
    as_of: str | None = Field(
        default=None,
        description="ISO-8601 time with Z or an offset; default now.",
        examples=["2026-03-03T12:00:00Z"],
    )
    format: Format = Field(
        default="records",
        description="`records`, `columnar` or `arrow` (one Arrow IPC stream for all users).",
    )


class BatchResponse(BaseModel):
    results: list[SequenceResponse] = Field(description="One response per requested user id.")


class DefinitionInfo(BaseModel):
    """One definition of the catalog."""

    kind: Literal["source", "feature_table", "signal", "sequence", "training_set"]
    name: str = Field(examples=["recent_saves"])
    version: int | None = Field(description="Sequences only.", examples=[1])
    description: str
    origin: str = Field(description="The file it is defined in.", examples=["definitions/x.json"])
    fields: dict[str, str] = Field(
        description=(
            "Field name to type (e.g. `list[float32]`). Sequences list the fields a request "
            "may ask for: stored, request-time enriched, and `age_seconds`. Training sets list "
            "the columns they add to each spine row (after its own columns)."
        ),
        examples=[{"event_id": "string", "event_time": "timestamp", "age_seconds": "float64"}],
    )
    signal: str | None = Field(default=None, description="Sequences: the signal they read.")
    max_length: int | None = Field(default=None, description="Sequences: most events served.")
    lookback_days: int | None = Field(default=None, description="Sequences: the window.")
    spine: str | None = Field(default=None, description="Training sets: the spine's folder.")
    sequences: list[str] | None = Field(
        default=None, description="Training sets: the sequences of each row."
    )


class DefinitionsResponse(BaseModel):
    definitions: list[DefinitionInfo]


class ErrorResponse(BaseModel):
    detail: str = Field(
        description="What was wrong, in words.",
        examples=["max_length must be between 1 and 50 for sequence 'recent_saves' (got 0)"],
    )


class HealthResponse(BaseModel):
    status: Literal["ok"] = "ok"


class TableReadiness(BaseModel):
    kind: str = Field(examples=["sequence"])
    name: str = Field(examples=["recent_saves"])
    uri: str = Field(description="Where the Delta table is.")
    loaded: bool = Field(description="Read at least once, or known not to exist yet.")
    version: int | None = Field(description="Delta version in memory; null when absent.")
    rows: int
    errors: int = Field(description="Failed refreshes since start.")
    last_error: str | None = Field(
        description=(
            "Why the table cannot be read at its newest version right now (the service keeps "
            "what it read before); null when it can."
        )
    )


class ReadinessResponse(BaseModel):
    status: Literal["ready", "not ready"]
    reasons: list[str] = Field(description="Why the service is not ready; empty when it is.")
    tables: list[TableReadiness]
