"""The dashboard's webhook pages against a gateway and an arq worker (their own PostgreSQL
database and Redis keys): register an endpoint (secret shown once), send it a test event that a
real loopback receiver gets, signed; resend it; disable the endpoint; CSRF and escaping."""

from __future__ import annotations

import json
import re
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass

import httpx
import pytest

from services.platform.webhooks.delivery import verify
from tests.dashboard.helpers import csrf_from, signed_in_client
from tests.fixtures.db import create_postgres_database, drop_postgres_database, migrate
from tests.worker import stack
from tests.worker.loopback import RecordingServer, send_bytes

pytestmark = pytest.mark.timeout(300)


@dataclass(frozen=True)
class WebhookStack:
    base_url: str
    receiver: RecordingServer
    env: dict[str, str]


@pytest.fixture(scope="module")
def webhook_stack(tmp_path_factory) -> Iterator[WebhookStack]:
    directory = tmp_path_factory.mktemp("dashboard-webhooks")
    database_url = create_postgres_database()
    tag = uuid.uuid4().hex[:10]
    with RecordingServer() as receiver:
        receiver.routes["/hook"] = lambda handler: send_bytes(handler, b"ok")
        env = {
            "MOODREEL_ENVIRONMENT": "test",
            "MOODREEL_DATABASE_URL": database_url,
            "MOODREEL_REDIS_URL": "redis://127.0.0.1:6379/0",
            "MOODREEL_DATA_DIR": str(directory / "data"),
            "MOODREEL_REDIS_KEY_PREFIX": f"moodreel-dash-hooks-{tag}:",
            "MOODREEL_QUEUE_NAME": f"moodreel-dash-hooks-{tag}:queue",
            "MOODREEL_SECRET_KEY": uuid.uuid4().hex * 2,
            # This one loopback receiver is allowed; every other private address stays refused.
            "MOODREEL_PRIVATE_URL_ORIGINS": json.dumps([receiver.origin]),
            "MOODREEL_WEBHOOK_RETRY_BASE_SECONDS": "0.5",
        }
        migrate(database_url)
        gateway = stack.gateway(env, directory)
        worker = stack.worker(env, directory)
        try:
            gateway.start(timeout=90)
            worker.start(timeout=90)
            yield WebhookStack(f"http://127.0.0.1:{gateway.port}", receiver, env)
        finally:
            worker.stop()
            gateway.stop()
            drop_postgres_database(database_url)


def delivery_rows(page: httpx.Response) -> list[tuple[str, str]]:
    """(event type, status) of each row of the delivery log."""
    rows = re.findall(
        r'data-delivery-row="[^"]+" data-event="([^"]+)".*?data-delivery-status>(\w+)<', page.text, re.S
    )
    return rows


def wait_for_status(client: httpx.Client, path: str, status: str, count: int = 1) -> httpx.Response:
    for _ in range(100):
        page = client.get(path)
        if [s for _, s in delivery_rows(page)].count(status) >= count:
            return page
        time.sleep(0.1)
    raise AssertionError(f"no {count} x {status} delivery at {path}: {delivery_rows(page)}")


def test_register_test_send_resend_disable(webhook_stack):
    client, _ = signed_in_client(webhook_stack.base_url)
    page = client.get("/dashboard/webhooks")
    assert page.status_code == 200 and "No webhook endpoints yet." in page.text
    token = csrf_from(page)

    # A refused URL: the API's reason is shown and the form keeps (escaped) values.
    refused = client.post(
        "/dashboard/webhooks",
        data={"csrf_token": token, "url": "http://127.0.0.1:9/hook", "description": 'ops "<b>"'},
    )
    assert refused.status_code == 400 and "url_not_allowed" not in refused.text
    assert 'value="http://127.0.0.1:9/hook"' in refused.text and "ops &#34;&lt;b&gt;&#34;" in refused.text
    # No CSRF token: refused, nothing registered.
    assert (
        client.post("/dashboard/webhooks", data={"url": webhook_stack.receiver.url("/hook")}).status_code
        == 403
    )

    created = client.post(
        "/dashboard/webhooks",
        data={
            "csrf_token": token,
            "url": webhook_stack.receiver.url("/hook"),
            "description": "<script>alert(1)</script>",
            "event_types": ["analysis.succeeded", "not-an-event"],
        },
    )
    assert created.status_code == 303 and created.headers["location"] == "/dashboard/webhooks"
    shown = client.get("/dashboard/webhooks")
    secret = re.search(r'id="new-secret"[^>]*value="(whsec_[^"]+)"', shown.text).group(1)
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in shown.text and "<script>alert(1)" not in shown.text
    assert ">analysis.succeeded</span>" in shown.text
    assert secret not in client.get("/dashboard/webhooks").text, "the secret is shown once"
    endpoint_id = re.search(r'data-endpoint-row="([0-9a-f-]{36})"', shown.text).group(1)

    # Send test: a webhook.test event, delivered to the receiver and signed with that secret.
    sent = client.post(f"/dashboard/webhooks/{endpoint_id}/test", data={"csrf_token": token})
    assert sent.status_code == 303
    log_path = sent.headers["location"]
    assert log_path == f"/dashboard/webhooks/deliveries?endpoint_id={endpoint_id}"
    log = wait_for_status(client, log_path, "succeeded")
    assert delivery_rows(log) == [("webhook.test", "succeeded")]
    assert "HTTP 200" in log.text
    method, path, headers, body = webhook_stack.receiver.requests[-1]
    assert (method, path) == ("POST", "/hook")
    verify(secret, headers, body)
    assert json.loads(body)["type"] == "webhook.test"
    assert json.loads(body)["data"]["endpoint_id"] == endpoint_id

    # Resend: the same body and webhook-id once more.
    delivery_id = re.search(r'data-delivery-row="([0-9a-f-]{36})"', log.text).group(1)
    resent = client.post(
        f"/dashboard/webhooks/deliveries/{delivery_id}/resend",
        data={"csrf_token": token, "back": "https://evil.example/"},
    )
    assert resent.status_code == 303 and resent.headers["location"] == "/dashboard/webhooks/deliveries"
    for _ in range(100):
        if len([r for r in webhook_stack.receiver.requests if r[1] == "/hook"]) >= 2:
            break
        time.sleep(0.1)
    first, again = [r for r in webhook_stack.receiver.requests if r[1] == "/hook"][-2:]
    assert again[2]["webhook-id"] == first[2]["webhook-id"] and again[3] == first[3]
    verify(secret, again[2], again[3])

    # Disable: no test button, the API refuses a test event, and it can be enabled again.
    disabled = client.post(f"/dashboard/webhooks/{endpoint_id}/active", data={"csrf_token": token})
    assert disabled.status_code == 303
    listing = client.get("/dashboard/webhooks")
    assert "data-endpoint-status>disabled<" in listing.text and "Send test" not in listing.text
    blocked = client.post(f"/dashboard/webhooks/{endpoint_id}/test", data={"csrf_token": token})
    assert blocked.status_code == 409 and "Enable the endpoint" in blocked.text
    enabled = client.post(
        f"/dashboard/webhooks/{endpoint_id}/active", data={"csrf_token": token, "active": "true"}
    )
    assert (
        enabled.status_code == 303
        and "data-endpoint-status>active<" in client.get("/dashboard/webhooks").text
    )

    # Another account sees none of it.
    stranger, _ = signed_in_client(webhook_stack.base_url)
    assert "No webhook endpoints yet." in stranger.get("/dashboard/webhooks").text
    other_token = csrf_from(stranger.get("/dashboard/webhooks"))
    assert (
        stranger.post(f"/dashboard/webhooks/{endpoint_id}/test", data={"csrf_token": other_token}).status_code
        == 404
    )
    assert delivery_rows(stranger.get("/dashboard/webhooks/deliveries")) == []
    stranger.close()
    client.close()


def test_reset_token_from_the_cli_on_the_reset_page(webhook_stack):
    """`moodreel users reset-password EMAIL` prints a token; the dashboard's page spends it once."""
    import os
    import subprocess
    import sys
    from pathlib import Path

    from tests.dashboard.helpers import PASSWORD

    client, email = signed_in_client(webhook_stack.base_url)
    moodreel = Path(sys.executable).with_name("moodreel")
    issued = subprocess.run(
        [str(moodreel), "users", "reset-password", email.upper(), "--minutes", "10"],
        env={**os.environ, **webhook_stack.env},
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert issued.returncode == 0, issued.stderr
    reset_token = issued.stdout.strip()
    assert reset_token.startswith("mr_reset_") and "\n" not in reset_token

    with httpx.Client(base_url=webhook_stack.base_url, timeout=30) as anonymous:
        form = anonymous.get("/dashboard/reset-password")
        assert form.status_code == 200 and 'name="token"' in form.text
        csrf = csrf_from(form)
        assert (
            anonymous.post(
                "/dashboard/reset-password", data={"token": reset_token, "new_password": "x" * 12}
            ).status_code
            == 403
        )  # no CSRF token
        short = anonymous.post(
            "/dashboard/reset-password",
            data={"csrf_token": csrf, "token": reset_token, "new_password": "short"},
        )
        assert short.status_code == 422 and "new_password" in short.text
        done = anonymous.post(
            "/dashboard/reset-password",
            data={"csrf_token": csrf, "token": f"  {reset_token} ", "new_password": "a brand new passphrase"},
        )
        assert (
            done.status_code == 303 and done.headers["location"] == "/dashboard/login?notice=password-reset"
        )
        login_page = anonymous.get(done.headers["location"])
        assert "Your password was changed" in login_page.text
        # Spent: the same token again is refused on the page.
        again = anonymous.post(
            "/dashboard/reset-password",
            data={"csrf_token": csrf, "token": reset_token, "new_password": "yet another passphrase"},
        )
        assert again.status_code == 400 and "invalid, expired or already used" in again.text
        # Unknown notices show nothing from the URL.
        assert "<script>" not in anonymous.get("/dashboard/login", params={"notice": "<script>"}).text
        assert (
            anonymous.post(
                "/v1/auth/login", data={"username": email, "password": "a brand new passphrase"}
            ).status_code
            == 200
        )
        assert (
            anonymous.post("/v1/auth/login", data={"username": email, "password": PASSWORD}).status_code
            == 401
        )
    # The browser that was signed in before the reset is signed out.
    assert client.get("/dashboard/keys").status_code == 303
    client.close()
