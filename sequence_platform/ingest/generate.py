"""Seeded, reproducible synthetic landing zone: raw engagement events and versioned items.

Layout written under ``<home>/landing``::

    engagement/dt=YYYY-MM-DD/part-00000.parquet   events of that UTC day (plus planted bad rows)
    engagement/dt=YYYY-MM-DD/part-00001.jsonl     on some days: a few percent of the events as JSON
    items/dt=YYYY-MM-DD/part-00000.parquet        item versions whose updated_at falls in that day

Everything is derived from ``GenerationConfig.seed``: the same config yields byte-identical files.
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta, timezone
from pathlib import Path

import numpy as np
import numpy.typing as npt
import polars as pl
import pyarrow as pa
import pyarrow.parquet as pq

EVENT_TYPES = ("impression", "click", "save", "like", "share", "hide")
EVENT_TYPE_SHARES = (0.70, 0.17, 0.07, 0.03, 0.015, 0.015)
SURFACES = ("home_feed", "search", "related", "profile")
SURFACE_SHARES = (0.55, 0.17, 0.20, 0.08)
CATEGORIES = (
    "home_decor",
    "recipes",
    "fashion",
    "beauty",
    "travel",
    "fitness",
    "diy_crafts",
    "gardening",
    "photography",
    "art",
    "parenting",
    "weddings",
    "technology",
    "cars",
    "pets",
    "quotes",
    "humor",
    "education",
    "finance",
    "music",
)
EMBEDDING_DIM = 32
REQUIRED_JSON_FIELDS = ("event_id", "user_id", "item_id", "event_type", "event_time")

TIMESTAMP = pa.timestamp("ms", tz="UTC")
ENGAGEMENT_SCHEMA = pa.schema(
    [
        ("event_id", pa.string()),
        ("user_id", pa.int64()),
        ("item_id", pa.int64()),
        ("event_type", pa.string()),
        ("event_time", TIMESTAMP),
        ("surface", pa.string()),
        ("dwell_ms", pa.int64()),
    ]
)
ITEMS_SCHEMA = pa.schema(
    [
        ("item_id", pa.int64()),
        ("updated_at", TIMESTAMP),
        ("category", pa.string()),
        ("embedding", pa.list_(pa.float32())),
    ]
)

DAY_MS = 86_400_000
_HOUR_MS = 3_600_000
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)

# Share of a day's sessions starting in each UTC hour: quiet at night, peak in the evening.
_HOURLY_RHYTHM = np.array(
    [0.50, 0.35, 0.25, 0.20, 0.20, 0.25, 0.40, 0.60, 0.80, 0.90, 0.95, 1.00,
     1.05, 1.00, 0.95, 0.95, 1.00, 1.15, 1.40, 1.60, 1.70, 1.60, 1.20, 0.80]
)  # fmt: skip
_HOURLY_RHYTHM = _HOURLY_RHYTHM / _HOURLY_RHYTHM.sum()
_WEEKDAY_FACTOR = (0.96, 0.97, 0.98, 0.99, 1.02, 1.05, 1.03)  # Monday first; averages to 1
_ITEM_ZIPF_EXPONENT = 1.0
_CATEGORY_ZIPF_EXPONENT = 0.6
_USER_ACTIVITY_SIGMA = 1.4
_MEAN_SESSION_EVENTS = 6.0
_GAP_MEDIAN_MS = 25_000.0
_GAP_SIGMA = 1.1
_MIN_GAP_MS = 200
_DWELL_MEDIAN_MS = 3_000.0
_DWELL_SIGMA = 1.0
_JSONL_DAY_CHANCE = 0.3
_JSONL_EVENT_SHARE = (0.02, 0.05)
_MIN_JSONL_EVENTS = 3
_INITIAL_AT_MIDNIGHT = 0.25
_ITEM_UPDATE_SHARE = (0.01, 0.03)
_UTC_OFFSETS_MIN = (120, -300, 330, 540, -480, 60)
_HEX = np.frombuffer(b"0123456789abcdef", dtype=np.uint8)

# Independent random streams per concern and per day, so changing one part of the generator does
# not reshuffle the others.
_WORLD, _EVENTS, _ITEMS, _IDS, _LIVE = range(5)

Progress = Callable[[str], None]
IntArray = npt.NDArray[np.int64]
FloatArray = npt.NDArray[np.float64]


@dataclass(frozen=True)
class GenerationConfig:
    """What to generate: the days, the population sizes, the volume and the seed."""

    start: date
    days: int = 28
    users: int = 2_000
    items: int = 5_000
    events_per_day: int = 8_000
    seed: int = 7
    bad_record_share: float = 0.002
    duplicate_share: float = 0.005

    def __post_init__(self) -> None:
        if self.days < 1 or self.users < 1 or self.items < 1:
            raise ValueError("days, users and items must be at least 1")
        if self.events_per_day < 0:
            raise ValueError("events_per_day must not be negative")
        if self.seed < 0:
            raise ValueError("seed must not be negative")
        for name in ("bad_record_share", "duplicate_share"):
            if not 0.0 <= getattr(self, name) <= 0.5:
                raise ValueError(f"{name} must be within [0, 0.5]")


@dataclass(frozen=True)
class GenerationSummary:
    """What was written.

    ``events`` counts distinct well-formed events (what a correct ingest keeps), ``duplicates`` the
    extra exact copies in the parquet files and ``malformed`` the parquet rows and JSONL lines a
    correct ingest must reject; rows + lines written = events + duplicates + malformed.
    """

    days: int
    events: int
    duplicates: int
    malformed: int
    item_versions: int
    files: list[Path]


@dataclass(frozen=True)
class LandingDay:
    """One day of the landing zone, in memory."""

    day: date
    engagement: pa.Table
    jsonl_lines: list[str]
    items: pa.Table
    events: int
    duplicates: int
    malformed: int


@dataclass(frozen=True)
class _World:
    """What holds for the whole run: user activity, item popularity, JSONL days, id keys."""

    user_cdf: FloatArray
    item_cdf: FloatArray
    jsonl_days: npt.NDArray[np.bool_]
    id_keys: tuple[int, int]


@dataclass(frozen=True)
class _Events:
    """Columnar events; ``dwell_ms`` is -1 where it is null."""

    user_id: IntArray
    item_id: IntArray
    event_type: IntArray
    surface: IntArray
    time_ms: IntArray
    dwell_ms: IntArray

    def take(self, index: IntArray) -> _Events:
        return _Events(*(column[index] for column in self.columns()))

    def columns(self) -> tuple[IntArray, ...]:
        return (
            self.user_id,
            self.item_id,
            self.event_type,
            self.surface,
            self.time_ms,
            self.dwell_ms,
        )


def generate_landing(
    config: GenerationConfig, home: Path, progress: Progress | None = None
) -> GenerationSummary:
    """Generate the landing zone for ``config`` under ``home`` (replacing any earlier one)."""
    return write_landing(generate_days(config), home, progress)


def generate_days(config: GenerationConfig) -> Iterator[LandingDay]:
    """The landing zone, day by day, without touching the disk."""
    world = _world(config)
    for day_index, items in enumerate(_item_versions(config)):
        yield _landing_day(config, world, day_index, items)


def write_landing(
    days: Iterable[LandingDay], home: Path, progress: Progress | None = None
) -> GenerationSummary:
    """Replace ``<home>/landing/engagement``, ``<home>/landing/items`` and the training spine
    ``<home>/landing/labels`` with ``days``."""
    landing = Path(home) / "landing"
    for table in ("engagement", "items", LABELS):
        shutil.rmtree(landing / table, ignore_errors=True)
    files: list[Path] = []
    count = events = duplicates = malformed = item_versions = 0
    for day in days:
        partition = f"dt={day.day.isoformat()}"
        engagement_dir = landing / "engagement" / partition
        items_dir = landing / "items" / partition
        engagement_dir.mkdir(parents=True)
        items_dir.mkdir(parents=True)
        files.append(_write_parquet(day.engagement, engagement_dir / "part-00000.parquet"))
        if day.jsonl_lines:
            jsonl = engagement_dir / "part-00001.jsonl"
            jsonl.write_text(
                "".join(f"{line}\n" for line in day.jsonl_lines), encoding="utf-8", newline="\n"
            )
            files.append(jsonl)
        files.append(_write_parquet(day.items, items_dir / "part-00000.parquet"))
        labels_dir = landing / LABELS / partition
        labels_dir.mkdir(parents=True)
        labels = impression_labels(pl.from_arrow(day.engagement))  # type: ignore[arg-type]
        labels.write_parquet(labels_dir / "part-00000.parquet")
        files.append(labels_dir / "part-00000.parquet")
        count += 1
        events += day.events
        duplicates += day.duplicates
        malformed += day.malformed
        item_versions += day.items.num_rows
        if progress is not None:
            jsonl_note = f"  {len(day.jsonl_lines):,} jsonl lines" if day.jsonl_lines else ""
            progress(
                f"{day.day.isoformat()}  {day.events:,} events"
                f"  {day.items.num_rows:,} item updates{jsonl_note}"
            )
    return GenerationSummary(count, events, duplicates, malformed, item_versions, files)


def live_events(
    config: GenerationConfig, start_time: datetime, count: int, seed: int
) -> list[dict[str, object]]:
    """``count`` clean, JSON-ready events from ``start_time`` on, in event-time order.

    Users, items, event types and sessions follow the same distributions as the landing zone;
    sessions start at the config's average rate, so the events span about
    ``count / events_per_day`` days of event time.
    """
    if start_time.tzinfo is None:
        raise ValueError("start_time must be timezone-aware")
    if count < 0 or seed < 0:
        raise ValueError("count and seed must not be negative")
    world = _world(config)
    rng = _rng(config.seed, _LIVE, seed)
    lengths = _session_lengths(rng, count)
    session_of_event, offsets, _ = _session_offsets(rng, lengths)
    sessions_per_ms = max(config.events_per_day, 1) / _MEAN_SESSION_EVENTS / DAY_MS
    gaps = rng.exponential(1.0 / sessions_per_ms, size=len(lengths)).astype(np.int64)
    session_starts = np.cumsum(gaps) - gaps[0] if len(gaps) else gaps
    start_ms = (start_time - _EPOCH) // timedelta(milliseconds=1)
    events = _events_for_sessions(rng, world, session_of_event, start_ms + session_starts)
    events = _with_times(events, events.time_ms + offsets)
    events = events.take(np.argsort(events.time_ms, kind="stable"))
    ids = _event_ids(np.arange(count, dtype=np.uint64), _id_keys(config.seed, _IDS, _LIVE, seed))
    return [
        _json_record(events, i, ids[i].decode(), _iso(int(events.time_ms[i]))) for i in range(count)
    ]


def _rng(*keys: int) -> np.random.Generator:
    return np.random.default_rng(np.random.SeedSequence(list(keys)))


def _id_keys(*keys: int) -> tuple[int, int]:
    first, second = np.random.SeedSequence(list(keys)).generate_state(2, np.uint64)
    return int(first), int(second)


def _world(config: GenerationConfig) -> _World:
    rng = _rng(config.seed, _WORLD)
    activity = rng.lognormal(0.0, _USER_ACTIVITY_SIGMA, size=config.users)
    popularity = np.empty(config.items)
    # Popularity ranks are shuffled so the most popular items are not simply the lowest ids.
    ranks = np.arange(1, config.items + 1, dtype=np.float64)
    popularity[rng.permutation(config.items)] = ranks**-_ITEM_ZIPF_EXPONENT
    jsonl_draw = rng.random(config.days)
    jsonl_days = jsonl_draw < _JSONL_DAY_CHANCE
    jsonl_days[np.argmin(jsonl_draw)] = True  # at least one day carries the JSON side channel
    return _World(_cdf(activity), _cdf(popularity), jsonl_days, _id_keys(config.seed, _IDS))


def _cdf(weights: FloatArray) -> FloatArray:
    cumulative = np.cumsum(weights)
    return cumulative / cumulative[-1]


def _draw_ids(rng: np.random.Generator, cdf: FloatArray, size: int) -> IntArray:
    """Ids in 1..len(cdf), drawn with the weights behind ``cdf``."""
    index = np.searchsorted(cdf, rng.random(size), side="right")
    return np.minimum(index, len(cdf) - 1).astype(np.int64) + 1


def _session_lengths(rng: np.random.Generator, total: int) -> IntArray:
    """Geometric session lengths (at least one event each) adding up to exactly ``total``."""
    if total <= 0:
        return np.zeros(0, dtype=np.int64)
    batch = int(total / _MEAN_SESSION_EVENTS * 1.5) + 16
    lengths = rng.geometric(1.0 / _MEAN_SESSION_EVENTS, size=batch).astype(np.int64)
    while lengths.sum() < total:
        more = rng.geometric(1.0 / _MEAN_SESSION_EVENTS, size=batch).astype(np.int64)
        lengths = np.concatenate([lengths, more])
    cumulative = np.cumsum(lengths)
    last = int(np.searchsorted(cumulative, total))
    lengths = lengths[: last + 1].copy()
    lengths[-1] -= cumulative[last] - total
    return lengths


def _session_offsets(
    rng: np.random.Generator, lengths: IntArray
) -> tuple[IntArray, IntArray, IntArray]:
    """Per event: its session and its offset from the session start; per session: its duration."""
    sessions = len(lengths)
    session_of_event = np.repeat(np.arange(sessions, dtype=np.int64), lengths)
    gaps = rng.lognormal(np.log(_GAP_MEDIAN_MS), _GAP_SIGMA, size=len(session_of_event))
    gaps = np.maximum(gaps, _MIN_GAP_MS).astype(np.int64)
    first = np.cumsum(lengths) - lengths
    gaps[first] = 0
    elapsed = np.cumsum(gaps)
    offsets = elapsed - elapsed[first][session_of_event]
    durations = offsets[first + lengths - 1] if sessions else np.zeros(0, dtype=np.int64)
    return session_of_event, offsets, durations


def _events_for_sessions(
    rng: np.random.Generator, world: _World, session_of_event: IntArray, session_start_ms: IntArray
) -> _Events:
    """Events whose time is their session's start; users and surfaces are per session."""
    size = len(session_of_event)
    sessions = len(session_start_ms)
    users = _draw_ids(rng, world.user_cdf, sessions)
    surfaces = rng.choice(len(SURFACES), size=sessions, p=SURFACE_SHARES).astype(np.int64)
    event_type = rng.choice(len(EVENT_TYPES), size=size, p=EVENT_TYPE_SHARES).astype(np.int64)
    dwell = rng.lognormal(np.log(_DWELL_MEDIAN_MS), _DWELL_SIGMA, size=size).astype(np.int64)
    dwell[event_type == 0] = -1  # impressions carry no dwell time
    return _Events(
        user_id=users[session_of_event],
        item_id=_draw_ids(rng, world.item_cdf, size),
        event_type=event_type,
        surface=surfaces[session_of_event],
        time_ms=session_start_ms[session_of_event],
        dwell_ms=dwell,
    )


def _with_times(events: _Events, time_ms: IntArray) -> _Events:
    return _Events(
        events.user_id, events.item_id, events.event_type, events.surface, time_ms, events.dwell_ms
    )


def _day_events(
    config: GenerationConfig, world: _World, day_index: int, day: date
) -> tuple[np.random.Generator, _Events]:
    """The day's events in event-time order, and the day's random stream for what follows."""
    rng = _rng(config.seed, _EVENTS, day_index)
    noise = rng.lognormal(0.0, 0.03)
    total = round(config.events_per_day * _WEEKDAY_FACTOR[day.weekday()] * noise)
    lengths = _session_lengths(rng, total)
    session_of_event, offsets, durations = _session_offsets(rng, lengths)
    hours = rng.choice(24, size=len(lengths), p=_HOURLY_RHYTHM)
    starts = hours * _HOUR_MS + rng.integers(0, _HOUR_MS, size=len(lengths))
    # Late sessions are pulled back so that the whole session stays inside its UTC day.
    starts = np.minimum(starts, np.maximum(DAY_MS - 1 - durations, 0))
    events = _events_for_sessions(rng, world, session_of_event, starts)
    in_day = np.minimum(events.time_ms + offsets, DAY_MS - 1)
    events = _with_times(events, _day_start_ms(day) + in_day)
    return rng, events.take(np.argsort(events.time_ms, kind="stable"))


LABELS = "labels"
"""The landing folder of the demo's training spine."""


LABELLED_SHARE = 0.05
"""The share of impressions the demo's spine labels (a sample, as labelling pipelines keep)."""


def impression_labels(engagement: pl.DataFrame) -> pl.DataFrame:
    """A training spine from a day of events: a sample of the impressions (``user_id``,
    ``ts``, ``item_id``), labelled 1 when the user saved or clicked that item later that day."""
    valid = engagement.drop_nulls(["user_id", "event_time", "event_type"])
    engaged = (
        valid.filter(pl.col("event_type").is_in(["save", "click"]))
        .group_by("user_id", "item_id")
        .agg(pl.col("event_time").max().alias("__last"))
    )
    return (
        valid.filter(pl.col("event_type") == "impression")
        .unique("event_id", keep="first", maintain_order=True)
        # A deterministic sample: the same events whatever else the generator changes.
        .filter(pl.col("event_id").hash(seed=7) % 1000 < LABELLED_SHARE * 1000)
        .join(engaged, on=["user_id", "item_id"], how="left", maintain_order="left")
        .select(
            "user_id",
            pl.col("event_time").alias("ts"),
            "item_id",
            (pl.col("__last") > pl.col("event_time")).fill_null(False).cast(pl.Int8).alias("label"),
        )
    )


def _landing_day(
    config: GenerationConfig, world: _World, day_index: int, items: pa.Table
) -> LandingDay:
    day = config.start + timedelta(days=day_index)
    rng, events = _day_events(config, world, day_index, day)
    total = len(events.time_ms)
    ids = _event_ids(
        (np.uint64(day_index) << np.uint64(32)) | np.arange(total, dtype=np.uint64), world.id_keys
    )

    in_jsonl = np.zeros(total, dtype=bool)
    if world.jsonl_days[day_index]:
        share = rng.uniform(*_JSONL_EVENT_SHARE)
        size = min(total, max(_MIN_JSONL_EVENTS, round(total * share)))
        in_jsonl[rng.choice(total, size=size, replace=False)] = True
    parquet_index = np.flatnonzero(~in_jsonl)
    engagement, duplicates, bad_rows = _engagement_table(
        rng, config, events.take(parquet_index), ids[parquet_index]
    )

    lines: list[str] = []
    bad_lines = 0
    if in_jsonl.any():
        json_index = np.flatnonzero(in_jsonl)
        spare_ids = _event_ids(
            (np.uint64(day_index) << np.uint64(32))
            | np.arange(total, total + len(_BAD_LINE_KINDS), dtype=np.uint64),
            world.id_keys,
        )
        lines, bad_lines = _jsonl_lines(
            rng, config, events.take(json_index), ids[json_index], spare_ids
        )
    return LandingDay(
        day=day,
        engagement=engagement,
        jsonl_lines=lines,
        items=items,
        events=total - bad_rows,
        duplicates=duplicates,
        malformed=bad_rows + bad_lines,
    )


def _engagement_table(
    rng: np.random.Generator,
    config: GenerationConfig,
    events: _Events,
    ids: npt.NDArray[np.bytes_],
) -> tuple[pa.Table, int, int]:
    """The parquet rows with planted malformed rows and duplicates; also both counts."""
    rows = len(ids)
    bad_count = int(rng.binomial(rows, config.bad_record_share))
    bad_rows = rng.choice(rows, size=bad_count, replace=False)
    # Each malformed row loses exactly one required value: user_id, event_type, event_time or id.
    bad_kind = rng.integers(0, 4, size=bad_count)
    null_user, null_type, null_time, null_id = (np.zeros(rows, dtype=bool) for _ in range(4))
    for kind, mask in enumerate((null_user, null_type, null_time, null_id)):
        mask[bad_rows[bad_kind == kind]] = True

    clean = np.setdiff1d(np.arange(rows), bad_rows)
    duplicate_count = int(rng.binomial(len(clean), config.duplicate_share))
    copies = rng.choice(clean, size=duplicate_count, replace=False)
    # Copies land anywhere in the file, as a re-delivered batch would.
    positions = np.sort(rng.integers(0, rows + 1, size=duplicate_count))
    order = np.insert(np.arange(rows), positions, copies)

    columns = events.take(order)
    event_type = pa.array(columns.event_type, mask=null_type[order]).cast(pa.int8())
    arrays = [
        pa.array(ids[order], type=pa.binary(), mask=null_id[order]).cast(pa.string()),
        pa.array(columns.user_id, type=pa.int64(), mask=null_user[order]),
        pa.array(columns.item_id, type=pa.int64()),
        pa.array(list(EVENT_TYPES), type=pa.string()).take(event_type),
        pa.array(columns.time_ms, type=TIMESTAMP, mask=null_time[order]),
        pa.array(list(SURFACES), type=pa.string()).take(pa.array(columns.surface)),
        pa.array(columns.dwell_ms, type=pa.int64(), mask=columns.dwell_ms < 0),
    ]
    return pa.Table.from_arrays(arrays, schema=ENGAGEMENT_SCHEMA), duplicate_count, bad_count


_BAD_LINE_KINDS = (
    "not_json",
    "json_array",
    "missing_field",
    "user_id_not_int",
    "event_time_not_time",
    "absurd_event_time",
)


def _jsonl_lines(
    rng: np.random.Generator,
    config: GenerationConfig,
    events: _Events,
    ids: npt.NDArray[np.bytes_],
    spare_ids: npt.NDArray[np.bytes_],
) -> tuple[list[str], int]:
    """JSON lines for ``events`` in three timestamp forms, plus one bad line of each kind."""
    size = len(ids)
    # A balanced, shuffled assignment guarantees every file holds all three forms.
    forms = rng.permutation(np.arange(size) % 3)
    offsets = rng.choice(_UTC_OFFSETS_MIN, size=size)
    lines: list[str] = []
    for i in range(size):
        time_ms = int(events.time_ms[i])
        event_time: object
        if forms[i] == 0:
            event_time = _iso(time_ms)
        elif forms[i] == 1:
            event_time = _iso(time_ms, int(offsets[i]))
        else:
            event_time = time_ms
        lines.append(json.dumps(_json_record(events, i, ids[i].decode(), event_time)))
    if config.bad_record_share == 0 or size == 0:
        return lines, 0

    bad_lines = []
    templates = rng.integers(0, size, size=len(_BAD_LINE_KINDS))
    for kind, template, spare_id in zip(_BAD_LINE_KINDS, templates, spare_ids, strict=True):
        record = _json_record(
            events, int(template), spare_id.decode(), _iso(int(events.time_ms[template]))
        )
        bad_lines.append(_bad_line(rng, kind, record))
    order = rng.permutation(len(bad_lines))
    positions = np.sort(rng.integers(0, size + 1, size=len(bad_lines)))
    for shift, (position, bad) in enumerate(zip(positions, order, strict=True)):
        lines.insert(int(position) + shift, bad_lines[bad])
    return lines, len(bad_lines)


def _bad_line(rng: np.random.Generator, kind: str, record: dict[str, object]) -> str:
    if kind == "not_json":
        text = json.dumps(record)
        if rng.random() < 0.5:
            return text[: len(text) // 2]  # a truncated write
        return "### export interrupted, resuming ###"
    if kind == "json_array":
        return json.dumps(list(record.values()))
    if kind == "missing_field":
        del record[REQUIRED_JSON_FIELDS[int(rng.integers(0, len(REQUIRED_JSON_FIELDS)))]]
    elif kind == "user_id_not_int":
        record["user_id"] = "abc"
    elif kind == "event_time_not_time":
        record["event_time"] = "yesterday"
    elif kind == "absurd_event_time":
        year = 1901 if rng.random() < 0.5 else 3000
        record["event_time"] = f"{year}-01-01T00:00:00.000Z"
    return json.dumps(record)


def _json_record(events: _Events, i: int, event_id: str, event_time: object) -> dict[str, object]:
    dwell = int(events.dwell_ms[i])
    return {
        "event_id": event_id,
        "user_id": int(events.user_id[i]),
        "item_id": int(events.item_id[i]),
        "event_type": EVENT_TYPES[int(events.event_type[i])],
        "event_time": event_time,
        "surface": SURFACES[int(events.surface[i])],
        "dwell_ms": dwell if dwell >= 0 else None,
    }


def _item_versions(config: GenerationConfig) -> Iterator[pa.Table]:
    """Per day, the item rows updated that day: every item on the first day, 1-3 % afterwards."""
    rng = _rng(config.seed, _ITEMS, 0)
    count = config.items
    scale = 1.0 / np.sqrt(EMBEDDING_DIM)
    centroids = rng.normal(0.0, scale, size=(len(CATEGORIES), EMBEDDING_DIM))
    category_weights = (
        np.arange(1, len(CATEGORIES) + 1, dtype=np.float64) ** -_CATEGORY_ZIPF_EXPONENT
    )
    category_weights = rng.permutation(category_weights / category_weights.sum())
    category = rng.choice(len(CATEGORIES), size=count, p=category_weights).astype(np.int64)
    embedding = _normalize(
        centroids[category] + rng.normal(0.0, 0.6 * scale, (count, EMBEDDING_DIM))
    )
    # A share of the initial snapshot is stamped exactly at midnight, as a backfill would be.
    at_midnight = rng.random(count) < _INITIAL_AT_MIDNIGHT
    updated = np.where(at_midnight, 0, rng.integers(0, DAY_MS, size=count))
    all_items = np.arange(count, dtype=np.int64)
    yield _items_table(config.start, all_items, updated, category, embedding)

    for day_index in range(1, config.days):
        rng = _rng(config.seed, _ITEMS, day_index)
        changed_count = max(1, round(count * rng.uniform(*_ITEM_UPDATE_SHARE)))
        changed = np.sort(rng.choice(count, size=min(changed_count, count), replace=False))
        # 0: the embedding drifts; 1: new category and embedding; 2: new category only
        change = rng.choice(3, size=len(changed), p=(0.7, 0.2, 0.1))
        drift = changed[change == 0]
        embedding[drift] = _normalize(
            embedding[drift] + rng.normal(0.0, 0.3 * scale, (len(drift), EMBEDDING_DIM))
        )
        moved = changed[change > 0]
        category[moved] = (category[moved] + rng.integers(1, len(CATEGORIES), len(moved))) % len(
            CATEGORIES
        )
        rebuilt = changed[change == 1]
        embedding[rebuilt] = _normalize(
            centroids[category[rebuilt]]
            + rng.normal(0.0, 0.6 * scale, (len(rebuilt), EMBEDDING_DIM))
        )
        updated_at = rng.integers(0, DAY_MS, size=len(changed))
        day = config.start + timedelta(days=day_index)
        yield _items_table(day, changed, updated_at, category[changed], embedding[changed])


def _normalize(vectors: FloatArray) -> FloatArray:
    norms: FloatArray = np.linalg.norm(vectors, axis=1, keepdims=True)
    return vectors / norms


def _items_table(
    day: date,
    index: IntArray,
    updated_ms: IntArray,
    category: IntArray,
    embedding: FloatArray,
) -> pa.Table:
    order = np.lexsort((index, updated_ms))
    values = pa.array(embedding[order].astype(np.float32).ravel(), type=pa.float32())
    offsets = pa.array(np.arange(len(order) + 1, dtype=np.int32) * EMBEDDING_DIM, type=pa.int32())
    arrays = [
        pa.array(index[order] + 1, type=pa.int64()),
        pa.array(_day_start_ms(day) + updated_ms[order], type=TIMESTAMP),
        pa.array(list(CATEGORIES), type=pa.string()).take(pa.array(category[order])),
        pa.ListArray.from_arrays(offsets, values),
    ]
    return pa.Table.from_arrays(arrays, schema=ITEMS_SCHEMA)


def _event_ids(index: npt.NDArray[np.uint64], keys: tuple[int, int]) -> npt.NDArray[np.bytes_]:
    """``e-<20 hex>`` ids: 16 hex digits from a bijective mix of the index (so ids never collide
    within one key) and 4 more from a second mix."""
    size = len(index)
    unique = _mix64(index ^ np.uint64(keys[0]))
    salt = (_mix64(index + np.uint64(keys[1])) >> np.uint64(48)).astype(">u2")
    raw = np.concatenate(
        [
            unique.astype(">u8").view(np.uint8).reshape(size, 8),
            salt.view(np.uint8).reshape(size, 2),
        ],
        axis=1,
    )
    chars = np.empty((size, 22), dtype=np.uint8)
    chars[:, :2] = np.frombuffer(b"e-", dtype=np.uint8)
    chars[:, 2::2] = _HEX[raw >> 4]
    chars[:, 3::2] = _HEX[raw & 15]
    return chars.view("S22").reshape(size)


def _mix64(values: npt.NDArray[np.uint64]) -> npt.NDArray[np.uint64]:
    """The splitmix64 finaliser, a bijection on 64-bit integers (array overflow wraps)."""
    z = values.astype(np.uint64)
    z = (z ^ (z >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
    z = (z ^ (z >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
    return z ^ (z >> np.uint64(31))


def _day_start_ms(day: date) -> int:
    return (datetime(day.year, day.month, day.day, tzinfo=UTC) - _EPOCH) // timedelta(
        milliseconds=1
    )


def _iso(time_ms: int, offset_minutes: int = 0) -> str:
    """ISO-8601 with milliseconds: ``Z`` for UTC, otherwise the local time and its offset."""
    instant = _EPOCH + timedelta(milliseconds=time_ms)
    if offset_minutes == 0:
        return instant.isoformat(timespec="milliseconds").replace("+00:00", "Z")
    local = instant.astimezone(timezone(timedelta(minutes=offset_minutes)))
    return local.isoformat(timespec="milliseconds")


def _write_parquet(table: pa.Table, path: Path) -> Path:
    pq.write_table(table, path, compression="zstd")
    return path
