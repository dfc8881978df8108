"""Per-attempt task bookkeeping shared by connectors: run an attempt's coroutine as a task that cancel() can stop.

Keyed by attempt (job id and fencing token), not by job: the same worker may run attempt 2 of a job while its
lost attempt 1 still winds down, and stopping attempt 1 must leave attempt 2 running.
"""

from __future__ import annotations

import asyncio
from collections.abc import Coroutine
from typing import Any, TypeVar

from appliance.worker.connectors.base import ConnectorJob, JobCancelled

T = TypeVar("T")

#: (job id, fencing token) of one attempt.
AttemptKey = tuple[str, str]


def attempts_of(keys: Any, job_id: str, token: str | None) -> list[AttemptKey]:
    """The attempt keys among `keys` that `cancel(job_id, token)` means: that attempt, or every attempt
    of the job when `token` is None."""
    return [key for key in keys if key[0] == job_id and (token is None or key[1] == token)]


class JobTasks:
    """Maps (job id, token) -> running task; cancel() stops it and process() then raises JobCancelled."""

    def __init__(self) -> None:
        self._tasks: dict[AttemptKey, asyncio.Task[Any]] = {}
        self._cancelled: set[AttemptKey] = set()

    def __contains__(self, job_id: str) -> bool:
        return any(key[0] == job_id for key in self._tasks)

    async def run(self, job: ConnectorJob, coro: Coroutine[Any, Any, T]) -> T:
        """Run `coro` for this attempt of `job`; a cancel() of it meanwhile turns into JobCancelled."""
        key = (job.id, job.token)
        self._cancelled.discard(key)
        task = asyncio.ensure_future(coro)
        self._tasks[key] = task
        try:
            return await asyncio.shield(task)
        except asyncio.CancelledError:
            if key in self._cancelled:
                raise JobCancelled(f"job {job.id} cancelled") from None
            # Our caller was cancelled (shutdown): stop the work too, then propagate.
            task.cancel()
            raise
        finally:
            if self._tasks.get(key) is task:
                del self._tasks[key]
            self._cancelled.discard(key)

    def cancel(self, job_id: str, token: str | None = None) -> bool:
        """Cancel that attempt's task (every attempt of the job when `token` is None) if running; idempotent.
        True when a task was cancelled."""
        cancelled = False
        for key in attempts_of(self._tasks, job_id, token):
            task = self._tasks[key]
            if not task.done():
                self._cancelled.add(key)
                task.cancel()
                cancelled = True
        return cancelled
