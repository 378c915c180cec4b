"""OpenAPI helpers: problem+json responses for every documented error status."""

from __future__ import annotations

from typing import Any

from fastapi import FastAPI
from fastapi.openapi.utils import get_openapi

from shared.problems import PROBLEM_MEDIA_TYPE, PROBLEM_SCHEMA
from shared.settings import Settings

_DESCRIPTIONS = {
    400: "Bad request (also: a body that is not valid JSON or form data)",
    401: "Missing, invalid, expired or revoked credentials",
    403: "Authenticated, but not allowed (missing scope)",
    404: "Not found (or not yours)",
    409: "Conflict",
    413: "Payload too large",
    415: "Unsupported media type",
    416: "The Range header asks for bytes the media does not have (`Content-Range: bytes */size`)",
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


def declare_framework_problems(operation: dict[str, Any]) -> None:
    """The statuses every operation of a kind can answer whatever its endpoint does: a body that
    does not parse (400), is over the body limit (413) or fails validation (422); parameters that
    fail validation (422); credentials that are missing or refused (401) and the request rate
    (429) on every secured operation."""
    statuses: set[int] = set()
    if "requestBody" in operation:
        statuses |= {400, 413, 422}
    if operation.get("parameters"):
        statuses.add(422)
    if operation.get("security"):
        statuses |= {401, 429}
    responses = operation.setdefault("responses", {})
    for status, response in problem_responses(*sorted(statuses)).items():
        responses.setdefault(str(status), response)


def state_limits(schema: dict[str, Any], settings: Settings) -> None:
    """Limits that come from settings, stated where the document describes the input."""
    upload = schema.get("components", {}).get("schemas", {}).get("UploadCreate")
    if upload is not None:
        upload["properties"]["size_bytes"]["maximum"] = settings.max_media_bytes


# (method, path of the operation whose response supplies the id) -> links from its success.
_ANALYSIS = {"analysis_id": "$response.body#/id"}
_ENDPOINT = {"endpoint_id": "$response.body#/id"}
_LINKS: dict[tuple[str, str], dict[str, tuple[str, str, dict[str, Any]]]] = {
    ("post", "/v1/analyses"): {
        "GetAnalysis": ("get", "/v1/analyses/{analysis_id}", {"parameters": _ANALYSIS}),
        "GetAnalysisEvents": ("get", "/v1/analyses/{analysis_id}/events", {"parameters": _ANALYSIS}),
        "ExportAnalysis": ("get", "/v1/analyses/{analysis_id}/export", {"parameters": _ANALYSIS}),
        "DeleteAnalysis": ("delete", "/v1/analyses/{analysis_id}", {"parameters": _ANALYSIS}),
    },
    ("get", "/v1/analyses/{analysis_id}"): {
        "ExportAnalysis": ("get", "/v1/analyses/{analysis_id}/export", {"parameters": _ANALYSIS}),
        "DeleteAnalysis": ("delete", "/v1/analyses/{analysis_id}", {"parameters": _ANALYSIS}),
    },
    ("post", "/v1/uploads"): {
        "GetUpload": (
            "get",
            "/v1/uploads/{upload_id}",
            {"parameters": {"upload_id": "$response.body#/upload_id"}},
        ),
        "AnalyseUpload": (
            "post",
            "/v1/analyses",
            {"requestBody": {"upload_id": "$response.body#/upload_id"}},
        ),
    },
    ("get", "/v1/uploads/{upload_id}"): {
        "AnalyseUpload": ("post", "/v1/analyses", {"requestBody": {"upload_id": "$response.body#/id"}}),
    },
    ("post", "/v1/api-keys"): {
        "RevokeApiKey": ("delete", "/v1/api-keys/{key_id}", {"parameters": {"key_id": "$response.body#/id"}}),
    },
    ("post", "/v1/webhooks/endpoints"): {
        "GetWebhookEndpoint": ("get", "/v1/webhooks/endpoints/{endpoint_id}", {"parameters": _ENDPOINT}),
        "UpdateWebhookEndpoint": ("patch", "/v1/webhooks/endpoints/{endpoint_id}", {"parameters": _ENDPOINT}),
        "DeleteWebhookEndpoint": (
            "delete",
            "/v1/webhooks/endpoints/{endpoint_id}",
            {"parameters": _ENDPOINT},
        ),
    },
    ("get", "/v1/webhooks/endpoints/{endpoint_id}"): {
        "UpdateWebhookEndpoint": ("patch", "/v1/webhooks/endpoints/{endpoint_id}", {"parameters": _ENDPOINT}),
        "DeleteWebhookEndpoint": (
            "delete",
            "/v1/webhooks/endpoints/{endpoint_id}",
            {"parameters": _ENDPOINT},
        ),
    },
    ("patch", "/v1/webhooks/endpoints/{endpoint_id}"): {
        "GetWebhookEndpoint": ("get", "/v1/webhooks/endpoints/{endpoint_id}", {"parameters": _ENDPOINT}),
        "DeleteWebhookEndpoint": (
            "delete",
            "/v1/webhooks/endpoints/{endpoint_id}",
            {"parameters": _ENDPOINT},
        ),
    },
    ("get", "/v1/webhooks/deliveries/{delivery_id}"): {
        "ResendDelivery": (
            "post",
            "/v1/webhooks/deliveries/{delivery_id}/resend",
            {"parameters": {"delivery_id": "$response.body#/id"}},
        ),
    },
}


def add_lifecycle_links(schema: dict[str, Any]) -> None:
    """OpenAPI links from each create (and read) to the operations that take the new resource's id,
    so clients and stateful testers can chain create -> read -> update/delete."""
    paths = schema.get("paths", {})
    for (method, path), links in _LINKS.items():
        operation = paths.get(path, {}).get(method)
        if operation is None:
            continue
        success = next(status for status in operation["responses"] if status.startswith("2"))
        response = operation["responses"][success]
        for name, (target_method, target_path, fields) in links.items():
            target = paths.get(target_path, {}).get(target_method)
            if target is not None:
                response.setdefault("links", {})[name] = {"operationId": target["operationId"], **fields}


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
        for item in schema.get("paths", {}).values():
            for operation in item.values():
                declare_framework_problems(operation)
        for item in [*schema.get("paths", {}).values(), *schema.get("webhooks", {}).values()]:
            for operation in item.values():
                response = operation.get("responses", {}).get("422")
                if response is not None:
                    response["description"] = _DESCRIPTIONS[422]
                    response["content"] = {PROBLEM_MEDIA_TYPE: {"schema": VALIDATION_PROBLEM_SCHEMA}}
        state_limits(schema, app.state.settings)
        add_lifecycle_links(schema)
        app.openapi_schema = schema
        return schema

    app.openapi = openapi  # type: ignore[method-assign]
