"""The definition language: sources, feature tables, signals and sequences as pydantic models.

A definition is data. It is written once (Python or JSON), validated once when the catalog is
loaded, and read by every runtime.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    StringConstraints,
    ValidationError,
)

from sequence_platform.spec.types import FieldType

Name = Annotated[str, StringConstraints(pattern=r"^[a-z][a-z0-9_]*$", max_length=64)]
PARTITION_COLUMN = "dt"
"""Every table's partition column, the day: no field of a definition may take its name."""


def _not_the_partition_column(name: str) -> str:
    if name == PARTITION_COLUMN:
        raise ValueError(
            f"'{PARTITION_COLUMN}' is the tables' partition column (the day); name the field "
            "otherwise"
        )
    return name


FieldName = Annotated[Name, AfterValidator(_not_the_partition_column)]
"""A field of raw events or feature rows."""

REQUIRED_EVENT_FIELDS: dict[str, str] = {
    "event_id": "string",
    "user_id": "int64",
    "item_id": "int64",
    "event_type": "string",
    "event_time": "timestamp",
}
"""Fields every raw event carries, whatever its source declares."""

AGE_FIELD = "age_seconds"
"""Request-time field: seconds between the request time and the event."""


class InvalidDefinition(Exception):
    """A definition was refused; says which one, with pydantic's details.

    Not a ValueError on purpose: pydantic would fold it into a ValidationError of its own.
    """

    def __init__(self, kind: str, name: object, error: ValidationError) -> None:
        self.kind = kind
        self.name = name
        self.error = error
        label = f"{kind} '{name}'" if isinstance(name, str) else f"a {kind} definition"
        super().__init__(f"{label}: {error}")


class _Definition(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    name: Name
    description: str = ""

    def __init__(self, **data: Any) -> None:
        try:
            super().__init__(**data)
        except ValidationError as error:
            kind = type(self).model_fields["kind"].default
            raise InvalidDefinition(kind, data.get("name"), error) from None


class SourceSpec(_Definition):
    """One kind of raw event: landing files in batch, a Kafka topic in real time."""

    kind: Literal["source"] = "source"
    topic: str | None = Field(default=None, description="Kafka topic; defaults to the name.")
    fields: dict[FieldName, FieldType] = Field(default_factory=dict)

    @property
    def topic_name(self) -> str:
        return self.topic or self.name


class FeatureTableSpec(_Definition):
    """A keyed, time-versioned table that signals and requests are enriched from."""

    kind: Literal["feature_table"] = "feature_table"
    key: FieldName
    as_of: FieldName
    fields: dict[FieldName, FieldType]


class Enrichment(BaseModel):
    """Columns joined from a feature table, as of the event (or the request) time."""

    model_config = ConfigDict(extra="forbid", frozen=True, populate_by_name=True)

    table: Name
    fields: list[Name] = Field(min_length=1)
    prefix: str = Field(default="", alias="as", pattern=r"^([a-z][a-z0-9_]*)?$")

    def output_name(self, field: str) -> str:
        return f"{self.prefix}{field}"


class ExecutorCall(BaseModel):
    """A named executor and the parameters it is called with."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str
    params: dict[str, Any] = Field(default_factory=dict)


class SignalSpec(_Definition):
    """A source's events after validation, de-duplication, filtering and enrichment."""

    kind: Literal["signal"] = "signal"
    source: Name
    filter: str | None = None
    enrich: list[Enrichment] = Field(default_factory=list)
    executors: list[ExecutorCall] = Field(default_factory=list)


class SequenceSpec(_Definition):
    """Per user, the newest ``max_length`` signal rows passing ``filter`` in the lookback."""

    kind: Literal["sequence"] = "sequence"
    version: int = Field(default=1, ge=1)
    signal: Name
    filter: str | None = None
    fields: list[Name] = Field(min_length=1)
    max_length: int = Field(ge=1, le=10_000)
    lookback_days: int = Field(ge=1, le=3_650)
    request_enrich: list[Enrichment] = Field(default_factory=list)

    @property
    def stored_fields(self) -> list[str]:
        """The list columns of the snapshot table: identity and time first, then the fields."""
        extra = [f for f in self.fields if f not in ("event_id", "event_time")]
        return ["event_id", "event_time", *extra]

    @property
    def table_name(self) -> str:
        return f"{self.name}/v{self.version}"


class TrainingSetSpec(_Definition):
    """Point-in-time training rows: per row of a spine (``user_id``, ``ts``, labels...), the
    sequences of that user at ``ts``, exactly as serving would have answered then."""

    kind: Literal["training_set"] = "training_set"
    spine: Name
    """The landing-zone folder of the spine: ``landing/<spine>/dt=YYYY-MM-DD/*.parquet``."""
    sequences: list[Name] = Field(min_length=1)

    def prefix(self, sequence: str) -> str:
        """Column prefix of a sequence's columns: none for one sequence, ``<name>__`` else."""
        return f"{sequence}__" if len(self.sequences) > 1 else ""


Definition = Annotated[
    SourceSpec | FeatureTableSpec | SignalSpec | SequenceSpec | TrainingSetSpec,
    Field(discriminator="kind"),
]
