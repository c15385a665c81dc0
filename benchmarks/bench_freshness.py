"""Freshness: from an event produced to Kafka to that event served by the API, p50 and p95.

Two real-time paths over the same real broker, read service and data home:

- ``indexer``: ``sequence-platform index --continuous`` (target p95 <= 2 s);
- ``sensor``: ``dg dev`` (as ``make ui``) with the stream sensor launching micro-batch runs
  (p95 <= 15 s).

Events are produced at a steady rate for distinct users; a poller asks the batch endpoint for
every user with an event in flight and records when each event first appears. Everything runs
on this machine as separate processes (broker, read service, indexer or Dagster), as deployed.
Needs Java 17 and Maven for the broker (or ``--bootstrap`` of a running one). Run with
``make bench``; the result goes to bench/results/ (or ``--json``).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta
from pathlib import Path

import httpx

from benchmarks.measurement import Comparison, format_table, free_port, write_result
from sequence_platform.ingest.kafka_broker import KafkaBroker
from sequence_platform.ingest.stream import KafkaStream

REPO = Path(__file__).resolve().parents[1]
SEQUENCE = "recent_engagement"


@dataclass
class Tracker:
    """Send times of events in flight and the latency of each event seen."""

    sent: dict[str, tuple[int, float]] = field(default_factory=dict)
    latencies: list[float] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def pending_users(self) -> list[int]:
        with self.lock:
            return sorted({user for user, _ in self.sent.values()})[:1000]

    def seen(self, event_ids: set[str], at: float) -> None:
        with self.lock:
            for event_id in event_ids & self.sent.keys():
                self.latencies.append(at - self.sent.pop(event_id)[1])


def wait_until(check: Callable[[], bool], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if check():
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.2)
    raise TimeoutError(f"{what} not ready after {timeout:.0f} s")


def produce(stream: KafkaStream, topic: str, tracker: Tracker, rate: float, seconds: float) -> int:
    """Produce ``rate`` events a second for ``seconds``, each user getting one at a time."""
    began = time.monotonic()
    count = 0
    while (elapsed := time.monotonic() - began) < seconds:
        due = int(elapsed * rate) - count
        batch = []
        for _ in range(max(due, 0)):
            count += 1
            user = 1 + count % 1500
            event_id = f"fresh-{os.getpid()}-{count}"
            record = {
                "event_id": event_id,
                "user_id": user,
                "item_id": 1 + count % 500,
                "event_type": "save",
                "event_time": datetime.now(UTC).isoformat(timespec="milliseconds"),
                "surface": "home_feed",
                "dwell_ms": 2_000,
            }
            batch.append((str(user).encode(), json.dumps(record).encode()))
            with tracker.lock:
                tracker.sent[event_id] = (user, time.monotonic())
        if batch:
            stream.produce(topic, batch)
        time.sleep(0.01)
    return count


def poll(base: str, tracker: Tracker, stop: threading.Event) -> None:
    with httpx.Client(base_url=base, timeout=10) as client:
        while not stop.is_set():
            users = tracker.pending_users()
            if users:
                response = client.post(
                    f"/v1/sequences/{SEQUENCE}/batch",
                    json={"user_ids": users, "max_length": 50, "fields": "event_id"},
                )
                at = time.monotonic()
                if response.status_code == 200:
                    found = {
                        event["event_id"]
                        for result in response.json()["results"]
                        for event in result["events"]
                    }
                    tracker.seen(found, at)
            stop.wait(0.05)


def start(command: list[str], env: dict[str, str], log: Path) -> subprocess.Popen[bytes]:
    handle = log.open("wb")
    return subprocess.Popen(
        command, cwd=REPO, env=env, stdout=handle, stderr=subprocess.STDOUT, start_new_session=True
    )


def stop(process: subprocess.Popen[bytes]) -> None:
    process.terminate()
    try:
        process.wait(timeout=30)
    except subprocess.TimeoutExpired:
        process.kill()


def measure(path: str, args: argparse.Namespace, bootstrap: str, work: Path) -> list[float]:
    home = work / path
    topic = f"engagement-{path}"
    definitions = home / "definitions"
    shutil.copytree(REPO / "definitions", definitions, ignore=shutil.ignore_patterns("__*"))
    source = json.loads((definitions / "engagement.json").read_text())
    (definitions / "engagement.json").write_text(json.dumps({**source, "topic": topic}))
    env = {
        **os.environ,
        "SEQUENCE_PLATFORM_HOME": str(home / "data"),
        "SEQUENCE_PLATFORM_KAFKA_BOOTSTRAP": bootstrap,
        "SEQUENCE_PLATFORM_DEFINITIONS": str(definitions),
        "DAGSTER_HOME": str(home / "dagster"),
    }
    cli = [sys.executable, "-m", "sequence_platform.cli"]
    end = datetime.now(UTC).date() - timedelta(days=1)
    subprocess.run(
        [*cli, "generate", "--days", "3", "--end", end.isoformat(), "--users", "1500"],
        env=env,
        check=True,
        capture_output=True,
    )
    subprocess.run([*cli, "materialize"], env=env, check=True, capture_output=True)
    stream = KafkaStream(bootstrap)
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    processes = [start([*cli, "serve", "--port", str(port)], env, home / "serve.log")]
    if path == "indexer":
        processes.append(start([*cli, "index", "--continuous"], env, home / "index.log"))
    else:
        ui_port = free_port()
        # As `make ui` runs it: dg dev, from the repository (its pyproject names the code).
        command = [str(Path(sys.executable).with_name("dg")), "dev", "-p", str(ui_port)]
        processes.append(start(command, env, home / "dagster.log"))
    tracker = Tracker()
    stop_polling = threading.Event()
    poller = threading.Thread(target=poll, args=(base, tracker, stop_polling), daemon=True)
    try:
        with httpx.Client(base_url=base) as client:
            wait_until(lambda: client.get("/readyz").status_code == 200, 120, "read service")
        poller.start()
        # Warm up: the path is live once one event makes it through.
        produce(stream, topic, tracker, 5, 1)
        wait_until(lambda: not tracker.sent, args.warmup, f"{path} path warm-up")
        tracker.latencies.clear()
        sent = produce(stream, topic, tracker, args.rate, args.seconds)
        wait_until(lambda: not tracker.sent, args.drain, f"{path} path drain")
    finally:
        stop_polling.set()
        for process in processes:
            stop(process)
        stream.close()
    assert len(tracker.latencies) == sent, f"{sent - len(tracker.latencies)} events never seen"
    return tracker.latencies


def percentile(values: list[float], share: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(share * len(ordered)))]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--paths", default="indexer,sensor", help="comma list: indexer, sensor")
    parser.add_argument("--rate", type=float, default=200.0, help="events per second")
    parser.add_argument("--seconds", type=float, default=30.0, help="how long to produce")
    parser.add_argument("--warmup", type=float, default=180.0)
    parser.add_argument("--drain", type=float, default=120.0)
    parser.add_argument("--workdir", type=Path, help="keep the data homes and logs here")
    parser.add_argument("--bootstrap", help="a running Kafka broker (default: start one)")
    parser.add_argument("--json", type=Path, help="result file (default bench/results/...)")
    args = parser.parse_args()
    targets = {"indexer": 2.0, "sensor": 15.0}
    results: dict[str, list[float]] = {}
    # An external broker (--bootstrap) is the caller's to run; otherwise one is started here.
    broker: AbstractContextManager[KafkaBroker | None] = (
        nullcontext() if args.bootstrap else KafkaBroker()
    )
    with tempfile.TemporaryDirectory() as folder, broker as started:
        bootstrap = args.bootstrap or (started.bootstrap if started is not None else "")
        for path in args.paths.split(","):
            print(
                f"measuring the {path} path: {args.rate:g} events/s for {args.seconds:g} s ...",
                flush=True,
            )
            results[path] = measure(path, args, bootstrap, args.workdir or Path(folder))
    print(f"\nfreshness, produce -> visible in GET/POST {SEQUENCE} ({date.today()}):")
    summary: dict[str, dict[str, float | int]] = {}
    comparisons: list[Comparison] = []
    for path, latencies in results.items():
        p50, p95 = statistics.median(latencies), percentile(latencies, 0.95)
        verdict = "meets" if p95 <= targets[path] else "MISSES"
        print(
            f"  {path:<8} events {len(latencies):>6,}  p50 {p50:6.2f} s  p95 {p95:6.2f} s  "
            f"max {max(latencies):6.2f} s  ({verdict} the p95 target of {targets[path]:g} s)"
        )
        summary[path] = {
            "events": len(latencies),
            "p50_s": p50,
            "p95_s": p95,
            "max_s": max(latencies),
        }
        comparisons.append(
            Comparison.of(
                f"freshness, {path}: p95 produce -> served",
                p95,
                None,
                "s",
                f"<= {targets[path]:g} s",
                p95 <= targets[path],
            )
        )
    parameters = {
        "paths": args.paths,
        "rate": args.rate,
        "seconds": args.seconds,
        "external_broker": bool(args.bootstrap),
    }
    written = write_result("bench_freshness", args.json, parameters, summary, comparisons)
    print()
    print(format_table([c.as_row() for c in comparisons]))
    print(f"\nwrote {written}")


if __name__ == "__main__":
    main()
