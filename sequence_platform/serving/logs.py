"""The read service's logs: one JSON object a line on stderr, through the stdlib ``logging``.

Every process of ``serve`` (and uvicorn's own loggers in it) logs through the one handler that
``LOG_CONFIG`` installs; ``extra=`` fields of a record become keys of its line.
"""

from __future__ import annotations

import json
import logging
import logging.config
from datetime import UTC, datetime
from typing import Any

ACCESS_LOGGER = "sequence_platform.access"
"""One line per request when the access log is on (``serve --access-log``)."""

# The attributes every LogRecord has; anything else on a record came in through ``extra=``.
_RECORD_ATTRIBUTES = frozenset(
    logging.LogRecord("", 0, "", 0, "", None, None).__dict__.keys() | {"message", "asctime"}
)


class JsonFormatter(logging.Formatter):
    """A record as one JSON object: time, level, logger, message, its extra fields and, for an
    exception, the traceback."""

    def format(self, record: logging.LogRecord) -> str:
        line: dict[str, Any] = {
            "time": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
        }
        for key, value in record.__dict__.items():
            if key not in _RECORD_ATTRIBUTES and not key.startswith("_"):
                line[key] = value
        if record.exc_info:
            line["exception"] = self.formatException(record.exc_info)
        elif record.exc_text:
            line["exception"] = record.exc_text
        return json.dumps(line, default=str)


LOG_CONFIG: dict[str, Any] = {
    "version": 1,
    "disable_existing_loggers": False,
    "formatters": {"json": {"()": f"{__name__}.{JsonFormatter.__name__}"}},
    "handlers": {
        "stderr": {
            "class": "logging.StreamHandler",
            "formatter": "json",
            "stream": "ext://sys.stderr",
        }
    },
    "root": {"level": "INFO", "handlers": ["stderr"]},
    # uvicorn's loggers write through the root handler (uvicorn's access log stays off: the
    # service writes its own, with the route and the sequence).
    "loggers": {
        name: {"handlers": [], "propagate": True}
        for name in ("uvicorn", "uvicorn.error", "uvicorn.access")
    },
}
"""The ``logging.config.dictConfig`` of every ``serve`` process, passed to uvicorn as is."""


def log_json_to_stderr() -> None:
    logging.config.dictConfig(LOG_CONFIG)
