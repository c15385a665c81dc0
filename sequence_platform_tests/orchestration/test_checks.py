"""The sequence ordering check against a plain-Python reading of its rule: every list is
newest first by (event_time, event_id), as long as its ``length``, within ``max_length``;
counted for each day of a chunk of days."""

from datetime import UTC, date, datetime, timedelta
from itertools import pairwise

import polars as pl
from hypothesis import given, settings
from hypothesis import strategies as st

from sequence_platform.orchestration.checks import (
    CONTRACT,
    REQUIRED,
    UNIQUE,
    contract_check,
    ordering_checks,
    required_check,
    unique_check,
)

EPOCH = datetime(2026, 3, 1, tzinfo=UTC)
MAX_LENGTH = 4

# Few distinct times and ids, so that ties (equal times, and then ids) are common.
element = st.tuples(st.integers(0, 3), st.sampled_from(["a", "b", "c", "d"]))
DAYS = [date(2026, 3, 1), date(2026, 3, 2), date(2026, 3, 3)]
Row = tuple[list[tuple[int, str]], int, date]
row = st.tuples(
    st.lists(element, min_size=0, max_size=6), st.integers(-1, 1), st.sampled_from(DAYS)
)


def frame(rows: list[Row]) -> pl.DataFrame:
    """Rows of (elements, how far ``length`` is off from the lists' length, day)."""
    return pl.DataFrame(
        {
            "dt": [day for _, _, day in rows],
            "user_id": list(range(len(rows))),
            "length": [len(elements) + off for elements, off, _ in rows],
            "event_time": [
                [EPOCH + timedelta(minutes=m) for m, _ in elements] for elements, _, _ in rows
            ],
            "event_id": [[event_id for _, event_id in elements] for elements, _, _ in rows],
        },
        schema_overrides={
            "event_time": pl.List(pl.Datetime("ms", "UTC")),
            "length": pl.Int32(),
        },
    )


def out_of_order(elements: list[tuple[int, str]]) -> bool:
    return any(newer > older for older, newer in pairwise(elements))


@settings(max_examples=300, deadline=None)
@given(st.lists(row, max_size=12))
def test_the_ordering_check_counts_what_the_rule_counts_each_day(rows: list[Row]) -> None:
    results = ordering_checks(frame(rows), DAYS, MAX_LENGTH, ["event_time", "event_id"])
    assert list(results) == DAYS
    for day, result in results.items():
        on_day = [(elements, off) for elements, off, row_day in rows if row_day == day]
        unordered = sum(out_of_order(elements) for elements, _ in on_day)
        bad_length = sum(
            off != 0 or not 1 <= len(elements) + off <= MAX_LENGTH for elements, off in on_day
        )
        metadata = result.metadata
        assert metadata["out_of_order_users"].value == unordered  # type: ignore[union-attr]
        assert metadata["bad_length_users"].value == bad_length  # type: ignore[union-attr]
        assert result.passed == (unordered + bad_length == 0)


def test_the_contract_fails_when_a_rule_fails_and_names_it() -> None:
    written = pl.DataFrame(
        {"dt": [date(2026, 3, 1)] * 3, "event_id": ["a", "a", "b"], "user_id": [1, None, 2]}
    )
    rules = [
        unique_check(written, ["event_id"]),
        required_check(written, ["event_id", "user_id"]),
    ]
    contract = contract_check(rules)
    assert contract.check_name == CONTRACT
    assert not contract.passed
    assert contract.description == f"failed: {UNIQUE}, {REQUIRED}"
    assert contract.metadata[f"{UNIQUE}.duplicate_rows"].value == 1  # type: ignore[union-attr]
    kept = contract_check([unique_check(written.tail(2), ["event_id"])])
    assert kept.passed and kept.description is None
    assert kept.metadata["failed_rules"].value == "none"  # type: ignore[union-attr]
