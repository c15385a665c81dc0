"""Decoding and validation of raw events: typed valid rows, and rejects with a reason.

The same code decodes landing files (Parquet or JSON Lines) and stream messages, so a record
is accepted or refused for the same reason whichever path it came by.
"""

from __future__ import annotations

import json
from collections.abc import Collection, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime

import polars as pl

from sequence_platform.spec.models import REQUIRED_EVENT_FIELDS
from sequence_platform.spec.types import TIMESTAMP, type_name_of

MAX_RECORD_BYTES = 1 << 20
EARLIEST_EVENT_TIME = datetime(2000, 1, 1, tzinfo=UTC)
LATEST_EVENT_TIME = datetime(2100, 1, 1, tzinfo=UTC)
ISO_8601 = "%Y-%m-%dT%H:%M:%S%.f%#z"

RECORD = "record"
"""The raw record as text (the JSON line, or the Parquet row as JSON), kept for dead letters."""
ORIGIN = "origin"
"""Where a record came from: ``<file>:<row>`` or ``<topic>/<partition>@<offset>``."""
REASON = "reason"

DEAD_LETTER_SCHEMA = pl.Schema({RECORD: pl.String(), REASON: pl.String(), ORIGIN: pl.String()})


@dataclass(frozen=True)
class DecodedEvents:
    valid: pl.DataFrame
    """Typed events: the event schema plus ``origin`` (landing days: plus ``dt`` instead)."""
    rejected: pl.DataFrame
    """Dead letters: ``record``, ``reason``, ``origin``."""


def decode_json_records(
    records: Sequence[bytes | str | None],
    origins: Sequence[str],
    schema: pl.Schema,
    *,
    required: Collection[str] = tuple(REQUIRED_EVENT_FIELDS),
    time_field: str = "event_time",
) -> DecodedEvents:
    """Decode JSON objects (one per record) into events of ``schema``.

    Only the UTF-8 decoding, the JSON parsing and the JSON type of each value are looked at per
    record; parsing of numbers, timestamps and ranges is vectorised in :func:`validate_events`.
    A record that is not valid UTF-8 is refused, never repaired: a replacement character could
    merge two distinct ``event_id`` values into one.
    """
    text: list[str | None] = []
    reasons: list[str | None] = []
    columns: dict[str, list[str | None]] = {name: [] for name in schema}
    accepts = _json_acceptance(schema)
    for record in records:
        raw, document, reason = _parse_record(record)
        if reason is None and document is not None:
            reason = _json_type_problem(document, accepts)
        text.append(raw)
        reasons.append(reason)
        # A refused record keeps only its raw text: its values are never parsed.
        fields = document if document is not None and reason is None else {}
        for name, values in columns.items():
            values.append(_as_text(fields.get(name)))
    frame = pl.DataFrame(
        {
            **{name: pl.Series(name, values, dtype=pl.String) for name, values in columns.items()},
            RECORD: pl.Series(RECORD, text, dtype=pl.String),
            ORIGIN: pl.Series(ORIGIN, list(origins), dtype=pl.String),
            REASON: pl.Series(REASON, reasons, dtype=pl.String),
        }
    )
    return validate_events(frame, schema, required=required, time_field=time_field)


def validate_events(
    frame: pl.DataFrame,
    schema: pl.Schema,
    *,
    required: Collection[str] = tuple(REQUIRED_EVENT_FIELDS),
    time_field: str = "event_time",
    carry: Collection[str] = (),
) -> DecodedEvents:
    """Split ``frame`` into records of ``schema`` and dead letters.

    ``frame`` holds the fields as text (from JSON) or already typed (from Parquet), an
    ``origin`` column, and optionally ``record`` and an earlier ``reason``. ``required`` fields
    must be present; ``time_field`` must be a plausible time. Feature rows use the same rules
    with their key and as-of column. The ``carry`` columns are not part of a record: they are
    passed through, unchanged, to both results (which landing day a row came from, say).
    """
    if REASON not in frame.columns:
        frame = frame.with_columns(pl.lit(None, dtype=pl.String).alias(REASON))
    record = pl.col(RECORD)
    if RECORD not in frame.columns:
        present = [name for name in frame.columns if name not in (ORIGIN, REASON, *carry)]
        # Binary values have no JSON form: they are kept as hex.
        readable = {
            n: pl.col(n).bin.encode("hex") if frame.schema[n] == pl.Binary else pl.col(n)
            for n in present
        }
        # A typed row's text is written only if it is refused (few are); an oversized row's
        # text is a note of its size.
        as_json = pl.struct(*readable.values()).struct.json_encode() if present else pl.lit("{}")
        frame = _refuse_oversized(frame, readable, as_json)
        record = pl.coalesce(RECORD, as_json)
    for name in schema:
        if name not in frame.columns:
            frame = frame.with_columns(pl.lit(None, dtype=pl.String).alias(name))

    frame = frame.with_columns(
        _parse(pl.col(name), frame.schema[name], dtype).alias(f"__{name}")
        for name, dtype in schema.items()
    )
    # Each rule: when a row breaks it, and what its dead letter says. The words are built only
    # for the rows that break a rule (building them for every row was most of the cost).
    rules: list[tuple[pl.Expr, pl.Expr]] = []
    for name, dtype in schema.items():
        raw, value = pl.col(name), pl.col(f"__{name}")
        if name in required:
            rules.append((raw.is_null(), pl.lit(f"missing required field '{name}'")))
        shown = (
            raw.cast(pl.String).str.slice(0, 40)
            if _castable(frame.schema[name], pl.String()) or frame.schema[name].is_numeric()
            else pl.lit(str(frame.schema[name]))
        )
        rules.append(
            (
                raw.is_not_null() & value.is_null(),
                pl.format(
                    "field '{}': cannot read '{}' as {}",
                    pl.lit(name),
                    shown,
                    pl.lit(type_name_of(dtype)),
                ),
            )
        )
    event_time = pl.col(f"__{time_field}")
    if "event_id" in schema:
        rules.append(
            (pl.col("event_id").cast(pl.String).eq(""), pl.lit("field 'event_id' is empty"))
        )
    rules.append(
        (
            (event_time < pl.lit(EARLIEST_EVENT_TIME, dtype=TIMESTAMP))
            | (event_time >= pl.lit(LATEST_EVENT_TIME, dtype=TIMESTAMP)),
            pl.format(
                "field '{}': {} is outside {}..{}",
                pl.lit(time_field),
                event_time.dt.to_string("%Y-%m-%dT%H:%M:%S%.3fZ"),
                pl.lit(EARLIEST_EVENT_TIME.date().isoformat()),
                pl.lit(LATEST_EVENT_TIME.date().isoformat()),
            ),
        )
    )
    broken = pl.col(REASON).is_not_null() | pl.any_horizontal(
        broken.fill_null(False) for broken, _ in rules
    )
    checked = frame.with_columns(broken.alias("__broken"))
    valid = checked.filter(~pl.col("__broken")).select(
        *(pl.col(f"__{name}").alias(name) for name in schema), pl.col(ORIGIN), *carry
    )
    # The first rule a row breaks is its reason (an earlier reason, from decoding, first).
    reason = pl.coalesce(pl.col(REASON), *(pl.when(broken).then(text) for broken, text in rules))
    rejected = checked.filter(pl.col("__broken")).select(
        record.alias(RECORD), reason.alias(REASON), pl.col(ORIGIN), *carry
    )
    return DecodedEvents(valid, rejected)


def _refuse_oversized(
    frame: pl.DataFrame, fields: dict[str, pl.Expr], as_json: pl.Expr
) -> pl.DataFrame:
    """Typed rows held to the JSON records' limit, measured on the row as JSON (``as_json``).

    Adds ``record`` (null but for refused rows) and, for a refused row, a reason naming its
    largest field. Only rows that could exceed the limit (``_json_size_bound``) are encoded,
    and such rows are rare, so their reasons are worded one by one.
    """
    frame = frame.with_columns(pl.lit(None, dtype=pl.String).alias(RECORD))
    candidates = frame.with_row_index("__row")
    bound = _json_size_bound(frame.schema, fields)
    if bound is not None:
        candidates = candidates.filter(bound > MAX_RECORD_BYTES)
    size = pl.col(RECORD).str.len_bytes()
    oversized = candidates.with_columns(as_json.alias(RECORD)).filter(size > MAX_RECORD_BYTES)
    if oversized.is_empty():
        return frame
    # A field's size is that of its JSON value: ``{"name":value}`` less the braces and name.
    field_sizes = oversized.select(
        pl.struct(value).struct.json_encode().str.len_bytes().sub(len(json.dumps(name)) + 3)
        for name, value in fields.items()
    )
    reasons: list[str] = []
    records: list[str] = []
    for total, sizes in zip(
        oversized[RECORD].str.len_bytes(), field_sizes.iter_rows(named=True), strict=True
    ):
        largest = max(sizes, key=lambda name: sizes[name] or 0)
        reasons.append(
            f"record of {total:,} bytes exceeds the limit of {MAX_RECORD_BYTES:,} "
            f"(field '{largest}' holds {sizes[largest]:,} bytes)"
        )
        records.append(f"<{total:,} bytes, not kept>")
    rows = oversized["__row"]
    row = pl.int_range(pl.len(), dtype=pl.UInt32)
    return frame.with_columns(
        pl.coalesce(REASON, row.replace_strict(rows, reasons, default=None)).alias(REASON),
        row.replace_strict(rows, records, default=None, return_dtype=pl.String).alias(RECORD),
    )


_SCALAR_JSON_BYTES = 64
"""At least the length of any number, boolean, date or time as JSON."""


def _json_size_bound(schema: pl.Schema, fields: dict[str, pl.Expr]) -> pl.Expr | None:
    """At least the length of each row as JSON, cheaply (no text is built); None when a
    column's type has no such bound here (then every row is measured)."""
    parts: list[pl.Expr] = []
    for name, value in fields.items():
        dtype = schema[name]
        key = len(json.dumps(name)) + 2
        if dtype == pl.Binary:
            value_bound = value.str.len_bytes() + 2  # hex: no escapes
        elif dtype == pl.String or isinstance(dtype, pl.Categorical | pl.Enum):
            # An escaped byte takes at most 6 (\u001f); quotes 2.
            value_bound = value.cast(pl.String).str.len_bytes() * 6 + 2
        elif dtype.is_numeric() or dtype.is_temporal() or dtype in (pl.Boolean, pl.Null):
            value_bound = pl.lit(_SCALAR_JSON_BYTES)
        elif isinstance(dtype, pl.List) and (dtype.inner.is_numeric() or dtype.inner == pl.Boolean):
            value_bound = value.list.len() * (_SCALAR_JSON_BYTES + 1) + 2
        elif isinstance(dtype, pl.List) and dtype.inner == pl.String:
            text = pl.element().str.len_bytes() * 6 + 3
            value_bound = value.list.eval(text.fill_null(5)).list.sum() + value.list.len() + 2
        else:
            return None
        parts.append(key + value_bound.fill_null(_SCALAR_JSON_BYTES).cast(pl.Int64))
    return pl.sum_horizontal(parts) + 2 if parts else None


def _parse(column: pl.Expr, source: pl.DataType, target: pl.DataType) -> pl.Expr:
    """``column`` as ``target``: text is parsed, typed values are cast; unreadable → null."""
    if not _castable(source, target):
        return pl.lit(None, dtype=target)
    if source == pl.String and target != pl.String:
        text = column.str.strip_chars()
        if isinstance(target, pl.Datetime):
            epoch = text.str.contains(r"^-?\d+$")
            from_epoch = (
                text.cast(pl.Int64, strict=False)
                .cast(pl.Datetime("ms"))
                .dt.replace_time_zone("UTC")
            )
            from_iso = text.str.to_datetime(ISO_8601, strict=False, time_unit="ms", time_zone="UTC")
            return pl.when(epoch).then(from_epoch).otherwise(from_iso)
        if target == pl.Boolean:
            return pl.when(text == "true").then(True).when(text == "false").then(False)
        if isinstance(target, pl.List):
            return text.str.json_decode(target)
        if target == pl.Date:
            return text.str.to_date("%Y-%m-%d", strict=False)
        return text.cast(target, strict=False)
    if source.is_float() and target.is_integer():
        # A typed float is an integer only when it has no fraction; JSON refuses 1.5 the same.
        return pl.when(column == column.round(0)).then(column.cast(target, strict=False))
    if isinstance(target, pl.Datetime) and isinstance(source, pl.Datetime):
        aware = column if source.time_zone else column.dt.replace_time_zone("UTC")
        return aware.dt.convert_time_zone("UTC").dt.cast_time_unit("ms")
    return column.cast(target, strict=False)


def _castable(source: pl.DataType, target: pl.DataType) -> bool:
    """Whether typed values of ``source`` may be read as ``target`` at all (as JSON would)."""
    if source == pl.Null or source == target:
        return True
    if source == pl.String:
        return True
    if isinstance(target, pl.List):
        return isinstance(source, pl.List)
    if target == pl.String:
        # Dictionary-encoded text is text; a number or a date is refused, as JSON refuses it.
        return isinstance(source, pl.Categorical | pl.Enum)
    if isinstance(target, pl.Datetime):
        return isinstance(source, pl.Datetime) or source.is_integer()
    if target == pl.Boolean:
        return source == pl.Boolean
    return source.is_numeric() or (source == pl.Date and target == pl.Date)


def _parse_record(
    record: bytes | str | None,
) -> tuple[str | None, dict[str, object] | None, str | None]:
    if record is None:
        return None, None, "empty record"
    # Text with lone surrogates is as broken as bad bytes: both are refused as not UTF-8.
    data = record if isinstance(record, bytes) else record.encode("utf-8", "surrogatepass")
    size = len(data)
    if size > MAX_RECORD_BYTES:
        return (
            f"<{size:,} bytes, not kept>",
            None,
            f"record of {size:,} bytes exceeds the limit of {MAX_RECORD_BYTES:,}",
        )
    try:
        raw = data.decode("utf-8")
    except UnicodeDecodeError as error:
        # Kept with the bad bytes escaped (\xff), so that two records differing only there
        # stay two dead letters and an operator sees the bytes.
        bad = "".join(f"\\x{byte:02x}" for byte in data[error.start : error.end])
        reason = f"not valid UTF-8 at byte {error.start} ({bad})"
        return data.decode("utf-8", errors="backslashreplace"), None, reason
    if not raw.strip():
        return raw, None, "empty record"
    try:
        document = json.loads(raw)
    except json.JSONDecodeError as error:
        return raw, None, f"not valid JSON: {error.msg} at position {error.pos}"
    if not isinstance(document, dict):
        return raw, None, f"not a JSON object but a JSON {type(document).__name__}"
    return raw, document, None


_JSON_TYPES: dict[str, tuple[type, ...]] = {
    "string": (str,),
    "bool": (bool,),
    "int32": (int,),
    "int64": (int,),
    "float32": (int, float),
    "float64": (int, float),
    "timestamp": (str, int),
    "date": (str,),
}


Accepts = dict[str, tuple[pl.DataType, tuple[type, ...] | None]]
"""Per field: its type, and the Python types its JSON values may have (None for a list)."""


def _json_acceptance(schema: pl.Schema) -> Accepts:
    return {
        name: (dtype, None if isinstance(dtype, pl.List) else _json_types(dtype))
        for name, dtype in schema.items()
    }


def _json_types(dtype: pl.DataType) -> tuple[type, ...]:
    return _JSON_TYPES.get(type_name_of(dtype), (object,))


def _json_type_problem(document: dict[str, object], accepts: Accepts) -> str | None:
    for name, (dtype, expected) in accepts.items():
        value = document.get(name)
        if value is None:
            continue
        fits = _fits(value, dtype) if expected is None else _is_a(value, expected)
        if not fits:
            got = f"JSON {type(value).__name__} {value!r:.40}"
            return f"field '{name}': expected {type_name_of(dtype)}, got {got}"
        surrogate = _lone_surrogate(value)
        if surrogate is not None:
            return f"field '{name}': not valid Unicode: lone surrogate \\u{ord(surrogate):04x}"
    return None


def _lone_surrogate(value: object) -> str | None:
    """A lone surrogate in a string (``"\\ud800"`` is valid JSON, but no UTF-8 text holds it)."""
    if isinstance(value, str):
        if value.isascii():
            return None
        try:
            value.encode("utf-8")
        except UnicodeEncodeError as error:
            return value[error.start]
        return None
    if isinstance(value, list):
        return next((s for s in map(_lone_surrogate, value) if s is not None), None)
    return None


def _fits(value: object, dtype: pl.DataType) -> bool:
    """Whether a JSON value can be read as ``dtype`` (list elements too; nulls always can)."""
    if value is None:
        return True
    if isinstance(dtype, pl.List):
        inner = dtype.inner if isinstance(dtype.inner, pl.DataType) else dtype.inner()
        return isinstance(value, list) and all(_fits(element, inner) for element in value)
    return _is_a(value, _json_types(dtype))


def _is_a(value: object, expected: tuple[type, ...]) -> bool:
    """Whether a JSON value is one of ``expected`` (a JSON true is no number)."""
    if isinstance(value, bool) and bool not in expected:
        return False
    return isinstance(value, expected)


def _as_text(value: object) -> str | None:
    if value is None or isinstance(value, str):
        return value
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return repr(value)
    return json.dumps(value)
