"""The job body as Redis stores it (the `spec` column): what a submit writes, and how a claim reads it back.

    body = stored_body(spec, job_id, shape)   # b'{"service":"echo","id":"9f…","shape":"c0c3…"}'
    if body_form(raw):                         # the parsed body is in one of the producer's forms
        values = body_values(raw)              # its Job fields, defaults filled in, in the fields' order
        given = fields_set(raw)                # what validation marks set: the body's Job fields

The body holds the spec's fields whose values differ from their defaults, then `id` and `shape`. A plain job's
is ~90 bytes instead of the ~400 of the whole dump: Redis's Lua hashes every byte of every string it handles
(~7 instructions a byte, at submit and at each claim), and each waiting job keeps its body in memory. A field
given with its default value (`"priority": 0`) is not written, exactly as one not given: the body cannot tell
the two apart, and nothing reads the difference. The parent fields (`after`, `on_parent_failure`) are written
only for a job with parents; `run_at` and `delay_s` when given (no reader needs them: the delayed index and
`meta` hold the start time).

Until version 8011a77 the producer wrote the whole dump (every field but `id` and, without parents, the parent
fields). A fleet upgrades with such bodies waiting in Redis, so both forms are read the same way: any subset of
the fields the producer writes, with id, service and shape, each value of the type the producer writes there.
Anything else (a newer body, a hand-written one, a value of another type) is left to validation (`jobbody`).
What a body in these forms becomes is exactly what `Job.model_validate_json` makes of it, fields set included:
the body's Job fields are the ones set (in the old form all of them, in the new form those not at a default),
both here and by validation; `jobbody._same_as_validation` checks that once per process on bodies of each form.
"""

from __future__ import annotations

from typing import Any

from pydantic_core import to_json

from appliance.queue.models import Isolation, Job, JobSpec, ParentFailure, Requirements, no_requirements

#: Every key the producer writes, in the old form and in this one (id, service and shape in every body).
BODY_KEYS = frozenset(JobSpec.model_fields) | {"shape"}
_JOB_FIELDS = frozenset(Job.model_fields)
#: The spec's fields with a plain default (not a factory), id and the parent policy aside: written when they
#: differ from it.
_PLAIN_DEFAULTS = tuple(
    (name, field.default)
    for name, field in JobSpec.model_fields.items()
    if not field.is_required() and field.default_factory is None and name not in ("id", "on_parent_failure")
)
#: What `Requirements()` holds, field by field, in the fields' order (its lists are made anew for each job).
_REQUIREMENT_DEFAULTS = dict(no_requirements().__dict__)
_REQUIREMENT_LISTS = frozenset(name for name, value in _REQUIREMENT_DEFAULTS.items() if type(value) is list)
_ISOLATIONS = {i.value: i for i in Isolation}
_PARENT_FAILURES = {p.value: p for p in ParentFailure}
_FLOAT = (float, int)
_FAIL = ParentFailure.FAIL
_PRIORITY, _MAX_RETRIES = Job.model_fields["priority"].default, Job.model_fields["max_retries"].default


def stored_body(spec: JobSpec, job_id: str, shape: str) -> bytes:
    """The body of a validated spec submitted as `job_id` of `shape`: its fields that differ from their
    defaults, then id and shape (pydantic_core encodes it: UTF-8, a caller's id escaped as any string)."""
    values = spec.__dict__
    body: dict[str, Any] = {"service": values["service"]}
    if values["payload"]:
        body["payload"] = values["payload"]
    requirements = values["requirements"].__dict__
    if requirements != _REQUIREMENT_DEFAULTS:
        body["requirements"] = {
            name: value for name, value in requirements.items() if value != _REQUIREMENT_DEFAULTS[name]
        }
    for name, default in _PLAIN_DEFAULTS:
        value = values[name]
        if value != default:
            body[name] = value
    if values["after"]:
        body["after"] = values["after"]
        if values["on_parent_failure"] is not _FAIL:
            body["on_parent_failure"] = values["on_parent_failure"]
    body["id"] = job_id
    body["shape"] = shape
    return to_json(body)


def _requirements_ok(raw: Any) -> bool:
    """Whether the body's requirements are in the producer's form (the checks `_requirements` relies on; the
    lists are taken as the producer wrote them: sorted, without duplicates)."""
    if type(raw) is not dict or not raw.keys() <= _REQUIREMENT_DEFAULTS.keys():
        return False
    isolation = raw.get("isolation", "none")
    if type(isolation) is not str or isolation not in _ISOLATIONS:
        return False
    gpu, ram, cores, count = (
        raw.get("gpu_memory_gb"),
        raw.get("ram_gb"),
        raw.get("cpu_cores"),
        raw.get("gpu_count"),
    )
    return (
        (gpu is None or type(gpu) in _FLOAT)
        and (ram is None or type(ram) in _FLOAT)
        and (cores is None or type(cores) is int)
        and (count is None or type(count) is int)
    )


class _Checked:
    """A key whose value `_other_ok` checks (no single type is its form)."""


#: The type each key's value has in the producer's form; `_Checked` where it takes more (`_other_ok`). A key
#: not here (a field JobSpec gains later) makes a body that holds it go through validation.
_TYPES: dict[str, type] = {
    "id": str,
    "service": str,
    "shape": str,
    "payload": dict,
    "priority": int,
    "max_retries": int,
    "customer_id": str,
    "workflow_id": str,
    "pool": str,
    "timeout_s": float,
    "after": _Checked,
    "on_parent_failure": _Checked,
    "requirements": _Checked,
    "run_at": _Checked,
    "delay_s": _Checked,
}
_NULLABLE = frozenset({"customer_id", "workflow_id", "pool", "timeout_s"})


def _other_ok(key: str, value: Any) -> bool:
    """The checks of a value whose type alone does not tell: an optional field's null, an int time limit, the
    parents, the requirements, the parent policy; `run_at` and `delay_s` are no Job fields (validation ignores
    them)."""
    if key in _NULLABLE and value is None:
        return True
    if key == "timeout_s":
        return type(value) is int
    if key == "after":
        return type(value) is list and all(type(parent) is str for parent in value)
    if key == "requirements":
        return _requirements_ok(value)
    if key == "on_parent_failure":
        return type(value) is str and value in _PARENT_FAILURES
    return key in ("run_at", "delay_s")


def body_form(raw: Any) -> bool:
    """Whether a parsed body is in one of the producer's forms: anything else is validated instead. The fields
    the worker reads without building the Job (`Claim`) are checked for their type here too. One pass over the
    body's own keys: a plain job's has three."""
    if type(raw) is not dict or "id" not in raw or "service" not in raw or "shape" not in raw:
        return False
    kinds = _TYPES
    for key, value in raw.items():
        kind = kinds.get(key)
        if kind is None:
            return False  # a key the producer never writes
        if type(value) is not kind and not _other_ok(key, value):
            return False
    return True


def fields_set(raw: dict[str, Any]) -> set[str]:
    """The Job fields validation marks set for a body in the producer's form: its keys that are Job fields."""
    return raw.keys() & _JOB_FIELDS


def _requirements(raw: dict[str, Any] | None) -> Requirements:
    """The body's requirements (in the producer's form: `_requirements_ok`), as validation makes them: the
    missing fields at their defaults, the given ones set."""
    if raw is None:
        return no_requirements()
    values = {}
    for name, default in _REQUIREMENT_DEFAULTS.items():
        if name in raw:
            values[name] = raw[name]
        else:
            values[name] = [] if name in _REQUIREMENT_LISTS else default
    values["isolation"] = _ISOLATIONS[values["isolation"]] if "isolation" in raw else Isolation.NONE
    if values["gpu_memory_gb"] is not None:
        values["gpu_memory_gb"] = float(values["gpu_memory_gb"])
    if values["ram_gb"] is not None:
        values["ram_gb"] = float(values["ram_gb"])
    built = Requirements.__new__(Requirements)
    object.__setattr__(built, "__dict__", values)
    object.__setattr__(built, "__pydantic_fields_set__", set(raw))
    object.__setattr__(built, "__pydantic_extra__", None)
    object.__setattr__(built, "__pydantic_private__", None)
    return built


def body_values(raw: dict[str, Any]) -> dict[str, Any]:
    """The Job fields of a body in the producer's form (`body_form`), from `id` to `shape` in the fields' order
    as validation fills them (the rest are the caller's): the missing ones at their defaults."""
    get = raw.get
    timeout = get("timeout_s")
    return {
        "id": raw["id"],
        "service": raw["service"],
        "payload": get("payload") or {},
        "priority": get("priority", _PRIORITY),
        "requirements": _requirements(get("requirements")),
        "customer_id": get("customer_id"),
        "workflow_id": get("workflow_id"),
        "pool": get("pool"),
        "max_retries": get("max_retries", _MAX_RETRIES),
        "timeout_s": None if timeout is None else float(timeout),
        "shape": raw["shape"],
    }


def parents_of(raw: dict[str, Any]) -> tuple[list[str], ParentFailure]:
    """(after, on_parent_failure) of a body in the producer's form."""
    after = raw.get("after")
    return ([] if after is None else after), _PARENT_FAILURES[raw.get("on_parent_failure", "fail")]
