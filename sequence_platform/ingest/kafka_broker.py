"""Launch a real single-node Apache Kafka broker (KRaft mode) for tests and manual use.

The Kafka jars are resolved from Maven Central with ``mvn`` into the git-ignored folder
``.cache/kafka/<version>/`` at the repository root, then the broker runs as a plain
``java`` subprocess. No Docker, no Kafka distribution download.

Manual use::

    uv run python -m sequence_platform.ingest.kafka_broker [--port 9092]
"""

from __future__ import annotations

import argparse
import atexit
import base64
import contextlib
import fcntl
import functools
import hashlib
import logging
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from types import TracebackType
from typing import Any

__all__ = [
    "BOOTSTRAP_ENV_VAR",
    "KAFKA_VERSION",
    "KafkaBroker",
    "KafkaUnavailable",
    "repo_root",
    "resolve_kafka_classpath",
]

KAFKA_VERSION = "4.1.2"
"""Kafka release launched by default (``org.apache.kafka:kafka_2.13``, needs Java 17+)."""

LOG4J_VERSION = "2.24.3"
"""Log4j2 + SLF4J 1.x binding, as shipped in the Kafka 4.x distribution."""

MAVEN_DEPENDENCY_PLUGIN = "org.apache.maven.plugins:maven-dependency-plugin:3.8.1"
MIN_JAVA_MAJOR = 17
BOOTSTRAP_ENV_VAR = "SEQUENCE_PLATFORM_KAFKA_BOOTSTRAP"
INSTALL_HINT = (
    "Install a Java 17+ runtime and Maven 3.8+ and put `java` and `mvn` on PATH "
    "(Debian/Ubuntu: `sudo apt-get install openjdk-17-jre-headless maven`; "
    "macOS: `brew install openjdk@17 maven`). Maven Central must be reachable once; "
    "the jars are then cached under .cache/kafka/."
)

_log = logging.getLogger(__name__)

_POM_TEMPLATE = """<?xml version="1.0" encoding="UTF-8"?>
<project xmlns="http://maven.apache.org/POM/4.0.0">
  <modelVersion>4.0.0</modelVersion>
  <groupId>local.sequence-platform</groupId>
  <artifactId>kafka-broker-runtime</artifactId>
  <version>{kafka_version}</version>
  <packaging>pom</packaging>
  <dependencies>
    <dependency>
      <groupId>org.apache.kafka</groupId>
      <artifactId>kafka_2.13</artifactId>
      <version>{kafka_version}</version>
    </dependency>
    <dependency>
      <groupId>org.apache.logging.log4j</groupId>
      <artifactId>log4j-slf4j-impl</artifactId>
      <version>{log4j_version}</version>
    </dependency>
    <dependency>
      <groupId>org.apache.logging.log4j</groupId>
      <artifactId>log4j-core</artifactId>
      <version>{log4j_version}</version>
    </dependency>
  </dependencies>
</project>
"""

_LOG4J2_CONFIG = """status = warn
appender.console.type = Console
appender.console.name = STDOUT
appender.console.layout.type = PatternLayout
appender.console.layout.pattern = [%d] %p %m (%c)%n
rootLogger.level = {level}
rootLogger.appenderRef.stdout.ref = STDOUT
logger.kafka.name = kafka
logger.kafka.level = {level}
logger.apache.name = org.apache.kafka
logger.apache.level = {level}
"""

_DEFAULT_JVM_OPTIONS: tuple[str, ...] = (
    "-Xms64m",
    "-Xmx512m",
    # A test broker on a small machine: fewer GC threads and cheaper JIT warm-up.
    "-XX:+UseSerialGC",
    "-XX:TieredStopAtLevel=1",
    "-XX:+ExitOnOutOfMemoryError",
    "-Djava.awt.headless=true",
)


class KafkaUnavailable(RuntimeError):
    """Kafka cannot be provided: ``java``/``mvn`` missing, resolution failed or broker died."""


# --------------------------------------------------------------------------------------
# Classpath resolution
# --------------------------------------------------------------------------------------


def repo_root() -> Path:
    """Repository root: the nearest parent of this file holding ``pyproject.toml``."""
    here = Path(__file__).resolve().parent
    for candidate in (here, *here.parents):
        if (candidate / "pyproject.toml").is_file():
            return candidate
    return here.parent


def _find_tool(name: str) -> str:
    if name == "java":
        java_home = os.environ.get("JAVA_HOME")
        if java_home:
            candidate = Path(java_home) / "bin" / "java"
            if candidate.is_file() and os.access(candidate, os.X_OK):
                return str(candidate)
    found = shutil.which(name)
    if found is None:
        raise KafkaUnavailable(f"`{name}` was not found on PATH. {INSTALL_HINT}")
    return found


@contextlib.contextmanager
def _file_lock(path: Path) -> Iterator[None]:
    """Exclusive inter-process lock (e.g. several pytest-xdist workers resolving at once)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("a") as handle:
        fcntl.flock(handle.fileno(), fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle.fileno(), fcntl.LOCK_UN)


def _read_cached_classpath(manifest: Path, lib_dir: Path, pom_digest: str) -> list[Path] | None:
    if not manifest.is_file():
        return None
    lines = manifest.read_text(encoding="utf-8").splitlines()
    if not lines or lines[0] != f"# pom-sha256: {pom_digest}":
        return None
    jars = [lib_dir / name for name in lines[1:] if name.strip()]
    if not jars or not all(jar.is_file() for jar in jars):
        return None
    return jars


def resolve_kafka_classpath(
    version: str = KAFKA_VERSION,
    *,
    cache_dir: Path | None = None,
    timeout: float = 900.0,
) -> list[Path]:
    """Return the runtime jars of ``org.apache.kafka:kafka_2.13:<version>``.

    Jars are copied by Maven into ``<cache_dir>/libs`` (default
    ``<repo>/.cache/kafka/<version>``); when a complete copy is already there Maven is
    not called. The Maven local repository stays the default (``~/.m2``).
    """
    cache = cache_dir if cache_dir is not None else repo_root() / ".cache" / "kafka" / version
    lib_dir = cache / "libs"
    manifest = cache / "classpath.txt"
    pom_text = _POM_TEMPLATE.format(kafka_version=version, log4j_version=LOG4J_VERSION)
    pom_digest = hashlib.sha256(pom_text.encode()).hexdigest()

    cached = _read_cached_classpath(manifest, lib_dir, pom_digest)
    if cached is not None:
        return cached

    with _file_lock(cache.parent / f".{cache.name}.lock"):
        cached = _read_cached_classpath(manifest, lib_dir, pom_digest)
        if cached is not None:
            return cached

        mvn = _find_tool("mvn")
        cache.mkdir(parents=True, exist_ok=True)
        pom = cache / "pom.xml"
        pom.write_text(pom_text, encoding="utf-8")
        staging = Path(tempfile.mkdtemp(prefix="libs-", dir=cache))
        cmd = [
            mvn,
            "-q",
            "-B",
            "-f",
            str(pom),
            f"{MAVEN_DEPENDENCY_PLUGIN}:copy-dependencies",
            f"-DoutputDirectory={staging}",
            "-DincludeScope=runtime",
            "-Dstyle.color=never",
        ]
        _log.info("Resolving Kafka %s jars with Maven into %s", version, lib_dir)
        try:
            proc = subprocess.run(
                cmd,
                cwd=cache,
                stdin=subprocess.DEVNULL,
                capture_output=True,
                text=True,
                timeout=timeout,
                check=False,
            )
        except subprocess.TimeoutExpired as exc:
            shutil.rmtree(staging, ignore_errors=True)
            raise KafkaUnavailable(
                f"Maven did not resolve Kafka {version} within {timeout:.0f}s: {' '.join(cmd)}"
            ) from exc
        if proc.returncode != 0:
            shutil.rmtree(staging, ignore_errors=True)
            output = (proc.stdout + proc.stderr).strip()
            raise KafkaUnavailable(
                f"Maven failed to resolve org.apache.kafka:kafka_2.13:{version} "
                f"(exit code {proc.returncode}).\nCommand: {' '.join(cmd)}\n"
                f"Maven output:\n{_tail(_strip_ansi(output), 80)}"
            )
        jars = sorted(p.name for p in staging.glob("*.jar"))
        if not any(name.startswith(f"kafka_2.13-{version}") for name in jars):
            shutil.rmtree(staging, ignore_errors=True)
            raise KafkaUnavailable(f"Maven succeeded but kafka_2.13-{version}.jar is missing")
        shutil.rmtree(lib_dir, ignore_errors=True)
        staging.rename(lib_dir)
        tmp_manifest = manifest.with_suffix(".tmp")
        tmp_manifest.write_text(
            "\n".join([f"# pom-sha256: {pom_digest}", *jars]) + "\n", encoding="utf-8"
        )
        tmp_manifest.replace(manifest)
        return [lib_dir / name for name in jars]


@functools.cache
def _java_major_version(java: str) -> int | None:
    try:
        proc = subprocess.run(
            [java, "-version"], capture_output=True, text=True, timeout=60, check=False
        )
    except (OSError, subprocess.TimeoutExpired):
        return None
    match = re.search(r'version "(\d+)(?:\.(\d+))?', proc.stderr + proc.stdout)
    if match is None:
        return None
    major = int(match.group(1))
    if major == 1 and match.group(2):  # "1.8.0_392" style
        major = int(match.group(2))
    return major


def _tail(text: str, lines: int) -> str:
    return "\n".join(text.splitlines()[-lines:])


def _strip_ansi(text: str) -> str:
    return re.sub(r"\x1b\[[0-9;]*[A-Za-z]", "", text)


def _port_in_use(port: int) -> bool:
    """True when ``127.0.0.1:<port>`` cannot be bound (someone else listens there)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind(("127.0.0.1", port))
        except OSError:
            return True
    return False


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _random_cluster_id() -> str:
    return base64.urlsafe_b64encode(uuid.uuid4().bytes).decode("ascii").rstrip("=")


def _port_open(port: int, timeout: float = 0.5) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=timeout):
            return True
    except OSError:
        return False


def produce_ok(bootstrap: str, timeout: float = 5.0) -> bool:
    """True when a message to an auto-created probe topic is acknowledged within ``timeout``."""
    from kafka import KafkaProducer

    try:
        producer = KafkaProducer(
            bootstrap_servers=bootstrap,
            acks="all",
            max_block_ms=int(timeout * 1000),
            request_timeout_ms=int(timeout * 1000),
        )
    except Exception:
        return False
    try:
        producer.send("readiness-probe", b"ready").get(timeout=timeout)
        return True
    except Exception:
        return False
    finally:
        with contextlib.suppress(Exception):
            producer.close(timeout=1)


def metadata_ok(bootstrap: str, timeout: float = 5.0) -> bool:
    """True when a kafka-python metadata request (list topics) succeeds within ``timeout``."""
    from kafka import KafkaAdminClient

    timeout_ms = max(int(timeout * 1000), 500)
    config: dict[str, Any] = {
        "bootstrap_servers": bootstrap,
        "request_timeout_ms": timeout_ms,
        "reconnect_backoff_max_ms": 500,
    }
    defaults = getattr(KafkaAdminClient, "DEFAULT_CONFIG", {})
    if "bootstrap_timeout_ms" in defaults:  # kafka-python >= 3
        config["bootstrap_timeout_ms"] = timeout_ms
    if "api_version_auto_timeout_ms" in defaults:  # kafka-python 2.x
        config["api_version_auto_timeout_ms"] = timeout_ms
    try:
        admin = KafkaAdminClient(**config)
    except Exception:
        return False
    try:
        admin.list_topics()
        return True
    except Exception:
        return False
    finally:
        with contextlib.suppress(Exception):
            admin.close()


# --------------------------------------------------------------------------------------
# Broker
# --------------------------------------------------------------------------------------

# Brokers with a JVM or a temp dir; stopped at interpreter exit even if unreferenced.
_LIVE_BROKERS: set[KafkaBroker] = set()


@atexit.register
def _stop_live_brokers() -> None:
    for broker in list(_LIVE_BROKERS):
        with contextlib.suppress(Exception):
            broker.stop()


class KafkaBroker:
    """A single-node KRaft Kafka broker (broker + controller) running as a subprocess.

    Lifecycle: ``start()`` -> [``pause()`` -> ``resume()``]* -> ``stop()``. Also a
    context manager. ``pause()`` stops the JVM but keeps ports and data, so ``resume()``
    brings the same broker (same ``bootstrap``, same topics and offsets) back.
    """

    def __init__(
        self,
        port: int | None = None,
        *,
        controller_port: int | None = None,
        version: str = KAFKA_VERSION,
        startup_timeout: float = 60.0,
        shutdown_timeout: float = 30.0,
        jvm_options: Sequence[str] = _DEFAULT_JVM_OPTIONS,
        extra_properties: Mapping[str, str] | None = None,
        log_level: str = "INFO",
    ) -> None:
        self.version = version
        self.startup_timeout = startup_timeout
        self.shutdown_timeout = shutdown_timeout
        self.jvm_options = tuple(jvm_options)
        self.extra_properties = dict(extra_properties or {})
        self.log_level = log_level
        self._fixed_ports = port is not None or controller_port is not None
        self._port = port
        self._controller_port = controller_port
        self._workdir: Path | None = None
        self._proc: subprocess.Popen[bytes] | None = None
        self._classpath: str | None = None
        self._java: str | None = None
        self._lock = threading.RLock()

    # -- properties ----------------------------------------------------------------

    @property
    def port(self) -> int:
        """Broker (PLAINTEXT) port; fixed from the first ``start()`` on."""
        if self._port is None:
            raise KafkaUnavailable("KafkaBroker has not been started yet")
        return self._port

    @property
    def controller_port(self) -> int:
        """KRaft controller port."""
        if self._controller_port is None:
            raise KafkaUnavailable("KafkaBroker has not been started yet")
        return self._controller_port

    @property
    def bootstrap(self) -> str:
        """``"127.0.0.1:<port>"`` for ``bootstrap_servers``."""
        return f"127.0.0.1:{self.port}"

    @property
    def workdir(self) -> Path | None:
        """Temporary folder with ``server.properties``, ``broker.log`` and ``data/``."""
        return self._workdir

    @property
    def log_file(self) -> Path | None:
        """Broker stdout/stderr (log4j console output)."""
        return None if self._workdir is None else self._workdir / "broker.log"

    @property
    def data_dir(self) -> Path | None:
        """``log.dirs`` of the broker (topic data and KRaft metadata)."""
        return None if self._workdir is None else self._workdir / "data"

    @property
    def running(self) -> bool:
        """True while the JVM process is alive."""
        return self._proc is not None and self._proc.poll() is None

    @property
    def paused(self) -> bool:
        """True when the data is kept but the JVM is stopped."""
        return self._workdir is not None and not self.running

    @property
    def pid(self) -> int | None:
        """PID of the JVM, if running."""
        return self._proc.pid if self.running and self._proc is not None else None

    # -- lifecycle -----------------------------------------------------------------

    def start(self) -> KafkaBroker:
        """Format a fresh log dir, launch the broker and wait until it serves metadata."""
        with self._lock:
            if self.running:
                return self
            if self._workdir is not None:
                return self.resume()
            self._java = _find_tool("java")
            major = _java_major_version(self._java)
            if major is not None and major < MIN_JAVA_MAJOR:
                raise KafkaUnavailable(
                    f"Kafka {self.version} needs Java {MIN_JAVA_MAJOR}+, but {self._java} is "
                    f"Java {major}. {INSTALL_HINT}"
                )
            self._classpath = os.pathsep.join(
                str(jar) for jar in resolve_kafka_classpath(self.version)
            )
            attempts = 1 if self._fixed_ports else 3
            for attempt in range(1, attempts + 1):
                try:
                    self._start_fresh()
                    return self
                except KafkaUnavailable as exc:
                    log_text = self._read_log()
                    self._cleanup(keep_log=True)
                    clash = "Address already in use" in f"{exc}\n{log_text}"
                    retry = attempt < attempts and clash
                    if not retry:
                        raise
                    _log.warning("Kafka port clash, retrying with new ports: %s", exc)
                    self._port = self._controller_port = None
                except BaseException:
                    self._cleanup()
                    raise
            raise AssertionError("unreachable")

    def _start_fresh(self) -> None:
        if self._port is None:
            self._port = _free_port()
        if self._controller_port is None:
            self._controller_port = _free_port()
            while self._controller_port == self._port:
                self._controller_port = _free_port()
        self._workdir = Path(tempfile.mkdtemp(prefix="sequence-platform-kafka-"))
        assert self.data_dir is not None
        self.data_dir.mkdir()
        (self._workdir / "server.properties").write_text(self._server_properties())
        (self._workdir / "log4j2.properties").write_text(
            _LOG4J2_CONFIG.format(level=self.log_level)
        )
        (self._workdir / "log4j2-tools.properties").write_text(_LOG4J2_CONFIG.format(level="WARN"))
        self._format_storage()
        _LIVE_BROKERS.add(self)
        self._launch()

    def _server_properties(self) -> str:
        assert self.data_dir is not None
        props = {
            "process.roles": "broker,controller",
            "node.id": "1",
            "controller.quorum.voters": f"1@127.0.0.1:{self.controller_port}",
            "listeners": (
                f"PLAINTEXT://127.0.0.1:{self.port},CONTROLLER://127.0.0.1:{self.controller_port}"
            ),
            "advertised.listeners": f"PLAINTEXT://127.0.0.1:{self.port}",
            "controller.listener.names": "CONTROLLER",
            "inter.broker.listener.name": "PLAINTEXT",
            "listener.security.protocol.map": "PLAINTEXT:PLAINTEXT,CONTROLLER:PLAINTEXT",
            "log.dirs": str(self.data_dir),
            "num.partitions": "1",
            "default.replication.factor": "1",
            "min.insync.replicas": "1",
            "auto.create.topics.enable": "true",
            "offsets.topic.replication.factor": "1",
            "offsets.topic.num.partitions": "1",
            "transaction.state.log.replication.factor": "1",
            "transaction.state.log.min.isr": "1",
            "transaction.state.log.num.partitions": "1",
            "share.coordinator.state.topic.replication.factor": "1",
            "share.coordinator.state.topic.min.isr": "1",
            "group.initial.rebalance.delay.ms": "0",
            # After a hard kill the restarted broker waits for its old session to expire.
            "broker.heartbeat.interval.ms": "1000",
            "broker.session.timeout.ms": "4000",
            "num.network.threads": "2",
            "num.io.threads": "2",
            "num.recovery.threads.per.data.dir": "1",
            "log.cleaner.threads": "1",
            # Room for oversized messages, which the platform must dead-letter, not choke on.
            "message.max.bytes": str(8 * 1024 * 1024),
            "replica.fetch.max.bytes": str(8 * 1024 * 1024),
        }
        props.update(self.extra_properties)
        return "".join(f"{key}={value}\n" for key, value in props.items())

    def _java_cmd(self, main_class: str, *args: str, log_config: str) -> list[str]:
        assert self._java is not None and self._classpath is not None
        assert self._workdir is not None
        return [
            self._java,
            *self.jvm_options,
            f"-Dlog4j2.configurationFile={self._workdir / log_config}",
            f"-Dkafka.logs.dir={self._workdir}",
            "-cp",
            self._classpath,
            main_class,
            *args,
        ]

    def _format_storage(self) -> None:
        assert self._workdir is not None
        cmd = self._java_cmd(
            "kafka.tools.StorageTool",
            "format",
            "-t",
            _random_cluster_id(),
            "-c",
            str(self._workdir / "server.properties"),
            log_config="log4j2-tools.properties",
        )
        try:
            proc = subprocess.run(
                cmd,
                stdin=subprocess.DEVNULL,
                capture_output=True,
                text=True,
                timeout=self.startup_timeout,
                check=False,
            )
        except subprocess.TimeoutExpired as exc:
            raise KafkaUnavailable(
                f"Kafka storage format timed out after {self.startup_timeout:.0f}s"
            ) from exc
        if proc.returncode != 0:
            raise KafkaUnavailable(
                f"Kafka storage format failed (exit code {proc.returncode}):\n"
                f"{_tail(proc.stdout + proc.stderr, 60)}"
            )

    def _launch(self) -> None:
        assert self._workdir is not None and self.log_file is not None
        for port in (self.port, self.controller_port):
            if _port_in_use(port):
                raise KafkaUnavailable(
                    f"Cannot start Kafka: 127.0.0.1:{port} is busy (Address already in use)"
                )
        cmd = self._java_cmd(
            "kafka.Kafka", str(self._workdir / "server.properties"), log_config="log4j2.properties"
        )
        with self.log_file.open("ab") as log_handle:
            log_handle.write(f"\n===== launching: {' '.join(cmd[:3])} ... kafka.Kafka\n".encode())
            log_handle.flush()
            self._proc = subprocess.Popen(
                cmd,
                cwd=self._workdir,
                stdin=subprocess.DEVNULL,
                stdout=log_handle,
                stderr=subprocess.STDOUT,
                # Own session: a Ctrl-C in the terminal reaches Python, which stops Kafka.
                start_new_session=True,
            )
        self._wait_ready()

    def _wait_ready(self) -> None:
        deadline = time.monotonic() + self.startup_timeout
        while time.monotonic() < deadline:
            if self._proc is None or self._proc.poll() is not None:
                code = None if self._proc is None else self._proc.returncode
                raise KafkaUnavailable(self._failure_message(f"exited with code {code}"))
            remaining = deadline - time.monotonic()
            timeout = min(5.0, max(remaining, 1))
            # Metadata alone is not enough after a restart: topic creation and writes can lag.
            if (
                _port_open(self.port)
                and metadata_ok(self.bootstrap, timeout)
                and produce_ok(self.bootstrap, timeout)
            ):
                return
            time.sleep(0.2)
        message = self._failure_message(f"was not ready within {self.startup_timeout:.0f}s")
        self._terminate(keep_data=True)
        raise KafkaUnavailable(message)

    def _read_log(self) -> str:
        if self.log_file is None or not self.log_file.is_file():
            return ""
        return self.log_file.read_text(encoding="utf-8", errors="replace")

    def log_tail(self, lines: int = 60) -> str:
        """Last lines of the broker log (empty when there is none)."""
        return _tail(self._read_log(), lines)

    def _failure_message(self, what: str) -> str:
        log_text = self._read_log()
        errors = [
            line
            for line in log_text.splitlines()
            if re.search(r"\b(ERROR|FATAL)\b|Exception|Error:", line) and not line[:1].isspace()
        ][:10]
        hint = ""
        if "Address already in use" in log_text:
            hint = " (a port is already in use)"
        elif "UnsupportedClassVersionError" in log_text:
            hint = f" (Java {MIN_JAVA_MAJOR}+ is required)"
        return (
            f"Kafka {self.version} broker on {self.bootstrap} {what}{hint}. "
            f"Log file: {self.log_file}\n"
            + ("--- first errors in broker log ---\n" + "\n".join(errors) + "\n" if errors else "")
            + f"--- last lines of broker log ---\n{_tail(log_text, 40)}"
        )

    def _terminate(self, *, keep_data: bool, hard: bool = False) -> None:
        proc, self._proc = self._proc, None
        if proc is not None and proc.poll() is None:
            if hard:
                proc.kill()
            else:
                proc.terminate()
            try:
                proc.wait(timeout=self.shutdown_timeout)
            except subprocess.TimeoutExpired:
                _log.warning("Kafka broker pid %s ignored SIGTERM; killing it", proc.pid)
                proc.kill()
                proc.wait(timeout=30)
        if not keep_data:
            self._cleanup()

    def _cleanup(self, *, keep_log: bool = False) -> None:
        """Kill the JVM if needed and delete the temp dir (all but the log if ``keep_log``)."""
        if self._proc is not None and self._proc.poll() is None:
            self._proc.kill()
            self._proc.wait(timeout=30)
        self._proc = None
        if self._workdir is not None:
            if keep_log and self.log_file is not None and self.log_file.is_file():
                for child in self._workdir.iterdir():
                    if child.is_dir():
                        shutil.rmtree(child, ignore_errors=True)
                    elif child != self.log_file:
                        child.unlink(missing_ok=True)
            else:
                shutil.rmtree(self._workdir, ignore_errors=True)
            self._workdir = None
        _LIVE_BROKERS.discard(self)

    def stop(self, *, keep_data: bool = False) -> None:
        """Stop the broker (SIGTERM, SIGKILL after ``shutdown_timeout``).

        Removes the temp dir unless ``keep_data`` (then it is the same as ``pause()``).
        """
        with self._lock:
            self._terminate(keep_data=keep_data)

    def pause(self, *, hard: bool = False) -> None:
        """Stop the JVM but keep ports and data; ``hard=True`` SIGKILLs it (a crash)."""
        with self._lock:
            if self._workdir is None:
                raise KafkaUnavailable("KafkaBroker.pause() called before start()")
            self._terminate(keep_data=True, hard=hard)

    def resume(self) -> KafkaBroker:
        """Start the paused broker again on the same ports and data; wait until ready."""
        with self._lock:
            if self._workdir is None:
                return self.start()
            if not self.running:
                self._launch()
            return self

    def restart(self, *, hard: bool = False) -> KafkaBroker:
        """``pause()`` then ``resume()``: same ports, same data."""
        self.pause(hard=hard)
        return self.resume()

    def stop_broker(self, *, hard: bool = False) -> None:
        """Alias of ``pause()``: bring the broker down, keeping ports and data."""
        self.pause(hard=hard)

    def is_ready(self, timeout: float = 5.0) -> bool:
        """True when the broker answers a metadata request within ``timeout`` seconds."""
        return (
            self.running
            and _port_open(self.port, min(timeout, 1.0))
            and metadata_ok(self.bootstrap, timeout)
        )

    def __enter__(self) -> KafkaBroker:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    def __repr__(self) -> str:
        state = "running" if self.running else "paused" if self.paused else "stopped"
        where = self.bootstrap if self._port is not None else "-"
        return f"KafkaBroker(version={self.version!r}, bootstrap={where!r}, {state})"


# --------------------------------------------------------------------------------------
# Manual use
# --------------------------------------------------------------------------------------


def main(argv: Sequence[str] | None = None) -> int:
    """Run a broker in the foreground until Ctrl-C."""
    parser = argparse.ArgumentParser(
        prog="python -m sequence_platform.ingest.kafka_broker",
        description="Run a local single-node Kafka broker (KRaft) until Ctrl-C.",
    )
    parser.add_argument("--port", type=int, default=None, help="broker port (default: free)")
    parser.add_argument("--version", default=KAFKA_VERSION, help="Kafka version")
    parser.add_argument("--timeout", type=float, default=60.0, help="startup timeout, seconds")
    args = parser.parse_args(argv)

    def _on_sigterm(signum: int, frame: object) -> None:
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, _on_sigterm)
    broker = KafkaBroker(args.port, version=args.version, startup_timeout=args.timeout)
    try:
        broker.start()
        print(f"Kafka {broker.version} ready; log: {broker.log_file}", file=sys.stderr)
        print(f"{BOOTSTRAP_ENV_VAR}={broker.bootstrap}", flush=True)
        print("Press Ctrl-C to stop.", file=sys.stderr, flush=True)
        while broker.running:
            time.sleep(0.5)
        print(f"error: the broker exited unexpectedly.\n{broker.log_tail()}", file=sys.stderr)
        return 1
    except KafkaUnavailable as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("Stopping Kafka...", file=sys.stderr, flush=True)
        return 0
    finally:
        # A second Ctrl-C (e.g. also forwarded by `uv run`) must not abort the shutdown.
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        broker.stop()


if __name__ == "__main__":
    sys.exit(main())
