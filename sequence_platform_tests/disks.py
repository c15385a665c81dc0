"""A real full disk for tests: a small tmpfs mounted on a temporary folder.

Mounting needs root (or CAP_SYS_ADMIN). Where that is missing the tests that need a full disk
are skipped, unless ``CI=true``: there they fail, so that CI never passes without them.
"""

from __future__ import annotations

import shutil
import subprocess
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from sequence_platform_tests.ci import unavailable


@contextmanager
def tiny_disk(folder: Path, size: str = "4m") -> Iterator[Path]:
    """``folder`` as the mount point of a tmpfs of ``size`` bytes (``4m``), for the duration."""
    folder.mkdir(parents=True, exist_ok=True)
    mount = shutil.which("mount")
    mounted = mount is not None and (
        subprocess.run(
            [mount, "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(folder)],
            capture_output=True,
            text=True,
        ).returncode
        == 0
    )
    if not mounted:
        unavailable(f"a full disk needs a tmpfs mount on {folder} (run as root)")
    try:
        yield folder
    finally:
        subprocess.run(["umount", "--lazy", str(folder)], check=True)


def fill(disk: Path) -> Path:
    """Take every free byte of ``disk`` with one file; removing it frees the disk again."""
    filler = disk / "filler"
    with filler.open("wb", buffering=0) as handle:
        block = b"\0" * 65_536
        try:
            while True:
                handle.write(block)
        except OSError:
            pass
    # What the last block left over, a byte at a time: the disk is now completely full.
    with filler.open("ab", buffering=0) as handle:
        try:
            while handle.write(b"\0"):
                pass
        except OSError:
            pass
    return filler
