"""`appliance pools`: per-pool autoscaling signals (table, or `--json` for scripts), and
`appliance pools classify`: which pool a job would be given.

Exit status: 0, 2 bad input or configuration, 4 Redis unreachable.
"""

from __future__ import annotations

import argparse
import sys
from typing import Any

from appliance.commands import CommandError, command_help, print_json, run_async
from appliance.commands.connection import add_redis_arguments, connect_queue, redis_failure


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    pools = subparsers.add_parser(
        "pools",
        help=command_help("pools"),
        description=__doc__.splitlines()[0],
    )
    pools.add_argument("--json", action="store_true", help="print the report as JSON")
    pools.add_argument(
        "--window",
        type=float,
        default=900.0,
        help="look-back for run times and success rate, seconds (default 900)",
    )
    add_redis_arguments(pools)
    pools.set_defaults(handler=_pools)
    actions = pools.add_subparsers(dest="pools_command", metavar="ACTION")
    classify = actions.add_parser(
        "classify", help="show the pool the classifier gives a job (no Redis needed)"
    )
    classify.add_argument("--service", required=True)
    classify.add_argument("--payload", default="{}", help="payload JSON")
    classify.add_argument("--pool", help="a pool the job names itself")
    classify.add_argument("--workflow-id")
    classify.add_argument("--timeout", type=float, help="per-attempt time limit, seconds")
    classify.add_argument("--config", help="config file (TOML, YAML or JSON; default: $APPLIANCE_CONFIG)")
    classify.add_argument("--json", action="store_true")
    classify.set_defaults(handler=_classify)


def _settings(args: argparse.Namespace) -> Any:
    from appliance.config import ConfigError, load_settings

    try:
        return load_settings(getattr(args, "config", None)).settings
    except ConfigError as exc:
        raise CommandError(str(exc).replace("\n", "; ")) from None


def _pools(args: argparse.Namespace) -> int:
    if not args.window > 0:
        raise CommandError(f"--window must be positive, got {args.window}")
    settings = _settings(args)
    report = run_async(_read(args, settings))
    if args.json:
        print_json(report.to_dict())
    else:
        sys.stdout.write(format_table(report))
    return 0


async def _read(args: argparse.Namespace, settings: Any) -> Any:
    from redis.exceptions import RedisError

    from appliance.pools import read_pool_signals

    queue = await connect_queue(args)
    try:
        return await read_pool_signals(queue, settings, window_s=args.window)
    except (RedisError, OSError) as exc:
        raise redis_failure(exc, doing="reading the pool signals") from None
    finally:
        await queue.close()


def _num(value: float | None, digits: int = 1) -> str:
    return "-" if value is None else f"{value:.{digits}f}"


def format_table(report: Any) -> str:
    headers = [
        "POOL",
        "WAITING",
        "ACTIVE",
        "UNWORKABLE",
        "OLDEST_S",
        "P50_S",
        "P90_S",
        "SUCCESS",
        "MACHINES",
        "DESIRED",
        "WHY",
    ]
    rows = [headers]
    for p in report.pools:
        success = "-" if p.success_ratio is None else f"{p.success_ratio * 100:.0f}%"
        bounds = f"{p.min_machines}..{'' if p.max_machines is None else p.max_machines}"
        rows.append(
            [
                p.pool + ("" if p.configured else " (unconfigured)"),
                str(p.waiting),
                str(p.active),
                str(p.unworkable),
                _num(p.oldest_wait_s),
                _num(p.duration_p50_s, 2),
                _num(p.duration_p90_s, 2),
                success,
                str(p.machines),
                str(p.desired_machines),
                f"{p.reason} [{bounds}]",
            ]
        )
    widths = [max(len(r[i]) for r in rows) for i in range(len(headers))]
    lines = ["  ".join(cell.ljust(w) for cell, w in zip(r, widths, strict=True)).rstrip() for r in rows]
    lines.append(
        f"queue {report.queue}; window {report.window_s:.0f}s; shared machines (no pool): "
        f"{report.shared_machines}"
    )
    return "\n".join(lines) + "\n"


def _classify(args: argparse.Namespace) -> int:
    from appliance.pools.classifier import explain
    from appliance.queue import InvalidJob, parse_spec

    settings = _settings(args)
    from appliance.commands.job import parse_json_object

    payload = parse_json_object(args.payload, "--payload")
    if not isinstance(payload, dict):
        raise CommandError("--payload: must be a JSON object")
    raw = {
        "service": args.service,
        "payload": payload,
        "pool": args.pool,
        "workflow_id": args.workflow_id,
        "timeout_s": args.timeout,
    }
    try:
        spec = parse_spec({k: v for k, v in raw.items() if v is not None})
    except InvalidJob as exc:
        raise CommandError(str(exc)) from None
    result = explain(spec, settings)
    if args.json:
        print_json(result)
    else:
        print(f"{result['pool']}  ({result['reason']})")
    return 0
