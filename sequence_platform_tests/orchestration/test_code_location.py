"""The code location as ``dagster dev`` loads it: no lifecycle warnings, truthful intervals."""

from __future__ import annotations

import warnings
from datetime import date
from pathlib import Path

import dagster as dg
import pytest
from dagster._daemon.sensor import MIN_INTERVAL_LOOP_TIME

from sequence_platform.orchestration import build_definitions
from sequence_platform.orchestration.realtime import DAEMON_LOOP_SECONDS
from sequence_platform.settings import PlatformSettings

LIFECYCLE = (dg.BetaWarning, dg.PreviewWarning, dg.SupersessionWarning)


def test_loading_the_definitions_warns_of_nothing(tmp_path: Path) -> None:
    """Every log of ``dagster dev`` (and of each run it launches) would repeat these."""
    settings = PlatformSettings(home=tmp_path, start_date=date(2026, 3, 1))
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        # Resolving the repository binds resources and jobs to sensors, as the code server does.
        build_definitions(settings=settings).get_repository_def()
    lifecycle = [str(w.message) for w in caught if issubclass(w.category, LIFECYCLE)]
    assert lifecycle == []


@pytest.mark.parametrize(("asked", "declared"), [(1, 5), (5, 5), (12, 12)])
def test_the_stream_sensor_declares_the_interval_the_daemon_keeps(
    tmp_path: Path, asked: int, declared: int
) -> None:
    """Dagster's sensor daemon evaluates sensors at most every 5 s; the UI's "Frequency" shows
    the declared minimum, so a lower one would promise ticks that never come."""
    assert DAEMON_LOOP_SECONDS == MIN_INTERVAL_LOOP_TIME
    settings = PlatformSettings(
        home=tmp_path, start_date=date(2026, 3, 1), realtime_interval_seconds=asked
    )
    sensor = build_definitions(settings=settings).resolve_sensor_def("engagement_stream")
    assert sensor.minimum_interval_seconds == declared


def test_steps_pass_no_values_and_an_asset_returning_one_fails(tmp_path: Path) -> None:
    """The code location's io_manager stores nothing: the assets write their own tables."""
    settings = PlatformSettings(home=tmp_path, start_date=date(2026, 3, 1))
    defs = build_definitions(settings=settings)
    io_manager = defs.resources["io_manager"]
    assert isinstance(io_manager, dg.IOManagerDefinition)
    assert "Delta tables" in (io_manager.description or "")

    @dg.asset
    def returns_a_frame() -> list[int]:
        return [1, 2, 3]

    result = dg.materialize(
        [returns_a_frame], resources={"io_manager": io_manager}, raise_on_error=False
    )
    assert not result.success
    (failure,) = result.get_step_failure_events()
    assert "returned a list" in str(failure.step_failure_data.error)
