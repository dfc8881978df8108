"""`appliance machine record-stop`: what ExecStopPost= runs after every stop, counted where the metrics read it."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from prometheus_client.parser import text_string_to_metric_families

from appliance.machine.stops import read_stops


def record(state_dir: Path | None, unit: str, result: str | None) -> subprocess.CompletedProcess[str]:
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(("APPLIANCE_", "SERVICE_RESULT", "STATE_DIRECTORY"))
    }
    if state_dir is not None:
        env["STATE_DIRECTORY"] = f"{state_dir}:/var/lib/other"
    if result is not None:
        env.update(SERVICE_RESULT=result, EXIT_CODE="killed", EXIT_STATUS="ABRT")
    return subprocess.run(
        [sys.executable, "-m", "appliance", "machine", "record-stop", unit],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )


def test_stops_are_counted_per_unit_and_result(tmp_path: Path) -> None:
    for result in ("watchdog", "watchdog", "success"):
        assert record(tmp_path, "appliance-worker@gpu0.service", result).returncode == 0
    assert record(tmp_path, "appliance-comfyui@0.service", None).returncode == 0
    assert read_stops(tmp_path) == {
        "appliance-worker@gpu0.service": {"watchdog": 2, "success": 1},
        "appliance-comfyui@0.service": {"unknown": 1},
    }
    assert not [p for p in (tmp_path / "unit-stops").iterdir() if p.name.startswith(".tmp-")]


def test_bad_calls_are_one_line(tmp_path: Path) -> None:
    outside = record(None, "appliance-worker@gpu0.service", "watchdog")
    assert (
        outside.returncode == 2 and "STATE_DIRECTORY" in outside.stderr and "Traceback" not in outside.stderr
    )
    sneaky = record(tmp_path, "../../etc/passwd", "watchdog")
    assert sneaky.returncode == 2 and "not a unit name" in sneaky.stderr
    assert read_stops(tmp_path) == {}


def test_watchdog_kills_reach_the_metrics() -> None:
    from prometheus_client.exposition import generate_latest

    from appliance.machine.metrics import make_registry
    from tests.monitor.helpers import gpu_machine_state

    state = gpu_machine_state("m1")
    unit = state.plan.workers[0].unit
    state.unit_stops = {unit: {"watchdog": 3, "exit-code": 1}}
    registry, _jobs = make_registry(state)
    families = {f.name: f for f in text_string_to_metric_families(generate_latest(registry).decode())}
    kills = {
        s.labels["unit"]: s.value
        for s in families["appliance_service_watchdog_kills"].samples
        if s.name.endswith("_total")
    }
    assert kills[unit] == 3 and all(v == 0 for u, v in kills.items() if u != unit)
    stops = {
        (s.labels["unit"], s.labels["result"]): s.value
        for s in families["appliance_service_stops"].samples
        if s.name.endswith("_total")
    }
    assert stops == {(unit, "watchdog"): 3, (unit, "exit-code"): 1}
