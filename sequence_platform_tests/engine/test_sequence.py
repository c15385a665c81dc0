"""Sequence semantics (DESIGN.md rules 3 and 4) on small frames with hand-worked answers.

Every expected value below was worked out by hand from the rows next to it: the window is
``T - lookback <= event_time < T``, the order is ``(event_time, event_id)`` descending, and the
first ``max_length`` rows of each user are kept.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta, timezone

import polars as pl
import pytest

from sequence_platform.engine import (
    add_request_fields,
    assemble_snapshot,
    combine_days,
    day_rows,
    empty_snapshot,
    explode_snapshot,
    merge_realtime_tail,
    merge_rows,
    sequence_rows,
)
from sequence_platform.engine.sequence import stored_days
from sequence_platform.spec import (
    Catalog,
    Enrichment,
    FeatureTableSpec,
    LoadedDefinition,
    SequenceSpec,
    SignalSpec,
    SourceSpec,
)
from sequence_platform.spec.types import TIMESTAMP
from sequence_platform_tests.engine.frames import event_ids_by_user, signal_rows, utc

SPEC = SequenceSpec(
    name="recent_saves",
    signal="clicks_and_saves",
    filter="event_type IN ('save', 'click')",
    fields=["item_id", "event_type"],
    max_length=10,
    lookback_days=7,
    request_enrich=[Enrichment(table="items", fields=["category"], prefix="current_")],
)
ITEMS = FeatureTableSpec(
    name="items", key="item_id", as_of="updated_at", fields={"category": "string"}
)
CATALOG = Catalog(
    [
        LoadedDefinition(SourceSpec(name="engagement"), "test"),
        LoadedDefinition(ITEMS, "test"),
        LoadedDefinition(SignalSpec(name="clicks_and_saves", source="engagement"), "test"),
        LoadedDefinition(SPEC, "test"),
    ]
)
CUTOFF = utc("2026-03-08T00:00:00.000")
"""The batch snapshot of day 2026-03-07; with 7 days of lookback the window opens at 03-01."""


def snapshot_at(rows: pl.LazyFrame, at: datetime, spec: SequenceSpec = SPEC) -> pl.DataFrame:
    return assemble_snapshot(sequence_rows(rows, spec), spec, at).collect()


def with_limits(*, max_length: int, lookback_days: int = 7) -> SequenceSpec:
    return SPEC.model_copy(update={"max_length": max_length, "lookback_days": lookback_days})


# -- order -----------------------------------------------------------------------------------


def test_ties_in_event_time_are_broken_by_event_id_descending() -> None:
    rows = signal_rows(
        (1, "b", "2026-03-05T12:00:00.000", 2, "save"),
        (1, "a", "2026-03-05T12:00:00.000", 1, "save"),
        (1, "e10", "2026-03-05T12:00:00.000", 10, "click"),
        (1, "0", "2026-03-05T12:00:00.001", 0, "save"),
        (1, "e9", "2026-03-05T12:00:00.000", 9, "save"),
        (1, "c", "2026-03-05T12:00:00.000", 3, "click"),
    )
    # "0" is one millisecond newer than the rest, so first whatever its id; the five ties
    # follow by id descending as strings: "e9" > "e10" > "c" > "b" > "a".
    assert event_ids_by_user(snapshot_at(rows, CUTOFF)) == {1: ["0", "e9", "e10", "c", "b", "a"]}
    trimmed = snapshot_at(rows, CUTOFF, with_limits(max_length=3))
    assert event_ids_by_user(trimmed) == {1: ["0", "e9", "e10"]}
    assert trimmed["item_id"].to_list() == [[0, 9, 10]]


# -- window ----------------------------------------------------------------------------------


def test_window_includes_its_start_and_excludes_the_cutoff() -> None:
    rows = signal_rows(
        (1, "at_cutoff", "2026-03-08T00:00:00.000", 1, "save"),
        (1, "just_before_cutoff", "2026-03-07T23:59:59.999", 2, "save"),
        (1, "at_window_start", "2026-03-01T00:00:00.000", 3, "save"),
        (1, "just_before_window_start", "2026-02-28T23:59:59.999", 4, "save"),
    )
    snapshot = snapshot_at(rows, CUTOFF)
    assert event_ids_by_user(snapshot) == {1: ["just_before_cutoff", "at_window_start"]}
    assert snapshot["event_time"].to_list() == [
        [utc("2026-03-07T23:59:59.999"), utc("2026-03-01T00:00:00.000")]
    ]


def test_an_event_at_midnight_belongs_to_the_next_days_snapshot() -> None:
    days = [f"2026-02-{d:02d}" for d in (27, 28)] + [f"2026-03-{d:02d}" for d in range(1, 10)]
    rows = signal_rows(*((1, f"m{day}", f"{day}T00:00:00.000", 1, "save") for day in days))
    # Day 03-07 (T = 03-08 00:00) holds the midnights 03-01..03-07; the one at 03-08 00:00 is
    # T itself and waits for day 03-08 (T = 03-09 00:00), which drops 03-01 instead.
    assert event_ids_by_user(snapshot_at(rows, utc("2026-03-08T00:00:00"))) == {
        1: [f"m2026-03-0{d}" for d in range(7, 0, -1)]
    }
    assert event_ids_by_user(snapshot_at(rows, utc("2026-03-09T00:00:00"))) == {
        1: [f"m2026-03-0{d}" for d in range(8, 1, -1)]
    }


def test_max_length_keeps_the_newest_rows_that_pass_the_filter() -> None:
    rows = signal_rows(
        (1, "u1-d1", "2026-03-01T09:00:00.000", 11, "save"),
        (1, "u1-d2", "2026-03-02T09:00:00.000", 12, "click"),
        (1, "u1-d3", "2026-03-03T09:00:00.000", 13, "save"),
        (1, "u1-d4", "2026-03-04T09:00:00.000", 14, "save"),
        (1, "u1-d5", "2026-03-05T09:00:00.000", 15, "click"),
        (1, "u1-like", "2026-03-06T09:00:00.000", 16, "like"),
        (1, "u1-impression", "2026-03-07T09:00:00.000", 17, "impression"),
        (2, "u2-d1", "2026-03-01T10:00:00.000", 21, "save"),
        (2, "u2-d2", "2026-03-02T10:00:00.000", 22, "save"),
    )
    snapshot = snapshot_at(rows, CUTOFF, with_limits(max_length=3))
    # The like and the impression are newer but fail S.filter, so they take no place.
    assert snapshot.to_dicts() == [
        {
            "user_id": 1,
            "length": 3,
            "event_id": ["u1-d5", "u1-d4", "u1-d3"],
            "event_time": [
                utc("2026-03-05T09:00:00"),
                utc("2026-03-04T09:00:00"),
                utc("2026-03-03T09:00:00"),
            ],
            "item_id": [15, 14, 13],
            "event_type": ["click", "save", "save"],
        },
        {
            "user_id": 2,
            "length": 2,
            "event_id": ["u2-d2", "u2-d1"],
            "event_time": [utc("2026-03-02T10:00:00"), utc("2026-03-01T10:00:00")],
            "item_id": [22, 21],
            "event_type": ["save", "save"],
        },
    ]
    assert snapshot.schema == empty_snapshot(SPEC, CATALOG).collect_schema()
    assert snapshot.schema == pl.Schema(
        {
            "user_id": pl.Int64(),
            "length": pl.Int32(),
            "event_id": pl.List(pl.String()),
            "event_time": pl.List(TIMESTAMP),
            "item_id": pl.List(pl.Int64()),
            "event_type": pl.List(pl.String()),
        }
    )
    # A smaller limit passed at call time wins over the definition's.
    smaller = assemble_snapshot(sequence_rows(rows, SPEC), SPEC, CUTOFF, max_length=1)
    assert event_ids_by_user(smaller) == {1: ["u1-d5"], 2: ["u2-d2"]}


def test_users_without_events_in_the_window_are_absent_and_users_ascend() -> None:
    rows = signal_rows(
        (5, "u5-in", "2026-03-03T00:00:00.000", 1, "save"),
        (3, "u3-too-old", "2026-02-28T23:59:59.999", 1, "save"),
        (4, "u4-at-cutoff", "2026-03-08T00:00:00.000", 1, "save"),
        (6, "u6-like-only", "2026-03-05T00:00:00.000", 1, "like"),
        (2, "u2-in", "2026-03-01T00:00:00.000", 1, "click"),
    )
    assert event_ids_by_user(snapshot_at(rows, CUTOFF)) == {2: ["u2-in"], 5: ["u5-in"]}
    assert snapshot_at(signal_rows(), CUTOFF).height == 0


# -- stored days ---------------------------------------------------------------------------

ADVANCING_ROWS = [
    (1, "s1", "2026-03-01T10:00:00.000", 1, "save"),
    (1, "s2", "2026-03-02T10:00:00.000", 2, "click"),
    (1, "s3", "2026-03-02T10:00:00.000", 3, "save"),
    (1, "i1", "2026-03-03T09:00:00.000", 4, "impression"),
    (1, "s4", "2026-03-04T23:59:59.999", 5, "save"),
    (1, "s5", "2026-03-05T00:00:00.000", 6, "save"),
    (2, "t1", "2026-03-01T00:00:00.000", 7, "click"),
]
ADVANCING_SPEC = with_limits(max_length=2, lookback_days=2)
EXPECTED_BY_DAY = {
    # day: the snapshot at T = day + 1 00:00 with the window [day - 1 00:00, day + 1 00:00)
    "2026-03-01": {1: ["s1"], 2: ["t1"]},
    "2026-03-02": {1: ["s3", "s2"], 2: ["t1"]},  # s1 trimmed; t1 sits on the window start
    "2026-03-03": {1: ["s3", "s2"]},  # t1 left the window; the impression is filtered
    "2026-03-04": {1: ["s4"]},
    "2026-03-05": {1: ["s5", "s4"]},
    "2026-03-06": {1: ["s5"]},  # s4 is one millisecond too old
}


def test_stored_days_combine_into_the_snapshot_of_all_rows_at_once() -> None:
    everything = signal_rows(*ADVANCING_ROWS)
    stored: list[pl.DataFrame] = []
    for day, expected in EXPECTED_BY_DAY.items():
        today = utc(day).date()
        todays = everything.filter(pl.col("event_time").dt.date() == today)
        stored.append(day_rows(todays, ADVANCING_SPEC).collect())
        cutoff = utc(f"{day}T00:00:00") + timedelta(days=1)
        first, last = stored_days(ADVANCING_SPEC, cutoff)
        window = pl.concat(stored).filter(pl.col("dt").is_between(first, last)).lazy()
        combined = combine_days(window, ADVANCING_SPEC, cutoff).collect()
        at_once = snapshot_at(everything, cutoff, ADVANCING_SPEC)
        assert event_ids_by_user(combined) == expected, day
        assert combined.to_dicts() == at_once.to_dicts(), day


def test_a_stored_day_keeps_only_the_newest_rows_of_each_user() -> None:
    rows = signal_rows(
        (1, "early", "2026-03-02T00:00:00.000", 1, "save"),
        *ADVANCING_ROWS[1:3],
        (2, "t2", "2026-03-02T23:59:59.999", 7, "click"),
    )
    stored = day_rows(rows, ADVANCING_SPEC).collect()
    assert stored["dt"].cast(pl.String).to_list() == ["2026-03-02", "2026-03-02"]
    assert event_ids_by_user(stored.drop("dt")) == {1: ["s3", "s2"], 2: ["t2"]}


def test_a_stored_day_keeps_the_first_copy_of_a_twice_given_event() -> None:
    """Rule 1 within a day: two copies of one event (the same id and day) are one row, the
    first given."""
    rows = signal_rows(
        (1, "dup", "2026-03-02T10:00:00.000", 1, "save"),
        (1, "other", "2026-03-02T11:00:00.000", 2, "save"),
        (1, "dup", "2026-03-02T10:00:00.000", 9, "save"),
    )
    stored = day_rows(rows, ADVANCING_SPEC).collect()
    assert event_ids_by_user(stored.drop("dt")) == {1: ["other", "dup"]}
    assert stored["item_id"].to_list() == [[2, 1]]
    assert stored["length"].to_list() == [2]


def test_stored_days_of_a_read_stop_before_its_own_day() -> None:
    spec = with_limits(max_length=2, lookback_days=2)
    assert stored_days(spec, utc("2026-03-05T00:00:00")) == (
        utc("2026-03-03").date(),
        utc("2026-03-04").date(),
    )
    assert stored_days(spec, utc("2026-03-05T12:00:00")) == (
        utc("2026-03-03").date(),
        utc("2026-03-04").date(),
    )


def test_explode_snapshot_gives_back_the_event_rows() -> None:
    rows = signal_rows(
        (1, "a", "2026-03-02T00:00:00.000", 1, "save"),
        (1, "b", "2026-03-03T00:00:00.000", 2, "click"),
        (2, "c", "2026-03-04T00:00:00.000", 3, "save"),
    )
    exploded = explode_snapshot(snapshot_at(rows, CUTOFF).lazy(), SPEC).collect()
    assert exploded.rows() == [
        (1, "b", utc("2026-03-03T00:00:00"), 2, "click"),
        (1, "a", utc("2026-03-02T00:00:00"), 1, "save"),
        (2, "c", utc("2026-03-04T00:00:00"), 3, "save"),
    ]


def test_merge_rows_keeps_the_copy_from_the_earlier_frame() -> None:
    first = signal_rows((1, "x", "2026-03-02T00:00:00.000", 1, "save"))
    second = signal_rows(
        (1, "x", "2026-03-05T00:00:00.000", 99, "click"),
        (1, "y", "2026-03-03T00:00:00.000", 2, "save"),
    )
    merged = merge_rows(first, second).sort("event_id").collect()
    assert merged.select("event_id", "item_id").rows() == [("x", 1), ("y", 2)]


# -- serving: snapshot plus real-time tail ---------------------------------------------------

SERVED_AT = utc("2026-03-08T12:00:00.000")
"""Twelve hours after the snapshot's cutoff; the window is now [03-01 12:00, 03-08 12:00)."""
SNAPSHOT_ROWS = signal_rows(
    (1, "b1", "2026-03-01T06:00:00.000", 1, "save"),
    (1, "b2", "2026-03-05T12:00:00.000", 2, "click"),
    (1, "b3", "2026-03-07T23:00:00.000", 3, "save"),
    (2, "c1", "2026-03-07T00:00:00.000", 20, "save"),
)
TAIL = signal_rows(
    (1, "b3", "2026-03-07T23:00:00.000", 33, "save"),  # a second copy of a snapshot event
    (1, "r1", "2026-03-08T01:00:00.000", 4, "save"),
    (1, "r2", "2026-03-08T11:59:59.999", 5, "click"),
    (1, "r3", "2026-03-08T12:00:00.000", 6, "save"),  # at T: not yet
    (1, "r4", "2026-03-08T02:00:00.000", 7, "impression"),  # fails S.filter
    (1, "r0", "2026-03-01T11:59:59.999", 8, "save"),  # 1 ms older than the window
    (1, "r5", "2026-03-01T12:00:00.000", 9, "save"),  # a late event on the window start
    (3, "d1", "2026-03-08T05:00:00.000", 30, "save"),
)


def served(
    *, max_length: int | None = None, max_age: timedelta | None = None
) -> list[tuple[int, str, int, bool]]:
    snapshot = assemble_snapshot(sequence_rows(SNAPSHOT_ROWS, SPEC), SPEC, CUTOFF)
    rows = merge_realtime_tail(
        snapshot, TAIL, SPEC, SERVED_AT, max_length=max_length, max_age=max_age
    ).collect()
    assert rows.columns == [
        "user_id",
        "event_id",
        "event_time",
        "item_id",
        "event_type",
        "from_realtime",
    ]
    return rows.select("user_id", "event_id", "item_id", "from_realtime").rows()


def test_served_rows_merge_the_snapshot_and_the_tail_newest_first() -> None:
    # b1 fell out of the window since the cutoff; b3's snapshot copy (item 3) wins.
    assert served() == [
        (1, "r2", 5, True),
        (1, "r1", 4, True),
        (1, "b3", 3, False),
        (1, "b2", 2, False),
        (1, "r5", 9, True),
        (2, "c1", 20, False),
        (3, "d1", 30, True),
    ]


def test_served_rows_are_trimmed_by_max_length_and_max_age() -> None:
    assert served(max_length=2) == [
        (1, "r2", 5, True),
        (1, "r1", 4, True),
        (2, "c1", 20, False),
        (3, "d1", 30, True),
    ]
    # 11 hours before 12:00 is 01:00: r1 sits exactly on the edge and stays; c1 is too old.
    assert served(max_age=timedelta(hours=11)) == [
        (1, "r2", 5, True),
        (1, "r1", 4, True),
        (3, "d1", 30, True),
    ]


def test_an_empty_tail_serves_the_snapshot_within_the_moved_window() -> None:
    snapshot = assemble_snapshot(sequence_rows(SNAPSHOT_ROWS, SPEC), SPEC, CUTOFF)
    rows = merge_realtime_tail(snapshot, signal_rows(), SPEC, SERVED_AT).collect()
    assert rows.select("user_id", "event_id", "from_realtime").rows() == [
        (1, "b3", False),
        (1, "b2", False),
        (2, "c1", False),
    ]


def test_request_fields_join_features_as_of_the_request_time() -> None:
    rows = signal_rows(
        (1, "a", "2026-03-08T11:59:58.500", 1, "save"),
        (1, "b", "2026-03-01T12:00:00.000", 2, "save"),
        (1, "c", "2026-03-07T00:00:00.000", 3, "save"),
    )
    features = pl.LazyFrame(
        {
            "item_id": [1, 1, 1, 2],
            "updated_at": [
                utc("2026-03-01T00:00:00"),
                utc("2026-03-08T12:00:00"),  # exactly at the request time: used
                utc("2026-03-08T12:00:00.001"),  # after it: not yet
                utc("2026-03-09T00:00:00"),
            ],
            "category": ["old", "current", "future", "future"],
        },
        schema_overrides={"updated_at": TIMESTAMP},
    )
    enriched = add_request_fields(rows, SPEC, CATALOG, {"items": features}, SERVED_AT).collect()
    assert enriched.select("event_id", "current_category", "age_seconds").rows() == [
        ("a", "current", 1.5),
        ("b", None, 7 * 86_400.0),
        ("c", None, 36 * 3_600.0),
    ]


# -- found while writing these tests ---------------------------------------------------------


def test_a_request_time_with_microseconds_keeps_the_window_exact() -> None:
    rows = signal_rows(
        (1, "just_before", "2026-03-08T11:59:59.999", 1, "save"),
        (1, "too_old", "2026-03-01T11:59:59.999", 2, "save"),
    )
    at = datetime(2026, 3, 8, 11, 59, 59, 999_500, tzinfo=UTC)
    # T - 7 days = 03-01 11:59:59.999500: "too_old" is half a millisecond before the start.
    assert event_ids_by_user(snapshot_at(rows, at)) == {1: ["just_before"]}


def test_a_cutoff_given_with_an_offset_is_the_same_instant_in_utc() -> None:
    rows = signal_rows((1, "a", "2026-03-07T23:00:00.000", 1, "save"))
    at = datetime(2026, 3, 8, 2, 0, tzinfo=timezone(timedelta(hours=2)))
    assert snapshot_at(rows, at).to_dicts() == snapshot_at(rows, CUTOFF).to_dicts()


@pytest.mark.xfail(
    strict=True,
    reason="the engine alone cannot know: the snapshot forgets events it trimmed, so a stale "
    "stream copy of a corrected landing event re-enters the merge. The platform removes such "
    "copies from the real-time table once the batch holds the event (prune_realtime), which "
    "test_end_to_end checks",
)
def test_a_corrected_landing_event_trimmed_from_the_snapshot_stays_out() -> None:
    spec = with_limits(max_length=1)
    landing = signal_rows(
        (1, "A", "2026-03-07T10:00:00.000", 1, "save"),
        (1, "B", "2026-03-06T10:00:00.000", 2, "save"),  # corrected time: older than A
    )
    stream = signal_rows((1, "B", "2026-03-07T20:00:00.000", 2, "save"))  # the stale copy
    snapshot = assemble_snapshot(sequence_rows(landing, spec), spec, CUTOFF)
    assert event_ids_by_user(snapshot) == {1: ["A"]}
    rows = merge_realtime_tail(snapshot, stream, spec, SERVED_AT).collect()
    # Rule 1 over {landing A, landing B, stream B}: landing B (03-06) wins, so A is newest.
    assert rows["event_id"].to_list() == ["A"]


def test_a_twice_delivered_tail_event_is_deduplicated_before_the_filter() -> None:
    tail = signal_rows(
        (1, "n1", "2026-03-08T01:00:00.000", 4, "like"),
        (1, "n2", "2026-03-08T03:00:00.000", 6, "save"),
        (1, "n1", "2026-03-08T02:00:00.000", 5, "save"),  # second delivery, other contents
        (1, "n2", "2026-03-08T04:00:00.000", 7, "like"),
    )
    empty = assemble_snapshot(sequence_rows(signal_rows(), SPEC), SPEC, CUTOFF)
    rows = merge_realtime_tail(empty, tail, SPEC, SERVED_AT).collect()
    # The first copy of each wins: n1 is a like (filtered out), n2 a save. The engine keeps
    # the second copy of n1 and the first of n2, which no single rule of precedence gives.
    assert rows.select("event_id", "item_id").rows() == [("n2", 6)]


def test_an_event_id_is_served_once_even_when_its_copies_name_different_users() -> None:
    landing = signal_rows((1, "x", "2026-03-07T10:00:00.000", 1, "save"))
    stream = signal_rows((2, "x", "2026-03-07T10:00:00.000", 1, "save"))
    snapshot = assemble_snapshot(sequence_rows(landing, SPEC), SPEC, CUTOFF)
    rows = merge_realtime_tail(snapshot, stream, SPEC, SERVED_AT).collect()
    assert rows.select("user_id", "event_id", "from_realtime").rows() == [(1, "x", False)]
