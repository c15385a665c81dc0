"""Runs whose process died: marked failed instead of staying ``STARTED`` forever.

A run killed with ``kill -9`` (or by the out-of-memory killer, or a power cut) cannot report
its own end, and Dagster's default run launcher has no way to check on a run worker. Each of
our runs therefore records the process that executes it (host, pid and the process's start
time, so a recycled pid is not mistaken for it); a sensor, and every ``sequence-platform
materialize``, fails the runs whose process is gone. A stuck run matters beyond the UI: the
stream sensor launches no micro-batch for a partition while a run for it is in flight.
"""

from __future__ import annotations

import multiprocessing
import os
import socket
from pathlib import Path

import dagster as dg

PROCESS_TAG = "sequence-platform/process"
"""``<host>:<pid>:<start time>`` of the process executing the run."""

IN_FLIGHT = [dg.DagsterRunStatus.STARTING, dg.DagsterRunStatus.STARTED]


def this_process() -> str:
    return _identity(os.getpid())


def run_worker() -> str:
    """The process whose end ends the run. Dagster's multiprocess executor (the default of a
    run launched from the UI) runs each step in a child process that ends with its step: the
    run is orphaned when its parent, the run worker, is gone, not between two steps."""
    parent = multiprocessing.parent_process()
    return _identity(parent.pid) if parent is not None and parent.pid else this_process()


def _identity(pid: int) -> str:
    return f"{socket.gethostname()}:{pid}:{_start_time(pid)}"


def claim_run(context: dg.AssetExecutionContext | dg.OpExecutionContext) -> None:
    """Record on the run which process executes it (once per run)."""
    worker = run_worker()
    if context.run.tags.get(PROCESS_TAG) != worker:
        context.instance.add_run_tags(context.run.run_id, {PROCESS_TAG: worker})


def fail_orphaned_runs(instance: dg.DagsterInstance) -> list[dg.DagsterRun]:
    """Mark failed every in-flight run of this host whose process no longer exists."""
    failed: list[dg.DagsterRun] = []
    runs = instance.get_runs(filters=dg.RunsFilter(statuses=IN_FLIGHT))
    for run in runs:
        owner = run.tags.get(PROCESS_TAG)
        if owner is None or _alive(owner):
            continue
        instance.report_run_failed(
            run,
            message=(
                f"The process that executed this run ({owner}) ended without reporting: it "
                "was killed or crashed. Its partitions keep their previous contents (writes "
                "are atomic); re-run them to bring them up to date."
            ),
        )
        failed.append(run)
    return failed


def orphaned_runs_sensor(interval_seconds: int = 30) -> dg.SensorDefinition:
    @dg.sensor(
        name="orphaned_runs",
        minimum_interval_seconds=interval_seconds,
        default_status=dg.DefaultSensorStatus.RUNNING,
        description=(
            "Marks failed the runs whose process died without reporting (killed, crashed), "
            "so that they do not stay 'Started' forever nor block the stream sensor."
        ),
    )
    def orphaned_runs(context: dg.SensorEvaluationContext) -> dg.SkipReason:
        failed = fail_orphaned_runs(context.instance)
        if not failed:
            return dg.SkipReason("no run lost its process")
        ids = ", ".join(run.run_id[:8] for run in failed)
        return dg.SkipReason(f"marked {len(failed)} run(s) failed, their process is gone: {ids}")

    return orphaned_runs


def _alive(owner: str) -> bool:
    host, _, rest = owner.partition(":")
    pid_text, _, started = rest.partition(":")
    if host != socket.gethostname() or not pid_text.isdigit():
        return True  # another machine's run: not ours to judge
    pid = int(pid_text)
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        pass  # exists, owned by someone else
    return _start_time(pid) == started


def _start_time(pid: int) -> str:
    """The process's start time in clock ticks since boot (Linux), or '' where unknown."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return ""
    # The command name (field 2) may hold spaces; the fields after it are plain.
    return stat.rsplit(")", 1)[1].split()[19]
