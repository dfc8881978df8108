"""Settings of every appliance process: one typed schema, loaded from env > config file > defaults.

The schema is the only place a setting is declared: `load_settings` derives the environment variable names from it,
and `python -m appliance.config.doc` renders docs/configuration.md from it. Unknown keys are errors everywhere
(`extra="forbid"`), so a misspelt setting fails at start instead of being silently ignored. Every duration names
its unit in the key (`_s`, `_ms`).

Environment variables (parsed by `appliance.config.load`):
- `APPLIANCE_<SECTION>__<KEY>[__<SUBKEY>...]`, the canonical form: nested keys joined by `__`
  (`APPLIANCE_REDIS__URL`, `APPLIANCE_CONNECTORS__OPENAI__API_KEY_FILE`).
- `APPLIANCE_<SECTION>_<KEY>`, the short form: the same path joined by single `_` (`APPLIANCE_REDIS_URL`,
  `APPLIANCE_HEALTH_PORT`), accepted when exactly one setting has that spelling. Connectors also answer to
  `APPLIANCE_<CONNECTOR>_<KEY>` (`APPLIANCE_OPENAI_API_KEY_FILE`), and `APPLIANCE_LOG_LEVEL` sets `logging.level`.
- Values of lists, tables and whole sections are JSON; an empty value sets an optional setting to null.
"""

from __future__ import annotations

import os
import re
import socket
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Any, Literal
from urllib.parse import parse_qs, urlsplit

from pydantic import BaseModel, ConfigDict, Field, SecretStr, field_validator, model_validator

from appliance.config.queue import QueueSettings
from appliance.secrets import SecretError, credential_name, read_secret, split_url_password

__all__ = [
    "ConfigError",
    "ConnectorSettings",
    "LoadedSettings",
    "RedisConnection",
    "Settings",
    "redacted_dump",
]

#: Connectors the worker knows how to run; `connectors.<name>` accepts only these names.
KNOWN_CONNECTORS = ("openai", "replicate", "runpod", "echo")


class ConfigError(Exception):
    """Invalid configuration. `errors` holds one line per problem, each naming the key, its source and what was expected."""

    def __init__(self, errors: list[str]) -> None:
        super().__init__("\n".join(errors))
        self.errors = errors


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_default=True)


@dataclass(frozen=True)
class RedisConnection:
    """Where to connect, with the password kept apart from the URL so it never lands in argv or logs."""

    url: str
    password: str | None
    username: str | None
    tls_ca_file: Path | None

    def client_kwargs(self) -> dict[str, Any]:
        """Keyword arguments for `redis.asyncio.Redis.from_url(self.url, **kwargs)`."""
        kwargs: dict[str, Any] = {}
        if self.password is not None:
            kwargs["password"] = self.password
        if self.username is not None:
            kwargs["username"] = self.username
        if self.tls_ca_file is not None:
            kwargs["ssl_ca_certs"] = str(self.tls_ca_file)
        return kwargs


def check_database(url: str) -> None:
    """Raise ValueError naming the problem when `url` selects no valid database number.

    redis-py ignores a path it cannot read (`redis://host/x` connects to db 0, `redis://host/1/2` to db 12):
    a typo would silently share another database's keys.
    """
    parts = urlsplit(url)
    if parts.scheme in ("redis", "rediss"):
        path = parts.path[1:] if parts.path.startswith("/") else parts.path
        if path and not (path.isascii() and path.isdigit()):
            raise ValueError(
                f"the path of {parts.scheme}://… must be a database number (e.g. /0), not /{path}"
            )
    for value in parse_qs(parts.query).get("db", []):
        if not (value.isascii() and value.isdigit()):
            raise ValueError(f"db={value} in the Redis URL is not a database number")


def check_redis_url(url: str) -> str:
    """`url` if redis-py can connect with it; else ValueError with one line saying what is wrong (password hidden).

    redis-py itself only complains when it connects, with a traceback from deep inside (a scheme it does not know,
    a port beyond 65535 from urllib): checked here, every process and `config check` name the mistake at once.
    """
    from urllib.parse import urlsplit

    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError as exc:  # urllib: "Port out of range 0-65535", "Port could not be cast to integer ..."
        raise ValueError(str(exc).lower()) from None
    if parts.scheme not in ("redis", "rediss", "unix"):
        got = f"{parts.scheme}://" if parts.scheme and "//" in url else "none"
        raise ValueError(
            f"the scheme must be redis://, rediss:// or unix:// (got {got}), e.g. redis://127.0.0.1:6379/0"
        )
    if parts.scheme == "unix":
        if not parts.path:
            raise ValueError("a unix:// URL needs the socket path, e.g. unix:///run/redis.sock")
        return url
    if not parts.hostname:
        raise ValueError("no host, e.g. redis://127.0.0.1:6379/0")
    if port == 0:
        raise ValueError("port 0 is not a port Redis listens on (1-65535)")
    database = parts.path.strip("/")
    if database and not database.isdigit():
        raise ValueError(f"the path must be a database number (e.g. /0), not /{database}")
    return url


class RedisSettings(_Section):
    url: str = Field(
        default="redis://127.0.0.1:6379/0",
        description="Redis URL (redis://, rediss:// or unix://; port 1-65535; path: a database number), "
        "checked when settings load. "
        "A password written into the URL is moved to `redis.password` so the URL is safe to log.",
    )
    username: str | None = Field(default=None, description="Redis ACL user name (Redis 6+).")
    password: SecretStr | None = Field(
        default=None,
        description="Redis password. Prefer `password_file` or the `redis-password` systemd credential.",
    )
    password_file: Path | None = Field(
        default=None, description="File holding the Redis password (one line)."
    )
    tls_ca_file: Path | None = Field(
        default=None, description="CA bundle to verify the server of a rediss:// URL."
    )
    queue: str = Field(
        default="default",
        min_length=1,
        description="Name of the job queue; all Redis keys of one queue share one hash tag.",
    )

    @field_validator("url")
    @classmethod
    def _valid_url(cls, value: str) -> str:
        value = check_redis_url(value)
        check_database(value)
        return value

    @model_validator(mode="after")
    def _password_out_of_url(self) -> RedisSettings:
        url, password = split_url_password(self.url)
        if password is not None:
            if self.password is not None:
                raise ValueError("the password is given both inside redis.url and as redis.password")
            self.url, self.password = url, SecretStr(password)
        return self

    def connection(self, env: Any = os.environ) -> RedisConnection:
        """Resolve the password (inline, `password_file`, `$CREDENTIALS_DIRECTORY/redis-password`)."""
        password = read_secret(
            credential_name("redis.password"), file=self.password_file, inline=self.password, env=env
        )
        return RedisConnection(self.url, password, self.username, self.tls_ca_file)


#: Longest machine id: `<machine id>-<slot>` must still be a valid worker id (ID_PATTERN, 128 characters).
MACHINE_ID_MAX = 96
MACHINE_ID_RE = re.compile(rf"[A-Za-z0-9][A-Za-z0-9_.:-]{{0,{MACHINE_ID_MAX - 1}}}")


class MachineSettings(_Section):
    id: str = Field(
        default_factory=socket.gethostname,
        min_length=1,
        description="Machine id (letters, digits and `_ . : -`, at most 96 characters); worker ids are "
        "`<machine id>-<slot>`. Defaults to the host name.",
        json_schema_extra={"doc_default": "host name"},
    )

    @field_validator("id")
    @classmethod
    def _safe_id(cls, value: str) -> str:
        # The id lands in the lease owner field (`token|worker|claimed_ms`), JSON error records, channel names
        # and log lines: only characters that need no escaping anywhere, like job ids. Worker ids are
        # `<machine id>-<slot>`, so the machine id leaves room for the slot within the 128 of an id.
        if not MACHINE_ID_RE.fullmatch(value):
            raise ValueError(
                "not a valid machine id: letters, digits and _ . : - only, starting with a "
                f"letter or digit, at most {MACHINE_ID_MAX} characters"
            )
        return value

    type: Literal["auto", "gpu", "api"] = Field(
        default="auto",
        description="`gpu` runs ComfyUI + one worker per GPU; `api` runs the enabled API connectors; `auto` "
        "asks NVML at startup: GPUs found means `gpu`, none (or no NVML) means `api`.",
    )
    pool: str | None = Field(
        default=None, description="Pool this machine serves (see `pools`); none serves every pool."
    )
    region: str | None = Field(default=None, description="Region label, matched against job requirements.")
    tags: list[str] = Field(
        default_factory=list, description="Free-form labels, matched against job requirements."
    )
    status_interval_s: float = Field(
        default=15, gt=0, description="How often the machine publishes its status, in seconds."
    )
    registration_ttl_s: float = Field(
        default=60,
        gt=0,
        description="Lifetime of the machine's registration key in Redis, "
        "in seconds; refreshed every status interval.",
    )
    container_mode: bool = Field(
        default=False,
        description="Supervised container mode, for containers without "
        "systemd: `appliance machine` starts the service plan's processes itself (ComfyUI "
        "and the workers), restarts them and stops them. Not the units' `--container-mode` "
        "(systemd as PID 1, FailureAction=exit).",
    )
    restart_delay_s: float = Field(
        default=2,
        gt=0,
        description="Container mode: delay before a process that exited "
        "is restarted, in seconds; doubles with each quick failure up to "
        "`restart_max_delay_s`.",
    )
    restart_max_delay_s: float = Field(
        default=60,
        gt=0,
        description="Container mode: longest delay between restarts of one process, in seconds.",
    )
    restart_limit_burst: int = Field(
        default=5,
        ge=0,
        description="Container mode: restarts of one process allowed "
        "within `restart_limit_interval_s`; one more and the service has failed.",
    )
    restart_limit_interval_s: float = Field(
        default=600, gt=0, description="Container mode: window of `restart_limit_burst`, in seconds."
    )
    exit_on_service_failure: bool = Field(
        default=True,
        description="Container mode: when a service failed past its "
        "restart limit, stop everything and exit with status 70, so the container "
        "exits and its platform replaces it.",
    )
    gpu_cpu_mode: bool = Field(
        default=False,
        description="Development: treat a machine without GPUs as a GPU machine with one CPU-run ComfyUI.",
    )
    gpus: list[Annotated[int, Field(ge=0)]] | None = Field(
        default=None,
        description="GPU indices this gpu machine serves, one ComfyUI and one worker each; unset: every GPU "
        "NVML finds. The NixOS module writes its `gpus` option here, so the units it starts are the plan.",
    )

    @field_validator("gpus")
    @classmethod
    def _distinct_gpus(cls, value: list[int] | None) -> list[int] | None:
        if value is not None and len(set(value)) != len(value):
            raise ValueError(f"lists a GPU index twice: {value}")
        return value


class HealthSettings(_Section):
    # Prometheus, the monitor and rolling updates reach it from other machines; it serves no secrets, and the
    # NixOS module keeps the port closed unless openFirewall is set.
    host: str = Field(
        default="0.0.0.0",  # nosec B104 # reachable by Prometheus, the monitor and rolling updates
        description="Address the health server (/health /ready /status /metrics) binds.",
    )
    port: int = Field(default=9090, ge=0, le=65535, description="Port of the health server.")


class CapabilityOverrides(_Section):
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


class WorkerSettings(_Section):
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
    capabilities: CapabilityOverrides = Field(
        default_factory=CapabilityOverrides, description="Overrides of detected capabilities."
    )


class ComfyUISettings(_Section):
    command: list[str] = Field(
        default_factory=lambda: ["python", "main.py"],
        min_length=1,
        description="Command that starts ComfyUI (run in `workdir`); port and listen address are appended.",
    )
    workdir: Path | None = Field(default=None, description="ComfyUI checkout to run in.")
    base_port: int = Field(
        default=8188, ge=1, le=65535, description="Port of GPU 0's ComfyUI; GPU N uses base_port + N."
    )
    listen: str = Field(default="127.0.0.1", description="Address ComfyUI listens on.")
    extra_args: list[str] = Field(
        default_factory=list, description="Extra command-line arguments for ComfyUI."
    )
    cpu: bool = Field(default=False, description="Run ComfyUI with --cpu (no GPU).")
    state_dir: Path | None = Field(
        default=None,
        description="Where ComfyUI instance N keeps its files (`<state_dir>/comfyui-<N>`: output, input, user, "
        "temp, models, custom_nodes); unset: systemd's StateDirectory (`appliance/comfyui-<N>`), else "
        "ComfyUI's own directory.",
    )
    models_dir: Path | None = Field(
        default=None, description="Model directory, linked as the instance's `models` directory."
    )
    custom_nodes_dir: Path | None = Field(
        default=None, description="Custom nodes directory, linked as the instance's `custom_nodes` directory."
    )
    startup_timeout_s: float = Field(
        default=600, gt=0, description="How long ComfyUI may take to answer after start, in seconds."
    )
    request_timeout_s: float = Field(
        default=30, gt=0, description="Timeout of one HTTP request to ComfyUI, in seconds."
    )
    default_job_timeout_s: float = Field(
        default=1800, gt=0, description="Run-time limit of a ComfyUI job that sets none, in seconds."
    )


class ConnectorSettings(_Section):
    enabled: bool = Field(default=False, description="Run workers for this connector on api machines.")
    slots: int = Field(
        default=1, ge=0, description="Worker processes for this connector (slots `<name>0`, `<name>1`, ...)."
    )
    concurrency: int = Field(
        default=1, ge=1, description="Jobs one worker process of this connector runs at once."
    )
    base_url: str | None = Field(
        default=None, description="API base URL; unset uses the provider's public endpoint."
    )
    api_key: SecretStr | None = Field(
        default=None, description="API key. Prefer `api_key_file` or the `<name>-api-key` systemd credential."
    )
    api_key_file: Path | None = Field(default=None, description="File holding the API key.")
    endpoint_id: str | None = Field(default=None, description="RunPod serverless endpoint id (runpod only).")
    default_timeout_s: float = Field(
        default=600, gt=0, description="Run-time limit of a job that sets none, in seconds."
    )
    extra: dict[str, Any] = Field(default_factory=dict, description="Connector-specific options.")

    def resolve_api_key(self, name: str, env: Any = os.environ) -> str | None:
        """The API key of connector `name`: inline, `api_key_file`, or `$CREDENTIALS_DIRECTORY/<name>-api-key`."""
        return read_secret(
            credential_name(f"connectors.{name}.api_key"),
            file=self.api_key_file,
            inline=self.api_key,
            env=env,
        )


def _default_connectors() -> dict[str, ConnectorSettings]:
    return {name: ConnectorSettings() for name in KNOWN_CONNECTORS}


class S3Settings(_Section):
    bucket: str | None = Field(default=None, description="Bucket for job outputs.")
    endpoint_url: str | None = Field(
        default=None, description="S3 endpoint (MinIO, R2, ...); unset uses AWS."
    )
    region: str | None = Field(default=None, description="S3 region.")
    prefix: str = Field(default="", description="Key prefix for outputs.")
    access_key_id: str | None = Field(
        default=None, description="Access key id; unset uses the SDK's credential chain."
    )
    secret_access_key: SecretStr | None = Field(
        default=None,
        description="Secret access key. Prefer the file or the `s3-secret-access-key` credential.",
    )
    secret_access_key_file: Path | None = Field(
        default=None, description="File holding the secret access key."
    )
    presign_expiry_s: int = Field(
        default=3600, gt=0, description="Lifetime of presigned output URLs, in seconds."
    )
    public_base_url: str | None = Field(
        default=None,
        description="Public URL prefix of the bucket; when set, output "
        "URLs are built from it instead of presigned.",
    )

    def resolve_secret_access_key(self, env: Any = os.environ) -> str | None:
        return read_secret(
            credential_name("storage.s3.secret_access_key"),
            file=self.secret_access_key_file,
            inline=self.secret_access_key,
            env=env,
        )


class StorageSettings(_Section):
    backend: Literal["local", "s3"] = Field(default="local", description="Where job outputs are stored.")
    local_dir: Path = Field(
        default=Path("/var/lib/appliance/outputs"),
        description="Output directory of the local backend. Files get mode 0666 less the worker's umask: "
        "0644 under umask 022; under the units' UMask=0027, 0640 for the `appliance` group, so add the web "
        "server serving `public_base_url` to that group.",
    )
    s3: S3Settings = Field(default_factory=S3Settings, description="S3 backend.")

    @model_validator(mode="after")
    def _s3_needs_bucket(self) -> StorageSettings:
        if self.backend == "s3" and not self.s3.bucket:
            raise ValueError("storage.backend is s3 but storage.s3.bucket is not set")
        return self


class MonitorSettings(_Section):
    host: str = Field(default="127.0.0.1", description="Address the monitor UI binds.")
    port: int = Field(default=8080, ge=0, le=65535, description="Port of the monitor UI.")
    token: SecretStr | None = Field(
        default=None,
        description="Bearer token required by the monitor; unset allows anyone who can reach it.",
    )
    token_file: Path | None = Field(default=None, description="File holding the monitor token.")

    def resolve_token(self, env: Any = os.environ) -> str | None:
        return read_secret(credential_name("monitor.token"), file=self.token_file, inline=self.token, env=env)


class PoolSettings(_Section):
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


class PoolRule(_Section):
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


class ClassifierSettings(_Section):
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


class LoggingSettings(_Section):
    level: Literal["DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL"] = Field(
        default="INFO", description="Log level."
    )


class Settings(_Section):
    """Everything an appliance process can be configured with."""

    redis: RedisSettings = Field(
        default_factory=RedisSettings, description="Redis connection and queue name."
    )
    machine: MachineSettings = Field(default_factory=MachineSettings, description="This machine.")
    health: HealthSettings = Field(default_factory=HealthSettings, description="Health and metrics server.")
    queue: QueueSettings = Field(
        default_factory=QueueSettings.model_construct, description="Queue timing and retention."
    )
    worker: WorkerSettings = Field(default_factory=WorkerSettings, description="Worker processes.")
    comfyui: ComfyUISettings = Field(
        default_factory=ComfyUISettings, description="ComfyUI instances (gpu machines)."
    )
    connectors: dict[str, ConnectorSettings] = Field(
        default_factory=_default_connectors, description="API connectors by name."
    )
    storage: StorageSettings = Field(default_factory=StorageSettings, description="Where job outputs go.")
    monitor: MonitorSettings = Field(default_factory=MonitorSettings, description="Monitor UI.")
    pools: dict[str, PoolSettings] = Field(
        default_factory=_default_pools, description="Machine pools by name."
    )
    classifier: ClassifierSettings = Field(
        default_factory=ClassifierSettings, description="How jobs are assigned to pools."
    )
    logging: LoggingSettings = Field(default_factory=LoggingSettings, description="Logging.")

    @field_validator("connectors")
    @classmethod
    def _known_connectors(cls, value: dict[str, ConnectorSettings]) -> dict[str, ConnectorSettings]:
        unknown = sorted(set(value) - set(KNOWN_CONNECTORS))
        if unknown:
            raise ValueError(f"unknown connector {unknown[0]!r} (known: {', '.join(KNOWN_CONNECTORS)})")
        return value

    @model_validator(mode="after")
    def _pools_exist(self) -> Settings:
        # The message starts with the key so the loader can name the key and where it was set.
        references = [("classifier.default_pool", self.classifier.default_pool)]
        references += [
            (f"classifier.rules.{i}.pool", rule.pool) for i, rule in enumerate(self.classifier.rules)
        ]
        if self.machine.pool is not None:
            references.append(("machine.pool", self.machine.pool))
        for key, name in references:
            if name not in self.pools:
                raise ValueError(
                    f"{key}: pool {name!r} is not defined in pools (defined: {', '.join(sorted(self.pools))})"
                )
        return self

    @model_validator(mode="after")
    def _heartbeat_within_lease(self) -> Settings:
        # A heartbeat every lease/2 or slower lets a healthy worker's lease expire between two beats: the job
        # is handed to another worker while the first still runs it.
        q = self.queue
        if q.heartbeat_interval_ms * 2 >= q.lease_ms:
            raise ValueError(
                f"queue.heartbeat_interval_ms: {q.heartbeat_interval_ms} ms must be below half of "
                f"queue.lease_ms ({q.lease_ms} ms), or leases expire between heartbeats"
            )
        return self

    def redis_connection(self, env: Any = os.environ) -> RedisConnection:
        """Redis URL (never with a password) plus the password read from wherever it is configured."""
        return self.redis.connection(env)

    def enabled_connectors(self) -> dict[str, ConnectorSettings]:
        return {name: c for name, c in self.connectors.items() if c.enabled and c.slots > 0}


@dataclass(frozen=True)
class LoadedSettings:
    """Validated settings plus where each value came from: dotted key → `env:NAME`, `file:PATH` or `default`."""

    settings: Settings
    sources: dict[str, str]
    config_path: Path | None = None
    #: Problems that do not stop a process: an `APPLIANCE_*` variable that is no setting (a typo, most likely).
    warnings: list[str] = field(default_factory=list)

    def source(self, key: str) -> str:
        """Source of `key` or of the nearest enclosing key that was set."""
        while key:
            if key in self.sources:
                return self.sources[key]
            key = key.rpartition(".")[0]
        return "default"


def redacted_dump(settings: Settings) -> dict[str, Any]:
    """Settings as JSON-ready data with every secret replaced by `***` (inline values, URL passwords)."""
    from appliance.secrets import redact_value

    result: dict[str, Any] = redact_value(settings.model_dump(mode="python"))
    return result


def check_files(loaded: LoadedSettings) -> list[str]:
    """Errors for configured files (`*_file` settings) that cannot be read; contents are never shown."""
    errors = []
    for key, value in _file_settings(loaded.settings.model_dump(mode="python")):
        try:
            with open(value, "rb"):
                pass
        except OSError as exc:
            reason = (
                "does not exist" if isinstance(exc, FileNotFoundError) else (exc.strerror or "cannot be read")
            )
            errors.append(f"{key}: file {value} {reason.lower()} (from {loaded.source(key)})")
    return errors


def _file_settings(data: dict[str, Any], prefix: str = "") -> list[tuple[str, Path]]:
    found: list[tuple[str, Path]] = []
    for key, value in data.items():
        dotted = f"{prefix}{key}"
        if isinstance(value, dict):
            found.extend(_file_settings(value, dotted + "."))
        elif key.endswith("_file") and value is not None:
            found.append((dotted, Path(value)))
    return found


__all__ += ["KNOWN_CONNECTORS", "SecretError", "check_database", "check_files", "check_redis_url"]
