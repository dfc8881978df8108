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
import logging
from collections.abc import Callable

from appliance.queue import Queue
from appliance.queue.compactjson import EncodedJSON
from appliance.queue.lease import Outcome as Completion

log = logging.getLogger(__name__)

#: Called with a completion's answer: the script's code for it, or the exception that kept its batch from Redis.
Settle = Callable[[int | Exception], None]
#: A completion waiting to be sent, and the future its writer awaits or the callback that takes its answer.
Pending = tuple[Completion, "asyncio.Future[int] | Settle"]


def _gone(done: asyncio.Future[int] | Settle) -> bool:
    """Whether nobody waits for this completion's answer any more (its writer was cancelled)."""
    return isinstance(done, asyncio.Future) and done.done()


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
        self._queue(((job_id, token, result), done))
        return done

    def add_settled(self, job_id: str, token: str, result: EncodedJSON, settle: Settle) -> None:
        """Queue one completion whose answer goes to `settle`, called once, when the batch it joined was sent
        (no future, no task waiting: the worker's short jobs end this way)."""
        self._queue(((job_id, token, result), settle))

    def _queue(self, pending: Pending) -> None:
        waiting = self._pending
        waiting.append(pending)
        if self.carrier is not None:
            # Once per batch: the carrier (the claim loop) was woken by the first completion since its last
            # `take`, and it takes them all together (a busy worker's jobs end a batch at a time).
            if len(waiting) == 1:
                self.carrier()
        elif self._sending is None:
            self._sending = asyncio.create_task(self._send_soon(), name="complete-batch")

    def waiting(self) -> bool:
        """Whether completions wait to be sent."""
        return bool(self._pending)

    def take(self) -> list[Pending]:
        """The completions waiting now (the claim loop sends them with its next claim)."""
        batch, self._pending = self._pending, []
        return batch

    def put_back(self, batch: list[Pending]) -> None:
        """Completions whose call was cut (cancelled) wait again, first in line. Whether Redis ran them is
        unknown: sent again, one that did land answers 'lease lost', so nothing completes twice."""
        waiting = {id(done) for _, done in self._pending}
        self._pending[:0] = [p for p in batch if not _gone(p[1]) and id(p[1]) not in waiting]
        if self._pending and self.carrier is not None:
            self.carrier()  # `_queue` wakes the carrier only for a first completion

    @staticmethod
    def resolve(batch: list[Pending], codes: list[int] | Exception) -> None:
        """Hand each writer in `batch` its code, or the exception that kept the batch from Redis."""
        for i, (_, done) in enumerate(batch):
            answer = codes if isinstance(codes, Exception) else codes[i]
            if not isinstance(done, asyncio.Future):
                try:
                    done(answer)
                except Exception:  # a bug in one settle must not keep the others from their answers
                    log.exception("settling a completion failed")
            elif done.done():  # its writer was cancelled (the worker exits)
                continue
            elif isinstance(answer, Exception):
                done.set_exception(answer)
            else:
                done.set_result(answer)

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
