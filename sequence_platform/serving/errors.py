"""What can go wrong with a request, as typed errors the app turns into HTTP answers."""

from __future__ import annotations


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
