"""A worker's registration: the shapes it serves, wake-ups, cancel requests, heartbeats.

session = await WorkerSession.open(queue, "m1-gpu0", Capabilities(services=["comfyui"], gpu_memory_gb=24))
while True:
    claimed = await session.claim()
    if claimed is None:
        await session.wait_for_work(timeout_s=5)
        continue
    ...
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import random
import re
import time
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError

from appliance.queue.models import ID_PATTERN, Capabilities, ClaimedJob
from appliance.queue.shapes import matches

if TYPE_CHECKING:
    from appliance.queue.client import Queue

log = logging.getLogger(__name__)

#: How often the full shape list is re-read, in case a new-shape announcement was missed (s).
SHAPE_REFRESH_S = 30.0


class WorkerSession:
    """One worker's view of the queue. Create with `WorkerSession.open`."""

    def __init__(
        self, queue: Queue, worker_id: str, capabilities: Capabilities, *, machine_id: str | None = None
    ) -> None:
        if not re.fullmatch(ID_PATTERN, worker_id):
            # Like job ids: it is written into the owner field (`token|worker|claimed_ms`) and JSON records.
            raise ValueError(f"worker id {worker_id!r} is not a valid id (letters, digits, _ . : -; max 128)")
        self.queue = queue
        self.worker_id = worker_id
        self.capabilities = capabilities
        self.machine_id = machine_id
        self.shapes: list[str] = []
        #: Job ids whose cancellation was requested while this worker holds them.
        self.cancel_requests: asyncio.Queue[str] = asyncio.Queue()
        self._known_shapes: set[str] = set()
        self._wake = asyncio.Event()
        self._listener: asyncio.Task[None] | None = None
        self._pubsub: Any = None
        self._closed = False

    @classmethod
    async def open(
        cls, queue: Queue, worker_id: str, capabilities: Capabilities, *, machine_id: str | None = None
    ) -> WorkerSession:
        """Register a worker and subscribe to wake-ups for the shapes it can serve."""
        session = cls(queue, worker_id, capabilities, machine_id=machine_id)
        await session.start()
        return session

    # --- lifecycle --------------------------------------------------------------------------------------------

    async def start(self) -> None:
        await self._register()
        await self.refresh_shapes()
        await self.queue.heartbeat(self.worker_id, {}, self.shapes)
        self._pubsub = self.queue.client.pubsub()
        await self._subscribe_all()
        self._listener = asyncio.create_task(self._listen(), name=f"wake-listener:{self.worker_id}")

    async def _register(self) -> None:
        k = self.queue.keys
        record = {
            "worker_id": self.worker_id,
            "machine_id": self.machine_id,
            "capabilities": self.capabilities.model_dump(mode="json"),
            "registered_at": int(time.time() * 1000),
        }
        await self.queue.client.hset(k.workers, self.worker_id, json.dumps(record, separators=(",", ":")))

    async def close(self, deregister: bool = True) -> None:
        self._closed = True
        if self._listener:
            self._listener.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await self._listener
        if self._pubsub is not None:
            with contextlib.suppress(Exception):
                await self._pubsub.aclose()
        if deregister:
            k = self.queue.keys
            with contextlib.suppress(Exception):
                pipe = self.queue.client.pipeline(transaction=False)
                pipe.hdel(k.workers, self.worker_id)
                pipe.zrem(k.workers_seen, self.worker_id)
                pipe.hdel(k.worker_status, self.worker_id)
                await pipe.execute()

    # --- shapes -----------------------------------------------------------------------------------------------

    async def refresh_shapes(self) -> list[str]:
        """Re-read every shape and keep those this worker's capabilities satisfy."""
        shapes = await self.queue.client.hgetall(self.queue.keys.shapes)
        self._known_shapes = set(shapes)
        matching = sorted(s for s, record in shapes.items() if matches(self.capabilities, json.loads(record)))
        added = set(matching) - set(self.shapes)
        self.shapes = matching
        if added:
            await self.queue.register_class(self.queue.worker_class(self.shapes))
            self._wake.set()
            if self._pubsub is not None:
                await self._pubsub.subscribe(*(self.queue.keys.wake_channel(s) for s in added))
        return self.shapes

    async def _consider_shape(self, shape: str) -> None:
        if shape in self._known_shapes:
            return
        self._known_shapes.add(shape)
        record = await self.queue.client.hget(self.queue.keys.shapes, shape)
        if record and matches(self.capabilities, json.loads(record)) and shape not in self.shapes:
            self.shapes = sorted([*self.shapes, shape])
            await self.queue.register_class(self.queue.worker_class(self.shapes))
            await self._pubsub.subscribe(self.queue.keys.wake_channel(shape))
            await self.queue.heartbeat(self.worker_id, {}, [shape])
            self._wake.set()

    # --- claiming ---------------------------------------------------------------------------------------------

    async def claim(self) -> ClaimedJob | None:
        """Lease the best job this worker can run, or None. Clears the wake flag first, so a job submitted
        while this runs still wakes the next `wait_for_work`."""
        claimed = await self.claim_many(1)
        return claimed[0] if claimed else None

    async def claim_many(self, count: int) -> list[ClaimedJob]:
        """Lease up to `count` jobs in one call (a worker with free slots fills several at once)."""
        return (await self.finish_and_claim((), count))[1]

    async def finish_and_claim(
        self, outcomes: Sequence[tuple[str, str, Any]], count: int
    ) -> tuple[list[int], list[ClaimedJob]]:
        """Complete `outcomes` (job id, token, result) and lease up to `count` jobs in one round trip
        (`Queue.finish_and_claim`): (complete codes, claimed jobs)."""
        self._wake.clear()
        codes, claimed = await self.queue.finish_and_claim(outcomes, self.worker_id, self.shapes, count)
        if not claimed and self.shapes and self.queue.worker_class(self.shapes).hint:
            # Lost every race for the best job, but jobs wait: the next wait_for_work returns at once.
            self._wake.set()
        return codes, claimed

    async def wait_for_work(self, timeout_s: float) -> bool:
        """Sleep until a matching job may be waiting (a wake-up) or `timeout_s` passes. True if woken."""
        try:
            async with asyncio.timeout(timeout_s):
                await self._wake.wait()
                return True
        except TimeoutError:
            return False

    def wake(self) -> None:
        self._wake.set()

    async def heartbeat(self, leases: Mapping[str, str]) -> dict[str, str]:
        """Renew every lease this worker holds: {job id: 'ok' | 'cancelled' | 'lost'}."""
        return await self.queue.heartbeat(self.worker_id, leases, self.shapes)

    async def set_status(self, status: Mapping[str, Any]) -> None:
        """Publish this worker's live state (phase, current jobs, progress) for the machine and the monitor."""
        record = {
            "worker_id": self.worker_id,
            "machine_id": self.machine_id,
            "at": int(time.time() * 1000),
            **status,
        }
        await self.queue.client.hset(
            self.queue.keys.worker_status,
            self.worker_id,
            json.dumps(record, separators=(",", ":"), default=str),
        )

    # --- pub/sub ----------------------------------------------------------------------------------------------

    async def _subscribe_all(self) -> None:
        k = self.queue.keys
        channels = [k.shapes_channel, k.cancel_channel, *(k.wake_channel(s) for s in self.shapes)]
        await self._pubsub.subscribe(*channels)

    async def _listen(self) -> None:
        """Turn pub/sub messages into wake-ups and cancel requests; survive Redis restarts."""
        k = self.queue.keys
        backoff = 0.1
        last_refresh = time.monotonic()
        while not self._closed:
            try:
                message = await self._pubsub.get_message(ignore_subscribe_messages=True, timeout=1.0)
                backoff = 0.1
                if time.monotonic() - last_refresh > SHAPE_REFRESH_S:
                    last_refresh = time.monotonic()
                    await self.refresh_shapes()
                if message is None:
                    continue
                channel, data = message["channel"], message["data"]
                if channel == k.cancel_channel:
                    job_id, _, worker = str(data).partition("|")
                    if worker == self.worker_id:
                        self.cancel_requests.put_nowait(job_id)
                elif channel == k.shapes_channel:
                    await self._consider_shape(str(data))
                else:
                    self._wake.set()
            except asyncio.CancelledError:
                raise
            except (RedisConnectionError, RedisTimeoutError, OSError) as exc:
                log.warning("wake-up channel lost (%s); reconnecting in %.1fs", type(exc).__name__, backoff)
                await asyncio.sleep(backoff * (0.5 + random.random()))
                backoff = min(backoff * 2, 5.0)
                with contextlib.suppress(Exception):
                    await self._pubsub.aclose()
                    self._pubsub = self.queue.client.pubsub()
                    await self._subscribe_all()
                    await self.refresh_shapes()
                    await self.queue.scripts.load(self.queue.client)
                    # Anything submitted while we were deaf: look now.
                    self._wake.set()
