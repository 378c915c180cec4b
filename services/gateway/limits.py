"""Bounds on request bodies, checked on ``Content-Length`` and while streaming (chunked bodies
have none), so one request cannot make the gateway buffer gigabytes of JSON, nor parse millions
of JSON values: parsing holds the event loop (and the GIL, on any thread) for as long as it runs.

A JSON text of n values has at most n - 1 commas and one bracket per array or object, so
commas + opening brackets + 1 bounds its values; counting them in the raw bytes (strings
included, which only ever overcounts) costs a few milliseconds per 10 MB."""

from __future__ import annotations

import re

from starlette.exceptions import HTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from shared.problems import PayloadTooLarge, problem_response

# Upload content is streamed to disk and bounded by the upload's declared size instead; the
# dashboard's upload form is bounded by the media limit in services/gateway/dashboard/views.py.
_EXEMPT = re.compile(r"^/v1/uploads/[^/]+/content$|^/dashboard/analyses$")


class BodyTooLarge(PayloadTooLarge):
    title = "The request body is too large"


def json_value_bound(chunk: bytes) -> int:
    """Commas and opening brackets in ``chunk``: summed over a body, at least its JSON values - 1."""
    return chunk.count(b",") + chunk.count(b"[") + chunk.count(b"{")


def _is_json(scope: Scope) -> bool:
    for name, value in scope["headers"]:
        if name == b"content-type":
            media_type = value.split(b";", 1)[0].strip().lower()
            return media_type == b"application/json" or media_type.endswith(b"+json")
    return False


class BodySizeLimitMiddleware:
    def __init__(self, app: ASGIApp, max_bytes: int, max_json_values: int):
        self.app = app
        self.max_bytes = max_bytes
        self.max_json_values = max_json_values

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or _EXEMPT.match(scope["path"]):
            await self.app(scope, receive, send)
            return
        problem = BodyTooLarge(f"Request bodies are limited to {self.max_bytes} bytes.", limit=self.max_bytes)
        for name, value in scope["headers"]:
            if name == b"content-length" and (not value.isdigit() or int(value) > self.max_bytes):
                await problem_response(problem)(scope, receive, send)
                return
        received = 0
        json_values = 1 if _is_json(scope) else None

        async def bounded_receive() -> Message:
            nonlocal received, json_values
            message = await receive()
            if message["type"] == "http.request":
                chunk = message.get("body", b"")
                received += len(chunk)
                # FastAPI turns other errors while reading a body into a 400; it re-raises
                # HTTPException, which the problem handlers render (payload_too_large).
                if received > self.max_bytes:
                    raise HTTPException(413, problem.detail)
                if json_values is not None:
                    json_values += json_value_bound(chunk)
                    if json_values > self.max_json_values:
                        raise HTTPException(
                            413, f"JSON request bodies are limited to {self.max_json_values} values."
                        )
            return message

        await self.app(scope, bounded_receive, send)
