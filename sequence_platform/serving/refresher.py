"""The background thread that keeps the store in step with the tables' Delta versions."""

from __future__ import annotations

import logging
import threading

from sequence_platform.serving.store import SnapshotStore

log = logging.getLogger(__name__)


class StoreRefresher:
    """Refreshes ``store`` every ``interval`` seconds until stopped.

    The first refresh is the caller's: the app's lifespan reads every table before it takes
    requests, so the thread waits an interval before its first round.
    """

    def __init__(self, store: SnapshotStore, interval: float) -> None:
        if interval <= 0:
            raise ValueError("the refresh interval must be positive")
        self.store = store
        self.interval = interval
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        if self._thread is not None:
            raise RuntimeError("the refresher is already running")
        self._stop.clear()
        self._thread = threading.Thread(target=self._run, name="store-refresher", daemon=True)
        self._thread.start()

    def stop(self, timeout: float = 30.0) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout)
            self._thread = None

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            try:
                self.store.refresh()  # logs each table it reloads
            except Exception:
                # Per-table failures are caught in the store; this is a bug, keep refreshing.
                log.exception("store refresh failed")
