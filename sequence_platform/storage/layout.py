"""Where every table lives: ``<root>/<family>/<name>``, one Delta table each, partitioned by dt."""

from __future__ import annotations

from dataclasses import dataclass, field

from sequence_platform.spec.models import SequenceSpec


@dataclass(frozen=True)
class TableLayout:
    root: str
    """A local folder or an object-store URI (``s3://``, ``gs://``, ``az://``)."""
    storage_options: dict[str, str] = field(default_factory=dict)

    def _table(self, family: str, name: str) -> str:
        return f"{self.root.rstrip('/')}/{family}/{name}"

    def events(self, source: str) -> str:
        return self._table("events", source)

    def stream_archive(self, source: str) -> str:
        return self._table("stream_archive", source)

    def dead_letters(self, source: str) -> str:
        return self._table("dead_letters", source)

    def features(self, table: str) -> str:
        return self._table("features", table)

    def signals(self, signal: str) -> str:
        return self._table("signals", signal)

    def realtime(self, signal: str) -> str:
        return self._table("realtime", signal)

    def sequence(self, spec: SequenceSpec) -> str:
        return self._table("sequences", spec.table_name)

    def training(self, training_set: str) -> str:
        return self._table("training", training_set)

    def tombstones(self) -> str:
        """The users forgotten (``sequence-platform forget-user``): every write leaves them out."""
        return f"{self.root.rstrip('/')}/{TOMBSTONES}"


TOMBSTONES = "tombstones"
