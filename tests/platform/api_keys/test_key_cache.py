"""The verified-key cache: a hit costs no key query, changes behind the gateway's back are seen
within ``api_key_cache_seconds`` (≤ 1 s), a revocation through the API at once, and
``last_used_at`` is written at most once a minute."""

from __future__ import annotations

import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime

import pytest
from sqlalchemy import event, update

from shared.db.models import ApiKey, User
from tests.fixtures.db import engine_for
from tests.gateway.conftest import new_api_key
from tests.platform.auth.test_auth import assert_problem


@contextmanager
def statements(client) -> Iterator[list[str]]:
    engine = client.app.state.session_factory.kw["bind"]
    seen: list[str] = []

    def record(conn, cursor, statement, parameters, context, executemany) -> None:
        seen.append(" ".join(statement.split()).lower())

    event.listen(engine, "before_cursor_execute", record)
    try:
        yield seen
    finally:
        event.remove(engine, "before_cursor_execute", record)


def test_a_verified_key_is_not_queried_again_within_the_cache_time(client, account, settings):
    key = new_api_key(client, account)["key"]
    headers = {"X-API-Key": key}
    # On a loaded machine the requests may outlast the cache time; only a run within it counts.
    for _ in range(5):
        assert client.get("/v1/usage", headers=headers).status_code == 200
        verified_at = time.monotonic()
        with statements(client) as seen:
            for _ in range(5):
                response = client.get("/v1/usage", headers=headers)
                assert response.status_code == 200 and response.json()["plan"] == "free"
        if time.monotonic() - verified_at < settings.api_key_cache_seconds:
            break
    else:
        pytest.skip("five requests never fitted in the key cache's time on this machine")
    assert not [s for s in seen if "from api_keys" in s], seen
    assert not [s for s in seen if s.startswith("update api_keys")], seen


def test_changes_behind_the_gateways_back_take_effect_within_a_second(
    client, account, database_url, settings
):
    assert 0 < settings.api_key_cache_seconds <= 1
    revoked, disabled_account_key = new_api_key(client, account), new_api_key(client, account)
    for created in (revoked, disabled_account_key):
        assert client.get("/v1/usage", headers={"X-API-Key": created["key"]}).status_code == 200
    with engine_for(database_url).begin() as connection:
        connection.execute(
            update(ApiKey).where(ApiKey.id == uuid.UUID(revoked["id"])).values(revoked_at=datetime.now(UTC))
        )
    changed_at = time.monotonic()
    while client.get("/v1/usage", headers={"X-API-Key": revoked["key"]}).status_code == 200:
        assert time.monotonic() - changed_at <= settings.api_key_cache_seconds + 0.25
        time.sleep(0.05)
    assert time.monotonic() - changed_at <= settings.api_key_cache_seconds + 0.25

    with engine_for(database_url).begin() as connection:
        connection.execute(update(User).values(is_active=False))
    time.sleep(settings.api_key_cache_seconds)
    body = assert_problem(
        client.get("/v1/usage", headers={"X-API-Key": disabled_account_key["key"]}), 401, "unauthorized"
    )
    assert "disabled" in body["detail"]


def test_revocation_through_the_api_is_immediate_even_when_cached(client, account):
    created = new_api_key(client, account)
    headers = {"X-API-Key": created["key"]}
    assert client.get("/v1/usage", headers=headers).status_code == 200
    assert client.delete(f"/v1/api-keys/{created['id']}", headers=account.headers).status_code == 204
    assert_problem(client.get("/v1/usage", headers=headers), 401, "unauthorized")


def test_last_used_is_written_once_a_minute(client, account, database_url):
    created = new_api_key(client, account)
    headers = {"X-API-Key": created["key"]}
    with statements(client) as seen:
        for _ in range(3):
            assert client.get("/v1/usage", headers=headers).status_code == 200
            time.sleep(0.4)  # past the cache time: the key is read again, the write is not repeated
    assert len([s for s in seen if s.startswith("update api_keys")]) == 1
    listed = client.get("/v1/api-keys", headers=account.headers).json()["items"]
    assert listed[0]["last_used_at"] is not None


def test_a_cached_keys_usage_reads_no_database_and_is_never_stale(client, account):
    """With a verified key and unchanged counters, GET /v1/usage sends no statement at all (the
    key and the counters both come from caches) and still shows a charge made the moment before."""
    key = new_api_key(client, account)["key"]
    headers = {"X-API-Key": key}
    assert client.get("/v1/usage", headers=headers).json()["analyses"]["used"] == 0
    with statements(client) as seen:
        usage = client.get("/v1/usage", headers=headers)
    assert usage.status_code == 200
    assert seen == [], seen
    assert '"requests";r=' in usage.headers["ratelimit"] and '"analyses";r=5' in usage.headers["ratelimit"]
    submitted = client.post(
        "/v1/analyses", json={"video_url": "https://93.184.215.14/v.mp4"}, headers=headers
    )
    assert submitted.status_code == 202, submitted.text
    after = client.get("/v1/usage", headers=headers)
    assert after.json()["analyses"]["used"] == 1 and '"analyses";r=4' in after.headers["ratelimit"]
