"""The README's first command: `appliance demo` runs a local fleet against a redis-server it starts itself."""

from __future__ import annotations

import os
import subprocess
import sys


def test_demo_runs_a_local_fleet_to_completion() -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("APPLIANCE_")}
    out = subprocess.run(
        [sys.executable, "-m", "appliance", "demo", "--jobs", "5", "--workers", "2"],
        capture_output=True,
        text=True,
        env=env,
        timeout=180,
    )
    assert out.returncode == 0, out.stdout + out.stderr
    assert "started redis-server on 127.0.0.1:" in out.stdout
    assert "5/5 jobs completed" in out.stdout
    assert "on demo-echo0" in out.stdout or "on demo-echo1" in out.stdout
    assert "workers drained and stopped" in out.stdout
