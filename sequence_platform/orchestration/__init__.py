"""Dagster: asset factories, partitions, checks, jobs, schedules and resources.

``build_definitions`` is imported on first use, so that Dagster's own processes (the
webserver, the daemon) can load the instance's storage class from this package without
loading the platform's engine.
"""

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from sequence_platform.orchestration.definitions import build_definitions

__all__ = ["build_definitions"]


def __getattr__(name: str) -> Any:
    if name == "build_definitions":
        from sequence_platform.orchestration.definitions import build_definitions

        return build_definitions
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
