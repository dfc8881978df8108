"""Optional Python packages a worker imports only when a part of it runs, and whether they are installed.

The OpenAI connector needs the `openai` SDK and S3 output storage needs `boto3`; both are extras, imported lazily
so a machine without them still runs everything else. A worker that needs one that is missing must say so in one
line when it starts (and `appliance config check` before that), instead of crash-looping on a ModuleNotFoundError
from deep inside its first job.
"""

from __future__ import annotations

import importlib
from collections.abc import Iterable

from appliance.config import Settings

#: Connector name -> (module it imports, the package extra that installs it).
CONNECTOR_PACKAGES: dict[str, tuple[str, str]] = {"openai": ("openai", "openai")}
#: Storage backend -> (module, extra).
STORAGE_PACKAGES: dict[str, tuple[str, str]] = {"s3": ("boto3", "s3")}


def installed(module: str) -> bool:
    """Whether `module` imports (a broken install counts as missing: the worker could not use it either)."""
    try:
        importlib.import_module(module)
    except ImportError:
        return False
    return True


def _line(what: str, module: str, extra: str) -> str:
    return (
        f"{what}, which needs the Python package {module!r}: it is not installed here "
        f"(install appliance with its {extra!r} extra)"
    )


def missing_packages(settings: Settings, connectors: Iterable[str]) -> list[str]:
    """One line per optional package that `connectors` or the configured storage need and cannot import."""
    errors = []
    for name in connectors:
        if name in CONNECTOR_PACKAGES:
            module, extra = CONNECTOR_PACKAGES[name]
            if not installed(module):
                errors.append(_line(f"connector {name!r} is used", module, extra))
    backend = settings.storage.backend
    if backend in STORAGE_PACKAGES:
        module, extra = STORAGE_PACKAGES[backend]
        if not installed(module):
            errors.append(_line(f"storage.backend is {backend!r}", module, extra))
    return errors
