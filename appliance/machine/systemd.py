"""Unit states from systemd, read with `systemctl show` (no D-Bus binding needed).

When systemd is not the service manager here (not PID 1: a development shell, a container whose platform
supervises the processes) every service is reported "unmanaged" and the supervisor relies on its own checks.
"""

from __future__ import annotations

import asyncio
import logging
import os
import shutil
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)

#: The properties we read; `Id` maps each output block back to its unit.
PROPERTIES = (
    "Id",
    "LoadState",
    "ActiveState",
    "SubState",
    "NRestarts",
    "MainPID",
    "ExecMainStartTimestampMonotonic",
    "MemoryCurrent",
    "CPUUsageNSec",
    "StatusText",
    "Result",
    "After",
)

#: systemd prints 2^64-1 (or "[not set]") for a counter it does not track, e.g. MemoryCurrent without accounting.
_UNSET = {"", "[not set]", str(2**64 - 1)}

UNMANAGED = "unmanaged"


@dataclass
class UnitState:
    unit: str
    load_state: str = "unknown"
    active_state: str = UNMANAGED
    sub_state: str = UNMANAGED
    restarts: int = 0
    main_pid: int | None = None
    started_monotonic_us: int | None = None
    memory_bytes: int | None = None
    cpu_seconds: float | None = None
    status_text: str = ""
    result: str = ""
    #: Units this one is ordered after (`After=`): a unit ordered after the supervisor starts only once the
    #: supervisor is READY, so the supervisor must not wait for it.
    after: tuple[str, ...] = ()

    @property
    def managed(self) -> bool:
        return self.active_state != UNMANAGED

    @property
    def active(self) -> bool:
        return self.active_state == "active"

    @property
    def failed(self) -> bool:
        return self.active_state == "failed"

    def uptime_s(self, now_monotonic_us: int | None = None) -> float | None:
        """Seconds since the main process started; systemd's monotonic clock is ours (same boot)."""
        if not self.active or not self.started_monotonic_us:
            return None
        now = (
            now_monotonic_us
            if now_monotonic_us is not None
            else time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000
        )
        return max(0.0, (now - self.started_monotonic_us) / 1e6)

    def to_dict(self) -> dict[str, Any]:
        out = asdict(self)
        del out["after"]
        out["uptime_s"] = self.uptime_s()
        return out


def _int(value: str | None) -> int | None:
    if value is None or value.strip() in _UNSET:
        return None
    try:
        return int(value.strip())
    except ValueError:
        return None


def parse_show(text: str) -> list[dict[str, str]]:
    """`systemctl show` output for one or more units: blocks of KEY=VALUE separated by blank lines."""
    blocks: list[dict[str, str]] = []
    current: dict[str, str] = {}
    for line in text.splitlines():
        if not line.strip():
            if current:
                blocks.append(current)
                current = {}
            continue
        key, sep, value = line.partition("=")
        if sep:
            current[key] = value
    if current:
        blocks.append(current)
    return blocks


def unit_state(unit: str, props: dict[str, str]) -> UnitState:
    pid = _int(props.get("MainPID"))
    cpu_ns = _int(props.get("CPUUsageNSec"))
    return UnitState(
        unit=props.get("Id", unit),
        load_state=props.get("LoadState", "unknown"),
        active_state=props.get("ActiveState", "unknown"),
        sub_state=props.get("SubState", "unknown"),
        restarts=_int(props.get("NRestarts")) or 0,
        main_pid=pid or None,
        started_monotonic_us=_int(props.get("ExecMainStartTimestampMonotonic")) or None,
        memory_bytes=_int(props.get("MemoryCurrent")),
        cpu_seconds=cpu_ns / 1e9 if cpu_ns is not None else None,
        status_text=props.get("StatusText", ""),
        result=props.get("Result", ""),
        after=tuple(props.get("After", "").split()),
    )


def parse_states(units: list[str], text: str) -> dict[str, UnitState]:
    """Map `systemctl show` output back to the units asked for (by `Id`, else by position)."""
    blocks = parse_show(text)
    by_id = {b.get("Id"): b for b in blocks if b.get("Id")}
    out: dict[str, UnitState] = {}
    for i, unit in enumerate(units):
        props = by_id.get(unit) or (blocks[i] if i < len(blocks) and "Id" not in blocks[i] else None)
        out[unit] = (
            unit_state(unit, props)
            if props is not None
            else UnitState(unit=unit, load_state="unknown", active_state="unknown", sub_state="unknown")
        )
    return out


def systemd_running(run_dir: str | Path = "/run/systemd/system") -> bool:
    """sd_booted(3): true when systemd is the init system (it creates /run/systemd/system/ early at boot)."""
    return Path(run_dir).is_dir() and shutil.which("systemctl") is not None


class SystemdUnits:
    """Reads unit states; `managed` is False when systemd does not run the services (every state: unmanaged)."""

    def __init__(self, managed: bool | None = None, *, user: bool = False, timeout_s: float = 10.0) -> None:
        self.managed = systemd_running() if managed is None else managed
        self.user = user
        self.timeout_s = timeout_s

    async def states(self, units: list[str]) -> dict[str, UnitState]:
        if not units:
            return {}
        if not self.managed:
            return {u: UnitState(unit=u) for u in units}
        out = await self._systemctl("show", "--no-pager", "-p", ",".join(PROPERTIES), "--", *units)
        if out is None:
            return {u: UnitState(unit=u, active_state="unknown", sub_state="unknown") for u in units}
        return parse_states(units, out)

    async def stop_pending(self, unit: str) -> bool:
        """Whether a stop job for `unit` is queued or running (`systemctl stop appliance.target`: the
        workers, ordered after the supervisor, stop first while the supervisor's own stop job waits)."""
        if not self.managed:
            return False
        out = await self._systemctl("list-jobs", "--no-legend", "--no-pager", "--", unit)
        return any(
            len(cols := line.split()) >= 3 and cols[1] == unit and cols[2] == "stop"
            for line in (out or "").splitlines()
        )

    async def _systemctl(self, *argv: str) -> str | None:
        """systemctl's output, or None when it could not run at all (a failure is logged)."""
        args = ["systemctl", *(["--user"] if self.user else []), *argv]
        try:
            proc = await asyncio.create_subprocess_exec(
                *args,
                stdout=asyncio.subprocess.PIPE,
                stderr=asyncio.subprocess.PIPE,
                # Children must not inherit the notify socket: only the main PID may speak for the unit.
                env={
                    **{
                        k: v
                        for k, v in os.environ.items()
                        if k not in ("NOTIFY_SOCKET", "WATCHDOG_USEC", "WATCHDOG_PID")
                    },
                    "SYSTEMD_COLORS": "0",
                },
            )
            out, err = await asyncio.wait_for(proc.communicate(), self.timeout_s)
        except (OSError, TimeoutError) as exc:
            log.warning("systemctl %s failed: %s", argv[0], exc)
            return None
        if proc.returncode != 0:
            log.warning(
                "systemctl %s exited %s: %s", argv[0], proc.returncode, err.decode(errors="replace").strip()
            )
        return out.decode(errors="replace")
