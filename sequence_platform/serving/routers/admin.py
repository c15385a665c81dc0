"""``/v1/admin``: operations on the data, behind a bearer token; off when none is configured.

``DELETE /v1/admin/users/{user_id}`` forgets a user (``runtime.forget``): every row of theirs
out of every table, the old files vacuumed, a tombstone kept, and this process's memory
refreshed before it answers (other worker processes follow within their refresh interval).
"""

from __future__ import annotations

import hmac
from typing import Annotated, Any

from fastapi import APIRouter, Depends, HTTPException, Path, Request
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from pydantic import BaseModel, Field

from sequence_platform.runtime.forget import FORGET_INTERRUPTED, forget_users
from sequence_platform.serving.context import context_of
from sequence_platform.serving.errors import ServingError
from sequence_platform.serving.models import ErrorResponse
from sequence_platform.serving.reader import format_timestamp
from sequence_platform.spec.types import INT64_MAX, INT64_MIN


class ForgetFailed(ServingError):
    """The tables could not all be changed right now; the tombstone is kept, retrying is safe."""

    status_code = 503


class TablePurgeInfo(BaseModel):
    table: str = Field(
        description="The table's path under the tables root.", examples=["events/engagement"]
    )
    rows_deleted: int = Field(description="The user's rows deleted from it.", examples=[42])
    files_vacuumed: int = Field(
        description="Files removed from disk by the vacuum that followed.", examples=[3]
    )


class ForgetResponse(BaseModel):
    user_id: int = Field(examples=[1])
    forgotten_at: str = Field(
        description="When the tombstone was recorded (ISO-8601 UTC).",
        examples=["2026-03-03T12:00:00.000Z"],
    )
    rows_deleted: int = Field(description="Rows deleted over every table.", examples=[120])
    tables: list[TablePurgeInfo] = Field(description="Every table looked at, with what went.")


ERRORS: dict[int | str, dict[str, Any]] = {
    401: {"model": ErrorResponse, "description": "No bearer token."},
    403: {"model": ErrorResponse, "description": "Not the configured admin token."},
    422: {"model": ErrorResponse, "description": "The user id is not an int64."},
    503: {"model": ErrorResponse, "description": "The tables kept changing; retry."},
}


BEARER = HTTPBearer(auto_error=False, description="The value of SEQUENCE_PLATFORM_ADMIN_TOKEN.")
Credentials = Annotated[HTTPAuthorizationCredentials | None, Depends(BEARER)]


def admin_router(token: str) -> APIRouter:
    """The admin routes, open to requests bearing ``token``."""
    expected = token.encode()

    async def authorized(credentials: Credentials) -> None:
        if credentials is None:
            raise HTTPException(
                401,
                "this endpoint needs 'Authorization: Bearer <admin token>'",
                headers={"WWW-Authenticate": "Bearer"},
            )
        if not hmac.compare_digest(credentials.credentials.encode(), expected):
            raise HTTPException(403, "the bearer token is not the admin token")

    # The token is checked before the path: a caller without it learns nothing, not even 422s.
    router = APIRouter(prefix="/v1/admin", tags=["admin"], dependencies=[Depends(authorized)])

    @router.delete(
        "/users/{user_id}",
        response_model=ForgetResponse,
        responses=ERRORS,
        summary="Forget a user",
    )
    def forget_user(
        request: Request,
        user_id: Annotated[
            int, Path(ge=INT64_MIN, le=INT64_MAX, description="The user (int64).", examples=[1])
        ],
    ) -> ForgetResponse:
        """Deletes every row of the user from every table (events, stream archive, dead
        letters naming the user, signals, real-time rows, every version of every sequence,
        training sets), vacuums the tables so the old files are gone from disk (no time travel
        to before this), keeps a tombstone so that no later write brings the user back, and
        drops what the service holds in memory. Landing files are the caller's to purge."""
        store = context_of(request).store
        try:
            outcome = forget_users(store.layout, [user_id])
        except FORGET_INTERRUPTED as error:
            raise ForgetFailed(
                f"forgetting user {user_id} did not complete ({error}); forgetting again is "
                "safe: retry"
            ) from error
        store.refresh()  # sees the tombstones marked purged: drops the cached reads
        return ForgetResponse(
            user_id=user_id,
            forgotten_at=format_timestamp(outcome.forgotten_at),
            rows_deleted=outcome.rows_deleted,
            tables=[
                TablePurgeInfo(
                    table=t.table, rows_deleted=t.rows_deleted, files_vacuumed=t.files_vacuumed
                )
                for t in outcome.tables
            ],
        )

    return router
