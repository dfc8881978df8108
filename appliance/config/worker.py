"""The `worker` section: how a worker process claims and drains, and the capabilities it offers."""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from appliance.config.section import Section


class CapabilityOverrides(Section):
    """Values that replace what the worker detects; unset ones keep the detected value."""

    gpu_memory_gb: float | None = Field(default=None, ge=0, description="GPU memory offered, in GiB.")
    ram_gb: float | None = Field(default=None, ge=0, description="RAM offered, in GiB.")
    cpu_cores: int | None = Field(default=None, ge=0, description="CPU cores offered.")
    gpu_count: int | None = Field(
        default=None,
        ge=0,
        description="GPUs bound to each worker, matched against a job's `requirements.gpu_count`; "
        "default 1 for a GPU slot (one ComfyUI per GPU) and 0 for a connector slot. Set it for a worker "
        "whose service runs on several GPUs (a multi-GPU remote endpoint, a ComfyUI given two GPUs).",
    )
    models: dict[str, list[str]] | Literal["all"] | None = Field(
        default=None, description='Models per service (`{"comfyui": ["sdxl.safetensors"]}`), or "all".'
    )
    customer_isolation: Literal["strict", "loose", "none"] | None = Field(
        default=None,
        description="`strict`: only jobs of allowed customers; `loose`: prefer them; `none`: any customer.",
    )
    allowed_customers: list[str] | None = Field(
        default=None, description="Customers whose jobs this worker may run."
    )
    denied_customers: list[str] | None = Field(
        default=None, description="Customers whose jobs this worker never runs."
    )
    tags: list[str] = Field(default_factory=list, description="Tags added to the machine's tags.")
    workflow_id: str | None = Field(default=None, description="Pin the worker to jobs of this workflow.")


class WorkerSettings(Section):
    drain_grace_s: float = Field(
        default=30,
        ge=0,
        description="On stop, how long running jobs may finish before they "
        "are handed back to the queue, in seconds.",
    )
    claim_timeout_s: float = Field(
        default=5,
        gt=0,
        description="How long one wait for matching work blocks before the "
        "worker re-checks its state, in seconds.",
    )
    concurrency: int = Field(default=1, ge=1, description="Jobs one worker process runs at once.")
    queues: list[str] = Field(
        default_factory=list,
        description="Queues one worker process serves (default: `redis.queue` alone). It registers in each and "
        "claims from them in turn, one queue after the other while each has work; `appliance worker --queues`.",
    )
    capabilities: CapabilityOverrides = Field(
        default_factory=CapabilityOverrides, description="Overrides of detected capabilities."
    )
