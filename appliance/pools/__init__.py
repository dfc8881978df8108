"""Resource pools: which pool a job belongs to (`classify`) and how many machines each pool should have
(`read_pool_signals`, `PoolSignalsCollector`). Signals only: something else (KEDA, HPA, the Nomad autoscaler, a
cloud API) acts on them. docs/monitoring.md explains the formula."""

from typing import TYPE_CHECKING, Any

from appliance.pools.classifier import (
    classifier_for,
    classify,
    connect_queue,
    declared_cost_s,
    payload_bytes,
    rule_matches,
)
from appliance.pools.signals import (
    PoolReport,
    PoolSignals,
    desired_machines,
    percentile,
    read_pool_signals,
)

if TYPE_CHECKING:
    from appliance.pools.collector import PoolSignalsCollector


def __getattr__(name: str) -> Any:
    # The collector pulls in prometheus_client: only the monitor needs it, not every CLI command that classifies.
    if name == "PoolSignalsCollector":
        from appliance.pools.collector import PoolSignalsCollector

        return PoolSignalsCollector
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = [
    "PoolReport",
    "PoolSignals",
    "PoolSignalsCollector",
    "classifier_for",
    "classify",
    "connect_queue",
    "declared_cost_s",
    "desired_machines",
    "payload_bytes",
    "percentile",
    "read_pool_signals",
    "rule_matches",
]
