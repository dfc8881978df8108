"""A worker's registration: the shapes it serves, wake-ups, cancel requests, heartbeats.

session = await WorkerSession.open(queue, "m1-gpu0", Capabilities(services=["comfyui"], gpu_memory_gb=24))
while True:
    claimed = await session.claim()
    if claimed is None:
        await session.wait_for_work(timeout_s=5)
        continue
    ...

A session that finds nothing to claim registers as idle (idle.lua; with completions to send, in the same call as
them: finish_claim.lua) and then costs Redis nothing until a job of one of its shapes wakes it - that job wakes
this one worker, never every idle one. Its messages (wake-ups, cancel requests, new shapes) come through the
process's WakeHub, one connection for all its sessions.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import re
import time
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

from appliance.queue.hub import SHAPE_REFRESH_S, WakeHub
from appliance.queue.jobbody import Claim
from appliance.queue.models import ID_PATTERN, Capabilities, ClaimedJob
from appliance.queue.shapes import matches

if TYPE_CHECKING:
    from appliance.queue.client import Queue

log = logging.getLogger(__name__)

__all__ = ["SHAPE_REFRESH_S", "WorkerSession"]

#: Most candidate shapes a woken session passes to claim.lua (each is one more key).
MAX_CANDIDATES = 4


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
        self.hub: WakeHub | None = None
        #: Registered as idle (idle.lua or finish_claim.lua) and not woken since: claims answer from memory,
        #: Redis is not asked.
        self.registered = False
        #: The last claim said no other job waits for this worker: the next one that completes nothing (or cannot
        #: register in its round trip: LeaseClient.one_call) registers first (idle.lua checks for waiting jobs
        #: in the same step), instead of a claim that would find nothing.
        self._idle_next = False
        #: Shapes this session was woken for and has not claimed from yet -> when (monotonic s).
        self._owed: dict[str, float] = {}
        #: Counts wake-ups and lost registrations: one that comes while a registration runs has spent what it
        #: wrote.
        self._woken_count = 0
        #: Inside wait_for_work: the worker is idle and willing. A wake-up that finds it elsewhere (its worker is
        #: blocked: draining, drained, service down) goes on to another worker at once.
        self._waiting = False

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
        self.hub = WakeHub.of(self.queue)
        await self.hub.attach(self)

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
        if self.hub is not None:
            await self.hub.detach(self)
        k = self.queue.keys
        with contextlib.suppress(Exception):
            pipe = self.queue.client.pipeline(transaction=False)
            # No wake-up may be spent on a worker that is gone (another shape's stale entry is dropped later).
            pipe.hdel(k.waiting, self.worker_id)
            for shape in self.shapes:
                pipe.zrem(k.idle(shape), self.worker_id)
            if deregister:
                pipe.hdel(k.workers, self.worker_id)
                pipe.zrem(k.workers_seen, self.worker_id)
                pipe.hdel(k.worker_status, self.worker_id)
            await pipe.execute()
        self.registered = False

    # --- shapes -----------------------------------------------------------------------------------------------

    async def refresh_shapes(self, shapes: Mapping[str, str] | None = None) -> list[str]:
        """Re-read every shape (or take `shapes`, as the hub read them) and keep those this worker serves."""
        if shapes is None:
            shapes = await self.queue.client.hgetall(self.queue.keys.shapes)
        self._known_shapes = set(shapes)
        matching = sorted(s for s, record in shapes.items() if matches(self.capabilities, json.loads(record)))
        if set(matching) - set(self.shapes):
            self.shapes = matching
            await self._shapes_grew()
        return self.shapes

    async def consider_shape(self, shape: str, record: str | None) -> None:
        """A shape was announced (its requirements, or None when gone): serve it when this worker can."""
        if shape in self._known_shapes:
            return
        self._known_shapes.add(shape)
        if record and matches(self.capabilities, json.loads(record)) and shape not in self.shapes:
            self.shapes = sorted([*self.shapes, shape])
            await self.queue.heartbeat(self.worker_id, {}, [shape])
            await self._shapes_grew()

    async def _shapes_grew(self) -> None:
        await self.queue.register_class(self.queue.worker_class(self.shapes))
        # Look now (the new shape's first job woke nobody: no one was registered for it), then register again
        # with every shape.
        self.lost_registration()

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
        (`Queue.finish_and_claim`): (complete codes, claimed jobs). A claim that takes nothing registers the
        session as idle in the same call (finish_claim.lua), so a worker's last completion and its registration
        are one command. While the session is registered as idle and not woken, claims nothing without asking
        Redis (the outcomes still go): nothing waited when it registered, and every job since woke an idle
        worker."""
        codes, claims = await self.finish_and_lease(outcomes, count)
        return codes, [claim.claimed for claim in claims]

    async def finish_and_lease(
        self, outcomes: Sequence[tuple[str, str, Any]], count: int
    ) -> tuple[list[int], list[Claim]]:
        """`finish_and_claim` for the worker runtime: each job a `Claim`, whose full Job is built on demand."""
        self._wake.clear()
        # With outcomes to send, the round trip registers the session itself if its claim finds nothing.
        folded = bool(outcomes) and self.queue.leases.one_call
        if not self._owed and self.shapes:
            if self.registered or (self._idle_next and not folded and await self._register_idle()):
                return (await self.queue.complete_many(outcomes) if outcomes else []), []
        owed = list(self._owed)
        if owed:
            # The job that woke us is most likely the best: claim.lua takes it in one call when its shape is a
            # candidate (the class's hint is shared by the process's sessions of the class and may name others).
            worker_class = self.queue.worker_class(self.shapes)
            worker_class.hint = tuple(dict.fromkeys([*owed, *worker_class.hint]))[:MAX_CANDIDATES]
        before = self._woken_count
        # Completing (a worker's last jobs, maybe): register in the same call if the claim finds nothing. A call
        # that completes nothing keeps to claim.lua; wait_for_work registers after it (idle.lua).
        hub = self.hub if folded and self.shapes and not self.registered else None
        channel = hub.channel if hub is not None else None
        codes, claimed, registered = await self.queue.leases.finish_and_lease(
            outcomes, self.worker_id, self.shapes, count, pool=self.capabilities.pool, idle_channel=channel
        )
        hint = self.queue.worker_class(self.shapes).hint if self.shapes else ()
        self._idle_next = not hint
        if registered:
            self._registered(before)
        if not claimed and hint:
            # Lost every race for the best job, but jobs wait: the next wait_for_work returns at once.
            self._wake.set()
            return codes, claimed
        for shape in owed:
            self._owed.pop(shape, None)
        # Woken for a shape but took another's job: that wake-up's job still needs a worker. (Nothing claimed
        # and no hint: no job waits in any of this worker's shapes, so none is owed.)
        taken = claimed[0].shape if claimed else None
        unused = [shape for shape in owed if claimed and shape != taken]
        if unused and self.hub is not None:
            await self.hub.pass_on(unused)
        return codes, claimed

    async def wait_for_work(self, timeout_s: float) -> bool:
        """Sleep until a matching job may be waiting (a wake-up) or `timeout_s` passes. True if woken. Registers
        the session as idle first, unless a job waits already (then True at once)."""
        if not self._wake.is_set() and not self.registered and not self._owed and self.shapes:
            try:
                if not await self._register_idle():
                    return True
            except Exception as exc:  # Redis down: the next claim reports it; sleep meanwhile
                log.debug("could not register as idle: %s", exc)
        self._waiting = True
        try:
            async with asyncio.timeout(timeout_s):
                await self._wake.wait()
                return True
        except TimeoutError:
            return False
        finally:
            self._waiting = False

    async def _register_idle(self) -> bool:
        """idle.lua: True when registered, False when a job of this worker's shapes waits (claim it)."""
        assert self.hub is not None, "the session is not open"
        conn = self.queue.conn
        call = conn.prepare("idle", [self.worker_id, self.hub.channel, *self.shapes], candidates=self.shapes)
        before = self._woken_count
        done = int(await conn.run(call)) == 1
        if done:
            self._registered(before)
        else:
            self.registered = self._idle_next = False
        return done

    def _registered(self, before: int) -> None:
        """A call registered the session as idle; `before`: the wake-up count when it was sent."""
        # The hub's connection may deliver the wake-up that spends this registration before its reply arrives.
        self.registered = self._woken_count == before
        self._idle_next = self.registered

    def wake(self) -> None:
        self._wake.set()

    # --- from the hub -----------------------------------------------------------------------------------------

    def woken(self, shape: str) -> bool:
        """A job of `shape` woke this worker (its registration is spent). True when it takes the wake-up (it waits
        for work: it will claim); False when the caller must pass it on (it is not waiting: blocked)."""
        self.registered = False
        self._woken_count += 1
        self._idle_next = False
        self._wake.set()
        if not self._waiting:
            return False
        self._owed.setdefault(shape, time.monotonic())
        return True

    def lost_registration(self) -> None:
        """The registration may be gone (a new shape, a reconnect, a refresh that did not find it): look now."""
        self.registered = False
        self._woken_count += 1
        self._idle_next = False
        self._wake.set()

    def overdue(self, before: float) -> list[str]:
        """Shapes this session was woken for before `before` and still has not claimed: given up to the hub."""
        late = [shape for shape, at in self._owed.items() if at < before]
        for shape in late:
            del self._owed[shape]
        return late

    def take_owed(self) -> list[str]:
        owed, self._owed = list(self._owed), {}
        return owed

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
