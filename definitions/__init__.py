"""The sequence definitions of this deployment, one file each (Python or JSON).

Dagster loads ``defs`` from here (``dg dev`` through ``[tool.dg]`` in ``pyproject.toml``, which
names this module; ``dagster dev`` through ``workspace.yaml``, which names ``defs``); every other
runtime reads the same files through ``sequence_platform.spec.load_catalog``.
"""

from typing import Any


def __getattr__(name: str) -> Any:
    # Built on first use, so that reading definitions never has to import Dagster.
    if name == "defs":
        from sequence_platform.orchestration import build_definitions

        return build_definitions()
    raise AttributeError(name)


def __dir__() -> list[str]:
    # Listed, so that Dagster finds ``defs`` when it is given this module without an attribute.
    return sorted([*globals(), "defs"])
