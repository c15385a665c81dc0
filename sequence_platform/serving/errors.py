"""What can go wrong with a request, as typed errors the app turns into HTTP answers."""

from __future__ import annotations

from deltalake.exceptions import DeltaError

UNAVAILABLE_DATA_ERRORS: tuple[type[Exception], ...] = (DeltaError, OSError)
"""Errors of reading a table on a request that mean its data is unavailable right now (a file
vacuumed while it was read, a log being rewritten, storage unreachable): a 503 to retry. Any
other error is a bug, and a 500."""


class ServingError(Exception):
    """A request the service answers with an error status and a message, never a 500."""

    status_code = 500

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


class UnknownSequence(ServingError):
    status_code = 404


class InvalidParameter(ServingError):
    status_code = 422


class NotLoaded(ServingError):
    """The tables a request needs have not been read yet (or cannot be read right now)."""

    status_code = 503
