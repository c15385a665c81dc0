"""Configuration, read from the environment (``SEQUENCE_PLATFORM_*``) in one place."""

from __future__ import annotations

from datetime import date
from pathlib import Path

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict

from sequence_platform.storage.maintenance import DEFAULT_RETENTION_HOURS

START_DATE_FILE = "start_date"
"""Written into the data home by ``generate``, so every command agrees on the first day."""
FALLBACK_START_DATE = date(2026, 1, 1)


class PlatformSettings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="SEQUENCE_PLATFORM_", extra="ignore")

    home: Path = Field(
        default=Path(".sequence_platform"),
        description="Data root: landing zone, local stream and (by default) the Delta tables.",
    )
    tables_uri: str | None = Field(
        default=None,
        description="Where Delta tables live, e.g. s3://bucket/prefix; default <home>/tables.",
    )
    start_date: date | None = Field(default=None, description="First daily partition (YYYY-MM-DD).")
    kafka_bootstrap: str | None = Field(
        default=None, description="Kafka bootstrap servers; unset means the local stream."
    )
    definitions: Path | None = Field(
        default=None, description="Folder of definitions; default the 'definitions' package."
    )
    realtime_interval_seconds: int = Field(
        default=5,
        ge=1,
        description=(
            "Minimum seconds between two polls of a stream sensor; Dagster's sensor daemon "
            "polls at most every 5 s, so less counts as 5."
        ),
    )
    late_data_interval_seconds: int = Field(
        default=60, ge=1, description="Minimum seconds between two checks for late data."
    )
    realtime_linger_seconds: float = Field(
        default=20.0,
        ge=0,
        description="How long a micro-batch run keeps taking newly arrived ranges.",
    )
    realtime_max_batch: int = Field(
        default=50_000, ge=1, description="Most messages one micro-batch run processes."
    )
    refresh_seconds: float = Field(
        default=0.5, gt=0, description="How often the read service checks table versions."
    )
    access_log: bool = Field(
        default=False, description="The read service logs one JSON line per request."
    )
    vacuum_retention_hours: int = Field(
        default=DEFAULT_RETENTION_HOURS,
        ge=0,
        description="Vacuum deletes files no table version has referenced for this long.",
    )
    admin_token: str | None = Field(
        default=None,
        repr=False,
        description=(
            "Bearer token of the read service's admin endpoints (DELETE /v1/admin/users/{id}); "
            "unset, they are off."
        ),
    )
    storage_options: dict[str, str] = Field(
        default_factory=dict,
        description="delta-rs storage options (credentials, endpoint) for object stores, as JSON.",
    )

    @property
    def tables_root(self) -> str:
        return self.tables_uri or str((self.home / "tables").absolute())

    @property
    def first_day(self) -> date:
        """The configured start date, else the one the data generator recorded, else a default."""
        if self.start_date is not None:
            return self.start_date
        recorded = self.home / START_DATE_FILE
        if recorded.exists():
            return date.fromisoformat(recorded.read_text().strip())
        return FALLBACK_START_DATE

    def record_start_date(self, day: date) -> None:
        self.home.mkdir(parents=True, exist_ok=True)
        (self.home / START_DATE_FILE).write_text(day.isoformat() + "\n")
