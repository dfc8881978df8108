"""Unit states parsed from `systemctl show` output, and the unmanaged fallback when systemd is not PID 1."""

from __future__ import annotations

import os

import pytest

from appliance.machine.systemd import SystemdUnits, parse_show, parse_states, systemd_running

# Recorded from `systemctl show -p Id,LoadState,ActiveState,... unit1 unit2 unit3` (systemd 252): properties
# come in systemd's own order, one blank line between units, unset counters as [not set] or 2^64-1.
SHOW_OUTPUT = """\
Id=appliance-comfyui@0.service
NRestarts=3
ExecMainStartTimestampMonotonic=5000000
MainPID=4242
StatusText=ComfyUI answering on :8188
Result=success
LoadState=loaded
ActiveState=active
SubState=running
MemoryCurrent=734003200
CPUUsageNSec=12500000000

Id=appliance-worker@gpu0.service
NRestarts=5
ExecMainStartTimestampMonotonic=0
MainPID=0
StatusText=
Result=exit-code
LoadState=loaded
ActiveState=failed
SubState=failed
MemoryCurrent=[not set]
CPUUsageNSec=18446744073709551615

Id=appliance-worker@gpu9.service
NRestarts=0
ExecMainStartTimestampMonotonic=0
MainPID=0
StatusText=
Result=success
LoadState=not-found
ActiveState=inactive
SubState=dead
MemoryCurrent=[not set]
CPUUsageNSec=[not set]
"""


def test_parse_show_blocks() -> None:
    blocks = parse_show(SHOW_OUTPUT)
    assert [b["Id"] for b in blocks] == [
        "appliance-comfyui@0.service",
        "appliance-worker@gpu0.service",
        "appliance-worker@gpu9.service",
    ]
    assert blocks[0]["StatusText"] == "ComfyUI answering on :8188"


def test_parse_states_maps_units_and_values() -> None:
    units = [
        "appliance-worker@gpu0.service",
        "appliance-comfyui@0.service",
        "appliance-worker@gpu9.service",
        "appliance-worker@gpu7.service",
    ]
    states = parse_states(units, SHOW_OUTPUT)
    comfy = states["appliance-comfyui@0.service"]
    assert (comfy.active, comfy.sub_state, comfy.restarts, comfy.main_pid) == (True, "running", 3, 4242)
    assert comfy.memory_bytes == 734003200 and comfy.cpu_seconds == 12.5
    assert comfy.uptime_s(now_monotonic_us=65_000_000) == 60.0
    worker = states["appliance-worker@gpu0.service"]
    assert worker.failed and worker.result == "exit-code" and worker.restarts == 5
    assert worker.memory_bytes is None and worker.cpu_seconds is None and worker.main_pid is None
    assert worker.uptime_s() is None
    assert states["appliance-worker@gpu9.service"].load_state == "not-found"
    assert states["appliance-worker@gpu7.service"].active_state == "unknown"  # not in the output at all


def test_not_pid1_is_unmanaged(tmp_path) -> None:
    assert systemd_running(tmp_path / "absent") is False
    assert SystemdUnits().managed is os.path.isdir("/run/systemd/system")


async def test_unmanaged_states() -> None:
    states = await SystemdUnits(managed=False).states(["appliance-worker@echo0.service"])
    st = states["appliance-worker@echo0.service"]
    assert st.active_state == "unmanaged" and not st.managed and st.uptime_s() is None


@pytest.mark.skipif(os.path.isdir("/run/systemd/system"), reason="a real systemd answers here")
async def test_systemctl_failing_gives_unknown_not_an_exception() -> None:
    states = await SystemdUnits(managed=True).states(["appliance-worker@echo0.service"])
    assert states["appliance-worker@echo0.service"].active_state == "unknown"
