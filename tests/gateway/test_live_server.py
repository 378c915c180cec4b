"""Against a real uvicorn on a loopback port: 100 concurrent submissions at the quota boundary,
Server-Sent Events with Last-Event-ID resumption, and the per-key rate limit headers."""

from __future__ import annotations

import json
import threading
import time

import httpx
import pytest
from sqlalchemy import select, update

from services.gateway.main import create_app
from services.platform.analyses.events import publish_event
from shared.db.models import Analysis, UsagePeriod
from shared.settings import PlanLimits
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


@pytest.fixture
def pg_settings(pg_url, tmp_path, redis_client):
    empty_all_tables(engine_for(pg_url))
    settings = make_settings(
        pg_url,
        tmp_path,
        plans={
            "free": PlanLimits(
                analyses_per_month=37, video_seconds_per_month=3600, requests_per_minute=10_000
            )
        },
    )
    yield settings
    delete_queued_jobs(redis_client, settings.queue_name)
    delete_prefixed_keys(redis_client, settings.redis_key_prefix)


def test_100_concurrent_submissions_accept_exactly_the_remaining_quota(pg_settings, pg_url, redis_client):
    with (
        running_server(create_app(pg_settings)) as base_url,
        httpx.Client(base_url=base_url, timeout=60) as client,
    ):
        key = new_api_key(client, sign_up(client))["key"]
        for _ in range(7):  # 30 of 37 left
            assert (
                client.post(
                    "/v1/analyses", json={"video_url": PUBLIC_URL}, headers={"X-API-Key": key}
                ).status_code
                == 202
            )
        barrier = threading.Barrier(100)
        statuses: list[int] = []
        lock = threading.Lock()

        def submit() -> None:
            with httpx.Client(base_url=base_url, timeout=120) as own:
                barrier.wait()
                response = own.post(
                    "/v1/analyses", json={"video_url": PUBLIC_URL}, headers={"X-API-Key": key}
                )
            with lock:
                statuses.append(response.status_code)

        threads = [threading.Thread(target=submit) for _ in range(100)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(timeout=180)
        assert len(statuses) == 100
        assert statuses.count(202) == 30 and statuses.count(429) == 70, sorted(set(statuses))
        usage = client.get("/v1/usage", headers={"X-API-Key": key}).json()
        assert usage["analyses"] == {"used": 37, "limit": 37, "remaining": 0}
    with engine_for(pg_url).connect() as connection:
        assert len(connection.execute(select(Analysis.id)).all()) == 37
        assert connection.execute(select(UsagePeriod.analyses_used)).scalar_one() == 37
    assert redis_client.zcard(pg_settings.queue_name) == 37


def read_sse(response: httpx.Response, stop_after: int) -> list[dict]:
    events, current = [], {}
    for line in response.iter_lines():
        if line == "":
            if "data" in current:
                events.append(current)
                if len(events) >= stop_after:
                    break
            current = {}
            continue
        if line.startswith(":"):
            continue
        field, _, value = line.partition(":")
        current[field] = value.removeprefix(" ")
    return events


def test_sse_streams_and_resumes_with_last_event_id(settings, redis_client):
    with (
        running_server(create_app(settings)) as base_url,
        httpx.Client(base_url=base_url, timeout=30) as client,
    ):
        key = new_api_key(client, sign_up(client))["key"]
        analysis_id = client.post(
            "/v1/analyses", json={"video_url": PUBLIC_URL}, headers={"X-API-Key": key}
        ).json()["id"]
        publish_event(redis_client, analysis_id, "status", {"status": "processing"}, settings)

        def worker() -> None:
            time.sleep(0.5)  # after the client is connected and waiting
            for index in range(3):
                publish_event(
                    redis_client, analysis_id, "utterance", {"index": index, "emotion": "joy"}, settings
                )

        publisher = threading.Thread(target=worker)
        publisher.start()
        with client.stream(
            "GET", f"/v1/analyses/{analysis_id}/events", headers={"X-API-Key": key}
        ) as response:
            assert response.status_code == 200
            assert response.headers["content-type"].startswith("text/event-stream")
            first = read_sse(response, stop_after=3)
        assert [e["event"] for e in first] == ["status", "utterance", "utterance"]
        assert json.loads(first[1]["data"]) == {"index": 0, "emotion": "joy"}

        publisher.join(10)  # its third utterance comes before the final status, as a worker's would
        publish_event(redis_client, analysis_id, "status", {"status": "succeeded"}, settings)
        resumed_headers = {"X-API-Key": key, "Last-Event-ID": first[-1]["id"]}
        with client.stream("GET", f"/v1/analyses/{analysis_id}/events", headers=resumed_headers) as response:
            rest = read_sse(response, stop_after=10)  # the stream ends by itself after "succeeded"
        assert [(e["event"], json.loads(e["data"])) for e in rest] == [
            ("utterance", {"index": 2, "emotion": "joy"}),
            ("status", {"status": "succeeded"}),
        ]
        bad = client.get(
            f"/v1/analyses/{analysis_id}/events", headers={"X-API-Key": key, "Last-Event-ID": "x; drop"}
        )
        assert bad.status_code == 400 and bad.json()["code"] == "invalid_event_id"


def test_sse_of_finished_analysis_without_stream_ends_with_db_status(settings, redis_client, database_url):
    from services.platform.analyses.events import stream_key

    with (
        running_server(create_app(settings)) as base_url,
        httpx.Client(base_url=base_url, timeout=60) as client,
    ):
        key = new_api_key(client, sign_up(client))["key"]
        analysis_id = client.post(
            "/v1/analyses", json={"video_url": PUBLIC_URL}, headers={"X-API-Key": key}
        ).json()["id"]
        from sqlalchemy import update

        with engine_for(database_url).begin() as connection:
            connection.execute(
                update(Analysis).values(status="failed", error_code="not_media", error_message="not a video")
            )
        redis_client.delete(stream_key(analysis_id, settings))
        started = time.monotonic()
        with client.stream(
            "GET", f"/v1/analyses/{analysis_id}/events", headers={"X-API-Key": key}
        ) as response:
            events = read_sse(response, stop_after=5)
        assert [json.loads(e["data"]) for e in events] == [
            {"status": "failed", "error_code": "not_media", "error_message": "not a video"}
        ]
        assert time.monotonic() - started < 5  # answered from the database, without waiting


def test_rate_limit_headers_and_429(database_url, tmp_path, redis_client):
    settings = make_settings(
        database_url,
        tmp_path,
        plans={"free": PlanLimits(analyses_per_month=5, video_seconds_per_month=60, requests_per_minute=3)},
    )
    try:
        with running_server(create_app(settings)) as base_url, httpx.Client(base_url=base_url) as client:
            account = sign_up(client)
            key = new_api_key(client, account)["key"]
            other_key = new_api_key(client, account)["key"]
            responses = [client.get("/v1/usage", headers={"X-API-Key": key}) for _ in range(4)]
            assert [r.status_code for r in responses[:3]] == [200, 200, 200]
            policies = responses[0].headers["ratelimit-policy"].split(", ")
            assert policies[0] == '"requests";q=3;w=60'
            assert policies[1].startswith('"analyses";q=5;w=') and policies[2].startswith(
                '"video-seconds";q=60;w='
            )
            assert responses[0].headers["ratelimit"].split(", ")[1].startswith('"analyses";r=5;t=')
            remaining = [r.headers["ratelimit"].split(";")[1] for r in responses[:3]]
            assert remaining == ["r=2", "r=1", "r=0"]
            limited = responses[3]
            assert limited.status_code == 429 and limited.json()["code"] == "rate_limited"
            assert 1 <= int(limited.headers["retry-after"]) <= 60
            assert limited.headers["ratelimit"].startswith('"requests";r=0;t=')
            # The limit is per key: another key of the same user still has its own window.
            assert client.get("/v1/usage", headers={"X-API-Key": other_key}).status_code == 200
            assert client.get("/healthz").status_code == 200
    finally:
        delete_prefixed_keys(redis_client, settings.redis_key_prefix)


def test_submission_over_quota_is_refused_without_waiting_for_a_reservation_lock(
    pg_settings, pg_url, redis_client
):
    """A request that cannot fit is answered while another transaction holds the usage row's lock
    (a concurrent reservation that has not committed yet)."""
    with (
        running_server(create_app(pg_settings)) as base_url,
        httpx.Client(base_url=base_url, timeout=30) as client,
    ):
        key = new_api_key(client, sign_up(client))["key"]
        for _ in range(37):
            response = client.post("/v1/analyses", json={"video_url": PUBLIC_URL}, headers={"X-API-Key": key})
            assert response.status_code == 202
        with engine_for(pg_url).connect() as holder:
            holder.execute(update(UsagePeriod).values(analyses_used=UsagePeriod.analyses_used))  # row lock
            refused = client.post(
                "/v1/analyses",
                json={"video_url": PUBLIC_URL},
                headers={"X-API-Key": key},
                timeout=httpx.Timeout(30, read=10),
            )
            holder.rollback()
        assert refused.status_code == 429 and refused.json()["code"] == "quota_exceeded"
        assert int(refused.headers["retry-after"]) >= 1
