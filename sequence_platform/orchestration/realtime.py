"""Real time in Dagster: a sensor per source requests micro-batch runs for concrete offset ranges.

The sensor keeps no state that matters: what is processed is read from the Delta tables (the
offsets committed with the data), what is in flight from Dagster's runs. A lost cursor, a
restarted daemon or a duplicated request cannot lose or double a message; the micro-batch
itself skips what its tables already hold.
"""

import time
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime

import dagster as dg
from deltalake.exceptions import CommitFailedError

from sequence_platform.ingest.stream import StreamUnavailable
from sequence_platform.orchestration.keys import (
    dead_letters_key,
    features_key,
    landing_key,
    realtime_key,
    stream_archive_key,
    stream_key,
)
from sequence_platform.orchestration.orphans import claim_run
from sequence_platform.orchestration.resources import PlatformResource
from sequence_platform.runtime.microbatch import MicroBatchOutcome, RealtimeWriter
from sequence_platform.spec.catalog import Catalog
from sequence_platform.spec.models import SourceSpec
from sequence_platform.storage.layout import TableLayout

SOURCE_TAG = "sequence_platform/source"
PARTITION_TAG = "sequence_platform/stream_partition"
RANGE_TAG = "sequence_platform/offsets"
LINGERS_UNTIL_TAG = "sequence_platform/lingers_until"
"""Set by a micro-batch run once its first range is committed: ``<run id> <Unix time>``, until
when it takes the ranges that arrive (the run id, because a re-executed run inherits the tags of
the run it retries)."""
ACTIVE = [
    dg.DagsterRunStatus.QUEUED,
    dg.DagsterRunStatus.NOT_STARTED,
    dg.DagsterRunStatus.STARTING,
    dg.DagsterRunStatus.STARTED,
]
FAILED = [dg.DagsterRunStatus.FAILURE, dg.DagsterRunStatus.CANCELED]
DAEMON_LOOP_SECONDS = 5
"""Dagster's sensor daemon evaluates sensors at most this often (its ``MIN_INTERVAL_LOOP_TIME``),
whatever a sensor's ``minimum_interval_seconds`` asks for."""


@dataclass(frozen=True)
class RealtimeSettings:
    max_batch_messages: int = 50_000
    minimum_interval_seconds: int = DAEMON_LOOP_SECONDS
    linger_seconds: float = 20.0

    @property
    def sensor_interval(self) -> int:
        """How often the stream sensor is evaluated: the daemon's loop is the floor (less
        would show the UI a frequency it never has)."""
        return max(self.minimum_interval_seconds, DAEMON_LOOP_SECONDS)


class MicroBatchConfig(dg.Config):
    partition: int
    start: int
    end: int


def microbatch_job_name(source: str) -> str:
    return f"realtime_{source}"


def stream_assets(
    catalog: Catalog, partitions: dg.PartitionsDefinition, kafka: bool
) -> list[dg.AssetSpec]:
    """The stream (external), what micro-batches archive from it, and the dead letters of
    every input, as assets: their lineage shows where each table's rows come from."""
    found: list[dg.AssetSpec] = []
    medium = "Kafka topic" if kafka else "local append-only stream (no broker configured)"
    for source in catalog.sources.values():
        found += [
            dg.AssetSpec(
                stream_key(source.name),
                group_name="realtime",
                description=f"The '{source.topic_name}' stream: a {medium}.",
                kinds={"kafka"} if kafka else {"file"},
            ),
            dg.AssetSpec(
                stream_archive_key(source.name),
                group_name="realtime",
                description=(
                    f"Raw '{source.name}' events as micro-batches (and the indexer) read them "
                    "from the stream, by day of event time; events/"
                    f"{source.name} reads them with the landing files."
                ),
                deps=[stream_key(source.name)],
                partitions_def=partitions,
                kinds={"delta"},
            ),
        ]
    inputs = [
        *((name, [landing_key(name), stream_key(name)]) for name in catalog.sources),
        *((name, [landing_key(name)]) for name in catalog.feature_tables),
        *((t.name, [landing_key(t.spine)]) for t in catalog.training_sets.values()),
    ]
    for name, deps in inputs:
        found.append(
            dg.AssetSpec(
                dead_letters_key(name),
                group_name="dead_letters",
                description=(
                    f"Records of '{name}' that failed validation, each with its reason and "
                    "where it came from (landing file and line, or stream partition and offset)."
                ),
                deps=deps,
                partitions_def=partitions,
                kinds={"delta"},
            )
        )
    return found


def _report(
    context: dg.AssetExecutionContext,
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
    for event in partition_events(platform.layout, source, outcome):
        context.log_event(event)


def partition_events(
    layout: TableLayout, source: SourceSpec, outcome: MicroBatchOutcome
) -> list[dg.AssetMaterialization]:
    """The days of the stream archive and of the dead letters a micro-batch appended to."""
    offsets = f"{source.topic_name}/{outcome.partition}@{outcome.start}..{outcome.end - 1}"
    today = datetime.now(UTC).date()
    events: list[dg.AssetMaterialization] = []
    for key, uri in (
        (stream_archive_key(source.name), layout.stream_archive(source.name)),
        (dead_letters_key(source.name), layout.dead_letters(source.name)),
    ):
        for day, rows in sorted(outcome.appended_days.get(uri, {}).items()):
            if day >= today:
                continue  # not a partition until the day is over; the batch records it then
            events.append(
                dg.AssetMaterialization(
                    asset_key=key,
                    partition=day.isoformat(),
                    description="rows appended by a micro-batch",
                    metadata={"rows_appended": rows, "offsets": offsets},
                )
            )
    return events


@dataclass
class _Appended:
    """What a run appended to one real-time table, over every range it took."""

    rows: int = 0
    ranges: int = 0
    first: str = ""
    last: str = ""
    watermark: str = "none"

    def add(self, outcome: MicroBatchOutcome, rows: int) -> None:
        offsets = f"{outcome.partition}@{outcome.start}..{outcome.end - 1}"
        self.rows += rows
        self.ranges += 1
        self.first = self.first or offsets
        self.last = offsets
        if outcome.watermark is not None:
            self.watermark = outcome.watermark.isoformat()

    def metadata(self) -> dict[str, int | str]:
        return {
            "rows_appended": self.rows,
            "offset_ranges": self.ranges,
            "offsets": f"{self.first} .. {self.last}",
            "watermark": self.watermark,
        }


def microbatch_job(
    catalog: Catalog, source: SourceSpec, settings: RealtimeSettings
) -> "tuple[dg.AssetsDefinition, dg.UnresolvedAssetJobDefinition]":
    signals = catalog.signals_of_source[source.name]
    specs = [
        dg.AssetSpec(
            realtime_key(signal.name),
            group_name="realtime",
            description=(
                f"Signal '{signal.name}' rows appended by micro-batches from the "
                f"'{signal.source}' stream within seconds, exactly once; the read service "
                "merges them with the latest snapshot. Its automation is the "
                f"'{source.name}_stream' sensor."
            ),
            deps=[
                stream_key(source.name),
                *(features_key(e.table) for e in signal.enrich),
            ],
            kinds={"polars", "delta"},
            skippable=True,
        )
        for signal in signals
    ]

    @dg.multi_asset(
        name=f"microbatch_{source.name}",
        specs=specs,
        description=(
            f"Decode, validate, archive and index one offset range of '{source.name}'; then, "
            f"for up to {settings.linger_seconds:g} s, the ranges that arrive meanwhile."
        ),
    )
    def process_range(
        context: dg.AssetExecutionContext, config: MicroBatchConfig, platform: PlatformResource
    ) -> Iterator[dg.MaterializeResult]:
        claim_run(context)
        appended: dict[str, _Appended] = {s.name: _Appended() for s in signals}

        def take(outcome: MicroBatchOutcome) -> None:
            _report(context, platform, source, outcome)
            for signal in signals:
                rows = outcome.appended.get(platform.layout.realtime(signal.name))
                if rows is not None:
                    appended[signal.name].add(outcome, rows)

        failure: Exception | None = None
        try:
            with platform.open_stream() as stream:
                writer = RealtimeWriter(catalog, platform.layout, stream)
                take(writer.process(source.name, config.partition, config.start, config.end))
                # A launched run is warm: it takes the next ranges itself while they keep
                # coming, each committed with its own end offset, instead of paying a launch
                # per batch.
                lingering_until = time.monotonic() + settings.linger_seconds
                _tell_when_lingering_ends(context, settings)
                # Where this run's commits reached; the tables are read only when the stream
                # has more (``process`` starts from what they hold, which another writer of
                # the partition may have moved further).
                position = config.end
                while time.monotonic() < lingering_until:
                    end = stream.end_offsets(source.topic_name).get(config.partition, 0)
                    if position >= end:
                        time.sleep(0.1)
                        continue
                    stop = min(end, position + settings.max_batch_messages)
                    try:
                        outcome = writer.process(source.name, config.partition, position, stop)
                    except CommitFailedError:
                        continue  # another writer (an indexer) got there first: read again
                    position = stop
                    if outcome.messages:
                        take(outcome)
        except Exception as error:
            failure = error  # what earlier ranges committed is recorded all the same
        for signal in signals:
            total = appended[signal.name]
            if total.ranges:
                yield dg.MaterializeResult(
                    asset_key=realtime_key(signal.name), metadata=total.metadata()
                )
        if failure is not None:
            raise failure

    job = dg.define_asset_job(
        microbatch_job_name(source.name),
        selection=dg.AssetSelection.assets(process_range),
        description=f"One micro-batch of the '{source.name}' stream (launched by its sensor).",
        tags={SOURCE_TAG: source.name},
        # One step: running it in the run's own process saves a process start per batch.
        executor_def=dg.in_process_executor,
    )
    return process_range, job


def stream_sensor(
    catalog: Catalog,
    source: SourceSpec,
    job: "dg.UnresolvedAssetJobDefinition",
    settings: RealtimeSettings,
) -> dg.SensorDefinition:
    def poll(
        context: dg.SensorEvaluationContext, platform: PlatformResource
    ) -> dg.SensorResult | dg.SkipReason:
        try:
            with platform.open_stream() as stream:
                ends = stream.end_offsets(source.topic_name)
                writer = RealtimeWriter(catalog, platform.layout, stream)
                committed = writer.committed_offset_of_partitions(source.name, ends)
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
            in_flight = _runs(context.instance, source, partition, ACTIVE)
            if in_flight and not _hands_over(in_flight, settings):
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

    decorate = dg.sensor(
        name=f"{source.name}_stream",
        job=job,
        minimum_interval_seconds=settings.sensor_interval,
        default_status=dg.DefaultSensorStatus.RUNNING,
        description=(
            f"Polls the '{source.topic_name}' stream and requests a micro-batch for each new "
            f"offset range (at most {settings.max_batch_messages:,} messages a run)."
        ),
    )
    return decorate(poll)


def _tell_when_lingering_ends(
    context: dg.AssetExecutionContext, settings: RealtimeSettings
) -> None:
    """Tag the run with the time it stops lingering, for the sensor to hand over then; without
    the tag (it could not be written) the sensor waits for the run to end, as it would."""
    until = time.time() + settings.linger_seconds
    try:
        context.instance.add_run_tags(
            context.run.run_id, {LINGERS_UNTIL_TAG: f"{context.run.run_id} {until:.3f}"}
        )
    except Exception as error:
        context.log.warning(f"could not tag when lingering ends ({error}); the sensor will wait")


def _hands_over(in_flight: list[dg.DagsterRun], settings: RealtimeSettings) -> bool:
    """Whether the partition's one run in flight, having committed its range, stops lingering
    before the next tick: the next run is requested now, so that messages arriving meanwhile
    do not wait for a tick and a launch. The two may overlap; each message is appended once
    all the same (``append_once`` leaves out what the other committed). The time is the run
    host's clock, compared with the sensor's: a skew moves the handover, never a message."""
    if len(in_flight) != 1:
        return False
    [run] = in_flight
    tagged = run.tags.get(LINGERS_UNTIL_TAG, "").split()
    try:
        run_id, until = tagged[0], float(tagged[1])
    except (IndexError, ValueError):
        return False  # not tagged yet (or the tag is not ours to read): wait for the run
    # The next evaluation comes an interval later, or a daemon loop after that at the latest.
    next_tick = time.time() + settings.sensor_interval + DAEMON_LOOP_SECONDS
    return run_id == run.run_id and until < next_tick


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


RealtimeDefinitions = tuple[
    list[dg.AssetsDefinition], list["dg.UnresolvedAssetJobDefinition"], list[dg.SensorDefinition]
]


def realtime_definitions(catalog: Catalog, settings: RealtimeSettings) -> "RealtimeDefinitions":
    """Per source: the micro-batch (the real-time assets' computation), its job and sensor."""
    assets: list[dg.AssetsDefinition] = []
    jobs: list[dg.UnresolvedAssetJobDefinition] = []
    sensors: list[dg.SensorDefinition] = []
    for source in catalog.sources.values():
        if not catalog.signals_of_source[source.name]:
            continue
        microbatch, job = microbatch_job(catalog, source, settings)
        assets.append(microbatch)
        jobs.append(job)
        sensors.append(stream_sensor(catalog, source, job, settings))
    return assets, jobs, sensors


class IndexerReporter:
    """Records what the continuous indexer (``sequence-platform index``) appends on the
    Dagster instance, as runless materializations of the same assets the micro-batch job
    materializes: the UI shows the indexer's writes too. Batches are summed and recorded at
    most every ``every_seconds`` (and at ``flush``), so a busy stream costs a few events."""

    def __init__(
        self,
        instance: dg.DagsterInstance,
        catalog: Catalog,
        layout: TableLayout,
        every_seconds: float = 10.0,
    ) -> None:
        self.instance = instance
        self.catalog = catalog
        self.layout = layout
        self.every_seconds = every_seconds
        self._pending: list[MicroBatchOutcome] = []
        self._flushed = time.monotonic()

    def __call__(self, outcome: MicroBatchOutcome) -> None:
        if outcome.appended:
            self._pending.append(outcome)
        self.idle()

    def idle(self) -> None:
        """Record what is pending once it is ``every_seconds`` old (the indexer calls this
        when the stream is quiet, so the last appends are not left unrecorded)."""
        if self._pending and time.monotonic() - self._flushed >= self.every_seconds:
            self.flush()

    def flush(self) -> None:
        pending, self._pending = self._pending, []
        self._flushed = time.monotonic()
        for event in self._events(pending):
            self.instance.report_runless_asset_event(event)

    def _events(self, outcomes: list[MicroBatchOutcome]) -> list[dg.AssetMaterialization]:
        days: dict[tuple[dg.AssetKey, str], int] = {}
        signals: dict[str, _Appended] = {}
        for outcome in outcomes:
            source = self.catalog.sources[outcome.source]
            for event in partition_events(self.layout, source, outcome):
                where = (event.asset_key, str(event.partition))
                rows = event.metadata["rows_appended"].value
                days[where] = days.get(where, 0) + (rows if isinstance(rows, int) else 0)
            for signal in self.catalog.signals_of_source[outcome.source]:
                rows_appended = outcome.appended.get(self.layout.realtime(signal.name))
                if rows_appended is not None:
                    signals.setdefault(signal.name, _Appended()).add(outcome, rows_appended)
        events = [
            dg.AssetMaterialization(
                asset_key=key,
                partition=partition,
                description="rows appended by the continuous indexer",
                metadata={"rows_appended": rows},
            )
            for (key, partition), rows in sorted(days.items(), key=lambda item: str(item[0]))
        ]
        events += [
            dg.AssetMaterialization(
                asset_key=realtime_key(name),
                description="rows appended by the continuous indexer",
                metadata=total.metadata(),
            )
            for name, total in signals.items()
        ]
        return events
