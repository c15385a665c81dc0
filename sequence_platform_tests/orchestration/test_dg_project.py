"""The repository as a ``dg`` project (``[tool.dg]`` in pyproject.toml), what ``make ui`` starts
with ``dg dev``: the same code location as ``workspace.yaml`` gives ``dagster dev``."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from dagster._core.workspace.load_target import WorkspaceFileTarget
from dagster_dg_core.context import DgContext

from sequence_platform.orchestration import build_definitions
from sequence_platform.orchestration.instance import prepare_dagster_home
from sequence_platform.settings import PlatformSettings
from sequence_platform_tests.test_cli import REPO

LIFECYCLE = ("BetaWarning", "PreviewWarning", "SupersessionWarning")


def test_dg_names_the_code_location_workspace_yaml_names() -> None:
    """Same location name, so ``dg dev`` and ``dagster dev`` share a DAGSTER_HOME's run history
    and sensor states; same module, whose ``defs`` dg finds without being told the attribute."""
    project = DgContext.for_project_environment(REPO, {})
    [workspace] = WorkspaceFileTarget(paths=[str(REPO / "workspace.yaml")]).create_origins()
    assert project.code_location_name == workspace.location_name == "definitions:defs"
    assert project.code_location_target_module_name == "definitions"
    assert project.get_path_for_local_module("definitions") == REPO / "definitions"


def test_dg_loads_the_definitions_package(tmp_path: Path) -> None:
    """``dg list defs`` loads the code location as ``dg dev``'s code server does: every asset,
    check, job, schedule and sensor of ``definitions.defs``, and no lifecycle warning."""
    dagster_home = tmp_path / "dagster"
    prepare_dagster_home(dagster_home)  # as `make ui` does
    env = {
        "SEQUENCE_PLATFORM_HOME": str(tmp_path / "home"),
        "SEQUENCE_PLATFORM_DEFINITIONS": str(REPO / "definitions"),
        "DAGSTER_HOME": str(dagster_home),
    }
    listed = subprocess.run(
        [str(Path(sys.executable).with_name("dg")), "list", "defs", "--json"],
        cwd=REPO,
        env={**os.environ, **env},
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert listed.returncode == 0, listed.stdout + listed.stderr
    assert not [name for name in LIFECYCLE if name in listed.stderr], listed.stderr
    found = json.loads(listed.stdout)

    settings = PlatformSettings(home=tmp_path / "home", definitions=REPO / "definitions")
    repository = build_definitions(settings=settings).get_repository_def()
    graph = repository.asset_graph
    assert {a["asset_key"] for a in found["assets"]} == {
        key.to_user_string() for key in graph.get_all_asset_keys()
    }
    assert len(found["asset_checks"]) == len(graph.asset_check_keys) > 0
    assert {j["name"] for j in found["jobs"]} >= {"daily_batch", "realtime_compaction"}
    assert {s["name"] for s in found["schedules"]} == {s.name for s in repository.schedule_defs}
    assert {s["name"] for s in found["sensors"]} == {s.name for s in repository.sensor_defs}
    assert "engagement_stream" in {s["name"] for s in found["sensors"]}
