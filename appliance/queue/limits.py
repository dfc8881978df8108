"""Per-customer settings of the claim: fair-share weights and limits (docs/queue.md, "Fair share across
customers" and "Per-customer limits").

    await queue.limits.set("acme", weight=3)                   # three jobs to a weight-1 customer's one
    await queue.limits.set("acme", max_in_flight=4)            # at most 4 of its jobs leased, fleet-wide
    await queue.limits.set("acme", max_in_flight=2, pool="gpu")  # ... and at most 2 on pool gpu's workers
    await queue.limits.set("acme", rate=2, burst=4)            # at most 2 starts/s, 4 at once after a pause
    await queue.limits.remove("acme", rate=True)               # drop one limit (no flag: every setting)

Weights live in the queue's `fair_weights` hash, read by submit.lua when it tags a job; a change applies to
jobs submitted after it. Limits live in the `limits` hash, read by claim.lua (includes/limit.lua) in the step
that leases a job, so no claim can pass one: a job its customer's limit holds back leaves the line for
`limited` and comes back at its place when the customer may start more (`release_due`, called by the claimer
that meets the `unlimit` answer, by the reaper, and after every change here). Jobs without a customer form the
default customer, named `-` here.
"""

from __future__ import annotations

import re
from collections import defaultdict

from pydantic import BaseModel, Field, ValidationError

from appliance.queue.conn import QueueConnection
from appliance.queue.errors import QueueError
from appliance.queue.models import NAME_PATTERN

#: The default customer's name: jobs without customer_id (never a valid customer id, which starts with a letter
#: or digit).
DEFAULT_CUSTOMER = "-"
CUSTOMER_PATTERN = r"^(?:-|[A-Za-z0-9][A-Za-z0-9_.:-]{0,127})$"
#: Weights range over six orders of magnitude: 10 ms of virtual time / weight stays at least ten score units.
MIN_WEIGHT, MAX_WEIGHT = 0.001, 1000.0
#: Held jobs one unlimit.lua call puts back at most (the client lists as many to learn their shapes).
RELEASE_BATCH = 256
#: Customers one `release_due` pass serves at most (the rest are served by the next claim or reaper pass).
RELEASE_CUSTOMERS = 32
#: Offset of a `limited` member's score text (includes/limit.lua's LIMIT_SCORE_BIAS).
LIMIT_SCORE_BIAS = 4e15


class InvalidLimits(QueueError, ValueError):
    """A customer name or limit failed validation; the message names the field."""


class CustomerLimits(BaseModel):
    customer: str = Field(pattern=CUSTOMER_PATTERN, description="Customer id, or `-` for jobs without one.")
    weight: float = Field(1.0, ge=MIN_WEIGHT, le=MAX_WEIGHT, description="Fair-share weight (default 1).")
    max_in_flight: int | None = Field(
        None, ge=0, le=10**9, description="Most jobs leased at once, fleet-wide."
    )
    pools: dict[str, int] = Field(
        default_factory=dict, description="Most jobs leased at once on one pool's workers, by pool."
    )
    rate: float | None = Field(None, gt=0, le=1e6, description="Most job starts per second (token bucket).")
    burst: float | None = Field(None, ge=1, le=1e9, description="Starts the bucket allows at once (>= 1).")
    #: Read-only state: jobs of a limited customer leased now, and its jobs a limit holds out of line.
    in_flight: int = 0
    held: int = 0

    @property
    def limited(self) -> bool:
        return self.max_in_flight is not None or bool(self.pools) or self.rate is not None


def _validated(**fields: object) -> CustomerLimits:
    try:
        found = CustomerLimits.model_validate(fields)
    except ValidationError as exc:
        problem = exc.errors()[0]
        where = ".".join(str(p) for p in problem["loc"]) or "limits"
        raise InvalidLimits(f"invalid limits: {where}: {problem['msg']}") from None
    for pool, cap in found.pools.items():
        if not re.match(NAME_PATTERN, pool):
            raise InvalidLimits(f"invalid limits: pool {pool!r} is not a pool name")
        if cap < 0:
            raise InvalidLimits(f"invalid limits: pools.{pool}: the cap must be 0 or more")
    return found


def held_member(customer: str, score: str, shape: str, job_id: str) -> str:
    """The `limited` member of a job a limit holds (what includes/limit.lua writes)."""
    return f"{customer}|{max(0.0, float(score) + LIMIT_SCORE_BIAS):017.0f}|{shape}|{job_id}"


def _customer_range(customer: str) -> tuple[str, str]:
    """ZRANGEBYLEX bounds of one customer's members: `c|` up to (not including) `c}` ('}' follows '|')."""
    return f"[{customer}|", f"({customer}}}"


class Limits:
    def __init__(self, conn: QueueConnection) -> None:
        self.conn = conn

    # --- settings ---------------------------------------------------------------------------------------------

    async def set(
        self,
        customer: str | None,
        *,
        weight: float | None = None,
        max_in_flight: int | None = None,
        pool: str | None = None,
        rate: float | None = None,
        burst: float | None = None,
    ) -> CustomerLimits:
        """Change what is given (None keeps it); `max_in_flight` with `pool` caps that pool's workers only.
        Returns the customer's settings after the change; jobs a limit held go back in line if they may start."""
        name = customer or DEFAULT_CUSTOMER
        current = await self.get(name)
        fields = current.model_dump(exclude={"in_flight", "held"})
        if weight is not None:
            fields["weight"] = weight
        if max_in_flight is not None and pool is not None:
            fields["pools"] = {**current.pools, pool: max_in_flight}
        elif max_in_flight is not None:
            fields["max_in_flight"] = max_in_flight
        elif pool is not None:
            raise InvalidLimits(
                "invalid limits: --pool needs --max-in-flight (the cap on that pool's workers)"
            )
        if rate is not None:
            fields["rate"] = rate
            fields["burst"] = burst if burst is not None else (current.burst or max(1.0, rate))
        elif burst is not None:
            if current.rate is None:
                raise InvalidLimits("invalid limits: burst needs a rate (--rate)")
            fields["burst"] = burst
        return await self._write(_validated(**fields), current)

    async def remove(
        self,
        customer: str | None,
        *,
        weight: bool = False,
        max_in_flight: bool = False,
        pool: str | None = None,
        rate: bool = False,
    ) -> CustomerLimits:
        """Drop the named settings (none named: every one) and put back what no limit holds any more."""
        name = customer or DEFAULT_CUSTOMER
        current = await self.get(name)
        every = not (weight or max_in_flight or pool is not None or rate)
        fields = current.model_dump(exclude={"in_flight", "held"})
        if every or weight:
            fields["weight"] = 1.0
        if every or max_in_flight:
            fields["max_in_flight"] = None
        if every:
            fields["pools"] = {}
        elif pool is not None:
            if pool not in current.pools:
                raise InvalidLimits(f"invalid limits: {name} has no cap on pool {pool!r}")
            fields["pools"] = {p: n for p, n in current.pools.items() if p != pool}
        if every or rate:
            fields["rate"] = fields["burst"] = None
        return await self._write(_validated(**fields), current)

    async def _write(self, updated: CustomerLimits, current: CustomerLimits) -> CustomerLimits:
        name, k = updated.customer, self.conn.keys
        pipe = self.conn.client.pipeline(transaction=False)
        if updated.weight == 1.0:
            pipe.hdel(k.fair_weights, name)
        else:
            pipe.hset(k.fair_weights, name, repr(updated.weight))
        gone = [f"{name}|pool|{p}" for p in current.pools if p not in updated.pools]
        values: dict[str, str] = {f"{name}|pool|{p}": str(n) for p, n in updated.pools.items()}
        if updated.max_in_flight is None:
            gone.append(f"{name}|cap")
        else:
            values[f"{name}|cap"] = str(updated.max_in_flight)
        if updated.pools:
            values[f"{name}|pools"] = ",".join(sorted(updated.pools))
        else:
            gone.append(f"{name}|pools")
        if updated.rate is None:
            gone.append(f"{name}|rate")
        else:
            values[f"{name}|rate"] = f"{updated.rate!r}|{updated.burst!r}"
        # Fields are written before they are counted: a claim between the two already charges what it leases.
        if values:
            pipe.hset(k.limits, mapping=values)
        if gone:
            pipe.hdel(k.limits, *gone)
        await pipe.execute()
        await self.conn.run(self.conn.prepare("limits_count", [name]))
        await self.release(name)
        return await self.get(name)

    async def get(self, customer: str | None) -> CustomerLimits:
        name = customer or DEFAULT_CUSTOMER
        _validated(customer=name)
        k = self.conn.keys
        pipe = self.conn.client.pipeline(transaction=False)
        pipe.hget(k.fair_weights, name)
        pipe.hmget(k.limits, [f"{name}|cap", f"{name}|pools", f"{name}|rate"])
        pipe.hget(k.inflight, name)
        pipe.zlexcount(k.limited, *_customer_range(name))
        weight, (cap, pools, rate), in_flight, held = await pipe.execute()
        names = [p for p in (pools or "").split(",") if p]
        caps = await self.conn.client.hmget(k.limits, [f"{name}|pool|{p}" for p in names]) if names else []
        r, _, b = (rate or "").partition("|")
        return CustomerLimits(
            customer=name,
            weight=float(weight) if weight is not None else 1.0,
            max_in_flight=int(cap) if cap is not None else None,
            pools={p: int(c) for p, c in zip(names, caps, strict=True) if c is not None},
            rate=float(r) if r else None,
            burst=float(b) if b else None,
            in_flight=int(in_flight or 0),
            held=int(held),
        )

    async def list(self) -> list[CustomerLimits]:
        """Every customer with a setting other than the defaults, by name."""
        client, k = self.conn.client, self.conn.keys
        names = set(await client.hkeys(k.fair_weights))
        names |= {str(f).split("|", 1)[0] for f in await client.hkeys(k.limits)}
        return [await self.get(name) for name in sorted(names)]

    # --- held jobs --------------------------------------------------------------------------------------------

    async def release(self, customer: str) -> int:
        """Put back in line as many of the customer's held jobs as its limits let start now; returns how many."""
        client, k = self.conn.client, self.conn.keys
        back = 0
        for _ in range(1000):  # each round puts back up to RELEASE_BATCH, or learns new shapes
            members = await client.zrangebylex(
                k.limited, *_customer_range(customer), start=0, num=RELEASE_BATCH
            )
            shapes = list(dict.fromkeys(str(m).split("|", 3)[2] for m in members))
            args = [customer, self.conn.wake_check, RELEASE_BATCH, *shapes]
            put, more = await self.conn.run(self.conn.prepare("unlimit", args, candidates=shapes))
            back += int(put)
            if not int(more):
                break
        return back

    async def release_due(self) -> int | None:
        """Serve the customers whose held jobs are due back in line; returns ms until the next one is due
        (None: none is). The claim answers `unlimit` while one is due; the reaper calls this on each pass."""
        client, k = self.conn.client, self.conn.keys
        now = await self.conn.server_time_ms()
        due = await client.zrangebyscore(k.limits_due, "-inf", now, start=0, num=RELEASE_CUSTOMERS)
        for customer in due:
            await self.release(str(customer))
        upcoming = await client.zrange(k.limits_due, 0, 0, withscores=True)
        if not upcoming:
            return None
        return max(0, int(upcoming[0][1]) - await self.conn.server_time_ms())

    async def holding(self, job_id: str, customer: str | None, shape: str, score: str) -> str | None:
        """Which limit holds a waiting job out of line, in words, or None when no limit holds it."""
        name = customer or DEFAULT_CUSTOMER
        member = held_member(name, score, shape, job_id)
        if await self.conn.client.zscore(self.conn.keys.limited, member) is None:
            return None
        return await self.binding(name)

    async def binding(self, customer: str) -> str:
        """The limit that keeps a customer from starting more now: e.g. `customer acme at in-flight cap 4/4`."""
        client, k = self.conn.client, self.conn.keys
        found = await self.get(customer)
        if found.max_in_flight is not None and found.in_flight >= found.max_in_flight:
            return f"customer {customer} at in-flight cap {found.in_flight}/{found.max_in_flight}"
        if found.pools:
            counts = await client.hmget(k.inflight, [f"{customer}|{p}" for p in found.pools])
            full = [
                f"{p} {int(n or 0)}/{cap}"
                for (p, cap), n in zip(found.pools.items(), counts, strict=True)
                if int(n or 0) >= cap
            ]
            if full:
                return f"customer {customer} at pool cap " + ", ".join(full)
        if found.rate is not None:
            return f"customer {customer} at rate {found.rate:g}/s (burst {found.burst or 1:g})"
        return f"customer {customer}'s limits (going back in line)"

    async def held_by_customer(self) -> dict[str, int]:
        """Customers with jobs a limit holds out of line -> how many (one ZLEXCOUNT per limited customer)."""
        client, k = self.conn.client, self.conn.keys
        names = {str(f).split("|", 1)[0] for f in await client.hkeys(k.limits)}
        counts: dict[str, int] = defaultdict(int)
        for name in sorted(names):
            held = int(await client.zlexcount(k.limited, *_customer_range(name)))
            if held:
                counts[name] = held
        return dict(counts)
