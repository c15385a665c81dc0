"""Materializing ranges of days through Dagster's own execution, in one run.

A run covers a whole partition range of every selected asset (as a single-run backfill of
them does), so the demo and tests exercise exactly what a backfill launched from the UI runs,
and the run is recorded on the instance for the UI to show.
"""

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import date

import dagster as dg

from sequence_platform.orchestration.keys import daily_batch
from sequence_platform.orchestration.orphans import PROCESS_TAG, this_process

PROGRESS_LOGGER = "sequence_platform.progress"
"""Assets log a line here for each chunk of days they write."""
RANGE_START_TAG = "dagster/asset_partition_range_start"
RANGE_END_TAG = "dagster/asset_partition_range_end"


@dataclass(frozen=True)
class AssetRun:
    key: dg.AssetKey
    run_id: str
    success: bool
    rows: int
    seconds: float
    failed_checks: list[str]
    """Checks of ERROR severity that did not pass."""
    warnings: list[str]
    """Checks of WARN severity that did not pass (a quiet day, say)."""
    error: str | None = None
    """Why the run failed, in the words of the failure (a broken landing file names itself)."""


def computed_asset_keys(defs: dg.Definitions) -> list[dg.AssetKey]:
    """Every asset a day's batch computes (the daily batch job's selection), upstream first."""
    graph = defs.resolve_asset_graph()
    batch = daily_batch().resolve(graph)
    return [key for key in graph.toposorted_asset_keys if key in batch]


def materialize_days(
    defs: dg.Definitions,
    instance: dg.DagsterInstance,
    start: date,
    end: date,
    *,
    keys: Sequence[dg.AssetKey] | None = None,
    progress: Callable[[AssetRun], None] | None = None,
    raise_on_error: bool = True,
    log_level: str = "WARNING",
) -> list[AssetRun]:
    """Materialize ``keys`` (default: all) for days ``start..end`` in one run, each asset
    after those it reads. Returns one summary per asset, in dependency order."""
    known = computed_asset_keys(defs)
    selected = set(keys or known)
    order = [key for key in known if key in selected]
    result = defs.resolve_implicit_global_asset_job_def().execute_in_process(
        run_config={"loggers": {"console": {"config": {"log_level": log_level}}}},
        instance=instance,
        asset_selection=order,
        tags={
            RANGE_START_TAG: start.isoformat(),
            RANGE_END_TAG: end.isoformat(),
            PROCESS_TAG: this_process(),
        },
        raise_on_error=raise_on_error,
    )
    runs = [_summarize(key, result) for key in order]
    if progress is not None:
        for run in runs:
            progress(run)
    return runs


def _summarize(key: dg.AssetKey, result: dg.ExecuteInProcessResult) -> AssetRun:
    # One materialization per day, each carrying that day's figures (the step also records
    # the dead letters it wrote, under their own asset).
    materializations = [
        m for m in result.asset_materializations_for_node(_node_name(key)) if m.asset_key == key
    ]
    rows = sum(_number(m.metadata.get("rows")) for m in materializations)
    seconds = sum(_number(m.metadata.get("duration_s")) for m in materializations)
    failed: list[str] = []
    warnings: list[str] = []
    for evaluation in result.get_asset_check_evaluations():
        if evaluation.asset_key == key and not evaluation.passed:
            severe = evaluation.severity == dg.AssetCheckSeverity.ERROR
            # A contract names its failed rules: "table_contract (failed: unique_keys)".
            said = f" ({evaluation.description})" if evaluation.description else ""
            (failed if severe else warnings).append(f"{evaluation.check_name}{said}")
    error = _failure_message(result, key)
    if not materializations and error is None and not result.success:
        error = "not run: an asset it reads failed"
    return AssetRun(
        key,
        result.run_id,
        bool(materializations) and error is None,
        int(rows),
        float(seconds),
        failed,
        warnings,
        error,
    )


def _failure_message(result: dg.ExecuteInProcessResult, key: dg.AssetKey) -> str | None:
    for event in result.get_step_failure_events():
        if event.step_key != _node_name(key):
            continue
        failure = event.step_failure_data
        if failure.user_failure_data is not None and failure.user_failure_data.description:
            return failure.user_failure_data.description
        # An exception in an asset body is wrapped by Dagster; its cause is the asset's own.
        error = failure.error.cause if failure.error and failure.error.cause else failure.error
        if error is not None:
            return f"{error.cls_name}: {error.message.strip()}"
    return None


def _number(value: dg.MetadataValue | None) -> int | float:
    raw = value.value if value is not None else 0
    return raw if isinstance(raw, int | float) else 0


def _node_name(key: dg.AssetKey) -> str:
    return "__".join(key.path)
