"""From events to signal rows (DESIGN.md rules 1 and 2) with hand-worked answers:
de-duplication, the signal filter, the as-of join and the ``dwell_bucket`` executor."""

from __future__ import annotations

from pathlib import Path

import polars as pl
import pytest

from definitions.executors import dwell_bucket
from sequence_platform.engine import build_signal, deduplicate_events, enrich_as_of
from sequence_platform.spec import Catalog, Enrichment, load_catalog
from sequence_platform.spec.executors import bind_executor
from sequence_platform.spec.types import TIMESTAMP
from sequence_platform_tests.engine.frames import utc

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def catalog() -> Catalog:
    return load_catalog(REPO / "definitions")


def engagement(catalog: Catalog, *rows: tuple[object, ...]) -> pl.LazyFrame:
    """Events of the ``engagement`` source from
    ``(event_id, user_id, item_id, event_type, event_time text, surface, dwell_ms)``."""
    converted = [(*row[:4], utc(str(row[4])), *row[5:]) for row in rows]
    return pl.LazyFrame(converted, schema=catalog.event_schema("engagement"), orient="row")


def items(*rows: tuple[int, str, str, list[float] | None]) -> pl.LazyFrame:
    """Versions of the ``items`` feature table from ``(item_id, updated_at text, category,
    embedding)``."""
    return pl.LazyFrame(
        [(item, utc(at), category, embedding) for item, at, category, embedding in rows],
        schema={
            "item_id": pl.Int64(),
            "updated_at": TIMESTAMP,
            "category": pl.String(),
            "embedding": pl.List(pl.Float32()),
        },
        orient="row",
    )


# -- rule 1: de-duplication ------------------------------------------------------------------


def test_the_landing_copy_wins_over_the_stream_copy_and_the_first_row_within_a_frame(
    catalog: Catalog,
) -> None:
    t = "2026-03-01T10:00:00.000"
    landing = engagement(
        catalog,
        ("e1", 1, 10, "save", t, "home", 100),
        ("e2", 1, 20, "click", t, "home", 200),
        ("e2", 1, 21, "click", t, "home", 201),  # a second landing row: the first one wins
    )
    stream = engagement(
        catalog,
        ("e3", 2, 30, "save", t, "search", 300),
        ("e1", 9, 99, "like", "2026-03-01T11:00:00.000", "feed", 999),  # the stale copy
        ("e3", 2, 31, "save", t, "search", 301),
        ("e2", 9, 98, "hide", t, "feed", 998),
    )
    deduplicated = deduplicate_events(landing, stream).sort("event_id").collect()
    assert deduplicated.select("event_id", "user_id", "item_id", "dwell_ms").rows() == [
        ("e1", 1, 10, 100),
        ("e2", 1, 20, 200),
        ("e3", 2, 30, 300),
    ]
    assert deduplicated.schema == catalog.event_schema("engagement")


# -- rule 2: as-of enrichment ----------------------------------------------------------------


def test_enrichment_uses_the_latest_feature_version_at_or_before_the_event(
    catalog: Catalog,
) -> None:
    features = items(
        (1, "2026-03-01T10:00:00.000", "A", [1.0]),
        (1, "2026-03-01T12:00:00.000", "B", [2.0]),
        (2, "2026-03-01T11:00:00.000", "X", None),
        (2, "2026-03-01T11:30:00.000", "Y", None),
        (4, "2026-03-01T10:00:00.001", "one ms late", None),
        (5, "2026-03-01T10:00:00.000", "first copy", None),
        (5, "2026-03-01T10:00:00.000", "last copy", None),
    )
    # Events out of time order and the two items interleaved; the output keeps this order.
    events = engagement(
        catalog,
        ("before-first", 1, 1, "save", "2026-03-01T09:59:59.999", None, None),
        ("item2-exact-second", 1, 2, "save", "2026-03-01T11:30:00.000", None, None),
        ("item1-exact-first", 1, 1, "save", "2026-03-01T10:00:00.000", None, None),
        ("item2-1ms-before-second", 2, 2, "save", "2026-03-01T11:29:59.999", None, None),
        ("item1-1ms-before-second", 2, 1, "save", "2026-03-01T11:59:59.999", None, None),
        ("item1-exact-second", 1, 1, "save", "2026-03-01T12:00:00.000", None, None),
        ("item2-exact-first", 2, 2, "save", "2026-03-01T11:00:00.000", None, None),
        ("item3-no-features", 1, 3, "save", "2026-03-01T12:00:00.000", None, None),
        ("item4-update-1ms-after", 1, 4, "save", "2026-03-01T10:00:00.000", None, None),
        ("item2-before-first", 1, 2, "save", "2026-03-01T10:59:59.999", None, None),
        ("item5-same-version-twice", 1, 5, "save", "2026-03-01T10:00:00.000", None, None),
    )
    table = catalog.feature_tables["items"]
    enrichment = Enrichment(table="items", fields=["category", "embedding"], prefix="then_")
    enriched = enrich_as_of(events, features, table, enrichment, "event_time").collect()
    added = ["then_category", "then_embedding"]
    assert enriched.columns == [*catalog.event_schema("engagement"), *added]
    assert enriched.select("event_id", "then_category", "then_embedding").rows() == [
        ("before-first", None, None),
        ("item2-exact-second", "Y", None),
        ("item1-exact-first", "A", [1.0]),
        ("item2-1ms-before-second", "X", None),
        ("item1-1ms-before-second", "A", [1.0]),
        ("item1-exact-second", "B", [2.0]),
        ("item2-exact-first", "X", None),
        ("item3-no-features", None, None),
        ("item4-update-1ms-after", None, None),
        ("item2-before-first", None, None),
        ("item5-same-version-twice", "last copy", None),
    ]


# -- the example signal end to end ------------------------------------------------------------


def test_signal_drops_impressions_enriches_and_buckets_dwell(catalog: Catalog) -> None:
    events = engagement(
        catalog,
        ("e1", 1, 1, "click", "2026-03-02T08:00:00.000", "home", 999),
        ("e2", 1, 1, "impression", "2026-03-02T08:00:01.000", "home", 5000),
        ("e3", 2, 2, "save", "2026-03-02T00:00:00.000", None, 1000),
        ("e4", 2, 1, "like", "2026-03-01T23:59:59.999", "search", 4999),
        ("e5", 3, 2, "share", "2026-03-02T09:00:00.000", "home", 5000),
        ("e6", 3, 9, "hide", "2026-03-02T09:00:00.000", "home", None),
    )
    features = {
        "items": items(
            (1, "2026-03-01T00:00:00.000", "art", [0.5, -1.0]),
            (1, "2026-03-02T00:00:00.000", "design", [0.25, 2.0]),
            (2, "2026-03-02T00:00:00.000", "food", [1.0, 1.0]),
        )
    }
    spec = catalog.signals["engagement_enriched"]
    signal = build_signal(events, features, spec, catalog).collect()
    # The derived schema itself is spelled out in spec/test_loading.py.
    assert signal.schema == catalog.signal_schema("engagement_enriched")
    assert signal.select(
        "event_id", "event_type", "category", "embedding", "dwell_ms", "dwell_bucket"
    ).rows() == [
        ("e1", "click", "design", [0.25, 2.0], 999, 0),
        ("e3", "save", "food", [1.0, 1.0], 1000, 1),
        ("e4", "like", "art", [0.5, -1.0], 4999, 1),  # 1 ms before item 1's second version
        ("e5", "share", "food", [1.0, 1.0], 5000, 2),
        ("e6", "hide", None, None, None, None),  # item 9 has no features, no dwell
    ]


def test_dwell_bucket_edges() -> None:
    frame = pl.LazyFrame({"dwell_ms": [0, 999, 1000, 4999, 5000, 86_400_000, None]})
    expected = [0, 0, 1, 1, 2, 2, None]
    direct = dwell_bucket(frame, edges=[1000, 5000]).collect()
    assert direct["dwell_bucket"].to_list() == expected
    assert direct["dwell_bucket"].dtype == pl.Int32
    by_name = bind_executor("dwell_bucket", {"edges": [1000, 5000]})(frame).collect()
    assert by_name["dwell_bucket"].to_list() == expected
    assert dwell_bucket(frame, edges=[1]).collect()["dwell_bucket"].to_list() == [
        0,
        1,
        1,
        1,
        1,
        1,
        None,
    ]


@pytest.mark.parametrize("edges", [[5000, 1000], []])
def test_dwell_bucket_refuses_edges_that_are_not_ascending(edges: list[int]) -> None:
    with pytest.raises(ValueError, match="non-empty ascending"):
        dwell_bucket(pl.LazyFrame({"dwell_ms": [1]}), edges=edges)
