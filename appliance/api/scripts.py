"""The API's own Lua scripts (beside their callers in this package), with the functions they share
(admission.lua) put in place of their `-- @admission` line."""

from __future__ import annotations

from importlib import resources

SHARED = "admission.lua"


def api_script(name: str) -> str:
    """The source of `name` (e.g. rate.lua) as Redis runs it."""
    files = resources.files(__package__)
    source = files.joinpath(name).read_text(encoding="utf-8")
    if "\n-- @admission\n" not in source:
        return source
    shared = files.joinpath(SHARED).read_text(encoding="utf-8")
    return source.replace("\n-- @admission\n", f"\n{shared}\n", 1)
