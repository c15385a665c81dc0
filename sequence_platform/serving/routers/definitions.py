"""``/v1/definitions``: what this deployment defines, with typed fields."""

from __future__ import annotations

from typing import Annotated

import polars as pl
from fastapi import APIRouter, Depends

from sequence_platform.serving.context import ServingContext, serving_context
from sequence_platform.serving.models import DefinitionInfo, DefinitionsResponse
from sequence_platform.spec.catalog import Catalog
from sequence_platform.spec.models import (
    Definition,
    FeatureTableSpec,
    SequenceSpec,
    SignalSpec,
    SourceSpec,
    TrainingSetSpec,
)
from sequence_platform.spec.types import type_name_of

router = APIRouter(prefix="/v1/definitions", tags=["definitions"])


@router.get("", response_model=DefinitionsResponse, summary="Every definition")
def list_definitions(
    context: Annotated[ServingContext, Depends(serving_context)],
) -> DefinitionsResponse:
    """Sources, feature tables, signals and sequences, with their typed fields."""
    catalog = context.catalog
    return DefinitionsResponse(
        definitions=[definition_info(catalog, spec) for spec in catalog.all_specs()]
    )


def definition_info(catalog: Catalog, spec: Definition) -> DefinitionInfo:
    if isinstance(spec, SourceSpec):
        schema = catalog.event_schema(spec.name)
    elif isinstance(spec, FeatureTableSpec):
        schema = catalog.feature_schema(spec.name)
    elif isinstance(spec, SignalSpec):
        schema = catalog.signal_schema(spec.name)
    elif isinstance(spec, TrainingSetSpec):
        schema = training_columns(catalog, spec)
    else:
        schema = catalog.served_schema(spec.name)
    sequence = spec if isinstance(spec, SequenceSpec) else None
    training = spec if isinstance(spec, TrainingSetSpec) else None
    return DefinitionInfo(
        kind=spec.kind,
        name=spec.name,
        version=sequence.version if sequence else None,
        description=spec.description,
        origin=catalog.origin(spec.name),
        fields={name: type_name_of(dtype) for name, dtype in schema.items()},
        signal=sequence.signal if sequence else None,
        max_length=sequence.max_length if sequence else None,
        lookback_days=sequence.lookback_days if sequence else None,
        spine=training.spine if training else None,
        sequences=list(training.sequences) if training else None,
    )


def training_columns(catalog: Catalog, spec: TrainingSetSpec) -> pl.Schema:
    """What a training set adds to each spine row: per sequence, ``length`` and a list of each
    served field (prefixed ``<sequence>__`` when there are several)."""
    columns: dict[str, pl.DataType] = {}
    for name in spec.sequences:
        prefix = spec.prefix(name)
        columns[f"{prefix}length"] = pl.Int32()
        for field, dtype in catalog.served_schema(name).items():
            columns[f"{prefix}{field}"] = pl.List(dtype)
    return pl.Schema(columns)
