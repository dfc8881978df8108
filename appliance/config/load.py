"""Reading the settings sources (config file, `APPLIANCE_*` environment) and merging them over the defaults.

The environment variable names are derived from the `Settings` schema, so a new setting needs no loader change.
Rules (also rendered in docs/configuration.md):
- canonical: `APPLIANCE_` + the dotted key with `.` → `__`, upper-cased (`APPLIANCE_CONNECTORS__OPENAI__API_KEY_FILE`);
  names of table entries (connectors, pools) are lower-cased.
- short: the same path joined by `_` (`APPLIANCE_REDIS_URL`), accepted when no other key has that spelling;
  connectors also drop the section (`APPLIANCE_OPENAI_API_KEY_FILE`); `APPLIANCE_LOG_LEVEL` is `logging.level`.
- values of lists, tables and whole sections are JSON; an empty value sets an optional key to null.
"""

from __future__ import annotations

import copy
import difflib
import functools
import json
import re
import tomllib
import types
import typing
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pydantic import BaseModel, SecretStr, ValidationError

from appliance.config.schema import KNOWN_CONNECTORS, ConfigError, LoadedSettings, Settings, check_files
from appliance.secrets import redact_url, split_url_password

ENV_PREFIX = "APPLIANCE_"
#: `APPLIANCE_*` variables that are not settings and must not be reported as unknown: the config file path, the
#: test hooks the processes honour, and the project's tooling (tests, CI, Nix checks), which is often exported for
#: a whole shell or CI job. Any other `APPLIANCE_*` variable that is no setting gets a did-you-mean warning; it
#: never stops a process from starting.
ENV_ALLOWLIST = frozenset(
    {
        "APPLIANCE_CONFIG",
        "APPLIANCE_TEST_HOOKS",
        "APPLIANCE_SKIP_NSPAWN",
        "APPLIANCE_TEST_CACHE",
        "APPLIANCE_TEST_APT_SOURCES",
        "APPLIANCE_TEST_ARTIFACTS",
        "APPLIANCE_NIXPKGS_LIB",
        "APPLIANCE_PIP_AUDIT",
        "APPLIANCE_CHROMIUM",
    }
)
#: Short names that do not follow the path rule.
ENV_ALIASES: dict[str, tuple[str, ...]] = {"LOG_LEVEL": ("logging", "level")}

KeyPath = tuple[str, ...]
_SECRETISH = re.compile(r"(password|api_key|secret|token)$")


@dataclass(frozen=True)
class Node:
    """Where a key path lands in the schema: a section (model), a table of sections (dict), or a value (leaf)."""

    kind: typing.Literal["model", "dict", "leaf"]
    annotation: Any
    model: type[BaseModel] | None = None
    nullable: bool = False


ROOT = Node("model", Settings, Settings)


def node_of(annotation: Any) -> Node:
    members = _members(annotation)
    nullable = type(None) in members
    members = [m for m in members if m is not type(None)]
    if len(members) == 1:
        only = members[0]
        if isinstance(only, type) and issubclass(only, BaseModel):
            return Node("model", annotation, only, nullable)
        if typing.get_origin(only) is dict:
            value = typing.get_args(only)[1]
            if isinstance(value, type) and issubclass(value, BaseModel):
                return Node("dict", annotation, value, nullable)
    return Node("leaf", annotation, None, nullable)


def _members(annotation: Any) -> list[Any]:
    if typing.get_origin(annotation) is typing.Annotated:
        return _members(typing.get_args(annotation)[0])
    if typing.get_origin(annotation) in (typing.Union, types.UnionType):
        return [m for arg in typing.get_args(annotation) for m in _members(arg)]
    return [annotation]


@functools.cache
def field_nodes(model: type[BaseModel]) -> dict[str, Node]:
    """The node of each field of `model`. Memoized: a schema never changes in a process, and every load walks
    it several times (the environment names, the tables, the sources), which was most of a load's own time."""
    return {name: node_of(field.annotation) for name, field in model.model_fields.items()}


def child(node: Node, segment: str) -> Node | None:
    if node.kind == "model" and node.model is not None:
        return field_nodes(node.model).get(segment)
    if node.kind == "dict" and node.model is not None:
        return Node("model", node.model, node.model)
    return None


def resolve(path: KeyPath) -> Node | None:
    node: Node | None = ROOT
    for segment in path:
        if node is None:
            return None
        node = child(node, segment)
    return node


def walk(node: Node, data: Any, prefix: KeyPath = ()) -> Iterator[KeyPath]:
    """Leaf key paths of `data` (a dump or a file's content) laid over the schema; unknown keys count as leaves."""
    if node.kind != "leaf" and isinstance(data, dict):
        for key, value in data.items():
            sub = child(node, str(key))
            if sub is None:
                yield (*prefix, str(key))
            else:
                yield from walk(sub, value, (*prefix, str(key)))
    elif prefix:
        yield prefix


def schema_paths(
    node: Node = ROOT, table_keys: Mapping[KeyPath, Any] | None = None, prefix: KeyPath = ()
) -> Iterator[tuple[KeyPath, Node]]:
    """Every key path of the schema (sections and values); tables expand to the entry names in `table_keys`."""
    if prefix:
        yield prefix, node
    if node.kind == "model" and node.model is not None:
        for name, sub in field_nodes(node.model).items():
            yield from schema_paths(sub, table_keys, (*prefix, name))
    elif node.kind == "dict" and node.model is not None:
        for key in (table_keys or {}).get(prefix, ()):
            yield from schema_paths(Node("model", node.model, node.model), table_keys, (*prefix, key))


def canonical_env(path: KeyPath) -> str:
    return ENV_PREFIX + "__".join(path).upper()


@dataclass
class EnvNames:
    """Short environment names → key path, plus names that would fit several keys."""

    short: dict[str, KeyPath]
    ambiguous: dict[str, list[KeyPath]]

    @classmethod
    def build(cls, table_keys: Mapping[KeyPath, Any]) -> EnvNames:
        candidates: dict[str, set[KeyPath]] = {}
        for path, _ in schema_paths(ROOT, table_keys):
            candidates.setdefault("_".join(path).upper(), set()).add(path)
            if path[0] == "connectors" and len(path) > 1:
                candidates.setdefault("_".join(path[1:]).upper(), set()).add(path)
        for alias, path in ENV_ALIASES.items():
            candidates.setdefault(alias, set()).add(path)
        short = {name: next(iter(paths)) for name, paths in candidates.items() if len(paths) == 1}
        ambiguous = {name: sorted(paths) for name, paths in candidates.items() if len(paths) > 1}
        return cls(short, ambiguous)

    def names_for(self, path: KeyPath) -> list[str]:
        """Every variable that sets `path`, canonical first."""
        names = [canonical_env(path)]
        names += sorted((ENV_PREFIX + n for n, p in self.short.items() if p == path), key=len, reverse=True)
        return list(dict.fromkeys(names))


def table_keys_of(*layers: Mapping[str, Any]) -> dict[KeyPath, list[str]]:
    """Entry names of every table (connectors, pools) found in the given data layers."""
    keys: dict[KeyPath, list[str]] = {}
    for path, node in schema_paths(ROOT, {("connectors",): KNOWN_CONNECTORS}):
        if node.kind != "dict":
            continue
        names: list[str] = []
        for layer in layers:
            value: Any = layer
            for segment in path:
                value = value.get(segment) if isinstance(value, dict) else None
            if isinstance(value, dict):
                names += [str(k) for k in value]
        keys[path] = list(dict.fromkeys(names))
    return keys


def read_config_file(path: Path, origin: str) -> dict[str, Any]:
    """Parse a TOML, YAML or JSON config file (by suffix) into a dict; ConfigError names the file and line."""
    suffix = path.suffix.lower()
    if suffix not in (".toml", ".yaml", ".yml", ".json"):
        raise ConfigError(
            [
                f"config file {path}: unsupported type {suffix or '(none)'!r}; use .toml, .yaml, "
                f".yml or .json (from {origin})"
            ]
        )
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ConfigError([f"config file {path} does not exist (from {origin})"]) from None
    except OSError as exc:
        raise ConfigError([f"config file {path} cannot be read: {exc.strerror} (from {origin})"]) from None
    except UnicodeDecodeError:
        raise ConfigError([f"config file {path} is not UTF-8 text"]) from None
    import yaml  # here, not at the top: only a YAML file needs it, and it costs every command's start-up

    try:
        if suffix == ".toml":
            data: Any = tomllib.loads(text)
        elif suffix == ".json":
            data = json.loads(text)
        else:
            data = yaml.safe_load(text)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError([f"config file {path}: invalid TOML: {exc}"]) from None
    except json.JSONDecodeError as exc:
        raise ConfigError(
            [f"config file {path}: invalid JSON: {exc.msg} at line {exc.lineno} column {exc.colno}"]
        ) from None
    except yaml.YAMLError as exc:
        where = getattr(exc, "problem_mark", None)
        line = f" at line {where.line + 1} column {where.column + 1}" if where is not None else ""
        problem = getattr(exc, "problem", None) or "syntax error"
        raise ConfigError([f"config file {path}: invalid YAML: {problem}{line}"]) from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(
            [f"config file {path}: the top level must be a table of sections, not {type(data).__name__}"]
        )
    return data


def parse_env_value(node: Node, raw: str, name: str) -> Any:
    if raw == "" and node.nullable:
        return None
    wants_json = node.kind != "leaf" or _takes_container(node.annotation)
    if wants_json and (node.kind != "leaf" or raw.lstrip()[:1] in ("[", "{")):
        try:
            return json.loads(raw)
        except json.JSONDecodeError as exc:
            raise ValueError(
                f"{name}: not valid JSON ({exc.msg} at column {exc.colno}); values of lists, "
                f"tables and sections are JSON"
            ) from None
    return raw


def _takes_container(annotation: Any) -> bool:
    for member in _members(annotation):
        origin = typing.get_origin(member) or member
        if origin in (list, dict, tuple, set, frozenset):
            return True
    return False


def env_overrides(
    env: Mapping[str, str], names: EnvNames
) -> tuple[list[tuple[KeyPath, Any, str]], list[str], list[str]]:
    """Key path, parsed value and variable name of every `APPLIANCE_*` setting; errors (a bad value, an
    ambiguous or conflicting name) and warnings (a name that is no setting)."""
    found: dict[KeyPath, tuple[Any, str]] = {}
    errors: list[str] = []
    warnings: list[str] = []
    for name in sorted(env):
        if not name.startswith(ENV_PREFIX) or name in ENV_ALLOWLIST:
            continue
        rest = name[len(ENV_PREFIX) :]
        path: KeyPath | None
        if "__" in rest:
            path = tuple(segment.lower() for segment in rest.split("__"))
            node = resolve(path) if all(path) else None
        elif rest in names.ambiguous:
            options = ", ".join(canonical_env(p) for p in names.ambiguous[rest])
            errors.append(f"{name}: ambiguous, could set several keys; use one of {options}")
            continue
        else:
            path = names.short.get(rest)
            node = resolve(path) if path else None
        if path is None or node is None:
            known = [*names.short, *(n[len(ENV_PREFIX) :] for n in ENV_ALLOWLIST)]
            close = difflib.get_close_matches(rest, known, n=1)
            hint = f"; did you mean {ENV_PREFIX}{close[0]}?" if close else ""
            warnings.append(f"{name}: not a setting, ignored (environment){hint}")
            continue
        try:
            value = parse_env_value(node, env[name], name)
        except ValueError as exc:
            errors.append(str(exc))
            continue
        if path in found and found[path][0] != value:
            errors.append(
                f"{name}: conflicts with {found[path][1]}, which sets the same key "
                f"{'.'.join(path)} to another value"
            )
            continue
        found[path] = (value, name)
    ordered = sorted(found.items(), key=lambda item: len(item[0]))
    return [(path, value, name) for path, (value, name) in ordered], errors, warnings


def _deep_merge(base: dict[str, Any], over: Mapping[str, Any]) -> None:
    for key, value in over.items():
        if isinstance(value, dict) and isinstance(base.get(key), dict):
            _deep_merge(base[key], value)
        else:
            base[key] = copy.deepcopy(value)


def _set(data: dict[str, Any], path: KeyPath, value: Any) -> None:
    for segment in path[:-1]:
        if not isinstance(data.get(segment), dict):
            data[segment] = {}
        data = data[segment]
    data[path[-1]] = value


def _source(explicit: Mapping[KeyPath, str], path: KeyPath) -> str:
    for end in range(len(path), 0, -1):
        if path[:end] in explicit:
            return explicit[path[:end]]
    # An error on a whole table (e.g. an unknown entry name) comes from whoever set an entry inside it.
    inside = sorted(src for key, src in explicit.items() if path and key[: len(path)] == path)
    return inside[0] if inside else "default"


def _format_error(error: Mapping[str, Any], explicit: Mapping[KeyPath, str]) -> str:
    loc = tuple(str(part) for part in error["loc"])
    message = str(error["msg"]).removeprefix("Value error, ")
    match = re.match(r"^([\w.]+): (.*)$", message)
    if match and not loc:
        loc, message = tuple(match.group(1).split(".")), match.group(2)
    key = ".".join(loc) or "(settings)"
    source = _source(explicit, loc)
    if error["type"] == "extra_forbidden":
        return f"{key}: unknown setting (from {source})"
    value = error.get("input")
    if isinstance(value, str | int | float | bool) and not any(_SECRETISH.search(p) for p in loc):
        shown = redact_url(value) if isinstance(value, str) else value
        message += f"; got {shown!r}"
    if source.startswith("env:") and error["type"] in (
        "list_type",
        "dict_type",
        "model_type",
        "model_attributes_type",
    ):
        message += " (environment values of lists and tables are JSON)"
    return f"{key}: {message} (from {source})"


def load(
    config_path: str | Path | None, env: Mapping[str, str], *, open_files: bool = True
) -> LoadedSettings:
    origin = "--config"
    if config_path is None and env.get("APPLIANCE_CONFIG"):
        config_path, origin = env["APPLIANCE_CONFIG"], "APPLIANCE_CONFIG"
    path = Path(config_path) if config_path not in (None, "") else None
    file_data = read_config_file(path, origin) if path is not None else {}

    explicit: dict[KeyPath, str] = {p: f"file:{path}" for p in walk(ROOT, file_data)}
    defaults = Settings.model_construct().model_dump(mode="python")
    merged: dict[str, Any] = {}
    for table_path, node in schema_paths(ROOT, {}):
        if node.kind == "dict":  # table entries from the file merge into the default entries
            _set(merged, table_path, copy.deepcopy(_get(defaults, table_path)))
    _deep_merge(merged, file_data)

    names = EnvNames.build(table_keys_of(defaults, file_data))
    overrides, errors, warnings = env_overrides(env, names)
    if errors:
        raise ConfigError(errors)
    for key_path, value, name in overrides:
        _set(merged, key_path, value)
        for known in [p for p in explicit if p[: len(key_path)] == key_path]:
            del explicit[known]
        explicit[key_path] = f"env:{name}"
        explicit.update({sub: f"env:{name}" for sub in walk(resolve(key_path) or ROOT, value, key_path)})

    url = merged.get("redis", {}).get("url") if isinstance(merged.get("redis"), dict) else None
    if (
        isinstance(url, str)
        and split_url_password(url)[1] is not None
        and ("redis", "password") not in explicit
    ):
        explicit[("redis", "password")] = _source(explicit, ("redis", "url"))  # moved out of the URL

    try:
        settings = Settings.model_validate(merged)
    except ValidationError as exc:
        raise ConfigError([_format_error(e, explicit) for e in exc.errors()]) from None
    dump = settings.model_dump(mode="python")
    sources = {".".join(p): _source(explicit, p) for p in walk(ROOT, dump)}
    loaded = LoadedSettings(settings, sources, path, warnings)
    file_errors = check_files(loaded) if open_files else []
    if file_errors:
        raise ConfigError(file_errors)
    return loaded


def _get(data: Mapping[str, Any], path: KeyPath) -> Any:
    value: Any = data
    for segment in path:
        value = value[segment]
    return value


def is_secret(path: KeyPath) -> bool:
    node = resolve(path)
    return node is not None and SecretStr in _members(node.annotation)
