"""Resource detection: /proc parsing, and NVML absent, present, partly unsupported, or failing.

Only the pynvml library boundary is replaced (its functions monkeypatched); everything above it is real.
"""

from __future__ import annotations

import sys
from types import SimpleNamespace

import pynvml
import pytest

from appliance.machine import resources
from appliance.machine.resources import Nvml, host_resources


def test_proc_readers(tmp_path) -> None:
    (tmp_path / "meminfo").write_text(
        "MemTotal:       16314200 kB\nMemFree:  100 kB\nMemAvailable:   8000000 kB\n"
        "HugePages_Total:       0\n"
    )
    mem = resources.read_meminfo(tmp_path / "meminfo")
    assert mem["MemTotal"] == 16314200 * 1024 and mem["MemAvailable"] == 8_000_000 * 1024
    assert mem["HugePages_Total"] == 0
    (tmp_path / "loadavg").write_text("0.52 0.58 0.59 1/467 12345\n")
    assert resources.read_loadavg(tmp_path / "loadavg") == (0.52, 0.58, 0.59)
    (tmp_path / "diskstats").write_text(
        "   8       0 sda 1000 0 2048 0 500 0 4096 0 0 0 0\n"
        "   8       1 sda1 900 0 1024 0 400 0 2048 0 0 0 0\n"
        "   7       0 loop0 10 0 80 0 0 0 0 0 0 0 0\n"
    )
    block = tmp_path / "block"
    (block / "sda").mkdir(parents=True)
    assert resources.read_diskstats(tmp_path / "diskstats", block) == {"sda": (2048 * 512, 4096 * 512)}
    (tmp_path / "netdev").write_text(
        "Inter-|   Receive                                                |  Transmit\n"
        " face |bytes    packets errs drop fifo frame compressed multicast|bytes    packets errs drop fifo colls carrier compressed\n"
        "    lo:  5000      50    0    0    0     0          0         0     5000      50    0    0    0     0       0          0\n"
        "  eth0: 123456    100    0    0    0     0          0         0   654321     90    0    0    0     0       0          0\n"
    )
    assert resources.read_netdev(tmp_path / "netdev") == {"eth0": (123456, 654321)}


def test_real_proc_of_this_host() -> None:
    res = host_resources(None)
    assert res.cpu_cores >= 1 and res.ram_total_bytes > 0 and res.disk_total_bytes > 0
    assert res.gpus == [] and res.nvml_available is False
    assert sum(resources.read_loadavg()) >= 0


def test_nvml_not_installed(monkeypatch) -> None:
    monkeypatch.setitem(sys.modules, "pynvml", None)  # import pynvml -> ImportError
    nv = Nvml().start()
    assert not nv.available and "not installed" in (nv.error or "")
    assert nv.gpus() == []


@pytest.mark.parametrize("error", [pynvml.NVMLError_LibraryNotFound, pynvml.NVMLError_DriverNotLoaded])
def test_nvml_absent_is_a_cpu_machine(monkeypatch, error) -> None:
    def fail() -> None:
        raise error()

    monkeypatch.setattr(pynvml, "nvmlInit", fail)
    nv = Nvml().start()
    assert not nv.available and error.__name__ in (nv.error or "")
    res = host_resources(nv)
    assert res.gpu_count == 0 and res.nvml_error == nv.error


def _fake_gpu_boundary(monkeypatch, *, unsupported: set[str] = frozenset(), lost: bool = False) -> None:
    """Two GPUs at the pynvml boundary; named calls raise NVMLError_NotSupported, or the count fails (GPU lost)."""

    def call(name, value):
        def fn(*args):
            if name in unsupported:
                raise pynvml.NVMLError_NotSupported()
            return value(*args) if callable(value) else value

        monkeypatch.setattr(pynvml, name, fn)

    call("nvmlInit", None)
    call("nvmlShutdown", None)
    call("nvmlSystemGetDriverVersion", "550.54.15")
    if lost:

        def count() -> int:
            raise pynvml.NVMLError_GpuIsLost()

        monkeypatch.setattr(pynvml, "nvmlDeviceGetCount", count)
    else:
        call("nvmlDeviceGetCount", 2)
    call("nvmlDeviceGetHandleByIndex", lambda i: f"handle{i}")
    call("nvmlDeviceGetName", lambda h: b"NVIDIA H100 80GB HBM3")
    call("nvmlDeviceGetUUID", lambda h: f"GPU-{h}")
    call("nvmlDeviceGetMemoryInfo", lambda h: SimpleNamespace(total=80 << 30, used=10 << 30, free=70 << 30))
    call("nvmlDeviceGetUtilizationRates", lambda h: SimpleNamespace(gpu=87, memory=40))
    call("nvmlDeviceGetTemperature", lambda h, sensor: 61)
    call("nvmlDeviceGetPowerUsage", lambda h: 312_500)


def test_nvml_reads_gpus(monkeypatch) -> None:
    _fake_gpu_boundary(monkeypatch)
    nv = Nvml().start()
    assert nv.available and nv.driver_version == "550.54.15"
    gpus = nv.gpus()
    assert [(g.index, g.uuid) for g in gpus] == [(0, "GPU-handle0"), (1, "GPU-handle1")]
    g = gpus[0]
    assert g.name == "NVIDIA H100 80GB HBM3" and g.memory_total_bytes == 80 << 30
    assert (g.utilization_ratio, g.memory_utilization_ratio, g.temperature_celsius, g.power_watts) == (
        0.87,
        0.40,
        61.0,
        312.5,
    )
    assert host_resources(nv).gpu_count == 2
    nv.stop()
    assert nv.gpus() == []


def test_nvml_unsupported_metrics_are_none(monkeypatch) -> None:
    _fake_gpu_boundary(monkeypatch, unsupported={"nvmlDeviceGetPowerUsage", "nvmlDeviceGetTemperature"})
    g = Nvml().start().gpus()[1]
    assert g.power_watts is None and g.temperature_celsius is None and g.utilization_ratio == 0.87


def test_nvml_failing_poll_gives_no_gpus(monkeypatch) -> None:
    _fake_gpu_boundary(monkeypatch, lost=True)
    nv = Nvml().start()
    assert nv.available
    assert nv.gpus() == [] and "GpuIsLost" in (nv.error or "")


async def test_nvml_poll_off_the_loop(monkeypatch) -> None:
    _fake_gpu_boundary(monkeypatch)
    gpus = await Nvml().start().poll()
    assert gpus is not None and len(gpus) == 2


async def test_hung_nvml_poll_times_out_without_piling_up(monkeypatch) -> None:
    import threading

    _fake_gpu_boundary(monkeypatch)
    release = threading.Event()
    calls = []

    def hung_count() -> int:
        calls.append(1)
        release.wait(30)  # a wedged driver call
        return 2

    monkeypatch.setattr(pynvml, "nvmlDeviceGetCount", hung_count)
    nv = Nvml().start()
    try:
        assert await nv.poll(timeout_s=0.2) is None
        assert await nv.poll(timeout_s=0.2) is None  # refused at once: the first call is still stuck
        assert len(calls) == 1
    finally:
        release.set()


# --- machine.type auto: the seed's "detect machine type" step ---------------------------------------------------


def _plan_on_defaults(monkeypatch, capsys) -> dict:
    """`appliance machine plan --json` in this process on a config that leaves machine.type at its default."""
    import json

    from appliance.cli import main

    for name in ("APPLIANCE_MACHINE__TYPE", "APPLIANCE_MACHINE_TYPE", "APPLIANCE_CONFIG"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("APPLIANCE_MACHINE__ID", "box")
    monkeypatch.setenv("APPLIANCE_CONNECTORS__ECHO__ENABLED", "true")
    capsys.readouterr()
    assert main(["machine", "plan", "--json"]) == 0
    return json.loads(capsys.readouterr().out)


def test_auto_machine_type_is_gpu_when_nvml_finds_gpus(monkeypatch, capsys) -> None:
    _fake_gpu_boundary(monkeypatch)
    plan = _plan_on_defaults(monkeypatch, capsys)
    assert plan["machine_type"] == "gpu"
    assert [s["name"] for s in plan["services"]] == ["comfyui@0", "worker@gpu0", "comfyui@1", "worker@gpu1"]


@pytest.mark.parametrize("error", [pynvml.NVMLError_LibraryNotFound, pynvml.NVMLError_DriverNotLoaded])
def test_auto_machine_type_is_api_without_nvml(monkeypatch, capsys, error) -> None:
    def fail() -> None:
        raise error()

    monkeypatch.setattr(pynvml, "nvmlInit", fail)
    plan = _plan_on_defaults(monkeypatch, capsys)
    assert plan["machine_type"] == "api"
    assert [s["name"] for s in plan["services"]] == ["worker@echo0"]


def test_auto_machine_type_is_api_when_nvml_finds_no_gpu(monkeypatch, capsys) -> None:
    _fake_gpu_boundary(monkeypatch)
    monkeypatch.setattr(pynvml, "nvmlDeviceGetCount", lambda: 0)
    assert _plan_on_defaults(monkeypatch, capsys)["machine_type"] == "api"
