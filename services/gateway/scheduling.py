"""Request scheduling: a bounded number of requests run at once, the rest wait their turn client
by client, so a flood from one client delays that client's requests and not everyone's.

Every request that reaches the event loop runs its first step in the loop turn after it arrives:
a burst of a thousand requests (refused ones included, which finish in that step) makes one turn
last half a second, and every other request, ``/healthz`` too, waits for it. Here at most
``max_active_requests`` requests of this process are past this point at once; the others wait,
each in its client's queue, and a freed slot goes to the next client in turn (round robin), not
to the oldest request. A client is what the headers prove cheaply: the account of a JWT whose
signature is valid, an API key verified in the last second, or else the TCP peer's address
(``services.gateway.admission.requester``).

A slot is held until the response starts, so event streams and long downloads do not keep it.
Liveness and readiness probes and streamed uploads (whose bodies take as long as the client
sends them) never wait. A client with ``max_waiting_requests_per_client`` requests waiting gets
429 with ``Retry-After``; a process with ``max_waiting_requests`` waiting answers 503.
"""

from __future__ import annotations

import asyncio
import re
from collections import OrderedDict, deque

from fastapi.routing import iter_route_contexts
from starlette.requests import Request
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from services.gateway.admission import requester, routed_path
from shared.logging import get_logger
from shared.problems import ServiceUnavailable, TooManyRequests, problem_response
from shared.settings import Settings

log = get_logger(__name__)

# Routes that never wait: the probes must answer under any load, and an upload's slot would be
# held for as long as its body streams in.
UNSCHEDULED_ROUTES = frozenset({"healthz", "readyz", "put_upload_content"})


class TooManyWaitingRequests(TooManyRequests):
    """This client already has the most requests waiting for their turn that one client may have;
    retry after ``Retry-After`` seconds."""

    code, title = "too_many_waiting_requests", "Too many requests waiting"


class ServerBusy(ServiceUnavailable):
    """The gateway process has the most requests waiting that it queues; retry shortly."""

    code, title = "server_busy", "The server is busy"


class RequestScheduler:
    def __init__(self, app: ASGIApp, settings: Settings):
        self.app = app
        self.settings = settings
        self.unscheduled: list[tuple[re.Pattern[str], frozenset[str] | None]] | None = None
        # The event loop is the only writer of these, so they need no lock.
        self.active = 0
        self.waiting: OrderedDict[str, deque[asyncio.Future[None]]] = OrderedDict()
        self.waiting_total = 0

    def _is_unscheduled(self, scope: Scope) -> bool:
        if self.unscheduled is None:  # the routes are complete once the app serves
            self.unscheduled = [
                (route.path_regex, frozenset(route.methods) if route.methods else None)
                for route in iter_route_contexts(scope["app"].routes)
                if getattr(route, "name", None) in UNSCHEDULED_ROUTES and hasattr(route, "path_regex")
            ]
        path, method = routed_path(scope), scope["method"]
        return any(
            (methods is None or method in methods) and pattern.match(path)
            for pattern, methods in self.unscheduled
        )

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or self._is_unscheduled(scope):
            await self.app(scope, receive, send)
            return
        if self.active < self.settings.max_active_requests and not self.waiting:
            self.active += 1
        else:
            client = requester(scope, self.settings)
            refusal = self._refusal(client)
            if refusal is not None:
                await problem_response(refusal, Request(scope))(scope, receive, send)
                return
            await self._wait_for_slot(client)  # the slot is handed over, still counted in active
        released = False

        def release() -> None:
            nonlocal released
            if not released:
                released = True
                self._hand_on_slot()

        async def send_releasing(message: Message) -> None:
            if message["type"] == "http.response.start":
                release()
            await send(message)

        try:
            await self.app(scope, receive, send_releasing)
        finally:
            release()

    def _refusal(self, client: str) -> TooManyWaitingRequests | ServerBusy | None:
        settings = self.settings
        queue = self.waiting.get(client)
        if queue is not None and len(queue) >= settings.max_waiting_requests_per_client:
            return TooManyWaitingRequests(
                f"At most {settings.max_waiting_requests_per_client} requests per client wait for "
                "their turn; retry once earlier ones are answered.",
                retry_after=1,
            )
        if self.waiting_total >= settings.max_waiting_requests:
            log.warning("server_busy", waiting=self.waiting_total, active=self.active)
            return ServerBusy(
                "The server has too many requests waiting; retry shortly.", headers={"Retry-After": "1"}
            )
        return None

    async def _wait_for_slot(self, client: str) -> None:
        future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self.waiting.setdefault(client, deque()).append(future)
        self.waiting_total += 1
        try:
            await future
        except BaseException:
            if future.done() and not future.cancelled():
                self._hand_on_slot()  # granted as the request was cancelled: pass the slot on
            else:
                self._forget(client, future)
            raise

    def _forget(self, client: str, future: asyncio.Future[None]) -> None:
        queue = self.waiting.get(client)
        if queue is not None and future in queue:
            queue.remove(future)
            self.waiting_total -= 1
            if not queue:
                del self.waiting[client]

    def _hand_on_slot(self) -> None:
        """A slot is free: it goes to the first waiting request of the next client in turn, or
        back to the pool when nobody waits."""
        while self.waiting:
            client, queue = next(iter(self.waiting.items()))
            future = queue.popleft()
            self.waiting_total -= 1
            if queue:
                self.waiting.move_to_end(client)
            else:
                del self.waiting[client]
            if not future.done():
                future.set_result(None)
                return
        self.active -= 1
