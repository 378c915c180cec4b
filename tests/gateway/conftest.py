"""Gateway fixtures: settings pointing at the test database, a unique Redis prefix and queue,
an in-process client, a real uvicorn server on a free loopback port, and account helpers."""

from __future__ import annotations

import secrets
import threading
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import httpx
import pytest
import redis
import uvicorn
from fastapi.testclient import TestClient

from services.gateway.main import create_app
from shared.settings import PlanLimits, Settings

REDIS_URL = "redis://127.0.0.1:6379/0"
PASSWORD = "correct horse battery staple"


def make_settings(database_url: str, tmp_path, **overrides) -> Settings:
    prefix = f"moodreel-test-{uuid.uuid4().hex[:10]}:"
    values = dict(
        environment="test",
        database_url=database_url,
        redis_url=REDIS_URL,
        redis_key_prefix=prefix,
        queue_name=f"{prefix}queue",
        secret_key=secrets.token_urlsafe(48),
        data_dir=tmp_path,
        storage_backend="local",
        plans={
            "free": PlanLimits(analyses_per_month=5, video_seconds_per_month=600, requests_per_minute=1000),
        },
        default_plan="free",
        login_max_failures=3,
    )
    values.update(overrides)
    return Settings(**values)


def delete_prefixed_keys(client: redis.Redis, prefix: str) -> None:
    keys = list(client.scan_iter(match=f"{prefix}*", count=1000))
    if keys:
        client.delete(*keys)


@pytest.fixture
def redis_client() -> Iterator[redis.Redis]:
    client = redis.Redis.from_url(REDIS_URL)
    yield client
    client.close()


def delete_queued_jobs(client: redis.Redis, queue_name: str) -> None:
    """arq keeps each job under ``arq:job:<id>`` (outside our prefix): remove the ones we queued."""
    job_ids = [job_id.decode() for job_id in client.zrange(queue_name, 0, -1)]
    if job_ids:
        client.delete(*(f"arq:job:{job_id}" for job_id in job_ids))


@pytest.fixture
def settings(database_url, tmp_path, redis_client) -> Iterator[Settings]:
    settings = make_settings(database_url, tmp_path)
    yield settings
    delete_queued_jobs(redis_client, settings.queue_name)
    delete_prefixed_keys(redis_client, settings.redis_key_prefix)


@pytest.fixture
def client(settings) -> Iterator[TestClient]:
    with TestClient(create_app(settings), raise_server_exceptions=False) as test_client:
        yield test_client


@dataclass
class Account:
    email: str
    access_token: str
    refresh_token: str

    @property
    def headers(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.access_token}"}


def sign_up(client, email: str | None = None) -> Account:
    email = email or f"user-{uuid.uuid4().hex[:8]}@example.com"
    response = client.post("/v1/auth/signup", json={"email": email, "password": PASSWORD})
    assert response.status_code == 201, response.text
    response = client.post("/v1/auth/login", data={"username": email, "password": PASSWORD})
    assert response.status_code == 200, response.text
    tokens = response.json()
    return Account(email, tokens["access_token"], tokens["refresh_token"])


def new_api_key(client, account: Account, scopes=("analyses:read", "analyses:write"), **extra) -> dict:
    response = client.post(
        "/v1/api-keys", json={"name": "test", "scopes": list(scopes), **extra}, headers=account.headers
    )
    assert response.status_code == 201, response.text
    return response.json()


@pytest.fixture
def account(client) -> Account:
    return sign_up(client)


@pytest.fixture
def api_key(client, account) -> str:
    return new_api_key(client, account)["key"]


@contextmanager
def running_server(app) -> Iterator[str]:
    """The app under a real uvicorn on a free 127.0.0.1 port; yields its base URL."""
    # As the launchers run it: forwarded headers are the gateway's call (trusted_proxies).
    config = uvicorn.Config(
        app, host="127.0.0.1", port=0, log_level="warning", lifespan="on", proxy_headers=False
    )
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 20
    while not server.started:
        if time.monotonic() > deadline or not thread.is_alive():
            raise RuntimeError("uvicorn did not start")
        time.sleep(0.02)
    port = server.servers[0].sockets[0].getsockname()[1]
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(timeout=20)


@pytest.fixture
def server_url(settings) -> Iterator[str]:
    with running_server(create_app(settings)) as url:
        yield url


def http_client(base_url: str) -> httpx.Client:
    return httpx.Client(base_url=base_url, timeout=30)
