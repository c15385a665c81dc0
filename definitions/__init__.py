"""The sequence definitions of this deployment, one file each (Python or JSON).

Dagster loads ``defs`` from here (see ``workspace.yaml``); every other runtime reads the same
files through ``sequence_platform.spec.load_catalog``.
"""

from typing import Any


def __getattr__(name: str) -> Any:
    # Built on first use, so that reading definitions never has to import Dagster.
    if name == "defs":
        from sequence_platform.orchestration import build_definitions

        return build_definitions()
    raise AttributeError(name)
