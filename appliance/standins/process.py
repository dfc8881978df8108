"""Run a stand-in: its command line, bearer auth and stats route (shared by all of them), serving an aiohttp app
until SIGTERM, or launching one as a child process and waiting for READY."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import signal
import subprocess
import sys
from collections.abc import Awaitable, Callable, Iterator, Mapping
from dataclasses import dataclass
from typing import Any

from aiohttp import web

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]

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


def parser(
    module: str, doc: str | None, port: int, *host_aliases: str, api_key: bool = True
) -> argparse.ArgumentParser:
    """The command line every stand-in shares: --host (and its aliases), --port, and --api-key-file for the
    services that take a bearer key."""
    p = argparse.ArgumentParser(
        prog=f"python -m appliance.standins.{module}",
        description=doc,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--host", *host_aliases, dest="host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=port)
    if api_key:
        p.add_argument(
            "--api-key-file",
            default=None,
            help="require this bearer key (read from a file, so it never shows in process arguments)",
        )
    return p


def read_key(path: str | None) -> str | None:
    """The bearer key in `path` (none: every caller is let in)."""
    if not path:
        return None
    with open(path) as f:
        return f.read().strip()


def run(app: web.Application, args: argparse.Namespace) -> None:
    """Serve `app` where the parsed command line says, until SIGTERM."""
    asyncio.run(serve(app, args.host, args.port))


def authorized(request: web.Request, key: str | None) -> bool:
    """The request carries `Bearer <key>` (always true without a key)."""
    return key is None or request.headers.get("Authorization") == f"Bearer {key}"


def bearer_auth(key: str | None, prefix: str, denied: Callable[[], web.Response]) -> Any:
    """Middleware: requests under `prefix` without the bearer key get `denied()` (the service's own 401)."""

    @web.middleware
    async def auth(request: web.Request, handler: Handler) -> web.StreamResponse:
        if request.path.startswith(prefix) and not authorized(request, key):
            return denied()
        return await handler(request)

    return auth


def stats_route(read: Callable[[], Mapping[str, Any]]) -> web.RouteDef:
    """GET /__standin/stats: the stand-in's counters, for tests to check what reached the service."""

    async def stats(request: web.Request) -> web.Response:
        return web.json_response(dict(read()))

    return web.get("/__standin/stats", stats)


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
