"""A sequence request's options, checked against the definition before anything is read.

Every rule a parameter must follow is here, so that a bad value is a 422 with a message and
nothing unchecked reaches the engine.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Literal
from weakref import WeakKeyDictionary

import polars as pl

from sequence_platform.serving.errors import InvalidParameter, UnknownSequence
from sequence_platform.spec.catalog import Catalog
from sequence_platform.spec.models import SequenceSpec
from sequence_platform.spec.types import INT64_MAX, INT64_MIN

Format = Literal["records", "columnar", "arrow"]
ALWAYS_SERVED = ("event_id", "event_time")
MAX_BATCH_USERS = 1_000
EARLIEST_AS_OF = datetime(1970, 1, 1, tzinfo=UTC)
LATEST_AS_OF = datetime(2200, 1, 1, tzinfo=UTC)
AS_OF_RANGE = f"as_of must be from {EARLIEST_AS_OF.date()} up to {LATEST_AS_OF.date()}"


@dataclass(frozen=True)
class SequenceQuery:
    """What to serve: the sequences of ``user_ids`` at ``at``, trimmed and projected."""

    spec: SequenceSpec
    user_ids: tuple[int, ...]
    """In request order; may repeat."""
    at: datetime
    max_length: int
    max_age: timedelta | None
    fields: tuple[str, ...]
    """``event_id``, ``event_time``, then the requested fields, each once."""
    format: Format
    schema: pl.Schema
    """The type of every field the sequence serves."""


def sequence_spec(catalog: Catalog, name: str) -> SequenceSpec:
    spec = catalog.sequences.get(name)
    if spec is None:
        known = ", ".join(sorted(catalog.sequences)) or "none defined"
        raise UnknownSequence(f"unknown sequence '{name}'; known sequences: {known}")
    return spec


def resolve_query(
    catalog: Catalog,
    spec: SequenceSpec,
    user_ids: Sequence[int],
    *,
    max_length: int | None,
    max_age_seconds: float | None,
    fields: str | Sequence[str] | None,
    as_of: str | None,
    format: Format,
) -> SequenceQuery:
    return SequenceQuery(
        spec=spec,
        user_ids=tuple(user_ids),
        at=parse_as_of(as_of),
        max_length=check_max_length(spec, max_length),
        max_age=max_age(spec, max_age_seconds),
        fields=served_fields(catalog, spec, fields),
        format=format,
        schema=served_schema(catalog, spec),
    )


_SERVED_SCHEMAS: WeakKeyDictionary[Catalog, dict[str, pl.Schema]] = WeakKeyDictionary()


def served_schema(catalog: Catalog, spec: SequenceSpec) -> pl.Schema:
    """``catalog.served_schema``, worked out once per catalog and sequence (not per request)."""
    known = _SERVED_SCHEMAS.setdefault(catalog, {})
    schema = known.get(spec.name)
    if schema is None:
        schema = known[spec.name] = catalog.served_schema(spec.name)
    return schema


def parse_as_of(text: str | None, now: datetime | None = None) -> datetime:
    """An ISO-8601 time with ``Z`` or an offset, as UTC truncated to milliseconds; default now."""
    if text is None:
        moment = now or datetime.now(UTC)
    else:
        try:
            moment = datetime.fromisoformat(text.strip())
        except ValueError:
            raise InvalidParameter(
                f"as_of {text!r:.80} is not an ISO-8601 time "
                "(e.g. 2026-03-01T12:00:00Z or 2026-03-01T13:00:00+01:00)"
            ) from None
        if moment.tzinfo is None or moment.utcoffset() is None:
            raise InvalidParameter(
                f"as_of {text!r:.80} has no time zone; add 'Z' or an offset such as '+00:00'"
            )
        try:
            moment = moment.astimezone(UTC)
        except OverflowError:
            raise InvalidParameter(AS_OF_RANGE) from None
    if not EARLIEST_AS_OF <= moment < LATEST_AS_OF:
        raise InvalidParameter(AS_OF_RANGE)
    return moment.replace(microsecond=moment.microsecond // 1000 * 1000)


def check_max_length(spec: SequenceSpec, value: int | None) -> int:
    if value is None:
        return spec.max_length
    if not 1 <= value <= spec.max_length:
        raise InvalidParameter(
            f"max_length must be between 1 and {spec.max_length} for sequence '{spec.name}' "
            f"(got {value})"
        )
    return value


def max_age(spec: SequenceSpec, seconds: float | None) -> timedelta | None:
    if seconds is None:
        return None
    if not seconds > 0:  # also refuses NaN
        raise InvalidParameter(f"max_age_seconds must be greater than 0 (got {seconds})")
    # Beyond the lookback the window is what bounds the sequence anyway.
    return timedelta(seconds=min(seconds, spec.lookback_days * 86_400.0))


def served_fields(
    catalog: Catalog, spec: SequenceSpec, requested: str | Sequence[str] | None
) -> tuple[str, ...]:
    """``event_id``, ``event_time``, then the requested fields (default every served field)."""
    allowed = list(served_schema(catalog, spec))
    if requested is None:
        names = allowed
    else:
        parts = requested.split(",") if isinstance(requested, str) else list(requested)
        names = [name.strip() for name in parts if name.strip()]
        if not names:
            raise InvalidParameter(
                f"fields is empty; list one or more of: {', '.join(allowed)} (or leave it out)"
            )
        unknown = [name for name in names if name not in allowed]
        if unknown:
            listed = ", ".join(repr(name[:60]) for name in unknown[:5])
            raise InvalidParameter(
                f"unknown field(s) {listed} for sequence '{spec.name}'; "
                f"allowed: {', '.join(allowed)}"
            )
    ordered = [*ALWAYS_SERVED, *(name for name in names if name not in ALWAYS_SERVED)]
    return tuple(dict.fromkeys(ordered))


def check_batch_users(user_ids: Sequence[int]) -> None:
    distinct = len(set(user_ids))
    if distinct > MAX_BATCH_USERS:
        raise InvalidParameter(
            f"a batch holds at most {MAX_BATCH_USERS:,} distinct users (got {distinct:,})"
        )
    outside = [u for u in user_ids if not INT64_MIN <= u <= INT64_MAX]
    if outside:
        raise InvalidParameter(f"user_ids must be 64-bit integers (got {outside[0]})")
