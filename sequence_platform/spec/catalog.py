"""The catalog: every definition, cross-checked, with the schemas the runtimes derive from them.

Schemas are derived, never declared twice: a signal's columns are what its source, its
enrichments and its executors produce, found by planning the executors on an empty frame.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from functools import cached_property
from typing import Any

import polars as pl

from sequence_platform.spec.errors import DefinitionError, DefinitionProblem
from sequence_platform.spec.executors import bind_executor
from sequence_platform.spec.models import (
    AGE_FIELD,
    REQUIRED_EVENT_FIELDS,
    Definition,
    Enrichment,
    FeatureTableSpec,
    SequenceSpec,
    SignalSpec,
    SourceSpec,
    TrainingSetSpec,
)
from sequence_platform.spec.types import TIMESTAMP, polars_dtype, type_name_of


@dataclass(frozen=True)
class LoadedDefinition:
    spec: Definition
    origin: str


def describe(spec: Definition) -> str:
    return f"{spec.kind} '{spec.name}'"


class Catalog:
    """All definitions of a deployment, validated together."""

    def __init__(self, definitions: Iterable[LoadedDefinition]) -> None:
        self.definitions = list(definitions)
        self._origins: dict[str, str] = {}
        self.sources: dict[str, SourceSpec] = {}
        self.feature_tables: dict[str, FeatureTableSpec] = {}
        self.signals: dict[str, SignalSpec] = {}
        self.sequences: dict[str, SequenceSpec] = {}
        self.training_sets: dict[str, TrainingSetSpec] = {}
        self._signal_schemas: dict[str, pl.Schema] = {}
        problems = self._index()
        problems += self._check_references()
        if problems:
            raise DefinitionError(problems)

    # -- lookups -----------------------------------------------------------------------------

    def origin(self, name: str) -> str:
        return self._origins[name]

    def event_schema(self, source: str) -> pl.Schema:
        """Columns of a validated raw event of ``source``: the required ones, then declared."""
        spec = self.sources[source]
        types = {**REQUIRED_EVENT_FIELDS, **spec.fields}
        return pl.Schema({name: polars_dtype(t) for name, t in types.items()})

    def feature_schema(self, table: str) -> pl.Schema:
        spec = self.feature_tables[table]
        columns = {spec.key: pl.Int64(), spec.as_of: TIMESTAMP}
        columns.update({name: polars_dtype(t) for name, t in spec.fields.items()})
        return pl.Schema(columns)

    def signal_schema(self, signal: str) -> pl.Schema:
        return self._signal_schemas[signal]

    def sequence_element_schema(self, sequence: str) -> pl.Schema:
        """Element type of each list column of a snapshot (one list per stored field)."""
        spec = self.sequences[sequence]
        signal = self.signal_schema(spec.signal)
        return pl.Schema({name: signal[name] for name in spec.stored_fields})

    def stored_row_schema(self, sequence: str) -> pl.Schema:
        """A sequence table's columns as its readers scan them: ``user_id`` and one list column
        per stored field (``dt`` and ``length`` aside)."""
        elements = self.sequence_element_schema(sequence)
        return pl.Schema({"user_id": pl.Int64(), **{n: pl.List(t) for n, t in elements.items()}})

    def served_schema(self, sequence: str) -> pl.Schema:
        """Every field a request may ask for: stored, request-time enriched, and the age."""
        spec = self.sequences[sequence]
        columns = dict(self.sequence_element_schema(sequence))
        for enrichment in spec.request_enrich:
            table = self.feature_schema(enrichment.table)
            for field in enrichment.fields:
                columns[enrichment.output_name(field)] = table[field]
        columns[AGE_FIELD] = pl.Float64()
        return pl.Schema(columns)

    @cached_property
    def signals_of_source(self) -> dict[str, list[SignalSpec]]:
        grouped: dict[str, list[SignalSpec]] = {name: [] for name in self.sources}
        for signal in self.signals.values():
            grouped[signal.source].append(signal)
        return grouped

    def all_specs(self) -> list[Definition]:
        return [loaded.spec for loaded in self.definitions]

    # -- validation --------------------------------------------------------------------------

    def _index(self) -> list[DefinitionProblem]:
        problems: list[DefinitionProblem] = []
        by_kind: dict[str, dict[str, Any]] = {
            "source": self.sources,
            "feature_table": self.feature_tables,
            "signal": self.signals,
            "sequence": self.sequences,
            "training_set": self.training_sets,
        }
        for loaded in self.definitions:
            spec = loaded.spec
            if spec.name in self._origins:
                first = self._origins[spec.name]
                problems.append(
                    DefinitionProblem(
                        loaded.origin,
                        describe(spec),
                        "name",
                        f"duplicate name: '{spec.name}' is already defined in {first}",
                    )
                )
                continue
            self._origins[spec.name] = loaded.origin
            by_kind[spec.kind][spec.name] = spec
        return problems

    def _check_references(self) -> list[DefinitionProblem]:
        problems: list[DefinitionProblem] = []
        for source in self.sources.values():
            problems += self._check_source(source)
        for table in self.feature_tables.values():
            problems += self._check_feature_table(table)
        for signal in self.signals.values():
            problems += self._check_signal(signal)
        for sequence in self.sequences.values():
            problems += self._check_sequence(sequence)
        for training in self.training_sets.values():
            problems += self._check_training_set(training)
        return problems

    def _check_training_set(self, spec: TrainingSetSpec) -> list[DefinitionProblem]:
        problems: list[DefinitionProblem] = []
        for index, name in enumerate(spec.sequences):
            if name not in self.sequences:
                problems.append(
                    self._unknown(spec, f"sequences[{index}]", name, "sequence", self.sequences)
                )
        if len(set(spec.sequences)) != len(spec.sequences):
            problems.append(self._problem(spec, "sequences", "a sequence is listed twice"))
        if spec.spine in self._origins:
            problems.append(
                self._problem(
                    spec,
                    "spine",
                    f"'{spec.spine}' is the name of a definition; a spine is a landing folder "
                    "of its own",
                )
            )
        return problems

    def _problem(self, spec: Definition, field: str, message: str) -> DefinitionProblem:
        return DefinitionProblem(self._origins[spec.name], describe(spec), field, message)

    def _check_source(self, spec: SourceSpec) -> list[DefinitionProblem]:
        return [
            self._problem(spec, f"fields.{name}", f"'{name}' is a required event field")
            for name in spec.fields
            if name in REQUIRED_EVENT_FIELDS and spec.fields[name] != REQUIRED_EVENT_FIELDS[name]
        ]

    def _check_feature_table(self, spec: FeatureTableSpec) -> list[DefinitionProblem]:
        return [
            self._problem(spec, f"fields.{name}", f"'{name}' is already the key or as-of column")
            for name in spec.fields
            if name in (spec.key, spec.as_of)
        ]

    def _check_signal(self, spec: SignalSpec) -> list[DefinitionProblem]:
        if spec.source not in self.sources:
            return [self._unknown(spec, "source", spec.source, "source", self.sources)]
        frame = pl.LazyFrame(schema=self.event_schema(spec.source))
        problems: list[DefinitionProblem] = []
        if spec.filter is not None:
            problem = self._check_filter(spec, spec.filter, frame.collect_schema())
            if problem:
                return [problem]
        for index, enrichment in enumerate(spec.enrich):
            columns = frame.collect_schema()
            enrich_problems = self._check_enrichment(spec, f"enrich[{index}]", enrichment, columns)
            if enrich_problems:
                problems += enrich_problems
                continue
            table = self.feature_schema(enrichment.table)
            frame = frame.with_columns(
                pl.lit(None, dtype=table[f]).alias(enrichment.output_name(f))
                for f in enrichment.fields
            )
        if problems:
            return problems
        for index, call in enumerate(spec.executors):
            where = f"executors[{index}]"
            try:
                frame = bind_executor(call.name, call.params)(frame)
                frame.collect_schema()
            except KeyError as error:
                return [self._problem(spec, f"{where}.name", str(error.args[0]))]
            except Exception as error:
                return [
                    self._problem(
                        spec, where, f"executor '{call.name}' failed: {_first_line(error)}"
                    )
                ]
        schema = frame.collect_schema()
        missing = [name for name in REQUIRED_EVENT_FIELDS if name not in schema]
        if missing:
            return [self._problem(spec, "executors", f"executors dropped {', '.join(missing)}")]
        self._signal_schemas[spec.name] = schema
        return []

    def _check_sequence(self, spec: SequenceSpec) -> list[DefinitionProblem]:
        if spec.signal not in self.signals:
            return [self._unknown(spec, "signal", spec.signal, "signal", self.signals)]
        if spec.signal not in self._signal_schemas:
            return [self._problem(spec, "signal", f"signal '{spec.signal}' is itself invalid")]
        schema = self._signal_schemas[spec.signal]
        problems: list[DefinitionProblem] = []
        if spec.filter is not None:
            problem = self._check_filter(spec, spec.filter, schema)
            if problem:
                problems.append(problem)
        for index, field in enumerate(spec.fields):
            if field == "user_id":
                problems.append(
                    self._problem(
                        spec,
                        f"fields[{index}]",
                        "'user_id' is the key of every sequence (one row per user), not a field",
                    )
                )
            elif field not in schema:
                problems.append(
                    self._problem(
                        spec,
                        f"fields[{index}]",
                        f"'{field}' does not exist in signal '{spec.signal}' "
                        f"(available: {', '.join(schema)})",
                    )
                )
        if len(set(spec.fields)) != len(spec.fields):
            problems.append(self._problem(spec, "fields", "a field is listed twice"))
        stored = pl.Schema({f: schema[f] for f in spec.stored_fields if f in schema})
        outputs: set[str] = set()
        for index, enrichment in enumerate(spec.request_enrich):
            problems += self._check_enrichment(spec, f"request_enrich[{index}]", enrichment, stored)
            for field in enrichment.fields:
                output = enrichment.output_name(field)
                if output in outputs:
                    problems.append(
                        self._problem(
                            spec,
                            f"request_enrich[{index}]",
                            f"'{output}' is produced twice; give one enrichment another 'as'",
                        )
                    )
                outputs.add(output)
        return problems

    def _check_enrichment(
        self, spec: Definition, where: str, enrichment: Enrichment, columns: pl.Schema
    ) -> list[DefinitionProblem]:
        if enrichment.table not in self.feature_tables:
            return [
                self._unknown(
                    spec, f"{where}.table", enrichment.table, "feature table", self.feature_tables
                )
            ]
        table = self.feature_tables[enrichment.table]
        problems: list[DefinitionProblem] = []
        if table.key not in columns:
            problems.append(
                self._problem(
                    spec,
                    f"{where}.table",
                    f"joining '{table.name}' needs its key '{table.key}' among the columns "
                    f"({', '.join(columns)})",
                )
            )
        elif columns[table.key] != pl.Int64:
            problems.append(
                self._problem(
                    spec,
                    f"{where}.table",
                    f"feature keys are int64, but '{table.key}' is "
                    f"{type_name_of(columns[table.key])} here; key the table on an int64 column",
                )
            )
        for index, field in enumerate(enrichment.fields):
            if field not in table.fields:
                problems.append(
                    self._problem(
                        spec,
                        f"{where}.fields[{index}]",
                        f"'{field}' is not a field of feature table '{table.name}' "
                        f"(available: {', '.join(table.fields)})",
                    )
                )
            elif enrichment.output_name(field) in columns or enrichment.output_name(field) in (
                AGE_FIELD,
            ):
                problems.append(
                    self._problem(
                        spec,
                        f"{where}.fields[{index}]",
                        f"'{enrichment.output_name(field)}' already exists; "
                        "give the enrichment a prefix with 'as'",
                    )
                )
        return problems

    def _check_filter(
        self, spec: Definition, expression: str, schema: pl.Schema
    ) -> DefinitionProblem | None:
        try:
            predicate = pl.sql_expr(expression)
            result = pl.LazyFrame(schema=schema).select(predicate).collect_schema()
        except Exception as error:
            return self._problem(
                spec,
                "filter",
                f"cannot evaluate {expression!r}: {_first_line(error)} "
                f"(columns: {', '.join(schema)})",
            )
        dtype = next(iter(result.values()))
        if dtype != pl.Boolean:
            return self._problem(spec, "filter", f"{expression!r} is {dtype}, not a boolean")
        return None

    def _unknown(
        self, spec: Definition, field: str, name: str, kind: str, known: Mapping[str, object]
    ) -> DefinitionProblem:
        listed = ", ".join(sorted(known)) or "none defined"
        return self._problem(spec, field, f"unknown {kind} '{name}' (defined: {listed})")


def _first_line(error: Exception) -> str:
    """Polars errors carry the whole query plan after the first line; the author needs the first."""
    text = str(error).strip()
    return text.splitlines()[0] if text else type(error).__name__
