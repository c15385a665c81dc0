"""Late data and corrections: which materialized days no longer match what they read.

Every build records, per day, what it read from outside the tables (a fingerprint of the
landing files, the stream archive's row count). A day is *stale* when its inputs changed
since (a late landing file, a late stream event archived by a micro-batch), when an
upstream day it reads was rebuilt after it, or when a landing copy of one of its stream
events arrived on another day. ``plan_rebuilds`` turns stale days into rebuilds: an asset
waits while anything upstream of it is stale or being written, and a rebuild carries along
the downstream assets that read exactly the same days, so a late event costs one run for its
day's events, signals and sequences, then one for the training days whose window holds it.

No Dagster here: the orchestration feeds what the instance recorded and launches the runs.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import date, timedelta
from pathlib import Path

from sequence_platform.ingest.landing import landing_days, landing_fingerprint
from sequence_platform.runtime.batch import STREAM_COPIES_ON, BatchContext
from sequence_platform.spec.catalog import Catalog
from sequence_platform.storage.delta import day_range, records_per_day

LANDING_FINGERPRINT = "landing_fingerprint"
STREAM_ARCHIVE_ROWS = "stream_archive_rows"

Metadata = Mapping[str, object]
Fingerprints = Mapping[str, Mapping[date, str]]
"""Landing fingerprints by folder and day, taken once for a whole sensor tick (empty days left
out: their fingerprint is the empty string)."""


@dataclass(frozen=True)
class Built:
    """The latest materialization of one day of an asset."""

    at: float
    """When it was recorded (seconds since the epoch)."""
    metadata: Metadata


@dataclass(frozen=True)
class Reads:
    """An upstream asset a day reads: ``days(day)`` gives the upstream days."""

    asset: str
    first_offset: int | None
    """Days before the day; None: from the first day on."""
    last_offset: int = 0

    def days(self, day: date, known: Mapping[date, Built]) -> list[date]:
        last = day + timedelta(days=self.last_offset)
        if self.first_offset is None:
            return [upstream for upstream in known if upstream <= last]
        return day_range(day + timedelta(days=self.first_offset), last)

    @property
    def same_day(self) -> bool:
        return self.first_offset == 0 and self.last_offset == 0


@dataclass(frozen=True)
class Rebuild:
    assets: tuple[str, ...]
    """Asset names (``events/engagement``), upstream first; all for the same days."""
    first: date
    last: date
    reasons: tuple[str, ...]


def asset_reads(catalog: Catalog) -> dict[str, list[Reads]]:
    """For every computed asset, the assets whose days it reads."""
    reads: dict[str, list[Reads]] = {}
    for source in catalog.sources:
        reads[f"events/{source}"] = []
    for table in catalog.feature_tables:
        reads[f"features/{table}"] = []
    for signal in catalog.signals.values():
        reads[f"signals/{signal.name}"] = [
            Reads(f"events/{signal.source}", 0),
            # An enrichment is as of event time: any earlier feature day may change the day.
            *(Reads(f"features/{e.table}", None) for e in signal.enrich),
        ]
    for sequence in catalog.sequences.values():
        reads[f"sequences/{sequence.name}"] = [Reads(f"signals/{sequence.signal}", 0)]
    for training in catalog.training_sets.values():
        specs = [catalog.sequences[name] for name in training.sequences]
        reads[f"training/{training.name}"] = [
            *(Reads(f"signals/{s.signal}", 0) for s in specs),
            *(Reads(f"sequences/{s.name}", -s.lookback_days, -1) for s in specs),
        ]
    return reads


def landing_folders(catalog: Catalog) -> list[str]:
    """Every landing folder the definitions read: sources, feature tables and spines."""
    names = [*catalog.sources, *catalog.feature_tables]
    names += [t.spine for t in catalog.training_sets.values()]
    return list(dict.fromkeys(names))


def landing_fingerprints(home: Path, names: Iterable[str]) -> dict[str, dict[date, str]]:
    """The fingerprint of every non-empty landing day of each folder in ``names``."""
    found: dict[str, dict[date, str]] = {}
    for name in names:
        prints = ((day, landing_fingerprint(home, name, day)) for day in landing_days(home, name))
        found[name] = {day: fingerprint for day, fingerprint in prints if fingerprint}
    return found


def input_fingerprints(
    ctx: BatchContext,
    kind: str,
    name: str,
    start: date,
    end: date,
    landing: Fingerprints | None = None,
) -> dict[date, dict[str, str | int]]:
    """What each day of a build reads from outside the tables, taken before it reads it (a
    change made meanwhile then shows as late data, never as nothing). ``landing``: the
    fingerprints already taken (``landing_fingerprints``), else the folders are looked at."""
    days = day_range(start, end)

    def fingerprint(folder: str, day: date) -> str:
        if landing is None:
            return landing_fingerprint(ctx.home, folder, day)
        return landing[folder].get(day, "")

    if kind == "events":
        archived = records_per_day(
            ctx.layout.stream_archive(name), start, end, ctx.layout.storage_options
        )
        return {
            day: {
                LANDING_FINGERPRINT: fingerprint(name, day),
                STREAM_ARCHIVE_ROWS: archived.get(day, 0),
            }
            for day in days
        }
    if kind in ("features", "training"):
        folder = name if kind == "features" else ctx.catalog.training_sets[name].spine
        return {day: {LANDING_FINGERPRINT: fingerprint(folder, day)} for day in days}
    return {}


def stale_days(
    ctx: BatchContext,
    built: Mapping[str, Mapping[date, Built]],
    landing: Fingerprints | None = None,
) -> dict[str, dict[date, list[str]]]:
    """Every materialized day whose inputs changed since it was built, with the reasons.
    ``landing``: the tick's landing fingerprints, when already taken (see ``input_fingerprints``).
    """
    stale: dict[str, dict[date, list[str]]] = {}

    def mark(asset: str, day: date, reason: str) -> None:
        stale.setdefault(asset, {}).setdefault(day, []).append(reason)

    for asset, reads in asset_reads(ctx.catalog).items():
        kind, name = asset.split("/", 1)
        mine = built.get(asset, {})
        if not mine:
            continue
        first, last = min(mine), max(mine)
        now = input_fingerprints(ctx, kind, name, first, last, landing)
        for day, build in mine.items():
            for field, value in now.get(day, {}).items():
                before = build.metadata.get(field)
                if before is None or before == value:
                    continue
                # The archive only grows, but for a forgotten user's rows: fewer is no news.
                if field == STREAM_ARCHIVE_ROWS and int(str(value)) < int(str(before)):
                    continue
                mark(asset, day, _changed(asset, day, field, before, value))
            for upstream in reads:
                known = built.get(upstream.asset, {})
                newer = [
                    d for d in upstream.days(day, known) if d in known and known[d].at > build.at
                ]
                if newer:
                    mark(asset, day, f"{upstream.asset} {_days(newer)} rebuilt after {asset} {day}")
        if kind == "events":
            for other, build in mine.items():
                listed = str(build.metadata.get(STREAM_COPIES_ON) or "")
                for copy_day in (date.fromisoformat(d) for d in listed.split(",") if d):
                    if copy_day in mine and mine[copy_day].at < build.at:
                        mark(asset, copy_day, f"a stream copy of an event landed on {other}")
    return stale


def _changed(asset: str, day: date, field: str, before: object, now: object) -> str:
    folder = asset.split("/", 1)[1]
    if field == STREAM_ARCHIVE_ROWS:
        return f"stream_archive/{folder} dt={day}: {before} rows when built, {now} now"
    # The new fingerprint is part of the reason, so a fixed file is a new rebuild, not a
    # retry of the one that failed.
    return f"landing files of dt={day} changed since {asset} {day} was built (now {now})"


def _days(days: list[date]) -> str:
    return str(days[0]) if len(days) == 1 else f"{min(days)}..{max(days)} ({len(days)} days)"


def plan_rebuilds(
    catalog: Catalog,
    stale: Mapping[str, Mapping[date, list[str]]],
    built: Mapping[str, Mapping[date, Built]],
    busy: set[str],
) -> list[Rebuild]:
    """The rebuilds to launch now. ``busy``: assets some run is writing at the moment."""
    reads = asset_reads(catalog)
    upstream = {asset: _upstream(asset, reads) for asset in reads}
    waiting = busy | {asset for asset, days in stale.items() if days}

    def ready(asset: str, ignoring: set[str]) -> bool:
        return asset not in busy and not (upstream[asset] - ignoring) & waiting

    rebuilds: list[Rebuild] = []
    taken: set[str] = set()
    for asset in reads:  # upstream first
        days = sorted(stale.get(asset, {}))
        if not days or asset in taken or not ready(asset, set()):
            continue
        for first, last in _blocks(days):
            chain = [asset]
            # Downstream assets reading exactly these days come along in the same run.
            for other, needs in reads.items():
                sources = {r.asset for r in needs}
                if (
                    other not in chain
                    and sources & set(chain)
                    and all(r.same_day for r in needs if r.asset in chain)
                    and ready(other, set(chain) | upstream[asset])
                    and all(d in built.get(other, {}) for d in day_range(first, last))
                ):
                    chain.append(other)
            reasons = [
                reason
                for day in day_range(first, last)
                for reason in stale.get(asset, {}).get(day, [])
            ]
            rebuilds.append(Rebuild(tuple(chain), first, last, tuple(dict.fromkeys(reasons))))
            taken |= set(chain)
    return rebuilds


def _upstream(asset: str, reads: Mapping[str, list[Reads]]) -> set[str]:
    found: set[str] = set()
    pending = [r.asset for r in reads[asset]]
    while pending:
        name = pending.pop()
        if name not in found:
            found.add(name)
            pending += [r.asset for r in reads.get(name, [])]
    return found


def _blocks(days: list[date]) -> list[tuple[date, date]]:
    """Consecutive runs of ``days`` (sorted)."""
    blocks: list[tuple[date, date]] = []
    for day in days:
        if blocks and blocks[-1][1] + timedelta(days=1) == day:
            blocks[-1] = (blocks[-1][0], day)
        else:
            blocks.append((day, day))
    return blocks
