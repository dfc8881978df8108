"""`appliance monitor [--host H] [--port P]`: the live fleet dashboard (aiohttp + WebSocket).

Binds `monitor.host` (default 127.0.0.1: loopback only) and `monitor.port` (8080). With `monitor.token` /
`monitor.token_file` / the `monitor-token` credential set, the page asks for the token and the API requires it.
"""

from __future__ import annotations

import argparse
import ipaddress
import logging
from typing import Any

from appliance.commands import CommandError, ConfigCommandError, ExitCode, command_help, run_async
from appliance.commands.connection import add_redis_arguments

log = logging.getLogger(__name__)


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    monitor = subparsers.add_parser(
        "monitor",
        help=command_help("monitor"),
        description="Serve the live fleet dashboard: machines, queue, jobs.",
    )
    monitor.add_argument("--host", help="bind address (default: monitor.host, 127.0.0.1)")
    monitor.add_argument("--port", type=int, help="port (default: monitor.port, 8080; 0: any free port)")
    monitor.add_argument(
        "--poll", type=float, default=2.0, help="seconds between queue/registration polls (default 2)"
    )
    monitor.add_argument(
        "--queues",
        metavar="Q1,Q2",
        help="the fleet's other queues, shown by their numbers (default: worker.queues)",
    )
    add_redis_arguments(monitor)
    monitor.set_defaults(handler=_monitor, long_running=True)


def _is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _monitor(args: argparse.Namespace) -> int:
    from appliance.commands.connection import resolve_target
    from appliance.config import ConfigError, load_settings
    from appliance.secrets import SecretError

    if args.port is not None and not 0 <= args.port <= 65535:
        raise CommandError(f"--port must be between 0 and 65535, got {args.port}")
    if not args.poll > 0:
        raise CommandError(f"--poll must be positive, got {args.poll}")
    try:
        settings = load_settings(args.config).settings
        token = settings.monitor.resolve_token()
    except (ConfigError, SecretError) as exc:
        raise ConfigCommandError(str(exc)) from None
    target = resolve_target(args)
    host = args.host or settings.monitor.host
    port = settings.monitor.port if args.port is None else args.port
    if not _is_loopback(host) and not token:
        log.warning(
            "monitor: serving %s without a token; anyone who can reach it sees the fleet "
            "(set monitor.token_file)",
            host,
        )
    others = None
    if args.queues is not None:
        from appliance.queue.keys import QueueKeys

        others = [n.strip() for n in args.queues.split(",") if n.strip()]
        for name in others:
            try:
                QueueKeys(name)
            except ValueError as exc:
                raise CommandError(f"--queues: {exc}") from None
    return run_async(_serve(settings, target, host, port, token, args.poll, others))


async def _serve(
    settings: Any,
    target: Any,
    host: str,
    port: int,
    token: str | None,
    poll_s: float,
    other_queues: list[str] | None = None,
) -> int:
    import asyncio
    import signal

    from appliance.httpserve import start_server
    from appliance.monitor.app import Monitor, make_app
    from appliance.pools import PoolSignalsCollector, read_pool_signals

    monitor = Monitor(
        settings,
        url=target.url,
        client_kwargs=target.client_kwargs,
        connection=target.connection,
        queue_name=target.queue,
        other_queues=other_queues,
        token=token,
        poll_s=poll_s,
        pool_signals=read_pool_signals,
    )
    try:
        # The pool signals on /metrics; the monitor hands the collector its feed's queue client on each scrape.
        pools = PoolSignalsCollector(None, settings, interval_s=poll_s * 3)  # type: ignore[arg-type]
        runner, bound = await start_server(make_app(monitor, pools), host, port)
    except OSError as exc:
        raise CommandError(
            f"cannot listen on {host}:{port}: {exc.strerror or exc}", ExitCode.FAILED
        ) from None
    shown = f"[{host}]" if ":" in host else host
    log.info(
        "monitor on http://%s:%d/ (queue %s, Redis %s%s)",
        shown,
        bound,
        target.queue,
        target.redacted_url(),
        ", token required" if token else "",
    )
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    try:
        await stop.wait()
    finally:
        await runner.cleanup()
    return 0
