"""The sections of one machine: its identity and supervision (`machine`), its health server, its ComfyUIs."""

from __future__ import annotations

import re
import socket
from pathlib import Path
from typing import Annotated, Literal

from pydantic import Field, field_validator

from appliance.config.section import Section

#: Longest machine id: `<machine id>-<slot>` must still be a valid worker id (ID_PATTERN, 128 characters).
MACHINE_ID_MAX = 96
MACHINE_ID_RE = re.compile(rf"[A-Za-z0-9][A-Za-z0-9_.:-]{{0,{MACHINE_ID_MAX - 1}}}")


class MachineSettings(Section):
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


class HealthSettings(Section):
    # Prometheus, the monitor and rolling updates reach it from other machines; it serves no secrets, and the
    # NixOS module keeps the port closed unless openFirewall is set.
    host: str = Field(
        default="0.0.0.0",  # nosec B104 # reachable by Prometheus, the monitor and rolling updates
        description="Address the health server (/health /ready /status /metrics) binds.",
    )
    port: int = Field(default=9090, ge=0, le=65535, description="Port of the health server.")


class ComfyUISettings(Section):
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
