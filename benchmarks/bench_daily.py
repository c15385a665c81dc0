"""Daily cost of a sequence: one day's incremental run at lookback 30 against lookback 7.

A day of a sequence table stores only what that day adds (each user's newest rows of the
day), so the daily run should cost the same whatever the lookback: the window is combined
when it is read, not when it is written. This builds events, features and signals for the
days, then two copies of ``recent_engagement`` that differ only in their lookback (7 and 30
days), every day but the last; then it times the batch step of the last day
(``runtime.batch.build_sequence``) for each, alternately, and reports the medians.
Target: lookback 30 within 1.3x of lookback 7 at the same daily volume.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from datetime import date, timedelta
from pathlib import Path

import polars as pl

from benchmarks.measurement import Comparison, format_table, write_result
from sequence_platform.ingest.generate import GenerationConfig, generate_landing
from sequence_platform.runtime.batch import (
    BatchContext,
    build_events,
    build_features,
    build_sequence,
    build_signal,
)
from sequence_platform.spec import load_catalog
from sequence_platform.spec.catalog import Catalog, LoadedDefinition
from sequence_platform.storage.layout import TableLayout

RATIO_TARGET = 1.3
SEQUENCE = "recent_engagement"


def lookback_catalog(lookbacks: list[int]) -> tuple[Catalog, dict[int, str]]:
    """The deployment's catalog plus one copy of ``recent_engagement`` per lookback."""
    base = load_catalog()
    spec = base.sequences[SEQUENCE]
    copies = {
        days: spec.model_copy(update={"name": f"{SEQUENCE}_lookback_{days}", "lookback_days": days})
        for days in lookbacks
    }
    added = [LoadedDefinition(copy, f"{Path(__file__).name}") for copy in copies.values()]
    catalog = Catalog([*base.definitions, *added])
    return catalog, {days: copy.name for days, copy in copies.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--days", type=int, default=30)
    parser.add_argument("--end", type=date.fromisoformat, default=date(2026, 3, 30))
    parser.add_argument("--events-per-day", type=int, default=33_000)
    parser.add_argument("--users", type=int, default=50_000)
    parser.add_argument("--items", type=int, default=20_000)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--json", type=Path, help="result file (default bench/results/...)")
    args = parser.parse_args()
    lookbacks = [7, 30]
    first = args.end - timedelta(days=args.days - 1)
    catalog, names = lookback_catalog(lookbacks)
    timings: dict[int, list[float]] = {days: [] for days in lookbacks}
    with tempfile.TemporaryDirectory(prefix="bench_daily-") as folder:
        home = Path(folder)
        config = GenerationConfig(
            start=first,
            days=args.days,
            users=args.users,
            items=args.items,
            events_per_day=args.events_per_day,
        )
        print(f"building {args.days} days of events, features and signals ...", flush=True)
        generate_landing(config, home)
        ctx = BatchContext(catalog, TableLayout(str(home / "tables")), home)
        for table in catalog.feature_tables:
            build_features(ctx, table, first, args.end)
        for source in catalog.sources:
            build_events(ctx, source, first, args.end)
        signal = catalog.sequences[SEQUENCE].signal
        build_signal(ctx, signal, first, args.end)
        signal_rows = (
            pl.scan_delta(ctx.layout.signals(signal))
            .filter(pl.col("dt") == args.end)
            .collect()
            .height
        )
        for name in names.values():
            build_sequence(ctx, name, first, args.end - timedelta(days=1))
        print(f"timing the sequence step of {args.end}, {args.repeats} times each ...", flush=True)
        written: dict[int, int] = {}
        for repeat in range(args.repeats):
            # Alternating the order, so that neither lookback always runs on a warmer cache.
            for days in lookbacks if repeat % 2 == 0 else lookbacks[::-1]:
                began = time.perf_counter()
                outcome = build_sequence(ctx, names[days], args.end, args.end)
                timings[days].append(time.perf_counter() - began)
                written[days] = outcome.written.height

    medians = {days: statistics.median(values) * 1000 for days, values in timings.items()}
    results = {
        "day": args.end.isoformat(),
        "signal_rows_of_the_day": signal_rows,
        "rows_written": {str(days): rows for days, rows in written.items()},
        "median_ms": {str(days): value for days, value in medians.items()},
        "timings_ms": {str(days): [t * 1000 for t in values] for days, values in timings.items()},
    }
    comparisons = [
        Comparison.of(
            f"daily sequence step, {args.events_per_day:,} events/day: lookback 30 "
            "(reference: lookback 7)",
            medians[30],
            medians[7],
            "ms",
            f"ratio <= {RATIO_TARGET}",
            medians[30] <= RATIO_TARGET * medians[7],
        )
    ]
    parameters = {**vars(args), "end": args.end.isoformat(), "lookbacks": lookbacks}
    path = write_result("bench_daily", args.json, parameters, results, comparisons)
    print(format_table([c.as_row() for c in comparisons]))
    print(f"\nwrote {path}")


if __name__ == "__main__":
    main()
