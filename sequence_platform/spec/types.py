"""Field types of the definition language and their Polars equivalents.

Arrow and Delta types follow from the Polars ones when a table is written.
"""

from __future__ import annotations

import re
from typing import Annotated, Literal

import polars as pl
from pydantic import AfterValidator

TIME_UNIT: Literal["ms"] = "ms"
TIME_ZONE = "UTC"
TIMESTAMP = pl.Datetime(TIME_UNIT, TIME_ZONE)
INT64_MIN, INT64_MAX = -(2**63), 2**63 - 1
"""The range of a ``user_id`` (an int64)."""

_SCALARS: dict[str, pl.DataType] = {
    "string": pl.String(),
    "bool": pl.Boolean(),
    "int32": pl.Int32(),
    "int64": pl.Int64(),
    "float32": pl.Float32(),
    "float64": pl.Float64(),
    "timestamp": TIMESTAMP,
    "date": pl.Date(),
}
_LIST = re.compile(r"^list\[(?P<inner>.+)\]$")


def polars_dtype(type_name: str) -> pl.DataType:
    """The Polars type of a definition type such as ``int64`` or ``list[float32]``."""
    name = type_name.strip()
    if name in _SCALARS:
        return _SCALARS[name]
    match = _LIST.match(name)
    if match:
        return pl.List(polars_dtype(match.group("inner")))
    known = ", ".join([*_SCALARS, "list[<type>]"])
    raise ValueError(f"unknown type {type_name!r}; use one of {known}")


def type_name_of(dtype: pl.DataType) -> str:
    """The definition type name of a Polars type (the inverse of :func:`polars_dtype`)."""
    if isinstance(dtype, pl.List):
        inner = dtype.inner if isinstance(dtype.inner, pl.DataType) else dtype.inner()
        return f"list[{type_name_of(inner)}]"
    if isinstance(dtype, pl.Datetime):
        return "timestamp"
    for name, candidate in _SCALARS.items():
        if dtype == candidate:
            return name
    return str(dtype)


def _check_type(value: str) -> str:
    polars_dtype(value)
    return value


FieldType = Annotated[str, AfterValidator(_check_type)]
