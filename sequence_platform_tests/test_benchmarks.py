"""Every benchmark runs, end to end, at a tiny size and writes its result document.

Speed is never asserted here (``make bench`` reports it against its targets); what is checked
is that each benchmark still runs against the platform as it is and reports every figure, so
that a change elsewhere cannot quietly break ``make bench``. The batch benchmark does assert
one value on the way: the platform's sequence snapshots equal the plain Polars reference's.
"""

from __future__ import annotations

import json
import re
import shutil
import statistics
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from sequence_platform.ingest.kafka_broker import KafkaBroker
from sequence_platform_tests.ci import unavailable

REPO = Path(__file__).resolve().parents[1]
DOCUMENT = {"benchmark", "created", "machine", "parameters", "results", "comparisons"}
ROW = {"what", "platform", "reference", "unit", "ratio", "target", "met"}
MACHINE = {"cores", "ram_bytes", "cpu_model", "os", "python", "packages"}


def run_benchmark(script: str, *options: str) -> subprocess.CompletedProcess[str]:
    done = subprocess.run(
        [sys.executable, str(REPO / "benchmarks" / script), *options],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=540,
    )
    assert done.returncode == 0, f"{script} failed:\n{done.stdout[-4000:]}\n{done.stderr[-4000:]}"
    return done


def check_document(path: Path, name: str) -> dict[str, Any]:
    document: dict[str, Any] = json.loads(path.read_text())
    assert document.keys() >= DOCUMENT
    assert document["benchmark"] == name
    assert document["machine"].keys() >= MACHINE
    assert document["comparisons"], f"{name} compares nothing"
    for row in document["comparisons"]:
        assert set(row) == ROW, row
    return document


@pytest.mark.slow
def test_batch_daily_and_serving_benchmarks_write_their_results(tmp_path: Path) -> None:
    if shutil.which("wrk") is None:
        unavailable("wrk is not installed ('make test' installs it; or apt-get install wrk)")
    done = run_benchmark(
        "run_all.py",
        "--events=4000",
        "--days=2",
        "--items=300",
        "--seconds=1",
        "--repeats=1",
        "--batch-repeats=2",
        "--skip=freshness",
        f"--results={tmp_path}",
    )
    written = {path.name.split("-")[0]: path for path in tmp_path.glob("*.json")}
    assert set(written) == {"bench_batch", "bench_daily", "bench_training", "bench_serving"}
    header = r"^what +\| platform +\| reference +\| ratio +\| target +\| met\?$"
    assert re.search(header, done.stdout, re.MULTILINE), done.stdout[-3000:]

    batch = check_document(written["bench_batch"], "bench_batch")["results"]
    for side in ("platform", "reference"):
        assert {"seconds", "peak_rss_bytes", "table_bytes"} <= batch[side].keys()
        # Two runs of each side (--batch-repeats=2), compared by their medians.
        assert len(batch[side]["seconds_each"]) == 2
        assert batch[side]["seconds"] == statistics.median(batch[side]["seconds_each"])
        assert {"events", "signals", "sequences"} <= batch[side]["table_bytes"].keys()
    assert len(batch["platform"]["run_seconds_each"]) == 2
    assert len(batch["reference"]["steps_seconds_each"]) == 2
    assert set(batch["snapshots_compared"]) == {"recent_engagement", "recent_saves"}
    assert batch["landing_bytes"] > 0

    daily = check_document(written["bench_daily"], "bench_daily")["results"]
    assert set(daily["median_ms"]) == {"7", "30"}

    training = check_document(written["bench_training"], "bench_training")["results"]
    assert training["rows"] == 4000  # a spine row per event; both sides wrote the same rows
    assert {"platform_seconds", "reference_seconds", "platform_peak_rss_bytes"} <= training.keys()

    serving = check_document(written["bench_serving"], "bench_serving")["results"]
    requests = {"records", "columnar", "arrow", "unknown_user", "batch_100"}
    assert serving["platform_workers"]["workers"] >= 2
    for side in ("platform", "floor"):
        assert requests <= serving[side].keys()
        connections = [run["connections"] for run in serving[side]["records"]]
        assert connections == [1, 8]
        for runs in serving[side].values():
            for run in runs:
                assert {"p50_ms", "p99_ms", "requests_per_s", "errors"} <= run.keys()
                assert run["errors"] == 0


@pytest.mark.kafka
@pytest.mark.slow
def test_the_freshness_benchmark_writes_its_result(
    kafka_broker: KafkaBroker, tmp_path: Path
) -> None:
    result = tmp_path / "freshness.json"
    run_benchmark(
        "bench_freshness.py",
        "--paths=indexer",
        "--rate=20",
        "--seconds=2",
        f"--bootstrap={kafka_broker.bootstrap}",
        f"--json={result}",
    )
    freshness = check_document(result, "bench_freshness")["results"]
    assert {"events", "p50_s", "p95_s", "max_s"} <= freshness["indexer"].keys()


def test_the_dagster_recording_benchmark_counts_its_events() -> None:
    done = run_benchmark("bench_dagster_events.py", "--days=3", "--checks=2")
    lines = done.stdout.splitlines()
    assert [line.split(":")[0] for line in lines] == [
        "the platform's instance",
        "Dagster's default",
    ]
    assert all("3 days x (1 materialization + 2 check results): 9 events" in line for line in lines)
