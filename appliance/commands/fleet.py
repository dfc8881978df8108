"""`appliance fleet drain|undrain MACHINE`: stop a machine's workers taking new jobs, or let them again."""

from __future__ import annotations

import argparse
from typing import Any

from appliance.commands import CommandError, command_help, run_async
from appliance.commands.connection import redis_failure


def register(subparsers: Any) -> None:
    parser = subparsers.add_parser("fleet", help=command_help("fleet"))
    sub = parser.add_subparsers(dest="fleet_command", metavar="ACTION", required=True)
    drain = sub.add_parser("drain", help="workers of MACHINE finish their jobs and claim no new ones")
    drain.add_argument("machine", metavar="MACHINE", help="machine id")
    drain.add_argument("--reason", default="", help="why (shown in status)")
    drain.add_argument("--config", metavar="FILE", help="config file (default: $APPLIANCE_CONFIG)")
    drain.set_defaults(handler=_drain)
    undrain = sub.add_parser("undrain", help="let MACHINE's workers claim jobs again")
    undrain.add_argument("machine", metavar="MACHINE", help="machine id")
    undrain.add_argument("--config", metavar="FILE", help="config file (default: $APPLIANCE_CONFIG)")
    undrain.set_defaults(handler=_undrain)


def _client(args: argparse.Namespace) -> Any:
    from appliance.commands.machine import load
    from appliance.queue.redisclient import client_for

    return client_for(load(args).redis_connection())


def _check(machine: str) -> str:
    machine = machine.strip()
    if not machine or any(c.isspace() for c in machine):
        raise CommandError(f"machine id {machine!r} is empty or contains whitespace")
    return machine


def _act(args: argparse.Namespace, drain: bool) -> int:
    from redis.exceptions import RedisError

    from appliance.queue import registry as fleet

    machine = _check(args.machine)

    async def go() -> tuple[bool, bool]:
        client = _client(args)
        try:
            known = machine in await fleet.known_machines(client)
            if drain:
                await fleet.set_drain(client, machine, args.reason)
                return known, True
            return known, await fleet.clear_drain(client, machine)
        finally:
            await client.aclose()

    try:
        known, changed = run_async(go())
    except (RedisError, OSError) as exc:
        raise redis_failure(exc) from None
    note = "" if known else " (no machine of that id has registered yet)"
    if drain:
        print(f"{machine}: drained{note}")
    else:
        print(f"{machine}: {'undrained' if changed else 'was not drained'}{note}")
    return 0


def _drain(args: argparse.Namespace) -> int:
    return _act(args, True)


def _undrain(args: argparse.Namespace) -> int:
    return _act(args, False)
