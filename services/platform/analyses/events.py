"""Per-analysis event streams in Redis Streams: the worker publishes status changes and scored
utterances, the gateway's SSE endpoint reads them from a ``Last-Event-ID``.

Stream entry ids (``<ms>-<seq>``) are the SSE event ids, so a reconnecting client resumes exactly
after the last event it saw. Each stream is capped in length and expires a while after its last
event (``event_stream_ttl_seconds``); the database remains the source of truth.

Event types: ``status`` ({"status", "error_code"?, "error_message"?}), ``utterance`` (one result
as the API returns it), ``summary``. A ``status`` event with a terminal status ends the stream.
"""

from __future__ import annotations

import json
import re
import uuid
from dataclasses import dataclass
from typing import Any

import redis
import redis.asyncio as aioredis

from shared.settings import Settings, get_settings

MAX_STREAM_LENGTH = 10_000
TERMINAL_STATUSES = frozenset({"succeeded", "failed", "canceled"})


@dataclass(frozen=True)
class AnalysisEvent:
    id: str
    type: str
    data: dict[str, Any]

    @property
    def is_terminal(self) -> bool:
        return self.type == "status" and self.data.get("status") in TERMINAL_STATUSES


def stream_key(analysis_id: uuid.UUID | str, settings: Settings | None = None) -> str:
    prefix = (settings or get_settings()).redis_key_prefix
    return f"{prefix}analysis:{analysis_id}:events"


def _queue_event(pipe, key: str, event_type: str, data: dict[str, Any], settings: Settings) -> None:
    """Queue the append and the stream's renewed expiry on a transaction pipeline (sync or asyncio)."""
    fields = {"type": event_type, "data": json.dumps(data, separators=(",", ":"), default=str)}
    pipe.xadd(key, fields, maxlen=MAX_STREAM_LENGTH, approximate=True)
    pipe.expire(key, settings.event_stream_ttl_seconds)


def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value


def publish_event(
    client: redis.Redis,
    analysis_id: uuid.UUID | str,
    event_type: str,
    data: dict[str, Any],
    settings: Settings | None = None,
) -> str:
    """Append an event (sync client); returns its id."""
    settings = settings or get_settings()
    key = stream_key(analysis_id, settings)
    with client.pipeline(transaction=True) as pipe:
        _queue_event(pipe, key, event_type, data, settings)
        event_id, _ = pipe.execute()
    return _text(event_id)


async def apublish_event(
    client: aioredis.Redis,
    analysis_id: uuid.UUID | str,
    event_type: str,
    data: dict[str, Any],
    settings: Settings | None = None,
) -> str:
    """Append an event (asyncio client, e.g. arq's ``ctx["redis"]``); returns its id."""
    settings = settings or get_settings()
    key = stream_key(analysis_id, settings)
    async with client.pipeline(transaction=True) as pipe:
        _queue_event(pipe, key, event_type, data, settings)
        event_id, _ = await pipe.execute()
    return _text(event_id)


def decode_entries(entries) -> list[AnalysisEvent]:
    events = []
    for raw_id, fields in entries:
        decoded = {_text(k): _text(v) for k, v in fields.items()}
        event_id = _text(raw_id)
        events.append(
            AnalysisEvent(event_id, decoded.get("type", "message"), json.loads(decoded.get("data", "{}")))
        )
    return events


# A Redis stream id (`<milliseconds>-<sequence>`, or the milliseconds alone), each part short
# enough to fit Redis' 64-bit integers; the API documents the same pattern for Last-Event-ID.
EVENT_ID_PATTERN = r"^[0-9]{1,19}(-[0-9]{1,19})?$"
_EVENT_ID = re.compile(EVENT_ID_PATTERN)


def is_valid_event_id(value: str) -> bool:
    return _EVENT_ID.fullmatch(value) is not None


async def read_events(
    client: aioredis.Redis,
    analysis_id: uuid.UUID | str,
    after: str = "0",
    *,
    block_ms: int | None = None,
    count: int = 100,
    settings: Settings | None = None,
) -> list[AnalysisEvent]:
    """Events after id ``after`` ("0" = from the start), waiting up to ``block_ms`` for new ones."""
    key = stream_key(analysis_id, settings)
    response = await client.xread({key: after}, count=count, block=block_ms)
    if not response:
        return []
    _, entries = response[0]
    return decode_entries(entries)


def read_events_sync(
    client: redis.Redis, analysis_id: uuid.UUID | str, after: str = "0", *, settings: Settings | None = None
) -> list[AnalysisEvent]:
    response = client.xread({stream_key(analysis_id, settings): after}, count=MAX_STREAM_LENGTH)
    return decode_entries(response[0][1]) if response else []
