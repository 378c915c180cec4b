"""The dashboard's browser session and its way into the public API.

The dashboard owns no business logic: every action is a call to the gateway's own ``/v1`` API,
made in-process through the running app (``httpx.ASGITransport``), authenticated with the user's
JWT. Quotas, idempotency, SSRF checks and ownership are therefore exactly the API's.

Browser state lives in three cookies scoped to ``/dashboard`` (so the API never sees a cookie and
cannot be driven by cross-site requests): the access JWT, the refresh token, and a random CSRF
seed. All are HttpOnly and ``SameSite=Strict``; every form and htmx request also carries a CSRF
token (HMAC of the seed with the secret key) that is checked before any state change.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import secrets
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Any

import httpx
from fastapi import Request, Response
from jose import JWTError, jwt

from shared.settings import Settings, get_settings

COOKIE_PATH = "/dashboard"
ACCESS_COOKIE = "mr_access"
REFRESH_COOKIE = "mr_refresh"
CSRF_COOKIE = "mr_csrf"
CSRF_FIELD = "csrf_token"
CSRF_HEADER = "x-csrf-token"
# Refresh the access token this long before it expires, so a page never half-loads.
REFRESH_MARGIN_SECONDS = 30
# How long the answer to a rotation is reused for requests that raced with it.
ROTATION_REUSE_SECONDS = 30
_ROTATION_LOCK = asyncio.Lock()
_RECENT_ROTATIONS: dict[str, tuple[float, dict[str, Any]]] = {}


class NotSignedIn(Exception):
    """No usable session: the view answers with a redirect to the sign-in page."""


class CsrfFailed(Exception):
    """A state-changing request without a valid CSRF token or from another origin."""


class ApiError(Exception):
    """A problem+json answer from the API, kept for display (``title``/``detail``)."""

    def __init__(self, status: int, body: dict[str, Any]):
        self.status = status
        self.body = body
        self.title = str(body.get("title") or f"HTTP {status}")
        self.detail = str(body.get("detail") or "")
        self.errors = body.get("errors") or []
        super().__init__(f"{status} {self.title}: {self.detail}")

    @property
    def message(self) -> str:
        """What to show in the form: the invalid fields for a 422, else the problem's detail."""
        if self.errors:
            return "; ".join(f"{error['loc'][-1]}: {error['msg']}" for error in self.errors[:3])
        return self.detail or self.title


def _sign(settings: Settings, value: str) -> str:
    key = settings.secret_key.get_secret_value().encode()
    return hmac.new(key, b"dashboard-csrf:" + value.encode(), hashlib.sha256).hexdigest()


@dataclass
class BrowserSession:
    """Tokens read from the request's cookies; changed tokens are written back by ``apply``."""

    access_token: str | None
    refresh_token: str | None
    csrf_seed: str
    secure: bool
    settings: Settings
    new_cookies: dict[str, str | None] = field(default_factory=dict)

    @classmethod
    def from_request(cls, request: Request) -> BrowserSession:
        settings = get_settings()
        seed = request.cookies.get(CSRF_COOKIE)
        session = cls(
            access_token=request.cookies.get(ACCESS_COOKIE),
            refresh_token=request.cookies.get(REFRESH_COOKIE),
            csrf_seed=seed or secrets.token_urlsafe(32),
            secure=request.url.scheme == "https" or settings.environment == "production",
            settings=settings,
        )
        if not seed:
            session.new_cookies[CSRF_COOKIE] = session.csrf_seed
        return session

    @property
    def signed_in(self) -> bool:
        return bool(self.access_token or self.refresh_token)

    @property
    def csrf_token(self) -> str:
        return _sign(self.settings, self.csrf_seed)

    def check_csrf(self, request: Request, submitted: str | None) -> None:
        token = submitted or request.headers.get(CSRF_HEADER) or ""
        if not hmac.compare_digest(token, self.csrf_token):
            raise CsrfFailed("missing or invalid CSRF token")
        # Defence in depth: a browser always sends Origin on POST; it must be this site.
        origin = request.headers.get("origin")
        if origin and origin.rstrip("/") != str(request.base_url).rstrip("/"):
            raise CsrfFailed("cross-origin request")

    def store_tokens(self, tokens: dict[str, Any]) -> None:
        self.access_token = tokens["access_token"]
        self.refresh_token = tokens.get("refresh_token") or self.refresh_token
        self.new_cookies[ACCESS_COOKIE] = self.access_token
        self.new_cookies[REFRESH_COOKIE] = self.refresh_token

    def clear(self) -> None:
        self.access_token = self.refresh_token = None
        self.new_cookies[ACCESS_COOKIE] = None
        self.new_cookies[REFRESH_COOKIE] = None

    def access_token_fresh(self) -> bool:
        if not self.access_token:
            return False
        try:
            # Only to schedule a refresh; the API verifies the signature on every call.
            expires = int(jwt.get_unverified_claims(self.access_token).get("exp", 0))
        except (JWTError, TypeError, ValueError):
            return False
        return expires - REFRESH_MARGIN_SECONDS > time.time()

    def apply(self, response: Response) -> None:
        """Write changed cookies onto the response."""
        max_age = self.settings.refresh_token_days * 86_400
        for name, value in self.new_cookies.items():
            if value is None:
                response.delete_cookie(
                    name, path=COOKIE_PATH, secure=self.secure, httponly=True, samesite="strict"
                )
            else:
                response.set_cookie(
                    name,
                    value,
                    max_age=max_age,
                    path=COOKIE_PATH,
                    secure=self.secure,
                    httponly=True,
                    samesite="strict",
                )


class GatewayApi:
    """The public API, called in-process with the session's JWT."""

    def __init__(self, client: httpx.AsyncClient, session: BrowserSession):
        self.client = client
        self.session = session

    async def ensure_access(self) -> str:
        if self.session.access_token_fresh():
            return self.session.access_token  # type: ignore[return-value]
        if not self.session.refresh_token:
            raise NotSignedIn()
        tokens = await self._rotate(self.session.refresh_token)
        if tokens is None:
            self.session.clear()
            raise NotSignedIn()
        self.session.store_tokens(tokens)
        return self.session.access_token  # type: ignore[return-value]

    async def _rotate(self, refresh_token: str) -> dict[str, Any] | None:
        """Refresh tokens are single use and reusing one revokes its family (theft detection).
        A page fires several requests at once (htmx fragments, the SSE stream), so concurrent
        refreshes with the same token share one rotation instead of tripping that alarm."""
        digest = hashlib.sha256(refresh_token.encode()).hexdigest()
        async with _ROTATION_LOCK:
            now = time.monotonic()
            for key in [k for k, (at, _) in _RECENT_ROTATIONS.items() if now - at > ROTATION_REUSE_SECONDS]:
                del _RECENT_ROTATIONS[key]
            if digest in _RECENT_ROTATIONS:
                return _RECENT_ROTATIONS[digest][1]
            response = await self.client.post("/v1/auth/refresh", json={"refresh_token": refresh_token})
            if response.status_code != 200:
                return None
            tokens = response.json()
            _RECENT_ROTATIONS[digest] = (now, tokens)
            return tokens

    async def request(self, method: str, path: str, *, auth: bool = True, **kwargs) -> httpx.Response:
        headers = dict(kwargs.pop("headers", None) or {})
        if auth:
            headers["Authorization"] = f"Bearer {await self.ensure_access()}"
        response = await self.client.request(method, path, headers=headers, **kwargs)
        if response.status_code == 401 and auth:
            self.session.clear()
            raise NotSignedIn()
        return response

    async def json(self, method: str, path: str, *, auth: bool = True, **kwargs) -> Any:
        response = await self.request(method, path, auth=auth, **kwargs)
        if response.status_code >= 400:
            try:
                body = response.json()
            except ValueError:
                body = {"title": response.reason_phrase, "detail": response.text[:200]}
            raise ApiError(response.status_code, body if isinstance(body, dict) else {"detail": str(body)})
        if response.status_code == 204 or not response.content:
            return None
        return response.json()


@asynccontextmanager
async def gateway_api(request: Request, session: BrowserSession) -> AsyncIterator[GatewayApi]:
    """An API client bound to this app; the caller's address is kept for the API's throttling."""
    client_address = (request.client.host, request.client.port) if request.client else ("127.0.0.1", 0)
    transport = httpx.ASGITransport(app=request.app, client=client_address)
    async with httpx.AsyncClient(
        transport=transport, base_url=str(request.base_url).rstrip("/"), timeout=60.0
    ) as client:
        yield GatewayApi(client, session)
