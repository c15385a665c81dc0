"""Every benchmark, one summary table: ``make bench``.

Runs, each as its own process, ``bench_batch`` (platform vs. a plain Polars script),
``bench_daily`` (daily sequence cost, lookback 30 vs. 7), ``bench_training`` (a spine of as
many rows as events against a straight-line Polars as-of computation), ``bench_serving``
(the read service vs. the HTTP floor, on the data ``bench_batch`` materialized) and
``bench_freshness``
(produce -> served). Each writes its result, with a description of the machine, to
``bench/results/<name>-<UTC timestamp>.json``; then one table shows every figure:

    what | platform | reference | ratio | target | met?

Sizes: ``--events 1M`` (default), ``5M`` or ``20M``; the serving and freshness runs take
``--seconds`` and ``--freshness-seconds``. ``--skip`` leaves a benchmark out.
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import tempfile
from datetime import UTC, date, datetime
from pathlib import Path

from benchmarks.measurement import REPO, RESULTS, format_table, parse_count

BENCHMARKS = ("batch", "daily", "training", "serving", "freshness")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--events", default="1M", help="1M, 5M, 20M (or any count)")
    parser.add_argument("--days", type=int, default=30)
    parser.add_argument("--end", default="2026-03-30")
    parser.add_argument("--items", type=int, default=20_000)
    parser.add_argument("--repeats", type=int, default=5, help="of the daily step")
    parser.add_argument(
        "--batch-repeats", type=int, default=3, help="runs of each side of the batch (medians)"
    )
    parser.add_argument("--seconds", type=int, default=10, help="per wrk run")
    parser.add_argument("--freshness-seconds", type=float, default=30.0)
    parser.add_argument("--freshness-paths", default="indexer,sensor")
    parser.add_argument("--bootstrap", help="a running Kafka broker for the freshness run")
    parser.add_argument("--skip", action="append", default=[], choices=BENCHMARKS)
    parser.add_argument("--results", type=Path, default=RESULTS)
    parser.add_argument("--workdir", type=Path, help="keep the benchmark data here")
    args = parser.parse_args()
    date.fromisoformat(args.end)
    events = parse_count(args.events)
    stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ")
    work = args.workdir or Path(tempfile.mkdtemp(prefix="bench-"))
    sizes = [f"--days={args.days}", f"--end={args.end}", f"--items={args.items}"]
    per_day = events // args.days
    users = max(50, round(events * 50_000 / 1_000_000))
    batch_home = work / "batch" / "platform"
    commands: dict[str, list[str]] = {
        "batch": [
            "bench_batch.py",
            f"--events={events}",
            *sizes,
            f"--workdir={work / 'batch'}",
            f"--repeat={args.batch_repeats}",
        ],
        "daily": [
            "bench_daily.py",
            *sizes,
            f"--events-per-day={per_day // 1000 * 1000 if per_day >= 1000 else per_day}",
            f"--users={users}",
            f"--repeats={args.repeats}",
        ],
        "training": [
            "bench_training.py",
            f"--spine-rows={events}",
            f"--days={args.days}",
            f"--end={args.end}",
            f"--users={users}",
            f"--events-per-day={per_day}",
            *([f"--home={batch_home}"] if "batch" not in args.skip else []),
        ],
        "serving": [
            "bench_serving.py",
            f"--seconds={args.seconds}",
            *(
                [f"--home={batch_home}"]
                if "batch" not in args.skip
                else [f"--events={events}", *sizes]
            ),
        ],
        "freshness": [
            "bench_freshness.py",
            f"--seconds={args.freshness_seconds}",
            f"--paths={args.freshness_paths}",
            *([f"--bootstrap={args.bootstrap}"] if args.bootstrap else []),
        ],
    }
    written: list[Path] = []
    failed: list[str] = []
    try:
        for name, (script, *options) in commands.items():
            if name in args.skip:
                continue
            path = args.results / f"bench_{name}-{stamp}.json"
            print(f"\n=== {script} {' '.join(options)}", flush=True)
            command = [sys.executable, str(REPO / "benchmarks" / script), *options]
            done = subprocess.run([*command, f"--json={path}"], cwd=REPO)
            if done.returncode != 0 or not path.exists():
                failed.append(name)
                print(f"!!! {script} failed (exit {done.returncode})", flush=True)
                if name == "batch":
                    # Serving reads the data the batch run materializes.
                    commands["serving"] = [
                        "bench_serving.py",
                        f"--seconds={args.seconds}",
                        f"--events={events}",
                        *sizes,
                    ]
                continue
            written.append(path)
    finally:
        if args.workdir is None:
            shutil.rmtree(work, ignore_errors=True)

    rows = [row for path in written for row in json.loads(path.read_text())["comparisons"]]
    print(f"\nbenchmarks at {events:,} events ({stamp}):\n")
    print(format_table(rows))
    shown = [str(p.relative_to(REPO)) if p.is_relative_to(REPO) else str(p) for p in written]
    print("\nresults: " + ", ".join(shown))
    if failed:
        print(f"failed: {', '.join(failed)}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
