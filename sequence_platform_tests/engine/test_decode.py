"""Decoding and validation of raw events: every bad record gets its own reason, the good ones
around it come through with exact typed values, and JSON and typed (Parquet) input agree."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta, timezone
from typing import Any

import polars as pl

from sequence_platform.engine import DEAD_LETTER_SCHEMA, decode_json_records, validate_events
from sequence_platform.spec import Catalog, LoadedDefinition, SourceSpec
from sequence_platform.spec.types import TIMESTAMP
from sequence_platform_tests.engine.frames import utc

SOURCE = SourceSpec(name="engagement", fields={"surface": "string", "dwell_ms": "int64"})
SCHEMA = Catalog([LoadedDefinition(SOURCE, "test")]).event_schema("engagement")
GOOD: dict[str, Any] = {
    "event_id": "good",
    "user_id": 7,
    "item_id": 9,
    "event_type": "click",
    "event_time": "2026-03-01T00:00:00.123Z",
    "surface": "home",
    "dwell_ms": 1500,
}


def record(**changes: Any) -> str:
    """``GOOD`` as a JSON line with ``changes``; a change to ``...`` removes the field."""
    document = {**GOOD, **changes}
    return json.dumps({k: v for k, v in document.items() if v is not ...})


def decode(records: list[bytes | str | None]) -> tuple[pl.DataFrame, pl.DataFrame]:
    decoded = decode_json_records(records, [f"line:{i}" for i in range(len(records))], SCHEMA)
    return decoded.valid, decoded.rejected


BAD_RECORDS: list[tuple[bytes | str | None, str]] = [
    ("not json", "not valid JSON: Expecting value at position 0"),
    (
        '{"event_id": "x",',
        "not valid JSON: Expecting property name enclosed in double quotes at position 17",
    ),
    ("[1, 2]", "not a JSON object but a JSON list"),
    ('"event"', "not a JSON object but a JSON str"),
    ("", "empty record"),
    ("  \t", "empty record"),
    (None, "empty record"),
    (record(user_id=...), "missing required field 'user_id'"),
    (record(event_time=None), "missing required field 'event_time'"),
    (record(user_id="abc"), "field 'user_id': expected int64, got JSON str 'abc'"),
    (record(user_id="7"), "field 'user_id': expected int64, got JSON str '7'"),
    (record(user_id=True), "field 'user_id': expected int64, got JSON bool True"),
    (record(item_id=1.5), "field 'item_id': expected int64, got JSON float 1.5"),
    (record(item_id=9.0), "field 'item_id': expected int64, got JSON float 9.0"),
    (record(user_id=2**63), "field 'user_id': cannot read '9223372036854775808' as int64"),
    (record(event_time="yesterday"), "field 'event_time': cannot read 'yesterday' as timestamp"),
    (
        record(event_time="2026-03-01T00:00:00"),
        "field 'event_time': cannot read '2026-03-01T00:00:00' as timestamp",
    ),
    (
        record(event_time="2026-02-30T00:00:00Z"),
        "field 'event_time': cannot read '2026-02-30T00:00:00Z' as timestamp",
    ),
    (
        record(event_time=1772323200123.0),
        "field 'event_time': expected timestamp, got JSON float 1772323200123.0",
    ),
    (
        record(event_time="1901-01-01T00:00:00Z"),
        "field 'event_time': 1901-01-01T00:00:00.000Z is outside 2000-01-01..2100-01-01",
    ),
    (
        record(event_time="3000-01-01T00:00:00Z"),
        "field 'event_time': 3000-01-01T00:00:00.000Z is outside 2000-01-01..2100-01-01",
    ),
    (
        record(event_time="1999-12-31T23:59:59.999Z"),
        "field 'event_time': 1999-12-31T23:59:59.999Z is outside 2000-01-01..2100-01-01",
    ),
    (
        record(event_time="2100-01-01T00:00:00Z"),
        "field 'event_time': 2100-01-01T00:00:00.000Z is outside 2000-01-01..2100-01-01",
    ),
    (
        record(event_time=0),
        "field 'event_time': 1970-01-01T00:00:00.000Z is outside 2000-01-01..2100-01-01",
    ),
    (
        '{"event_id": "big", "padding": "' + "x" * (5 * 1024 * 1024) + '"}',
        "record of 5,242,914 bytes exceeds the limit of 1,048,576",
    ),
    (record(event_id=""), "field 'event_id' is empty"),
    (record(event_id=17), "field 'event_id': expected string, got JSON int 17"),
    (record(surface=5), "field 'surface': expected string, got JSON int 5"),
    (record(dwell_ms="long"), "field 'dwell_ms': expected int64, got JSON str 'long'"),
    (record(dwell_ms=[1500]), "field 'dwell_ms': expected int64, got JSON list [1500]"),
]


def test_each_bad_record_gets_its_reason_and_the_good_ones_around_it_survive() -> None:
    good_ones = [
        record(event_id=f"good-{i}", user_id=100 + i, dwell_ms=i) for i in range(len(BAD_RECORDS))
    ]
    interleaved: list[bytes | str | None] = []
    for good, (bad, _) in zip(good_ones, BAD_RECORDS, strict=True):
        interleaved += [good, bad]
    valid, rejected = decode(interleaved)

    assert rejected.schema == DEAD_LETTER_SCHEMA
    assert rejected["reason"].to_list() == [reason for _, reason in BAD_RECORDS]
    assert rejected["origin"].to_list() == [f"line:{2 * i + 1}" for i in range(len(BAD_RECORDS))]
    # The raw text is kept for dead letters, except for records too large to keep.
    assert rejected["record"][0] == "not json"
    assert rejected["record"][len(BAD_RECORDS) - 6] == "<5,242,914 bytes, not kept>"

    assert valid.schema == pl.Schema({**SCHEMA, "origin": pl.String()})
    assert valid.rows() == [
        (
            f"good-{i}",
            100 + i,
            9,
            "click",
            utc("2026-03-01T00:00:00.123"),
            "home",
            i,
            f"line:{2 * i}",
        )
        for i in range(len(BAD_RECORDS))
    ]


def test_optional_fields_may_be_missing_or_null_and_undeclared_fields_are_ignored() -> None:
    valid, rejected = decode(
        [
            record(event_id="a", surface=..., dwell_ms=...),
            record(event_id="b", surface=None, dwell_ms=None, colour="red", nested={"x": [1]}),
            record(event_id="c", dwell_ms=0, event_time="2000-01-01T00:00:00Z"),
            b'{"event_id":"d","user_id":-3,"item_id":0,"event_type":"","event_time":946684800000}',
        ]
    )
    assert rejected.height == 0
    assert valid.drop("origin").rows() == [
        ("a", 7, 9, "click", utc("2026-03-01T00:00:00.123"), None, None),
        ("b", 7, 9, "click", utc("2026-03-01T00:00:00.123"), None, None),
        ("c", 7, 9, "click", utc("2000-01-01T00:00:00"), "home", 0),
        ("d", -3, 0, "", utc("2000-01-01T00:00:00"), None, None),
    ]


def test_iso_with_z_with_an_offset_and_epoch_milliseconds_are_the_same_instant() -> None:
    instant = datetime(2026, 3, 1, 0, 0, 0, 123_000, tzinfo=UTC)
    epoch_ms = int(instant.timestamp() * 1000)
    assert epoch_ms == 1_772_323_200_123
    valid, rejected = decode(
        [
            record(event_id="z", event_time="2026-03-01T00:00:00.123Z"),
            record(event_id="offset", event_time="2026-03-01T02:00:00.123+02:00"),
            record(event_id="negative", event_time="2026-02-28T19:30:00.123-04:30"),
            record(event_id="compact", event_time="2026-03-01T02:00:00.123+0200"),
            record(event_id="epoch", event_time=epoch_ms),
            record(event_id="micro", event_time="2026-03-01T00:00:00.123999Z"),
        ]
    )
    assert rejected.height == 0
    assert valid["event_time"].dtype == TIMESTAMP
    assert valid["event_time"].to_list() == [instant] * 6


# -- typed input (Parquet landing files) -------------------------------------------------------


def test_typed_columns_are_cast_and_nulls_in_required_fields_rejected() -> None:
    paris = timezone(timedelta(hours=1))
    frame = pl.DataFrame(
        {
            "event_id": ["a", "b", None, "d", "", "f", "g"],
            "user_id": pl.Series([1, 2, 3, None, 5, 6, 7], dtype=pl.Int32),
            "item_id": pl.Series([10, 20, 30, 40, 50, 60, 70], dtype=pl.UInt16),
            "event_type": ["click", "save", "save", "save", "save", "save", None],
            "event_time": pl.Series(
                [datetime(2026, 3, 1, 12, 0, 0, 123_456)] * 6 + [datetime(2026, 3, 1)],
                dtype=pl.Datetime("us"),
            ),
            "surface": [None, "home", "x", "x", "x", "x", "x"],
            "dwell_ms": pl.Series([None, 5, 6, 7, 8, 9, 10], dtype=pl.Int32),
            "undeclared": [1] * 7,
            "origin": [f"part-0.parquet:{i}" for i in range(1, 8)],
        }
    )
    decoded = validate_events(frame, SCHEMA)
    # A naive timestamp in a typed file is read as UTC; microseconds are truncated to ms.
    assert decoded.valid.rows() == [
        ("a", 1, 10, "click", utc("2026-03-01T12:00:00.123"), None, None, "part-0.parquet:1"),
        ("b", 2, 20, "save", utc("2026-03-01T12:00:00.123"), "home", 5, "part-0.parquet:2"),
        ("f", 6, 60, "save", utc("2026-03-01T12:00:00.123"), "x", 9, "part-0.parquet:6"),
    ]
    assert decoded.valid.schema == pl.Schema({**SCHEMA, "origin": pl.String()})
    assert decoded.rejected.select("reason", "origin").rows() == [
        ("missing required field 'event_id'", "part-0.parquet:3"),
        ("missing required field 'user_id'", "part-0.parquet:4"),
        ("field 'event_id' is empty", "part-0.parquet:5"),
        ("missing required field 'event_type'", "part-0.parquet:7"),
    ]
    # The record kept for a dead letter is the typed row as JSON.
    assert json.loads(decoded.rejected["record"][0])["user_id"] == 3

    aware = pl.DataFrame(
        {
            "event_id": ["paris", "epoch", "text"],
            "user_id": [1, 1, 1],
            "item_id": [2, 2, 2],
            "event_type": ["save"] * 3,
            "origin": ["o1", "o2", "o3"],
        }
    )
    times = {
        "paris": pl.Series([datetime(2026, 3, 1, 1, 0, tzinfo=paris)] * 3).dt.convert_time_zone(
            "Europe/Paris"
        ),
        "epoch": pl.Series([1_772_323_200_123] * 3, dtype=pl.Int64),
        "text": pl.Series(["2026-03-01T00:00:00.123Z"] * 3),
    }
    expected = {
        "paris": utc("2026-03-01T00:00:00"),
        "epoch": utc("2026-03-01T00:00:00.123"),
        "text": utc("2026-03-01T00:00:00.123"),
    }
    for kind, series in times.items():
        decoded = validate_events(aware.with_columns(series.alias("event_time")), SCHEMA)
        assert decoded.rejected.height == 0, kind
        assert decoded.valid["event_time"].to_list() == [expected[kind]] * 3, kind


def test_typed_values_that_cannot_be_read_are_rejected_with_the_field() -> None:
    frame = pl.DataFrame(
        {
            "event_id": ["a", "b"],
            "user_id": ["abc", "12"],
            "item_id": [2, 2],
            "event_type": ["save", "save"],
            "event_time": [datetime(2026, 3, 1), datetime(1901, 1, 1)],
            "origin": ["o1", "o2"],
        }
    )
    decoded = validate_events(frame, SCHEMA)
    assert decoded.valid.height == 0
    assert decoded.rejected["reason"].to_list() == [
        "field 'user_id': cannot read 'abc' as int64",
        "field 'event_time': 1901-01-01T00:00:00.000Z is outside 2000-01-01..2100-01-01",
    ]


# -- found while writing these tests ---------------------------------------------------------


def test_a_typed_float_with_a_fraction_is_refused_for_an_integer_field() -> None:
    frame = pl.DataFrame(
        {
            "event_id": ["a"],
            "user_id": [1],
            "item_id": [1.5],
            "event_type": ["save"],
            "event_time": [datetime(2026, 3, 1, tzinfo=UTC)],
            "origin": ["o1"],
        }
    )
    decoded = validate_events(frame, SCHEMA)
    assert decoded.valid.height == 0
    assert decoded.rejected["reason"].to_list() == ["field 'item_id': cannot read '1.5' as int64"]


def test_a_list_field_with_a_wrong_element_type_is_one_dead_letter() -> None:
    items = pl.Schema(
        {
            "item_id": pl.Int64(),
            "updated_at": TIMESTAMP,
            "category": pl.String(),
            "embedding": pl.List(pl.Float32()),
        }
    )
    good = {"item_id": 1, "updated_at": "2026-03-01T00:00:00Z", "embedding": [0.5, 1.0]}
    bad = {**good, "item_id": 2, "embedding": ["x"]}
    decoded = decode_json_records(
        [json.dumps(good), json.dumps(bad)],
        ["o1", "o2"],
        items,
        required=("item_id", "updated_at"),
        time_field="updated_at",
    )
    assert decoded.valid["embedding"].to_list() == [[0.5, 1.0]]
    assert decoded.rejected["origin"].to_list() == ["o2"]


def test_the_size_limit_counts_bytes_whichever_form_the_record_has() -> None:
    text = json.dumps({**GOOD, "event_id": "wide", "surface": "é" * 600_000}, ensure_ascii=False)
    assert len(text.encode()) > 1 << 20 > len(text)
    from_bytes = decode([text.encode()])
    from_text = decode([text])
    assert from_bytes[1]["reason"].to_list() == from_text[1]["reason"].to_list()


def test_text_that_is_not_unicode_is_refused_not_repaired() -> None:
    """Bad bytes, and JSON escapes of lone surrogates (valid JSON, but no UTF-8 text holds
    them), are dead letters with the place of the problem; once used to crash the decoder."""
    base = record(event_id="X").encode()
    # Text (not bytes) holding a lone surrogate itself, as a caller's str may.
    surrogate = json.dumps({**GOOD, "event_id": "Y", "surface": "\udcff"}, ensure_ascii=False)
    valid, rejected = decode(
        [
            base.replace(b'"X"', b'"X\xff"'),
            base.replace(b'"X"', b'"X\xfe"'),
            base.replace(b'"X"', b'"\\ud800"'),
            surrogate,
            record(event_id="Z", surface="caf\u00e9"),
            record(event_id="V", colour="\udcff"),
            record(event_id="W").replace('"home"', '"\\ud83d\\ude00"'),
        ]
    )
    assert rejected.select("reason", "origin").rows() == [
        ("not valid UTF-8 at byte 15 (\\xff)", "line:0"),
        ("not valid UTF-8 at byte 15 (\\xfe)", "line:1"),
        ("field 'event_id': not valid Unicode: lone surrogate \\ud800", "line:2"),
        (f"not valid UTF-8 at byte {surrogate.index(chr(0xDCFF))} (\\xed)", "line:3"),
    ]
    assert rejected["record"][0] == base.decode().replace('"X"', '"X\\xff"')
    assert rejected["record"][2] == base.decode().replace('"X"', '"\\ud800"')
    # Escaped surrogate pairs are one character; an undeclared field is never looked at.
    assert valid.select("event_id", "surface").rows() == [
        ("Z", "café"),
        ("V", "home"),
        ("W", "\U0001f600"),
    ]
