"""Dagster resources: where the data lives, taken from the platform settings."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import dagster as dg

from sequence_platform.ingest.stream import EventStream, open_stream
from sequence_platform.runtime.batch import BackgroundWrites, BatchContext
from sequence_platform.settings import PlatformSettings
from sequence_platform.spec.catalog import Catalog
from sequence_platform.storage.layout import TableLayout
from sequence_platform.storage.maintenance import DEFAULT_RETENTION_HOURS


class PlatformResource(dg.ConfigurableResource):
    """The data home (landing zone, local stream) and the Delta table root."""

    home: str
    tables_root: str
    storage_options: dict[str, str] = {}
    kafka_bootstrap: str | None = None
    vacuum_retention_hours: int = DEFAULT_RETENTION_HOURS

    @classmethod
    def from_settings(cls, settings: PlatformSettings) -> PlatformResource:
        return cls(
            home=str(settings.home.absolute()),
            tables_root=settings.tables_root,
            storage_options=dict(settings.storage_options),
            kafka_bootstrap=settings.kafka_bootstrap,
            vacuum_retention_hours=settings.vacuum_retention_hours,
        )

    @contextmanager
    def open_stream(self) -> Iterator[EventStream]:
        """Kafka when bootstrap servers are set, else the local stream; closed afterwards."""
        stream = open_stream(self.kafka_bootstrap, Path(self.home))
        try:
            yield stream
        finally:
            stream.close()

    @property
    def layout(self) -> TableLayout:
        return TableLayout(self.tables_root, dict(self.storage_options))

    def batch_context(
        self, catalog: Catalog, writes: BackgroundWrites | None = None
    ) -> BatchContext:
        return BatchContext(catalog, self.layout, Path(self.home), writes)


class TablesOnly(dg.IOManager):
    """The code location's ``io_manager``. Every asset writes its own Delta tables and hands no
    Python value to the next (assets depend on tables, not on values), so there is nothing to
    store between steps; Dagster's default would pickle each ``None`` to a file."""

    def handle_output(self, context: dg.OutputContext, obj: object) -> None:
        if obj is not None:
            raise TypeError(
                f"step '{context.step_key}' returned a {type(obj).__name__}: the platform's "
                "assets and ops write their tables themselves and return nothing"
            )

    def load_input(self, context: dg.InputContext) -> object:
        raise TypeError(
            f"input '{context.name}' asked for a value: the platform's assets and ops pass "
            "none (they read the tables they depend on)"
        )


def tables_only() -> dg.IOManagerDefinition:
    return dg.IOManagerDefinition.hardcoded_io_manager(TablesOnly(), description=TablesOnly.__doc__)
