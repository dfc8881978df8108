"""The `appliance` command: parses arguments and hands off to one module per command group.

Each module in `appliance.commands` exposes `register(subparsers)` and each handler imports what it needs
(pydantic, redis, aiohttp, openai, NVML) only when it runs. Start-up is the interpreter's plus the one command
module the command line names: `main` first parses with a stand-in parser per command (name and help line from
`appliance.commands.COMMANDS`, enough for `appliance --help` and to learn which command was named), then builds
that command's real parser and parses again.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import os
import sys
from collections.abc import Collection, Sequence

from appliance.commands import COMMANDS, CommandError, ConfigCommandError, ExitCode
from appliance.journal import configure_logging, prefix_lines

log = logging.getLogger("appliance")

#: Command modules, in the order `appliance --help` lists them.
COMMAND_MODULES = tuple(command.module for command in COMMANDS.values())


def build_parser(full: Collection[str] | None = None) -> argparse.ArgumentParser:
    """The whole parser; with `full`, only the commands named there get their real parser (their modules are
    imported), every other command a stand-in with the same name and help line that accepts anything."""
    parser = argparse.ArgumentParser(
        prog="appliance",
        description="Turn GPU machines (one ComfyUI per GPU) and API machines into workers of one Redis job pool.",
    )
    parser.add_argument(
        "--log-level",
        default=None,
        help="logging level (default: the logging.level setting: config file, APPLIANCE_LOGGING__LEVEL or "
        "APPLIANCE_LOG_LEVEL; else INFO for services (worker, machine, monitor, comfyui, demo) and WARNING for "
        "one-shot commands, whose stderr is their one error line)",
    )
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name, command in COMMANDS.items():
        if full is None or name in full:
            importlib.import_module(command.module).register(subparsers)
        else:
            subparsers.add_parser(name, help=command.help, add_help=False)
    return parser


def parse(argv: Sequence[str] | None) -> tuple[argparse.ArgumentParser, argparse.Namespace]:
    """Parse `argv` importing only the named command's module. The stand-ins' pass (`parse_known_args`: what
    follows the command is its own) prints `appliance --help` and reports an unknown command or a bad
    top-level option exactly as the whole parser does, since its top level is the same."""
    argv = sys.argv[1:] if argv is None else list(argv)
    named = build_parser(full=()).parse_known_args(argv)[0].command
    parser = build_parser(full=() if named is None else (named,))
    return parser, parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    parser, args = parse(argv)
    level, warnings = _log_level(args)
    configure_logging(level, sys.stderr, "%(levelname)s %(name)s: %(message)s")
    for warning in warnings:
        logging.getLogger("appliance.config").warning("%s", warning)
    handler = getattr(args, "handler", None)
    if handler is None:
        parser.print_help()
        return ExitCode.USAGE
    try:
        result = handler(args)
        sys.stdout.flush()  # a closed pipe (`| head`) shows here, inside the handling below
    except CommandError as exc:
        if isinstance(exc, ConfigCommandError):
            from appliance.notify import Notifier

            # systemd keeps the last STATUS= of a unit that failed: `systemctl status` then shows the cause.
            notifier = Notifier()
            notifier.status(f"config error: {exc}"[:500])
            notifier.close()
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
    line = f"appliance: error: {' '.join(message.split())}"
    print(prefix_lines(line, logging.ERROR, sys.stderr), file=sys.stderr)
    return int(code)


def _log_level(args: argparse.Namespace) -> tuple[int, list[str]]:
    """--log-level, else the `logging.level` setting (file or environment), else INFO for services and WARNING
    for one-shot commands; and the settings' warnings (an `APPLIANCE_*` variable that is no setting), logged
    once here for every command. A configuration that does not load is the command's to report (with its own
    exit status)."""
    name, warnings = args.log_level, []
    if getattr(args, "handler", None) is not None:
        from appliance.config import load_settings

        try:
            loaded = load_settings(getattr(args, "config", None))
            args.loaded_settings = loaded  # the command's own: loading twice cost each command's start-up
            warnings = loaded.warnings
            if "logging" in loaded.settings.model_fields_set or os.environ.get("APPLIANCE_LOG_LEVEL"):
                name = name or loaded.settings.logging.level
        except Exception:  # reported by the command itself, one line, when it loads the settings
            name = name or os.environ.get("APPLIANCE_LOG_LEVEL")
    default = "INFO" if getattr(args, "long_running", False) else "WARNING"
    level = logging.getLevelName(str(name or default).upper())
    return (level if isinstance(level, int) else logging.INFO), warnings
