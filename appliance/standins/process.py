"""Run a stand-in: serve an aiohttp app until SIGTERM, or launch one as a child process and wait for READY."""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass

from aiohttp import web

#: How long `launch()` waits for the READY line (the interpreter start dominates).
READY_TIMEOUT_S = 30.0


async def serve(app: web.Application, host: str, port: int) -> None:
    """Listen (port 0 picks a free one), print `READY http://host:port`, run until SIGTERM/SIGINT."""
    runner = web.AppRunner(app, handle_signals=False)
    await runner.setup()
    site = web.TCPSite(runner, host, port)
    await site.start()
    server = site._server
    bound = server.sockets[0].getsockname()[1] if server and server.sockets else port  # type: ignore[union-attr,attr-defined]
    print(f"READY http://{host}:{bound}", flush=True)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    await stop.wait()
    await runner.cleanup()


@dataclass
class StandinProcess:
    """A stand-in running as a child process."""

    proc: subprocess.Popen[str]
    url: str

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        if self.proc.stdout is not None:
            self.proc.stdout.close()

    def kill(self) -> None:
        """SIGKILL: simulates a crash."""
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()


def start(module: str, *args: str, env: dict[str, str] | None = None) -> StandinProcess:
    """Start `python -m appliance.standins.<module> --port 0 ARGS` and wait for its READY line."""
    cmd = [sys.executable, "-m", f"appliance.standins.{module}", *args]
    if "--port" not in args:
        cmd += ["--port", "0"]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, text=True, env={**os.environ, **(env or {})})
    assert proc.stdout is not None
    line = proc.stdout.readline()  # blocks until READY or exit; the child prints nothing else first
    if not line.startswith("READY "):
        proc.kill()
        proc.wait()
        proc.stdout.close()
        raise RuntimeError(f"stand-in {module} did not start (exit {proc.returncode}): {line!r}")
    return StandinProcess(proc, line.split()[1])


@contextlib.contextmanager
def running(module: str, *args: str) -> Iterator[StandinProcess]:
    """Context manager around `start()`."""
    p = start(module, *args)
    try:
        yield p
    finally:
        p.stop()
