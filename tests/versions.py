"""An earlier version's package, for the tests that check this version reads what that one wrote."""

from __future__ import annotations

import subprocess
import tarfile
from io import BytesIO
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def earlier_version(commit: str, into: Path) -> Path:
    """The `appliance` package of `commit` extracted under `into` (put `into` on PYTHONPATH to run it); the test
    is skipped when this checkout's history lacks the commit (a shallow clone)."""
    try:
        archive = subprocess.run(
            ["git", "-C", str(ROOT), "archive", "--format=tar", commit, "appliance"],
            capture_output=True,
            check=True,
        ).stdout
    except (OSError, subprocess.CalledProcessError):
        pytest.skip(f"version {commit} is not in this checkout's history")
    with tarfile.open(fileobj=BytesIO(archive)) as tar:
        tar.extractall(into, filter="data")
    return into
