"""`appliance queue pause|resume [--shape S | --customer C]`: stop and restart claims without stopping machines.

Without a flag the whole queue is paused. Running jobs finish; only new claims skip what is paused (atomically:
claim.lua reads the pause). `appliance job stats` lists the pauses; `appliance job get` says why a job waits.
Errors are one line on stderr: 2 bad input, 4 Redis unreachable.
"""

from __future__ import annotations

import argparse

from appliance.commands import CommandError, command_help, print_json, run_async
from appliance.commands.connection import add_redis_arguments, connect_queue


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    queue = subparsers.add_parser("queue", help=command_help("queue"))
    commands = queue.add_subparsers(dest="queue_command", metavar="ACTION", required=True)
    for name, help_text in (
        ("pause", "claims skip the queue, a shape or a customer from now on (running jobs go on)"),
        ("resume", "lift a pause; a customer's held jobs go back to their places in line"),
    ):
        sub = commands.add_parser(name, help=help_text)
        which = sub.add_mutually_exclusive_group()
        which.add_argument("--shape", help="a shape id (16 hex digits, as `appliance job stats` lists them)")
        which.add_argument("--customer", help="a customer id, or - for jobs without one")
        sub.add_argument("--json", action="store_true", help="print the outcome as JSON")
        add_redis_arguments(sub)
        sub.set_defaults(handler=_change, action=name)


def _change(args: argparse.Namespace) -> int:
    return run_async(_change_async(args))


async def _change_async(args: argparse.Namespace) -> int:
    from appliance.queue.pauses import InvalidPause, pause_field

    try:
        target = pause_field(args.shape, args.customer)
    except InvalidPause as exc:
        raise CommandError(str(exc)) from None
    queue = await connect_queue(args)
    try:
        if args.action == "pause":
            changed = await queue.pauses.pause(shape=args.shape, customer=args.customer)
            outcome = {"paused": target, "changed": changed}
            line = f"{target}: paused" + ("" if changed else " (already)")
        else:
            back = await queue.pauses.resume(shape=args.shape, customer=args.customer)
            outcome = {"resumed": target, "back_in_line": back}
            line = f"{target}: resumed" + (f", {back} held jobs back in line" if back else "")
    finally:
        await queue.close()
    if args.json:
        print_json(outcome)
    else:
        print(line)
    return 0
