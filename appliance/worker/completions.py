"""Completions of finished jobs, sent in batches: the claim loop carries those waiting with its next claim
(`Queue.finish_and_claim`: complete.lua then claim.lua in one script call, finish_claim.lua; the finished jobs'
slots counted free because their leases end first); while no claim loop runs (the drain) they go out on their
own, as many as wait in one complete.lua call.

    completions = Completions(queue)
    code = await completions.add(job_id, token, EncodedJSON(result_json))   # ScriptCode.OK or LEASE_LOST

A writer awaiting its code may be cancelled (the worker exits): the call it joined is not cut, it just gets no
answer. A batch that could not reach Redis hands each writer the exception, and each writer retries on its own.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable

from appliance.queue import Queue
from appliance.queue.lease import EncodedJSON
from appliance.queue.lease import Outcome as Completion

#: A completion waiting to be sent and the future its writer awaits (the script's code for it).
Pending = tuple[Completion, "asyncio.Future[int]"]


class Completions:
    """The completions waiting to be sent, and who sends them."""

    def __init__(self, queue: Queue) -> None:
        self.queue = queue
        self._pending: list[Pending] = []
        #: Set while the claim loop carries completions with its claims (`take`/`resolve`): called when a
        #: completion starts waiting. None: they are sent on their own (`_send_soon`).
        self.carrier: Callable[[], None] | None = None
        self._sending: asyncio.Task[None] | None = None

    def add(self, job_id: str, token: str, result: EncodedJSON) -> asyncio.Future[int]:
        """Queue one completion; the future gets its complete.lua code once the batch it joined was sent."""
        done: asyncio.Future[int] = asyncio.get_running_loop().create_future()
        self._pending.append(((job_id, token, result), done))
        if self.carrier is not None:
            self.carrier()
        elif self._sending is None:
            self._sending = asyncio.create_task(self._send_soon(), name="complete-batch")
        return done

    def take(self) -> list[Pending]:
        """The completions waiting now (the claim loop sends them with its next claim)."""
        batch, self._pending = self._pending, []
        return batch

    def put_back(self, batch: list[Pending]) -> None:
        """Completions whose call was cut (cancelled) wait again, first in line. Whether Redis ran them is
        unknown: sent again, one that did land answers 'lease lost', so nothing completes twice."""
        waiting = {id(done) for _, done in self._pending}
        self._pending[:0] = [p for p in batch if not p[1].done() and id(p[1]) not in waiting]

    @staticmethod
    def resolve(batch: list[Pending], codes: list[int] | BaseException) -> None:
        """Hand each writer in `batch` its code, or the exception that kept the batch from Redis."""
        for i, (_, done) in enumerate(batch):
            if done.done():  # its writer was cancelled (the worker exits)
                continue
            if isinstance(codes, BaseException):
                done.set_exception(codes)
            else:
                done.set_result(codes[i])

    async def send(self, batch: list[Pending]) -> None:
        """Send a batch of completions alone (one complete.lua call)."""
        if not batch:
            return
        try:
            codes = await self.queue.complete_many([outcome for outcome, _ in batch])
        except asyncio.CancelledError:
            self.put_back(batch)
            raise
        except Exception as exc:
            self.resolve(batch, exc)
        else:
            self.resolve(batch, codes)

    async def _send_soon(self) -> None:
        """No claim loop carries completions (the worker drains): whatever is waiting goes in one call."""
        try:
            while self._pending and self.carrier is None:
                await self.send(self.take())
        finally:
            self._sending = None
        if self._pending and self.carrier is not None:
            self.carrier()

    def carry(self, carrier: Callable[[], None] | None) -> None:
        """The claim loop takes over sending completions (`carrier` wakes it) or hands it back (None)."""
        self.carrier = carrier
        if carrier is None and self._pending and self._sending is None:
            self._sending = asyncio.create_task(self._send_soon(), name="complete-batch")
        elif carrier is not None and self._pending:
            carrier()
