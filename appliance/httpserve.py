"""Serving an aiohttp application on a TCP port: shared by the machine's health server and the monitor."""

from __future__ import annotations

import logging

from aiohttp import web


async def start_server(
    app: web.Application, host: str, port: int, *, reuse_port: bool = False, access_log: bool = False
) -> tuple[web.AppRunner, int]:
    """Serve `app`; returns the runner (stop with `await runner.cleanup()`) and the bound port (for port 0).
    `reuse_port`: SO_REUSEPORT, so processes of one user can serve one port (the kernel spreads connections).
    `access_log`: one line per request on the logger `aiohttp.access` (aiohttp's format: no request headers but
    Referer and User-Agent)."""
    runner = web.AppRunner(app, access_log=logging.getLogger("aiohttp.access") if access_log else None)
    await runner.setup()
    site = web.TCPSite(runner, host, port, reuse_port=reuse_port or None)
    await site.start()
    bound = port
    server = getattr(site, "_server", None)
    if server is not None and server.sockets:
        bound = int(server.sockets[0].getsockname()[1])
    return runner, bound
