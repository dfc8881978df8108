"""The CLI starts fast because it imports only what the command it runs needs (docs/performance.md, "CLI
start-up"): checked by the modules a fresh interpreter holds afterwards, not by timing."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

ENV = {**os.environ, "PYTHONPATH": str(Path(__file__).parents[1])}

#: Heavy modules `appliance --help` (building every command's parser) must not load.
NOT_FOR_HELP = (
    "aiohttp",
    "prometheus_client",
    "pydantic",
    "pydantic_settings",
    "redis",
    "hiredis",
    "yaml",
    "openai",
    "appliance.queue",
    "appliance.config",
)
#: What `appliance job get` has no use for (it needs the settings, pydantic and redis).
NOT_FOR_JOB_GET = ("aiohttp", "prometheus_client", "openai", "appliance.monitor", "appliance.worker")


def loaded_after(code: str) -> list[str]:
    """The modules of sys.modules after running `code` in a fresh interpreter."""
    script = f"import sys, json\n{code}\nprint(json.dumps(sorted(sys.modules)))"
    out = subprocess.run(
        [sys.executable, "-c", script], env=ENV, capture_output=True, text=True, timeout=120, check=True
    ).stdout
    return list(json.loads(out.strip().splitlines()[-1]))


def test_help_imports_no_heavy_module() -> None:
    loaded = loaded_after("import appliance.cli\nappliance.cli.build_parser().format_help()")
    assert [m for m in loaded if m.split(".")[0] in NOT_FOR_HELP or m in NOT_FOR_HELP] == []
    assert not [m for m in loaded if m.startswith(("appliance.queue", "appliance.config"))]


def test_job_get_imports_neither_web_nor_metrics_modules(redis_url: str) -> None:
    code = (
        "from appliance.cli import main\n"
        f"code = main(['job', 'get', 'no-such-job', '--redis-url', {redis_url!r}])\n"
        "assert code != 0, code"
    )
    loaded = loaded_after(code)
    assert "redis" in loaded  # it did reach Redis
    assert [m for m in loaded if m in NOT_FOR_JOB_GET or m.startswith(NOT_FOR_JOB_GET)] == []
