"""Connectors: adapters between one queue job and one external service (ComfyUI, OpenAI, ...).

`create_connector(name, options=..., storage=...)` is the only entry point the worker runtime needs.
Each connector lives in its own module and imports its optional SDK only there.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING

from appliance.worker.connectors.base import (
    Connector,
    ConnectorCapabilities,
    ConnectorError,
    ConnectorJob,
    ConnectorOptions,
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


def comfyui_base_url(gpu_index: int, host: str = "127.0.0.1") -> str:
    """The local ComfyUI instance serving GPU `gpu_index`."""
    return f"http://{host}:{COMFYUI_BASE_PORT + gpu_index}"


def connector_class(name: str) -> type[Connector]:
    """The class of the connector called `name`; ValueError names the known ones when it is unknown."""
    target = CONNECTORS.get(name)
    if target is None:
        raise ValueError(f"unknown connector {name!r} (known: {', '.join(sorted(CONNECTORS))})")
    module_name, class_name = target.split(":")
    cls: type[Connector] = getattr(importlib.import_module(module_name), class_name)
    return cls


def connector_options(name: str, options: ConnectorOptions) -> ConnectorOptions:
    """`options` validated as the connector `name` types them (its own fields from `extra`); ValueError names
    the wrong keys. Done once, when the worker is wired: the connector then gets them as they are."""
    return options.typed(connector_class(name).Options)


def create_connector(name: str, *, options: ConnectorOptions, storage: OutputStorage) -> Connector:
    """Build the connector called `name`; ValueError names the known ones when it is unknown, or the options
    that do not fit it."""
    return connector_class(name)(options=options, storage=storage)


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
    "connector_class",
    "connector_options",
    "create_connector",
]
