"""The time limits of a worker's running connector calls, on one timer handle instead of one per job.

    deadlines = Deadlines(on_expired=runner_timed_out)
    deadlines.add(lease)            # when the call starts (lease.task set); the call's end needs no word

Calls with the same limit reach it in the order they started, so each limit keeps its calls in a FIFO, and the
one timer is set for the earliest deadline at the FIFOs' heads. A call that ended (its `lease.task` is None) is
dropped lazily: from the head of its FIFO when a call with that limit starts, and in a sweep of every FIFO when
ended calls pile up behind a long one (amortised O(1) per call). When the timer fires, every call past its
deadline gets `on_expired(lease)`, exactly at its deadline as a timer of its own would have.
"""

from __future__ import annotations

import asyncio
import math
from collections import deque
from collections.abc import Callable
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from appliance.worker.leases import Lease

#: Entries kept before a sweep drops the ended calls (then twice what the sweep kept, at least this).
SWEEP_AT = 256


class Deadlines:
    """Deadlines of running connector calls; `on_expired(lease)` for each call that reaches its own."""

    def __init__(self, on_expired: Callable[[Lease], None]) -> None:
        self._on_expired = on_expired
        #: Time limit (s) -> (deadline, lease) in the order the calls started.
        self._fifos: dict[float, deque[tuple[float, Lease]]] = {}
        self._timer: asyncio.TimerHandle | None = None
        self._at = math.inf
        self._count = 0
        self._sweep_at = SWEEP_AT

    def __len__(self) -> int:
        """Entries held (ended calls not yet dropped included)."""
        return self._count

    def add(self, lease: Lease, loop: asyncio.AbstractEventLoop | None = None) -> None:
        """The call of `lease` started now (its `task` is set) and may run `lease.timeout_s`; `loop` is the
        running loop, when the caller knows it (asking for it costs a `getpid` in CPython 3.11)."""
        if loop is None:
            loop = asyncio.get_running_loop()
        deadline = loop.time() + lease.timeout_s
        fifo = self._fifos.get(lease.timeout_s)
        if fifo is None:
            fifo = self._fifos[lease.timeout_s] = deque()
        else:
            while fifo and fifo[0][1].task is None:
                fifo.popleft()
                self._count -= 1
        fifo.append((deadline, lease))
        self._count += 1
        if self._count > self._sweep_at:
            self._sweep()
        if deadline < self._at:
            self._arm(loop, deadline)

    def _arm(self, loop: asyncio.AbstractEventLoop, at: float) -> None:
        if self._timer is not None:
            self._timer.cancel()
        self._timer, self._at = loop.call_at(at, self._fire), at

    def _sweep(self) -> None:
        """Drop every ended call (they pile up behind a call with a long limit that still runs)."""
        for limit, fifo in list(self._fifos.items()):
            kept = [entry for entry in fifo if entry[1].task is not None]
            if kept:
                self._fifos[limit] = deque(kept)
            else:
                del self._fifos[limit]
        self._count = sum(len(fifo) for fifo in self._fifos.values())
        self._sweep_at = max(SWEEP_AT, 2 * self._count)

    def _fire(self) -> None:
        loop = asyncio.get_running_loop()
        self._timer, self._at = None, math.inf
        now = loop.time()
        expired = []
        upcoming = math.inf
        for limit, fifo in list(self._fifos.items()):
            while fifo:
                deadline, lease = fifo[0]
                if lease.task is not None and deadline > now:
                    upcoming = min(upcoming, deadline)
                    break
                fifo.popleft()
                self._count -= 1
                if lease.task is not None:
                    expired.append(lease)
            if not fifo:
                del self._fifos[limit]
        if upcoming < math.inf:
            self._arm(loop, upcoming)
        for lease in expired:
            self._on_expired(lease)
