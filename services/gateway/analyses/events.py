"""Server-Sent Events for one analysis, read from its Redis stream (shared/events.py).

The stream ids are the SSE ids, so ``Last-Event-ID`` resumes right after the last event the
client saw. The stream ends after a terminal status; when the stream has expired the database
status is sent instead. Comments keep idle connections alive through proxies.
"""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable

import redis.asyncio as aioredis
from fastapi import Request

from shared.events import AnalysisEvent, read_events
from shared.settings import Settings

KEEPALIVE_SECONDS = 15
MAX_STREAM_SECONDS = 3600
RETRY_MILLISECONDS = 3000


def format_event(event: AnalysisEvent) -> str:
    data = json.dumps(event.data, separators=(",", ":"))
    return f"id: {event.id}\nevent: {event.type}\ndata: {data}\n\n"


async def analysis_event_stream(
    request: Request,
    client: aioredis.Redis,
    settings: Settings,
    analysis_id: uuid.UUID,
    after: str,
    load_status: Callable[[], Awaitable[dict | None]],
) -> AsyncIterator[str]:
    """``load_status`` returns the analysis' current status fields from the database, or None
    when it is gone."""
    yield f"retry: {RETRY_MILLISECONDS}\n\n"
    deadline = time.monotonic() + MAX_STREAM_SECONDS
    last_id = after
    waited = False  # the first read does not block, so a finished analysis answers at once
    while time.monotonic() < deadline:
        block_ms = KEEPALIVE_SECONDS * 1000 if waited else None
        events = await read_events(
            client, analysis_id, last_id, block_ms=block_ms, count=100, settings=settings
        )
        waited = True
        for event in events:
            last_id = event.id
            yield format_event(event)
            if event.is_terminal:
                return
        if events:
            continue
        if await request.is_disconnected():
            return
        current = await load_status()
        if current is None:
            return
        if current["status"] in ("succeeded", "failed", "canceled"):
            # Nothing newer in the stream (expired, or written without events): close with the
            # authoritative status so the client does not wait forever.
            yield f"event: status\ndata: {json.dumps(current, separators=(',', ':'))}\n\n"
            return
        if block_ms is not None:
            yield ": keep-alive\n\n"
