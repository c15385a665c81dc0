"""Asset factories: one Dagster asset per definition, daily partitioned, owning its days.

Every asset rewrites exactly the days of its partition range (a range backfill is one run,
by ``BackfillPolicy.single_run()``), reports rows, bytes and timing, and checks what it wrote.
Annotations stay real objects here (no postponed evaluation): Dagster inspects them.
"""

import logging
import time
import warnings
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from datetime import date, timedelta

import dagster as dg
import polars as pl

from sequence_platform.engine.sequence import empty_snapshot
from sequence_platform.ingest.landing import UnreadableLandingFile
from sequence_platform.orchestration import checks, skew
from sequence_platform.orchestration.keys import (
    dead_letters_key,
    events_key,
    features_key,
    landing_key,
    sequence_key,
    signal_key,
    stream_archive_key,
    training_key,
)
from sequence_platform.orchestration.orphans import claim_run
from sequence_platform.orchestration.resources import PlatformResource
from sequence_platform.orchestration.runner import PROGRESS_LOGGER
from sequence_platform.runtime.batch import (
    BackgroundWrites,
    BatchContext,
    StepOutcome,
    build_events,
    build_features,
    build_sequence,
    build_signal,
    build_training,
    chunk_budget,
    input_rows,
    plan_chunks,
    prune_realtime,
    split_days,
)
from sequence_platform.runtime.late import input_fingerprints
from sequence_platform.spec.catalog import Catalog
from sequence_platform.spec.models import REQUIRED_EVENT_FIELDS, SequenceSpec, TrainingSetSpec
from sequence_platform.spec.types import type_name_of
from sequence_platform.storage.delta import WriteStats, day_range, records_per_day

progress = logging.getLogger(PROGRESS_LOGGER)
"""One line per chunk of days written, for whoever runs the assets in process to show."""

Builder = Callable[[BatchContext, str, date, date], StepOutcome]
Finisher = Callable[[BatchContext, str], dict[str, int | float | str]]
Checker = Callable[[pl.DataFrame, Sequence[date]], dict[date, list[dg.AssetCheckResult]]]
"""A table's checks of what a chunk wrote (rows of several days): each day's results."""
ChunkRule = Callable[[pl.DataFrame, Sequence[date]], dict[date, dg.AssetCheckResult]]
"""One rule of a table's contract, evaluated for each day of a chunk."""


def partition_days(context: dg.AssetExecutionContext) -> tuple[date, date]:
    """First and last day (both included) of the run's partition range."""
    window = context.partition_time_window
    return window.start.date(), (window.end - timedelta(days=1)).date()


def column_schema(schema: pl.Schema) -> dg.TableSchema:
    return dg.TableSchema(
        columns=[dg.TableColumn(name, type_name_of(dtype)) for name, dtype in schema.items()]
    )


@dataclass
class _Chunk:
    """Days computed together, waiting for their write to be recorded."""

    first: date
    last: date
    outcome: StepOutcome
    seconds: float
    """Computing it (its write's time is added once it committed)."""
    inputs: "dict[date, dict[str, str | int]]"

    @property
    def days(self) -> list[date]:
        return day_range(self.first, self.last)

    @property
    def label(self) -> str:
        return self.first.isoformat() if self.first == self.last else f"{self.first}..{self.last}"


def _day_metadata(
    outcome: StepOutcome,
    stats: WriteStats,
    day: date,
    share: float,
    chunk: str,
    seconds: float,
    inputs: "dict[str, str | int]",
) -> "dict[str, dg.RawMetadataValue]":
    """What one day of a chunk wrote: its own rows, bytes and files, its counts, and its
    share of the chunk's time (days of a chunk are computed together)."""
    figures = stats.days[day]
    return {
        "dagster/row_count": figures.rows,
        "rows": figures.rows,
        "bytes": dg.MetadataValue.int(figures.bytes),
        "files": figures.files,
        "duration_s": dg.MetadataValue.float(round(seconds * share, 3)),
        "chunk": chunk,
        "chunk_duration_s": dg.MetadataValue.float(round(seconds, 3)),
        "delta_version": stats.version,
        **{name: counts.get(day, 0) for name, counts in outcome.counts.items()},
        **{name: notes[day] for name, notes in outcome.notes.items() if day in notes},
        # What the day read from outside the tables: the late-data sensor compares it.
        **inputs,
    }


def _dead_letters_written(name: str, day: date, rows: int) -> dg.AssetMaterialization:
    return dg.AssetMaterialization(
        asset_key=dead_letters_key(name),
        partition=day.isoformat(),
        description="the day's rejected landing records, rewritten by the batch",
        metadata={"rows": rows},
    )


def _evaluation(
    key: dg.AssetKey, day: date, result: dg.AssetCheckResult
) -> dg.AssetCheckEvaluation:
    return dg.AssetCheckEvaluation(
        asset_key=key,
        check_name=str(result.check_name),
        passed=result.passed,
        metadata=result.metadata,
        severity=result.severity,
        description=result.description,
        partition=day.isoformat(),
    )


def _daily_asset(
    key: dg.AssetKey,
    *,
    group: str,
    description: str,
    partitions: dg.PartitionsDefinition,
    deps: Sequence[dg.AssetKey | dg.AssetDep],
    schema: pl.Schema,
    table_uri: str,
    rules: Sequence[str],
    catalog: Catalog,
    builder: Builder,
    name: str,
    checker: Checker,
    finisher: Finisher | None = None,
) -> dg.AssetsDefinition:
    specs = checks.check_specs(key, rules, partitions) + skew.skew_check_specs(key, partitions)
    streamed_source = skew.streamed_source(catalog, key)

    def _materialize(
        context: dg.AssetExecutionContext, platform: PlatformResource
    ) -> Iterator[dg.MaterializeResult | dg.Output[None]]:
        claim_run(context)
        start, end = partition_days(context)
        context.log.info(f"{key.to_user_string()}: days {start} to {end}")
        writes = BackgroundWrites()
        batch = platform.batch_context(catalog, writes)
        # Skew checks read the real-time rows as they stood before this run pruned any.
        started = (
            skew.run_started_at(context.instance, context.run.run_id)
            if skew.skew_check_names(key)
            else None
        )
        evaluations: list[dg.AssetCheckEvaluation] = []
        rows_per_day = input_rows(batch, group, name, start, end)
        # The days the stream delivered to, read once as the step starts (skew checks compare
        # what stood at the run's start).
        streamed = (
            records_per_day(
                batch.layout.stream_archive(streamed_source),
                start,
                end,
                batch.layout.storage_options,
            )
            if streamed_source
            else {}
        )

        def record(chunk: _Chunk) -> None:
            """A written chunk's figures and checks, day by day (once its write committed)."""
            # The rules look at the rows themselves: checked while the write goes on.
            found = checker(chunk.outcome.written, chunk.days)
            stats = chunk.outcome.stats.result()
            if chunk.outcome.dead_letters is not None:
                chunk.outcome.dead_letters.result()  # recorded below once committed
            seconds = chunk.seconds + stats.seconds
            label = chunk.label
            total = sum(rows_per_day.get(day, 0) for day in chunk.days)
            for day in chunk.days:
                share = rows_per_day.get(day, 0) / total if total else 1 / len(chunk.days)
                context.add_asset_metadata(
                    _day_metadata(
                        chunk.outcome, stats, day, share, label, seconds, chunk.inputs.get(day, {})
                    ),
                    partition_key=day.isoformat(),
                )
                # Skew checks read the tables, this one included: after the commit.
                found[day] += skew.skew_check_results(
                    batch.layout,
                    catalog,
                    key,
                    day,
                    run_started=started,
                    streamed=day in streamed,
                )
                evaluations.extend(_evaluation(key, day, result) for result in found[day])
                if chunk.outcome.dead_letters is not None:
                    rejected = chunk.outcome.counts.get("dead_letters", {}).get(day, 0)
                    context.log_event(_dead_letters_written(name, day, rejected))
            line = f"{key.to_user_string()} {label}: {stats.rows:,} rows in {seconds:.2f}s"
            context.log.info(line)
            progress.info(line)

        # A chunk is recorded after the next one is computed, while its write went on in the
        # background; only the figures stay: memory follows two chunks, not the range.
        pending: _Chunk | None = None
        try:
            for first, last in plan_chunks(rows_per_day, start, end, chunk_budget(group)):
                began = time.perf_counter()
                inputs = input_fingerprints(batch, group, name, first, last)
                try:
                    outcome = builder(batch, name, first, last)
                except UnreadableLandingFile as error:
                    # Retrying cannot mend a broken export: fail with what to do.
                    raise dg.Failure(
                        description=str(error),
                        metadata={"file": str(error.path), "day": error.day.isoformat()},
                        allow_retries=False,
                    ) from None
                seconds = time.perf_counter() - began
                if pending is not None:
                    record(pending)
                pending = _Chunk(first, last, outcome, seconds, inputs)
                del outcome
            if pending is not None:
                record(pending)
                pending = None
        except BaseException:
            # The step's own error is the one to report; a chunk being written is finished,
            # and should its write fail too, the log says so.
            try:
                writes.close()
            except Exception as write_error:
                context.log.error(f"{key.to_user_string()}: a write also failed: {write_error!r}")
            raise
        writes.close()
        if finisher is not None:
            for figure, value in finisher(batch, name).items():
                context.log.info(f"{key.to_user_string()}: {figure} = {value}")
        # One materialization per day, each with that day's metadata; then each day's checks
        # (Dagster's check results carry no partition in a range run, evaluations do).
        yield dg.MaterializeResult()
        selected = context.selected_asset_check_keys
        for evaluation in evaluations:
            if evaluation.asset_check_key in selected:
                context.log_event(evaluation)
        for check in selected:
            yield dg.Output(
                None, output_name=context.assets_def.get_output_name_for_asset_check_key(check)
            )

    # backfill_policy is marked beta; we rely on it knowingly and keep the logs clean.
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", dg.BetaWarning)
        decorate = dg.asset(
            key=key,
            group_name=group,
            description=description,
            partitions_def=partitions,
            backfill_policy=dg.BackfillPolicy.single_run(),
            deps=list(deps),
            check_specs=specs,
            kinds={"polars", "delta"},
            metadata={"table_uri": table_uri, "dagster/column_schema": column_schema(schema)},
        )

    return decorate(_materialize)


STANDARD_RULES = [checks.SCHEMA, checks.UNIQUE, checks.REQUIRED]


def standard_checks(
    schema: pl.Schema, keys: list[str], required: list[str], *more: ChunkRule
) -> Checker:
    """The contract (schema, unique keys, required fields, and ``more`` rules) and rows
    written, on what a run wrote, day by day."""

    def run(written: pl.DataFrame, days: Sequence[date]) -> dict[date, list[dg.AssetCheckResult]]:
        found = [rule(written, days) for rule in more]

        def day_checks(rows: pl.DataFrame, day: date) -> list[dg.AssetCheckResult]:
            rules = [
                checks.schema_check(rows, schema),
                checks.unique_check(rows, keys),
                checks.required_check(rows, required),
                *(results[day] for results in found),
            ]
            return [checks.contract_check(rules), checks.rows_check(rows)]

        return each_day(written, days, day_checks)

    return run


def each_day(
    written: pl.DataFrame,
    days: Sequence[date],
    checker: Callable[[pl.DataFrame, date], list[dg.AssetCheckResult]],
) -> dict[date, list[dg.AssetCheckResult]]:
    """``checker`` on each day's rows of ``written`` (no rows for a day it wrote none of)."""
    by_day = split_days(written)
    empty = written.clear()
    return {day: checker(by_day.get(day, empty), day) for day in days}


def build_assets(
    catalog: Catalog, partitions: dg.PartitionsDefinition, platform: PlatformResource
) -> list[dg.AssetsDefinition | dg.AssetSpec]:
    """Every asset the definitions imply: landing (external), events, features, signals and
    sequences."""
    layout = platform.layout
    found: list[dg.AssetsDefinition | dg.AssetSpec] = []

    for source in catalog.sources.values():
        schema = catalog.event_schema(source.name)
        found.append(
            dg.AssetSpec(
                landing_key(source.name),
                group_name="landing",
                description=f"Landing-zone export of '{source.name}' events "
                f"(landing/{source.name}/dt=YYYY-MM-DD/*.parquet, or JSON Lines *.jsonl / *.json).",
                partitions_def=partitions,
            )
        )

        found.append(
            _daily_asset(
                events_key(source.name),
                group="events",
                description=(
                    f"{source.description}\n\nValidated, de-duplicated '{source.name}' events: "
                    "the day's landing files and stream archive, the landing copy winning. "
                    f"Records that fail validation go to dead_letters/{source.name} with "
                    "their reason."
                ).strip(),
                partitions=partitions,
                deps=[landing_key(source.name), stream_archive_key(source.name)],
                schema=schema,
                table_uri=layout.events(source.name),
                rules=STANDARD_RULES,
                catalog=catalog,
                builder=build_events,
                name=source.name,
                checker=standard_checks(schema, ["event_id"], list(REQUIRED_EVENT_FIELDS)),
            )
        )

    for table in catalog.feature_tables.values():
        schema = catalog.feature_schema(table.name)
        found.append(
            dg.AssetSpec(
                landing_key(table.name),
                group_name="landing",
                description=f"Landing-zone export of feature table '{table.name}'.",
                partitions_def=partitions,
            )
        )

        found.append(
            _daily_asset(
                features_key(table.name),
                group="features",
                description=(
                    f"{table.description}\n\nVersions of '{table.name}' keyed by "
                    f"'{table.key}', each valid from its '{table.as_of}'."
                ).strip(),
                partitions=partitions,
                deps=[landing_key(table.name)],
                schema=schema,
                table_uri=layout.features(table.name),
                rules=STANDARD_RULES,
                catalog=catalog,
                builder=build_features,
                name=table.name,
                checker=standard_checks(schema, [table.key, table.as_of], [table.key, table.as_of]),
            )
        )

    for signal in catalog.signals.values():
        schema = catalog.signal_schema(signal.name)

        enriched = ", ".join(e.table for e in signal.enrich) or "nothing"
        executors = ", ".join(c.name for c in signal.executors) or "none"
        found.append(
            _daily_asset(
                signal_key(signal.name),
                group="signals",
                description=(
                    f"{signal.description}\n\nEvents of '{signal.source}' filtered by "
                    f"`{signal.filter or 'true'}`, enriched as of event time from {enriched}, "
                    f"then executors: {executors}."
                ).strip(),
                partitions=partitions,
                deps=[events_key(signal.source), *(features_key(e.table) for e in signal.enrich)],
                schema=schema,
                table_uri=layout.signals(signal.name),
                rules=STANDARD_RULES,
                catalog=catalog,
                builder=build_signal,
                name=signal.name,
                checker=standard_checks(schema, ["event_id"], list(REQUIRED_EVENT_FIELDS)),
            )
        )

    for sequence in catalog.sequences.values():
        found.append(_sequence_asset(catalog, sequence, partitions, platform))
    for training in catalog.training_sets.values():
        found.append(
            dg.AssetSpec(
                landing_key(training.spine),
                group_name="landing",
                description=(
                    f"Spine of training set '{training.name}': labelled instants (user_id, ts, "
                    f"labels...) in landing/{training.spine}/dt=YYYY-MM-DD/*.parquet."
                ),
                partitions_def=partitions,
            )
        )
        found.append(_training_asset(catalog, training, partitions, platform))
    return found


def _training_asset(
    catalog: Catalog,
    spec: TrainingSetSpec,
    partitions: dg.PartitionsDefinition,
    platform: PlatformResource,
) -> dg.AssetsDefinition:
    sequences = [catalog.sequences[name] for name in spec.sequences]
    # A training day reads the stored days of its sequences' windows, up to the day before.
    window = max(s.lookback_days for s in sequences)
    earlier = dg.TimeWindowPartitionMapping(start_offset=-window, end_offset=-1)

    required = ["user_id", "ts", *(f"{spec.prefix(s.name)}length" for s in sequences)]

    def training_checks(
        written: pl.DataFrame, days: Sequence[date]
    ) -> dict[date, list[dg.AssetCheckResult]]:
        return each_day(
            written,
            days,
            lambda rows, _: [
                checks.contract_check([checks.required_check(rows, required)]),
                checks.rows_check(rows),
            ],
        )

    return _daily_asset(
        training_key(spec.name),
        group="training",
        description=(
            f"{spec.description}\n\nOne row per row of spine '{spec.spine}' whose ts falls "
            f"on the day: the spine's columns, then {', '.join(spec.sequences)} at ts "
            "(exclusive), exactly as the API would have answered at that instant. Spine rows "
            f"without user_id or ts go to dead_letters/{spec.name} with the reason."
        ).strip(),
        partitions=partitions,
        deps=[
            landing_key(spec.spine),
            *{signal_key(s.signal) for s in sequences},
            *(dg.AssetDep(sequence_key(s.name), partition_mapping=earlier) for s in sequences),
        ],
        schema=pl.Schema({"user_id": pl.Int64(), "ts": pl.Datetime("us", "UTC")}),
        table_uri=platform.layout.training(spec.name),
        rules=[checks.REQUIRED],
        catalog=catalog,
        builder=build_training,
        name=spec.name,
        checker=training_checks,
    )


def _sequence_asset(
    catalog: Catalog,
    spec: SequenceSpec,
    partitions: dg.PartitionsDefinition,
    platform: PlatformResource,
) -> dg.AssetsDefinition:
    key = sequence_key(spec.name)
    schema = empty_snapshot(spec, catalog).collect_schema()

    def ordering(written: pl.DataFrame, days: Sequence[date]) -> dict[date, dg.AssetCheckResult]:
        return checks.ordering_checks(written, days, spec.max_length, spec.stored_fields)

    return _daily_asset(
        key,
        group="sequences",
        description=(
            f"{spec.description}\n\nVersion {spec.version}. The sequence is, per user, the "
            f"newest {spec.max_length} rows of signal '{spec.signal}' passing "
            f"`{spec.filter or 'true'}` in the {spec.lookback_days} days before a cutoff, "
            "newest first. Each partition stores what its day adds: per user with rows that "
            f"day, the day's newest {spec.max_length}, one list column per field. The "
            f"snapshot at a day's end combines the {spec.lookback_days} days of its window "
            "(see the README), so a day costs the same whatever the lookback."
        ),
        partitions=partitions,
        deps=[signal_key(spec.signal)],
        schema=schema,
        table_uri=platform.layout.sequence(spec),
        rules=[*STANDARD_RULES, checks.ORDERED],
        catalog=catalog,
        builder=build_sequence,
        name=spec.name,
        checker=standard_checks(schema, ["user_id"], ["user_id", "length"], ordering),
        finisher=lambda batch, _: {"realtime_rows_pruned": prune_realtime(batch, spec.signal)},
    )
