"""Errors as RFC 9457 problem details (`application/problem+json`): a type, the status, a title and a detail
naming what is wrong; validation problems add `errors`, one {field, message} per offending field."""

from __future__ import annotations

import json
from http import HTTPStatus
from typing import Any

from aiohttp import web
from pydantic import BaseModel, Field, ValidationError

PROBLEM_TYPE = "application/problem+json"


class FieldError(BaseModel):
    field: str
    message: str


class Problem(BaseModel):
    """The body of every error response."""

    type: str = Field("about:blank", description="A URI naming the kind of problem.")
    title: str
    status: int
    detail: str
    errors: list[FieldError] | None = None


class ProblemError(Exception):
    """Raised by a handler; the middleware renders it as problem+json with its status and headers."""

    def __init__(
        self,
        status: int,
        detail: str,
        *,
        errors: list[FieldError] | None = None,
        headers: dict[str, str] | None = None,
    ) -> None:
        super().__init__(detail)
        self.status, self.detail, self.errors, self.headers = status, detail, errors, headers

    def response(self) -> web.Response:
        return render(self.status, self.detail, self.headers, self.errors)


def field_errors(exc: ValidationError, prefix: str = "") -> list[FieldError]:
    out = []
    for err in exc.errors():
        where = ".".join(str(p) for p in err["loc"])
        field = f"{prefix}{where}" if where else (prefix.rstrip(".") or "body")
        out.append(FieldError(field=field, message=str(err["msg"]).removeprefix("Value error, ")))
    return out


def invalid(exc: ValidationError, prefix: str = "") -> ProblemError:
    errors = field_errors(exc, prefix)
    detail = "; ".join(f"{e.field}: {e.message}" for e in errors)
    return ProblemError(400, f"invalid request: {detail}", errors=errors)


def not_found(what: str) -> ProblemError:
    return ProblemError(404, f"{what} not found")


def render(
    status: int,
    detail: str,
    headers: dict[str, str] | None = None,
    errors: list[FieldError] | None = None,
) -> web.Response:
    problem = Problem(title=HTTPStatus(status).phrase, status=status, detail=detail, errors=errors)
    return web.Response(
        status=status,
        text=problem.model_dump_json(exclude_none=True),
        content_type=PROBLEM_TYPE,
        headers=headers,
    )


def json_response(data: Any, status: int = 200, headers: dict[str, str] | None = None) -> web.Response:
    return web.Response(
        status=status,
        text=json.dumps(data, separators=(",", ":")),
        content_type="application/json",
        headers=headers,
    )


def model_response(
    model: BaseModel, status: int = 200, headers: dict[str, str] | None = None
) -> web.Response:
    """A model as JSON, serialized in one pass by pydantic (no dict in between)."""
    return web.Response(
        status=status,
        body=model.__pydantic_serializer__.to_json(model),
        content_type="application/json",
        headers=headers,
    )
