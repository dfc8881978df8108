"""Housekeeping of the queue: requeue expired leases and due retries, drop expired records."""

from __future__ import annotations

from dataclasses import dataclass

from appliance.queue.conn import QueueConnection
from appliance.queue.limits import Limits
from appliance.queue.records import shape_of_meta

#: Rounds of `Housekeeper.requeue_due` one completion runs at most (x its limit: children released at once).
REQUEUE_DUE_ROUNDS = 40


@dataclass(frozen=True)
class ReapResult:
    ran: bool
    records_dropped: int = 0
    requeued: int = 0
    dead: int = 0
    cancelled: int = 0
    #: ms until the next lease deadline or retry falls due (and the fleet's reaper guard frees), by the server's
    #: clock; None when nothing is leased or delayed. A reaper sleeps this long instead of polling.
    next_in_ms: int | None = None


class Housekeeper:
    def __init__(self, conn: QueueConnection) -> None:
        self.conn = conn

    async def reap(self, force: bool = False, limit: int = 500) -> ReapResult:
        """Requeue expired leases and due retries, drop expired records; once per interval across the fleet.
        The result says when the next lease deadline or retry falls due (`next_in_ms`)."""
        settings = self.conn.settings
        call = self.conn.prepare("reap", [settings.reaper_interval_ms, limit, "1" if force else "0"])
        dropped, expired, due, wait = await self.conn.run(call)
        next_in_ms = int(wait) if int(wait) >= 0 else None
        if int(dropped) < 0:
            next_in_ms = _sooner(next_in_ms, await self._release_limited())
            return ReapResult(ran=False, next_in_ms=next_in_ms)
        by_shape: dict[str, list[str]] = {}
        for pairs in (expired, due):
            for i in range(0, len(pairs), 2):
                by_shape.setdefault(pairs[i + 1], []).append(pairs[i])
        requeued, dead, cancelled = await self._requeue(by_shape)
        # Leases that ended here (expired) may free a limited customer's slots; a rate's token may have accrued.
        next_in_ms = _sooner(next_in_ms, await self._release_limited())
        return ReapResult(
            ran=True,
            records_dropped=int(dropped),
            requeued=requeued,
            dead=dead,
            cancelled=cancelled,
            next_in_ms=next_in_ms,
        )

    async def requeue_due(self, limit: int = 500, rounds: int = REQUEUE_DUE_ROUNDS) -> int:
        """Move what is due in the delayed set into line now, without the fleet's reaper guard: children their
        last parent's completion released (due at once), `limit` per round while every one read was due. Each id
        is checked again by requeue.lua, so racing the reaper moves nothing twice. Returns how many went into
        line."""
        k, moved = self.conn.keys, 0
        for _ in range(rounds):
            due = await self.conn.client.zrange(k.delayed, 0, limit - 1)
            metas = await self.conn.client.hmget(k.meta, due) if due else []
            by_shape: dict[str, list[str]] = {}
            for job_id, meta in zip(due, metas, strict=True):
                if meta:
                    by_shape.setdefault(shape_of_meta(str(meta)), []).append(str(job_id))
            requeued = (await self._requeue(by_shape))[0]
            moved += requeued
            if len(due) < limit or requeued < len(due):  # the rest is not due yet (or gone): the reaper's
                break
        return moved

    async def _requeue(self, by_shape: dict[str, list[str]]) -> tuple[int, int, int]:
        """requeue.lua for each shape's ids: (requeued, dead, cancelled)."""
        settings = self.conn.settings
        requeued = dead = cancelled = 0
        for shape, ids in by_shape.items():
            args = [
                shape,
                settings.result_ttl_s * 1000,
                settings.dead_ttl_s * 1000,
                self.conn.wake_check,
            ]
            r, d, c = await self.conn.run(self.conn.prepare("requeue", [*args, *ids], shape=shape))
            requeued, dead, cancelled = requeued + int(r), dead + int(d), cancelled + int(c)
        return requeued, dead, cancelled

    async def _release_limited(self) -> int | None:
        """Put back the held jobs of limited customers that are due (every caller: it is idempotent); ms until
        the next is due. One EXISTS when no customer's jobs are held."""
        if not await self.conn.client.exists(self.conn.keys.limits_due):
            return None
        return await Limits(self.conn).release_due()


def _sooner(a: int | None, b: int | None) -> int | None:
    return b if a is None else a if b is None else min(a, b)
