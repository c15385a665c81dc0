"""Cost of the batch path: the platform's ``materialize`` against a plain Polars script.

Generates a landing zone (the 1M-event case is ``sequence-platform generate --days 30
--end 2026-03-30 --users 50000 --items 20000 --events-per-day 33000``), then runs, each in
its own process and measured for wall time and peak resident memory (see measurement.py):

- the platform: ``sequence-platform materialize`` for all the days, through Dagster, on a
  new Dagster instance (created before the clock starts, as ``make install`` creates the
  project's: creating its databases is set-up, about 0.7 s once) and a data home holding a
  copy of the landing zone, of the assets
  whose tables the reference writes too (events, features, signals, sequences; training sets
  only with ``--all-assets``, and then the comparison is no longer like for like);
- the reference: ``benchmarks/reference_pipeline.py`` on the same landing zone.

Each side runs ``--repeat`` times (default 3), alternating, each time on fresh tables (and, for
the platform, a fresh Dagster instance and copy of the landing zone); the times compared are
the medians, as single runs move by up to a third on a shared machine (every time is kept
in the result file). Then it checks that both give the same sequence snapshots (untimed) and
compares time, memory (the highest of the runs) and bytes on disk per table family. Targets:
time within 1.3x of the reference, peak memory at most 1.5 GB at 1M events, all tables at most
6x the landing zone, sequences at most 2x the signals (the landing zone counted is what those
tables read: engagement and items). ``--events 5M`` or ``20M`` scale the users with the
events.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
from datetime import date, timedelta
from pathlib import Path

from benchmarks.measurement import (
    REPO,
    Comparison,
    Measured,
    count_label,
    directory_bytes,
    format_table,
    parse_count,
    require_success,
    run_measured,
    table_bytes,
    write_result,
)
from benchmarks.reference_pipeline import ASSETS, LANDING
from sequence_platform.orchestration.instance import open_instance, prepare_dagster_home

ONE_MILLION = 1_000_000
USERS_PER_MILLION = 50_000
TIME_RATIO_TARGET = 1.3
PEAK_RSS_TARGET = 1.5e9
TABLES_PER_LANDING_TARGET = 6.0
SEQUENCES_PER_SIGNALS_TARGET = 2.0


def at_least_one(text: str) -> int:
    count = int(text)
    if count < 1:
        raise argparse.ArgumentTypeError(f"at least 1, not {count}")
    return count


def clean_environment(**settings: str) -> dict[str, str]:
    """This process's environment without any platform settings, plus ``settings``."""
    inherited = {k: v for k, v in os.environ.items() if not k.startswith("SEQUENCE_PLATFORM_")}
    return {**inherited, **settings}


def generate(args: argparse.Namespace, home: Path, log: Path) -> int:
    """Write the landing zone under ``home``; returns the number of well-formed events."""
    start = args.end - timedelta(days=args.days - 1)
    command = [
        sys.executable,
        "-m",
        "sequence_platform.cli",
        "generate",
        f"--days={args.days}",
        f"--end={args.end.isoformat()}",
        f"--users={args.users}",
        f"--items={args.items}",
        f"--events-per-day={args.events_per_day}",
        f"--seed={args.seed}",
    ]
    measured = run_measured(
        command, env=clean_environment(SEQUENCE_PLATFORM_HOME=str(home)), log=log
    )
    require_success("generate", measured)
    wrote = re.search(r"Wrote ([\d,]+) events", log.read_text())
    print(f"generated {args.days} days from {start} into {home} ({measured.seconds:.1f} s)")
    return int(wrote.group(1).replace(",", "")) if wrote else 0


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--events", type=parse_count, default=ONE_MILLION, help="1M, 5M, 20M")
    parser.add_argument("--days", type=int, default=30)
    parser.add_argument("--end", type=date.fromisoformat, default=date(2026, 3, 30))
    parser.add_argument("--users", type=int, help="default 50,000 per million events")
    parser.add_argument("--items", type=int, default=20_000)
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--checks", type=int, default=3, help="snapshot cutoffs compared")
    parser.add_argument(
        "--repeat", type=at_least_one, default=3, help="runs of each side (medians)"
    )
    parser.add_argument(
        "--all-assets", action="store_true", help="the platform builds training sets too"
    )
    parser.add_argument("--workdir", type=Path, help="keep the data homes and logs here")
    parser.add_argument("--json", type=Path, help="result file (default bench/results/...)")
    args = parser.parse_args()
    args.users = args.users or max(50, round(args.events * USERS_PER_MILLION / ONE_MILLION))
    # 33,000 a day for 30 days is the 1M case: whole thousands a day.
    per_day = args.events // args.days
    args.events_per_day = per_day // 1000 * 1000 if per_day >= 1000 else per_day

    work = args.workdir or Path(tempfile.mkdtemp(prefix="bench_batch-"))
    work.mkdir(parents=True, exist_ok=True)
    try:
        run(args, work)
    finally:
        if args.workdir is None:
            shutil.rmtree(work, ignore_errors=True)


def run(args: argparse.Namespace, work: Path) -> None:
    source = work / "source"
    platform_home = work / "platform"
    reference_tables = work / "reference" / "tables"
    for folder in (source, platform_home, work / "reference", work / "dagster"):
        shutil.rmtree(folder, ignore_errors=True)
    events = generate(args, source, work / "generate.log")
    start = args.end - timedelta(days=args.days - 1)
    landing_by_folder = {
        folder.name: directory_bytes(folder) for folder in (source / "landing").iterdir()
    }
    landing = sum(landing_by_folder.get(name, 0) for name in LANDING)

    materialize = [sys.executable, "-m", "sequence_platform.cli", "materialize"]
    selected = [] if args.all_assets else [f"--select={asset}" for asset in ASSETS]
    script = [sys.executable, str(REPO / "benchmarks" / "reference_pipeline.py")]
    paths = ["--home", str(source), "--tables", str(reference_tables)]
    platform_runs: list[Measured] = []
    run_times: list[float] = []
    reference_runs: list[Measured] = []
    steps_each: list[dict[str, float]] = []
    for attempt in range(1, args.repeat + 1):
        of = f" ({attempt} of {args.repeat})" if args.repeat > 1 else ""
        # Fresh tables and instance each time: a second run over existing tables is other work.
        for folder in (platform_home, work / "dagster", reference_tables):
            shutil.rmtree(folder, ignore_errors=True)
        shutil.copytree(source / "landing", platform_home / "landing")
        shutil.copy(source / "start_date", platform_home / "start_date")
        prepare_dagster_home(work / "dagster")
        print(f"platform: materialize {start}..{args.end} through Dagster{of} ...", flush=True)
        env = clean_environment(
            SEQUENCE_PLATFORM_HOME=str(platform_home), DAGSTER_HOME=str(work / "dagster")
        )
        platform = run_measured(
            [
                *materialize,
                f"--start={start.isoformat()}",
                f"--end={args.end.isoformat()}",
                *selected,
            ],
            env=env,
            log=work / "materialize.log",
        )
        require_success("materialize", platform)
        print(f"  {platform.seconds:.1f} s, peak RSS {platform.peak_rss_bytes / 1e6:,.0f} MB")
        platform_runs.append(platform)
        run_times.append(run_seconds(work / "dagster"))

        print(f"reference: plain Polars script{of} ...", flush=True)
        reference = run_measured(
            [*script, *paths], env=clean_environment(), log=work / "reference.log"
        )
        require_success("reference", reference)
        print(f"  {reference.seconds:.1f} s, peak RSS {reference.peak_rss_bytes / 1e6:,.0f} MB")
        reference_runs.append(reference)
        steps_each.append(json.loads(reference.log.read_text().strip().splitlines()[-1]))
    # The script's figures of its last run, each step's time the median of the runs; the
    # median of the runs' step totals is what the Dagster run is compared with.
    totals = [sum(v for k, v in each.items() if k.endswith("_s")) for each in steps_each]
    steps = {
        key: statistics.median(each[key] for each in steps_each) if key.endswith("_s") else value
        for key, value in steps_each[-1].items()
    }

    print("checking that both give the same sequence snapshots ...", flush=True)
    checked = subprocess.run(
        [
            *script,
            *paths,
            "--compare-with",
            str(platform_home / "tables"),
            f"--checks={args.checks}",
        ],
        env=clean_environment(),
        capture_output=True,
        text=True,
    )
    if checked.returncode != 0:
        raise SystemExit(f"the platform's snapshots differ from the reference:\n{checked.stderr}")
    compared = json.loads(checked.stdout.strip().splitlines()[-1])

    platform_bytes = table_bytes(platform_home / "tables")
    reference_bytes = table_bytes(reference_tables)
    results = {
        "events": events,
        "days": args.days,
        "landing_bytes": landing,
        "landing_bytes_by_folder": landing_by_folder,
        "platform_assets": "all" if args.all_assets else list(ASSETS),
        "platform": {
            "seconds": statistics.median(run.seconds for run in platform_runs),
            "seconds_each": [run.seconds for run in platform_runs],
            "run_seconds": statistics.median(run_times),
            "run_seconds_each": run_times,
            "peak_rss_bytes": max(run.peak_rss_bytes for run in platform_runs),
            "table_bytes": platform_bytes,
        },
        "reference": {
            "seconds": statistics.median(run.seconds for run in reference_runs),
            "seconds_each": [run.seconds for run in reference_runs],
            "peak_rss_bytes": max(run.peak_rss_bytes for run in reference_runs),
            "table_bytes": reference_bytes,
            "steps": steps,
            "steps_seconds": statistics.median(totals),
            "steps_seconds_each": totals,
        },
        "snapshots_compared": compared,
        "platform_home": str(platform_home) if args.workdir else None,
    }
    comparisons = compare(args, results)
    path = write_result(
        "bench_batch",
        args.json,
        {k: v.isoformat() if isinstance(v, date) else v for k, v in vars(args).items()},
        results,
        comparisons,
    )
    print()
    print(format_table([c.as_row() for c in comparisons]))
    print(f"\nwrote {path}")


def run_seconds(dagster_home: Path) -> float:
    """How long the Dagster run itself took (its start to its end, as the instance recorded
    them): the command's time without starting the process, importing, opening the instance
    and creating the run."""
    with open_instance(dagster_home) as instance:
        [record] = instance.get_run_records(limit=1)
        assert record.start_time is not None and record.end_time is not None
        return record.end_time - record.start_time


def compare(args: argparse.Namespace, results: dict[str, object]) -> list[Comparison]:
    platform, reference = results["platform"], results["reference"]
    assert isinstance(platform, dict) and isinstance(reference, dict)
    landing = results["landing_bytes"]
    assert isinstance(landing, int)
    size = f"{count_label(args.events)} events"
    if args.all_assets:
        size += ", platform: every asset"
    at_one_million = args.events == ONE_MILLION
    seconds = (platform["seconds"], reference["seconds"])
    rows = [
        Comparison.of(
            f"batch, {args.days} days, {size}: wall time",
            *seconds,
            "s",
            f"ratio <= {TIME_RATIO_TARGET}",
            seconds[0] <= TIME_RATIO_TARGET * seconds[1],
        ),
        # Where the time goes: the run alone against the script's steps (both without their
        # process start and imports), no target.
        Comparison.of(
            f"batch, {size}: the Dagster run alone vs the script's steps",
            platform["run_seconds"],
            reference["steps_seconds"],
            "s",
            "",
            None,
        ),
        Comparison.of(
            f"batch, {size}: peak RSS",
            platform["peak_rss_bytes"],
            reference["peak_rss_bytes"],
            "bytes",
            f"platform <= {PEAK_RSS_TARGET / 1e9:g} GB at 1M events",
            platform["peak_rss_bytes"] <= PEAK_RSS_TARGET if at_one_million else None,
        ),
    ]
    mine, theirs = platform["table_bytes"], reference["table_bytes"]
    for family in sorted(mine.keys() | theirs.keys()):
        rows.append(
            Comparison.of(
                f"bytes on disk: {family}",
                mine.get(family),
                theirs.get(family),
                "bytes",
                "",
                None,
            )
        )

    def share(sizes: dict[str, int], part: str, whole: str | int) -> float:
        denominator = sizes.get(whole, 0) if isinstance(whole, str) else whole
        return sizes.get(part, 0) / denominator if denominator else 0.0

    total_mine = {"all": sum(mine.values())}
    total_theirs = {"all": sum(theirs.values())}
    tables_per_landing = share(total_mine, "all", landing)
    sequences_per_signals = share(mine, "sequences", "signals")
    rows += [
        Comparison.of(
            "all tables / landing bytes",
            tables_per_landing,
            share(total_theirs, "all", landing),
            "x",
            f"platform <= {TABLES_PER_LANDING_TARGET:g}x",
            tables_per_landing <= TABLES_PER_LANDING_TARGET,
        ).without_ratio(),
        Comparison.of(
            "sequences / signals bytes",
            sequences_per_signals,
            share(theirs, "sequences", "signals"),
            "x",
            f"platform <= {SEQUENCES_PER_SIGNALS_TARGET:g}x",
            sequences_per_signals <= SEQUENCES_PER_SIGNALS_TARGET,
        ).without_ratio(),
    ]
    return rows


if __name__ == "__main__":
    main()
