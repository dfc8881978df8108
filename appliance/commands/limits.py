"""`appliance limits set|show`: per-customer fair-share weights (docs/queue.md, "Fair share").

Errors are one line on stderr: 2 bad input, 4 Redis unreachable.
"""

from __future__ import annotations

import argparse
from typing import Any

from appliance.commands import CommandError, command_help, print_json, run_async
from appliance.commands.connection import add_redis_arguments, connect_queue


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    limits = subparsers.add_parser("limits", help=command_help("limits"))
    commands = limits.add_subparsers(dest="limits_command", metavar="ACTION", required=True)

    change = commands.add_parser("set", help="set a customer's weight (jobs submitted from now on)")
    change.add_argument("customer", metavar="CUSTOMER", help="customer id, or - for jobs without one")
    change.add_argument(
        "--weight", type=float, help="fair-share weight, 0.001 to 1000 (default 1): its share of claims"
    )
    change.set_defaults(handler=_set)

    show = commands.add_parser("show", help="one customer's settings, or every customer that has any")
    show.add_argument("customer", metavar="CUSTOMER", nargs="?", help="customer id, or - for the default")
    show.set_defaults(handler=_show_command)
    for sub in (change, show):
        sub.add_argument("--json", action="store_true", help="print as JSON")
        add_redis_arguments(sub)


def _set(args: argparse.Namespace) -> int:
    if args.weight is None:
        raise CommandError("limits set: give at least one setting (--weight)")
    return run_async(_run(args, lambda q: q.limits.set(args.customer, weight=args.weight)))


def _show_command(args: argparse.Namespace) -> int:
    if args.customer is None:
        return run_async(_run(args, lambda q: q.limits.list()))
    return run_async(_run(args, lambda q: q.limits.get(args.customer)))


async def _run(args: argparse.Namespace, action: Any) -> int:
    from appliance.queue.limits import InvalidLimits

    queue = await connect_queue(args)
    try:
        result = await action(queue)
    except InvalidLimits as exc:
        raise CommandError(str(exc)) from None
    finally:
        await queue.close()
    rows = result if isinstance(result, list) else [result]
    if args.json:
        print_json([r.model_dump(mode="json") for r in rows])
        return 0
    print(f"{'CUSTOMER':<32} WEIGHT")
    for r in rows:
        print(f"{r.customer:<32} {r.weight:g}")
    return 0
