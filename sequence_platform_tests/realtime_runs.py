"""Delivering events through the real-time path as Dagster runs it: produce to the stream,
then evaluate the stream sensor and execute each micro-batch run it requests, until idle."""

from __future__ import annotations

import json
from typing import Any

import dagster as dg

from sequence_platform.ingest.stream import EventStream


def produce_and_index(
    defs: dg.Definitions,
    stream: EventStream,
    topic: str,
    records: list[dict[str, Any]],
    instance: dg.DagsterInstance,
    source: str = "engagement",
) -> None:
    stream.produce(topic, [(str(r["user_id"]).encode(), json.dumps(r).encode()) for r in records])
    sensor = defs.resolve_sensor_def(f"{source}_stream")
    job = defs.resolve_job_def(f"realtime_{source}")
    while True:
        context = dg.build_sensor_context(
            instance=instance, resources={"platform": defs.resources["platform"]}
        )
        tick = sensor(context)
        if not isinstance(tick, dg.SensorResult):
            return
        for request in tick.run_requests or []:
            result = job.execute_in_process(
                run_config=request.run_config, instance=instance, tags=request.tags
            )
            assert result.success
