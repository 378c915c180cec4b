"""The webhooks API (services/platform/webhooks): endpoint CRUD, the callback secret and the delivery
log, in-process against PostgreSQL and SQLite."""

from __future__ import annotations

import uuid
from datetime import timedelta

import pytest
from sqlalchemy import select

from services.platform.webhooks.delivery import callback_secret
from shared.db.models import User, WebhookDelivery
from shared.db.session import create_db_engine, make_session_factory
from shared.db.types import utcnow
from tests.gateway.conftest import new_api_key, sign_up


def key_headers(client, scopes=("analyses:read", "analyses:write")) -> dict[str, str]:
    return {"X-API-Key": new_api_key(client, sign_up(client), scopes=scopes)["key"]}


# A public address literal: registration checks it without DNS (this machine has none).
PUBLIC_HOOK = "https://93.184.216.34/hooks/moodreel"


def create(client, headers, url=PUBLIC_HOOK, **extra):
    return client.post("/v1/webhooks/endpoints", json={"url": url, **extra}, headers=headers)


def test_endpoint_crud_shows_the_secret_once(client):
    headers = key_headers(client)
    created = create(client, headers, description="prod", event_types=["analysis.failed"])
    assert created.status_code == 201, created.text
    body = created.json()
    assert body["secret"].startswith("whsec_") and body["event_types"] == ["analysis.failed"]
    endpoint_id = body["id"]

    listed = client.get("/v1/webhooks/endpoints", headers=headers).json()["items"]
    assert [e["id"] for e in listed] == [endpoint_id] and "secret" not in listed[0]
    one = client.get(f"/v1/webhooks/endpoints/{endpoint_id}", headers=headers).json()
    assert "secret" not in one and one["description"] == "prod"

    patched = client.patch(
        f"/v1/webhooks/endpoints/{endpoint_id}", json={"is_active": False, "event_types": []}, headers=headers
    )
    assert patched.status_code == 200 and patched.json()["is_active"] is False
    assert patched.json()["event_types"] == []

    assert client.delete(f"/v1/webhooks/endpoints/{endpoint_id}", headers=headers).status_code == 204
    missing = client.get(f"/v1/webhooks/endpoints/{endpoint_id}", headers=headers)
    assert missing.status_code == 404
    assert missing.headers["content-type"] == "application/problem+json"
    assert missing.json()["code"] == "webhook_endpoint_not_found"


@pytest.mark.parametrize(
    "url",
    [
        "http://169.254.169.254/latest/meta-data",
        "http://127.0.0.1:8080/hook",
        "http://2130706433/hook",
        "ftp://hooks.example.com/x",
        "http://user@hooks.example.com/x",
    ],
)
def test_endpoint_urls_pass_the_ssrf_rules(client, url):
    response = create(client, key_headers(client), url=url)
    assert response.status_code == 400, response.text
    assert response.json()["code"] == "url_not_allowed"


def test_endpoints_are_private_to_their_owner_and_need_the_write_scope(client):
    owner = key_headers(client)
    endpoint_id = create(client, owner).json()["id"]
    stranger = key_headers(client)
    assert client.get(f"/v1/webhooks/endpoints/{endpoint_id}", headers=stranger).status_code == 404
    assert client.delete(f"/v1/webhooks/endpoints/{endpoint_id}", headers=stranger).status_code == 404
    assert client.get("/v1/webhooks/endpoints", headers=stranger).json()["items"] == []

    read_only = key_headers(client, scopes=("analyses:read",))
    assert create(client, read_only).status_code == 403
    assert client.get("/v1/webhooks/endpoints", headers=read_only).status_code == 200
    assert client.get("/v1/webhooks/endpoints").status_code == 401


def test_callback_secret_is_stable_per_user(client, settings):
    account = sign_up(client)
    headers = {"X-API-Key": new_api_key(client, account)["key"]}
    first = client.get("/v1/webhooks/callback-secret", headers=headers).json()["secret"]
    assert first == client.get("/v1/webhooks/callback-secret", headers=headers).json()["secret"]
    other = client.get("/v1/webhooks/callback-secret", headers=key_headers(client)).json()["secret"]
    assert first.startswith("whsec_") and first != other
    engine = create_db_engine(settings.database_url)
    with make_session_factory(engine)() as session:
        user_id = session.scalar(select(User.id).where(User.email == account.email))
    engine.dispose()
    assert first == callback_secret(user_id, settings)


def test_delivery_log_pages_newest_first_and_filters(client, settings):
    account = sign_up(client)
    headers = {"X-API-Key": new_api_key(client, account)["key"]}
    endpoint_id = uuid.UUID(create(client, headers).json()["id"])
    engine = create_db_engine(settings.database_url)
    with make_session_factory(engine)() as session:
        user_id = session.scalar(select(User.id).where(User.email == account.email))
        now = utcnow()
        for i in range(5):
            session.add(
                WebhookDelivery(
                    user_id=user_id,
                    endpoint_id=endpoint_id,
                    url=PUBLIC_HOOK,
                    message_id=f"msg_{uuid.uuid4().hex}",
                    event_type="analysis.succeeded",
                    payload={"type": "analysis.succeeded", "n": i},
                    status="failed" if i == 0 else "succeeded",
                    attempts=1,
                    created_at=now + timedelta(seconds=i),
                )
            )
        session.commit()
    engine.dispose()

    first = client.get("/v1/webhooks/deliveries", params={"limit": 2}, headers=headers).json()
    assert len(first["items"]) == 2 and first["next_cursor"]
    rest = client.get(
        "/v1/webhooks/deliveries", params={"limit": 10, "cursor": first["next_cursor"]}, headers=headers
    ).json()
    seen = first["items"] + rest["items"]
    assert rest["next_cursor"] is None and len(seen) == 5
    created = [d["created_at"] for d in seen]
    assert created == sorted(created, reverse=True)
    failed = client.get("/v1/webhooks/deliveries", params={"status": "failed"}, headers=headers).json()[
        "items"
    ]
    assert len(failed) == 1
    detail = client.get(f"/v1/webhooks/deliveries/{failed[0]['id']}", headers=headers).json()
    assert detail["payload"] == {"type": "analysis.succeeded", "n": 0}
    assert (
        client.get(f"/v1/webhooks/deliveries/{failed[0]['id']}", headers=key_headers(client)).status_code
        == 404
    )
    bad = client.get("/v1/webhooks/deliveries", params={"cursor": "not-a-cursor"}, headers=headers)
    assert bad.status_code == 400 and bad.json()["code"] == "invalid_cursor"


def test_resend_puts_a_finished_delivery_back_on_the_queue(client, settings, redis_client):
    account = sign_up(client)
    headers = {"X-API-Key": new_api_key(client, account)["key"]}
    endpoint_id = uuid.UUID(create(client, headers).json()["id"])
    engine = create_db_engine(settings.database_url)
    sessions = make_session_factory(engine)
    with sessions() as session:
        user_id = session.scalar(select(User.id).where(User.email == account.email))
        delivery = WebhookDelivery(
            user_id=user_id,
            endpoint_id=endpoint_id,
            url=PUBLIC_HOOK,
            message_id=f"msg_{uuid.uuid4().hex}",
            event_type="analysis.failed",
            payload={"type": "analysis.failed"},
            status="failed",
            attempts=8,
            created_at=utcnow(),
        )
        session.add(delivery)
        session.commit()
        delivery_id = delivery.id

    resent = client.post(f"/v1/webhooks/deliveries/{delivery_id}/resend", headers=headers)
    assert resent.status_code == 202, resent.text
    assert resent.json()["status"] == "pending" and resent.json()["attempts"] == 8
    queued = [job_id.decode() for job_id in redis_client.zrange(settings.queue_name, 0, -1)]
    assert len(queued) == 1
    assert b"deliver_webhook" in redis_client.get(f"arq:job:{queued[0]}")

    again = client.post(f"/v1/webhooks/deliveries/{delivery_id}/resend", headers=headers)
    assert again.status_code == 409 and again.json()["code"] == "webhook_delivery_pending"
    stranger = client.post(f"/v1/webhooks/deliveries/{delivery_id}/resend", headers=key_headers(client))
    assert stranger.status_code == 404
    engine.dispose()
