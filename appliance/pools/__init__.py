"""Resource pools: which pool a job belongs to (`classify`) and how many machines each pool should have
(`read_pool_signals`, `PoolSignalsCollector`). Signals only: something else (KEDA, HPA, the Nomad autoscaler, a
cloud API) acts on them. docs/monitoring.md explains the formula."""

from appliance.pools.classifier import (
    classifier_for,
    classify,
    connect_queue,
    declared_cost_s,
    payload_bytes,
    rule_matches,
)
from appliance.pools.collector import PoolSignalsCollector
from appliance.pools.signals import (
    PoolReport,
    PoolSignals,
    desired_machines,
    percentile,
    read_pool_signals,
)

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
