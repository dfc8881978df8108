"""Pause and resume a queue, a shape or a customer without stopping any machine (docs/queue.md).

    await queue.pauses.pause(customer="acme")    # claims skip acme's jobs from now on
    await queue.pauses.resume(customer="acme")   # ... and they are back at their places in line

A pause is a field of the queue's `paused` hash, which claim.lua reads in the same script that takes jobs, so
no claim after `pause` returns takes what it paused. A paused queue claims nothing; a paused shape is passed over;
a paused customer's jobs are moved, as the claims meet them, from their shape's line to `held`. Resuming a
customer puts its held jobs back at their original scores, one unhold.lua call per shape (the shape's key must be
in KEYS), after the flag is gone, so no job can be held again behind the resume.
"""

from __future__ import annotations

import re
from collections import defaultdict

from appliance.queue.conn import QueueConnection
from appliance.queue.errors import QueueError
from appliance.queue.limits import CUSTOMER_PATTERN, DEFAULT_CUSTOMER

SHAPE_PATTERN = re.compile(r"^[0-9a-f]{16}$")
#: Held members one resume step lists; unhold.lua calls carry at most this many.
RESUME_BATCH = 500
#: Idle workers a resumed shape wakes at most (one per waiting job; those woken wake others as they claim).
WAKE_ON_RESUME = 256


class InvalidPause(QueueError, ValueError):
    """A shape or customer to pause is malformed, or both were given."""


def pause_field(shape: str | None = None, customer: str | None = None) -> str:
    """The `paused` field of what is named: the queue itself when neither is."""
    if shape is not None and customer is not None:
        raise InvalidPause("pause either a shape or a customer, not both")
    if shape is not None:
        if not SHAPE_PATTERN.match(shape):
            raise InvalidPause(
                f"shape {shape!r} is not a shape id (16 hex digits; see `appliance job stats`)"
            )
        return f"shape:{shape}"
    if customer is not None:
        if not re.match(CUSTOMER_PATTERN, customer):
            raise InvalidPause(f"customer {customer!r} is not a customer id (or - for jobs without one)")
        return f"customer:{customer}"
    return "queue"


class Pauses:
    def __init__(self, conn: QueueConnection) -> None:
        self.conn = conn

    async def pause(self, *, shape: str | None = None, customer: str | None = None) -> bool:
        """Pause the queue, a shape or a customer; False when it was paused already."""
        field = pause_field(shape, customer)
        if await self.conn.client.hexists(self.conn.keys.paused, field):
            return False
        await self.conn.client.hset(self.conn.keys.paused, field, await self.conn.server_time_ms())
        return True

    async def resume(self, *, shape: str | None = None, customer: str | None = None) -> int:
        """Lift a pause; returns how many held jobs went back in line (a customer's; 0 otherwise)."""
        field = pause_field(shape, customer)
        k, client = self.conn.keys, self.conn.client
        await client.hdel(k.paused, field)
        if customer is not None:
            return await self._unhold(customer)
        # The jobs that wait woke their idle workers while paused, and those registered as idle again (idle.lua
        # passes over what is paused): wake one idle worker per waiting job now, as their submits would have.
        shapes = [shape] if shape is not None else await client.zrange(k.heads, 0, -1)
        for name in shapes:
            if SHAPE_PATTERN.match(name):
                waiting = min(int(await client.zcard(k.ready(name))), WAKE_ON_RESUME)
                for _ in range(waiting):
                    call = self.conn.prepare("wake", [name, self.conn.wake_check], shape=name)
                    if not int(await self.conn.run(call)):
                        break
        return 0

    async def list(self) -> dict[str, int]:
        """What is paused now ('queue', 'shape:<id>', 'customer:<id>') -> server ms it was paused."""
        paused = await self.conn.client.hgetall(self.conn.keys.paused)
        return {str(f): int(v) for f, v in sorted(paused.items())}

    async def _unhold(self, customer: str) -> int:
        k, client = self.conn.keys, self.conn.client
        name = customer or DEFAULT_CUSTOMER
        back = 0
        while True:
            members = await client.zrangebylex(
                k.held, f"[{name}|", f"[{name}|\xff", start=0, num=RESUME_BATCH
            )
            if not members:
                return back
            by_shape: dict[str, list[str]] = defaultdict(list)
            for member in members:
                by_shape[member.split("|", 2)[1]].append(member)
            for shape, part in by_shape.items():
                call = self.conn.prepare("unhold", [shape, self.conn.wake_check, *part], shape=shape)
                back += int(await self.conn.run(call))
