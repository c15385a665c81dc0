"""The background thread that keeps the store in step with the tables' Delta versions."""

from __future__ import annotations

import logging
import threading

from sequence_platform.serving.store import SnapshotStore

log = logging.getLogger(__name__)


class StoreRefresher:
    """Refreshes ``store`` at once, then every ``interval`` seconds until stopped."""

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

    def refresh(self) -> None:
        """One refresh of every table, each table reloaded logged (a line per table)."""
        for status in self.store.refresh():
            version = "absent" if status.version is None else f"version {status.version}"
            log.info(
                "loaded %s table %s (%s)",
                status.kind,
                status.name,
                version,
                extra={
                    "event": "refresh",
                    "kind": status.kind,
                    "table": status.name,
                    "version": status.version,
                    "rows": status.rows,
                },
            )

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                self.refresh()
            except Exception:
                # Per-table failures are caught in the store; this is a bug, keep refreshing.
                log.exception("store refresh failed")
            self._stop.wait(self.interval)
