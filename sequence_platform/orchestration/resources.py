"""Dagster resources: where the data lives, taken from the platform settings."""

from __future__ import annotations

from pathlib import Path

import dagster as dg

from sequence_platform.orchestration.batch import BatchContext
from sequence_platform.settings import PlatformSettings
from sequence_platform.spec.catalog import Catalog
from sequence_platform.storage.layout import TableLayout


class PlatformResource(dg.ConfigurableResource):
    """The data home (landing zone, local stream) and the Delta table root."""

    home: str
    tables_root: str
    storage_options: dict[str, str] = {}

    @classmethod
    def from_settings(cls, settings: PlatformSettings) -> PlatformResource:
        return cls(
            home=str(settings.home.absolute()),
            tables_root=settings.tables_root,
            storage_options=dict(settings.storage_options),
        )

    @property
    def layout(self) -> TableLayout:
        return TableLayout(self.tables_root, dict(self.storage_options))

    def batch_context(self, catalog: Catalog) -> BatchContext:
        return BatchContext(catalog, self.layout, Path(self.home))
