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


def run_async(coro: Coroutine[Any, Any, T]) -> T:
    """Run a command's coroutine on a fresh event loop. A command Redis refuses for want of an ACL permission
    ends in one line naming it (exit 4), wherever in the command it happened."""
    from redis.exceptions import NoPermissionError, ResponseError

    try:
        return asyncio.run(coro)
    except NoPermissionError as exc:
        raise CommandError(refused(exc), 4) from None
    except ResponseError as exc:
        # The same refusal met by a command inside a script comes back as a script error.
        if "user executing the script can't" not in str(exc):
            raise
        raise CommandError(refused(exc), 4) from None


def refused(exc: Exception, where: str = "") -> str:
    """One line for a Redis NOPERM reply: Redis's own words name the command, key or channel refused."""
    text = " ".join(str(exc).split())
    return (
        f"Redis{f' at {where}' if where else ''} refused: {text} (the ACL user lacks this permission; "
        "`appliance redis acl --role ROLE` prints each role's)"
    )


def print_json(value: Any) -> None:
    json.dump(value, sys.stdout, indent=2, sort_keys=True, default=str)
    sys.stdout.write("\n")
