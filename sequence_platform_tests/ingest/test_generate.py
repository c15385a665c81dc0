"""The synthetic landing zone: reproducible, realistic, with exactly the bad records it reports."""

from __future__ import annotations

import json
import re
from dataclasses import replace
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import Any

import polars as pl
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from sequence_platform.ingest.generate import (
    EMBEDDING_DIM,
    EVENT_TYPES,
    REQUIRED_JSON_FIELDS,
    SURFACES,
    GenerationConfig,
    GenerationSummary,
    generate_landing,
    live_events,
)

CONFIG = GenerationConfig(
    start=date(2026, 3, 2), days=5, users=300, items=800, events_per_day=1_500, seed=11
)
REQUIRED = ("event_id", "user_id", "event_type", "event_time")
ISO_UTC_MS = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z$")
ISO_OFFSET_MS = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}[+-]\d\d:\d\d$")


@pytest.fixture(scope="module")
def landing(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, GenerationSummary]:
    home = tmp_path_factory.mktemp("home")
    return home, generate_landing(CONFIG, home)


def _day_dirs(home: Path, table: str) -> list[Path]:
    return sorted((home / "landing" / table).iterdir())


def _dt(folder: Path) -> date:
    return date.fromisoformat(folder.name.removeprefix("dt="))


def _day_bounds(day: date) -> tuple[datetime, datetime]:
    start = datetime(day.year, day.month, day.day, tzinfo=UTC)
    return start, start + timedelta(days=1)


def _engagement(home: Path) -> pl.DataFrame:
    frames = [
        pl.read_parquet(folder / "part-00000.parquet").with_columns(dt=pl.lit(_dt(folder)))
        for folder in _day_dirs(home, "engagement")
    ]
    return pl.concat(frames)


def _items(home: Path) -> list[tuple[date, pl.DataFrame]]:
    return [
        (_dt(folder), pl.read_parquet(folder / "part-00000.parquet"))
        for folder in _day_dirs(home, "items")
    ]


def _clean(events: pl.DataFrame) -> pl.DataFrame:
    return events.drop_nulls(list(REQUIRED)).unique(maintain_order=True)


def _jsonl_files(home: Path) -> list[Path]:
    return sorted((home / "landing" / "engagement").glob("dt=*/part-00001.jsonl"))


def _parse_time(value: object) -> datetime | None:
    if isinstance(value, bool):
        return None
    if isinstance(value, int):
        return datetime(1970, 1, 1, tzinfo=UTC) + timedelta(milliseconds=value)
    if isinstance(value, str):
        try:
            parsed = datetime.fromisoformat(value)
        except ValueError:
            return None
        return parsed if parsed.tzinfo is not None else None
    return None


def _valid_record(line: str, day: date) -> dict[str, object] | None:
    """The record of a line a strict ingest accepts for ``day``, or None for a malformed line."""
    try:
        record = json.loads(line)
    except json.JSONDecodeError:
        return None
    if not isinstance(record, dict) or any(record.get(name) is None for name in REQUIRED):
        return None
    if not isinstance(record["user_id"], int) or not isinstance(record.get("item_id"), int):
        return None
    event_time = _parse_time(record["event_time"])
    start, end = _day_bounds(day)
    if event_time is None or not start <= event_time < end:
        return None
    return record


def _jsonl(home: Path) -> list[tuple[date, str, dict[str, object] | None]]:
    return [
        (_dt(path.parent), line, _valid_record(line, _dt(path.parent)))
        for path in _jsonl_files(home)
        for line in path.read_text(encoding="utf-8").splitlines()
    ]


def test_same_seed_rewrites_byte_identical_files_and_nothing_else(
    landing: tuple[Path, GenerationSummary], tmp_path: Path
) -> None:
    home, summary = landing
    stale = tmp_path / "landing" / "engagement" / "dt=1999-01-01"
    stale.mkdir(parents=True)
    keep = tmp_path / "landing" / "other" / "keep.txt"
    keep.parent.mkdir(parents=True)
    keep.write_text("mine")

    again = generate_landing(CONFIG, tmp_path)

    assert not stale.exists()
    assert keep.read_text() == "mine"
    assert [p.relative_to(tmp_path) for p in again.files] == [
        p.relative_to(home) for p in summary.files
    ]
    for mine, theirs in zip(summary.files, again.files, strict=True):
        assert mine.read_bytes() == theirs.read_bytes(), mine.name
    assert replace(again, files=[]) == replace(summary, files=[])


def test_different_seed_gives_different_data(
    landing: tuple[Path, GenerationSummary], tmp_path: Path
) -> None:
    home, _ = landing
    generate_landing(replace(CONFIG, seed=CONFIG.seed + 1), tmp_path)
    assert not _engagement(home).equals(_engagement(tmp_path))
    assert not _items(home)[0][1].equals(_items(tmp_path)[0][1])


def test_layout_schema_and_progress(tmp_path: Path) -> None:
    messages: list[str] = []
    summary = generate_landing(replace(CONFIG, days=3), tmp_path, messages.append)

    assert summary.days == 3 and len(messages) == 3
    assert messages[0].startswith("2026-03-02  ") and "events" in messages[0]
    assert [d.name for d in _day_dirs(tmp_path, "engagement")] == [
        "dt=2026-03-02",
        "dt=2026-03-03",
        "dt=2026-03-04",
    ]
    engagement = pq.read_schema(tmp_path / "landing/engagement/dt=2026-03-02/part-00000.parquet")
    assert engagement.names == [
        "event_id",
        "user_id",
        "item_id",
        "event_type",
        "event_time",
        "surface",
        "dwell_ms",
    ]
    assert engagement.field("event_id").type == pa.string()
    assert engagement.field("user_id").type == pa.int64()
    assert engagement.field("item_id").type == pa.int64()
    assert engagement.field("event_time").type == pa.timestamp("ms", tz="UTC")
    assert engagement.field("dwell_ms").type == pa.int64()
    items = pq.read_schema(tmp_path / "landing/items/dt=2026-03-02/part-00000.parquet")
    assert items.names == ["item_id", "updated_at", "category", "embedding"]
    assert items.field("updated_at").type == pa.timestamp("ms", tz="UTC")
    assert items.field("embedding").type == pa.list_(pa.float32())


def test_event_times_fall_in_their_files_day(landing: tuple[Path, GenerationSummary]) -> None:
    home, _ = landing
    events = _engagement(home).drop_nulls("event_time")
    outside = events.filter(pl.col("event_time").dt.date() != pl.col("dt"))
    assert outside.is_empty()
    valid_lines = [(day, record) for day, _, record in _jsonl(home) if record is not None]
    assert valid_lines  # _valid_record already refuses a time outside the day


def test_values_are_from_the_domain(landing: tuple[Path, GenerationSummary]) -> None:
    home, _ = landing
    events = _clean(_engagement(home))
    assert set(events["event_type"]) == set(EVENT_TYPES)
    assert set(events["surface"]) <= set(SURFACES)
    assert events["user_id"].is_between(1, CONFIG.users).all()
    assert events["item_id"].is_between(1, CONFIG.items).all()
    assert events["event_id"].str.contains(r"^e-[0-9a-f]{20}$").all()
    impressions = pl.col("event_type") == "impression"
    assert events.filter(impressions)["dwell_ms"].null_count() == events.filter(impressions).height
    assert events.filter(~impressions)["dwell_ms"].null_count() == 0
    assert (events.filter(~impressions)["dwell_ms"] >= 0).all()


def test_event_type_mix(landing: tuple[Path, GenerationSummary]) -> None:
    home, _ = landing
    counts = dict(_clean(_engagement(home))["event_type"].value_counts().iter_rows())
    total = sum(counts.values())
    assert counts["impression"] > total / 2
    assert counts["impression"] > counts["click"] > counts["save"]
    assert all(counts["save"] > counts[kind] for kind in ("like", "share", "hide"))


def test_item_popularity_is_skewed(landing: tuple[Path, GenerationSummary]) -> None:
    home, _ = landing
    events = _clean(_engagement(home))
    per_item = events["item_id"].value_counts(sort=True)["count"]
    top_share = per_item.head(CONFIG.items // 100).sum() / events.height
    # the top 1 % of items take over 20x their even share (typically ~37 %)
    assert top_share > 0.20


def test_user_activity_is_heavy_tailed(landing: tuple[Path, GenerationSummary]) -> None:
    home, _ = landing
    events = _clean(_engagement(home))
    per_user = events["user_id"].value_counts(sort=True)["count"]
    assert per_user.head(CONFIG.users // 10).sum() / events.height > 0.40
    assert per_user.max() > 8 * per_user.median()  # type: ignore[operator]


def test_events_come_in_sessions_with_an_evening_peak(
    landing: tuple[Path, GenerationSummary],
) -> None:
    home, _ = landing
    events = _clean(_engagement(home)).sort("user_id", "event_time")
    gaps = events.select(
        gap=pl.col("event_time").diff().over("user_id").dt.total_seconds()
    ).drop_nulls()["gap"]
    assert (gaps < 300).mean() > 0.5  # type: ignore[operator]  # most next events of a user follow within minutes
    per_hour = events["event_time"].dt.hour().value_counts()
    hourly = dict(per_hour.iter_rows())
    evening = sum(hourly.get(hour, 0) for hour in (18, 19, 20, 21))
    night = sum(hourly.get(hour, 0) for hour in (2, 3, 4, 5))
    assert evening > 3 * night


def test_event_ids_unique_except_planted_duplicates(
    landing: tuple[Path, GenerationSummary],
) -> None:
    home, summary = landing
    events = _engagement(home).drop("dt")
    with_id = events.drop_nulls("event_id")
    assert summary.duplicates > 0
    assert with_id.height - with_id["event_id"].n_unique() == summary.duplicates
    # duplicates are exact copies of whole rows
    assert events.height - events.unique().height == summary.duplicates
    json_ids = {record["event_id"] for _, _, record in _jsonl(home) if record is not None}
    assert len(json_ids) == sum(1 for _, _, record in _jsonl(home) if record is not None)
    assert json_ids.isdisjoint(set(with_id["event_id"]))


def test_malformed_and_event_counts_match_the_summary(
    landing: tuple[Path, GenerationSummary],
) -> None:
    home, summary = landing
    events = _engagement(home)
    null_rows = events.filter(pl.any_horizontal(pl.col(REQUIRED).is_null()))
    # each malformed row lacks exactly one required value
    assert (null_rows.select(pl.sum_horizontal(pl.col(REQUIRED).is_null()))[:, 0] == 1).all()
    lines = _jsonl(home)
    bad_lines = sum(1 for _, _, record in lines if record is None)
    assert summary.malformed == null_rows.height + bad_lines
    assert summary.malformed > 0
    good_lines = len(lines) - bad_lines
    assert summary.events == _clean(events).height + good_lines
    assert events.height + len(lines) == summary.events + summary.duplicates + summary.malformed


def test_jsonl_has_all_timestamp_forms_and_each_bad_kind(
    landing: tuple[Path, GenerationSummary],
) -> None:
    home, _ = landing
    lines = _jsonl(home)
    assert lines
    times = [record["event_time"] for _, _, record in lines if record is not None]
    assert any(isinstance(t, str) and ISO_UTC_MS.match(t) for t in times)
    assert any(isinstance(t, str) and ISO_OFFSET_MS.match(t) for t in times)
    assert any(isinstance(t, int) for t in times)

    bad = [line for _, line, record in lines if record is None]
    decoded = []
    for line in bad:
        try:
            decoded.append(json.loads(line))
        except json.JSONDecodeError:
            decoded.append(None)
    objects = [value for value in decoded if isinstance(value, dict)]
    assert None in decoded  # not JSON at all
    assert any(isinstance(value, list) for value in decoded)
    assert any(not set(REQUIRED_JSON_FIELDS) <= set(value) for value in objects)
    assert any(value.get("user_id") == "abc" for value in objects)
    assert any(value.get("event_time") == "yesterday" for value in objects)
    assert any(str(value.get("event_time", "")).startswith(("1901-", "3000-")) for value in objects)


def test_first_items_day_covers_every_item(landing: tuple[Path, GenerationSummary]) -> None:
    home, summary = landing
    (first_day, first), *later = _items(home)
    assert sorted(first["item_id"]) == list(range(1, CONFIG.items + 1))
    start, end = _day_bounds(first_day)
    assert first["updated_at"].is_between(start, end, closed="left").all()
    assert (first["updated_at"] == start).any()  # some versions stamped exactly at midnight
    assert first["category"].n_unique() > 10
    assert summary.item_versions == first.height + sum(frame.height for _, frame in later)


def test_later_items_days_change_a_small_share(landing: tuple[Path, GenerationSummary]) -> None:
    home, _ = landing
    (_, first), *later = _items(home)
    assert len(later) == CONFIG.days - 1
    current = {row["item_id"]: row for row in first.iter_rows(named=True)}
    for day, frame in later:
        assert 0.01 * CONFIG.items - 1 <= frame.height <= 0.03 * CONFIG.items + 1
        assert frame["item_id"].n_unique() == frame.height
        start, end = _day_bounds(day)
        assert frame["updated_at"].is_between(start, end, closed="left").all()
        for row in frame.iter_rows(named=True):
            before = current[row["item_id"]]
            changed = (row["category"], row["embedding"]) != (
                before["category"],
                before["embedding"],
            )
            assert changed, row["item_id"]
            current[row["item_id"]] = row


def test_embeddings_have_32_float32_values(landing: tuple[Path, GenerationSummary]) -> None:
    home, _ = landing
    for folder in _day_dirs(home, "items"):
        table = pq.read_table(folder / "part-00000.parquet")
        embedding = table.column("embedding")
        assert embedding.type == pa.list_(pa.float32())
        assert embedding.null_count == 0
        assert set(pa.compute.list_value_length(embedding).to_pylist()) == {EMBEDDING_DIM}


def test_live_events_are_reproducible_json_ready_and_in_order() -> None:
    start = datetime(2026, 4, 1, 12, tzinfo=UTC)
    events = live_events(CONFIG, start, 500, seed=3)

    assert events == live_events(CONFIG, start, 500, seed=3)
    assert events != live_events(CONFIG, start, 500, seed=4)
    assert len(events) == 500
    assert json.loads(json.dumps(events)) == events
    times = [str(event["event_time"]) for event in events]
    assert all(ISO_UTC_MS.match(t) for t in times)
    parsed = [datetime.fromisoformat(t) for t in times]
    assert parsed == sorted(parsed) and parsed[0] >= start
    assert len({event["event_id"] for event in events}) == 500
    assert {event["event_type"] for event in events} <= set(EVENT_TYPES)
    assert all(1 <= int(str(event["user_id"])) <= CONFIG.users for event in events)
    assert all(
        (event["dwell_ms"] is None) == (event["event_type"] == "impression") for event in events
    )


def test_live_events_refuse_a_naive_start() -> None:
    with pytest.raises(ValueError, match="timezone-aware"):
        live_events(CONFIG, datetime(2026, 4, 1), 10, seed=1)


@pytest.mark.parametrize(
    "change",
    [{"days": 0}, {"users": 0}, {"seed": -1}, {"bad_record_share": 0.9}, {"duplicate_share": -0.1}],
)
def test_config_refuses_impossible_values(change: dict[str, Any]) -> None:
    with pytest.raises(ValueError):
        replace(CONFIG, **change)


def test_clean_config_plants_no_bad_records(tmp_path: Path) -> None:
    config = replace(CONFIG, days=2, bad_record_share=0.0, duplicate_share=0.0)
    summary = generate_landing(config, tmp_path)
    assert summary.duplicates == summary.malformed == 0
    events = _engagement(tmp_path)
    lines = _jsonl(tmp_path)
    assert all(record is not None for _, _, record in lines)
    assert summary.events == events.height + len(lines) == _clean(events).height + len(lines)
