"""A real component a test needs and cannot get: skipped on a developer's machine, a failure
under CI (``CI=true``), so CI never passes with a component left out."""

from __future__ import annotations

import os
from typing import NoReturn

import pytest


def running_in_ci() -> bool:
    """True when the ``CI`` environment variable says so (``CI=true``)."""
    return os.environ.get("CI", "").strip().lower() in {"true", "1", "yes"}


def unavailable(message: str) -> NoReturn:
    """Fail under CI, else skip, saying what is missing and how to get it."""
    if running_in_ci():
        pytest.fail(f"{message} (CI=true: a missing component fails the run)")
    pytest.skip(f"{message}; with CI=true this fails")
