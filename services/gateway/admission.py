"""Admission: requests to an authenticated operation whose credentials cannot be valid are
refused before routing reads or parses a byte of their body.

FastAPI reads and parses a request's JSON body before it solves the endpoint's dependencies, so
without this an unauthenticated client could make the gateway read, decode and validate a body
the size of the request limit, and only then learn it is not signed in. Here the same rule the
``authenticate`` dependency applies (``admissible_credential``: one credential, an API key of a
valid format and checksum or a JWT with a valid signature and claims) runs on the raw headers,
on the event loop, with no database work and no thread; the answer is the same 401 problem.

Which operations need a credential is read from the routes themselves (every operation whose
dependencies include ``refuse_hopeless_credentials``), matched as the router matches: the first
route whose path and method fit decides. Other requests pass through untouched, so 404, 405 and
public operations behave as before.

Large JSON or form bodies are bounded too, since parsing one holds the event loop: each client
may have ``max_concurrent_large_bodies`` in flight in this process, and the process
``max_concurrent_large_bodies_total``; the rest get a 429 with ``Retry-After`` before their bodies
are read. A client is the account of a JWT, a key verified in the last second, or else the TCP
peer's address (a well-formed key proves nothing before the database has seen it). A large body
must arrive within ``large_body_read_seconds`` (408 otherwise), so stalled connections cannot hold
the slots. Streamed uploads are not parsed and not bounded here.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

import anyio
from fastapi.dependencies.models import Dependant
from fastapi.routing import iter_route_contexts
from starlette.datastructures import Headers
from starlette.requests import Request
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from services.gateway.deps import (
    ADMITTED_CREDENTIAL,
    admissible_credential,
    presented_credential,
    refuse_hopeless_credentials,
)
from services.gateway.security import InvalidToken, decode_access_token, hash_api_key
from services.platform.api_keys.cache import verified_keys
from shared.problems import Problem, TooManyRequests, problem_response
from shared.settings import Settings


@dataclass(frozen=True)
class RouteRule:
    path: re.Pattern[str]
    methods: frozenset[str] | None  # None: every method (a mount)
    needs_credentials: bool


def _calls(dependant: Dependant):
    yield dependant.call
    for dependency in dependant.dependencies:
        yield from _calls(dependency)


def route_rules(routes) -> list[RouteRule]:
    """One rule per route of the app, in routing order."""
    rules = []
    for route in iter_route_contexts(routes):
        path = getattr(route, "path_regex", None)
        if path is None:
            continue
        dependant = getattr(route, "dependant", None)
        methods = route.methods
        rules.append(
            RouteRule(
                path=path,
                methods=frozenset(methods) if methods is not None else None,
                needs_credentials=dependant is not None
                and any(call is refuse_hopeless_credentials for call in _calls(dependant)),
            )
        )
    return rules


class TooManyLargeBodies(TooManyRequests):
    """More large JSON or form bodies are in flight for this client (or for the whole server
    process) than are parsed at once; retry after ``Retry-After`` seconds."""

    code, title = "too_many_large_bodies", "Too many large request bodies in flight"


class BodyTooSlow(Problem):
    """A large request body did not arrive within the server's deadline (``large_body_read_seconds``)."""

    status, code, title = 408, "body_too_slow", "The request body arrived too slowly"


# Bodies the framework reads whole and parses on the event loop.
PARSED_MEDIA_TYPES = ("application/json", "application/x-www-form-urlencoded")


def is_large_parsed_body(headers: Headers, settings: Settings) -> bool:
    media_type = headers.get("content-type", "").split(";", 1)[0].strip().lower()
    if not media_type.startswith(PARSED_MEDIA_TYPES) and not media_type.endswith("+json"):
        return False
    length = headers.get("content-length")
    if length is None:
        return "transfer-encoding" in headers  # a streamed body of unknown length
    return not length.isdigit() or int(length) > settings.large_body_bytes


def routed_path(scope: Scope) -> str:
    """The path the router matches: without the root path a proxy mounts the gateway under."""
    path, root_path = scope["path"], scope.get("root_path", "")
    if root_path and path.startswith(root_path):
        path = path[len(root_path) :]
    return path


def requester(scope: Scope, settings: Settings) -> str:
    """Who sends a request, as far as its headers prove it without the database: the account of
    a JWT (its signature checked), an API key verified in the last second, or else the client's
    address (a well-formed key anyone can make up proves nothing)."""
    client = scope.get("client")
    address = f"address:{client[0] if client else ''}"
    try:
        credential = presented_credential(Headers(scope=scope))
    except Problem:
        return address
    if credential is None:
        return address
    if credential.kind == "jwt":
        try:
            return f"user:{decode_access_token(credential.value, settings).user_id}"
        except InvalidToken:
            return address
    key_hash = hash_api_key(credential.value, settings)
    if verified_keys.verified_recently(settings.database_url, key_hash, settings.api_key_cache_seconds):
        return f"key:{key_hash}"
    return address


def needs_credentials(rules: list[RouteRule], method: str, path: str) -> bool:
    for rule in rules:
        if (rule.methods is None or method in rule.methods) and rule.path.match(path):
            return rule.needs_credentials
    return False


class AdmissionMiddleware:
    def __init__(self, app: ASGIApp, settings: Settings):
        self.app = app
        self.settings = settings
        self.rules: list[RouteRule] | None = None
        self.large_bodies_in_flight: dict[str, int] = {}
        self.large_bodies_total = 0

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        if self.rules is None:  # the routes are complete once the app serves
            self.rules = route_rules(scope["app"].routes)
        if not needs_credentials(self.rules, scope["method"], routed_path(scope)):
            await self.app(scope, receive, send)
            return
        headers = Headers(scope=scope)
        try:
            credential = admissible_credential(headers, self.settings)
        except Problem as problem:
            await problem_response(problem, Request(scope))(scope, receive, send)
            return
        scope.setdefault("state", {})[ADMITTED_CREDENTIAL] = credential
        if not is_large_parsed_body(headers, self.settings):
            await self.app(scope, receive, send)
            return
        await self._large_body(scope, receive, send, requester(scope, self.settings))

    async def _large_body(self, scope: Scope, receive: Receive, send: Send, holder: str) -> None:
        settings = self.settings
        # The event loop is these counters' only writer, so plain ints and a dict need no lock.
        if (
            self.large_bodies_total >= settings.max_concurrent_large_bodies_total
            or self.large_bodies_in_flight.get(holder, 0) >= settings.max_concurrent_large_bodies
        ):
            problem = TooManyLargeBodies(
                f"At most {settings.max_concurrent_large_bodies} requests with bodies over "
                f"{settings.large_body_bytes} bytes may be in flight per client; retry.",
                retry_after=1,
            )
            await problem_response(problem, Request(scope))(scope, receive, send)
            return
        self.large_bodies_in_flight[holder] = self.large_bodies_in_flight.get(holder, 0) + 1
        self.large_bodies_total += 1
        body_arrived = anyio.Event()
        response_started = timed_out = False

        async def receive_noting_body() -> Message:
            message = await receive()
            if message["type"] != "http.request" or not message.get("more_body", False):
                body_arrived.set()
            return message

        async def send_noting_start(message: Message) -> None:
            nonlocal response_started
            response_started = response_started or message["type"] == "http.response.start"
            await send(message)

        async def stop_at_deadline(app_scope: anyio.CancelScope) -> None:
            # Only the body has a deadline; afterwards the app may take as long as it needs.
            nonlocal timed_out
            with anyio.move_on_after(settings.large_body_read_seconds):
                await body_arrived.wait()
            if not body_arrived.is_set() and not response_started:
                timed_out = True
                app_scope.cancel()

        try:
            async with anyio.create_task_group() as group:
                group.start_soon(stop_at_deadline, group.cancel_scope)
                await self.app(scope, receive_noting_body, send_noting_start)
                group.cancel_scope.cancel()  # the app is done: so is the deadline
            if timed_out:
                problem = BodyTooSlow(
                    f"The request body did not arrive within {settings.large_body_read_seconds:g} s."
                )
                await problem_response(problem, Request(scope))(scope, receive, send)
        finally:
            self.large_bodies_total -= 1
            remaining = self.large_bodies_in_flight.pop(holder) - 1
            if remaining:
                self.large_bodies_in_flight[holder] = remaining
