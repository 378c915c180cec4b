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

An admitted credential may also have only ``max_concurrent_large_bodies`` large JSON or form
bodies in flight in this process: parsing one holds the event loop, and a signed-in client
sending hundreds at once would otherwise stall every other client behind them. The rest get a 429
with ``Retry-After`` before their bodies are read. Streamed uploads are not parsed and not bounded
here.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from fastapi.dependencies.models import Dependant
from fastapi.routing import iter_route_contexts
from starlette.datastructures import Headers
from starlette.requests import Request
from starlette.types import ASGIApp, Receive, Scope, Send

from services.gateway.deps import ADMITTED_CREDENTIAL, admissible_credential, refuse_hopeless_credentials
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

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        if self.rules is None:  # the routes are complete once the app serves
            self.rules = route_rules(scope["app"].routes)
        # The path the router matches: without the root path a proxy mounts the gateway under.
        path, root_path = scope["path"], scope.get("root_path", "")
        if root_path and path.startswith(root_path):
            path = path[len(root_path) :]
        if not needs_credentials(self.rules, scope["method"], path):
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
        # The event loop is this counter's only writer, so a plain dict needs no lock.
        holder = credential.value
        if self.large_bodies_in_flight.get(holder, 0) >= self.settings.max_concurrent_large_bodies:
            problem = TooManyRequests(
                f"At most {self.settings.max_concurrent_large_bodies} requests with bodies over "
                f"{self.settings.large_body_bytes} bytes may be in flight per credential; retry.",
                retry_after=1,
            )
            await problem_response(problem, Request(scope))(scope, receive, send)
            return
        self.large_bodies_in_flight[holder] = self.large_bodies_in_flight.get(holder, 0) + 1
        try:
            await self.app(scope, receive, send)
        finally:
            remaining = self.large_bodies_in_flight.pop(holder) - 1
            if remaining:
                self.large_bodies_in_flight[holder] = remaining
