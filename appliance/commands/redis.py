"""`appliance redis setup|acl`: the deployer's side of Redis, which no worker or client needs.

`setup` loads this version's Function library (and SCRIPT LOADs the scripts) as the deployer's ACL user: it
loads a missing library, leaves an identical one alone, and refuses one of the same name with other code unless
`--replace` (someone replaced it: find out who could). `acl` prints the `ACL SETUSER` command of one role
(docs/security.md) for redis-cli or a Redis config; it changes nothing itself.
"""

from __future__ import annotations

import argparse
import sys
from typing import Any

from appliance.commands import CommandError, ExitCode, command_help, run_async
from appliance.commands.connection import add_redis_arguments, resolve_target


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    parser = subparsers.add_parser("redis", help=command_help("redis"))
    sub = parser.add_subparsers(dest="redis_command", metavar="ACTION", required=True)

    setup = sub.add_parser(
        "setup",
        help="load this version's Function library and scripts (as the deployer's Redis user)",
    )
    add_redis_arguments(setup)
    setup.add_argument(
        "--replace",
        action="store_true",
        help="replace a library of this version's name whose code differs (it was tampered with)",
    )
    setup.set_defaults(handler=_setup)

    acl = sub.add_parser(
        "acl", help="print the ACL SETUSER command of a role (deployer, machine, submitter, monitor, api)"
    )
    acl.add_argument("--role", required=True, choices=["deployer", "machine", "submitter", "monitor", "api"])
    acl.add_argument(
        "--queue",
        action="append",
        default=[],
        help="queue the user may use, repeatable (default: redis.queue of the config)",
    )
    acl.add_argument("--user", help="ACL user name (default: appliance-<role>-<queue or machine id>)")
    acl.add_argument("--machine", help="machine id, for the machine role (default: machine.id of the config)")
    acl.add_argument(
        "--password-file",
        help="set the user's password from this file (only its SHA-256 is printed); default: keep passwords",
    )
    acl.add_argument("--channels", choices=["shared", "queue"], help="default: queue.channels of the config")
    acl.add_argument("--scripts", choices=["eval", "functions"], help="default: queue.scripts of the config")
    acl.add_argument("--config", help="config file (TOML, YAML or JSON; default: $APPLIANCE_CONFIG)")
    acl.set_defaults(handler=_acl)


def _acl(args: argparse.Namespace) -> int:

    from appliance.config import ConfigError, load_settings
    from appliance.config.queue import ChannelsMode, ScriptsMode
    from appliance.queue.acl import Role, quote, rules, setuser

    try:
        settings = load_settings(args.config).settings
    except ConfigError as exc:
        raise CommandError(str(exc)) from None
    queues = args.queue or [settings.redis.queue]
    if args.role == "api":
        return _print_api_acl(args, settings, queues)
    role = Role(args.role)
    channels = ChannelsMode(args.channels) if args.channels else settings.queue.channels
    scripts = ScriptsMode(args.scripts) if args.scripts else settings.queue.scripts
    machine_id = args.machine or settings.machine.id
    password = _password(args)
    default_user = f"appliance-{role.value}" + (
        f"-{machine_id}" if role is Role.MACHINE else "" if role is Role.DEPLOYER else f"-{queues[0]}"
    )
    try:
        line = setuser(
            args.user or default_user,
            rules(role, queues, channels=channels, scripts=scripts, machine_id=machine_id),
            password,
        )
    except ValueError as exc:
        raise CommandError(str(exc)) from None
    if role is not Role.DEPLOYER and channels is ChannelsMode.SHARED:
        print(
            "appliance: note: queue.channels=shared grants the shared lifecycle channels, which carry every "
            "queue's job ids; set queue.channels=queue where tenants share this Redis",
            file=sys.stderr,
        )
    print(" ".join(quote(a) for a in line))
    return 0


def _password(args: argparse.Namespace) -> str | None:
    from pathlib import Path

    if not args.password_file:
        return None
    try:
        password = Path(args.password_file).read_text(encoding="utf-8").strip()
    except (OSError, UnicodeDecodeError) as exc:
        raise CommandError(f"--password-file: {exc}") from None
    if not password:
        raise CommandError(f"--password-file: {args.password_file} is empty")
    return password


def _print_api_acl(args: argparse.Namespace, settings: Any, queues: list[str]) -> int:
    """The HTTP API process's user: the submitter's rights plus the API's own (appliance.api.acl)."""
    from appliance.api.acl import api_rules
    from appliance.config.queue import ChannelsMode, ScriptsMode
    from appliance.queue.acl import quote, setuser

    channels = ChannelsMode(args.channels) if args.channels else settings.queue.channels
    scripts = ScriptsMode(args.scripts) if args.scripts else settings.queue.scripts
    try:
        line = setuser(
            args.user or f"appliance-api-{queues[0]}",
            api_rules(queues, channels=channels, scripts=scripts),
            _password(args),
        )
    except ValueError as exc:
        raise CommandError(str(exc)) from None
    print(" ".join(quote(a) for a in line))
    return 0


def _setup(args: argparse.Namespace) -> int:
    return run_async(_setup_async(args))


async def _setup_async(args: argparse.Namespace) -> int:
    from redis.exceptions import NoPermissionError, RedisError

    from appliance.commands.connection import open_redis, redis_failure
    from appliance.config import RedisMode
    from appliance.queue.scripts import ScriptLibraryError, ScriptSet

    target = resolve_target(args)
    client = await open_redis(target)
    # In a Cluster, the library and the scripts go onto every primary.
    scripts = ScriptSet(cluster=target.connection.mode is RedisMode.CLUSTER)
    try:
        outcome = await scripts.install(client, replace=args.replace)
    except ScriptLibraryError as exc:
        raise CommandError(str(exc)) from None
    except NoPermissionError as exc:
        line = str(redis_failure(exc, target.url, "loading the scripts"))
        raise CommandError(
            f"{line} (setup needs the deployer role: `appliance redis acl --role deployer`)", ExitCode.REDIS
        ) from None
    except (RedisError, OSError) as exc:
        raise redis_failure(exc, target.url, "loading the scripts") from None
    finally:
        await client.aclose()
    print(f"Function library {scripts.library}: {outcome}; scripts loaded ({target.redacted_url()})")
    return 0
