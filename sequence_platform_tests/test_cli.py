"""The ``sequence-platform`` command, run as a user runs it: a subprocess with environment."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import polars as pl

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


def test_validate_lists_the_example_definitions() -> None:
    result = run_cli("validate")
    assert result.returncode == 0, result.stderr
    assert "sequence       recent_saves" in result.stdout
    assert "5 definitions are valid." in result.stdout


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
        "events/engagement",
        "features/items",
        "signals/engagement_enriched",
        "sequences/recent_engagement",
        "sequences/recent_saves",
    ]
    snapshots = pl.read_delta(str(tmp_path / "home/tables/sequences/recent_saves/v1"))
    assert sorted(snapshots["dt"].unique().cast(pl.String)) == ["2026-03-01", "2026-03-02"]
    # The runs are on the project-local Dagster instance, for the UI to show.
    assert (tmp_path / "dagster" / "dagster.yaml").exists()
    assert any((tmp_path / "dagster").rglob("*.db"))
