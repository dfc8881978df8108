"""Connectors: adapters between one queue job and one external service (ComfyUI, OpenAI, ...).

`create_connector(name, options=..., storage=...)` is the only entry point the worker runtime needs.
Each connector lives in its own module and imports its optional SDK only there.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from appliance.worker.connectors.base import (
    Connector,
    ConnectorCapabilities,
    ConnectorError,
    ConnectorJob,
    ConnectorResult,
    JobCancelled,
    OutputFile,
    PermanentError,
    ProgressCallback,
    RetryableError,
)

if TYPE_CHECKING:
    from appliance.worker.storage import OutputStorage

#: Connector name -> "module:Class"; modules are imported lazily so a missing SDK only breaks its connector.
CONNECTORS: dict[str, str] = {
    "echo": "appliance.worker.connectors.echo:EchoConnector",
    "comfyui": "appliance.worker.connectors.comfyui:ComfyUIConnector",
    "openai": "appliance.worker.connectors.openai:OpenAIConnector",
    "replicate": "appliance.worker.connectors.replicate:ReplicateConnector",
    "runpod": "appliance.worker.connectors.runpod:RunPodConnector",
}

#: ComfyUI for GPU N listens on this port + N.
COMFYUI_BASE_PORT = 8188


@dataclass
class ConnectorOptions:
    """Settings common to all connectors; connector-specific ones go in `extra`."""

    base_url: str | None = None
    #: The secret itself, already read from its file by the caller; never logged.
    api_key: str | None = field(default=None, repr=False)
    #: Per-job limit when the job has no timeout_s of its own.
    default_timeout_s: float = 600.0
    concurrency: int = 1
    extra: dict[str, Any] = field(default_factory=dict)


def comfyui_base_url(gpu_index: int, host: str = "127.0.0.1") -> str:
    """The local ComfyUI instance serving GPU `gpu_index`."""
    return f"http://{host}:{COMFYUI_BASE_PORT + gpu_index}"


def create_connector(name: str, *, options: ConnectorOptions, storage: OutputStorage) -> Connector:
    """Build the connector called `name`; ValueError names the known ones when it is unknown."""
    target = CONNECTORS.get(name)
    if target is None:
        raise ValueError(f"unknown connector {name!r} (known: {', '.join(sorted(CONNECTORS))})")
    module_name, class_name = target.split(":")
    module = importlib.import_module(module_name)
    cls = getattr(module, class_name)
    connector: Connector = cls(options=options, storage=storage)
    return connector


__all__ = [
    "COMFYUI_BASE_PORT",
    "CONNECTORS",
    "Connector",
    "ConnectorCapabilities",
    "ConnectorError",
    "ConnectorJob",
    "ConnectorOptions",
    "ConnectorResult",
    "JobCancelled",
    "OutputFile",
    "PermanentError",
    "ProgressCallback",
    "RetryableError",
    "comfyui_base_url",
    "create_connector",
]
