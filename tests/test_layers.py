"""The package layering of docs/architecture.md, as import-linter checks it in CI's lint stage.

`lint-imports` runs on a copy of the tree: once as it is (every contract kept), then once per planted wrong
import, which must break the contract that forbids it. The plants show the contracts are not vacuous.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest

pytest.importorskip("importlinter")

ROOT = Path(__file__).resolve().parent.parent


def lint_imports(tree: Path) -> subprocess.CompletedProcess[str]:
    exe = shutil.which("lint-imports")
    assert exe is not None, "import-linter is installed but lint-imports is not on PATH"
    env = {**os.environ, "PYTHONPATH": str(tree)}  # the copy, not whichever appliance is installed
    return subprocess.run(
        [exe, "--no-cache", "--config", str(tree / "pyproject.toml")],
        capture_output=True,
        text=True,
        cwd=tree,
        env=env,
        check=False,
        timeout=300,
    )


@pytest.fixture
def tree(tmp_path: Path) -> Path:
    shutil.copytree(ROOT / "appliance", tmp_path / "appliance", ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copy(ROOT / "pyproject.toml", tmp_path / "pyproject.toml")
    return tmp_path


def test_the_tree_keeps_every_contract(tree: Path) -> None:
    result = lint_imports(tree)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "0 broken" in result.stdout


@pytest.mark.parametrize(
    ("module", "line", "contract", "edge"),
    [
        # The queue is below every runtime package: it must not reach up into the machine.
        (
            "queue/keys.py",
            "from appliance.machine import plan as _plan",
            "Layers point one way",
            "appliance.queue.keys -> appliance.machine.plan",
        ),
        # Config is below the queue.
        (
            "config/schema.py",
            "from appliance.queue import models as _models",
            "Layers point one way",
            "appliance.config.schema -> appliance.queue.models",
        ),
        # Siblings of one layer know nothing of each other.
        (
            "monitor/state.py",
            "from appliance.pools import classifier as _classifier",
            "Layers point one way",
            "appliance.monitor.state -> appliance.pools.classifier",
        ),
        # Connectors know nothing of Redis.
        ("worker/connectors/echo.py", "import redis as _redis", "Connectors know nothing of Redis", "redis"),
        # A cycle inside one package: the schema importing its own loader.
        (
            "config/schema.py",
            "from appliance.config import load as _load",
            "No import cycles",
            "appliance.config",
        ),
    ],
)
def test_a_wrong_import_breaks_its_contract(
    tree: Path, module: str, line: str, contract: str, edge: str
) -> None:
    path = tree / "appliance" / module
    path.write_text(path.read_text() + f"\n{line}  # noqa: E402, F401  (planted by tests/test_layers.py)\n")
    result = lint_imports(tree)
    assert result.returncode != 0, result.stdout
    broken = result.stdout.split("Broken contracts", 1)[-1]
    assert contract in broken and edge in broken, result.stdout
