"""Serving latency and throughput against the HTTP floor, load-tested with wrk.

The real read service (``sequence-platform serve``) on materialized benchmark data, and the
floor (``floor_app.py``): the same stack answering, for the same requests, the very bytes the
real service answered. Each request is load-tested with ``wrk`` (``wrk_report.lua`` reports
p50/p99 and requests/s as JSON) with 1 connection, and the single fetch also with 8:

- single fetch: ``recent_engagement`` of a user with 100 events, 5 fields, as records, as
  columnar and as Arrow (``format=arrow``);
- an unknown user; a POST of the batch endpoint with 100 users.

Targets: at 1 connection p50 <= floor p50 + 0.5 ms and p99 <= 3 ms; at 8 connections at
least 70% of the floor's throughput; columnar and Arrow within 1.2x of records; the batch of
100 users p99 <= 25 ms; an unknown user p50 <= floor p50 + 0.2 ms. The single fetch is also
measured with ``serve --workers``, one worker per core.

Needs wrk (``apt-get install wrk``, ``brew install wrk``). Give ``--home`` a data home that
``bench_batch.py --workdir`` materialized, or the benchmark generates and materializes one.
"""

from __future__ import annotations

import argparse
import base64
import json
import os
import random
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import polars as pl

from benchmarks.floor_app import body_key
from benchmarks.measurement import (
    REPO,
    Comparison,
    format_table,
    free_port,
    parse_count,
    require_success,
    run_measured,
    write_result,
)

SEQUENCE = "recent_engagement"
FIELDS = "item_id,event_type,surface,dwell_bucket,category"
UNKNOWN_USER = 987_654_321_987
BATCH_USERS = 100
LUA = REPO / "benchmarks" / "wrk_report.lua"
CLI = [sys.executable, "-m", "sequence_platform.cli"]
WRK_HINT = (
    "wrk is needed: 'apt-get install -y wrk' (Debian/Ubuntu), 'brew install wrk' (macOS); "
    "'make test' and 'make bench' install it when they can."
)


@dataclass(frozen=True)
class Request:
    name: str
    method: str
    path: str
    body: bytes | None = None

    @property
    def floor_key(self) -> str:
        if self.method == "POST":
            return body_key("POST", "batch")
        user, query = self.path.rsplit("/", 1)[1].split("?", 1)
        fmt = dict(part.split("=", 1) for part in query.split("&")).get("format", "records")
        return body_key("GET", f"{user} {fmt}")


@dataclass
class Server:
    process: subprocess.Popen[bytes]
    base: str


@contextmanager
def running(command: list[str], env: dict[str, str], port: int, log: Path) -> Iterator[Server]:
    """A server process, ready (``/readyz`` 200) on ``port``; terminated on leaving."""
    with log.open("wb") as output:
        process = subprocess.Popen(
            command, cwd=REPO, env=env, stdout=output, stderr=subprocess.STDOUT
        )
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 600
        with httpx.Client(base_url=base, timeout=5) as client:
            while True:
                if process.poll() is not None:
                    raise RuntimeError(f"{command} exited:\n{log.read_text()[-3000:]}")
                try:
                    if client.get("/readyz").status_code == 200:
                        break
                except httpx.HTTPError:
                    pass
                if time.monotonic() > deadline:
                    raise TimeoutError(f"{command} not ready after 600 s; see {log}")
                time.sleep(0.2)
        yield Server(process, base)
    finally:
        process.terminate()
        try:
            process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def load_test(
    base: str, request: Request, connections: int, seconds: int, work: Path
) -> dict[str, Any]:
    """wrk against ``base + request.path``: latency percentiles (ms) and requests/s."""
    env = {**os.environ, "WRK_METHOD": request.method}
    if request.body is not None:
        body_file = work / f"{request.name}.body.json"
        body_file.write_bytes(request.body)
        env["WRK_BODY_FILE"] = str(body_file)
    threads = max(1, min(connections, os.cpu_count() or 1))
    command = ["wrk", f"-t{threads}", f"-c{connections}", f"-d{seconds}s", "--timeout", "10s"]
    done = subprocess.run(
        [*command, "-s", str(LUA), base + request.path],
        env=env,
        capture_output=True,
        text=True,
        timeout=seconds + 120,
    )
    lines = [line for line in done.stdout.splitlines() if line.startswith("WRK_JSON ")]
    if done.returncode != 0 or not lines:
        raise RuntimeError(f"wrk failed ({done.returncode}): {done.stdout}\n{done.stderr}")
    report = json.loads(lines[-1].removeprefix("WRK_JSON "))
    errors = sum(report[k] for k in report if k.endswith("_errors") or k == "timeouts")
    return {
        "connections": connections,
        "seconds": report["duration_us"] / 1e6,
        "requests": report["requests"],
        "requests_per_s": report["requests"] / (report["duration_us"] / 1e6),
        "p50_ms": report["p50_us"] / 1000,
        "p90_ms": report["p90_us"] / 1000,
        "p99_ms": report["p99_us"] / 1000,
        "max_ms": report["max_us"] / 1000,
        "mean_ms": report["mean_us"] / 1000,
        "errors": errors,
    }


def materialize_home(args: argparse.Namespace, home: Path) -> None:
    """Generate and materialize the benchmark data under ``home``."""
    users = max(50, round(args.events * 50_000 / 1_000_000))
    per_day = args.events // args.days
    env = {
        **{k: v for k, v in os.environ.items() if not k.startswith("SEQUENCE_PLATFORM_")},
        "SEQUENCE_PLATFORM_HOME": str(home),
        "DAGSTER_HOME": str(home / "dagster"),
    }
    start = args.end - timedelta(days=args.days - 1)
    generate = [
        *CLI,
        "generate",
        f"--days={args.days}",
        f"--end={args.end.isoformat()}",
        f"--users={users}",
        f"--items={args.items}",
        f"--events-per-day={per_day}",
    ]
    print(f"generating and materializing {args.days} days into {home} ...", flush=True)
    require_success("generate", run_measured(generate, env=env, log=home.parent / "generate.log"))
    materialize = [*CLI, "materialize", f"--start={start}", f"--end={args.end}"]
    require_success(
        "materialize", run_measured(materialize, env=env, log=home.parent / "materialize.log")
    )


def served_instant(tables: Path) -> datetime:
    """Noon after the cutoff of the newest stored day: every stored day is in the window."""
    days = pl.scan_delta(str(tables / "sequences" / SEQUENCE / "v1")).select(pl.col("dt").max())
    last = days.collect().item()
    assert isinstance(last, date), f"no stored day in the {SEQUENCE} table under {tables}"
    return datetime(last.year, last.month, last.day, tzinfo=UTC) + timedelta(days=1, hours=12)


def active_users(tables: Path, at: datetime, lookback_days: int) -> pl.DataFrame:
    """Users with signal rows in the window of ``at``, the most active first."""
    signal = pl.scan_delta(str(tables / "signals" / "engagement_enriched"))
    window = pl.col("event_time").is_between(at - timedelta(days=lookback_days), at, "left")
    return (
        signal.filter(window)
        .group_by("user_id")
        .len()
        .sort(["len", "user_id"], descending=[True, False])
        .collect()
    )


def pick_user(base: str, candidates: list[int], as_of: str) -> tuple[int, int]:
    """The first candidate whose sequence is full (100 events), else the longest one."""
    with httpx.Client(base_url=base, timeout=60) as client:
        response = client.post(
            f"/v1/sequences/{SEQUENCE}/batch",
            json={"user_ids": candidates, "fields": "event_id", "as_of": as_of},
        )
        response.raise_for_status()
    lengths = [(r["length"], r["user_id"]) for r in response.json()["results"]]
    full = [user for length, user in lengths if length == 100]
    if full:
        return full[0], 100
    length, user = max(lengths)
    return user, length


def requests_for(user: int, batch: list[int], as_of: str) -> list[Request]:
    query = f"fields={FIELDS}&as_of={as_of}"
    path = f"/v1/sequences/{SEQUENCE}"
    body = json.dumps({"user_ids": batch, "fields": FIELDS, "as_of": as_of}).encode()
    return [
        Request("records", "GET", f"{path}/{user}?{query}&format=records"),
        Request("columnar", "GET", f"{path}/{user}?{query}&format=columnar"),
        Request("arrow", "GET", f"{path}/{user}?{query}&format=arrow"),
        Request("unknown_user", "GET", f"{path}/{UNKNOWN_USER}?{query}&format=records"),
        Request("batch_100", "POST", f"{path}/batch", body),
    ]


def fetch_bodies(base: str, requests: list[Request]) -> dict[str, httpx.Response]:
    with httpx.Client(base_url=base, timeout=60) as client:
        return {
            r.name: client.request(
                r.method,
                r.path,
                content=r.body,
                headers={"content-type": "application/json"} if r.body else None,
            )
            for r in requests
        }


def measure_all(
    base: str, requests: list[Request], args: argparse.Namespace, work: Path, label: str
) -> dict[str, list[dict[str, Any]]]:
    measured: dict[str, list[dict[str, Any]]] = {}
    warm_up = min(2, args.seconds)
    for request in requests:
        load_test(base, request, 1, warm_up, work)
        measured[request.name] = []
        for connections in [1, 8] if request.name == "records" else [1]:
            result = load_test(base, request, connections, args.seconds, work)
            print(
                f"  {label:<9} {request.name:<13} {connections} conn  p50 {result['p50_ms']:7.3f}"
                f" ms  p99 {result['p99_ms']:7.3f} ms  {result['requests_per_s']:9,.0f} req/s"
                f"  errors {result['errors']}",
                flush=True,
            )
            measured[request.name].append(result)
    return measured


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--home", type=Path, help="a materialized data home (else one is built)")
    parser.add_argument("--events", type=parse_count, default=1_000_000, help="without --home")
    parser.add_argument("--days", type=int, default=30, help="without --home")
    parser.add_argument("--end", type=date.fromisoformat, default=date(2026, 3, 30))
    parser.add_argument("--items", type=int, default=20_000, help="without --home")
    parser.add_argument("--seconds", type=int, default=10, help="per wrk run")
    parser.add_argument("--workers", type=int, default=os.cpu_count() or 2)
    parser.add_argument("--json", type=Path, help="result file (default bench/results/...)")
    args = parser.parse_args()
    if shutil.which("wrk") is None:
        print(WRK_HINT, file=sys.stderr)
        return 2
    with tempfile.TemporaryDirectory(prefix="bench_serving-") as folder:
        work = Path(folder)
        home = args.home
        if home is None:
            home = work / "home"
            materialize_home(args, home)
        run(args, home, work)
    return 0


def run(args: argparse.Namespace, home: Path, work: Path) -> None:
    tables = home / "tables"
    at = served_instant(tables)
    as_of = at.strftime("%Y-%m-%dT%H:%M:%SZ")
    active = active_users(tables, at, 30)
    batch = sorted(
        random.Random(7).sample(active["user_id"].to_list(), min(BATCH_USERS, active.height))
    )
    env = {
        **{k: v for k, v in os.environ.items() if not k.startswith("SEQUENCE_PLATFORM_")},
        "SEQUENCE_PLATFORM_HOME": str(home),
    }
    port = free_port()
    print(f"serving {home} as of {as_of} ...", flush=True)
    with running([*CLI, "serve", f"--port={port}"], env, port, work / "serve.log") as server:
        user, length = pick_user(server.base, active["user_id"].head(1000).to_list(), as_of)
        requests = requests_for(user, batch, as_of)
        answers = fetch_bodies(server.base, requests)
        refused = {
            name: f"HTTP {answer.status_code}: {answer.text[:300]}"
            for name, answer in answers.items()
            if answer.status_code != 200
        }
        if refused:
            raise RuntimeError(f"the service refused a benchmark request: {refused}")
        print(f"user {user}: {length} events")
        platform = measure_all(server.base, requests, args, work, "platform")

    bodies = {
        r.floor_key: {
            "body": base64.b64encode(answers[r.name].content).decode(),
            "media_type": answers[r.name].headers.get("content-type", "application/json"),
        }
        for r in requests
    }
    bodies_file = work / "bodies.json"
    bodies_file.write_text(json.dumps(bodies))
    port = free_port()
    floor_command = [
        sys.executable,
        str(REPO / "benchmarks" / "floor_app.py"),
        f"--port={port}",
        f"--bodies={bodies_file}",
    ]
    with running(floor_command, env, port, work / "floor.log") as server:
        for request in requests:  # the floor answers the same bytes, or it is no floor
            answer = fetch_bodies(server.base, [request])[request.name]
            assert answer.content == answers[request.name].content, request.name
        floor = measure_all(server.base, requests, args, work, "floor")

    port = free_port()
    command = [*CLI, "serve", f"--port={port}", f"--workers={args.workers}"]
    with running(command, env, port, work / "serve-workers.log") as server:
        answer = fetch_bodies(server.base, [requests[0]])[requests[0].name]
        if answer.content != answers[requests[0].name].content:
            raise RuntimeError(f"with --workers={args.workers} the response differs")
        load_test(server.base, requests[0], 8, min(2, args.seconds), work)
        workers = load_test(server.base, requests[0], 8, args.seconds, work)
        workers["workers"] = args.workers

    results = {
        "as_of": as_of,
        "user_id": user,
        "sequence_length": length,
        "fields": FIELDS,
        "batch_users": len(batch),
        "response_bytes": {name: len(answer.content) for name, answer in answers.items()},
        "platform": platform,
        "floor": floor,
        "platform_workers": workers,
    }
    comparisons = compare(platform, floor, workers, length)
    parameters = {
        "home": str(home),
        "seconds": args.seconds,
        "workers": args.workers,
        "events": args.events if args.home is None else None,
    }
    path = write_result("bench_serving", args.json, parameters, results, comparisons)
    print()
    print(format_table([c.as_row() for c in comparisons]))
    print(f"\nwrote {path}")


def compare(
    platform: dict[str, list[dict[str, Any]]],
    floor: dict[str, list[dict[str, Any]]],
    workers: dict[str, Any],
    length: int,
) -> list[Comparison]:
    def figure(side: dict[str, list[dict[str, Any]]], name: str, key: str, conns: int = 1) -> float:
        return float(next(r[key] for r in side[name] if r["connections"] == conns))

    single = f"GET {length} events x 5 fields"
    p50, p99 = figure(platform, "records", "p50_ms"), figure(platform, "records", "p99_ms")
    floor_p50 = figure(floor, "records", "p50_ms")
    rps8, floor_rps8 = (figure(s, "records", "requests_per_s", 8) for s in (platform, floor))
    rows = [
        Comparison.of(
            f"{single}, 1 conn: p50 (reference: floor)",
            p50,
            floor_p50,
            "ms",
            "<= floor + 0.5 ms",
            p50 <= floor_p50 + 0.5,
        ),
        Comparison.of(
            f"{single}, 1 conn: p99 (reference: floor)",
            p99,
            figure(floor, "records", "p99_ms"),
            "ms",
            "platform <= 3 ms",
            p99 <= 3.0,
        ),
        Comparison.of(
            f"{single}, 8 conns: throughput (reference: floor)",
            rps8,
            floor_rps8,
            "req/s",
            "ratio >= 0.7",
            rps8 >= 0.7 * floor_rps8,
        ),
    ]
    for name in ("columnar", "arrow"):
        value = figure(platform, name, "p50_ms")
        rows.append(
            Comparison.of(
                f"{name} vs records, 1 conn: p50 (reference: records)",
                value,
                p50,
                "ms",
                "ratio <= 1.2",
                value <= 1.2 * p50,
            )
        )
    # A run that met errors (timeouts, non-2xx answers) did not measure what it claims.
    errors = [
        sum(r["errors"] for runs in side.values() for r in runs) for side in (platform, floor)
    ]
    rows.append(
        Comparison.of(
            "load-test errors, all runs (reference: floor)",
            errors[0],
            errors[1],
            "",
            "0",
            errors[0] == 0,
        ).without_ratio()
    )
    batch_p99 = figure(platform, "batch_100", "p99_ms")
    unknown_p50 = figure(platform, "unknown_user", "p50_ms")
    floor_unknown = figure(floor, "unknown_user", "p50_ms")
    rows += [
        Comparison.of(
            f"POST batch of {BATCH_USERS} users, 1 conn: p99 (reference: floor)",
            batch_p99,
            figure(floor, "batch_100", "p99_ms"),
            "ms",
            "platform <= 25 ms",
            batch_p99 <= 25.0,
        ),
        Comparison.of(
            "unknown user, 1 conn: p50 (reference: floor)",
            unknown_p50,
            floor_unknown,
            "ms",
            "<= floor + 0.2 ms",
            unknown_p50 <= floor_unknown + 0.2,
        ),
        Comparison.of(
            f"{single}, 8 conns, {workers['workers']} workers: throughput (reference: floor, 1)",
            workers["requests_per_s"],
            floor_rps8,
            "req/s",
            "",
            None,
        ),
    ]
    return rows


if __name__ == "__main__":
    sys.exit(main())
