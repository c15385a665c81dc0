"""Dagster: asset factories, partitions, checks, jobs, schedules and resources."""

from sequence_platform.orchestration.definitions import build_definitions

__all__ = ["build_definitions"]
