"""A run whose steps run in processes of their own (Dagster's multiprocess executor, the
default of a run launched from the UI) is not an orphan between two steps. (Annotations stay
real objects here: Dagster inspects them.)"""

from pathlib import Path

import dagster as dg

from sequence_platform.orchestration.instance import prepare_dagster_home
from sequence_platform.orchestration.orphans import claim_run, fail_orphaned_runs


@dg.asset
def first_step(context: dg.AssetExecutionContext) -> None:
    claim_run(context)


@dg.asset(deps=[first_step])
def second_step(context: dg.AssetExecutionContext) -> None:
    # What the orphaned_runs sensor sees when it ticks after the first step's process ended
    # and before this one claims the run: the run must still have its process.
    failed = fail_orphaned_runs(context.instance)
    assert context.run.run_id not in [run.run_id for run in failed]
    claim_run(context)


def two_step_job() -> dg.JobDefinition:
    return dg.Definitions(
        assets=[first_step, second_step],
        jobs=[
            dg.define_asset_job(
                "two_steps", executor_def=dg.multiprocess_executor.configured({"max_concurrent": 1})
            )
        ],
    ).resolve_job_def("two_steps")


def test_a_multiprocess_run_keeps_its_process_between_steps(tmp_path: Path) -> None:
    prepare_dagster_home(tmp_path)  # the platform's instance: its storage, across processes
    with (
        dg.DagsterInstance.from_config(str(tmp_path)) as instance,
        dg.execute_job(dg.reconstructable(two_step_job), instance=instance) as result,
    ):
        assert result.success, [event.message for event in result.all_events if event.is_failure]
        run = instance.get_run_by_id(result.run_id)
        assert run is not None and run.status == dg.DagsterRunStatus.SUCCESS
