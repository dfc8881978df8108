"""One module per command group; each exposes `register(subparsers)`."""

from __future__ import annotations

import asyncio
import json
import sys
from collections.abc import Coroutine
from typing import Any, TypeVar

T = TypeVar("T")


class CommandError(Exception):
    """An error the user caused or can fix: printed as one line on stderr, exit status `exit_code`."""

    def __init__(self, message: str, exit_code: int = 2) -> None:
        super().__init__(message)
        self.exit_code = exit_code


#: Exit status of a service started with a configuration it cannot run with (sysexits.h EX_CONFIG). The units
#: name it in RestartPreventExitStatus=: restarting cannot fix a typo, so the unit fails at once and keeps the
#: cause in its STATUS= instead of hiding it behind "Start request repeated too quickly".
CONFIG_EXIT_STATUS = 78


class ConfigCommandError(CommandError):
    """A service cannot start with this configuration; exits CONFIG_EXIT_STATUS after `STATUS=config error: …`."""

    def __init__(self, message: str) -> None:
        super().__init__(message.replace("\n", "; "), CONFIG_EXIT_STATUS)


def run_async(coro: Coroutine[Any, Any, T]) -> T:
    """Run a command's coroutine on a fresh event loop."""
    return asyncio.run(coro)


def print_json(value: Any) -> None:
    json.dump(value, sys.stdout, indent=2, sort_keys=True, default=str)
    sys.stdout.write("\n")
