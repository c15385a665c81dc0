"""The skew comparisons on hand-made rows whose differences were worked out by hand, and edit
distance against a plain recursive definition."""

from __future__ import annotations

from functools import cache

import polars as pl
from hypothesis import given
from hypothesis import strategies as st

from sequence_platform.engine.sequence import assemble_snapshot, snapshot_cutoff
from sequence_platform.engine.skew import (
    compare_sequences,
    compare_signal_rows,
    edit_distance,
    expected_snapshot,
    sample_users,
    served_sequences,
)
from sequence_platform.spec.models import SequenceSpec
from sequence_platform_tests.engine.frames import utc

FIELDS = ["user_id", "event_time", "item_id", "category", "embedding"]
SCHEMA = pl.Schema(
    {
        "event_id": pl.String(),
        "user_id": pl.Int64(),
        "event_time": pl.Datetime("ms", "UTC"),
        "item_id": pl.Int64(),
        "event_type": pl.String(),
        "category": pl.String(),
        "embedding": pl.List(pl.Float32()),
    }
)
SPEC = SequenceSpec(
    name="s",
    signal="g",
    filter="event_type IN ('save', 'click')",
    fields=["item_id", "event_type", "category"],
    max_length=3,
    lookback_days=2,
)


Record = tuple[str, int, str, int, str, str | None, list[float] | None]


def rows(*records: Record) -> pl.DataFrame:
    """``(event_id, user, time, item, type, category, embedding)`` rows."""
    return pl.DataFrame(
        [(e, u, utc(t), i, k, c, v) for e, u, t, i, k, c, v in records],
        schema=SCHEMA,
        orient="row",
    )


BATCH = rows(
    ("a", 1, "2026-03-02T10:00:00", 7, "save", "shoes", [1.0, 2.0]),
    ("b", 1, "2026-03-02T11:00:00", 8, "save", "hats", [0.5, float("nan")]),
    ("c", 2, "2026-03-02T12:00:00", 9, "click", None, None),
    ("d", 2, "2026-03-02T13:00:00", 9, "click", "bags", [3.0]),
    ("land", 3, "2026-03-02T14:00:00", 9, "save", "bags", [3.0]),  # landing-only
    ("gone", 3, "2026-03-02T15:00:00", 9, "save", "bags", [3.0]),  # streamed, never arrived
)


def test_identical_paths_have_no_skew() -> None:
    realtime = BATCH.filter(pl.col("event_id") != "gone")
    found = compare_signal_rows(
        BATCH.filter(pl.col("event_id") != "gone"),
        realtime,
        FIELDS,
        streamed=pl.Series(["a", "b", "c", "d"]),
    )
    # NaN inside a list and null lists compare equal to themselves.
    assert found.passed
    assert (found.compared, found.missing, found.extra) == (5, 0, 0)
    assert found.mismatch_rates == dict.fromkeys(FIELDS, 0.0)
    assert found.metadata()["examples"] == {}


def test_signal_mismatch_missing_and_extra_are_counted_with_examples() -> None:
    realtime = rows(
        # A first copy with the old enrichment, then a later copy with the new: the first counts.
        ("a", 1, "2026-03-02T10:00:00", 7, "save", "boots", [1.0, 2.5]),
        ("a", 1, "2026-03-02T10:00:00", 7, "save", "shoes", [1.0, 2.0]),
        ("b", 1, "2026-03-02T11:00:00", 8, "save", "hats", [0.5, float("nan")]),
        ("c", 2, "2026-03-02T12:00:00", 9, "click", "bags", None),  # null in the batch
        ("d", 2, "2026-03-02T13:00:00", 9, "click", "bags", [3.0]),
        ("x", 4, "2026-03-02T16:00:00", 1, "save", "toys", [0.0]),  # the batch dropped it
    )
    found = compare_signal_rows(
        BATCH,
        realtime,
        FIELDS,
        streamed=pl.Series(["a", "b", "c", "d", "gone", "x"]),
    )
    assert not found.passed
    assert found.compared == 4
    assert found.mismatches == {
        "user_id": 0,
        "event_time": 0,
        "item_id": 0,
        "category": 2,
        "embedding": 1,
    }
    assert found.mismatch_rates["category"] == 0.5
    assert found.mismatch_rates["embedding"] == 0.25
    # "land" never came through the stream, so it cannot be missing from real time.
    assert (found.streamed, found.missing, found.missing_rate) == (5, 1, 0.2)
    assert (found.realtime, found.extra, found.extra_rate) == (5, 1, 0.2)
    examples = found.metadata()["examples"]
    assert examples["mismatch:category"] == [
        {"event_id": "a", "batch": "shoes", "realtime": "boots"},
        {"event_id": "c", "batch": None, "realtime": "bags"},
    ]
    assert examples["mismatch:embedding"] == [
        {"event_id": "a", "batch": [1.0, 2.0], "realtime": [1.0, 2.5]}
    ]
    assert [e["event_id"] for e in examples["missing"]] == ["gone"]
    assert examples["missing"][0]["event_time"] == "2026-03-02T15:00:00+00:00"
    assert [e["event_id"] for e in examples["extra"]] == ["x"]


def test_events_possibly_pruned_are_not_missing() -> None:
    found = compare_signal_rows(
        BATCH,
        BATCH.filter(~pl.col("event_id").is_in(["a", "gone"])),
        FIELDS,
        streamed=pl.Series(["a", "b", "c", "d", "gone"]),
        pruned=pl.Series(["a"]),
    )
    assert (found.missing, found.pruned, found.missing_rate) == (1, 1, 0.25)


def test_examples_are_capped() -> None:
    many = pl.concat(
        [BATCH.head(1).with_columns(pl.lit(f"e{n:02d}").alias("event_id")) for n in range(12)]
    )
    found = compare_signal_rows(
        many,
        many.with_columns(pl.lit("other").alias("category")),
        FIELDS,
        streamed=many["event_id"],
        examples=5,
    )
    assert found.mismatches["category"] == 12
    examples = found.metadata()["examples"]["mismatch:category"]
    assert [e["event_id"] for e in examples] == ["e00", "e01", "e02", "e03", "e04"]


# -- sequences ---------------------------------------------------------------------------------

AT = snapshot_cutoff(utc("2026-03-02T00:00:00").date())  # 2026-03-03 00:00
PREVIOUS_AT = snapshot_cutoff(utc("2026-03-01T00:00:00").date())
EARLIER = rows(
    ("p1", 1, "2026-03-01T08:00:00", 5, "save", "old", [0.0]),
    ("p2", 1, "2026-03-01T09:00:00", 5, "click", "old", [0.0]),
    ("p3", 2, "2026-03-01T09:00:00", 5, "click", "old", [0.0]),
)


def snapshot(frame: pl.DataFrame, at: object) -> pl.DataFrame:
    rows_ = frame.filter(pl.sql_expr(SPEC.filter or "true")).select("user_id", *SPEC.stored_fields)
    return assemble_snapshot(rows_.lazy(), SPEC, at).collect()  # type: ignore[arg-type]


def test_served_equals_snapshot_when_the_tail_is_the_batch() -> None:
    previous = snapshot(EARLIER, PREVIOUS_AT)
    day = BATCH.filter(pl.col("event_id") != "land")
    new = snapshot(pl.concat([EARLIER, day]), AT)
    served = served_sequences(previous, day, SPEC, AT)
    users = pl.Series([1, 2, 3, 4])
    found = compare_sequences(served, new, users, SPEC.stored_fields)
    assert found.passed
    assert (found.users, found.edit_distance_max, found.common_events) == (4, 0, 7)


def test_served_skew_by_membership_order_and_fields() -> None:
    previous = snapshot(EARLIER, PREVIOUS_AT)
    new = snapshot(pl.concat([EARLIER, BATCH]), AT)
    tail = rows(
        ("a", 1, "2026-03-02T10:00:00", 7, "save", "boots", [1.0]),  # late feature: other value
        ("b", 1, "2026-03-02T11:00:00", 8, "save", "hats", [0.5]),
        # user 2: "c" never arrived, "d" did
        ("d", 2, "2026-03-02T13:00:00", 9, "click", "bags", [3.0]),
        ("gone", 3, "2026-03-02T15:00:00", 9, "save", "bags", [3.0]),
        ("late", 3, "2026-03-02T16:00:00", 9, "save", "bags", [3.0]),  # the batch lacks it
    )
    served = served_sequences(previous, tail, SPEC, AT)
    # "land" (user 3) came only from the landing zone: not the service's to know.
    expected = expected_snapshot(new, previous, pl.Series(["land"]), SPEC, AT)
    assert expected.filter(pl.col("user_id") == 3)["event_id"].to_list() == [["gone"]]
    found = compare_sequences(served, expected, pl.Series([1, 2, 3]), SPEC.stored_fields)
    # user 1: [b, a, p2] both, a's category differs; user 2: [d, p3] vs [d, c, p3];
    # user 3: [late, gone] vs [gone].
    assert served.filter(pl.col("user_id") == 1)["event_id"].to_list() == [["b", "a", "p2"]]
    assert (found.users_differing, found.share_differing) == (2, round(2 / 3, 6))
    assert (found.edit_distance_max, found.edit_distance_mean) == (1, round(2 / 3, 6))
    assert (found.length_difference_max, found.length_difference_mean) == (1, round(2 / 3, 6))
    assert found.mismatches == {"item_id": 0, "event_type": 0, "category": 1}
    assert found.common_events == 3 + 2 + 1
    assert found.users_with_field_mismatch == 1
    assert not found.passed
    first = found.metadata()["examples"][0]
    assert first["user_id"] == 1
    assert first["field_differences"] == {
        "category": [{"event_id": "a", "served": "boots", "snapshot": "shoes"}]
    }


def test_expected_snapshot_is_the_new_one_when_everything_was_streamed() -> None:
    previous = snapshot(EARLIER, PREVIOUS_AT)
    new = snapshot(pl.concat([EARLIER, BATCH]), AT)
    empty = pl.Series([], dtype=pl.String)
    assert expected_snapshot(new, previous, empty, SPEC, AT).equals(new)


def test_an_older_event_moves_up_where_a_landing_only_one_is_left_out() -> None:
    # max_length 3: user 1's new snapshot is [b, a, p2]; without "b", p1 comes back.
    previous = snapshot(EARLIER, PREVIOUS_AT)
    new = snapshot(pl.concat([EARLIER, BATCH]), AT)
    expected = expected_snapshot(new, previous, pl.Series(["b"]), SPEC, AT)
    assert expected.filter(pl.col("user_id") == 1)["event_id"].to_list() == [["a", "p2", "p1"]]


def test_the_sample_is_fixed_and_bounded() -> None:
    users = pl.Series(list(range(1_000)), dtype=pl.Int64)
    first = sample_users(users, 200)
    assert first.len() == 200
    assert first.equals(sample_users(users.shuffle(seed=3), 200))
    assert sample_users(users.head(5), 200).to_list() == [0, 1, 2, 3, 4]
    # Spread over the range, not the lowest ids.
    assert first.max() is not None and first.max() > 800  # type: ignore[operator]


@cache
def _reference(left: tuple[int, ...], right: tuple[int, ...]) -> int:
    if not left or not right:
        return len(left) + len(right)
    substitute = _reference(left[1:], right[1:]) + (left[0] != right[0])
    return min(substitute, _reference(left[1:], right) + 1, _reference(left, right[1:]) + 1)


@given(
    st.lists(st.integers(0, 3), max_size=9),
    st.lists(st.integers(0, 3), max_size=9),
)
def test_edit_distance_matches_the_recursive_definition(left: list[int], right: list[int]) -> None:
    assert edit_distance(left, right) == _reference(tuple(left), tuple(right))
    assert edit_distance(right, left) == edit_distance(left, right)


def test_edit_distance_by_hand() -> None:
    assert edit_distance(list("kitten"), list("sitting")) == 3
    assert edit_distance(["a", "b", "c"], ["b", "c", "a"]) == 2
    assert edit_distance([], ["a"]) == 1
