"""Training sets read each day of the windows once (``DayWindowReader``); what they read must
stay what a fresh ``Reader`` reads at every day, whatever changes the tables meanwhile."""

from __future__ import annotations

from datetime import UTC, date, datetime, timedelta
from pathlib import Path

import polars as pl

from sequence_platform.engine.sequence import day_rows
from sequence_platform.runtime.reads import DayWindowReader, Reader
from sequence_platform.spec import load_catalog
from sequence_platform.storage.delta import DT, overwrite_days
from sequence_platform.storage.layout import TableLayout

D = date(2026, 3, 10)


def signal_day(catalog_schema: pl.Schema, day: date, *ids: str) -> pl.DataFrame:
    at = datetime.combine(day, datetime.min.time(), tzinfo=UTC) + timedelta(hours=9)
    rows = pl.DataFrame(
        {
            "event_id": list(ids),
            "user_id": [1] * len(ids),
            "item_id": [7] * len(ids),
            "event_type": ["click"] * len(ids),
            "event_time": [at + timedelta(minutes=n) for n in range(len(ids))],
        }
    )
    return rows.with_columns(
        *(pl.lit(None, dtype=t).alias(n) for n, t in catalog_schema.items() if n not in rows),
        pl.lit(day).alias(DT),
    ).select(*catalog_schema.names(), DT)


def event_ids(rows: pl.LazyFrame) -> list[str]:
    return sorted(rows.collect()["event_id"])


def test_a_day_rewritten_after_it_was_read_is_read_again(tmp_path: Path) -> None:
    catalog = load_catalog()
    spec = catalog.sequences["recent_engagement"]
    layout = TableLayout(str(tmp_path / "tables"))
    schema = catalog.signal_schema(spec.signal)
    uri = layout.signals(spec.signal)
    overwrite_days(uri, signal_day(schema, D, "e0"), D, D)

    window = DayWindowReader(catalog, layout, pl.Series("user_id", [1]))
    assert event_ids(window.batch_rows_for_day(spec, D + timedelta(days=1))) == ["e0"]

    # A batch run rewrites the day (a late event landed): the next day's window has it.
    overwrite_days(uri, signal_day(schema, D, "e0", "e1"), D, D)
    later = D + timedelta(days=2)
    fresh = Reader(catalog, layout).batch_rows_for_day(spec, later)
    assert event_ids(window.batch_rows_for_day(spec, later)) == event_ids(fresh) == ["e0", "e1"]


def test_only_the_spine_users_are_held(tmp_path: Path) -> None:
    catalog = load_catalog()
    spec = catalog.sequences["recent_engagement"]
    layout = TableLayout(str(tmp_path / "tables"))
    schema = catalog.signal_schema(spec.signal)
    both = pl.concat(
        [
            signal_day(schema, D, "a0"),
            signal_day(schema, D, "b0").with_columns(pl.lit(2, dtype=pl.Int64).alias("user_id")),
        ]
    )
    overwrite_days(layout.signals(spec.signal), both, D, D)
    window = DayWindowReader(catalog, layout, pl.Series("user_id", [2]))
    assert event_ids(window.batch_rows_for_day(spec, D + timedelta(days=1))) == ["b0"]
    assert sum(frame.height for frame in window._days.values()) == 1


def test_a_day_read_from_the_signal_is_let_go_once_it_is_stored(tmp_path: Path) -> None:
    """A window reads a day from the signal table until the sequence table stores it; then the
    signal copy is no longer held (it would stay for a whole window otherwise)."""
    catalog = load_catalog()
    spec = catalog.sequences["recent_engagement"]
    layout = TableLayout(str(tmp_path / "tables"))
    signal = signal_day(catalog.signal_schema(spec.signal), D, "e0", "e1")
    overwrite_days(layout.signals(spec.signal), signal, D, D)
    window = DayWindowReader(catalog, layout)
    assert event_ids(window.batch_rows_for_day(spec, D + timedelta(days=1))) == ["e0", "e1"]
    held = {(uri, day) for _, uri, day in window._days}
    assert (layout.signals(spec.signal), D) in held

    overwrite_days(layout.sequence(spec), day_rows(signal.lazy(), spec).collect(), D, D)
    later = D + timedelta(days=2)
    assert event_ids(window.batch_rows_for_day(spec, later)) == ["e0", "e1"]
    held = {(uri, day) for _, uri, day in window._days}
    assert (layout.sequence(spec), D) in held
    assert (layout.signals(spec.signal), D) not in held
