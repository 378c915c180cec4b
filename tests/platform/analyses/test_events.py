"""services/platform/analyses/events.py on the real Redis: ids, resumption, terminal detection, expiry."""

from __future__ import annotations

import asyncio
import uuid

import redis.asyncio as aioredis

from services.platform.analyses.events import (
    apublish_event,
    is_valid_event_id,
    publish_event,
    read_events,
    read_events_sync,
    stream_key,
)


def test_publish_and_resume(redis_client, settings):
    analysis_id = uuid.uuid4()
    ids = [publish_event(redis_client, analysis_id, "utterance", {"index": i}, settings) for i in range(3)]
    final = publish_event(
        redis_client, analysis_id, "status", {"status": "failed", "error_code": "x"}, settings
    )
    events = read_events_sync(redis_client, analysis_id, settings=settings)
    assert [e.id for e in events] == [*ids, final]
    assert [e.data for e in events[:3]] == [{"index": 0}, {"index": 1}, {"index": 2}]
    assert events[-1].is_terminal and not events[0].is_terminal
    assert [
        e.data["index"] for e in read_events_sync(redis_client, analysis_id, ids[0], settings=settings)[:2]
    ] == [
        1,
        2,
    ]
    ttl = redis_client.ttl(stream_key(analysis_id, settings))
    assert 0 < ttl <= settings.event_stream_ttl_seconds


def test_async_publish_and_blocking_read(settings):
    async def scenario():
        client = aioredis.Redis.from_url(settings.redis_url)
        try:
            analysis_id = uuid.uuid4()
            reader = asyncio.create_task(
                read_events(client, analysis_id, "$", block_ms=5000, settings=settings)
            )
            await asyncio.sleep(0.2)
            await apublish_event(client, analysis_id, "status", {"status": "processing"}, settings)
            return await reader
        finally:
            await client.aclose()

    events = asyncio.run(scenario())
    assert [(e.type, e.data) for e in events] == [("status", {"status": "processing"})]


def test_event_id_validation():
    assert is_valid_event_id("1764150000000-0") and is_valid_event_id("0")
    # Arabic-Indic digits are digits to str.isdigit, not to Redis; 20 digits overflow its integers.
    for bad in ("", "abc", "1-2-3", "1-x", "$", "1" * 50, "\u0663", "9" * 20, "1-" + "9" * 20):
        assert not is_valid_event_id(bad)
