"""A step's writes in the background: in order, one at a time; a failed write fails the step
(at the latest when the step settles), after the writes before it committed and with none
committed after it."""

import threading
import time

import pytest

from sequence_platform.runtime.batch import BackgroundWrites, WriteSkipped
from sequence_platform.storage.delta import WriteStats


def stats(rows: int) -> WriteStats:
    return WriteStats(rows=rows, bytes=0, files=0, version=rows, seconds=0.0, days={})


def test_writes_run_in_order_one_at_a_time_off_the_calling_thread() -> None:
    writes = BackgroundWrites()
    seen: list[tuple[int, str]] = []
    running = threading.Semaphore(1)

    def write(number: int):  # type: ignore[no-untyped-def]
        def run() -> WriteStats:
            assert running.acquire(blocking=False), "two writes at once"
            try:
                time.sleep(0.02)
                seen.append((number, threading.current_thread().name))
            finally:
                running.release()
            return stats(number)

        return run

    futures = [writes.submit(write(n)) for n in range(5)]
    writes.close()
    assert [future.result().rows for future in futures] == list(range(5))
    assert [number for number, _ in seen] == list(range(5))
    assert all(name != threading.current_thread().name for _, name in seen)


def test_a_failed_write_stops_the_writes_after_it_and_raises_when_the_step_settles() -> None:
    writes = BackgroundWrites()
    committed: list[int] = []

    def ok() -> WriteStats:
        committed.append(1)
        return stats(1)

    def broken() -> WriteStats:
        raise OSError("disk full")

    writes.submit(ok)
    failed = writes.submit(broken)
    while not failed.done():
        time.sleep(0.01)
    # A failure nobody looked at yet is not forgotten, and nothing is committed after it.
    later = writes.submit(ok)
    with pytest.raises(OSError, match="disk full"):
        writes.close()
    assert committed == [1]
    with pytest.raises(WriteSkipped):
        later.result()
