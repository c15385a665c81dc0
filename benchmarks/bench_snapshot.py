"""Daily cost of a sequence asset: incremental advance against the full lookback rebuild.

Runs the asset's own batch step on real Delta tables twice for the same day: once with the
previous day's snapshot present (the incremental path: previous snapshot + one day of signal),
once without it (the fallback: read and assemble the whole lookback window). Both must write
the same snapshot; the ratio of their times is the figure of merit, so it means the same on
any machine. Run with ``make bench``.
"""

from __future__ import annotations

import argparse
import shutil
import statistics
import tempfile
import time
from datetime import date, timedelta
from pathlib import Path

import polars as pl

from sequence_platform.ingest.generate import GenerationConfig, generate_landing
from sequence_platform.runtime.batch import (
    BatchContext,
    build_events,
    build_features,
    build_sequence_days,
    build_signal_days,
)
from sequence_platform.spec import load_catalog
from sequence_platform.storage.delta import DT
from sequence_platform.storage.layout import TableLayout


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--days", type=int, default=30)
    parser.add_argument("--events-per-day", type=int, default=20_000)
    parser.add_argument("--users", type=int, default=5_000)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--sequence", default="recent_engagement")
    args = parser.parse_args()

    catalog = load_catalog()
    spec = catalog.sequences[args.sequence]
    first = date(2026, 3, 1)
    last = first + timedelta(days=args.days - 1)
    with tempfile.TemporaryDirectory() as folder:
        home = Path(folder)
        config = GenerationConfig(
            start=first, days=args.days, users=args.users, events_per_day=args.events_per_day
        )
        generate_landing(config, home)
        incremental = BatchContext(catalog, TableLayout(str(home / "incremental")), home)
        for table in catalog.feature_tables:
            build_features(incremental, table, first, last)
        for source in catalog.sources:
            build_events(incremental, source, first, last)
        build_signal_days(incremental, spec.signal, first, last)
        build_sequence_days(incremental, spec.name, first, last - timedelta(days=1))
        rebuild = BatchContext(catalog, TableLayout(str(home / "rebuild")), home)
        shutil.copytree(home / "incremental" / "signals", home / "rebuild" / "signals")

        timings: dict[str, list[float]] = {"rebuild": [], "incremental": []}
        written: dict[str, pl.DataFrame] = {}
        for _ in range(args.repeats):
            for name, ctx in (("rebuild", rebuild), ("incremental", incremental)):
                began = time.perf_counter()
                outcome = build_sequence_days(ctx, spec.name, last, last)
                timings[name].append(time.perf_counter() - began)
                written[name] = outcome.written
        assert written["incremental"].drop(DT).equals(written["rebuild"].drop(DT)), (
            "the incremental snapshot differs from the full rebuild"
        )
        signal_rows = pl.read_delta(str(home / "incremental/signals" / spec.signal)).height

    rebuild_s = statistics.median(timings["rebuild"])
    incremental_s = statistics.median(timings["incremental"])
    print(
        f"sequence asset {spec.name}, day {last}: {signal_rows:,} signal rows over {args.days} "
        f"days, lookback {spec.lookback_days} days, {written['rebuild'].height:,} users"
    )
    print(
        f"  rebuild from the lookback window  {rebuild_s * 1000:8.1f} ms (median of {args.repeats})"
    )
    print(f"  incremental (snapshot + 1 day)    {incremental_s * 1000:8.1f} ms")
    print(f"  speed-up                          {rebuild_s / incremental_s:8.2f}x")


if __name__ == "__main__":
    main()
