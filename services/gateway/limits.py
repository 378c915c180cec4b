"""A bound on request bodies, checked on ``Content-Length`` and while streaming (chunked bodies
have none), so one request cannot make the gateway buffer gigabytes of JSON."""

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


class BodySizeLimitMiddleware:
    def __init__(self, app: ASGIApp, max_bytes: int):
        self.app = app
        self.max_bytes = max_bytes

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

        async def bounded_receive() -> Message:
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > self.max_bytes:
                    # FastAPI turns other errors while reading a body into a 400; it re-raises
                    # HTTPException, which the problem handlers render (payload_too_large).
                    raise HTTPException(413, problem.detail)
            return message

        await self.app(scope, bounded_receive, send)
