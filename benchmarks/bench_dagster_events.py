"""What Dagster's own recording costs: one range run of a bare daily asset (no data, no I/O of
ours) that records one materialization and ``--checks`` partitioned check results per day,
as the platform's assets do. It isolates the part of a batch run that grows with days x
assets x checks rather than with events.

By default it runs twice, each on a fresh temporary instance: the platform's (the
``dagster.yaml`` ``sequence-platform`` writes, ``orchestration/instance.py``) and Dagster's
default SQLite storage; or once on any instance with ``--dagster-home`` (a folder holding a
``dagster.yaml``: consolidated SQLite, Postgres, ...).

Annotations stay real objects here (no postponed evaluation): Dagster inspects them.
"""

import argparse
import tempfile
import time
import warnings
from collections.abc import Iterator
from datetime import date, timedelta
from pathlib import Path

import dagster as dg

from sequence_platform.orchestration.instance import prepare_dagster_home

START = date(2026, 1, 1)


def bare_asset(partitions: dg.DailyPartitionsDefinition, checks: int) -> dg.AssetsDefinition:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # partitioned checks and backfill policy: preview/beta
        specs = [
            dg.AssetCheckSpec(f"check_{n}", asset="bare", partitions_def=partitions)
            for n in range(checks)
        ]

        @dg.asset(
            partitions_def=partitions,
            check_specs=specs,
            backfill_policy=dg.BackfillPolicy.single_run(),
        )
        def bare(
            context: dg.AssetExecutionContext,
        ) -> Iterator[dg.MaterializeResult | dg.Output[None]]:
            for index, key in enumerate(context.partition_keys):
                context.add_asset_metadata({"rows": index}, partition_key=key)
            yield dg.MaterializeResult()
            for key in context.partition_keys:
                for spec in specs:
                    context.log_event(
                        dg.AssetCheckEvaluation(
                            asset_key=spec.asset_key,
                            check_name=spec.name,
                            passed=True,
                            partition=key,
                        )
                    )
            for check in context.selected_asset_check_keys:
                name = context.assets_def.get_output_name_for_asset_check_key(check)
                yield dg.Output(None, output_name=name)

    return bare


def measure(instance: dg.DagsterInstance, days: int, checks: int) -> tuple[float, int]:
    """Seconds of the run, and the materializations and check results it recorded."""
    partitions = dg.DailyPartitionsDefinition(start_date=START.isoformat())
    defs = dg.Definitions(assets=[bare_asset(partitions, checks)])
    end = START + timedelta(days=days - 1)
    began = time.perf_counter()
    result = defs.resolve_implicit_global_asset_job_def().execute_in_process(
        instance=instance,
        tags={
            "dagster/asset_partition_range_start": START.isoformat(),
            "dagster/asset_partition_range_end": end.isoformat(),
        },
        run_config={"loggers": {"console": {"config": {"log_level": "WARNING"}}}},
    )
    seconds = time.perf_counter() - began
    assert result.success
    recorded = len(result.get_asset_materialization_events())
    return seconds, recorded + len(result.get_asset_check_evaluations())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--days", type=int, default=100)
    parser.add_argument("--checks", type=int, default=5, help="partitioned checks per day")
    parser.add_argument("--dagster-home", help="an instance folder; default a fresh one")
    args = parser.parse_args()
    homes = {args.dagster_home: args.dagster_home} if args.dagster_home else None
    with tempfile.TemporaryDirectory() as scratch:
        if homes is None:
            platform, default = Path(scratch) / "platform", Path(scratch) / "default"
            prepare_dagster_home(platform)
            default.mkdir()
            homes = {"the platform's instance": str(platform), "Dagster's default": str(default)}
        for name, home in homes.items():
            with dg.DagsterInstance.from_config(home) as instance:
                seconds, events = measure(instance, args.days, args.checks)
            each = seconds / events * 1000
            print(
                f"{name}: {args.days} days x (1 materialization + {args.checks} check results): "
                f"{events} events recorded in {seconds:.2f} s, {each:.1f} ms each"
            )


if __name__ == "__main__":
    main()
