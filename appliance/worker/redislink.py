"""Whether Redis answers, as the worker sees it, and how long to wait before asking again.

Every loop of the worker reports its Redis calls here: a connection error marks Redis down (once, logged once),
the next answer marks it up. Retries back off exponentially, each delay drawn at random between half the first
delay and the current ceiling, so a fleet of workers does not reconnect in lockstep after a Redis restart.
"""

from __future__ import annotations

import asyncio
import logging
import random
import time
from collections.abc import Callable

from redis.exceptions import BusyLoadingError
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError

log = logging.getLogger(__name__)

#: Errors that mean "Redis is not reachable right now" (as opposed to a bug or a script error).
UNREACHABLE = (
    RedisConnectionError,
    RedisTimeoutError,
    BusyLoadingError,
    ConnectionError,
    TimeoutError,
    OSError,
)

#: First and largest delay between retries while Redis is down (s).
BACKOFF_MIN_S = 0.2
BACKOFF_MAX_S = 2.0


def is_unreachable(exc: BaseException) -> bool:
    return isinstance(exc, UNREACHABLE)


class RedisLink:
    """Reachability of Redis plus a shared backoff; `on_change` is called on every down/up transition."""

    def __init__(self, on_change: Callable[[], None] | None = None) -> None:
        #: Monotonic time Redis stopped answering; None while it answers.
        self.down_since: float | None = None
        self.last_error: str | None = None
        self._on_change = on_change or (lambda: None)
        self._failures = 0

    @property
    def up(self) -> bool:
        return self.down_since is None

    def down_for_s(self) -> float:
        return 0.0 if self.down_since is None else time.monotonic() - self.down_since

    def mark_down(self, exc: BaseException) -> None:
        self._failures += 1
        self.last_error = f"{type(exc).__name__}: {exc}"
        if self.down_since is None:
            self.down_since = time.monotonic()
            log.warning(
                "Redis unreachable (%s); running jobs continue, retrying with backoff", self.last_error
            )
            self._on_change()

    def mark_up(self) -> None:
        self._failures = 0
        if self.down_since is not None:
            log.warning("Redis answers again after %.1fs", self.down_for_s())
            self.down_since = None
            self.last_error = None
            self._on_change()

    def backoff_s(self) -> float:
        """Next retry delay: uniform between BACKOFF_MIN_S / 2 and a ceiling exponential in the failures so far."""
        ceiling = min(BACKOFF_MAX_S, BACKOFF_MIN_S * 2 ** min(self._failures, 10))
        return random.uniform(BACKOFF_MIN_S / 2, ceiling)

    async def pause(self) -> None:
        await asyncio.sleep(self.backoff_s())
