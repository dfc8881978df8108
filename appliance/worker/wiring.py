"""From settings and a slot to the parts one worker process runs: connector options, storage, capabilities.

Secrets (API keys, the S3 secret) are read here from their `*_file` settings or `$CREDENTIALS_DIRECTORY`, and
go straight into the connector or storage object: never into a job payload, a log line or the worker status.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, cast

from appliance.config import RedisConnection, Settings
from appliance.identity import WorkerSlot
from appliance.netaddr import connect_host
from appliance.queue import Capabilities, Queue, factory
from appliance.queue.multi import QueueSet
from appliance.worker.connectors import ConnectorCapabilities, ConnectorOptions, connector_options
from appliance.worker.storage import LocalStorage, OutputStorage

#: How often the backing service is probed while it answers (s): local services are cheap to ask, remote APIs
#: are asked rarely (a failed job triggers an immediate probe anyway).
LOCAL_HEALTH_INTERVAL_S = 2.0
REMOTE_HEALTH_INTERVAL_S = 30.0
#: How often it is probed while it does not answer (s).
DOWN_HEALTH_INTERVAL_S = 2.0
#: Connectors whose service runs on this machine.
LOCAL_CONNECTORS = ("comfyui", "echo")


class WiringError(ValueError):
    """The settings cannot run this slot (unknown connector, missing secret); the message names the key."""


@dataclass(frozen=True)
class WorkerParts:
    """What the runtime needs to know about its connector beyond the connector object itself."""

    connector: str
    options: ConnectorOptions
    #: Jobs at once (before the connector's own limit applies).
    concurrency: int
    #: Run-time limit of a job that sets none (s).
    default_timeout_s: float
    health_interval_s: float


def worker_parts(
    settings: Settings,
    slot: WorkerSlot,
    *,
    concurrency: int | None = None,
    env: Mapping[str, str] = os.environ,
) -> WorkerParts:
    """Connector options for `slot`: ComfyUI on base_port + N for GPU slots, `connectors.<name>` otherwise."""
    if slot.gpu:
        c = settings.comfyui
        host = connect_host(c.listen)
        options = connector_options(
            "comfyui",
            ConnectorOptions(
                base_url=f"http://{host}:{c.base_port + slot.index}",
                default_timeout_s=c.default_job_timeout_s,
                concurrency=1,
                extra={"request_timeout_s": c.request_timeout_s},
            ),
        )
        # One ComfyUI runs one prompt at a time: more would only queue inside ComfyUI, out of our sight.
        return WorkerParts("comfyui", options, 1, c.default_job_timeout_s, LOCAL_HEALTH_INTERVAL_S)
    conf = settings.connectors.get(slot.connector)
    if conf is None:
        raise WiringError(
            f"unknown connector {slot.connector!r} (known: {', '.join(sorted(settings.connectors))})"
        )
    try:
        api_key = conf.resolve_api_key(slot.connector, env=env)
    except Exception as exc:  # SecretError: names the file, never the content
        raise WiringError(f"connectors.{slot.connector}.api_key: {exc}") from None
    wanted = concurrency if concurrency is not None else conf.concurrency
    if wanted < 1:
        raise WiringError(f"--concurrency must be 1 or more, not {wanted}")
    try:
        options = connector_options(
            slot.connector,
            ConnectorOptions(
                base_url=conf.base_url,
                api_key=api_key,
                default_timeout_s=conf.default_timeout_s,
                concurrency=wanted,
                extra={**conf.extra, **({"endpoint_id": conf.endpoint_id} if conf.endpoint_id else {})},
            ),
        )
    except ValueError as exc:  # the connector's own options: named keys, never a value (could be secret)
        raise WiringError(f"connectors.{slot.connector}: {exc}") from None
    interval = LOCAL_HEALTH_INTERVAL_S if slot.connector in LOCAL_CONNECTORS else REMOTE_HEALTH_INTERVAL_S
    return WorkerParts(slot.connector, options, wanted, conf.default_timeout_s, interval)


def build_storage(settings: Settings, env: Mapping[str, str] = os.environ) -> OutputStorage:
    """The output storage of `storage.*` (local directory or S3 bucket)."""
    s = settings.storage
    if s.backend == "local":
        return LocalStorage(s.local_dir)
    from appliance.worker.storage import S3Settings, S3Storage

    s3 = s.s3
    assert s3.bucket is not None  # the settings validator requires it for the s3 backend
    try:
        secret = s3.resolve_secret_access_key(env=env)
    except Exception as exc:
        raise WiringError(f"storage.s3.secret_access_key: {exc}") from None
    return S3Storage(
        S3Settings(
            bucket=s3.bucket,
            endpoint_url=s3.endpoint_url,
            region=s3.region,
            access_key_id=s3.access_key_id,
            secret_access_key=secret,
            prefix=s3.prefix,
            presign_expires_s=None if s3.public_base_url else s3.presign_expiry_s,
        )
    )


def build_capabilities(
    settings: Settings,
    found: ConnectorCapabilities,
    *,
    slot: WorkerSlot | None = None,
    ram_gb: float = 0.0,
    cpu_cores: int = 0,
) -> Capabilities:
    """The queue Capabilities: what the connector reports, what the machine has, what the config overrides.

    The machine type follows the slot, as the service plan does: a GPU slot runs only on a gpu machine, a
    connector slot only on an api machine. A GPU slot is bound to one GPU unless `gpu_count` says more."""
    o = settings.worker.capabilities
    gpu_slot = slot is not None and slot.gpu
    models: dict[str, list[str]] | str = {k: list(v) for k, v in found.models.items()}
    if o.models is not None:
        models = o.models
    tags = sorted({*settings.machine.tags, *o.tags})
    data: dict[str, Any] = {
        "services": list(found.services),
        "gpu_memory_gb": o.gpu_memory_gb if o.gpu_memory_gb is not None else (found.gpu_memory_gb or 0.0),
        "ram_gb": o.ram_gb if o.ram_gb is not None else ram_gb,
        "cpu_cores": o.cpu_cores if o.cpu_cores is not None else cpu_cores,
        "gpu_count": o.gpu_count if o.gpu_count is not None else (1 if gpu_slot else 0),
        "machine_type": None if slot is None else ("gpu" if gpu_slot else "api"),
        "models": models,
        "customer_isolation": o.customer_isolation or "none",
        "allowed_customers": list(o.allowed_customers or []),
        "denied_customers": list(o.denied_customers or []),
        "pool": settings.machine.pool,
        "region": settings.machine.region,
        "tags": tags,
        "workflow_id": o.workflow_id,
    }
    return Capabilities.model_validate(data)


def machine_resources() -> tuple[float, int]:
    """(RAM in GiB, CPU cores) of this machine, for matching jobs that require them."""
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 0)
    try:
        pages, page_size = os.sysconf("SC_PHYS_PAGES"), os.sysconf("SC_PAGE_SIZE")
        ram = round(pages * page_size / 1024**3, 1)
    except (ValueError, OSError):
        ram = 0.0
    return ram, cores


async def connect_queue(connection: RedisConnection, settings: Settings) -> Queue:
    """The worker's queue client: few client-side retries, short socket timeouts."""
    from redis.asyncio.retry import Retry
    from redis.backoff import ExponentialWithJitterBackoff

    names = list(dict.fromkeys(settings.worker.queues)) or [settings.redis.queue]
    # Few client-side retries: the worker has its own backoff and must notice an outage quickly.
    first = await factory.connect_queue(
        settings,
        queue_name=names[0],
        connection=connection,
        retry=Retry(ExponentialWithJitterBackoff(base=0.05, cap=0.5), 2),
        socket_timeout=5.0,
        socket_connect_timeout=5.0,
    )
    if len(names) == 1:
        return first
    # Several queues (worker.queues): one client, each queue its own keys; the runtime drives them as one.
    others = [
        Queue(
            first.client, queue_name=n, settings=settings.queue, scripts=first.scripts, cluster=first.cluster
        )
        for n in names[1:]
    ]
    return cast(Queue, QueueSet([first, *others]))
