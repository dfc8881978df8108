"""`appliance webhooks`: a tenant's webhook signing secret, its given-up deliveries, and replaying them.

Exit status: 0, 2 bad input or configuration, 3 nothing to replay, 4 Redis unreachable or refusing.
"""

from __future__ import annotations

import argparse
import sys
from typing import Any

from appliance.commands import CommandError, ExitCode, command_help, print_json, run_async
from appliance.commands.connection import add_redis_arguments, connect_queue, redis_failure


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    webhooks = subparsers.add_parser(
        "webhooks",
        help=command_help("webhooks"),
        description=__doc__.splitlines()[0],
    )
    actions = webhooks.add_subparsers(dest="webhooks_command", metavar="ACTION", required=True)
    secret = actions.add_parser(
        "secret", help="print a tenant's signing secret (whsec_...), made on first use"
    )
    secret.add_argument("--tenant", required=True, help="the tenant (API key owner) id")
    secret.add_argument(
        "--rotate",
        action="store_true",
        help="make a new secret; the old one still signs beside it for webhooks.max_age_s",
    )
    dead = actions.add_parser("dead", help="list a tenant's given-up deliveries, newest first")
    dead.add_argument("--tenant", required=True)
    dead.add_argument("--limit", type=int, default=50, help="deliveries per page (default 50, at most 500)")
    dead.add_argument("--cursor", help="the next_cursor a previous page printed")
    dead.add_argument("--json", action="store_true", help="print the page as JSON")
    retry = actions.add_parser(
        "retry-dead", help="send a tenant's given-up deliveries again (all, or those named)"
    )
    retry.add_argument("--tenant", required=True)
    retry.add_argument("--id", action="append", dest="ids", help="a delivery id (repeatable); default all")
    for parser in (secret, dead, retry):
        add_redis_arguments(parser)
    secret.set_defaults(handler=lambda args: _run(args, _secret))
    dead.set_defaults(handler=lambda args: _run(args, _dead))
    retry.set_defaults(handler=lambda args: _run(args, _retry))


def _run(args: argparse.Namespace, action: Any) -> int:
    from appliance.config import ConfigError, load_settings
    from appliance.secrets import SecretError

    try:
        settings = load_settings(getattr(args, "config", None)).settings.webhooks
    except (ConfigError, SecretError) as exc:
        raise CommandError(str(exc).replace("\n", "; ")) from None
    return int(run_async(_with_service(args, settings, action)))


async def _with_service(args: argparse.Namespace, settings: Any, action: Any) -> int:
    from redis.exceptions import RedisError

    from appliance.webhooks import Webhooks
    from appliance.webhooks.errors import WebhookError

    queue = await connect_queue(args)
    # Not Webhooks.open: these commands touch the tenant's records only, never the event stream.
    webhooks = Webhooks(queue, settings)
    try:
        return int(await action(args, webhooks))
    except WebhookError as exc:
        raise CommandError(str(exc)) from None
    except (RedisError, OSError) as exc:
        raise redis_failure(exc, doing=f"webhooks {args.webhooks_command}") from None
    finally:
        await webhooks.close()
        await queue.close()


async def _secret(args: argparse.Namespace, webhooks: Any) -> int:
    print(await webhooks.secret(args.tenant, rotate=args.rotate))
    return 0


async def _dead(args: argparse.Namespace, webhooks: Any) -> int:
    if args.limit < 1:
        raise CommandError(f"--limit must be at least 1, got {args.limit}")
    page = await webhooks.dead(args.tenant, args.limit, args.cursor)
    if args.json:
        print_json(page.model_dump(mode="json"))
        return 0
    for item in page.items:
        sys.stdout.write(
            f"{item.id}  {item.type.value:<14} job {item.job_id}  {item.attempts} attempts  "
            f"{item.url}  {item.last_error or ''}\n"
        )
    if not page.items:
        sys.stdout.write(f"no given-up deliveries for tenant {args.tenant}\n")
    if page.next_cursor:
        sys.stdout.write(f"more: --cursor {page.next_cursor}\n")
    return 0


async def _retry(args: argparse.Namespace, webhooks: Any) -> int:
    revived = await webhooks.retry_dead(args.tenant, args.ids)
    sys.stdout.write(f"{revived} deliveries queued again\n")
    if args.ids and revived < len(set(args.ids)):
        missing = len(set(args.ids)) - revived
        raise CommandError(
            f"{missing} of the ids are not in tenant {args.tenant}'s dead list", ExitCode.NOT_FOUND
        )
    return 0
