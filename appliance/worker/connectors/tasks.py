"""Per-job task bookkeeping shared by connectors: run a job's coroutine as a task that cancel() can stop."""

from __future__ import annotations

import asyncio
from collections.abc import Coroutine
from typing import Any, TypeVar

from appliance.worker.connectors.base import JobCancelled

T = TypeVar("T")


class JobTasks:
    """Maps job id -> running task; cancel() stops it and process() then raises JobCancelled."""

    def __init__(self) -> None:
        self._tasks: dict[str, asyncio.Task[Any]] = {}
        self._cancelled: set[str] = set()

    def __contains__(self, job_id: str) -> bool:
        return job_id in self._tasks

    async def run(self, job_id: str, coro: Coroutine[Any, Any, T]) -> T:
        """Run `coro` for `job_id`; a cancel(job_id) meanwhile turns into JobCancelled."""
        self._cancelled.discard(job_id)
        task = asyncio.ensure_future(coro)
        self._tasks[job_id] = task
        try:
            return await asyncio.shield(task)
        except asyncio.CancelledError:
            if job_id in self._cancelled:
                raise JobCancelled(f"job {job_id} cancelled") from None
            # Our caller was cancelled (shutdown): stop the work too, then propagate.
            task.cancel()
            raise
        finally:
            self._tasks.pop(job_id, None)
            self._cancelled.discard(job_id)

    def cancel(self, job_id: str) -> bool:
        """Cancel the job's task if running; idempotent. True when a task was cancelled."""
        task = self._tasks.get(job_id)
        if task is None or task.done():
            return False
        self._cancelled.add(job_id)
        task.cancel()
        return True
