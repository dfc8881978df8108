"""The `appliance` command: parses arguments and hands off to one module per command group.

Each module in `appliance.commands` exposes `register(subparsers)`; parsers are built eagerly (cheap),
while each handler imports what it needs (aiohttp, openai, NVML) only when it runs.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import os
import sys
from collections.abc import Sequence

from appliance.commands import CommandError, ExitCode

log = logging.getLogger("appliance")

#: Command modules, in the order `appliance --help` lists them.
COMMAND_MODULES = (
    "appliance.commands.demo",
    "appliance.commands.job",
    "appliance.commands.worker",
    "appliance.commands.machine",
    "appliance.commands.comfyui",
    "appliance.commands.config",
    "appliance.commands.units",
    "appliance.commands.monitor",
    "appliance.commands.pools",
    "appliance.commands.fleet",
    "appliance.commands.redis",
)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="appliance",
        description="Turn GPU machines (one ComfyUI per GPU) and API machines into workers of one Redis job pool.",
    )
    parser.add_argument(
        "--log-level",
        default=os.environ.get("APPLIANCE_LOG_LEVEL"),
        help="logging level (default: $APPLIANCE_LOG_LEVEL, else INFO for services (worker, machine, "
        "monitor, comfyui, demo) and WARNING for one-shot commands, whose stderr is their one error line)",
    )
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name in COMMAND_MODULES:
        try:
            module = importlib.import_module(name)
        except ModuleNotFoundError as exc:
            if exc.name == name:
                continue  # command group not built yet
            raise
        module.register(subparsers)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    default_level = "INFO" if getattr(args, "long_running", False) else "WARNING"
    logging.basicConfig(
        level=getattr(logging, str(args.log_level or default_level).upper(), logging.INFO),
        format="%(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )
    handler = getattr(args, "handler", None)
    if handler is None:
        parser.print_help()
        return ExitCode.USAGE
    try:
        result = handler(args)
        sys.stdout.flush()  # a closed pipe (`| head`) shows here, inside the handling below
    except CommandError as exc:
        return _error(str(exc), exc.exit_code)
    except KeyboardInterrupt:
        return ExitCode.INTERRUPTED
    except BrokenPipeError:
        # The reader went away (`appliance job list --json | head`): not an error of ours. Point stdout at
        # /dev/null so the interpreter's final flush does not raise again, and exit as if killed by SIGPIPE.
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        return ExitCode.BROKEN_PIPE
    except Exception as exc:
        from redis.exceptions import RedisError

        from appliance.rediserrors import describe_redis_error

        if isinstance(exc, RedisError):  # a Redis refusal no handler expected (NOPERM, OOM, READONLY, ...)
            return _error(describe_redis_error(exc), ExitCode.REDIS)
        # A bug: still one line for the person, the traceback for whoever debugs it.
        log.debug("unexpected error", exc_info=True)
        return _error(
            f"internal error: {type(exc).__name__}: {exc} (run with --log-level DEBUG for the traceback)",
            ExitCode.INTERNAL,
        )
    return int(result or 0)


def _error(message: str, code: int) -> int:
    print(f"appliance: error: {' '.join(message.split())}", file=sys.stderr)
    return int(code)
