"""``sequence-platform demo`` stops cleanly: exit code 0 and a "stopped" line on SIGINT and on
SIGTERM, started in the background (SIGINT ignored, as a shell or make leaves it) or in a
terminal (Ctrl-C typed into a pseudo-terminal). Real demo processes on small data."""

from __future__ import annotations

import os
import pty
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path

import httpx
import pytest

REPO = Path(__file__).resolve().parents[1]
SMALL = ["--days", "2", "--users", "100", "--items", "200", "--events-per-day", "300"]
STEADY = "Ctrl-C stops the demo."
"""The demo's last line once it is serving and has shown the live events."""
STARTUP_SECONDS = 240
STOP_SECONDS = 60


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


@pytest.fixture(scope="module")
def demo_env(tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    """One data home and Dagster instance for the module's demos (each writes them again)."""
    root = tmp_path_factory.mktemp("demo")
    env = {key: value for key, value in os.environ.items() if not key.startswith("SEQUENCE_")}
    return env | {
        "SEQUENCE_PLATFORM_HOME": str(root / "home"),
        "DAGSTER_HOME": str(root / "dagster"),
        "PYTHONUNBUFFERED": "1",
    }


def demo_command(port: int) -> list[str]:
    return [sys.executable, "-m", "sequence_platform.cli", "demo", *SMALL, f"--port={port}"]


def serves_http(port: int) -> bool:
    try:
        return httpx.get(f"http://127.0.0.1:{port}/healthz", timeout=2).status_code == 200
    except httpx.TransportError:
        return False


def until(condition: Callable[[], bool], what: str, alive: Callable[[], bool]) -> None:
    deadline = time.monotonic() + STARTUP_SECONDS
    while not condition():
        assert alive(), f"the demo exited before {what}"
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.2)


def ignore_sigint() -> None:
    """What a non-interactive shell does to a command it starts with '&'."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)


def stop_in_background(
    env: dict[str, str], log: Path, number: signal.Signals, *, when_steady: bool
) -> tuple[int, str]:
    """Start the demo in the background, signal it once it serves HTTP (or once it printed
    everything); its exit code and output."""
    port = free_port()
    with log.open("w") as output:
        process = subprocess.Popen(
            demo_command(port),
            cwd=REPO,
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=output,
            stderr=subprocess.STDOUT,
            preexec_fn=ignore_sigint,
        )
    try:

        def alive() -> bool:
            return process.poll() is None

        until(lambda: serves_http(port), "it serves HTTP", alive)
        if when_steady:
            until(lambda: STEADY in log.read_text(), "it prints its commands", alive)
        process.send_signal(number)
        code = process.wait(timeout=STOP_SECONDS)
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
    assert not serves_http(port), "the port still answers after the demo exited"
    return code, log.read_text()


def test_sigint_in_the_background_with_sigint_ignored_stops_cleanly(
    demo_env: dict[str, str], tmp_path: Path
) -> None:
    # Signalled as soon as it serves: while it shows the live events.
    code, output = stop_in_background(
        demo_env, tmp_path / "demo.log", signal.SIGINT, when_steady=False
    )
    assert code == 0, output
    assert "The demo stopped (SIGINT)" in output
    assert "Traceback" not in output


def test_sigterm_stops_cleanly(demo_env: dict[str, str], tmp_path: Path) -> None:
    code, output = stop_in_background(
        demo_env, tmp_path / "demo.log", signal.SIGTERM, when_steady=True
    )
    assert code == 0, output
    assert "The demo stopped (SIGTERM)" in output
    assert "Traceback" not in output
    # The command it printed to rebuild a day names a day it wrote: it is accepted.
    [printed] = [line for line in output.splitlines() if "sequence-platform materialize" in line]
    arguments = printed.split("sequence-platform ", 1)[1].split("#")[0].split()
    assert arguments[:2] == ["materialize", "--start"]
    rebuilt = subprocess.run(
        [sys.executable, "-m", "sequence_platform.cli", *arguments],
        cwd=REPO,
        env=demo_env,
        capture_output=True,
        text=True,
        timeout=STARTUP_SECONDS,
    )
    assert rebuilt.returncode == 0, rebuilt.stdout + rebuilt.stderr


class Terminal:
    """A process whose controlling terminal is a pseudo-terminal: what is typed reaches it as
    a terminal user's keys (Ctrl-C is the line discipline's SIGINT to the foreground group)."""

    def __init__(self, command: list[str], env: dict[str, str]) -> None:
        self.pid, self.master = pty.fork()
        if self.pid == 0:  # the child: its own session, the pty its controlling terminal
            try:
                os.chdir(REPO)
                os.execve(command[0], command, env)
            finally:
                os._exit(127)
        self.output = bytearray()
        self.status: int | None = None
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        while True:
            try:
                chunk = os.read(self.master, 65536)
            except OSError:  # EIO: the child side is closed
                return
            if not chunk:
                return
            self.output += chunk

    @property
    def text(self) -> str:
        return self.output.decode(errors="replace")

    def alive(self) -> bool:
        if self.status is None:
            pid, status = os.waitpid(self.pid, os.WNOHANG)
            if pid:
                self.status = status
        return self.status is None

    def type(self, keys: bytes) -> None:
        os.write(self.master, keys)

    def wait(self, timeout: float) -> int:
        deadline = time.monotonic() + timeout
        while self.alive():
            if time.monotonic() > deadline:
                os.kill(self.pid, signal.SIGKILL)
                os.waitpid(self.pid, 0)
                raise AssertionError(f"the demo did not exit in {timeout} s:\n{self.text}")
            time.sleep(0.1)
        assert self.status is not None
        self._reader.join(5)
        return os.waitstatus_to_exitcode(self.status)

    def close(self) -> None:
        if self.alive():
            os.kill(self.pid, signal.SIGKILL)
            os.waitpid(self.pid, 0)
        os.close(self.master)


def test_ctrl_c_in_a_terminal_stops_cleanly(demo_env: dict[str, str]) -> None:
    port = free_port()
    terminal = Terminal(demo_command(port), demo_env)
    try:
        until(lambda: STEADY in terminal.text, "it prints its commands", terminal.alive)
        assert serves_http(port)
        terminal.type(b"\x03")
        code = terminal.wait(STOP_SECONDS)
    finally:
        terminal.close()
    # A crash at interpreter exit shows as -11 (SIGSEGV) here, 139 in a shell.
    assert code == 0, terminal.text
    assert "The demo stopped (SIGINT)" in terminal.text
    assert "Traceback" not in terminal.text
    assert not serves_http(port)


def test_a_port_in_use_is_refused_before_any_work(tmp_path: Path) -> None:
    """Said at once, without a traceback, not after generating and materializing every day."""
    home = tmp_path / "home"
    env = {key: value for key, value in os.environ.items() if not key.startswith("SEQUENCE_")}
    env |= {"SEQUENCE_PLATFORM_HOME": str(home), "DAGSTER_HOME": str(tmp_path / "dagster")}
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        started = time.monotonic()
        result = subprocess.run(
            demo_command(port), cwd=REPO, env=env, capture_output=True, text=True, timeout=120
        )
    assert result.returncode == 2, result.stdout + result.stderr
    assert f"The demo cannot serve on 127.0.0.1:{port}: Address already in use" in result.stderr
    assert "Traceback" not in result.stderr
    assert not home.exists() and time.monotonic() - started < 60
    for bad, reason in (("0", "a port is 1..65535, not 0"), ("http", "not 'http'")):
        refused = subprocess.run(
            [*demo_command(port)[:-1], f"--port={bad}"],
            cwd=REPO,
            env=env,
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert refused.returncode == 2 and reason in refused.stderr, refused.stderr


def test_ctrl_c_while_materializing_stops_without_a_traceback(
    demo_env: dict[str, str], tmp_path: Path
) -> None:
    """Interrupted before it serves: exit 130 (interrupted work), a line saying what stays and
    what to do, and no Dagster stack trace scrolling it away."""
    log = tmp_path / "demo.log"
    with log.open("w") as output:
        process = subprocess.Popen(
            demo_command(free_port()),
            cwd=REPO,
            env=demo_env,
            stdin=subprocess.DEVNULL,
            stdout=output,
            stderr=subprocess.STDOUT,
        )
    try:
        until(
            lambda: "Materializing" in log.read_text(),
            "it materializes",
            lambda: process.poll() is None,
        )
        process.send_signal(signal.SIGINT)
        code = process.wait(timeout=STOP_SECONDS)
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
    text = log.read_text()
    assert code == 130, text
    assert "Interrupted" in text
    assert "Traceback" not in text and "Stack Trace" not in text
