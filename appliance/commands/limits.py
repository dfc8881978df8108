"""`appliance limits set|show|rm`: per-customer fair-share weights and limits (docs/queue.md, "Fair share across
customers" and "Per-customer limits").

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

    change = commands.add_parser("set", help="change a customer's weight or limits (what is not given stays)")
    change.add_argument("customer", metavar="CUSTOMER", help="customer id, or - for jobs without one")
    change.add_argument(
        "--weight", type=float, help="fair-share weight, 0.001 to 1000 (default 1): its share of claims"
    )
    change.add_argument(
        "--max-in-flight",
        type=int,
        metavar="N",
        help="most of its jobs leased at once, fleet-wide (with --pool: on that pool's workers)",
    )
    change.add_argument("--pool", metavar="POOL", help="make --max-in-flight a cap on this pool's workers")
    change.add_argument("--rate", type=float, metavar="R", help="most job starts per second (token bucket)")
    change.add_argument(
        "--burst", type=float, metavar="B", help="starts allowed at once (default: the rate, >= 1)"
    )
    change.set_defaults(handler=_set)

    show = commands.add_parser("show", help="one customer's settings, or every customer that has any")
    show.add_argument("customer", metavar="CUSTOMER", nargs="?", help="customer id, or - for the default")
    show.set_defaults(handler=_show_command)

    remove = commands.add_parser("rm", help="drop a customer's settings (all, or those named)")
    remove.add_argument("customer", metavar="CUSTOMER", help="customer id, or - for jobs without one")
    remove.add_argument("--weight", action="store_true", help="only the weight (back to 1)")
    remove.add_argument("--max-in-flight", action="store_true", help="only the fleet-wide in-flight cap")
    remove.add_argument("--pool", metavar="POOL", help="only the in-flight cap on this pool")
    remove.add_argument("--rate", action="store_true", help="only the start rate")
    remove.set_defaults(handler=_remove)
    for sub in (change, show, remove):
        sub.add_argument("--json", action="store_true", help="print as JSON")
        add_redis_arguments(sub)


def _set(args: argparse.Namespace) -> int:
    if args.pool is not None and args.max_in_flight is None:
        raise CommandError("limits set: --pool needs --max-in-flight (the cap on that pool's workers)")
    given = (args.weight, args.max_in_flight, args.rate, args.burst)
    if all(v is None for v in given):
        raise CommandError(
            "limits set: give at least one setting (--weight, --max-in-flight, --rate, --burst)"
        )
    return run_async(
        _run(
            args,
            lambda q: q.limits.set(
                args.customer,
                weight=args.weight,
                max_in_flight=args.max_in_flight,
                pool=args.pool,
                rate=args.rate,
                burst=args.burst,
            ),
        )
    )


def _remove(args: argparse.Namespace) -> int:
    return run_async(
        _run(
            args,
            lambda q: q.limits.remove(
                args.customer,
                weight=args.weight,
                max_in_flight=args.max_in_flight,
                pool=args.pool,
                rate=args.rate,
            ),
        )
    )


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
    print(f"{'CUSTOMER':<24} {'WEIGHT':>7} {'IN-FLIGHT':>10} {'POOL CAPS':<20} {'RATE':<14} HELD")
    for r in rows:
        cap = f"{r.in_flight}/{r.max_in_flight}" if r.max_in_flight is not None else f"{r.in_flight}/-"
        pools = ",".join(f"{p}={n}" for p, n in sorted(r.pools.items())) or "-"
        rate = f"{r.rate:g}/s burst {r.burst:g}" if r.rate is not None and r.burst is not None else "-"
        print(f"{r.customer:<24} {r.weight:>7g} {cap:>10} {pools:<20} {rate:<14} {r.held}")
    return 0
