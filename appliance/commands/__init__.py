"""One module per command group; each exposes `register(subparsers)`.

This package is imported by every `appliance` run, `--help` included: it imports nothing heavy (not even asyncio
or json), so that start-up stays at the interpreter's own cost (docs/performance.md, "CLI start-up").
"""

from __future__ import annotations

import enum
import sys
from collections.abc import Coroutine
from typing import Any, NamedTuple, TypeVar

T = TypeVar("T")


class Command(NamedTuple):
    """A top-level command: the module that builds its parser and runs it, and its line in `appliance --help`."""

    module: str
    help: str


#: Every top-level command, in the order `appliance --help` lists them. `appliance --help` is built from this
#: table alone, and a command's module is imported only when the command line names it; each module's
#: `register` takes its help line from here (`command_help`), so the two cannot drift apart.
COMMANDS: dict[str, Command] = {
    "demo": Command("appliance.commands.demo", "run a local demo fleet (starts its own Redis if needed)"),
    "job": Command("appliance.commands.job", "submit and inspect jobs"),
    "schedule": Command("appliance.commands.schedule", "repeating jobs: cron expressions or fixed intervals"),
    "limits": Command("appliance.commands.limits", "per-customer fair-share weights and limits"),
    "queue": Command("appliance.commands.queue", "pause or resume a queue, a shape or a customer"),
    "worker": Command(
        "appliance.commands.worker", "run one worker (a GPU's ComfyUI or an API connector slot)"
    ),
    "machine": Command(
        "appliance.commands.machine", "run the machine supervisor (health server, status, registration)"
    ),
    "comfyui": Command("appliance.commands.comfyui", "run ComfyUI for one GPU (ready/watchdog for systemd)"),
    "config": Command("appliance.commands.config", "show or check the configuration"),
    "units": Command(
        "appliance.commands.units", "install the systemd units (non-Nix hosts, images, containers)"
    ),
    "monitor": Command("appliance.commands.monitor", "serve the live fleet dashboard"),
    "api": Command("appliance.commands.api", "serve the HTTP job API; manage its API keys"),
    "pools": Command(
        "appliance.commands.pools", "pool signals for autoscalers: backlog, wait, run times, desired machines"
    ),
    "fleet": Command("appliance.commands.fleet", "drain or undrain machines"),
    "redis": Command("appliance.commands.redis", "load the queue's Lua into Redis; print ACL users per role"),
    "webhooks": Command(
        "appliance.commands.webhooks", "webhook signing secrets and given-up deliveries of a tenant"
    ),
}


def command_help(name: str) -> str:
    """The `appliance --help` line of the top-level command `name` (for its module's `register`)."""
    return COMMANDS[name].help


class ExitCode(enum.IntEnum):
    """Every exit status an `appliance` command returns: the one place they are defined (docs/cli.md lists them).

    Scripts and systemd (`RestartPreventExitStatus=`) depend on these numbers: never reuse one for a new meaning.
    """

    OK = 0
    #: What was asked for did not happen: `job wait`: the job ended failed, cancelled or dead; `job cancel`: it
    #: had already finished; a service could not run (e.g. its port is taken).
    FAILED = 1
    #: Bad input: an argument, a payload, a file argument.
    USAGE = 2
    #: A service cannot start as configured (a setting, the config file, a secret file, a missing connector
    #: package): sysexits.h EX_CONFIG. The units set `RestartPreventExitStatus=78`: restarting cannot fix a typo,
    #: so the unit fails at once and keeps the cause in its STATUS= instead of "Start request repeated too
    #: quickly". One-shot commands report bad configuration as USAGE.
    CONFIG = 78
    #: The job (or machine) is not known.
    NOT_FOUND = 3
    #: Redis: unreachable, refused the credentials, or refused a command (no permission, out of memory,
    #: read-only replica, ...).
    REDIS = 4
    #: An unexpected error (a bug): one line, the traceback only with --log-level DEBUG (EX_SOFTWARE).
    INTERNAL = 70
    #: `job wait --timeout` ran out.
    TIMEOUT = 124
    #: Interrupted (Ctrl-C).
    INTERRUPTED = 130
    #: The reader of stdout went away (`... | head`): what a process killed by SIGPIPE reports.
    BROKEN_PIPE = 141


class CommandError(Exception):
    """An error the user caused or can fix: printed as one line on stderr, exit status `exit_code`."""

    def __init__(self, message: str, exit_code: int = ExitCode.USAGE) -> None:
        super().__init__(message)
        self.exit_code = exit_code


class ConfigCommandError(CommandError):
    """A service cannot start with this configuration; exits ExitCode.CONFIG (78) after `STATUS=config error: …`."""

    def __init__(self, message: str) -> None:
        super().__init__(message.replace("\n", "; "), ExitCode.CONFIG)


def run_async(coro: Coroutine[Any, Any, T]) -> T:
    """Run a command's coroutine on a fresh event loop. A command Redis refuses for want of an ACL permission
    ends in one line naming it (exit 4), wherever in the command it happened."""
    import asyncio

    from redis.exceptions import NoPermissionError, ResponseError

    try:
        return asyncio.run(coro)
    except NoPermissionError as exc:
        raise CommandError(refused(exc), ExitCode.REDIS) from None
    except ResponseError as exc:
        # The same refusal met by a command inside a script comes back as a script error.
        if "user executing the script can't" not in str(exc):
            raise
        raise CommandError(refused(exc), ExitCode.REDIS) from None


def refused(exc: Exception, where: str = "") -> str:
    """One line for a Redis NOPERM reply (the describer every command uses): Redis's own words name the command,
    key or channel refused, and the line says which role prints the permissions."""
    from appliance.rediserrors import describe_redis_error

    text = describe_redis_error(exc, where)
    if "NOPERM" not in text:  # a refusal inside a script arrives as a script error
        text = (
            f"reached Redis{f' at {where}' if where else ''} but it refused a command inside a script (NOPERM): "
            + (" ".join(str(exc).split()))
        )
    return f"{text} (`appliance redis acl --role ROLE` prints each role's permissions)"


def print_json(value: Any) -> None:
    import json

    json.dump(value, sys.stdout, indent=2, sort_keys=True, default=str)
    sys.stdout.write("\n")
