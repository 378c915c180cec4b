"""The SDK's account and webhook calls against a real gateway on loopback (uvicorn, PostgreSQL and
SQLite, its own Redis keys): password change and reset, webhook test events, disable, resend."""

from __future__ import annotations

import asyncio
import uuid

import pytest
from moodreel import AsyncMoodreel, AuthenticationError, Moodreel
from moodreel.errors import ApiError

from services.platform.auth.service import issue_reset_token
from shared.db.session import make_session_factory, session_scope
from tests.fixtures.db import engine_for
from tests.gateway.conftest import PASSWORD, redis_client, server_url, settings  # noqa: F401

NEW_PASSWORD = "a brand new passphrase"


def signed_up(base_url: str) -> tuple[str, str]:
    email = f"sdk-{uuid.uuid4().hex[:8]}@example.com"
    with Moodreel(base_url, api_key="") as anonymous:
        anonymous.auth.signup(email, PASSWORD)
        return email, anonymous.auth.login(email, PASSWORD)["access_token"]


def test_change_password_keeps_this_client_signed_in(server_url):  # noqa: F811
    email, access_token = signed_up(server_url)
    with Moodreel(server_url, access_token=access_token) as client:
        with pytest.raises(ApiError) as wrong:
            client.auth.change_password("not my password", NEW_PASSWORD)
        assert wrong.value.status == 400 and wrong.value.code == "invalid_current_password"
        tokens = client.auth.change_password(PASSWORD, NEW_PASSWORD)
        assert tokens["access_token"] != access_token and tokens["refresh_token"]
        assert client.auth.me()["email"] == email  # goes on with the new token
    with Moodreel(server_url, access_token=access_token) as stale, pytest.raises(AuthenticationError):
        stale.auth.me()
    with Moodreel(server_url, api_key="") as anonymous:
        assert anonymous.auth.login(email, NEW_PASSWORD)["access_token"]


def test_reset_password_with_an_operator_token(server_url, settings):  # noqa: F811
    email, _ = signed_up(server_url)
    with session_scope(make_session_factory(engine_for(settings.database_url))) as session:
        token = issue_reset_token(session, settings, email)

    async def reset() -> None:
        async with AsyncMoodreel(server_url, api_key="") as client:
            await client.auth.reset_password(token, NEW_PASSWORD)
            with pytest.raises(ApiError) as spent:
                await client.auth.reset_password(token, "another new passphrase")
            assert spent.value.code == "invalid_reset_token"
            assert (await client.auth.login(email, NEW_PASSWORD))["access_token"]

    asyncio.run(reset())


def test_webhook_test_event_disable_and_resend(server_url):  # noqa: F811
    _, access_token = signed_up(server_url)
    with Moodreel(server_url, access_token=access_token) as client:
        endpoint = client.webhooks.create_endpoint("https://93.184.215.14/hook")
        delivery = client.webhooks.send_test(endpoint["id"])
        assert delivery["event_type"] == "webhook.test" and delivery["status"] == "pending"
        assert delivery["payload"]["data"]["endpoint_id"] == endpoint["id"]
        listed = client.webhooks.deliveries(endpoint_id=endpoint["id"])["items"]
        assert [d["id"] for d in listed] == [delivery["id"]]
        with pytest.raises(ApiError) as pending:
            client.webhooks.resend(delivery["id"])  # still being attempted
        assert pending.value.status == 409 and pending.value.code == "webhook_delivery_pending"
        assert client.webhooks.set_endpoint_active(endpoint["id"], False)["is_active"] is False
        with pytest.raises(ApiError) as disabled:
            client.webhooks.send_test(endpoint["id"])
        assert disabled.value.status == 409 and disabled.value.code == "webhook_endpoint_disabled"
        assert client.webhooks.set_endpoint_active(endpoint["id"], True)["is_active"] is True
