"""Per-customer settings of the claim order: fair-share weights (docs/queue.md, "Fair share").

    await queue.limits.set("acme", weight=3)     # acme gets three jobs to a weight-1 customer's one
    await queue.limits.get("acme")               # CustomerLimits(customer='acme', weight=3.0)

Weights live in the queue's `fair_weights` hash, read by submit.lua when it tags a job; a change applies to
jobs submitted after it. Jobs without a customer form the default customer, named `-` here.
"""

from __future__ import annotations

from pydantic import BaseModel, Field, ValidationError

from appliance.queue.conn import QueueConnection
from appliance.queue.errors import QueueError

#: The default customer's name: jobs without customer_id (never a valid customer id, which starts with a letter
#: or digit).
DEFAULT_CUSTOMER = "-"
CUSTOMER_PATTERN = r"^(?:-|[A-Za-z0-9][A-Za-z0-9_.:-]{0,127})$"
#: Weights range over six orders of magnitude: 10 ms of virtual time / weight stays at least ten score units.
MIN_WEIGHT, MAX_WEIGHT = 0.001, 1000.0


class InvalidLimits(QueueError, ValueError):
    """A customer name or limit failed validation; the message names the field."""


class CustomerLimits(BaseModel):
    customer: str = Field(pattern=CUSTOMER_PATTERN, description="Customer id, or `-` for jobs without one.")
    weight: float = Field(1.0, ge=MIN_WEIGHT, le=MAX_WEIGHT, description="Fair-share weight (default 1).")


def _validated(**fields: object) -> CustomerLimits:
    try:
        return CustomerLimits.model_validate(fields)
    except ValidationError as exc:
        problem = exc.errors()[0]
        where = ".".join(str(p) for p in problem["loc"]) or "limits"
        raise InvalidLimits(f"invalid limits: {where}: {problem['msg']}") from None


class Limits:
    def __init__(self, conn: QueueConnection) -> None:
        self.conn = conn

    async def set(self, customer: str | None, *, weight: float | None = None) -> CustomerLimits:
        """Change what is given (None keeps it); returns the customer's limits after the change."""
        name = customer or DEFAULT_CUSTOMER
        current = await self.get(name)
        updated = _validated(customer=name, weight=current.weight if weight is None else weight)
        k = self.conn.keys
        if updated.weight == 1.0:
            await self.conn.client.hdel(k.fair_weights, name)
        else:
            await self.conn.client.hset(k.fair_weights, name, repr(updated.weight))
        return updated

    async def get(self, customer: str | None) -> CustomerLimits:
        name = customer or DEFAULT_CUSTOMER
        _validated(customer=name)
        weight = await self.conn.client.hget(self.conn.keys.fair_weights, name)
        return CustomerLimits(customer=name, weight=float(weight) if weight is not None else 1.0)

    async def list(self) -> list[CustomerLimits]:
        """Every customer with a setting other than the defaults, by name."""
        weights = await self.conn.client.hgetall(self.conn.keys.fair_weights)
        return [CustomerLimits(customer=str(c), weight=float(w)) for c, w in sorted(weights.items())]
