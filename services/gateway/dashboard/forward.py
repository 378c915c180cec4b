"""Hand a browser request to an API route of the same app, as the signed-in user.

Used where the answer must stream (SSE) or is a download (exports): the request's scope is
rewritten to the API path with the user's bearer token and without cookies, and the app answers
it directly, so nothing is buffered and the API's own code produces every byte.
"""

from __future__ import annotations

from starlette.responses import Response
from starlette.types import Message, Receive, Scope, Send

from services.gateway.dashboard.session import BrowserSession

_DROPPED_HEADERS = {b"cookie", b"authorization", b"x-api-key", b"content-length"}


class ForwardToApi(Response):
    def __init__(self, path: str, query_string: str, session: BrowserSession):
        super().__init__()
        self.api_path = path
        self.api_query = query_string
        self.session = session

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        headers = [(k, v) for k, v in scope["headers"] if k.lower() not in _DROPPED_HEADERS]
        headers.append((b"authorization", f"Bearer {self.session.access_token}".encode()))
        api_scope = {
            key: value
            for key, value in scope.items()
            if key not in {"route", "endpoint", "path_params", "router", "fastapi_astack"}
        }
        api_scope.update(
            path=self.api_path,
            raw_path=self.api_path.encode(),
            query_string=self.api_query.encode(),
            headers=headers,
            method="GET",
        )
        # Cookies refreshed while authorising this request go out with the API's answer.
        carrier = Response()
        self.session.apply(carrier)
        cookie_headers = [(k, v) for k, v in carrier.raw_headers if k == b"set-cookie"]

        async def send_with_cookies(message: Message) -> None:
            if message["type"] == "http.response.start" and cookie_headers:
                message = {**message, "headers": [*message.get("headers", []), *cookie_headers]}
            await send(message)

        await scope["app"](api_scope, receive, send_with_cookies)
