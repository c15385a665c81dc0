"""The definition language: models, loading, validation and derived schemas."""

from sequence_platform.spec.catalog import Catalog, LoadedDefinition
from sequence_platform.spec.errors import DefinitionError, DefinitionProblem
from sequence_platform.spec.executors import executor
from sequence_platform.spec.loader import load_catalog
from sequence_platform.spec.models import (
    AGE_FIELD,
    REQUIRED_EVENT_FIELDS,
    Definition,
    Enrichment,
    ExecutorCall,
    FeatureTableSpec,
    SequenceSpec,
    SignalSpec,
    SourceSpec,
    TrainingSetSpec,
)

__all__ = [
    "AGE_FIELD",
    "REQUIRED_EVENT_FIELDS",
    "Catalog",
    "Definition",
    "DefinitionError",
    "DefinitionProblem",
    "Enrichment",
    "ExecutorCall",
    "FeatureTableSpec",
    "LoadedDefinition",
    "SequenceSpec",
    "SignalSpec",
    "SourceSpec",
    "TrainingSetSpec",
    "executor",
    "load_catalog",
]
