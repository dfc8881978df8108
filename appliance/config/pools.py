"""The `pools` and `classifier` sections: the machine pools and the rules that assign a job to one."""

from __future__ import annotations

from pydantic import Field

from appliance.config.section import Section


class PoolSettings(Section):
    description: str = Field(default="", description="What the pool is for.")
    target_drain_s: float = Field(
        default=300,
        gt=0,
        description="The backlog of this pool should drain within this "
        "many seconds; the scaling advice aims for it.",
    )
    min_machines: int = Field(default=0, ge=0, description="Fewest machines the pool keeps.")
    max_machines: int | None = Field(
        default=None, ge=0, description="Most machines the pool may have; unset: no limit."
    )
    machine_capacity: int = Field(default=1, ge=1, description="Jobs one machine of this pool runs at once.")


def _default_pools() -> dict[str, PoolSettings]:
    return {
        "fast": PoolSettings(description="Short jobs: API calls, small images.", target_drain_s=60),
        "standard": PoolSettings(description="Typical image jobs.", target_drain_s=300),
        "heavy": PoolSettings(description="Long jobs: video, large batches.", target_drain_s=1800),
    }


class PoolRule(Section):
    """One classifier rule: every condition that is set must hold; the first matching rule picks the pool."""

    pool: str = Field(description="Pool a matching job goes to.")
    service: str | None = Field(default=None, description="Job service equals this.")
    workflow_id: str | None = Field(default=None, description="Job workflow id equals this.")
    min_declared_cost_s: float | None = Field(
        default=None, ge=0, description="Declared run time at least this, in seconds."
    )
    max_declared_cost_s: float | None = Field(
        default=None, ge=0, description="Declared run time below this, in seconds."
    )
    min_payload_bytes: int | None = Field(
        default=None, ge=0, description="Payload JSON at least this many bytes."
    )
    max_payload_bytes: int | None = Field(
        default=None, ge=0, description="Payload JSON below this many bytes."
    )


class ClassifierSettings(Section):
    enabled: bool = Field(
        default=False,
        description="Assign a pool at submit time to jobs that name none. Enable "
        "it once machines declare `machine.pool`: a job with a pool runs only on that pool's workers.",
    )
    default_pool: str = Field(default="standard", description="Pool of a job no rule matches.")
    rules: list[PoolRule] = Field(
        default_factory=lambda: [
            PoolRule(pool="fast", max_declared_cost_s=30),
            PoolRule(pool="heavy", min_declared_cost_s=600),
        ],
        description="Rules tried in order; a job submitted with an explicit pool skips them.",
    )
