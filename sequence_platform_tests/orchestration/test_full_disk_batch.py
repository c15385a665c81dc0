"""A batch step whose disk fills up while its chunks are written in the background: the run
fails naming the cause, the days committed are the first chunks' (nothing is committed after
the failed write, and no materialization is recorded for a day that was not written), and the
same run completes once there is room again."""

import os
from datetime import date, timedelta
from pathlib import Path

import dagster as dg
import polars as pl
import pytest

from sequence_platform.ingest.generate import GenerationConfig, generate_landing
from sequence_platform.orchestration import build_definitions
from sequence_platform.orchestration.runner import materialize_days
from sequence_platform.runtime import batch
from sequence_platform.settings import PlatformSettings
from sequence_platform.storage.delta import DT
from sequence_platform.storage.layout import TableLayout
from sequence_platform_tests.disks import fill, tiny_disk

START = date(2026, 3, 1)
DAYS = 6
END = START + timedelta(days=DAYS - 1)
EVENTS = dg.AssetKey(["events", "engagement"])


def test_a_full_disk_stops_the_step_after_whole_chunks_and_the_rerun_completes(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    home = tmp_path / "home"
    config = GenerationConfig(start=START, days=DAYS, users=300, items=100, events_per_day=4000)
    generate_landing(config, home)
    monkeypatch.setattr(batch, "CHUNK_ROWS", 1)  # one day a chunk
    with tiny_disk(tmp_path / "disk", "4m") as disk:
        settings = PlatformSettings(home=home, start_date=START, tables_uri=str(disk / "tables"))
        layout = TableLayout(settings.tables_root)
        defs = build_definitions(settings=settings)
        filler = fill(disk)
        # Room for about two days of events, then the disk is full.
        os.truncate(filler, filler.stat().st_size - 400_000)
        with dg.instance_for_test() as instance:
            (failed,) = materialize_days(
                defs, instance, START, END, keys=[EVENTS], raise_on_error=False
            )
            assert not failed.success
            assert failed.error is not None and "No space left" in failed.error, failed.error
            written = sorted(pl.read_delta(layout.events("engagement"))[DT].unique().to_list())
            assert 0 < len(written) < DAYS
            # Whole chunks, in order: the first days, with no gap and nothing after the failure.
            assert written == [START + timedelta(days=n) for n in range(len(written))]
            recorded = {
                record.partition_key
                for record in instance.fetch_materializations(
                    dg.AssetRecordsFilter(asset_key=dg.AssetKey(["dead_letters", "engagement"])),
                    limit=100,
                ).records
            }
            assert recorded <= {day.isoformat() for day in written}

            filler.unlink()
            (done,) = materialize_days(defs, instance, START, END, keys=[EVENTS])
            assert done.success, done.error
            events = pl.read_delta(layout.events("engagement"))
            assert sorted(events[DT].unique().to_list()) == [
                START + timedelta(days=n) for n in range(DAYS)
            ]
            # The step's figure is its own table's rows (not counting the dead letters it wrote).
            assert events.height == done.rows
            assert events["event_id"].is_unique().all()
