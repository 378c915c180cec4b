"""OpenAPI helpers: problem+json responses for every documented error status."""

from __future__ import annotations

from typing import Any

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
