"""Server-Sent Events for one analysis, read from its Redis stream (services/platform/analyses/events.py).

The stream ids are the SSE ids, so ``Last-Event-ID`` resumes right after the last event the
client saw. The stream ends after a terminal status; when the stream has expired the database
status is sent instead. Comments keep idle connections alive through proxies.

A stream holds neither a database connection nor a Redis connection of its own: the request
authenticates and releases its session, reads what is already in the Redis stream with one
non-blocking command, then waits on an in-memory queue fed by the process's single
:class:`EventHub`, whose one connection blocks on ``XREAD`` over every watched stream at once.
Open streams are capped per process and per API key (or user); :class:`StreamSlots` hands out
the places and answers a 429 problem with ``Retry-After`` past either cap.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
import uuid
from collections import Counter
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field

import redis.asyncio as aioredis
import redis.exceptions
from starlette.responses import StreamingResponse
from starlette.types import Receive, Scope, Send

from services.platform.analyses.events import AnalysisEvent, decode_entries, read_events, stream_key
from shared.logging import get_logger
from shared.problems import TooManyRequests
from shared.settings import Settings

log = get_logger(__name__)

MAX_STREAM_SECONDS = 3600
RETRY_MILLISECONDS = 3000
# Events one stream may have waiting in memory; a client that reads slower than that is closed
# (it reconnects with Last-Event-ID and loses nothing).
SUBSCRIBER_QUEUE_EVENTS = 1000
# Events read per stream per XREAD round of the hub.
HUB_READ_COUNT = 200


class TooManyStreams(TooManyRequests):
    code, title = "too_many_streams", "Too many open event streams"


def format_event(event: AnalysisEvent) -> str:
    data = json.dumps(event.data, separators=(",", ":"))
    return f"id: {event.id}\nevent: {event.type}\ndata: {data}\n\n"


def _id_key(event_id: str) -> tuple[int, int]:
    milliseconds, _, sequence = event_id.partition("-")
    return int(milliseconds or 0), int(sequence or 0)


# --- caps ---------------------------------------------------------------------------------------
@dataclass
class StreamSlot:
    slots: StreamSlots
    identity: str
    released: bool = False

    def release(self) -> None:
        if not self.released:
            self.released = True
            self.slots.release(self.identity)


@dataclass
class StreamSlots:
    """Open-stream counters of this process: at most ``per_server`` in all, ``per_key`` per identity."""

    per_server: int
    per_key: int
    retry_after: int
    total: int = 0
    by_identity: Counter[str] = field(default_factory=Counter)

    def acquire(self, identity: str) -> StreamSlot:
        if self.total >= self.per_server:
            raise TooManyStreams(
                "This server holds its maximum of open event streams; retry shortly.",
                retry_after=self.retry_after,
                limit=self.per_server,
            )
        if self.by_identity[identity] >= self.per_key:
            raise TooManyStreams(
                f"At most {self.per_key} event streams may be open per API key or user; close one first.",
                retry_after=self.retry_after,
                limit=self.per_key,
            )
        self.total += 1
        self.by_identity[identity] += 1
        return StreamSlot(self, identity)

    def release(self, identity: str) -> None:
        self.total -= 1
        self.by_identity[identity] -= 1
        if self.by_identity[identity] <= 0:
            del self.by_identity[identity]


class EventStreamResponse(StreamingResponse):
    """Gives its slot back however the response ends (finished, client gone, never started)."""

    def __init__(self, content, slot: StreamSlot, **kwargs):
        super().__init__(content, **kwargs)
        self.slot = slot

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        try:
            await super().__call__(scope, receive, send)
        finally:
            self.slot.release()


# --- the hub ------------------------------------------------------------------------------------
class Subscription:
    def __init__(self, key: str, after: str):
        self.key = key
        self.last_id = after
        self.queue: asyncio.Queue[AnalysisEvent | None] = asyncio.Queue(SUBSCRIBER_QUEUE_EVENTS)
        self.overflowed = False

    def offer(self, event: AnalysisEvent) -> None:
        if self.overflowed:
            return
        try:
            self.queue.put_nowait(event)
        except asyncio.QueueFull:
            self.overflowed = True
            self.queue.get_nowait()
            self.queue.put_nowait(None)  # tells the stream to close; the client resumes


class EventHub:
    """One reader per process: a single connection blocks on ``XREAD`` over every watched stream
    and fans each new entry out to that stream's subscribers."""

    def __init__(self, client: aioredis.Redis, *, block_ms: int = 1000, retry_seconds: float = 1.0):
        self.client = client
        self.block_ms = block_ms
        self.retry_seconds = retry_seconds
        self.subscribers: dict[str, set[Subscription]] = {}
        self.cursors: dict[str, str] = {}
        self.task: asyncio.Task | None = None

    def subscribe(self, key: str, after: str) -> Subscription:
        subscription = Subscription(key, after)
        self.subscribers.setdefault(key, set()).add(subscription)
        cursor = self.cursors.get(key)
        if cursor is None or _id_key(after) < _id_key(cursor):
            # Read from the earliest position any subscriber still needs; the others skip repeats.
            self.cursors[key] = after
        if self.task is None or self.task.done():
            self.task = asyncio.create_task(self._run(), name="event-hub")
        return subscription

    def unsubscribe(self, subscription: Subscription) -> None:
        watchers = self.subscribers.get(subscription.key)
        if watchers is None:
            return
        watchers.discard(subscription)
        if not watchers:
            del self.subscribers[subscription.key]
            self.cursors.pop(subscription.key, None)

    async def close(self) -> None:
        if self.task is not None:
            self.task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await self.task
        await self.client.aclose()

    async def _run(self) -> None:
        while self.subscribers:
            streams = dict(self.cursors)
            try:
                response = await self.client.xread(streams, count=HUB_READ_COUNT, block=self.block_ms)
            except redis.exceptions.RedisError as exc:
                # Streams keep their keep-alives and database checks; reading resumes from the
                # same cursors once Redis answers again.
                log.warning("event_hub_redis_unavailable", error=str(exc))
                await asyncio.sleep(self.retry_seconds)
                continue
            for raw_key, entries in response or []:
                key = raw_key.decode() if isinstance(raw_key, bytes) else raw_key
                events = decode_entries(entries)
                if not events or key not in self.cursors:
                    continue
                if _id_key(events[-1].id) > _id_key(self.cursors[key]):
                    self.cursors[key] = events[-1].id
                for subscription in list(self.subscribers.get(key, ())):
                    for event in events:
                        if _id_key(event.id) > _id_key(subscription.last_id):
                            subscription.offer(event)


# --- one stream ---------------------------------------------------------------------------------
async def initial_events(
    client: aioredis.Redis, settings: Settings, analysis_id: uuid.UUID, after: str
) -> list[AnalysisEvent]:
    """What the stream holds after ``after``, read without blocking (Redis errors propagate, so
    the request can still answer a 503 problem before the stream starts)."""
    events: list[AnalysisEvent] = []
    while True:
        batch = await read_events(client, analysis_id, after, count=1000, settings=settings)
        events.extend(batch)
        if len(batch) < 1000 or batch[-1].is_terminal:
            return events
        after = batch[-1].id


async def analysis_event_stream(
    hub: EventHub,
    settings: Settings,
    analysis_id: uuid.UUID,
    after: str,
    backlog: list[AnalysisEvent],
    load_status: Callable[[], Awaitable[dict | None]],
) -> AsyncIterator[str]:
    """``backlog`` is what :func:`initial_events` read; ``load_status`` returns the analysis' current
    status fields from the database, or None when it is gone."""
    yield f"retry: {RETRY_MILLISECONDS}\n\n"
    last_id = after
    for event in backlog:
        last_id = event.id
        yield format_event(event)
        if event.is_terminal:
            return
    subscription = hub.subscribe(stream_key(analysis_id, settings), last_id)
    deadline = time.monotonic() + MAX_STREAM_SECONDS
    # With nothing in the stream yet, ask the database at once (the stream may have expired).
    checked_at = time.monotonic() if backlog else 0.0
    try:
        while time.monotonic() < deadline:
            if time.monotonic() - checked_at >= settings.sse_status_check_seconds:
                checked_at = time.monotonic()
                current = await load_status()
                if current is None:
                    return
                if current["status"] in ("succeeded", "failed", "canceled") and subscription.queue.empty():
                    # Nothing newer in the stream (expired, or written without events): close with
                    # the authoritative status so the client does not wait forever.
                    yield f"event: status\ndata: {json.dumps(current, separators=(',', ':'))}\n\n"
                    return
            try:
                event = await asyncio.wait_for(subscription.queue.get(), settings.sse_keepalive_seconds)
            except TimeoutError:
                yield ": keep-alive\n\n"
                continue
            if event is None:  # the client fell too far behind: it resumes from its last id
                return
            if _id_key(event.id) <= _id_key(subscription.last_id):
                continue
            subscription.last_id = event.id
            yield format_event(event)
            if event.is_terminal:
                return
    finally:
        hub.unsubscribe(subscription)
