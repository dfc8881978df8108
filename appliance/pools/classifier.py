"""The job classifier: assigns a pool at submit time to a job that does not name one.

Rules come from `Settings.classifier` and are tried in order; the first rule whose every set condition holds
picks the pool, else `classifier.default_pool`. A job that names a pool (`pool` or `requirements.pool`) keeps it.

The *declared cost* of a job is the run time its submitter expects, in seconds: `payload["declared_cost_s"]`
when that is a number, else the job's `timeout_s` (an upper bound the submitter committed to). A job that
declares neither matches no rule with a cost condition.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from functools import partial
from typing import Any

from appliance.config import PoolRule, Settings
from appliance.queue import Queue, factory
from appliance.queue.models import JobSpec

#: Payload key through which a submitter declares the expected run time (s).
DECLARED_COST_KEY = "declared_cost_s"


def declared_cost_s(spec: JobSpec) -> float | None:
    value = spec.payload.get(DECLARED_COST_KEY)
    if isinstance(value, int | float) and not isinstance(value, bool) and value >= 0:
        return float(value)
    return spec.timeout_s


def payload_bytes(spec: JobSpec) -> int:
    """Size of the payload as it travels (compact JSON, UTF-8)."""
    return len(json.dumps(spec.payload, separators=(",", ":"), default=str).encode())


def rule_matches(
    rule: PoolRule, spec: JobSpec, *, cost: float | None = None, size: int | None = None
) -> bool:
    """True when every condition the rule sets holds for the job (a rule without conditions matches all)."""
    if rule.service is not None and spec.service != rule.service:
        return False
    if rule.workflow_id is not None and spec.workflow_id != rule.workflow_id:
        return False
    if rule.min_declared_cost_s is not None or rule.max_declared_cost_s is not None:
        cost = declared_cost_s(spec) if cost is None else cost
        if cost is None:
            return False
        if rule.min_declared_cost_s is not None and cost < rule.min_declared_cost_s:
            return False
        if rule.max_declared_cost_s is not None and cost >= rule.max_declared_cost_s:
            return False
    if rule.min_payload_bytes is not None or rule.max_payload_bytes is not None:
        size = payload_bytes(spec) if size is None else size
        if rule.min_payload_bytes is not None and size < rule.min_payload_bytes:
            return False
        if rule.max_payload_bytes is not None and size >= rule.max_payload_bytes:
            return False
    return True


def pick_pool(spec: JobSpec, settings: Settings) -> str:
    """The pool the rules give the job (ignores a pool the job names)."""
    cost = declared_cost_s(spec)
    size: int | None = None
    for rule in settings.classifier.rules:
        if size is None and (rule.min_payload_bytes is not None or rule.max_payload_bytes is not None):
            size = payload_bytes(spec)  # serialise the payload only when some rule asks
        if rule_matches(rule, spec, cost=cost, size=size):
            return rule.pool
    return settings.classifier.default_pool


def classify(spec: JobSpec, settings: Settings) -> JobSpec:
    """The job with its pool set: unchanged if it names one, else the first matching rule's pool."""
    if spec.pool or spec.requirements.pool:
        return spec
    return spec.model_copy(update={"pool": pick_pool(spec, settings)})


def explain(spec: JobSpec, settings: Settings) -> dict[str, Any]:
    """Why a job lands where it does (for `appliance pools classify`)."""
    if spec.pool or spec.requirements.pool:
        return {"pool": spec.pool or spec.requirements.pool, "reason": "named by the job"}
    cost, size = declared_cost_s(spec), payload_bytes(spec)
    for i, rule in enumerate(settings.classifier.rules):
        if rule_matches(rule, spec, cost=cost, size=size):
            return {
                "pool": rule.pool,
                "reason": f"classifier.rules.{i}",
                "rule": rule.model_dump(exclude_none=True),
                "declared_cost_s": cost,
                "payload_bytes": size,
            }
    return {
        "pool": settings.classifier.default_pool,
        "reason": "classifier.default_pool",
        "declared_cost_s": cost,
        "payload_bytes": size,
    }


def classifier_for(settings: Settings) -> Callable[[JobSpec], JobSpec] | None:
    """The submit-time classifier the settings ask for (None while `classifier.enabled` is false)."""
    return partial(classify, settings=settings) if settings.classifier.enabled else None


async def connect_queue(settings: Settings, **redis_kwargs: Any) -> Queue:
    """A queue connected as `settings` say (URL, credentials, queue name, timing) whose `submit` and
    `submit_many` classify like `appliance job submit` does: the way to submit from Python with the
    configured pools. `redis_kwargs` go to the Redis client (socket timeouts, say)."""
    return await factory.connect_queue(settings, classifier=classifier_for(settings), **redis_kwargs)
