"""The ``sequence-platform`` command, run as a user runs it: a subprocess with environment."""

from __future__ import annotations

import argparse
import gc
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import dagster as dg
import polars as pl
import pytest

from sequence_platform import cli

REPO = Path(__file__).resolve().parents[1]


def run_cli(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "sequence_platform.cli", *args],
        cwd=REPO,
        env={**os.environ, **(env or {})},
        capture_output=True,
        text=True,
        timeout=300,
    )


def start_cli(*args: str, env: dict[str, str]) -> subprocess.Popen[bytes]:
    """The command started in the background, its output discarded."""
    return subprocess.Popen(
        [sys.executable, "-m", "sequence_platform.cli", *args],
        cwd=REPO,
        env={**os.environ, **env},
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )


def test_validate_lists_the_example_definitions() -> None:
    result = run_cli("validate")
    assert result.returncode == 0, result.stderr
    assert "sequence       recent_saves" in result.stdout
    assert "6 definitions are valid." in result.stdout


def test_validate_explains_a_mistake(tmp_path: Path) -> None:
    for name in ("engagement.json", "items.json", "engagement_enriched.json", "executors.py"):
        (tmp_path / name).write_text((REPO / "definitions" / name).read_text())
    broken = {
        "kind": "sequence",
        "name": "recent_clicks",
        "signal": "engagement_enriched",
        "fields": ["item_id", "categry"],
        "max_length": 10,
        "lookback_days": 7,
    }
    (tmp_path / "recent_clicks.json").write_text(json.dumps(broken))
    result = run_cli("validate", str(tmp_path))
    assert result.returncode == 2
    assert (
        "recent_clicks.json: sequence 'recent_clicks', field 'fields[1]': "
        "'categry' does not exist in signal 'engagement_enriched'" in result.stderr
    )
    assert "sequence-platform validate" in result.stderr


def test_generate_then_materialize_through_dagster(tmp_path: Path) -> None:
    env = {
        "SEQUENCE_PLATFORM_HOME": str(tmp_path / "home"),
        "DAGSTER_HOME": str(tmp_path / "dagster"),
    }
    generated = run_cli(
        "generate",
        "--days",
        "2",
        "--end",
        "2026-03-02",
        "--users",
        "40",
        "--items",
        "80",
        "--events-per-day",
        "300",
        env=env,
    )
    assert generated.returncode == 0, generated.stderr
    assert "First partition: 2026-03-01." in generated.stdout

    materialized = run_cli("materialize", "--end", "2026-03-02", env=env)
    assert materialized.returncode == 0, materialized.stderr + materialized.stdout
    lines = [line.split() for line in materialized.stdout.splitlines() if " ok " in line]
    assert [line[0] for line in lines] == [
        "features/items",
        "events/engagement",
        "signals/engagement_enriched",
        "sequences/recent_engagement",
        "sequences/recent_saves",
        "training/saves_training",
    ]
    snapshots = pl.read_delta(str(tmp_path / "home/tables/sequences/recent_saves/v1"))
    assert sorted(snapshots["dt"].unique().cast(pl.String)) == ["2026-03-01", "2026-03-02"]
    # The runs are on the project-local Dagster instance, for the UI to show.
    assert (tmp_path / "dagster" / "dagster.yaml").exists()
    assert any((tmp_path / "dagster").rglob("*.db"))

    # The continuous indexer's writes are recorded there too, on the assets it writes.
    produced = run_cli("produce", "--count", "60", "--rate", "1000", env=env)
    assert produced.returncode == 0, produced.stderr
    late = tmp_path / "late.jsonl"
    late.write_text(
        json.dumps(
            {
                "event_id": "late-1",
                "user_id": 1,
                "item_id": 2,
                "event_type": "click",
                "event_time": "2026-03-02T10:00:00Z",
            }
        )
        + "\n"
    )
    produced = run_cli("produce", "--file", str(late), env=env)
    assert produced.returncode == 0, produced.stderr
    indexed = run_cli("index", env=env)
    assert indexed.returncode == 0, indexed.stderr
    with dg.DagsterInstance.from_config(str(tmp_path / "dagster")) as instance:
        realtime = instance.get_latest_materialization_event(
            dg.AssetKey(["realtime", "engagement_enriched"])
        )
        assert realtime is not None and realtime.asset_materialization is not None
        appended = pl.read_delta(str(tmp_path / "home/tables/realtime/engagement_enriched"))
        assert realtime.asset_materialization.metadata["rows_appended"].value == appended.height
        archived = instance.get_materialized_partitions(
            dg.AssetKey(["stream_archive", "engagement"])
        )
        # A day is a partition once it is over: the late event's day is recorded, today not.
        assert archived == {"2026-03-02"}, archived


def _small_landing(home: Path, env: dict[str, str]) -> None:
    generated = run_cli(
        "generate",
        *("--days", "5", "--end", "2026-03-05", "--users", "300", "--items", "200"),
        *("--events-per-day", "1500"),
        env={**env, "SEQUENCE_PLATFORM_HOME": str(home)},
    )
    assert generated.returncode == 0, generated.stderr


def _table(home: Path, name: str) -> pl.DataFrame:
    frame = pl.read_delta(str(home / "tables" / name))
    return frame.sort(frame.columns)


def test_two_first_runs_for_different_days_lose_nothing(tmp_path: Path) -> None:
    """Two ``materialize`` processes started together on a fresh home and a fresh Dagster
    instance, for different days: every table holds every row of both, as if run one after
    the other. (Each first write used to go out as a whole-table overwrite, wiping the other
    run's days; the two instance set-ups used to collide on SQLite's ``CREATE TABLE``.)"""
    together, alone = tmp_path / "together", tmp_path / "alone"
    _small_landing(together, {})
    shutil.copytree(together / "landing", alone / "landing")
    env = {
        "SEQUENCE_PLATFORM_HOME": str(together),
        "SEQUENCE_PLATFORM_START_DATE": "2026-03-01",
        "DAGSTER_HOME": str(tmp_path / "dagster_together"),
    }
    runs = [
        subprocess.Popen(
            [sys.executable, "-m", "sequence_platform.cli", "materialize", *days],
            cwd=REPO,
            env={**os.environ, **env},
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        for days in (
            ("--start", "2026-03-01", "--end", "2026-03-02"),
            ("--start", "2026-03-03", "--end", "2026-03-04"),
        )
    ]
    outputs = [run.communicate(timeout=300)[0] for run in runs]
    assert [run.returncode for run in runs] == [0, 0], "\n".join(outputs)

    sequential = run_cli(
        "materialize",
        "--end",
        "2026-03-04",
        env={
            **env,
            "SEQUENCE_PLATFORM_HOME": str(alone),
            "DAGSTER_HOME": str(tmp_path / "dagster_alone"),
        },
    )
    assert sequential.returncode == 0, sequential.stdout + sequential.stderr
    for name in ("events/engagement", "features/items", "dead_letters/engagement"):
        both, reference = _table(together, name), _table(alone, name)
        assert both.height == reference.height > 0, name
        assert both.equals(reference), name
    # Every signal row is there; the enriched values may differ, since one run enriched its
    # days from feature days the other run was still writing.
    raw = ["dt", "event_id", "user_id", "item_id", "event_type", "event_time"]
    signals = "signals/engagement_enriched"
    assert _table(together, signals).select(raw).equals(_table(alone, signals).select(raw))
    for name in ("sequences/recent_saves/v1", "sequences/recent_engagement/v1"):
        days = _table(together, name)["dt"].unique().sort().cast(pl.String).to_list()
        assert days == [f"2026-03-0{day}" for day in range(1, 5)], name


def test_a_killed_run_is_marked_failed_not_left_started(tmp_path: Path) -> None:
    """``kill -9`` during a run leaves it ``STARTED`` in Dagster; the next ``materialize``
    (and the ``orphaned_runs`` sensor) finds its process gone and marks it failed."""
    import dagster as dg

    from sequence_platform.orchestration.orphans import PROCESS_TAG, orphaned_runs_sensor

    home, dagster_home = tmp_path / "home", tmp_path / "dagster"
    _small_landing(home, {})
    env = {
        "SEQUENCE_PLATFORM_HOME": str(home),
        "SEQUENCE_PLATFORM_START_DATE": "2026-03-01",
        "DAGSTER_HOME": str(dagster_home),
    }
    prepared = run_cli("materialize", "--end", "2026-03-01", "--select", "features/items", env=env)
    assert prepared.returncode == 0, prepared.stderr
    victim = start_cli("materialize", "--end", "2026-03-05", env=env)
    with dg.DagsterInstance.from_config(str(dagster_home)) as instance:
        started = dg.RunsFilter(statuses=[dg.DagsterRunStatus.STARTED])
        deadline = time.monotonic() + 120
        while not (stuck := instance.get_runs(filters=started)):
            assert victim.poll() is None, "the run ended before it could be killed"
            assert time.monotonic() < deadline
            time.sleep(0.02)
        victim.send_signal(signal.SIGKILL)
        victim.wait()
        run_id = stuck[0].run_id
        assert instance.get_run_by_id(run_id).status == dg.DagsterRunStatus.STARTED
        assert stuck[0].tags[PROCESS_TAG].split(":")[1] == str(victim.pid)

        # The sensor, evaluated by Dagster's own machinery, marks it failed.
        sensor = orphaned_runs_sensor()
        with dg.build_sensor_context(instance=instance) as context:
            tick = sensor(context)
        assert f"marked 1 run(s) failed, their process is gone: {run_id[:8]}" in str(tick)
        run = instance.get_run_by_id(run_id)
        assert run is not None and run.status == dg.DagsterRunStatus.FAILURE
        failure = instance.all_logs(run_id, of_type=dg.DagsterEventType.RUN_FAILURE)
        assert "ended without reporting" in (failure[-1].message or "")

    # A second victim, this time found by the next ``materialize``, which then succeeds.
    victim = start_cli("materialize", "--end", "2026-03-05", env=env)
    with dg.DagsterInstance.from_config(str(dagster_home)) as instance:
        while not instance.get_runs(filters=started):
            assert victim.poll() is None, "the run ended before it could be killed"
            time.sleep(0.02)
        victim.send_signal(signal.SIGKILL)
        victim.wait()
    again = run_cli("materialize", "--end", "2026-03-05", env=env)
    assert again.returncode == 0, again.stdout + again.stderr
    assert "failed: its process is gone" in again.stdout
    with dg.DagsterInstance.from_config(str(dagster_home)) as instance:
        assert instance.get_runs(filters=started) == []


def test_training_set_from_the_demo_spine(tmp_path: Path) -> None:
    """``training-set``: the demo's labelled impressions in, one row per usable spine row out,
    the others in a file of their own with the reason; the same answers as the offline reader."""
    from datetime import UTC, datetime

    from sequence_platform import read_sequences
    from sequence_platform.spec import load_catalog
    from sequence_platform.storage.layout import TableLayout

    home = tmp_path / "home"
    env = {
        "SEQUENCE_PLATFORM_HOME": str(home),
        "SEQUENCE_PLATFORM_START_DATE": "2026-03-01",
        "DAGSTER_HOME": str(tmp_path / "dagster"),
    }
    _small_landing(home, {})
    materialized = run_cli("materialize", "--end", "2026-03-05", env=env)
    assert materialized.returncode == 0, materialized.stdout + materialized.stderr
    labels = pl.read_parquet(home / "landing/labels/*/*.parquet")
    assert labels.columns == ["user_id", "ts", "item_id", "label"] and labels.height > 50
    half = labels.height // 2
    broken = pl.DataFrame(
        {"user_id": [None, 7], "ts": [datetime(2026, 3, 3, tzinfo=UTC), None]},
        schema={"user_id": pl.Int64(), "ts": labels.schema["ts"]},
    ).with_columns(item_id=pl.lit(1, dtype=pl.Int64), label=pl.lit(0, dtype=pl.Int8))
    spine = pl.concat([labels.head(half), broken, labels.slice(half)])
    spine.write_parquet(tmp_path / "spine.parquet")

    out = tmp_path / "out" / "training.parquet"
    result = run_cli(
        "training-set",
        *("--sequence", "recent_saves", "--sequence", "recent_engagement"),
        *("--spine", str(tmp_path / "spine.parquet"), "--out", str(out)),
        env=env,
    )
    assert result.returncode == 0, result.stderr
    written = f"Wrote {labels.height:,} training rows (recent_saves, recent_engagement as of each"
    assert written in result.stdout
    assert "2 spine rows could not be answered" in result.stderr
    rows = pl.read_parquet(out)
    assert rows.columns[:4] == ["user_id", "ts", "item_id", "label"]
    assert {"recent_saves__length", "recent_saves__current_category"} <= set(rows.columns)
    assert {"recent_engagement__embedding", "recent_engagement__age_seconds"} <= set(rows.columns)
    # Spine order within each day.
    assert rows.select("user_id", "ts").equals(
        labels.with_row_index().sort(pl.col("ts").dt.date(), "index").select("user_id", "ts")
    )
    rejected = pl.read_parquet(out.with_name("training.rejected.parquet"))
    assert rejected["reason"].to_list() == [
        "field 'user_id': missing (null)",
        "field 'ts': missing (null)",
    ]
    assert rejected["spine_row"].to_list() == [half + 1, half + 2]
    catalog = load_catalog(REPO / "definitions")
    layout = TableLayout(str(home / "tables"))
    for row in rows.filter(pl.col("recent_saves__length") > 0).head(5).iter_rows(named=True):
        offline = read_sequences(
            "recent_saves",
            as_of=row["ts"],
            users=[row["user_id"]],
            catalog=catalog,
            layout=layout,
        )
        assert offline["event_id"][0].to_list() == row["recent_saves__event_id"]

    missing = run_cli(
        "training-set", "--sequence", "nope", "--spine", str(out), "--out", str(out), env=env
    )
    assert missing.returncode == 2 and "Unknown sequence nope" in missing.stderr
    no_ts = tmp_path / "no_ts.parquet"
    pl.DataFrame({"user_id": [1]}).write_parquet(no_ts)
    refused = run_cli(
        "training-set",
        "--sequence",
        "recent_saves",
        "--spine",
        str(no_ts),
        "--out",
        str(out),
        env=env,
    )
    assert refused.returncode == 2 and "the spine has no column ts" in refused.stderr


MATERIALIZE_ONE_DAY = ("--end=2026-03-01", "--select=features/items")


def test_materialize_without_dagster_home_uses_the_project_local_one(tmp_path: Path) -> None:
    home = tmp_path / "home"
    _small_landing(home, {})
    env = {k: v for k, v in os.environ.items() if k != "DAGSTER_HOME"}
    env.update(SEQUENCE_PLATFORM_HOME=str(home), SEQUENCE_PLATFORM_START_DATE="2026-03-01")
    done = subprocess.run(
        [*(sys.executable, "-m", "sequence_platform.cli", "materialize"), *MATERIALIZE_ONE_DAY],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr
    assert f"DAGSTER_HOME={tmp_path / '.dagster_home'}" in done.stdout
    assert (tmp_path / ".dagster_home" / "dagster.yaml").exists()


@pytest.mark.parametrize("collecting", [True, False])
def test_materialize_collects_no_garbage_while_starting_and_restores_the_collector(
    monkeypatch: pytest.MonkeyPatch, collecting: bool
) -> None:
    """Starting (imports, definitions, instance) runs without the collector; from the run's
    start what is alive is frozen out of its walks; afterwards the collector is as it was."""
    seen: list[tuple[bool, bool]] = []

    def run(args: argparse.Namespace, started: Callable[[], None]) -> int:
        seen.append((gc.isenabled(), gc.get_freeze_count() > 0))
        started()
        seen.append((gc.isenabled(), gc.get_freeze_count() > 0))
        return 0

    monkeypatch.setattr(cli, "_materialize_range", run)
    (gc.enable if collecting else gc.disable)()
    try:
        assert cli._materialize(argparse.Namespace()) == 0
        after = (gc.isenabled(), gc.get_freeze_count())
    finally:
        gc.enable()
    assert seen == [(False, False), (collecting, True)]
    assert after == (collecting, 0)
