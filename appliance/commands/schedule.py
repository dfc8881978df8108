"""`appliance schedule add|list|pause|resume|rm`: repeating jobs (cron or a fixed interval).

The workers' housekeepers submit each tick's job once across the fleet, as `<schedule>:<tick ms>`; see
appliance/queue/schedules.py. Errors are one line on stderr: 2 bad input, 3 unknown schedule, 4 Redis unreachable.
"""

from __future__ import annotations

import argparse
from datetime import UTC, datetime
from typing import Any

from appliance.commands import CommandError, ExitCode, command_help, print_json, run_async
from appliance.commands.connection import add_redis_arguments, connect_queue
from appliance.commands.job import add_spec_arguments, spec_from_args


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    schedule = subparsers.add_parser("schedule", help=command_help("schedule"))
    commands = schedule.add_subparsers(dest="schedule_command", metavar="ACTION", required=True)

    add = commands.add_parser("add", help="create a repeating job (or --replace one)")
    add.add_argument("schedule_id", metavar="ID", help="schedule name; its jobs are <ID>:<tick ms>")
    rule = add.add_mutually_exclusive_group(required=True)
    rule.add_argument("--cron", help="five-field cron expression in UTC, e.g. '*/15 * * * *'")
    rule.add_argument("--every", type=float, metavar="SECONDS", help="fixed interval, seconds (at least 1)")
    add.add_argument(
        "--start-at", metavar="TIME", help="--every: first tick, ISO 8601 (UTC if no zone) or epoch ms"
    )
    add.add_argument(
        "--catch-up",
        type=float,
        metavar="SECONDS",
        help="missed ticks younger than this run late (default 3600)",
    )
    add.add_argument("--replace", action="store_true", help="replace a schedule of the same id")
    add_spec_arguments(add)
    add.set_defaults(handler=_add)

    listing = commands.add_parser("list", help="every schedule and its next tick")
    listing.set_defaults(handler=_list)
    for name, help_text in (
        ("pause", "stop submitting a schedule's jobs"),
        ("resume", "resume a paused schedule from now (missed ticks are not caught up)"),
        ("rm", "remove a schedule (jobs it submitted stay)"),
    ):
        sub = commands.add_parser(name, help=help_text)
        sub.add_argument("schedule_id", metavar="ID")
        sub.set_defaults(handler=_change, action=name)
    for sub in (add, listing, *(commands.choices[n] for n in ("pause", "resume", "rm"))):
        sub.add_argument("--json", action="store_true", help="print the schedule(s) as JSON")
        add_redis_arguments(sub)


def parse_time_ms(text: str) -> int:
    """`--start-at`: epoch ms, or ISO 8601 (UTC unless it names a zone)."""
    if text.isdigit():
        return int(text)
    try:
        moment = datetime.fromisoformat(text)
    except ValueError:
        raise CommandError(f"--start-at {text!r}: expected ISO 8601 (2027-01-01T03:00) or epoch ms") from None
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    return int(moment.timestamp() * 1000)


def _add(args: argparse.Namespace) -> int:
    spec: dict[str, Any] = {"id": args.schedule_id, "job": spec_from_args(args)}
    if args.cron is not None:
        spec["cron"] = args.cron
    else:
        spec["every_s"] = args.every
    if args.start_at is not None:
        spec["start_at_ms"] = parse_time_ms(args.start_at)
    if args.catch_up is not None:
        spec["catch_up_s"] = args.catch_up
    return run_async(_add_async(args, spec))


async def _add_async(args: argparse.Namespace, spec: dict[str, Any]) -> int:
    from appliance.queue.schedules import DuplicateSchedule, InvalidSchedule

    queue = await connect_queue(args)
    try:
        schedule = await queue.schedules.add(spec, replace=args.replace)
    except (DuplicateSchedule, InvalidSchedule) as exc:
        raise CommandError(str(exc)) from None
    finally:
        await queue.close()
    _show([schedule], args.json)
    return 0


def _list(args: argparse.Namespace) -> int:
    return run_async(_list_async(args))


async def _list_async(args: argparse.Namespace) -> int:
    queue = await connect_queue(args)
    try:
        schedules = await queue.schedules.list()
    finally:
        await queue.close()
    _show(schedules, args.json)
    return 0


def _change(args: argparse.Namespace) -> int:
    return run_async(_change_async(args))


async def _change_async(args: argparse.Namespace) -> int:
    from appliance.queue.schedules import ScheduleNotFound

    queue = await connect_queue(args)
    try:
        if args.action == "rm":
            await queue.schedules.remove(args.schedule_id)
            changed = []
        elif args.action == "pause":
            changed = [await queue.schedules.pause(args.schedule_id)]
        else:
            changed = [await queue.schedules.resume(args.schedule_id)]
    except ScheduleNotFound as exc:
        raise CommandError(str(exc), ExitCode.NOT_FOUND) from None
    finally:
        await queue.close()
    if args.action == "rm":
        if args.json:
            print_json({"id": args.schedule_id, "removed": True})
        else:
            print(f"{args.schedule_id}: removed")
        return 0
    _show(changed, args.json)
    return 0


def _show(schedules: list[Any], as_json: bool) -> None:
    if as_json:
        print_json([s.model_dump(mode="json") for s in schedules])
        return
    print(f"{'ID':<24} {'RULE':<20} {'SERVICE':<14} {'STATE':<7} NEXT (UTC)")
    for s in schedules:
        rule = s.cron if s.cron is not None else f"every {s.every_s:g}s"
        upcoming = "-" if s.next_ms is None else datetime.fromtimestamp(s.next_ms / 1000, tz=UTC).isoformat()
        state = "paused" if s.paused else "active"
        print(f"{s.id:<24} {rule:<20} {s.job.service:<14} {state:<7} {upcoming}")
