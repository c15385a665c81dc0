"""The executor registry: named, pluggable Polars transforms that definitions refer to.

An executor is a function ``(LazyFrame, **params) -> LazyFrame`` with no I/O. Registering it
under a name (``@executor("dwell_bucket")``) makes it available to every definition, and the
engine runs the very same function in batch, real time and serving.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable
from typing import Any

import polars as pl

ExecutorFunction = Callable[..., pl.LazyFrame]

_REGISTRY: dict[str, ExecutorFunction] = {}


class ExecutorParamsError(ValueError):
    """The parameters of an executor call do not fit the executor's signature."""


def executor(name: str) -> Callable[[ExecutorFunction], ExecutorFunction]:
    """Register ``fn`` as the executor ``name``; its keyword arguments are its params."""

    def register(fn: ExecutorFunction) -> ExecutorFunction:
        existing = _REGISTRY.get(name)
        if existing is not None and not _same_executor(existing, fn):
            raise ValueError(
                f"executor {name!r} is already registered by {_qualified(existing)}; "
                f"{_qualified(fn)} needs another name"
            )
        _REGISTRY[name] = fn
        return fn

    return register


def lookup_executor(name: str) -> ExecutorFunction:
    try:
        return _REGISTRY[name]
    except KeyError:
        known = ", ".join(sorted(_REGISTRY)) or "none registered"
        raise KeyError(f"unknown executor {name!r} (known: {known})") from None


def bind_executor(name: str, params: dict[str, Any]) -> Callable[[pl.LazyFrame], pl.LazyFrame]:
    """The executor ``name`` with ``params`` applied, after checking them against its signature."""
    fn = lookup_executor(name)
    signature = inspect.signature(fn)
    accepted = list(signature.parameters)[1:]
    unknown = [param for param in params if param not in accepted]
    if unknown:
        raise ExecutorParamsError(
            f"unknown param {', '.join(map(repr, unknown))} "
            f"(accepted params: {', '.join(accepted) or 'none'})"
        )
    try:
        signature.bind(pl.LazyFrame(), **params)
    except TypeError as error:
        raise ExecutorParamsError(f"{error} (accepted params: {', '.join(accepted)})") from None

    def run(frame: pl.LazyFrame) -> pl.LazyFrame:
        return fn(frame, **params)

    return run


def _same_executor(first: ExecutorFunction, second: ExecutorFunction) -> bool:
    """The same function, possibly loaded twice: from one file, or from a copy of it."""
    if _qualified(first) == _qualified(second):
        return True
    a, b = first.__code__, second.__code__
    return (
        first.__qualname__ == second.__qualname__
        and a.co_code == b.co_code
        and a.co_consts == b.co_consts
        and a.co_names == b.co_names
    )


def _qualified(fn: ExecutorFunction) -> str:
    # By file rather than module name: the loader may import a definitions file under a
    # different module name than a direct import does, and that is still the same executor.
    return f"{fn.__code__.co_filename}:{fn.__qualname__}"
