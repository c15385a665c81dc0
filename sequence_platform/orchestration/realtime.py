"""Real time in Dagster: a sensor per source requests micro-batch runs for concrete offset ranges.

The sensor keeps no state that matters: what is processed is read from the Delta tables (the
offsets committed with the data), what is in flight from Dagster's runs. A lost cursor, a
restarted daemon or a duplicated request cannot lose or double a message; the micro-batch
itself skips what its tables already hold.
"""

import time
import warnings
from dataclasses import dataclass

import dagster as dg
from deltalake.exceptions import CommitFailedError

from sequence_platform.ingest.stream import StreamUnavailable
from sequence_platform.orchestration.orphans import claim_run
from sequence_platform.orchestration.resources import PlatformResource
from sequence_platform.runtime.microbatch import MicroBatchOutcome, RealtimeWriter
from sequence_platform.spec.catalog import Catalog
from sequence_platform.spec.models import SourceSpec

SOURCE_TAG = "sequence_platform/source"
PARTITION_TAG = "sequence_platform/stream_partition"
RANGE_TAG = "sequence_platform/offsets"
ACTIVE = [
    dg.DagsterRunStatus.QUEUED,
    dg.DagsterRunStatus.NOT_STARTED,
    dg.DagsterRunStatus.STARTING,
    dg.DagsterRunStatus.STARTED,
]
FAILED = [dg.DagsterRunStatus.FAILURE, dg.DagsterRunStatus.CANCELED]


@dataclass(frozen=True)
class RealtimeSettings:
    max_batch_messages: int = 50_000
    minimum_interval_seconds: int = 1
    linger_seconds: float = 20.0


class MicroBatchConfig(dg.Config):
    partition: int
    start: int
    end: int


def realtime_key(signal: str) -> dg.AssetKey:
    return dg.AssetKey(["realtime", signal])


def microbatch_job_name(source: str) -> str:
    return f"realtime_{source}"


def realtime_assets(catalog: Catalog) -> list[dg.AssetSpec]:
    """The real-time tables, shown in the UI; the micro-batch runs report their appends."""
    return [
        dg.AssetSpec(
            realtime_key(signal.name),
            group_name="realtime",
            description=(
                f"Signal '{signal.name}' rows appended by micro-batches from the "
                f"'{signal.source}' stream within seconds, exactly once; the read service "
                "merges them with the latest snapshot."
            ),
            kinds={"kafka", "delta"},
        )
        for signal in catalog.signals.values()
    ]


def _report(
    context: dg.OpExecutionContext,
    catalog: Catalog,
    platform: PlatformResource,
    source: SourceSpec,
    outcome: MicroBatchOutcome,
) -> None:
    offsets = f"{outcome.start}..{outcome.end - 1}"
    context.log.info(
        f"{source.topic_name}/{outcome.partition} offsets {offsets}: "
        f"{outcome.valid} events, {outcome.rejected} dead letters, "
        f"{len(outcome.appended)} tables appended in {outcome.seconds:.2f}s"
    )
    for signal in catalog.signals_of_source[source.name]:
        uri = platform.layout.realtime(signal.name)
        if uri not in outcome.appended:
            continue
        context.log_event(
            dg.AssetMaterialization(
                asset_key=realtime_key(signal.name),
                metadata={
                    "rows_appended": outcome.appended[uri],
                    "offsets": offsets,
                    "stream_partition": outcome.partition,
                    "dead_letters": outcome.rejected,
                    "watermark": str(outcome.watermark) if outcome.watermark else "none",
                    "duration_s": round(outcome.seconds, 3),
                },
            )
        )


def microbatch_job(
    catalog: Catalog, source: SourceSpec, settings: RealtimeSettings
) -> dg.JobDefinition:
    @dg.op(
        name=f"microbatch_{source.name}",
        description=(
            f"Decode, validate, archive and index one offset range of '{source.name}'; then, "
            f"for up to {settings.linger_seconds:g} s, the ranges that arrive meanwhile."
        ),
    )
    def process_range(
        context: dg.OpExecutionContext, config: MicroBatchConfig, platform: PlatformResource
    ) -> None:
        claim_run(context)
        with platform.open_stream() as stream:
            writer = RealtimeWriter(catalog, platform.layout, stream)
            outcome = writer.process(source.name, config.partition, config.start, config.end)
            _report(context, catalog, platform, source, outcome)
            # A launched run is warm: it takes the next ranges itself while they keep coming,
            # each committed with its own end offset, instead of paying a launch per batch.
            # The sensor launches no other run for the partition meanwhile.
            lingering_until = time.monotonic() + settings.linger_seconds
            while time.monotonic() < lingering_until:
                end = stream.end_offsets(source.topic_name).get(config.partition, 0)
                start = writer.committed_offset(source.name, config.partition)
                if start >= end:
                    time.sleep(0.1)
                    continue
                stop = min(end, start + settings.max_batch_messages)
                try:
                    outcome = writer.process(source.name, config.partition, start, stop)
                except CommitFailedError:
                    continue  # another writer (an indexer) got there first: re-read offsets
                _report(context, catalog, platform, source, outcome)

    @dg.job(
        name=microbatch_job_name(source.name),
        description=f"One micro-batch of the '{source.name}' stream (launched by its sensor).",
        tags={SOURCE_TAG: source.name},
        # One step: running it in the run's own process saves a process start per batch.
        executor_def=dg.in_process_executor,
    )
    def job() -> None:
        process_range()

    return job


def stream_sensor(
    catalog: Catalog,
    source: SourceSpec,
    job: dg.JobDefinition,
    settings: RealtimeSettings,
) -> dg.SensorDefinition:
    def poll(
        context: dg.SensorEvaluationContext, platform: PlatformResource
    ) -> dg.SensorResult | dg.SkipReason:
        try:
            with platform.open_stream() as stream:
                ends = stream.end_offsets(source.topic_name)
                writer = RealtimeWriter(catalog, platform.layout, stream)
                committed = {p: writer.committed_offset(source.name, p) for p in ends}
        except StreamUnavailable as error:
            return dg.SkipReason(f"stream down: {error}")
        if not ends:
            return dg.SkipReason(f"idle: topic '{source.topic_name}' has no partitions yet")
        requests: list[dg.RunRequest] = []
        notes: list[str] = []
        for partition in sorted(ends):
            start, end = committed[partition], ends[partition]
            where = f"{source.topic_name}/{partition}"
            if start >= end:
                notes.append(f"{where} idle at offset {end}")
                continue
            if _runs(context.instance, source, partition, ACTIVE):
                notes.append(f"{where} lagging {end - start:,} messages, a run is in flight")
                continue
            stop = min(end, start + settings.max_batch_messages)
            offsets = f"{start}-{stop}"
            # A failed run of the same range gets a new key, so it is retried, once per failure.
            retries = len(_runs(context.instance, source, partition, FAILED, offsets))
            run_key = f"{where}@{offsets}" + (f"#retry{retries}" if retries else "")
            requests.append(
                dg.RunRequest(
                    run_key=run_key,
                    run_config=dg.RunConfig(
                        ops={
                            f"microbatch_{source.name}": MicroBatchConfig(
                                partition=partition, start=start, end=stop
                            )
                        }
                    ),
                    tags={
                        SOURCE_TAG: source.name,
                        PARTITION_TAG: str(partition),
                        RANGE_TAG: offsets,
                    },
                )
            )
            notes.append(f"{where} requested {start}..{stop - 1} ({end - start:,} behind)")
        if not requests:
            return dg.SkipReason("; ".join(notes))
        context.log.info("; ".join(notes))
        return dg.SensorResult(run_requests=requests)

    # Dagster's sensor factory passes a parameter it marks beta; keep the logs clean.
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", dg.BetaWarning)
        decorate = dg.sensor(
            name=f"{source.name}_stream",
            job=job,
            minimum_interval_seconds=settings.minimum_interval_seconds,
            default_status=dg.DefaultSensorStatus.RUNNING,
            description=(
                f"Polls the '{source.topic_name}' stream and requests a micro-batch for each new "
                f"offset range (at most {settings.max_batch_messages:,} messages a run)."
            ),
        )
        return decorate(poll)


def _runs(
    instance: dg.DagsterInstance,
    source: SourceSpec,
    partition: int,
    statuses: list[dg.DagsterRunStatus],
    offsets: str | None = None,
) -> list[dg.DagsterRun]:
    tags = {SOURCE_TAG: source.name, PARTITION_TAG: str(partition)}
    if offsets is not None:
        tags[RANGE_TAG] = offsets
    return list(instance.get_runs(filters=dg.RunsFilter(tags=tags, statuses=statuses), limit=50))


def realtime_definitions(
    catalog: Catalog, settings: RealtimeSettings
) -> tuple[list[dg.JobDefinition], list[dg.SensorDefinition]]:
    jobs: list[dg.JobDefinition] = []
    sensors: list[dg.SensorDefinition] = []
    for source in catalog.sources.values():
        job = microbatch_job(catalog, source, settings)
        jobs.append(job)
        sensors.append(stream_sensor(catalog, source, job, settings))
    return jobs, sensors
