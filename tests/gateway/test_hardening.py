"""Bounds that keep one hostile request from stalling the gateway: validation work and error
answers bounded by the schema, and database pools sized to the threads that use them."""

from __future__ import annotations

import json
import secrets
import threading
import uuid

import anyio
import httpx
import pytest
import redis.asyncio as aioredis
from fastapi.testclient import TestClient
from sqlalchemy import select

from services.gateway.limits import json_value_bound
from services.gateway.main import POOL_RESERVE, create_app
from services.platform.analyses import repository as analyses_repository
from services.platform.analyses.jobs import AnalysisRun
from services.platform.analyses.schemas import MAX_TRANSCRIPT_SEGMENTS
from services.platform.auth import service as auth_service
from services.platform.resources import Resources
from services.platform.webhooks.jobs import attempt_delivery
from shared.db.models import Analysis, User, UtteranceResult, WebhookDelivery
from shared.net.fetch import WORKSPACE_PREFIX, workspace_root
from shared.problems import MAX_VALIDATION_ERRORS
from shared.settings import Settings
from shared.storage import LocalStorage
from tests.fixtures.db import empty_all_tables, engine_for
from tests.gateway.conftest import (
    PASSWORD,
    delete_prefixed_keys,
    make_settings,
    new_api_key,
    running_server,
    sign_up,
)

PUBLIC_URL = "https://93.184.215.14/clip.mp4"


def test_validation_errors_are_bounded(client, api_key):
    bad_segments = [{"start": -1, "end": 0}] * 200  # two errors each
    response = client.post(
        "/v1/analyses",
        json={"video_url": PUBLIC_URL, "transcript": bad_segments},
        headers={"X-API-Key": api_key},
    )
    assert response.status_code == 422
    body = response.json()
    assert len(body["errors"]) == MAX_VALIDATION_ERRORS
    assert body["errors_total"] > MAX_VALIDATION_ERRORS


def test_a_transcript_longer_than_the_segment_limit_is_refused_before_its_items(client, api_key):
    # Invalid items past the limit are never validated: one "too long" error, not thousands.
    segments = [{"start": -1, "end": 0}] * (MAX_TRANSCRIPT_SEGMENTS + 1)
    response = client.post(
        "/v1/analyses",
        content=json.dumps({"video_url": PUBLIC_URL, "transcript": segments}),
        headers={"X-API-Key": api_key, "Content-Type": "application/json"},
    )
    assert response.status_code == 422
    assert "errors_total" not in response.json()
    assert any(error["type"] == "too_long" for error in response.json()["errors"])


def test_database_pool_holds_a_connection_for_every_request_session(database_url, tmp_path):
    settings = make_settings(database_url, tmp_path, gateway_threads=8)
    app = create_app(settings)

    async def default_tokens() -> float:
        return anyio.to_thread.current_default_thread_limiter().total_tokens

    with TestClient(app) as test_client:
        pool = app.state.engine.pool
        assert pool.size() == 4 and pool._max_overflow == POOL_RESERVE
        assert app.state.session_slots.value == 4 and app.state.commit_limiter.total_tokens == 4
        # Sync endpoints run on the server loop's default limiter (the TestClient's portal).
        assert test_client.portal.call(default_tokens) == 8


def test_requests_wait_for_a_session_on_the_event_loop_not_in_a_thread(pg_url, tmp_path, redis_client):
    """More concurrent database requests than sessions and threads: none times out waiting for a
    pooled connection inside a thread, and /healthz keeps answering meanwhile."""
    empty_all_tables(engine_for(pg_url))
    settings = make_settings(pg_url, tmp_path, gateway_threads=4)
    try:
        with (
            running_server(create_app(settings)) as base_url,
            httpx.Client(base_url=base_url, timeout=60) as client,
        ):
            key = new_api_key(client, sign_up(client))["key"]
            statuses: list[int] = []
            health: list[int] = []

            def read_usage() -> None:
                with httpx.Client(base_url=base_url, timeout=120) as own:
                    statuses.append(own.get("/v1/usage", headers={"X-API-Key": key}).status_code)

            threads = [threading.Thread(target=read_usage) for _ in range(60)]
            for thread in threads:
                thread.start()
            health.append(client.get("/healthz").status_code)
            for thread in threads:
                thread.join(timeout=180)
            assert statuses == [200] * 60 and health == [200]
    finally:
        delete_prefixed_keys(redis_client, settings.redis_key_prefix)


def test_an_unreachable_database_is_a_503_problem(tmp_path, redis_client):
    settings = make_settings("postgresql://nobody@127.0.0.1:1/none", tmp_path)
    with TestClient(create_app(settings), raise_server_exceptions=False) as client:
        response = client.post("/v1/auth/signup", json={"email": "a@example.com", "password": PASSWORD})
    assert response.status_code == 503 and response.json()["code"] == "database_unavailable"
    assert response.headers["Retry-After"] == "5"
    delete_prefixed_keys(redis_client, settings.redis_key_prefix)


def test_100_concurrent_wrong_passwords_get_exactly_the_limit_of_password_checks(settings, monkeypatch):
    checks: list[str] = []
    real_verify = auth_service.verify_password

    def counting_verify(password: str, password_hash: str | None) -> bool:
        checks.append(password)
        return real_verify(password, password_hash)

    monkeypatch.setattr(auth_service, "verify_password", counting_verify)
    with (
        running_server(create_app(settings)) as base_url,
        httpx.Client(base_url=base_url, timeout=60) as client,
    ):
        account = sign_up(client)
        checks.clear()
        barrier = threading.Barrier(100)
        statuses: list[int] = []

        def attempt() -> None:
            with httpx.Client(base_url=base_url, timeout=120) as own:
                barrier.wait()
                response = own.post("/v1/auth/login", data={"username": account.email, "password": "wrong!"})
            statuses.append(response.status_code)

        threads = [threading.Thread(target=attempt) for _ in range(100)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(timeout=180)
        assert len(checks) == settings.login_max_failures
        assert sorted(statuses) == [401] * settings.login_max_failures + [429] * (
            100 - settings.login_max_failures
        )
        # The right password is refused too while the window lasts.
        blocked = client.post("/v1/auth/login", data={"username": account.email, "password": PASSWORD})
        assert blocked.status_code == 429 and int(blocked.headers["Retry-After"]) >= 1


def test_successful_sign_ins_do_not_use_up_the_address_allowance(client, account, settings):
    for _ in range(settings.login_max_failures * 4 + 2):
        response = client.post("/v1/auth/login", data={"username": account.email, "password": PASSWORD})
        assert response.status_code == 200, response.text


def failed_logins_from_claimed_addresses(base_url: str, count: int) -> list[int]:
    statuses = []
    with httpx.Client(base_url=base_url, timeout=60) as client:
        for index in range(count):
            response = client.post(
                "/v1/auth/login",
                data={"username": f"nobody-{index}@example.com", "password": "wrong password"},
                headers={"X-Forwarded-For": f"203.0.113.{index + 1}"},
            )
            statuses.append(response.status_code)
    return statuses


def test_forwarded_addresses_are_ignored_unless_the_peer_is_a_trusted_proxy(settings):
    per_address = settings.login_max_failures * 4
    with running_server(create_app(settings)) as base_url:
        statuses = failed_logins_from_claimed_addresses(base_url, per_address + 1)
    # Every attempt counted against the real peer, 127.0.0.1, whatever the header claimed.
    assert statuses == [401] * per_address + [429]


def test_a_trusted_proxy_forwards_the_client_address(settings):
    trusting = settings.model_copy(update={"trusted_proxies": ["127.0.0.0/8"]})
    per_address = settings.login_max_failures * 4
    with running_server(create_app(trusting)) as base_url:
        statuses = failed_logins_from_claimed_addresses(base_url, per_address + 1)
    assert statuses == [401] * (per_address + 1)


def test_trusted_proxies_are_parsed_strictly(monkeypatch):
    monkeypatch.setenv("MOODREEL_TRUSTED_PROXIES", "10.0.0.0/8, 192.0.2.7")
    assert Settings().trusted_proxies == ["10.0.0.0/8", "192.0.2.7/32"]
    monkeypatch.setenv("MOODREEL_TRUSTED_PROXIES", '["::1"]')
    assert Settings().trusted_proxies == ["::1/128"]
    monkeypatch.setenv("MOODREEL_TRUSTED_PROXIES", "10.0.0.0/8,localhost")
    with pytest.raises(ValueError):
        Settings()
    monkeypatch.delenv("MOODREEL_TRUSTED_PROXIES")
    assert Settings().trusted_proxies == []


def worker_resources(client, settings) -> Resources:
    return Resources(
        settings=settings,
        sessions=client.app.state.session_factory,
        redis=aioredis.from_url(settings.redis_url),
        model=None,  # type: ignore[arg-type]  # failing and delivering never score
    )


async def test_a_failed_analysis_keeps_no_partial_results(client, api_key, settings):
    submitted = client.post("/v1/analyses", json={"video_url": PUBLIC_URL}, headers={"X-API-Key": api_key})
    analysis_id = uuid.UUID(submitted.json()["id"])
    sessions = client.app.state.session_factory
    prediction = {"label": "joy", "scores": {"joy": 0.9, "neutral": 0.1}}
    with sessions.begin() as session:
        assert analyses_repository.mark_processing(session, analysis_id)
        for index in range(3):
            session.add(
                UtteranceResult(
                    analysis_id=analysis_id,
                    index=index,
                    start=index,
                    end=index + 1,
                    emotion=prediction["label"],
                    emotion_scores=prediction["scores"],
                    sentiment="positive",
                    sentiment_scores={"positive": 1.0},
                )
            )
        session.get(Analysis, analysis_id).utterance_count = 3
    resources = worker_resources(client, settings)
    try:
        # ffmpeg quotes the file it read: a client must not learn the worker's directory layout.
        media = workspace_root(settings) / f"{WORKSPACE_PREFIX}4242-x1y2/media"
        message = f"the audio stream cannot be decoded: Error opening input file {media}."
        assert await AnalysisRun(resources, analysis_id).fail("corrupt", message)
    finally:
        await resources.redis.aclose()
    detail = client.get(f"/v1/analyses/{analysis_id}", headers={"X-API-Key": api_key}).json()
    assert detail["status"] == "failed" and detail["utterances"] == [] and detail["utterance_count"] == 0
    assert detail["error"]["message"].endswith("Error opening input file the media file")
    assert WORKSPACE_PREFIX not in detail["error"]["message"]
    with sessions() as session:
        assert (
            session.scalars(select(UtteranceResult).where(UtteranceResult.analysis_id == analysis_id)).all()
            == []
        )


def test_deleting_an_analysis_keeps_an_upload_another_analysis_uses(client, api_key, settings):
    media = b"\x00\x00\x00\x18ftypmp42" + bytes(range(256)) * 40
    body = {"filename": "clip.mp4", "content_type": "video/mp4", "size_bytes": len(media)}
    target = client.post("/v1/uploads", json=body, headers={"X-API-Key": api_key}).json()
    assert client.put(target["url"], content=media, headers=target["headers"]).status_code == 200
    first, second = (
        client.post(
            "/v1/analyses", json={"upload_id": target["upload_id"]}, headers={"X-API-Key": api_key}
        ).json()
        for _ in range(2)
    )
    stored = LocalStorage(settings.data_dir / "uploads")
    key = str(next((settings.data_dir / "uploads").rglob("*.mp4")).relative_to(settings.data_dir / "uploads"))
    assert client.delete(f"/v1/analyses/{first['id']}", headers={"X-API-Key": api_key}).status_code == 204
    assert stored.size(key) == len(media)
    assert client.get(f"/v1/uploads/{target['upload_id']}", headers={"X-API-Key": api_key}).status_code == 200
    assert client.delete(f"/v1/analyses/{second['id']}", headers={"X-API-Key": api_key}).status_code == 204
    assert stored.size(key) is None


async def test_a_webhook_delivery_refused_by_the_ssrf_rule_fails_at_once(client, account, settings):
    sessions = client.app.state.session_factory
    with sessions.begin() as session:
        user = session.scalar(select(User).where(User.email == account.email))
        delivery = WebhookDelivery(
            user_id=user.id,
            url="http://127.0.0.1:9/hook",
            message_id=f"msg_{uuid.uuid4().hex}",
            event_type="analysis.succeeded",
            payload={"type": "analysis.succeeded"},
        )
        session.add(delivery)
        session.flush()
        delivery_id = delivery.id
    resources = worker_resources(client, settings)
    try:
        outcome = await attempt_delivery(resources, delivery_id)
    finally:
        await resources.redis.aclose()
    assert outcome == {"status": "failed", "attempts": 1}
    with sessions() as session:
        stored = session.get(WebhookDelivery, delivery_id)
        assert stored.status == "failed" and stored.next_attempt_at is None
        assert stored.last_error.startswith("url_not_allowed")


def test_a_production_gateway_refuses_private_url_switches(database_url, tmp_path):
    strong = secrets.token_urlsafe(48)
    with pytest.raises(RuntimeError, match="ALLOW_PRIVATE_URLS_IN_PRODUCTION"):
        create_app(
            make_settings(
                database_url, tmp_path, environment="production", secret_key=strong, allow_private_urls=True
            )
        )
    create_app(
        make_settings(
            database_url,
            tmp_path,
            environment="production",
            secret_key=strong,
            allow_private_urls=True,
            allow_private_urls_in_production=True,
        )
    )


@pytest.mark.timeout(60)  # before the fix these requests wait for a session forever
def test_hopeless_credentials_and_upload_urls_are_refused_before_a_session_is_taken(client, api_key):
    """With every session slot taken, requests whose credentials or signed URL cannot be valid
    are still answered at once: they never wait for a session."""
    portal_semaphore = client.app.state.session_slots
    held = client.portal.call(_take_all, portal_semaphore)
    try:
        requests = [
            client.get("/v1/usage"),
            client.get("/v1/usage", headers={"Authorization": "Bearer eyJhbGciOiJub25lIn0.e30."}),
            client.get("/v1/usage", headers={"X-API-Key": "mr_live_" + "A" * 38}),
            client.put(f"/v1/uploads/{uuid.uuid4()}/content?expires=1&signature=%C3%96", content=b"x"),
        ]
    finally:
        client.portal.call(_give_back, portal_semaphore, held)
    assert [response.status_code for response in requests] == [401, 401, 401, 403]
    # A credential that could be valid does wait for a session, and then works.
    assert client.get("/v1/usage", headers={"X-API-Key": api_key}).status_code == 200


async def _take_all(semaphore: anyio.Semaphore) -> int:
    taken = 0
    while semaphore.value:
        await semaphore.acquire()
        taken += 1
    return taken


async def _give_back(semaphore: anyio.Semaphore, count: int) -> None:
    for _ in range(count):
        semaphore.release()


def test_a_json_body_of_too_many_values_is_refused_before_it_is_parsed(client, settings):
    # 600 kB, far under the size limit, but 200,001 values: seconds of parsing on a loaded host.
    dense = b"[" + b"[]," * settings.max_request_json_values + b"[]]"
    assert len(dense) < settings.max_request_body_bytes

    def streamed():
        for start in range(0, len(dense), 65536):
            yield dense[start : start + 65536]

    for content in (dense, streamed()):  # Content-Length, then chunked
        response = client.post(
            "/v1/auth/signup", content=content, headers={"Content-Type": "application/json"}
        )
        assert response.status_code == 413, response.text[:300]
        assert response.json()["code"] == "payload_too_large"
        assert str(settings.max_request_json_values) in response.json()["detail"]


def test_a_full_transcript_with_punctuated_text_is_within_the_value_bound(client, api_key, settings):
    segment = {"start": 0, "end": 0.9, "text": "Well, no, I mean, yes, {maybe} [laughs], right?"}
    longest = json.dumps({"video_url": PUBLIC_URL, "transcript": [segment] * MAX_TRANSCRIPT_SEGMENTS})
    assert json_value_bound(longest.encode()) < settings.max_request_json_values / 3
    segments = [{**segment, "start": index, "end": index + 0.9} for index in range(settings.max_utterances)]
    response = client.post(
        "/v1/analyses", json={"video_url": PUBLIC_URL, "transcript": segments}, headers={"X-API-Key": api_key}
    )
    assert response.status_code == 202, response.text[:300]
