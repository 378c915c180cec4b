"""RFC 9457 problem details: exception classes that carry their HTTP status, and FastAPI handlers
that render them — and every framework error (404, 405, validation) — as
``application/problem+json``.

A problem's ``type`` is ``/problems/<code>`` (a URI reference relative to the API) and the same
stable ``code`` is repeated as an extension member so clients can switch on it.
"""

from __future__ import annotations

from collections.abc import Mapping
from http import HTTPStatus
from typing import Any

from fastapi import FastAPI, Request
from fastapi.encoders import jsonable_encoder
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.routing import Match

from shared.errors import CodedError
from shared.logging import get_logger

PROBLEM_MEDIA_TYPE = "application/problem+json"
# A hostile body can fail validation in thousands of places; the answer names the first ones.
MAX_VALIDATION_ERRORS = 50
log = get_logger(__name__)


def problem_type(code: str) -> str:
    return f"/problems/{code}"


class Problem(CodedError):
    """Base class: subclasses set ``status``, ``code`` and ``title``; instances add ``detail``,
    extension members and response headers."""

    status: int = 500
    code: str = "internal_error"
    title: str = "Internal server error"

    def __init__(
        self,
        detail: str | None = None,
        *,
        code: str | None = None,
        headers: Mapping[str, str] | None = None,
        **extensions: Any,
    ):
        """``code`` narrows the class's code for one use (e.g. ``BadRequest(code="invalid_cursor")``)."""
        super().__init__(code, detail or self.title)
        self.detail = detail
        self.headers = dict(headers or {})
        self.extensions = extensions

    def body(self, instance: str | None = None) -> dict[str, Any]:
        body: dict[str, Any] = {
            "type": problem_type(self.code),
            "title": self.title,
            "status": self.status,
            "code": self.code,
        }
        if self.detail:
            body["detail"] = self.detail
        if instance:
            body["instance"] = instance
        body.update(jsonable_encoder(self.extensions))
        return body


class BadRequest(Problem):
    status, code, title = 400, "bad_request", "Bad request"


class Unauthorized(Problem):
    status, code, title = 401, "unauthorized", "Authentication required"

    def __init__(self, detail: str | None = None, **kwargs: Any):
        headers = {"WWW-Authenticate": 'Bearer realm="moodreel"', **kwargs.pop("headers", {})}
        super().__init__(detail, headers=headers, **kwargs)


class Forbidden(Problem):
    status, code, title = 403, "forbidden", "Forbidden"


class NotFound(Problem):
    status, code, title = 404, "not_found", "Not found"


class Conflict(Problem):
    status, code, title = 409, "conflict", "Conflict"


class PayloadTooLarge(Problem):
    status, code, title = 413, "payload_too_large", "Payload too large"


class UnsupportedMediaType(Problem):
    status, code, title = 415, "unsupported_media_type", "Unsupported media type"


class UnprocessableContent(Problem):
    status, code, title = 422, "validation_error", "The request body is invalid"


class TooManyRequests(Problem):
    status, code, title = 429, "rate_limited", "Too many requests"

    def __init__(self, detail: str | None = None, *, retry_after: int, **kwargs: Any):
        headers = {"Retry-After": str(max(1, int(retry_after))), **kwargs.pop("headers", {})}
        super().__init__(detail, headers=headers, retry_after=max(1, int(retry_after)), **kwargs)


class ServiceUnavailable(Problem):
    status, code, title = 503, "service_unavailable", "Service unavailable"


_STATUS_CODES = {
    400: "bad_request",
    401: "unauthorized",
    403: "forbidden",
    404: "not_found",
    405: "method_not_allowed",
    406: "not_acceptable",
    409: "conflict",
    413: "payload_too_large",
    415: "unsupported_media_type",
    429: "rate_limited",
}


def problem_response(problem: Problem, request: Request | None = None) -> JSONResponse:
    instance = request.url.path if request is not None else None
    return JSONResponse(
        problem.body(instance),
        status_code=problem.status,
        headers=problem.headers,
        media_type=PROBLEM_MEDIA_TYPE,
    )


def _http_problem(status: int, detail: Any) -> Problem:
    problem = Problem(detail if isinstance(detail, str) else None)
    problem.status = status
    problem.code = _STATUS_CODES.get(status, "http_error" if status < 500 else "internal_error")
    try:
        problem.title = HTTPStatus(status).phrase
    except ValueError:
        problem.title = "Error"
    return problem


async def _handle_problem(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, Problem)
    return problem_response(exc, request)


_ROUTABLE_METHODS = ("GET", "HEAD", "POST", "PUT", "PATCH", "DELETE")


def allowed_methods(request: Request) -> list[str]:
    """Every method the app routes at the request's path. Starlette's 405 names only the first
    route that matched the path, while one path is often several routes (GET and DELETE of one
    resource), so each method is tried against the whole route table."""
    routes = request.app.router.routes
    return [
        method
        for method in _ROUTABLE_METHODS
        if any(route.matches({**request.scope, "method": method})[0] == Match.FULL for route in routes)
    ]


async def _handle_http_exception(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, StarletteHTTPException)
    problem = _http_problem(exc.status_code, exc.detail)
    problem.headers.update(exc.headers or {})
    if exc.status_code == 405 and (methods := allowed_methods(request)):
        problem.headers["Allow"] = ", ".join(methods)
    return problem_response(problem, request)


async def _handle_validation(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, RequestValidationError)
    all_errors = exc.errors()
    errors = [
        {"loc": list(error.get("loc", ())), "msg": error.get("msg", ""), "type": error.get("type", "")}
        for error in all_errors[:MAX_VALIDATION_ERRORS]
    ]
    extra = {"errors_total": len(all_errors)} if len(all_errors) > len(errors) else {}
    problem = UnprocessableContent("One or more fields are invalid; see `errors`.", errors=errors, **extra)
    return problem_response(problem, request)


async def _handle_unexpected(request: Request, exc: Exception) -> JSONResponse:
    log.exception("unhandled_error", path=request.url.path)
    return problem_response(Problem("An unexpected error occurred."), request)


def install_problem_handlers(app: FastAPI) -> None:
    """Render every error of ``app`` as problem+json (the model server uses this too)."""
    app.add_exception_handler(Problem, _handle_problem)
    app.add_exception_handler(StarletteHTTPException, _handle_http_exception)
    app.add_exception_handler(RequestValidationError, _handle_validation)
    app.add_exception_handler(Exception, _handle_unexpected)


PROBLEM_SCHEMA: dict[str, Any] = {
    "type": "object",
    "title": "Problem",
    "description": "RFC 9457 problem details (application/problem+json).",
    "properties": {
        "type": {"type": "string", "example": "/problems/not_found"},
        "title": {"type": "string", "example": "Not found"},
        "status": {"type": "integer", "example": 404},
        "code": {"type": "string", "example": "not_found"},
        "detail": {"type": "string"},
        "instance": {"type": "string"},
    },
    "required": ["type", "title", "status", "code"],
}
