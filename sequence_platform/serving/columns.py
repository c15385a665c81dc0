"""What the read service holds per event, ready to answer: typed Arrow values and their JSON.

Each stored value is encoded as JSON once, when its table is loaded, by the encoder responses
always used (Polars' ``json_encode``), and followed by a comma. A run of consecutive values of
one field is then one slice of one buffer, and a response is put together from slices rather
than encoded per request. Snapshots keep the encoded values beside the typed ones as list
columns of the same layout (``__json__<field>``), which is what the snapshot files hold.
"""

from __future__ import annotations

import json

import numpy as np
import polars as pl
import pyarrow as pa

TIMESTAMP_FORMAT = "%Y-%m-%dT%H:%M:%S%.3fZ"
JSON_PREFIX = "__json__"
"""Prefix of the column holding the JSON of each value of a field."""
NULL_JSON = b"null,"


def json_ready(column: pl.Expr, dtype: pl.DataType) -> pl.Expr:
    """Timestamps as ISO-8601 UTC strings with milliseconds; dates as ISO dates."""
    if isinstance(dtype, pl.Datetime):
        return column.dt.to_string(TIMESTAMP_FORMAT)
    if isinstance(dtype, pl.Date):
        return column.dt.to_string("%Y-%m-%d")
    if isinstance(dtype, pl.List):
        inner = dtype.inner if isinstance(dtype.inner, pl.DataType) else dtype.inner()
        if isinstance(inner, pl.Datetime | pl.Date | pl.List):
            return column.list.eval(json_ready(pl.element(), inner))
    return column


def json_values(value: pl.Expr, name: str, dtype: pl.DataType) -> pl.Expr:
    """Each value of ``value`` (of type ``dtype``) as its JSON text and a comma, as binary."""
    # Polars encodes a struct {name: value} as {"name":<value>}: keep <value>.
    prefix = len(json.dumps(name)) + 2
    encoded = pl.struct(json_ready(value, dtype).alias(name)).struct.json_encode()
    text = encoded.str.slice(prefix).str.strip_suffix("}") + pl.lit(",")
    return text.cast(pl.Binary)


def with_json(frame: pl.DataFrame, schema: pl.Schema) -> pl.DataFrame:
    """``frame`` plus, per column of ``schema``, the JSON of each value (``__json__<name>``)."""
    return frame.with_columns(
        json_values(pl.col(name), name, dtype).alias(JSON_PREFIX + name)
        for name, dtype in schema.items()
    )


def with_json_lists(frame: pl.DataFrame, elements: pl.Schema) -> pl.DataFrame:
    """``frame`` (list columns of ``elements``) plus the JSON of each list element."""
    return frame.with_columns(
        pl.col(name).list.eval(json_values(pl.element(), name, dtype)).alias(JSON_PREFIX + name)
        for name, dtype in elements.items()
    )


def arrow_table(frame: pl.DataFrame) -> pa.Table:
    """``frame`` as one Arrow record batch (classic types: large strings, large lists)."""
    table = frame.rechunk().to_arrow()
    columns = [column(table, name) for name in table.column_names]
    # Polars may export a nested list whose empty child has an offset past its (empty) buffer:
    # Arrow concatenates such an array wrongly and its IPC writer writes a corrupt file.
    sound = [a if _addressable(a) else a.take(np.arange(len(a))) for a in columns]
    return pa.Table.from_arrays(sound, schema=table.schema)


def _addressable(array: pa.Array) -> bool:
    """Whether the buffers of ``array`` and of its children cover what offset and length
    address."""
    kind, end, own = array.type, array.offset + len(array), array.buffers()

    def covers(index: int, size: int) -> bool:
        return size == 0 or (own[index] is not None and own[index].size >= size)

    if not covers(0, (end + 7) // 8 if own[0] is not None else 0):
        return False
    if pa.types.is_large_list(kind) or pa.types.is_list(kind):
        width = 8 if pa.types.is_large_list(kind) else 4
        return covers(1, (end + 1) * width) and _addressable(array.values)
    if pa.types.is_large_binary(kind) or pa.types.is_large_string(kind):
        return covers(1, (end + 1) * 8)
    if pa.types.is_binary(kind) or pa.types.is_string(kind):
        return covers(1, (end + 1) * 4)
    if pa.types.is_boolean(kind):
        return covers(1, (end + 7) // 8)
    try:
        return covers(1, (end * kind.bit_width + 7) // 8)
    except ValueError:  # not fixed width (nor one of the kinds above): left as it is
        return True


def column(table: pa.Table, name: str) -> pa.Array:
    """One column of ``table`` as a single array."""
    chunks = table.column(name)
    if chunks.num_chunks == 1:
        return chunks.chunk(0)
    return chunks.combine_chunks()


def int64_values(array: pa.Array, null: int = np.iinfo(np.int64).min) -> np.ndarray:
    """An integer or timestamp array as int64 numpy, zero-copy when it has no nulls."""
    if pa.types.is_timestamp(array.type) or pa.types.is_date64(array.type):
        array = array.view(pa.int64())
    if array.null_count:
        array = array.fill_null(null)
    return np.asarray(array.to_numpy(zero_copy_only=False), dtype=np.int64)


def list_offsets(array: pa.Array) -> np.ndarray:
    """The offsets of a (large) list array into its ``values``, as int64 numpy."""
    assert isinstance(array, pa.LargeListArray | pa.ListArray), array.type
    return np.asarray(array.offsets.to_numpy(zero_copy_only=False), dtype=np.int64)


def binary_offsets(array: pa.Array) -> tuple[np.ndarray, memoryview]:
    """The value offsets (``len + 1`` of them, into the data) and the data of a large binary
    array, without copying: value ``i`` is ``data[offsets[i]:offsets[i + 1]]``."""
    _, offsets, data = array.buffers()
    positions = np.frombuffer(offsets, dtype=np.int64)[array.offset : array.offset + len(array) + 1]
    return positions, memoryview(data if data is not None else b"")
