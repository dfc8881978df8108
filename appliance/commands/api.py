"""`appliance api`: serve the HTTP job API; `appliance api keys create|list|revoke`: its API keys.

The API binds `api.host` (default 127.0.0.1) and `api.port` (8088). Keys live in the queue's Redis as hashes
only: `keys create` prints the token once (the last line of its output) and nothing can show it again.
"""

from __future__ import annotations

import argparse
from typing import Any

from appliance.commands import CommandError, ConfigCommandError, ExitCode, command_help, print_json, run_async
from appliance.commands.connection import add_redis_arguments, connect_queue, redis_failure

SCOPES = ("submit", "read", "cancel", "admin")


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    api = subparsers.add_parser(
        "api",
        help=command_help("api"),
        description="Serve the HTTP job API (jobs, live progress, webhooks) for one queue; `keys` manages keys.",
    )
    api.add_argument("--host", help="bind address (default: api.host, 127.0.0.1)")
    api.add_argument("--port", type=int, help="port (default: api.port, 8088; 0: any free port)")
    api.add_argument(
        "--processes", type=int, help="API processes serving the port (default: api.processes, 1)"
    )
    api.add_argument(
        "--reuse-port",
        action="store_true",
        help="bind with SO_REUSEPORT beside other API processes (what --processes gives the ones it starts)",
    )
    add_redis_arguments(api)
    api.set_defaults(handler=_serve, long_running=True)
    sub = api.add_subparsers(dest="api_command", metavar="COMMAND")
    keys = sub.add_parser("keys", help="create, list and revoke API keys").add_subparsers(
        dest="keys_command", metavar="COMMAND", required=True
    )
    create = keys.add_parser("create", help="make a key for a tenant; prints its token once (last line)")
    create.add_argument("--tenant", required=True, help="the customer whose jobs the key submits and sees")
    create.add_argument(
        "--scopes",
        default="submit,read,cancel",
        help=f"comma-separated, of {', '.join(SCOPES)} (default submit,read,cancel)",
    )
    create.add_argument("--name", default="", help="a label shown by `keys list`")
    create.add_argument("--rate", type=int, help="requests per second (default: api.rate_per_s)")
    create.add_argument("--max-in-flight", type=int, help="unfinished jobs (default: api.max_in_flight)")
    create.add_argument("--json", action="store_true", help="print the key's record as JSON before the token")
    listing = keys.add_parser("list", help="the keys (never their tokens)")
    listing.add_argument("--json", action="store_true", help="print JSON")
    revoke = keys.add_parser("revoke", help="delete a key; every API process refuses it at once")
    revoke.add_argument("key_id", help="the key's id (as `keys list` shows it)")
    for parser in (create, listing, revoke):
        add_redis_arguments(parser)
        parser.set_defaults(handler=_keys, long_running=False)


def _scopes(raw: str) -> list[Any]:
    from appliance.api.keys import Scope

    names = [s.strip() for s in raw.split(",") if s.strip()]
    unknown = [n for n in names if n not in SCOPES]
    if unknown or not names:
        raise CommandError(
            f"--scopes: {unknown[0] if unknown else raw!r} is not a scope (known: {', '.join(SCOPES)})"
        )
    return [Scope(n) for n in names]


def _keys(args: argparse.Namespace) -> int:
    if args.keys_command == "create":
        import re

        from appliance.queue.models import ID_PATTERN

        if not re.match(ID_PATTERN, args.tenant):
            raise CommandError(
                f"--tenant: {args.tenant!r} is not a valid id (letters, digits, _ . : -; max 128)"
            )
        for flag, value in (("--rate", args.rate), ("--max-in-flight", args.max_in_flight)):
            if value is not None and value < 1:
                raise CommandError(f"{flag} must be at least 1, got {value}")
        _scopes(args.scopes)
    return run_async(_keys_async(args))


async def _keys_async(args: argparse.Namespace) -> int:
    from redis.exceptions import RedisError

    from appliance.api.keys import KeyStore

    queue = await connect_queue(args)
    store = KeyStore(queue.client, queue.keys)
    try:
        if args.keys_command == "create":
            record, token = await store.create(
                args.tenant,
                _scopes(args.scopes),
                name=args.name,
                rate_per_s=args.rate,
                max_in_flight=args.max_in_flight,
            )
            if args.json:
                print_json(record.public())
            print(token)
        elif args.keys_command == "list":
            keys = await store.list()
            if args.json:
                print_json([k.public() for k in keys])
            for key in [] if args.json else keys:
                scopes = ",".join(s.value for s in key.scopes)
                print(f"{key.id}  tenant={key.tenant}  scopes={scopes}  name={key.name or '-'}")
        elif not await store.revoke(args.key_id):
            raise CommandError(
                f"no API key {args.key_id!r} (see `appliance api keys list`)", ExitCode.NOT_FOUND
            )
    except RedisError as exc:
        raise redis_failure(exc, "", "managing API keys") from None
    finally:
        await queue.close()
    return 0


def _serve(args: argparse.Namespace) -> int:
    from appliance.config import ConfigError, load_settings

    if args.port is not None and not 0 <= args.port <= 65535:
        raise CommandError(f"--port must be between 0 and 65535, got {args.port}")
    try:
        settings = load_settings(args.config).settings
    except ConfigError as exc:
        raise ConfigCommandError(str(exc)) from None
    host = args.host or settings.api.host
    port = settings.api.port if args.port is None else args.port
    processes = settings.api.processes if args.processes is None else args.processes
    if not 1 <= processes <= 64:
        raise CommandError(f"--processes must be between 1 and 64, got {processes}")
    return run_async(_serve_async(args, settings, host, port, processes))


async def _serve_async(args: argparse.Namespace, settings: Any, host: str, port: int, processes: int) -> int:
    import sys

    from appliance.api.processes import Siblings
    from appliance.api.server import serve

    # At most api.redis_connections connections: a burst of requests waits for one instead of failing.
    queue = await connect_queue(args, blocking_pool=settings.api.redis_connections)
    # The others run this command line again (config and Redis flags), on the port this one bound.
    siblings = Siblings(sys.argv[1:], processes - 1) if processes > 1 else None
    try:
        return await serve(queue, settings, host, port, siblings=siblings, reuse_port=args.reuse_port)
    except OSError as exc:
        raise CommandError(
            f"cannot listen on {host}:{port}: {exc.strerror or exc}", ExitCode.FAILED
        ) from None
    finally:
        await queue.close()
