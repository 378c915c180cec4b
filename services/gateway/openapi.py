"""OpenAPI helpers: problem+json responses for every documented error status."""

from __future__ import annotations

from typing import Any

from fastapi import FastAPI
from fastapi.openapi.utils import get_openapi

from shared.problems import PROBLEM_MEDIA_TYPE, PROBLEM_SCHEMA

_DESCRIPTIONS = {
    400: "Bad request",
    401: "Missing, invalid, expired or revoked credentials",
    403: "Authenticated, but not allowed (missing scope)",
    404: "Not found (or not yours)",
    409: "Conflict",
    413: "Payload too large",
    415: "Unsupported media type",
    422: "The payload failed validation (`errors` lists each field)",
    429: "Rate limit or monthly quota exhausted; see `Retry-After`",
    503: "A dependency (queue, storage) is unavailable",
}


def problem_responses(*statuses: int) -> dict[int | str, dict[str, Any]]:
    return {
        status: {
            "description": _DESCRIPTIONS.get(status, "Error"),
            "content": {PROBLEM_MEDIA_TYPE: {"schema": PROBLEM_SCHEMA}},
        }
        for status in statuses
    }


VALIDATION_PROBLEM_SCHEMA: dict[str, Any] = {
    **PROBLEM_SCHEMA,
    "title": "ValidationProblem",
    "properties": {
        **PROBLEM_SCHEMA["properties"],
        "errors": {
            "type": "array",
            "items": {
                "type": "object",
                "properties": {
                    "loc": {"type": "array", "items": {"anyOf": [{"type": "string"}, {"type": "integer"}]}},
                    "msg": {"type": "string"},
                    "type": {"type": "string"},
                },
            },
        },
    },
}


def install_problem_openapi(app: FastAPI) -> None:
    """FastAPI documents validation errors as its own JSON; ours are problem+json (see
    shared/problems.py), so the document says so."""

    def openapi() -> dict[str, Any]:
        if app.openapi_schema:
            return app.openapi_schema
        schema = get_openapi(
            title=app.title,
            version=app.version,
            openapi_version=app.openapi_version,
            description=app.description,
            routes=app.routes,
            webhooks=app.webhooks.routes,
            tags=app.openapi_tags,
            license_info=app.license_info,
        )
        for item in [*schema.get("paths", {}).values(), *schema.get("webhooks", {}).values()]:
            for operation in item.values():
                response = operation.get("responses", {}).get("422")
                if response is not None:
                    response["description"] = _DESCRIPTIONS[422]
                    response["content"] = {PROBLEM_MEDIA_TYPE: {"schema": VALIDATION_PROBLEM_SCHEMA}}
        app.openapi_schema = schema
        return schema

    app.openapi = openapi  # type: ignore[method-assign]
