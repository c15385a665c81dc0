"""Loading definitions from a folder of Python modules and JSON files."""

from __future__ import annotations

import importlib.util
import json
import os
import sys
from pathlib import Path
from types import ModuleType
from typing import Any

from pydantic import TypeAdapter, ValidationError

from sequence_platform.spec.catalog import Catalog, LoadedDefinition
from sequence_platform.spec.errors import DefinitionError, DefinitionProblem
from sequence_platform.spec.models import (
    Definition,
    FeatureTableSpec,
    InvalidDefinition,
    SequenceSpec,
    SignalSpec,
    SourceSpec,
    TrainingSetSpec,
)

DEFINITIONS_ENV = "SEQUENCE_PLATFORM_DEFINITIONS"
_SPEC_TYPES = (SourceSpec, FeatureTableSpec, SignalSpec, SequenceSpec, TrainingSetSpec)
_DEFINITION = TypeAdapter[Definition](Definition)


def default_definitions_dir() -> Path:
    """``$SEQUENCE_PLATFORM_DEFINITIONS``, else the ``definitions`` package of the project."""
    configured = os.environ.get(DEFINITIONS_ENV)
    if configured:
        return Path(configured)
    # Found without importing it: importing the package would build the Dagster definitions.
    found = importlib.util.find_spec("definitions")
    if found is None or not found.submodule_search_locations:
        raise DefinitionError(
            [
                DefinitionProblem(
                    "definitions",
                    "definitions package",
                    "",
                    f"not importable; run from the project folder or set {DEFINITIONS_ENV}",
                )
            ]
        )
    return Path(next(iter(found.submodule_search_locations)))


def load_catalog(directory: Path | None = None) -> Catalog:
    """Every definition in ``directory``, validated together; raises :class:`DefinitionError`."""
    folder = Path(directory) if directory is not None else default_definitions_dir()
    if not folder.is_dir():
        raise DefinitionError(
            [DefinitionProblem(str(folder), "definitions folder", "", "no such folder")]
        )
    loaded: list[LoadedDefinition] = []
    problems: list[DefinitionProblem] = []
    # Python first: its modules may register executors that JSON definitions refer to.
    for path in sorted(folder.glob("*.py")):
        if path.name == "__init__.py":
            continue
        found, errors = _load_python(path)
        loaded += found
        problems += errors
    for path in sorted(folder.glob("*.json")):
        found, errors = _load_json(path)
        loaded += found
        problems += errors
    if problems:
        raise DefinitionError(problems)
    return Catalog(loaded)


def _display(path: Path) -> str:
    try:
        return str(path.resolve().relative_to(Path.cwd()))
    except ValueError:
        return str(path)


def _load_json(path: Path) -> tuple[list[LoadedDefinition], list[DefinitionProblem]]:
    origin = _display(path)
    raw = path.read_bytes()
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as error:
        line = raw[: error.start].count(b"\n") + 1
        bad = raw[error.start : error.end]
        problem = (
            f"not valid UTF-8 at line {line} (byte {error.start}: {bad!r}); save the file as UTF-8"
        )
        return [], [DefinitionProblem(origin, "file", "", problem)]
    try:
        document = json.loads(text)
    except json.JSONDecodeError as error:
        problem = f"not valid JSON at line {error.lineno}, column {error.colno}: {error.msg}"
        return [], [DefinitionProblem(origin, "file", "", problem)]
    items = document if isinstance(document, list) else [document]
    loaded: list[LoadedDefinition] = []
    problems: list[DefinitionProblem] = []
    for index, item in enumerate(items):
        label = _label(item, index if isinstance(document, list) else None)
        if not isinstance(item, dict):
            problems.append(DefinitionProblem(origin, label, "", "a definition is a JSON object"))
            continue
        try:
            loaded.append(LoadedDefinition(_DEFINITION.validate_python(item), origin))
        except InvalidDefinition as invalid:
            problems += _problems_from_validation(origin, label, invalid.error)
        except ValidationError as error:
            problems += _problems_from_validation(origin, label, error)
    return loaded, problems


def _load_python(path: Path) -> tuple[list[LoadedDefinition], list[DefinitionProblem]]:
    origin = _display(path)
    try:
        module = _import_file(path)
    except InvalidDefinition as invalid:
        label = (
            f"{invalid.kind} '{invalid.name}'"
            if isinstance(invalid.name, str)
            else (f"a {invalid.kind} definition")
        )
        return [], _problems_from_validation(origin, label, invalid.error)
    except Exception as error:
        problem = f"cannot import: {type(error).__name__}: {error}"
        return [], [DefinitionProblem(origin, "module", "", problem)]
    seen: set[int] = set()
    loaded: list[LoadedDefinition] = []
    for value in vars(module).values():
        candidates = value if isinstance(value, list | tuple) else [value]
        for candidate in candidates:
            if isinstance(candidate, _SPEC_TYPES) and id(candidate) not in seen:
                seen.add(id(candidate))
                loaded.append(LoadedDefinition(candidate, origin))
    return loaded, []


def _import_file(path: Path) -> ModuleType:
    package = path.parent
    if (package / "__init__.py").exists() and str(package.parent) in map(str, _sys_path()):
        return importlib.import_module(f"{package.name}.{path.stem}")
    name = f"_sequence_platform_definitions.{package.name}.{path.stem}"
    spec = importlib.util.spec_from_file_location(name, path)
    if spec is None or spec.loader is None:
        raise ImportError(f"cannot load {path}")
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


def _sys_path() -> list[Path]:
    return [Path(entry or ".").resolve() for entry in sys.path]


def _label(item: Any, index: int | None) -> str:
    where = f" (item {index})" if index is not None else ""
    if isinstance(item, dict):
        kind = item.get("kind", "definition")
        name = item.get("name")
        return f"{kind} '{name}'{where}" if name else f"{kind}{where}"
    return f"definition{where}"


def _problems_from_validation(
    origin: str, label: str, error: ValidationError
) -> list[DefinitionProblem]:
    problems: list[DefinitionProblem] = []
    for detail in error.errors():
        location = [part for part in detail["loc"] if part not in _KIND_TAGS]
        field = ""
        for part in location:
            field += f"[{part}]" if isinstance(part, int) else (f".{part}" if field else str(part))
        message = detail["msg"]
        if detail["type"] == "extra_forbidden":
            message = "unknown field (check the spelling)"
        elif detail["type"] == "union_tag_invalid":
            message = "'kind' must be one of source, feature_table, signal, sequence"
        elif detail["type"] == "union_tag_not_found":
            message = "missing 'kind' (source, feature_table, signal or sequence)"
        problems.append(DefinitionProblem(origin, label, field, message))
    return problems


_KIND_TAGS = {"source", "feature_table", "signal", "sequence"}
