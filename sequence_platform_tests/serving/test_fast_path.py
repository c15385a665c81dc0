"""The request path (``serving.reader``) against the engine's definition of a served sequence.

``engine.serve.merge_realtime_tail`` and ``add_request_fields`` define what a read at ``T``
returns for a snapshot and a real-time tail; the read service executes the same rule another
way (binary search, runs of snapshot positions, pre-encoded JSON). On random snapshots, tails,
feature versions and requests, built to be adversarial (few distinct instants, so ties at ``T``,
at the cutoff and on both window edges; the same event id in the snapshot and in real time with
other contents and times; an event delivered twice; feature versions at and around ``T``, two
copies of one version), both must give the same responses: JSON-decoded records and columnar
documents, and Arrow tables.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, replace
from datetime import UTC, date, datetime, timedelta
from functools import cache
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl
import pyarrow as pa
import pytest
from hypothesis import event, given, settings
from hypothesis import strategies as st

from sequence_platform.engine import (
    add_request_fields,
    assemble_snapshot,
    merge_realtime_tail,
    sequence_rows,
)
from sequence_platform.engine.serve import FROM_REALTIME
from sequence_platform.runtime.microbatch import STREAM_OFFSET, STREAM_PARTITION
from sequence_platform.serving.columns import json_ready
from sequence_platform.serving.query import SequenceQuery, resolve_query
from sequence_platform.serving.reader import format_timestamp, serve_sequences
from sequence_platform.serving.store import FeatureVersions, RealtimeTail, Snapshot
from sequence_platform.spec import (
    Catalog,
    FeatureTableSpec,
    LoadedDefinition,
    SequenceSpec,
    SignalSpec,
    SourceSpec,
)
from sequence_platform.storage.layout import TableLayout

CUTOFF = datetime(2026, 3, 3, tzinfo=UTC)
"""The snapshot's cutoff: it holds events before it."""
SNAPSHOT_DAY = date(2026, 3, 2)
SNAPSHOT_VERSION = 7
STEP = timedelta(hours=12)
MS = timedelta(milliseconds=1)
EVENT_TYPES = ("save", "click", "save", "like")
USERS = (1, 1, 2, 3)
UNKNOWN_USER = 9
IDS = ("a", "b", "c", "e1", "e10", "e2", "e9", "x", "z", "é", "éa", "ß")
"""Event ids in a tricky string order; each event takes the next one (plus a number)."""
EXAMPLES = settings(max_examples=300, deadline=None)

SOURCE = SourceSpec(
    name="engagement",
    fields={
        "surface": "string",
        "score": "float64",
        "weights": "list[float32]",
        "seen_at": "timestamp",
    },
)
SIGNAL = SignalSpec(name="engagement_signal", source="engagement")
ITEMS = FeatureTableSpec(
    name="items",
    key="item_id",
    as_of="updated_at",
    fields={"category": "string", "price": "float64"},
)


@cache
def catalog_of(max_length: int, lookback_days: int, filtered: bool) -> tuple[Catalog, str]:
    spec = SequenceSpec(
        name="recent",
        signal=SIGNAL.name,
        filter="event_type IN ('save', 'click')" if filtered else None,
        fields=["item_id", "event_type", "surface", "score", "weights", "seen_at"],
        max_length=max_length,
        lookback_days=lookback_days,
        request_enrich=[{"table": "items", "fields": ["category", "price"], "as": "current_"}],
    )
    definitions = (SOURCE, SIGNAL, ITEMS, spec)
    return Catalog([LoadedDefinition(d, "test_fast_path") for d in definitions]), spec.name


# -- random data ------------------------------------------------------------------------------


def instants(low: int, high: int) -> st.SearchStrategy[datetime]:
    """Times on a coarse grid around the cutoff, or a millisecond either side of a grid point."""
    return st.builds(
        lambda step, shift: CUTOFF + step * STEP + shift * MS,
        st.integers(low, high),
        st.sampled_from([0, 0, 0, -1, 1]),
    )


@st.composite
def signal_rows(draw: st.DrawFn, times: st.SearchStrategy[datetime], count: int) -> list[dict]:
    rows = []
    for index in range(count):
        rows.append(
            {
                "event_id": f"{draw(st.sampled_from(IDS))}{index}",
                "user_id": draw(st.sampled_from(USERS)),
                "item_id": draw(st.integers(0, 3)),
                "event_type": draw(st.sampled_from(EVENT_TYPES)),
                "event_time": draw(times),
                "surface": draw(st.sampled_from([None, "home", 'say "hi"', "ünï\\"])),
                "score": draw(st.one_of(st.none(), st.floats(-1e6, 1e6, width=32))),
                "weights": draw(
                    st.one_of(st.none(), st.lists(st.floats(-2, 2, width=32), max_size=2))
                ),
                "seen_at": draw(st.one_of(st.none(), instants(-8, 8))),
            }
        )
    return rows


@dataclass
class Scenario:
    catalog: Catalog
    spec: SequenceSpec
    snapshot: pl.DataFrame
    tail: pl.DataFrame
    """Real-time rows in delivery order, with their partition and offset."""
    features: pl.DataFrame
    query: SequenceQuery


@st.composite
def scenarios(draw: st.DrawFn) -> Scenario:
    catalog, name = catalog_of(
        draw(st.integers(1, 4)), draw(st.integers(1, 2)), draw(st.booleans())
    )
    spec = catalog.sequences[name]
    schema = catalog.signal_schema(spec.signal)

    batch = draw(signal_rows(instants(-5, -1) | instants(0, 0).map(lambda t: t - MS), 12))
    batch = batch[: draw(st.integers(0, len(batch)))]
    snapshot = assemble_snapshot(
        sequence_rows(pl.DataFrame(batch, schema=schema, orient="row").lazy(), spec), spec, CUTOFF
    ).collect()

    # Real time: new events, copies of batch events with other contents (and maybe another
    # time or type), and events delivered twice with different contents.
    fresh = draw(signal_rows(instants(-4, 5), 10))
    fresh = [{**row, "event_id": f"rt-{row['event_id']}"} for row in fresh]
    fresh = fresh[: draw(st.integers(2, len(fresh)))]
    copies = [
        {
            **row,
            "event_type": draw(st.sampled_from(EVENT_TYPES)),
            "surface": "real-time copy",
            "event_time": draw(st.just(row["event_time"]) | instants(-4, 5)),
        }
        if draw(st.booleans())
        else {**row, "surface": "real-time copy"}
        for row in batch
        if draw(st.booleans())
    ]
    delivered = fresh + copies
    twice = [
        {**row, "surface": "second delivery", "event_time": draw(instants(-4, 5))}
        for row in delivered
        if draw(st.integers(0, 3)) == 0
    ]
    delivered = draw(st.permutations(delivered)) + twice
    partitions = [draw(st.sampled_from([0, 1])) for _ in delivered]
    tail = pl.DataFrame(delivered, schema=schema, orient="row").with_columns(
        pl.Series(STREAM_PARTITION, partitions, dtype=pl.Int32),
        pl.int_range(pl.len(), dtype=pl.Int64).alias(STREAM_OFFSET),
    )

    at = draw(instants(0, 5))
    versions = [
        {
            "item_id": draw(st.integers(0, 3)),
            "updated_at": draw(st.sampled_from([at, at - MS, at + MS, at - STEP, CUTOFF])),
            "category": draw(st.sampled_from([None, "hats", "bags", "shoes"])),
            "price": draw(st.one_of(st.none(), st.floats(0, 100))),
        }
        for _ in range(draw(st.integers(0, 10)))
    ]
    features = pl.DataFrame(versions, schema=catalog.feature_schema("items"), orient="row")

    served = list(catalog.served_schema(spec.name))
    fields = draw(st.one_of(st.none(), st.lists(st.sampled_from(served), min_size=1)))
    users = draw(st.lists(st.sampled_from([*USERS, *USERS, UNKNOWN_USER]), min_size=1, max_size=4))
    max_age = draw(st.sampled_from([None, None, None, 1.0, 43_200.0, 43_200.0005, 86_400.0, 1e7]))
    query = resolve_query(
        catalog,
        spec,
        users,
        max_length=draw(st.one_of(st.none(), st.integers(1, spec.max_length))),
        max_age_seconds=max_age,
        fields=None if fields is None else ",".join(fields),
        as_of=at.isoformat(),
        format="records",
    )
    return Scenario(catalog, spec, snapshot, tail, features, query)


# -- the engine's answer ----------------------------------------------------------------------


def engine_rows(
    scenario: Scenario, snapshot: Snapshot, tail: pl.DataFrame, features: pl.DataFrame
) -> pl.DataFrame:
    """Served rows by ``engine.serve``: the requested users', each user's newest first."""
    query, spec, catalog = scenario.query, scenario.spec, scenario.catalog
    users = sorted(set(query.user_ids))
    rows = merge_realtime_tail(
        snapshot.rows_for(np.array(users, dtype=np.int64)).lazy(),
        tail.filter(pl.col("user_id").is_in(users)).lazy(),
        spec,
        query.at,
        max_length=query.max_length,
        max_age=query.max_age,
    )
    wanted = [
        e for e in spec.request_enrich if any(e.output_name(f) in query.fields for f in e.fields)
    ]
    enriching = spec.model_copy(update={"request_enrich": wanted})
    served = add_request_fields(rows, enriching, catalog, {"items": features.lazy()}, query.at)
    return served.select("user_id", FROM_REALTIME, *query.fields).collect()


def engine_documents(
    scenario: Scenario, rows: pl.DataFrame, watermark: datetime | None, columnar: bool
) -> list[dict[str, Any]]:
    query = scenario.query
    schema = scenario.catalog.served_schema(scenario.spec.name)
    encoded = rows.select(
        "user_id",
        FROM_REALTIME,
        pl.struct(json_ready(pl.col(f), schema[f]).alias(f) for f in query.fields)
        .struct.json_encode()
        .alias("json"),
    )
    by_user: dict[int, list[tuple[bool, dict[str, Any]]]] = {}
    for user, fresh, text in encoded.iter_rows():
        by_user.setdefault(user, []).append((fresh, json.loads(text)))
    documents = []
    for user in query.user_ids:
        events = by_user.get(user, [])
        records = [event for _, event in events]
        realtime = sum(fresh for fresh, _ in events)
        documents.append(
            {
                "sequence": scenario.spec.name,
                "version": scenario.spec.version,
                "user_id": user,
                "as_of": format_timestamp(query.at),
                "length": len(events),
                "events": {f: [r[f] for r in records] for f in query.fields}
                if columnar
                else records,
                "provenance": {
                    "snapshot_cutoff": format_timestamp(CUTOFF),
                    "snapshot_version": SNAPSHOT_VERSION,
                    "from_batch": len(events) - realtime,
                    "from_realtime": realtime,
                    "realtime_watermark": format_timestamp(watermark),
                },
            }
        )
    return documents


# -- the property -----------------------------------------------------------------------------


@cache
def tables(catalog: Catalog, folder: Path) -> tuple[RealtimeTail, dict[str, FeatureVersions]]:
    """The tail and feature tables of ``catalog``, read once (absent), then given rows."""
    layout = TableLayout(str(folder))
    tail = RealtimeTail(SIGNAL.name, catalog, layout)
    features = {"items": FeatureVersions("items", catalog, layout)}
    for table in (tail, *features.values()):
        table.refresh()
    return tail, features


def longest(rows: pl.DataFrame) -> int:
    return int(rows.group_by("user_id").len()["len"].max() or 0)


def read_arrow(body: bytes) -> pa.Table:
    with pa.ipc.open_stream(body) as reader:
        return reader.read_all()


@EXAMPLES
@given(scenario=scenarios())
def test_fast_path_serves_what_the_engine_defines(
    scenario: Scenario, tmp_path_factory: pytest.TempPathFactory
) -> None:
    catalog, spec = scenario.catalog, scenario.spec
    tail, features = tables(catalog, tmp_path_factory.getbasetemp() / "absent-tables")
    tail.hold(scenario.tail)
    features["items"].hold(scenario.features)
    snapshot = Snapshot.of(scenario.snapshot, spec, catalog, SNAPSHOT_DAY, SNAPSHOT_VERSION)
    assert snapshot.cutoff == CUTOFF

    before = scenario.tail.filter(pl.col("event_time") < scenario.query.at)["event_time"]
    watermark = before.max() if len(before) else None
    assert watermark is None or isinstance(watermark, datetime)
    # The engine reads the rows as the service holds them: users in order, then delivery order.
    rows = engine_rows(scenario, snapshot, tail.rows, features["items"].rows)
    assert snapshot.frame.equals(scenario.snapshot)
    event(f"events from real time: {rows[FROM_REALTIME].any()}")
    event(f"a user served max_length events: {longest(rows) == scenario.query.max_length}")
    fields = set(scenario.query.fields)
    if "current_category" in fields:
        event(f"a feature version applies: {rows['current_category'].is_not_null().any()}")

    for form in ("records", "columnar"):
        query = replace(scenario.query, format=form)
        served = serve_sequences(query, catalog, snapshot, tail, features)
        assert served.realtime_watermark == watermark
        got = [json.loads(document) for document in served.documents()]
        expected = engine_documents(scenario, rows, watermark, form == "columnar")
        assert got == expected
        for document in got:  # keys in the documented order, events' fields as requested
            assert list(document) == list(expected[0])
            events = document["events"]
            names = list(events) if form == "columnar" else [list(e) for e in events]
            assert names == (
                list(query.fields) if form == "columnar" else [list(query.fields)] * len(events)
            )

    query = replace(scenario.query, format="arrow")
    table = read_arrow(serve_sequences(query, catalog, snapshot, tail, features).arrow_stream())
    in_request_order = [rows.filter(pl.col("user_id") == user) for user in query.user_ids]
    expected_table = pl.concat(in_request_order).drop(FROM_REALTIME).to_arrow()
    assert table.schema.remove_metadata() == expected_table.schema
    assert table.replace_schema_metadata(None).equals(expected_table)
    assert table.schema.metadata[b"snapshot_cutoff"] == format_timestamp(CUTOFF).encode()
