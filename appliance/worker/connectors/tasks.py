"""The one cancellation mechanism of all connectors: a registry of live attempts that `cancel()` marks.

Keyed by attempt (job id and fencing token), not by job: the same worker may run attempt 2 of a job while its
lost attempt 1 still winds down, and stopping attempt 1 must leave attempt 2 running.

`Attempts.cancel()` marks the named attempts cancelled, stops their task when they run as one (`run()`), and
hands them back so a connector whose work lives in a remote service can also tell that service (by the
attempt's `remote` id) and wake its waiting loop (`wake`). A connector then raises JobCancelled when it sees
`cancelled` set; for `run()` that happens here.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Coroutine, Iterator
from dataclasses import dataclass, field
from typing import Any, TypeVar

from appliance.worker.connectors.base import ConnectorJob, JobCancelled

T = TypeVar("T")

#: (job id, fencing token) of one attempt.
AttemptKey = tuple[str, str]


@dataclass(eq=False, slots=True)
class Attempt:
    """One running attempt of a job on this worker (slotted: one is made per job)."""

    job_id: str
    token: str
    #: The service's id of this attempt's work (prediction id, prompt id, ...), once known.
    remote: Any = None
    #: The task running the attempt, when it runs as one (`Attempts.run`).
    task: asyncio.Task[Any] | None = None
    # The events below are made on first use: a short job that nobody cancels never needs them.
    _cancelled: asyncio.Event | None = field(default=None, repr=False)
    _wake: asyncio.Event | None = field(default=None, repr=False)

    @property
    def cancelled(self) -> asyncio.Event:
        """Set by `Attempts.cancel()`: this attempt was asked to stop."""
        if self._cancelled is None:
            self._cancelled = asyncio.Event()
        return self._cancelled

    @property
    def wake(self) -> asyncio.Event:
        """Set by whoever learns news the attempt's waiting loop should not sleep through ("look now")."""
        if self._wake is None:
            self._wake = asyncio.Event()
        return self._wake

    def was_cancelled(self) -> bool:
        """Whether `Attempts.cancel()` marked this attempt (without making the event)."""
        return self._cancelled is not None and self._cancelled.is_set()


class Attempts:
    """The live attempts of one connector."""

    def __init__(self) -> None:
        self._live: dict[AttemptKey, Attempt] = {}

    def __contains__(self, job_id: str) -> bool:
        return any(key[0] == job_id for key in self._live)

    @contextlib.contextmanager
    def open(self, job: ConnectorJob, remote: Any = None) -> Iterator[Attempt]:
        """Register this attempt of `job` for its duration: a cancel() meanwhile, even before its remote id is
        known, is remembered in `cancelled`."""
        key = (job.id, job.token)
        attempt = self._live[key] = Attempt(job.id, job.token, remote=remote)
        try:
            yield attempt
        finally:
            if self._live.get(key) is attempt:
                del self._live[key]

    async def run(self, job: ConnectorJob, coro: Coroutine[Any, Any, T]) -> T:
        """Run `coro` in the calling task (the runner gives each job's call a task of its own: no second task
        per job); a cancel() of this attempt meanwhile cancels that task and turns into JobCancelled."""
        # `open()` written out: a generator-based context manager per job costs more than the rest of this.
        key = (job.id, job.token)
        task = asyncio.current_task()
        attempt = self._live[key] = Attempt(job.id, job.token, task=task)
        try:
            return await coro
        except asyncio.CancelledError:
            if attempt.was_cancelled():
                if task is not None:
                    task.uncancel()  # ours, turned into JobCancelled: not a cancellation of the caller
                raise JobCancelled(f"job {job.id} cancelled") from None
            raise  # our caller was cancelled (shutdown): the work stopped with it
        finally:
            if self._live.get(key) is attempt:
                del self._live[key]

    def cancel(self, job_id: str, token: str | None = None) -> list[Attempt]:
        """Mark that attempt (every attempt of the job when `token` is None) cancelled and stop its task;
        idempotent. Returns the attempts newly cancelled, for the caller to tell the remote service."""
        newly: list[Attempt] = []
        for key, attempt in list(self._live.items()):
            if key[0] != job_id or (token is not None and key[1] != token) or attempt.was_cancelled():
                continue
            if attempt.task is not None and attempt.task.done():
                continue  # finished already: its outcome stands
            attempt.cancelled.set()
            if attempt.task is not None:
                attempt.task.cancel()
            newly.append(attempt)
        return newly
