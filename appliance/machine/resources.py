"""What the machine has: GPUs through NVML, CPU cores, RAM, disk, load and I/O counters from /proc.

NVML (nvidia-ml-py, imported as `pynvml`) is optional: without the library, the driver or a GPU the machine is a
CPU machine and every GPU reading is empty. A metric a GPU does not support (NVMLError_NotSupported) is None
rather than an error. NVML calls can hang on a wedged driver, so async callers go through `to_thread` + timeout.
"""

from __future__ import annotations

import asyncio
import logging
import os
import platform
import shutil
import socket
import threading
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from types import ModuleType
from typing import Any

log = logging.getLogger(__name__)

#: Seconds an NVML poll may take before we give up on this round (a hung driver must not hang the supervisor).
NVML_TIMEOUT_S = 5.0


@dataclass
class GpuInfo:
    index: int
    name: str
    uuid: str
    memory_total_bytes: int
    memory_used_bytes: int | None = None
    utilization_ratio: float | None = None  # 0..1, the SM busy share of the last sample period
    memory_utilization_ratio: float | None = None
    temperature_celsius: float | None = None
    power_watts: float | None = None


@dataclass
class HostResources:
    hostname: str
    os: str
    cpu_cores: int
    ram_total_bytes: int
    ram_available_bytes: int
    disk_path: str
    disk_total_bytes: int
    disk_free_bytes: int
    gpus: list[GpuInfo] = field(default_factory=list)
    nvml_available: bool = False
    nvml_error: str | None = None
    driver_version: str | None = None

    @property
    def gpu_count(self) -> int:
        return len(self.gpus)

    def to_dict(self) -> dict[str, Any]:
        out = asdict(self)
        out["gpu_count"] = self.gpu_count
        return out


class Nvml:
    """A session with NVML. `start()` never raises: failure leaves `available` False and `error` set."""

    def __init__(self, module: ModuleType | None = None) -> None:
        self._module = module
        self.available = False
        self.error: str | None = None
        self.driver_version: str | None = None
        # NVML is thread-safe, but init/shutdown must not race a poll running in a worker thread.
        self._lock = threading.Lock()
        self._inflight: asyncio.Future[list[GpuInfo]] | None = None

    def start(self, expect_gpus: bool = True) -> Nvml:
        """Initialise NVML; its absence is news (INFO) only where GPUs are expected (a gpu machine)."""
        with self._lock:
            try:
                if self._module is None:
                    import pynvml  # nvidia-ml-py

                    self._module = pynvml
                self._module.nvmlInit()
            except ImportError as exc:
                self.error = f"nvidia-ml-py not installed: {exc}"
            except Exception as exc:  # NVMLError_LibraryNotFound, _DriverNotLoaded, ...
                self.error = f"NVML unavailable: {type(exc).__name__}: {exc}"
            else:
                self.available = True
                self.driver_version = self._optional(self._module.nvmlSystemGetDriverVersion)
            if self.error:
                log.log(logging.INFO if expect_gpus else logging.DEBUG, "no GPUs: %s", self.error)
            return self

    def stop(self) -> None:
        with self._lock:
            if self.available and self._module is not None:
                try:
                    self._module.nvmlShutdown()
                except Exception as exc:
                    log.debug("nvmlShutdown failed: %s", exc)
            self.available = False

    def _optional(self, fn: Callable[..., Any], *args: Any) -> Any:
        """One reading that a GPU may not support: NVML errors give None instead of failing the poll."""
        try:
            value = fn(*args)
        except Exception as exc:
            if self._module is not None and isinstance(exc, self._module.NVMLError):
                return None
            raise
        return value.decode() if isinstance(value, bytes) else value

    def gpus(self) -> list[GpuInfo]:
        """Read every GPU. An NVML failure of the whole poll (count, handles) marks NVML unavailable."""
        with self._lock:
            if not self.available or self._module is None:
                return []
            nv = self._module
            try:
                count = nv.nvmlDeviceGetCount()
                handles = [nv.nvmlDeviceGetHandleByIndex(i) for i in range(count)]
            except nv.NVMLError as exc:
                self.error = f"NVML poll failed: {type(exc).__name__}: {exc}"
                log.warning("%s", self.error)
                return []
            out: list[GpuInfo] = []
            for i, h in enumerate(handles):
                mem = self._optional(nv.nvmlDeviceGetMemoryInfo, h)
                util = self._optional(nv.nvmlDeviceGetUtilizationRates, h)
                temp = self._optional(nv.nvmlDeviceGetTemperature, h, nv.NVML_TEMPERATURE_GPU)
                power_mw = self._optional(nv.nvmlDeviceGetPowerUsage, h)
                out.append(
                    GpuInfo(
                        index=i,
                        name=str(self._optional(nv.nvmlDeviceGetName, h) or "unknown"),
                        uuid=str(self._optional(nv.nvmlDeviceGetUUID, h) or ""),
                        memory_total_bytes=int(mem.total) if mem is not None else 0,
                        memory_used_bytes=int(mem.used) if mem is not None else None,
                        utilization_ratio=util.gpu / 100.0 if util is not None else None,
                        memory_utilization_ratio=util.memory / 100.0 if util is not None else None,
                        temperature_celsius=float(temp) if temp is not None else None,
                        power_watts=power_mw / 1000.0 if power_mw is not None else None,
                    )
                )
            return out

    async def poll(self, timeout_s: float = NVML_TIMEOUT_S) -> list[GpuInfo] | None:
        """`gpus()` off the event loop; None when it did not finish in time (the thread is abandoned)."""
        if self._inflight is not None and not self._inflight.done():
            return None  # the last poll is still stuck in the driver: do not pile up threads behind it
        self._inflight = asyncio.ensure_future(asyncio.to_thread(self.gpus))
        try:
            return await asyncio.wait_for(asyncio.shield(self._inflight), timeout_s)
        except TimeoutError:
            log.warning("NVML poll took longer than %.1fs", timeout_s)
            return None


# --- /proc readers: plain text parsing, each takes the path so tests can feed recorded files ---------------


def cpu_cores() -> int:
    """CPUs this process may run on (honours cpusets/affinity in containers), not the host's total."""
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        return os.cpu_count() or 1


def read_meminfo(path: str | Path = "/proc/meminfo") -> dict[str, int]:
    """/proc/meminfo as bytes per key (the file says kB, meaning KiB)."""
    out: dict[str, int] = {}
    for line in Path(path).read_text().splitlines():
        key, _, rest = line.partition(":")
        parts = rest.split()
        if parts and parts[0].isdigit():
            factor = 1024 if len(parts) > 1 and parts[1] == "kB" else 1
            out[key.strip()] = int(parts[0]) * factor
    return out


def read_loadavg(path: str | Path = "/proc/loadavg") -> tuple[float, float, float]:
    fields = Path(path).read_text().split()
    return float(fields[0]), float(fields[1]), float(fields[2])


def _is_whole_disk(name: str, sys_block: Path) -> bool:
    # Partitions would count their disk's I/O twice; loop and ram devices are not storage.
    if name.startswith(("loop", "ram", "zram")):
        return False
    return (sys_block / name).exists() if sys_block.exists() else True


def read_diskstats(
    path: str | Path = "/proc/diskstats", sys_block: str | Path = "/sys/block"
) -> dict[str, tuple[int, int]]:
    """Bytes (read, written) per whole disk since boot; the kernel counts 512-byte sectors."""
    out: dict[str, tuple[int, int]] = {}
    block = Path(sys_block)
    for line in Path(path).read_text().splitlines():
        f = line.split()
        if len(f) < 10 or not _is_whole_disk(f[2], block):
            continue
        out[f[2]] = (int(f[5]) * 512, int(f[9]) * 512)
    return out


def read_netdev(path: str | Path = "/proc/net/dev") -> dict[str, tuple[int, int]]:
    """Bytes (received, transmitted) per interface since boot, loopback left out."""
    out: dict[str, tuple[int, int]] = {}
    for line in Path(path).read_text().splitlines()[2:]:
        name, _, rest = line.partition(":")
        name = name.strip()
        f = rest.split()
        if name == "lo" or len(f) < 9:
            continue
        out[name] = (int(f[0]), int(f[8]))
    return out


def host_resources(
    nvml: Nvml | None, disk_path: str = "/", meminfo_path: str | Path = "/proc/meminfo"
) -> HostResources:
    """A snapshot of the machine. Blocking (NVML, statfs): call it through `asyncio.to_thread`."""
    mem = read_meminfo(meminfo_path)
    try:
        disk = shutil.disk_usage(disk_path)
        disk_total, disk_free = disk.total, disk.free
    except OSError:
        disk_total = disk_free = 0
    gpus = nvml.gpus() if nvml is not None else []
    return HostResources(
        hostname=socket.gethostname(),
        os=f"{platform.system()} {platform.release()}",
        cpu_cores=cpu_cores(),
        ram_total_bytes=mem.get("MemTotal", 0),
        ram_available_bytes=mem.get("MemAvailable", mem.get("MemFree", 0)),
        disk_path=disk_path,
        disk_total_bytes=disk_total,
        disk_free_bytes=disk_free,
        gpus=gpus,
        nvml_available=bool(nvml and nvml.available),
        nvml_error=nvml.error if nvml is not None else "NVML not used",
        driver_version=nvml.driver_version if nvml is not None else None,
    )
