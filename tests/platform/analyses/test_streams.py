"""Many concurrent SSE streams on one real uvicorn: no database connection held, one Redis reader
for all of them, caps per key and per server answered as 429 problems, and a Redis outage
answered as fast 503 problems."""

from __future__ import annotations

import asyncio
import json
import socket
import time

import httpx
import pytest
import redis

from services.gateway.main import create_app
from services.platform.analyses.events import publish_event
from tests.fixtures.db import empty_all_tables, engine_for
from tests.gateway.conftest import (
    delete_prefixed_keys,
    delete_queued_jobs,
    make_settings,
    new_api_key,
    running_server,
    sign_up,
)

PUBLIC_URL = "https://93.184.215.14/clip.mp4"
PER_KEY = 25
PER_SERVER = 40


@pytest.fixture
def stream_settings(pg_url, tmp_path, redis_client):
    empty_all_tables(engine_for(pg_url))
    settings = make_settings(pg_url, tmp_path, sse_max_streams=PER_SERVER, sse_max_streams_per_key=PER_KEY)
    yield settings
    delete_queued_jobs(redis_client, settings.queue_name)
    delete_prefixed_keys(redis_client, settings.redis_key_prefix)


def named_connections(client: redis.Redis, name: str) -> list[dict]:
    return [entry for entry in client.client_list() if entry.get("name") == name]


async def open_stream(client: httpx.AsyncClient, analysis_id: str, key: str, opened: asyncio.Queue):
    """Opens the stream, reports (status, first events) and keeps reading until cancelled."""
    async with client.stream("GET", f"/v1/analyses/{analysis_id}/events", headers={"X-API-Key": key}) as r:
        if r.status_code != 200:
            await r.aread()
            await opened.put((r.status_code, r.headers.get("retry-after"), r.json()))
            return
        await opened.put((200, None, None))
        async for line in r.aiter_lines():
            if line.startswith("data:"):
                await opened.put(("event", None, json.loads(line[5:])))


def test_streams_share_one_reader_hold_no_db_connection_and_are_capped(stream_settings, redis_client):
    app = create_app(stream_settings)
    with running_server(app) as base_url, httpx.Client(base_url=base_url, timeout=30) as client:
        account = sign_up(client)
        first_key, second_key = new_api_key(client, account)["key"], new_api_key(client, account)["key"]
        analysis_id = client.post(
            "/v1/analyses", json={"video_url": PUBLIC_URL}, headers={"X-API-Key": first_key}
        ).json()["id"]
        client.get("/v1/usage", headers={"X-API-Key": second_key})  # its last_used_at is written now

        async def scenario() -> dict:
            limits = httpx.Limits(max_connections=PER_SERVER + 10)
            async with httpx.AsyncClient(base_url=base_url, timeout=30, limits=limits) as http:
                opened: asyncio.Queue = asyncio.Queue()
                tasks, answers = [], []
                # One key past its own cap, then another past the server's.
                for key, count in ((first_key, PER_KEY + 1), (second_key, PER_SERVER - PER_KEY + 1)):
                    for _ in range(count):
                        tasks.append(asyncio.create_task(open_stream(http, analysis_id, key, opened)))
                    answers += [await asyncio.wait_for(opened.get(), 20) for _ in range(count)]
                while app.state.stream_slots.total < PER_SERVER:
                    await asyncio.sleep(0.05)
                settle = time.monotonic() + 5  # each stream's first status check ends quickly
                while app.state.engine.pool.checkedout() and time.monotonic() < settle:
                    await asyncio.sleep(0.05)
                held = {
                    "checked_out": app.state.engine.pool.checkedout(),
                    "readers": len(
                        named_connections(redis_client, f"{stream_settings.redis_key_prefix}gateway-events")
                    ),
                }
                started = time.monotonic()
                usage = await http.get("/v1/usage", headers={"X-API-Key": second_key})
                held["usage"] = (usage.status_code, time.monotonic() - started)
                publish_event(redis_client, analysis_id, "status", {"status": "processing"}, stream_settings)
                delivered = [await asyncio.wait_for(opened.get(), 20) for _ in range(PER_SERVER)]
                for task in tasks:
                    task.cancel()
                await asyncio.gather(*tasks, return_exceptions=True)
                return {"answers": answers, "held": held, "delivered": delivered}

        result = asyncio.run(scenario())
        statuses = [status for status, _, _ in result["answers"]]
        assert statuses.count(200) == PER_SERVER and statuses.count(429) == 2, statuses
        refused = [(retry_after, body) for status, retry_after, body in result["answers"] if status == 429]
        for retry_after, body in refused:
            assert body["code"] == "too_many_streams" and int(retry_after) >= 1
        assert sorted(body["limit"] for _, body in refused) == [PER_KEY, PER_SERVER]
        assert result["held"]["checked_out"] == 0  # no stream holds a database connection
        assert result["held"]["readers"] == 1  # one Redis reader for every stream
        assert result["held"]["usage"][0] == 200 and result["held"]["usage"][1] < 5
        assert [kind for kind, _, _ in result["delivered"]] == ["event"] * PER_SERVER
        assert all(data == {"status": "processing"} for _, _, data in result["delivered"])
        deadline = time.monotonic() + 10
        while app.state.stream_slots.total and time.monotonic() < deadline:
            time.sleep(0.05)
        assert app.state.stream_slots.total == 0  # every slot was given back
        resumed = {"X-API-Key": first_key, "Last-Event-ID": "0"}
        with client.stream("GET", f"/v1/analyses/{analysis_id}/events", headers=resumed) as again:
            assert again.status_code == 200  # the caps count open streams only
            lines = again.iter_lines()
            assert next(lines).startswith("retry:")
            head = [next(lines) for _ in range(4)]
            assert head[2:] == ["event: status", 'data: {"status":"processing"}']


def test_redis_outage_is_a_fast_503_problem(database_url, tmp_path, redis_client):
    """A gateway whose Redis does not answer (a closed loopback port) answers 503 + Retry-After
    within its socket timeouts instead of hanging or answering 500."""
    settings = make_settings(database_url, tmp_path, redis_retry_after_seconds=7)
    with running_server(create_app(settings)) as url, httpx.Client(base_url=url, timeout=30) as client:
        key = new_api_key(client, sign_up(client))["key"]
    delete_prefixed_keys(redis_client, settings.redis_key_prefix)
    with socket.socket() as reserved:
        reserved.bind(("127.0.0.1", 0))
        dead_port = reserved.getsockname()[1]
    outage = settings.model_copy(update={"redis_url": f"redis://127.0.0.1:{dead_port}/0"})
    with running_server(create_app(outage)) as url, httpx.Client(base_url=url, timeout=30) as client:
        for method, path in (("GET", "/v1/usage"), ("POST", "/v1/analyses"), ("GET", "/v1/analyses")):
            started = time.monotonic()
            response = client.request(
                method, path, headers={"X-API-Key": key}, json={"video_url": PUBLIC_URL}
            )
            assert time.monotonic() - started < 5
            assert response.status_code == 503, response.text
            assert response.headers["retry-after"] == "7"
            assert response.headers["content-type"].startswith("application/problem+json")
            assert response.json()["code"] == "redis_unavailable"
