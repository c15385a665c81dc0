"""The ``sequence-platform`` command: demo, generate, materialize, produce, index,
training-set, serve, forget-user, validate."""

from __future__ import annotations

import argparse
import atexit
import gc
import itertools
import logging
import os
import signal
import sys
import threading
import time
import warnings
from collections.abc import Callable
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any

from sequence_platform.settings import PlatformSettings
from sequence_platform.spec.errors import DefinitionError
from sequence_platform.spec.loader import load_catalog

if TYPE_CHECKING:
    import dagster as dg

DEFAULT_DAGSTER_HOME = ".dagster_home"


def main(argv: list[str] | None = None) -> int:
    parser = _parser()
    args = parser.parse_args(argv)
    from sequence_platform.ingest.stream import StreamUnavailable

    try:
        result: int = args.command(args)
        return result
    except KeyboardInterrupt:
        # Ctrl-C outside a Dagster run (which reports its own interruption): no traceback.
        print("Interrupted.", file=sys.stderr)
        return 130
    except DefinitionError as error:
        print(error, file=sys.stderr)
        print("Fix the definitions above, then run 'sequence-platform validate'.", file=sys.stderr)
        return 2
    except StreamUnavailable as error:
        print(f"The stream is unavailable: {error}", file=sys.stderr)
        print(
            "Check SEQUENCE_PLATFORM_KAFKA_BOOTSTRAP (unset it to use the local stream), "
            "or start a broker with 'make kafka'.",
            file=sys.stderr,
        )
        return 3
    except OSError as error:
        print(f"{error.strerror or error}: {error.filename or ''}", file=sys.stderr)
        return 2


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="sequence-platform",
        description="Per-user event sequences for ML: one definition, batch, real time, serving.",
    )
    commands = parser.add_subparsers(required=True, metavar="COMMAND")

    demo = commands.add_parser(
        "demo", help="generate data, materialize every asset through Dagster, serve the API"
    )
    _generation_options(demo, days=21)
    demo.add_argument("--host", default="127.0.0.1")
    demo.add_argument("--port", type=_port, default=8000)
    demo.add_argument("--no-serve", action="store_true", help="stop after materializing")
    demo.set_defaults(command=_demo)

    generate = commands.add_parser("generate", help="write a synthetic landing zone")
    _generation_options(generate, days=28)
    generate.set_defaults(command=_generate)

    materialize = commands.add_parser(
        "materialize", help="materialize assets for a range of days through Dagster"
    )
    materialize.add_argument("--start", type=date.fromisoformat, help="first day (YYYY-MM-DD)")
    materialize.add_argument("--end", type=date.fromisoformat, help="last day, included")
    materialize.add_argument(
        "--select",
        action="append",
        default=[],
        help="asset key such as sequences/recent_saves (repeatable); default every asset",
    )
    materialize.set_defaults(command=_materialize)

    produce = commands.add_parser(
        "produce", help="send live synthetic events (or a JSON Lines file) to the stream"
    )
    produce.add_argument("--source", default="engagement", help="source definition to feed")
    produce.add_argument("--rate", type=_positive, default=200.0, help="events per second")
    produce.add_argument("--count", type=int, default=2_000, help="synthetic events to send")
    produce.add_argument("--file", type=Path, help="send this JSON Lines file verbatim instead")
    produce.add_argument(
        "--skip", type=int, default=0, help="leave out the first N messages (to send the rest)"
    )
    produce.add_argument("--seed", type=int, default=11)
    produce.add_argument("--users", type=int, default=2_000)
    produce.add_argument("--items", type=int, default=5_000)
    produce.set_defaults(command=_produce)

    index = commands.add_parser(
        "index", help="process the stream into the real-time tables (micro-batches)"
    )
    index.add_argument(
        "--continuous", action="store_true", help="keep running for sub-second freshness"
    )
    index.add_argument("--max-batch", type=int, default=10_000, help="messages per micro-batch")
    index.set_defaults(command=_index)

    training = commands.add_parser(
        "training-set",
        help="point-in-time training rows: each spine row's sequences at its ts",
    )
    training.add_argument(
        "--sequence",
        action="append",
        required=True,
        help="sequence to add (repeatable; columns are prefixed '<name>__' when several)",
    )
    training.add_argument(
        "--spine",
        required=True,
        help="Parquet file (or glob) or Delta table URI with user_id, ts and any labels",
    )
    training.add_argument("--out", type=Path, required=True, help="Parquet file to write")
    training.set_defaults(command=_training_set)

    serve = commands.add_parser("serve", help="run the HTTP read service")
    serve.add_argument("--host", default="127.0.0.1")
    serve.add_argument("--port", type=_port, default=8000)
    serve.add_argument(
        "--workers",
        type=_at_least_one,
        default=1,
        help="worker processes (default 1); they share one copy of each snapshot in memory",
    )
    serve.add_argument(
        "--access-log", action="store_true", help="log every request (off: /metrics counts them)"
    )
    serve.set_defaults(command=_serve)

    forget = commands.add_parser(
        "forget-user",
        help="delete every row of users from every table, vacuum, and keep a tombstone",
    )
    forget.add_argument("user_ids", nargs="+", type=_user_id, metavar="USER_ID")
    forget.set_defaults(command=_forget_user)

    validate = commands.add_parser("validate", help="check the definitions and explain mistakes")
    validate.add_argument("folder", nargs="?", type=Path, help="default: the definitions package")
    validate.set_defaults(command=_validate)
    return parser


def _user_id(text: str) -> int:
    from sequence_platform.runtime.tombstones import user_ids

    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"a user id is an integer, not {text!r}") from None
    try:
        user_ids([value])  # the int64 range, as forgetting checks it
    except ValueError as error:
        raise argparse.ArgumentTypeError(str(error)) from None
    return value


def _port(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"a port is a number, not {text!r}") from None
    if not 1 <= value <= 65535:
        raise argparse.ArgumentTypeError(f"a port is 1..65535, not {text}")
    return value


def _port_taken(host: str, port: int) -> str | None:
    """Why the demo could not listen on ``host:port`` (in use, say), or None when it can."""
    import socket

    try:
        family = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)[0][0]
        with socket.socket(family, socket.SOCK_STREAM) as probe:
            probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as uvicorn does
            probe.bind((host, port))
    except OSError as error:
        return error.strerror or str(error)
    return None


def _at_least_one(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"a whole number, not {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be 1 or more, not {text}")
    return value


def _positive(text: str) -> float:
    value = float(text)
    if not value > 0:
        raise argparse.ArgumentTypeError(f"must be greater than 0, not {text}")
    return value


def _generation_options(parser: argparse.ArgumentParser, *, days: int) -> None:
    yesterday = datetime.now(UTC).date() - timedelta(days=1)
    parser.add_argument(
        "--days", type=_at_least_one, default=days, help=f"days of history (default {days})"
    )
    parser.add_argument(
        "--end", type=date.fromisoformat, default=yesterday, help="last day (default yesterday)"
    )
    parser.add_argument("--users", type=int, default=2_000)
    parser.add_argument("--items", type=int, default=5_000)
    parser.add_argument("--events-per-day", type=int, default=8_000)
    parser.add_argument("--seed", type=int, default=7)


def _generate(args: argparse.Namespace) -> int:
    from sequence_platform.ingest.generate import GenerationConfig, generate_landing

    settings = PlatformSettings()
    start = args.end - timedelta(days=args.days - 1)
    config = GenerationConfig(
        start=start,
        days=args.days,
        users=args.users,
        items=args.items,
        events_per_day=args.events_per_day,
        seed=args.seed,
    )
    print(f"Generating {args.days} days ({start} to {args.end}) into {settings.home}/landing")
    began = time.perf_counter()
    summary = generate_landing(config, settings.home, progress=lambda line: print(f"  {line}"))
    settings.record_start_date(start)
    print(
        f"Wrote {summary.events:,} events ({summary.duplicates:,} duplicates and "
        f"{summary.malformed:,} malformed records planted), {summary.item_versions:,} item "
        f"versions in {time.perf_counter() - began:.1f}s. First partition: {start}."
    )
    return 0


def _materialize(args: argparse.Namespace) -> int:
    # Starting leaves ~340,000 objects the collector tracks (Dagster, SQLAlchemy, the
    # definitions): it would walk them four times while they are created, for no garbage
    # (0.3 s: `gc.callbacks`, see the README's Performance). It stays off until the run
    # starts; then what is alive is frozen out of its walks until the run is over.
    collecting = gc.isenabled()
    gc.disable()
    try:
        return _materialize_range(args, started=lambda: _collect_from_now(collecting))
    finally:
        gc.unfreeze()
        if collecting:
            gc.enable()


def _collect_from_now(collecting: bool) -> None:
    gc.freeze()
    if collecting:
        gc.enable()


def _materialize_range(args: argparse.Namespace, started: Callable[[], None]) -> int:
    import dagster as dg

    from sequence_platform.orchestration import build_definitions
    from sequence_platform.orchestration.orphans import fail_orphaned_runs
    from sequence_platform.orchestration.runner import (
        PROGRESS_LOGGER,
        RANGE_END_TAG,
        RANGE_START_TAG,
        AssetRun,
        computed_asset_keys,
        materialize_days,
    )

    settings = PlatformSettings()
    # Dagster warns about its own beta parameters when it builds the job; not the user's concern.
    warnings.filterwarnings("ignore", category=dg.BetaWarning)
    yesterday = datetime.now(UTC).date() - timedelta(days=1)
    start = args.start or settings.first_day
    end = args.end or yesterday
    if start < settings.first_day or end > yesterday or end < start:
        print(
            f"Days must lie within the partitions, {settings.first_day} (the start date) to "
            f"{yesterday} (the last complete day); asked for {start} to {end}. Set "
            "SEQUENCE_PLATFORM_START_DATE or run 'sequence-platform generate' for other days.",
            file=sys.stderr,
        )
        return 2
    defs = build_definitions(settings=settings)
    keys = [dg.AssetKey.from_user_string(key) for key in args.select] or None
    known = computed_asset_keys(defs)
    unknown = [key.to_user_string() for key in keys or [] if key not in known]
    if unknown:
        names = ", ".join(key.to_user_string() for key in known)
        print(f"Unknown asset {', '.join(unknown)}; the assets are: {names}", file=sys.stderr)
        return 2
    print(f"Materializing {start} to {end} through Dagster (DAGSTER_HOME={_dagster_home()})")

    def report(run: AssetRun) -> None:
        status = "ok" if run.success else "FAILED"
        checks = f"  failed checks: {', '.join(run.failed_checks)}" if run.failed_checks else ""
        if run.warnings:
            checks += f"  warnings: {', '.join(run.warnings)}"
        print(
            f"  {run.key.to_user_string():<34} {status:<6} {run.rows:>9,} rows"
            f"  {run.seconds:6.2f}s  run {run.run_id[:8]}{checks}"
        )
        if run.error:
            print(f"    {run.error}", file=sys.stderr)

    shown = logging.StreamHandler(sys.stdout)
    shown.setFormatter(logging.Formatter("    %(message)s"))
    shown.setLevel(logging.INFO)
    logging.getLogger(PROGRESS_LOGGER).addHandler(shown)
    logging.getLogger(PROGRESS_LOGGER).setLevel(logging.INFO)
    with _dagster_instance() as instance:
        for orphan in fail_orphaned_runs(instance):
            print(
                f"  marked run {orphan.run_id[:8]} ({orphan.tags.get(RANGE_START_TAG)} to "
                f"{orphan.tags.get(RANGE_END_TAG)}) failed: its process is gone"
            )
        started()
        # Failures are summed up per asset below; Dagster's stack traces stay in the run's
        # event log (the UI), rather than scrolling the summary away.
        runs = materialize_days(
            defs,
            instance,
            start,
            end,
            keys=keys,
            progress=report,
            raise_on_error=False,
            log_level="CRITICAL",
        )
    if any(run.error and INTERRUPTED in run.error for run in runs):
        print(
            "Interrupted: the chunks of days already written stay (each is one commit); run the "
            "same command again to finish.",
            file=sys.stderr,
        )
        return 130
    if not all(run.success for run in runs):
        failed = next(run for run in runs if not run.success)
        print(
            f"The run's full log, stack traces included, is in the Dagster UI (make ui), run "
            f"{failed.run_id[:8]}.",
            file=sys.stderr,
        )
        return 1
    return 0


INTERRUPTED = "DagsterExecutionInterruptedError"
"""How a run stopped by Ctrl-C (SIGINT) names its failure."""


def _dagster_home() -> Path:
    """``DAGSTER_HOME``, the project-local one unless set, so that ``make ui`` shows the runs
    made here."""
    return Path(os.environ.setdefault("DAGSTER_HOME", str(Path(DEFAULT_DAGSTER_HOME).absolute())))


def _dagster_instance() -> dg.DagsterInstance:
    """The instance in ``_dagster_home()``."""
    from sequence_platform.orchestration.instance import open_instance

    return open_instance(_dagster_home())


def _produce(args: argparse.Namespace) -> int:
    from sequence_platform.ingest.generate import GenerationConfig, live_events
    from sequence_platform.ingest.stream import open_stream
    from sequence_platform.runtime.live import (
        ProduceStopped,
        jsonl_messages,
        live_messages,
        produce_messages,
    )

    settings = PlatformSettings()
    catalog = load_catalog(settings.definitions)
    if args.source not in catalog.sources:
        print(f"Unknown source '{args.source}' (defined: {', '.join(catalog.sources)}).")
        return 2
    topic = catalog.sources[args.source].topic_name
    if args.file:
        messages = jsonl_messages(args.file)
        what = str(args.file)
    else:
        config = GenerationConfig(
            start=datetime.now(UTC).date(), users=args.users, items=args.items, seed=args.seed
        )
        events = live_events(config, datetime.now(UTC), args.count, args.seed)
        messages = live_messages(events)
        what = f"{args.count:,} live events"
    if args.skip:
        messages = itertools.islice(messages, args.skip, None)
        what += f" after the first {args.skip:,}"
    target = settings.kafka_bootstrap or f"local stream {settings.home / 'stream'}"
    print(f"Producing {what} to '{topic}' on {target} at {args.rate:g}/s")
    stream = open_stream(settings.kafka_bootstrap, settings.home)
    last = [time.monotonic()]

    def report(sent: int) -> None:
        if time.monotonic() - last[0] >= 2:
            last[0] = time.monotonic()
            print(f"  {sent:,} sent")

    try:
        sent = produce_messages(stream, topic, messages, rate=args.rate, on_sent=report)
    except ProduceStopped as stopped:
        print(f"Stopped after {stopped.sent:,} messages: {stopped.cause}", file=sys.stderr)
        resume = f"add --skip {args.skip + stopped.sent} to this command to send the rest"
        if isinstance(stopped.cause, OSError):
            print(
                f"The stream holds those {stopped.sent:,} messages and nothing after them. Free "
                "space on that disk (or set SEQUENCE_PLATFORM_HOME to a folder on a disk with "
                f"room), then {resume}.",
                file=sys.stderr,
            )
            return 2
        print(
            f"The broker holds at least those {stopped.sent:,} (perhaps a few more). Check "
            f"SEQUENCE_PLATFORM_KAFKA_BOOTSTRAP and the broker, then {resume}.",
            file=sys.stderr,
        )
        return 3
    finally:
        stream.close()
    print(f"Sent {sent:,} messages.")
    return 0


def _index(args: argparse.Namespace) -> int:

    from sequence_platform.ingest.stream import open_stream
    from sequence_platform.orchestration.realtime import IndexerReporter
    from sequence_platform.runtime.live import ContinuousIndexer, IndexerSettings
    from sequence_platform.runtime.microbatch import MicroBatchOutcome, RealtimeWriteFailed
    from sequence_platform.storage.layout import TableLayout

    settings = PlatformSettings()
    catalog = load_catalog(settings.definitions)
    layout = TableLayout(settings.tables_root, dict(settings.storage_options))
    # The indexer's appends are recorded in Dagster like the micro-batch job's.
    instance = _dagster_instance()
    recorder = IndexerReporter(instance, catalog, layout)
    stream = open_stream(settings.kafka_bootstrap, settings.home)

    def report(outcome: MicroBatchOutcome) -> None:
        print(
            f"  {outcome.source}/{outcome.partition} offsets {outcome.start}..{outcome.end - 1}: "
            f"{outcome.valid:,} events, {outcome.rejected:,} dead letters "
            f"({outcome.seconds * 1000:.0f} ms)",
            flush=True,
        )
        recorder(outcome)

    def warn(error: Exception) -> None:
        print(f"  stream unavailable, retrying: {error}", file=sys.stderr, flush=True)

    indexer = ContinuousIndexer(
        catalog,
        layout,
        stream,
        IndexerSettings(max_batch_messages=args.max_batch),
        on_batch=report,
        on_error=warn,
        on_idle=recorder.idle,
    )
    try:
        if args.continuous:
            print("Indexing continuously; Ctrl-C to stop.", flush=True)
            indexer.run()
        else:
            while indexer.poll_once():
                pass
    except RealtimeWriteFailed as failed:
        print(f"Indexing stopped: {failed}.", file=sys.stderr)
        remedy = (
            f"Free space on the disk of {failed.uri}" if failed.disk_full else "Fix the cause above"
        )
        print(
            "Nothing was lost: each table commits its stream offsets with its rows, so what "
            f"was not written is still in the stream. {remedy}, then run "
            "'sequence-platform index' again: it resumes where each table stopped.",
            file=sys.stderr,
        )
        return 2
    finally:
        stream.close()
        recorder.flush()
        instance.dispose()
    return 0


def _training_set(args: argparse.Namespace) -> int:
    from sequence_platform.runtime.reads import Reader
    from sequence_platform.runtime.training import (
        InvalidSpine,
        read_spine,
        write_training_set,
    )
    from sequence_platform.storage.layout import TableLayout

    settings = PlatformSettings()
    catalog = load_catalog(settings.definitions)
    unknown = [name for name in args.sequence if name not in catalog.sequences]
    if unknown:
        known = ", ".join(catalog.sequences)
        print(f"Unknown sequence {', '.join(unknown)}; the sequences are: {known}", file=sys.stderr)
        return 2
    layout = TableLayout(settings.tables_root, dict(settings.storage_options))
    began = time.perf_counter()
    several = len(args.sequence) > 1
    sequences = [
        (f"{name}__" if several else "", catalog.sequences[name]) for name in args.sequence
    ]
    args.out.parent.mkdir(parents=True, exist_ok=True)
    try:
        spine = read_spine(args.spine, dict(settings.storage_options))
        written, rejected = write_training_set(Reader(catalog, layout), sequences, spine, args.out)
    except InvalidSpine as error:
        print(f"The spine {args.spine} cannot be used: {error}", file=sys.stderr)
        return 2
    print(
        f"Wrote {written:,} training rows ({', '.join(args.sequence)} as of each spine row's "
        f"ts) to {args.out} in {time.perf_counter() - began:.1f}s."
    )
    if rejected.height:
        refused = args.out.with_name(f"{args.out.stem}.rejected.parquet")
        rejected.write_parquet(refused)
        print(
            f"{rejected.height:,} spine rows could not be answered (no user_id or ts); "
            f"they are in {refused} with the reason.",
            file=sys.stderr,
        )
    return 0


def _serve(args: argparse.Namespace) -> int:
    from sequence_platform.serving.app import serve

    # --access-log turns the access log on; without it, SEQUENCE_PLATFORM_ACCESS_LOG decides.
    settings = PlatformSettings(access_log=True) if args.access_log else PlatformSettings()
    serve(settings, host=args.host, port=args.port, workers=args.workers)
    return 0


def _forget_user(args: argparse.Namespace) -> int:
    from sequence_platform.runtime.forget import FORGET_INTERRUPTED, forget_users
    from sequence_platform.serving.app import snapshot_folder
    from sequence_platform.serving.snapshot_files import SnapshotFiles
    from sequence_platform.storage.layout import TableLayout

    settings = PlatformSettings()
    layout = TableLayout(settings.tables_root, dict(settings.storage_options))
    users = ", ".join(str(user) for user in args.user_ids)
    print(f"Forgetting user(s) {users} in {settings.tables_root}")
    try:
        outcome = forget_users(layout, args.user_ids)
    except FORGET_INTERRUPTED as error:
        print(f"Forgetting did not complete: {error}", file=sys.stderr)
        print("Running the same command again is safe, and completes it.", file=sys.stderr)
        return 1
    for table in outcome.tables:
        print(
            f"  {table.table:<40} {table.rows_deleted:>8,} rows deleted"
            f"  {table.files_vacuumed:>5,} files vacuumed"
        )
    # A running read service drops its own copies when it sees the tombstones; these files
    # are the ones no process maps any more.
    removed = SnapshotFiles(snapshot_folder(settings)).remove_unused(force=True, older_than=0)
    print(
        f"Deleted {outcome.rows_deleted:,} rows of user(s) {users} from {len(outcome.tables)} "
        f"tables and {len(removed)} cached snapshot files; tombstones recorded at "
        f"{outcome.forgotten_at.isoformat(timespec='milliseconds')}. Landing files are yours "
        "to purge: later runs leave these users out of them."
    )
    return 0


def _validate(args: argparse.Namespace) -> int:
    settings = PlatformSettings()
    catalog = load_catalog(args.folder or settings.definitions)
    for spec in catalog.all_specs():
        print(f"  {spec.kind:<14} {spec.name:<24} {catalog.origin(spec.name)}")
    print(f"{len(catalog.definitions)} definitions are valid.")
    return 0


def _demo(args: argparse.Namespace) -> int:
    # Checked first: the generation and the materialization take a while.
    taken = None if args.no_serve else _port_taken(args.host, args.port)
    if taken is not None:
        print(
            f"The demo cannot serve on {args.host}:{args.port}: {taken}. "
            "Stop what uses it, or choose another with --port.",
            file=sys.stderr,
        )
        return 2
    code = _generate(args)
    if code:
        return code
    start = args.end - timedelta(days=args.days - 1)
    code = _materialize(argparse.Namespace(start=start, end=args.end, select=[]))
    if code or args.no_serve:
        return code
    base = f"http://{args.host}:{args.port}"
    # Explicit handlers: a shell or make may start the demo in the background with SIGINT
    # ignored, and Dagster's run leaves SIGTERM mapped to whatever SIGINT's handler was.
    stop = DemoStop()
    stop.install()
    try:
        services = _start_live_services(args.host, args.port)
    except RuntimeError as error:  # the port was taken meanwhile, say
        print(f"The demo stopped: {error}", file=sys.stderr)
        return 1
    try:
        _show_live_events(base, services.indexer, stop.requested)
    except Exception as error:  # the demo goes on serving even if the live show stumbles
        print(f"  (live events could not be shown: {error})")
    _print_demo_commands(base, args.end)
    while services.running() and not stop.requested.wait(0.5):
        pass
    services.stop()
    how = f" ({stop.signal_name})" if stop.signal_name else ""
    print(f"\nThe demo stopped{how}: the read service and the indexer are shut down.", flush=True)
    return 0


class DemoStop:
    """SIGINT (Ctrl-C) and SIGTERM ask the demo to stop; the main thread then shuts the
    services down in order and returns, so no thread is left running at interpreter exit."""

    def __init__(self) -> None:
        self.requested = threading.Event()
        self.signal_name: str | None = None

    def install(self) -> None:
        for number in (signal.SIGINT, signal.SIGTERM):
            signal.signal(number, self._handle)

    def _handle(self, number: int, frame: object) -> None:
        self.signal_name = signal.Signals(number).name
        self.requested.set()


def _print_demo_commands(base: str, last_day: date) -> None:
    """What to try next, with the days the demo wrote (the last of them is ``last_day``)."""
    print(
        "\nThe read service and the real-time indexer are running. Try, in another terminal:\n"
        f"  curl -s '{base}/v1/sequences/recent_engagement/1?max_length=5' | python -m json.tool\n"
        f"  curl -s '{base}/v1/sequences/recent_saves/2?fields=item_id,category,current_category"
        "&format=columnar'\n"
        f"  curl -s '{base}/v1/sequences/recent_saves/2?as_of={last_day}T12:00:00Z"
        "&max_age_seconds=21600'\n"
        f"  curl -s -X POST '{base}/v1/sequences/recent_saves/batch' "
        "-H 'content-type: application/json' -d '{\"user_ids\": [1, 2, 3], \"max_length\": 3}'\n"
        f"  curl -s '{base}/v1/definitions'\n"
        "  uv run sequence-platform produce --rate 200   # live events, indexed within a second\n"
        f"  uv run sequence-platform materialize --start {last_day} --end {last_day}"
        "   # rebuild a day\n"
        f"  open {base}/docs for the API reference; 'make ui' for the Dagster UI.\n"
        "Ctrl-C stops the demo."
    )


class LiveServices:
    """The demo's read service and continuous indexer, each on its own thread."""

    def __init__(self, server: Any, indexer: Any) -> None:
        self.server = server
        self.indexer = indexer
        self.server_thread = threading.Thread(target=server.run, name="read-service", daemon=True)
        self.indexer_thread = threading.Thread(target=indexer.run, name="indexer", daemon=True)

    def running(self) -> bool:
        return self.server_thread.is_alive() and not self.server.should_exit

    def stop(self, timeout: float = 30.0) -> None:
        """The server first (it stops taking requests, then its refresher), then the indexer
        (it finishes the micro-batch it is in), then the stream."""
        self.server.should_exit = True
        self.server_thread.join(timeout)
        self.indexer.stop()
        self.indexer_thread.join(timeout)
        self.indexer.stream.close()


def _start_live_services(host: str, port: int) -> LiveServices:
    """The read service and the continuous indexer, started."""
    import uvicorn

    from sequence_platform.ingest.stream import open_stream
    from sequence_platform.runtime.live import ContinuousIndexer
    from sequence_platform.serving.app import create_app
    from sequence_platform.storage.layout import TableLayout

    settings = PlatformSettings()
    catalog = load_catalog(settings.definitions)
    app = create_app(settings, catalog=catalog, refresh_interval=0.25)
    server = uvicorn.Server(uvicorn.Config(app, host=host, port=port, log_level="warning"))
    layout = TableLayout(settings.tables_root, dict(settings.storage_options))
    indexer = ContinuousIndexer(
        catalog, layout, open_stream(settings.kafka_bootstrap, settings.home)
    )
    services = LiveServices(server, indexer)
    services.server_thread.start()
    services.indexer_thread.start()
    deadline = time.monotonic() + 30
    while not server.started:
        if time.monotonic() > deadline or not services.server_thread.is_alive():
            services.stop()
            raise RuntimeError(f"the read service did not start on {host}:{port}; is it in use?")
        time.sleep(0.05)
    return services


def _show_live_events(base: str, indexer: Any, stop: threading.Event) -> None:
    """Produce a few live events for user 1 and show each one arriving in the API."""
    import httpx

    from sequence_platform.runtime.live import live_messages

    user = 1
    path = f"{base}/v1/sequences/recent_engagement/{user}"
    with httpx.Client(timeout=10) as client:
        deadline = time.monotonic() + 30
        while client.get(f"{base}/readyz").status_code != 200:
            if time.monotonic() > deadline:
                raise RuntimeError("the read service did not become ready")
            if stop.wait(0.1):
                return
        print(f"\nLive events for user {user}, produced now and read back from {path}:")
        for number in range(1, 4):
            event_id = f"live-{int(time.time() * 1000)}-{number}"
            event = {
                "event_id": event_id,
                "user_id": user,
                "item_id": 100 + number,
                "event_type": "save",
                "surface": "home_feed",
                "dwell_ms": 2_500,
            }
            sent = time.monotonic()
            topic = indexer.catalog.sources["engagement"].topic_name
            indexer.stream.produce(topic, list(live_messages([event])))
            while True:
                body = client.get(path, params={"max_length": 3}).json()
                if body["events"] and body["events"][0]["event_id"] == event_id:
                    break
                if time.monotonic() - sent > 15:
                    raise RuntimeError(f"{event_id} did not appear within 15 s")
                if stop.wait(0.02):
                    return
            newest = ", ".join(e["event_id"] for e in body["events"])
            print(
                f"  {event_id} served after {time.monotonic() - sent:.2f}s "
                f"(newest 3: {newest}; from real time: {body['provenance']['from_realtime']})"
            )
            if stop.wait(0.5):
                return


def run() -> None:
    """The command's entry point. Once a command that loaded Dagster has returned, its work is
    committed and its instance closed; tearing the interpreter down (some 2,000 modules) would
    still take 0.3-0.4 s, so the process runs its exit handlers, flushes and leaves."""
    code = main()
    if "dagster" not in sys.modules:
        raise SystemExit(code)
    atexit._run_exitfuncs()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)


if __name__ == "__main__":
    run()
