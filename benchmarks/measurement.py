"""What every benchmark shares: measured child processes, the machine, results and their table.

Wall time and peak memory of a step are those of a child process: it is started with
``subprocess.Popen`` and reaped with ``os.wait4``, which returns the kernel's resource usage of
that child (and of any process it waited for). ``ru_maxrss`` is the kernel's own high-water
mark of resident memory, exact rather than sampled; it is per process, not a sum, which is
right here because ``sequence-platform materialize`` runs all its asset runs inside its one
process (Dagster's ``execute_in_process``) and the reference is a single script.
"""

from __future__ import annotations

import json
import os
import platform
import shutil
import socket
import subprocess
import time
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, replace
from datetime import UTC, datetime
from importlib import metadata
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
RESULTS = REPO / "bench" / "results"
PACKAGES = ("polars", "deltalake", "pyarrow", "dagster", "fastapi", "uvicorn")
TABLE_FAMILIES = (
    "events",
    "features",
    "signals",
    "sequences",
    "dead_letters",
    "stream_archive",
    "realtime",
    "training",
)


@dataclass(frozen=True)
class Measured:
    seconds: float
    peak_rss_bytes: int
    returncode: int
    log: Path


def run_measured(
    command: Sequence[str], *, env: Mapping[str, str], log: Path, cwd: Path = REPO
) -> Measured:
    """Run ``command`` to its end, its output to ``log``; wall time and peak resident memory.

    The files earlier steps wrote (a generated landing zone, the copy of it) are flushed to
    disk first, so that their write-back does not fall into the time measured."""
    os.sync()
    with log.open("wb") as output:
        began = time.perf_counter()
        process = subprocess.Popen(
            list(command), cwd=cwd, env=dict(env), stdout=output, stderr=subprocess.STDOUT
        )
        _, status, usage = os.wait4(process.pid, 0)
        seconds = time.perf_counter() - began
    process.returncode = os.waitstatus_to_exitcode(status)
    # Linux reports ru_maxrss in kilobytes.
    return Measured(seconds, usage.ru_maxrss * 1024, process.returncode, log)


def require_success(step: str, measured: Measured) -> None:
    if measured.returncode != 0:
        tail = measured.log.read_text(errors="replace")[-3000:]
        raise RuntimeError(f"{step} failed (exit {measured.returncode}); {measured.log}:\n{tail}")


@dataclass(frozen=True)
class Comparison:
    """One line of the summary table: a figure of the platform against its reference."""

    what: str
    platform: float | None
    reference: float | None
    unit: str
    target: str
    met: bool | None
    """None when the target does not apply to this run (another size, a figure not served)."""
    ratio: float | None = None

    @staticmethod
    def of(
        what: str,
        platform: float | None,
        reference: float | None,
        unit: str,
        target: str,
        met: bool | None,
    ) -> Comparison:
        ratio = platform / reference if platform is not None and reference else None
        return Comparison(what, platform, reference, unit, target, met, ratio)

    def without_ratio(self) -> Comparison:
        """For figures that are ratios already: a ratio of two ratios would only confuse."""
        return replace(self, ratio=None)

    def as_row(self) -> dict[str, Any]:
        return asdict(self)


def machine_description() -> dict[str, Any]:
    """Cores, memory, CPU model, OS, Python, the versions of the libraries that matter, the
    commit and the load at the time."""
    cpu_model = ""
    cpuinfo = Path("/proc/cpuinfo")
    if cpuinfo.exists():
        for line in cpuinfo.read_text().splitlines():
            if line.startswith("model name"):
                cpu_model = line.split(":", 1)[1].strip()
                break
    ram = 0
    meminfo = Path("/proc/meminfo")
    if meminfo.exists():
        for line in meminfo.read_text().splitlines():
            if line.startswith("MemTotal:"):
                ram = int(line.split()[1]) * 1024
    packages: dict[str, str | None] = {}
    for name in PACKAGES:
        try:
            packages[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            packages[name] = None
    return {
        "cores": os.cpu_count(),
        "ram_bytes": ram,
        "cpu_model": cpu_model or platform.processor(),
        "os": platform.platform(),
        "python": platform.python_version(),
        # Other work on the machine skews every figure; the load says how much there was.
        "load_average_1_5_15_min": list(os.getloadavg()),
        "packages": packages,
        "wrk": _wrk_version(),
        "commit": _git("rev-parse", "HEAD"),
        "uncommitted_changes": bool(_git("status", "--porcelain")),
    }


def _wrk_version() -> str | None:
    if shutil.which("wrk") is None:
        return None
    probe = subprocess.run(["wrk", "--version"], capture_output=True, text=True)
    return (probe.stdout or probe.stderr).splitlines()[0].strip()


def _git(*args: str) -> str | None:
    try:
        done = subprocess.run(["git", *args], cwd=REPO, capture_output=True, text=True)
    except OSError:
        return None
    return done.stdout.strip() if done.returncode == 0 else None


def result_path(name: str, results: Path = RESULTS) -> Path:
    stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ")
    return results / f"{name}-{stamp}.json"


def write_result(
    name: str,
    path: Path | None,
    parameters: Mapping[str, Any],
    results: Mapping[str, Any],
    comparisons: Sequence[Comparison],
) -> Path:
    """Write a benchmark's result document (with the machine) to ``path`` or bench/results."""
    path = path or result_path(name)
    path.parent.mkdir(parents=True, exist_ok=True)
    document = {
        "benchmark": name,
        "created": datetime.now(UTC).isoformat(timespec="seconds"),
        "machine": machine_description(),
        "parameters": _without_paths(parameters),
        "results": _without_paths(results),
        "comparisons": [row.as_row() for row in comparisons],
    }
    path.write_text(json.dumps(document, indent=2, default=str) + "\n")
    return path


def _without_paths(values: Mapping[str, Any]) -> dict[str, Any]:
    """Where the data lived is this run's business, not the result's: folders are left out."""
    return {
        key: value
        for key, value in values.items()
        if not (isinstance(value, str | Path) and Path(value).is_absolute())
    }


def format_table(rows: Sequence[Mapping[str, Any]]) -> str:
    """The summary table: what | platform | reference | ratio | target | met?"""
    header = ("what", "platform", "reference", "ratio", "target", "met?")
    lines = [
        (
            str(row["what"]),
            _value(row["platform"], row["unit"]),
            _value(row["reference"], row["unit"]),
            "" if row["ratio"] is None else f"{row['ratio']:.2f}x",
            str(row["target"]),
            {True: "yes", False: "NO", None: "-"}[row["met"]],
        )
        for row in rows
    ]
    widths = [max(len(line[i]) for line in [header, *lines]) for i in range(len(header))]
    rendered = [
        " | ".join(cell.ljust(width) for cell, width in zip(line, widths, strict=True)).rstrip()
        for line in [header, *lines]
    ]
    rendered.insert(1, "-|-".join("-" * width for width in widths))
    return "\n".join(rendered)


def _value(value: float | None, unit: str) -> str:
    if value is None:
        return "n/a"
    if unit == "bytes":
        return f"{value / 1e6:,.1f} MB"
    if unit == "req/s":
        return f"{value:,.0f} req/s"
    if unit == "x":
        return f"{value:.2f}x"
    if not unit:
        return f"{value:,.0f}"
    return f"{value:,.2f} {unit}"


def directory_bytes(folder: Path) -> int:
    """Apparent size of every file under ``folder`` (data files and Delta logs alike)."""
    if not folder.exists():
        return 0
    return sum(path.stat().st_size for path in folder.rglob("*") if path.is_file())


def table_bytes(tables: Path) -> dict[str, int]:
    """Bytes on disk per table family (``events``, ``signals``, ...) under a tables root."""
    sizes = {family: directory_bytes(tables / family) for family in TABLE_FAMILIES}
    others = [p for p in tables.iterdir() if p.is_dir() and p.name not in TABLE_FAMILIES]
    sizes.update({path.name: directory_bytes(path) for path in others})
    return {family: size for family, size in sizes.items() if size}


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def count_label(count: int) -> str:
    """``1M``, ``5M``, ``50k`` or ``4,321``: the inverse of :func:`parse_count`, for labels."""
    if count >= 1_000_000 and count % 100_000 == 0:
        return f"{count / 1_000_000:g}M"
    if count >= 1_000 and count % 1_000 == 0:
        return f"{count // 1_000}k"
    return f"{count:,}"


def parse_count(text: str) -> int:
    """``1M``, ``5M``, ``50k`` or a plain number."""
    scale = {"k": 1_000, "m": 1_000_000}.get(text[-1:].lower(), 1)
    return round(float(text[:-1] if scale > 1 else text) * scale)
