"""Bounds that keep one hostile request from stalling the gateway: validation work and error
answers bounded by the schema, and database pools sized to the threads that use them."""

from __future__ import annotations

import json
import threading

import anyio
import httpx
import pytest
from fastapi.testclient import TestClient

from services.gateway.analyses.schemas import MAX_TRANSCRIPT_SEGMENTS
from services.gateway.auth import service as auth_service
from services.gateway.main import create_app
from shared.problems import MAX_VALIDATION_ERRORS
from shared.settings import Settings
from tests.gateway.conftest import PASSWORD, make_settings, running_server, sign_up

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


def test_database_pool_holds_a_connection_for_every_gateway_thread(database_url, tmp_path):
    settings = make_settings(database_url, tmp_path, gateway_threads=7)
    app = create_app(settings)

    async def default_tokens() -> float:
        return anyio.to_thread.current_default_thread_limiter().total_tokens

    with TestClient(app) as test_client:
        pool = app.state.engine.pool
        assert pool.size() == 7 and pool._max_overflow == 7
        assert app.state.commit_limiter.total_tokens == 7
        # Sync endpoints run on the server loop's default limiter (the TestClient's portal).
        assert test_client.portal.call(default_tokens) == 7


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
