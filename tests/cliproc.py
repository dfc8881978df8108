"""Run `python -m appliance ...` as a person would: a real process against a given Redis, with none of the
test runner's APPLIANCE_* settings leaking in."""

from __future__ import annotations

import os
import subprocess
import sys


def run_appliance(
    redis_url: str, *argv: str, env: dict[str, str] | None = None, timeout_s: float = 120
) -> subprocess.CompletedProcess[str]:
    clean = {k: v for k, v in os.environ.items() if not k.startswith("APPLIANCE_")}
    clean["APPLIANCE_REDIS_URL"] = redis_url
    return subprocess.run(
        [sys.executable, "-m", "appliance", *argv],
        capture_output=True,
        text=True,
        env={**clean, **(env or {})},
        timeout=timeout_s,
        check=False,
    )
