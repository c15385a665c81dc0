"""Training sets: a spine of labelled instants answered by the platform against a straight-line
Polars as-of computation of the same result.

On materialized benchmark data (``--home``, e.g. the one ``bench_batch`` leaves, or generated
and materialized here), a spine of ``--spine-rows`` rows (random users, instants spread over
the days) is answered for ``recent_engagement`` twice, each in its own measured process:

- the platform: ``sequence-platform training-set --sequence recent_engagement ...``;
- the reference: this file's ``reference`` mode, a plain Polars script over the signal table
  (join each spine row to its user's signal rows, keep the window before ``ts``, newest
  first, the first ``max_length``), one day of spine at a time.

Both must write the same rows; the figures are wall time (target: platform within 1.5x) and
peak memory (bounded by one day of spine and the days of one window, not by the spine: compare
two spine sizes).
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
from datetime import UTC, date, datetime, timedelta
from pathlib import Path

import numpy as np
import polars as pl

from benchmarks.measurement import (
    REPO,
    Comparison,
    format_table,
    require_success,
    run_measured,
    write_result,
)

SEQUENCE = "recent_engagement"
RATIO_TARGET = 1.5


def make_spine(path: Path, rows: int, users: int, first: date, days: int, seed: int = 5) -> None:
    rng = np.random.default_rng(seed)
    start = datetime.combine(first, datetime.min.time(), tzinfo=UTC)
    offsets = np.sort(rng.integers(0, days * 86_400_000, rows))
    epoch_ms = int(start.timestamp() * 1000)
    spine = pl.DataFrame(
        {
            "user_id": rng.integers(1, users + 1, rows),
            "ts": pl.Series(epoch_ms + offsets).cast(pl.Datetime("ms", "UTC")),
            "label": rng.integers(0, 2, rows).astype(np.int8),
        }
    )
    spine.write_parquet(path)


def reference(tables: Path, spine_path: Path, out: Path) -> None:
    """The same training set in straight-line Polars: no platform code at all."""
    max_length, lookback = 100, timedelta(days=30)
    fields = ["item_id", "event_type", "surface", "dwell_bucket", "category", "embedding"]
    stored = ["event_id", "event_time", *fields]
    signal = pl.scan_delta(str(tables / "signals" / "engagement_enriched"))
    spine = pl.read_parquet(spine_path).with_row_index("__q")
    parts = []
    by_day = spine.with_columns(pl.col("ts").dt.date().alias("__day")).partition_by(
        "__day", as_dict=True, maintain_order=True
    )
    for (day,), queries in by_day.items():
        assert isinstance(day, date)
        rows = (
            signal.filter(pl.col("dt").is_between(day - lookback, day))
            .filter(pl.col("user_id").is_in(queries["user_id"].unique().implode()))
            .select("user_id", *stored)
            .collect()
            .with_row_index("__r")
        )
        picked = (
            queries.select("__q", "user_id", "ts")
            .join(rows.select("__r", "user_id", "event_time", "event_id"), on="user_id")
            .filter(
                (pl.col("event_time") < pl.col("ts"))
                & (pl.col("event_time") >= pl.col("ts") - lookback)
            )
            .sort(["__q", "event_time", "event_id"], descending=[False, True, True])
            .group_by("__q", maintain_order=True)
            .head(max_length)
        )
        chosen = rows.drop("user_id", "__r")[picked["__r"]].with_columns(
            picked["__q"],
            pl.Series(
                "age_seconds",
                (picked["ts"] - picked["event_time"]).dt.total_milliseconds().to_numpy() / 1000.0,
            ),
        )
        lists = chosen.group_by("__q", maintain_order=True).agg(
            pl.len().cast(pl.Int32).alias("length"), *stored, "age_seconds"
        )
        answered = queries.drop("__day").join(lists, on="__q", how="left", maintain_order="left")
        parts.append(
            answered.with_columns(
                pl.col("length").fill_null(0),
                *(
                    pl.col(name).fill_null(pl.lit([], dtype=answered.schema[name]))
                    for name in [*stored, "age_seconds"]
                ),
            ).drop("__q")
        )
    pl.concat(parts).write_parquet(out)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--home", type=Path, help="materialized data (default: make some)")
    parser.add_argument("--spine-rows", type=int, default=1_000_000)
    parser.add_argument("--days", type=int, default=30)
    parser.add_argument("--end", type=date.fromisoformat, default=date(2026, 3, 30))
    parser.add_argument("--users", type=int, default=50_000)
    parser.add_argument("--events-per-day", type=int, default=33_000)
    parser.add_argument("--json", type=Path, help="result file (default bench/results/...)")
    parser.add_argument("--reference", nargs=3, metavar=("TABLES", "SPINE", "OUT"))
    args = parser.parse_args()
    if args.reference:
        reference(*(Path(p) for p in args.reference))
        return 0

    work = Path(tempfile.mkdtemp(prefix="bench_training-"))
    try:
        code = measure(args, work)
    except BaseException:
        print(f"the spine, both outputs and the logs are kept in {work}", file=sys.stderr)
        raise
    shutil.rmtree(work, ignore_errors=True)
    return code


def measure(args: argparse.Namespace, work: Path) -> int:
    first = args.end - timedelta(days=args.days - 1)
    home = args.home or work / "home"
    env = {**os.environ, "SEQUENCE_PLATFORM_HOME": str(home), "DAGSTER_HOME": str(work / "dh")}
    cli = [sys.executable, "-m", "sequence_platform.cli"]
    if args.home is None:
        print(f"generating and materializing {args.days} days ...", flush=True)
        for step in (
            [
                "generate",
                f"--days={args.days}",
                f"--end={args.end}",
                f"--users={args.users}",
                f"--events-per-day={args.events_per_day}",
            ],
            ["materialize", f"--end={args.end}", "--select=features/items"],
            ["materialize", f"--end={args.end}"],
        ):
            subprocess.run([*cli, *step], cwd=REPO, env=env, check=True, capture_output=True)
    spine = work / "spine.parquet"
    make_spine(spine, args.spine_rows, args.users, first + timedelta(days=1), args.days - 1)
    ours, theirs = work / "platform.parquet", work / "reference.parquet"
    print(f"answering {args.spine_rows:,} spine rows ...", flush=True)
    platform = run_measured(
        [*cli, "training-set", f"--sequence={SEQUENCE}", f"--spine={spine}", f"--out={ours}"],
        env=env,
        log=work / "platform.log",
    )
    require_success("the platform's training-set", platform)
    plain = run_measured(
        [sys.executable, __file__, "--reference", str(home / "tables"), str(spine), str(theirs)],
        env=env,
        log=work / "reference.log",
    )
    require_success("the reference", plain)
    got, expected = pl.read_parquet(ours), pl.read_parquet(theirs)
    if not got.select(expected.columns).equals(expected):
        raise AssertionError(f"the platform's training set differs from the reference ({work})")
    ratio = platform.seconds / plain.seconds
    comparisons = [
        Comparison.of(
            f"training set, {args.spine_rows:,} spine rows",
            platform.seconds,
            plain.seconds,
            "s",
            f"<= {RATIO_TARGET}x",
            ratio <= RATIO_TARGET,
        ),
        Comparison.of(
            "training set, peak memory",
            platform.peak_rss_bytes,
            plain.peak_rss_bytes,
            "bytes",
            "a day of spine + a window",
            None,
        ),
    ]
    path = write_result(
        "bench_training",
        args.json,
        {"spine_rows": args.spine_rows, "days": args.days, "sequence": SEQUENCE},
        {
            "platform_seconds": platform.seconds,
            "reference_seconds": plain.seconds,
            "platform_peak_rss_bytes": platform.peak_rss_bytes,
            "reference_peak_rss_bytes": plain.peak_rss_bytes,
            "rows": got.height,
        },
        comparisons,
    )
    print(format_table([c.as_row() for c in comparisons]))
    print(f"written {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
