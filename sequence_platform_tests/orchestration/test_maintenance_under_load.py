"""Maintenance under load: the Dagster maintenance jobs run again and again while a real
micro-batch writer keeps appending to the same real-time tables, and afterwards every message
is there exactly once, the offsets agree, compacted days are sorted by user and vacuum deleted
only what its retention allowed."""

from __future__ import annotations

import json
import os
import threading
import time
from collections import Counter
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import Any

import dagster as dg
import polars as pl
import pytest
from deltalake import DeltaTable
from pydantic import ValidationError

from sequence_platform.ingest.stream import LocalStream
from sequence_platform.orchestration import build_definitions
from sequence_platform.orchestration.maintenance import (
    MAINTENANCE_JOB,
    REALTIME_COMPACTION_JOB,
    realtime_expiry,
)
from sequence_platform.runtime.microbatch import RealtimeWriter, app_id
from sequence_platform.settings import PlatformSettings
from sequence_platform.spec import load_catalog
from sequence_platform.storage.delta import DT, committed_version
from sequence_platform.storage.layout import TableLayout
from sequence_platform.storage.maintenance import ORPHAN_GRACE_HOURS

SOURCE = TOPIC = "engagement"
SIGNAL = "engagement_enriched"
BATCHES = 80
PER_BATCH = 12
LATE_DAYS = 40
"""Older than the longest lookback (30 days) plus a day: the expiry deletes that day."""


def events(batch: int, today: date) -> list[dict[str, Any]]:
    """A batch's events: one late, for a day being expired, the rest on the last two days,
    with users in no particular order."""
    out = []
    for position in range(PER_BATCH):
        index = batch * PER_BATCH + position
        days_ago = LATE_DAYS if position == 0 else 1 + index % 2
        moment = datetime.combine(today - timedelta(days=days_ago), datetime.min.time(), UTC)
        out.append(
            {
                "event_id": f"e-{index:06d}",
                "user_id": (index * 7919) % 97 + 1,
                "item_id": 100 + index % 13,
                "event_type": "save" if index % 3 else "click",
                "event_time": (moment + timedelta(seconds=index)).isoformat(),
                "surface": "home_feed",
            }
        )
    return out


def keep_appending(
    writer: RealtimeWriter, stream: LocalStream, today: date, failures: list[BaseException]
) -> None:
    """Produce a batch, process it as one micro-batch (as a sensor-launched run's first batch
    does: a lost race that is not retried fails it), again and again."""
    try:
        for batch in range(BATCHES):
            stream.produce(
                TOPIC,
                [
                    (str(e["user_id"]).encode(), json.dumps(e).encode())
                    for e in events(batch, today)
                ],
            )
            end = stream.end_offsets(TOPIC)[0]
            writer.process(SOURCE, 0, writer.committed_offset(SOURCE, 0), end)
            time.sleep(0.02)
    except BaseException as error:  # reported to the test's thread
        failures.append(error)


def log_adds(uri: str, operation: str | None = None) -> set[str]:
    """Every data file any commit (of ``operation``) ever added, from the transaction log."""
    added: set[str] = set()
    for commit in sorted(Path(uri, "_delta_log").glob("*.json")):
        actions = [json.loads(line) for line in commit.read_text().splitlines()]
        done = next(a["commitInfo"].get("operation") for a in actions if "commitInfo" in a)
        if operation is None or done == operation:
            added |= {action["add"]["path"] for action in actions if "add" in action}
    return added


def sorted_by_user(uri: str, file: str) -> bool:
    users = pl.read_parquet(Path(uri, file), columns=["user_id"])["user_id"].to_list()
    return users == sorted(users)


def on_disk(uri: str) -> set[str]:
    return {
        str(path.relative_to(uri))
        for path in Path(uri).rglob("*.parquet")
        if "_delta_log" not in path.parts
    }


def referenced(uri: str) -> set[str]:
    return {str(Path(file).relative_to(uri)) for file in DeltaTable(uri).file_uris()}


def test_maintenance_jobs_racing_micro_batches_lose_and_duplicate_nothing(tmp_path: Path) -> None:
    today = datetime.now(UTC).date()
    settings = PlatformSettings(home=tmp_path, start_date=today - timedelta(days=LATE_DAYS))
    assert settings.vacuum_retention_hours == 168
    catalog = load_catalog()
    layout = TableLayout(settings.tables_root)
    stream = LocalStream(tmp_path / "stream")
    writer = RealtimeWriter(catalog, layout, stream)
    realtime, archive = layout.realtime(SIGNAL), layout.stream_archive(SOURCE)
    defs = build_definitions(catalog, settings)
    maintenance = defs.resolve_job_def(MAINTENANCE_JOB)
    compaction = defs.resolve_job_def(REALTIME_COMPACTION_JOB)
    vacuum_now = {"ops": {"vacuum_tables": {"config": {"retention_hours": 0}}}}

    failures: list[BaseException] = []
    appender = threading.Thread(target=keep_appending, args=(writer, stream, today, failures))
    with dg.DagsterInstance.ephemeral() as instance:
        appender.start()
        runs = 0
        while appender.is_alive():
            for job in (compaction, maintenance):
                # A maintenance commit that loses a race starts over; the run must succeed.
                assert job.execute_in_process(instance=instance).success
                runs += 1
        appender.join()
        assert not failures, failures
        assert runs >= 6

        # The default retention (a week) deleted nothing while the writer ran: every file any
        # version held is still there, and an early version still reads.
        assert log_adds(realtime) <= on_disk(realtime)
        assert pl.read_delta(realtime, version=1).height > 0
        # Every file a compaction wrote while the appends went on is sorted by user.
        for uri in (realtime, archive):
            compacted = log_adds(uri, "OPTIMIZE")
            assert len(compacted) >= runs // 2
            assert all(sorted_by_user(uri, file) for file in compacted)

        assert maintenance.execute_in_process(instance=instance).success
        before_vacuum = pl.read_delta(realtime).sort("event_id")
        assert maintenance.execute_in_process(run_config=vacuum_now, instance=instance).success

    produced = [e for batch in range(BATCHES) for e in events(batch, today)]
    total = len(produced)
    keep_from = today - timedelta(days=31)  # the longest lookback (30 days) and a day
    kept = [
        e["event_id"]
        for e in produced
        if datetime.fromisoformat(e["event_time"]).date() >= keep_from
    ]
    assert len(kept) == total - BATCHES

    # Exactly once: the archive holds every message, the real-time table every message of a
    # day still kept, each once; the late days are gone.
    rows = pl.read_delta(realtime)
    assert Counter(rows["event_id"].to_list()) == Counter(kept)
    assert rows.filter(pl.col(DT) < keep_from).is_empty()
    archived = pl.read_delta(archive)
    assert Counter(archived["event_id"].to_list()) == Counter(e["event_id"] for e in produced)
    assert sorted(archived["stream_offset"].to_list()) == list(range(total))
    # Offsets: each table records the stream's end, and the rows agree with it.
    for uri in (realtime, archive, layout.dead_letters(SOURCE)):
        assert committed_version(uri, app_id(TOPIC, 0)) == total
    assert writer.committed_offset(SOURCE, 0) == total
    assert writer.process(SOURCE, 0, 0, total).appended == {}

    # Compacted: each day of the real-time table and the archive is one file, sorted by user,
    # though BATCHES micro-batches appended to each.
    for uri in (realtime, archive):
        days = pl.DataFrame(DeltaTable(uri).get_add_actions(flatten=True))[f"partition.{DT}"]
        assert days.len() == days.n_unique() == (3 if uri == archive else 2)
        for file in referenced(uri):
            assert sorted_by_user(uri, file)

    # Vacuum with retention 0 (a run's config override) deleted every file no version holds
    # any more, kept every file the table holds, and changed nothing in it. Files that no
    # commit references (left by writes that lost a race) stay until ORPHAN_GRACE_HOURS pass.
    assert pl.read_delta(realtime).sort("event_id").equals(before_vacuum)
    lost_races = 0
    for uri in (realtime, archive):
        left = on_disk(uri)
        current = referenced(uri)
        assert current <= left
        replaced = log_adds(uri) - current
        assert len(replaced) > BATCHES and not replaced & left
        orphans = left - current
        lost_races += len(orphans)
        aged = time.time() - (ORPHAN_GRACE_HOURS + 1) * 3600
        for orphan in orphans:
            os.utime(Path(uri, orphan), (aged, aged))
    assert lost_races > 0  # the writers did lose commit races, and retried
    with dg.DagsterInstance.ephemeral() as instance:
        assert maintenance.execute_in_process(run_config=vacuum_now, instance=instance).success
    for uri in (realtime, archive):
        assert on_disk(uri) == referenced(uri)


def test_retention_comes_from_the_environment_and_expiry_from_the_lookbacks(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("SEQUENCE_PLATFORM_VACUUM_RETENTION_HOURS", "24")
    settings = PlatformSettings(home=tmp_path)
    defs = build_definitions(settings=settings)
    assert (defs.resources or {})["platform"].vacuum_retention_hours == 24
    monkeypatch.setenv("SEQUENCE_PLATFORM_VACUUM_RETENTION_HOURS", "-1")
    with pytest.raises(ValidationError, match="greater than or equal to 0"):
        PlatformSettings(home=tmp_path)
    # recent_engagement looks back 30 days, recent_saves 14: the signal keeps 30 and a day.
    layout = TableLayout(settings.tables_root)
    assert realtime_expiry(load_catalog(), layout, date(2026, 3, 31)) == {
        layout.realtime(SIGNAL): date(2026, 2, 28)
    }
    for job, cron in ((MAINTENANCE_JOB, "0 3 * * *"), (REALTIME_COMPACTION_JOB, "17 * * * *")):
        schedule = defs.resolve_schedule_def(f"{job}_schedule")
        assert (schedule.job_name, schedule.cron_schedule) == (job, cron)
