"""The process model of supervised container mode (appliance.machine.processes): one planned service run as a
child process, its states in systemd's words, the sd_notify datagrams it sends on its private socket, the command
and environment it starts with, and what /proc says about its memory and CPU time."""

from __future__ import annotations

import asyncio
import contextlib
import os
import sys
import tempfile
from collections import deque
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from appliance.machine.plan import PlannedService
from appliance.machine.systemd import UnitState

#: Environment the children must not inherit: the notify socket and watchdog are the supervisor's, and
#: socket activation (LISTEN_*) addresses the supervisor's process only.
_PRIVATE_ENV = (
    "NOTIFY_SOCKET",
    "WATCHDOG_USEC",
    "WATCHDOG_PID",
    "LISTEN_FDS",
    "LISTEN_PID",
    "LISTEN_FDNAMES",
)


def command_for(service: PlannedService, python: str = sys.executable) -> list[str]:
    """The command systemd's unit would run for `service`, with this interpreter."""
    if service.kind == "comfyui" and service.gpu is not None:
        return [python, "-m", "appliance", "comfyui", "--gpu", str(service.gpu)]
    if service.kind == "worker" and service.slot:
        return [python, "-m", "appliance", "worker", "--slot", service.slot]
    raise ValueError(f"no command for planned service {service.name!r}")


def child_env(environ: Mapping[str, str], notify_path: str, config_path: str | None = None) -> dict[str, str]:
    env = {k: v for k, v in environ.items() if k not in _PRIVATE_ENV}
    env["NOTIFY_SOCKET"] = notify_path
    env.setdefault("PYTHONUNBUFFERED", "1")  # log lines reach the container log as they are written
    if config_path is not None:
        env["APPLIANCE_CONFIG"] = config_path
    return env


def notify_dir() -> str:
    # AF_UNIX paths hold at most 108 bytes: a short directory, not a deep $TMPDIR.
    short_tmp = "/tmp"  # nosec B108 # mkdtemp makes a private 0700 directory; /tmp keeps the path short
    return tempfile.mkdtemp(prefix="appliance-notify-", dir=short_tmp if os.path.isdir(short_tmp) else None)


def _tree(pid: int) -> list[int]:
    """`pid` and its descendants (the ComfyUI wrapper's ComfyUI, say), from /proc's children lists."""
    out: list[int] = []
    todo = [pid]
    while todo and len(out) < 256:
        p = todo.pop()
        out.append(p)
        with contextlib.suppress(OSError, ValueError):
            for task in os.listdir(f"/proc/{p}/task"):
                todo += [int(c) for c in Path(f"/proc/{p}/task/{task}/children").read_text().split()]
    return out


def proc_usage(pid: int) -> tuple[int | None, float | None]:
    """Resident memory (bytes) and CPU time (s) of a process tree; (None, None) when /proc cannot tell."""
    page, ticks = os.sysconf("SC_PAGE_SIZE"), os.sysconf("SC_CLK_TCK")
    memory, cpu, seen = 0, 0.0, False
    for p in _tree(pid):
        try:
            rss = int(Path(f"/proc/{p}/statm").read_text().split()[1])
            # Fields after the command name (which may hold spaces): utime and stime are fields 14 and 15.
            fields = Path(f"/proc/{p}/stat").read_text().rpartition(")")[2].split()
            memory += rss * page
            cpu += (int(fields[11]) + int(fields[12])) / ticks
            seen = True
        except (OSError, ValueError, IndexError):
            continue
    return (memory, round(cpu, 3)) if seen else (None, None)


class _NotifyReceiver(asyncio.DatagramProtocol):
    def __init__(self, child: Child) -> None:
        self.child = child

    def datagram_received(self, data: bytes, addr: Any) -> None:
        self.child.notified(data.decode(errors="replace"))


def receiver(child: Child) -> Callable[[], _NotifyReceiver]:
    return lambda: _NotifyReceiver(child)


@dataclass
class Child:
    """One planned service run as a child process; states use systemd's words so status and health read alike."""

    service: PlannedService
    argv: list[str]
    notify_path: str
    active_state: str = "inactive"
    sub_state: str = "dead"
    result: str = ""
    status_text: str = ""
    restarts: int = 0
    proc: asyncio.subprocess.Process | None = None
    started_monotonic: float = 0.0
    #: Set to end the child for good (its ComfyUI failed, or the machine stops): no restart follows.
    disabled: bool = False
    restart_times: deque[float] = field(default_factory=deque)
    quick_failures: int = 0
    exit_status: int | None = None

    @property
    def pid(self) -> int | None:
        return self.proc.pid if self.proc is not None and self.proc.returncode is None else None

    @property
    def settled(self) -> bool:
        """Up, or beyond help: startup waits for nothing more from it."""
        return self.active_state in ("active", "failed") or self.disabled

    def notified(self, text: str) -> None:
        for line in text.split("\n"):
            key, _, value = line.partition("=")
            if key == "READY" and value == "1" and self.pid is not None and self.active_state == "activating":
                self.active_state, self.sub_state = "active", "running"
            elif key == "STOPPING" and value == "1" and self.pid is not None:
                self.active_state, self.sub_state = "deactivating", "stop-sigterm"
            elif key == "STATUS":
                self.status_text = value

    def unit_state(self) -> UnitState:
        pid = self.pid
        memory, cpu = proc_usage(pid) if pid else (None, None)
        started_us = int(self.started_monotonic * 1_000_000) if pid else None
        return UnitState(
            unit=self.service.unit,
            load_state="loaded",
            active_state=self.active_state,
            sub_state=self.sub_state,
            restarts=self.restarts,
            main_pid=pid,
            started_monotonic_us=started_us,
            memory_bytes=memory,
            cpu_seconds=cpu,
            status_text=self.status_text,
            result=self.result,
        )

    def signal(self, sig: int) -> None:
        if self.pid is not None:
            with contextlib.suppress(ProcessLookupError):
                self.proc.send_signal(sig)  # type: ignore[union-attr]
