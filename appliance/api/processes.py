"""Several API processes on one port (`api.processes`): the main process binds the port with SO_REUSEPORT and
starts the others, which bind it the same way, so the kernel spreads new connections over all of them. Each is a
whole API process (its own Redis connections, event hub and webhook delivery worker); every per-key limit lives
in Redis, so they share them.

The main process alone speaks to systemd (the unit's NotifyAccess=main): it tells it READY once every other
process said READY=1 on a socket of its own (the sd_notify protocol, so they need nothing new), pings the
watchdog only while all of them run, and on SIGTERM stops them before itself. One that exits on its own stops the
whole service with a failure, and systemd restarts it.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import secrets
import signal
import socket
import subprocess
import sys
from collections.abc import Sequence

log = logging.getLogger(__name__)

#: How long the other processes have to get ready (import, connect, bind).
READY_TIMEOUT_S = 120.0
#: How long a stopping process has before it is killed (the unit's TimeoutStopSec is 30 s).
STOP_TIMEOUT_S = 20.0


class ProcessesFailed(Exception):
    """An API process other than the main one did not get ready, or exited."""


def child_argv(argv: Sequence[str], host: str, port: int) -> list[str]:
    """The command line of another API process: the main's own arguments (config, Redis flags), then the port
    it bound, one process each, and SO_REUSEPORT (later flags win)."""
    return [
        sys.executable,
        "-m",
        "appliance",
        *argv,
        "--host",
        host,
        "--port",
        str(port),
        "--processes",
        "1",
        "--reuse-port",
    ]


class Siblings:
    """The API processes the main process started, and their readiness."""

    def __init__(self, argv: list[str], count: int) -> None:
        self.argv, self.count = argv, count
        self.procs: list[asyncio.subprocess.Process] = []
        self._listener: socket.socket | None = None
        self._drain: asyncio.Task[None] | None = None

    async def start(self) -> None:
        """Start `count` processes and wait until each said READY=1; ProcessesFailed when one exits first."""
        name = f"appliance-api-{os.getpid()}-{secrets.token_hex(6)}"
        listener = self._listener = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC)
        listener.bind(b"\0" + name.encode())  # abstract: nothing on disk
        listener.setblocking(False)
        env = {k: v for k, v in os.environ.items() if not k.startswith(("WATCHDOG_", "LISTEN_"))}
        env["NOTIFY_SOCKET"] = "@" + name
        for _ in range(self.count):
            proc = await asyncio.create_subprocess_exec(*self.argv, env=env, stdin=subprocess.DEVNULL)
            self.procs.append(proc)
        try:
            await asyncio.wait_for(self._ready(listener), READY_TIMEOUT_S)
        except TimeoutError:
            raise ProcessesFailed(
                f"the other API processes were not ready in {READY_TIMEOUT_S:g} s"
            ) from None
        # Their later messages (STATUS, STOPPING) are read and dropped, so no send of theirs is refused.
        self._drain = asyncio.create_task(self._discard(listener), name="api-siblings-notify")

    async def _ready(self, listener: socket.socket) -> None:
        loop = asyncio.get_running_loop()
        ready = 0
        while ready < self.count:
            self.check()
            try:
                message = await asyncio.wait_for(loop.sock_recv(listener, 4096), 0.5)
            except TimeoutError:
                continue
            ready += b"READY=1" in message.split(b"\n")

    async def _discard(self, listener: socket.socket) -> None:
        loop = asyncio.get_running_loop()
        while True:
            await loop.sock_recv(listener, 4096)

    def check(self) -> None:
        """ProcessesFailed when one of them has exited."""
        for proc in self.procs:
            if proc.returncode is not None:
                raise ProcessesFailed(f"API process {proc.pid} exited with status {proc.returncode}")

    def alive(self) -> bool:
        return all(proc.returncode is None for proc in self.procs)

    async def stop(self) -> None:
        """SIGTERM to each, then wait; SIGKILL to any still running after STOP_TIMEOUT_S."""
        for proc in self.procs:
            if proc.returncode is None:
                with contextlib.suppress(ProcessLookupError):
                    proc.send_signal(signal.SIGTERM)
        for proc in self.procs:
            try:
                await asyncio.wait_for(proc.wait(), STOP_TIMEOUT_S)
            except TimeoutError:
                log.warning("API process %d did not stop in %g s; killing it", proc.pid, STOP_TIMEOUT_S)
                with contextlib.suppress(ProcessLookupError):
                    proc.kill()
                await proc.wait()
        if self._drain is not None:
            self._drain.cancel()
            with contextlib.suppress(BaseException):
                await self._drain
        if self._listener is not None:
            self._listener.close()
