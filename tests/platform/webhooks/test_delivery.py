"""Standard Webhooks signing, verification and delivery to a real loopback receiver."""

from __future__ import annotations

import json
import time

import pytest

from services.platform.webhooks.delivery import (
    WebhookVerificationError,
    deliver,
    generate_secret,
    sign,
    signature_headers,
    verify,
)
from shared.settings import Settings
from tests.worker.loopback import RecordingServer, redirect_to, send_bytes, status


def test_signature_matches_the_standard_webhooks_test_vector():
    # The example from the Standard Webhooks specification's reference libraries.
    assert (
        sign(
            "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw",
            "msg_p5jXN8AQM9LWM0D4loKWxJek",
            1614265330,
            b'{"test": 2432232314}',
        )
        == "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE="
    )


def test_generated_secrets_are_whsec_and_unique():
    first, second = generate_secret(), generate_secret()
    assert first.startswith("whsec_") and first != second
    assert len(first) == len("whsec_") + 32


def test_verify_accepts_fresh_and_rejects_stale_tampered_or_foreign():
    secret, body = generate_secret(), b'{"type":"analysis.succeeded"}'
    headers = signature_headers(secret, "msg_1", body)
    verify(secret, headers, body)
    verify(secret, {k.upper(): v for k, v in headers.items()}, body)
    with pytest.raises(WebhookVerificationError):
        verify(secret, headers, body + b" ")
    with pytest.raises(WebhookVerificationError):
        verify(generate_secret(), headers, body)
    with pytest.raises(WebhookVerificationError):
        verify(secret, {**headers, "webhook-id": "msg_2"}, body)
    stale = signature_headers(secret, "msg_1", body, timestamp=int(time.time()) - 301)
    with pytest.raises(WebhookVerificationError, match="tolerance"):
        verify(secret, stale, body)
    future = signature_headers(secret, "msg_1", body, timestamp=int(time.time()) + 301)
    with pytest.raises(WebhookVerificationError, match="tolerance"):
        verify(secret, future, body)
    with pytest.raises(WebhookVerificationError, match="missing"):
        verify(secret, {"webhook-id": "msg_1"}, body)


def test_verify_accepts_any_of_several_signatures():
    old, new, body = generate_secret(), generate_secret(), b"{}"
    ts = int(time.time())
    header = f"{sign(old, 'm', ts, body)} {sign(new, 'm', ts, body)}"
    headers = {"webhook-id": "m", "webhook-timestamp": str(ts), "webhook-signature": header}
    for secret in (old, new):
        verify(secret, headers, body)  # raises unless one of the signatures matches
    with pytest.raises(WebhookVerificationError):
        verify(generate_secret(), headers, body)


def test_malformed_secret_is_refused():
    with pytest.raises(ValueError):
        sign("not-a-secret", "m", 1, b"")


@pytest.fixture
def receiver():
    with RecordingServer() as server:
        yield server


def settings_for(*servers: RecordingServer, **overrides) -> Settings:
    return Settings(private_url_origins=[s.origin for s in servers], webhook_timeout_seconds=2.0, **overrides)


async def test_delivery_is_signed_and_verifiable_by_the_receiver(receiver):
    secret = generate_secret()
    verified: list[dict] = []

    def hook(handler):
        _, _, headers, body = receiver.requests[-1]
        verify(secret, headers, body)
        verified.append(json.loads(body))
        send_bytes(handler, b"ok")

    receiver.routes["/hook"] = hook
    body = json.dumps({"type": "analysis.succeeded", "data": {"id": "a1"}}).encode()
    result = await deliver(receiver.url("/hook"), secret, "msg_abc", body, settings=settings_for(receiver))
    assert result.ok and result.status_code == 200 and result.response_body == "ok"
    assert verified == [{"type": "analysis.succeeded", "data": {"id": "a1"}}]
    headers = receiver.requests[0][2]
    assert headers["webhook-id"] == "msg_abc" and headers["content-type"] == "application/json"


async def test_non_2xx_redirects_and_timeouts_are_failed_attempts(receiver):
    receiver.routes["/fail"] = status(500, b"boom")
    receiver.routes["/moved"] = redirect_to("/fail")
    settings = settings_for(receiver)
    failed = await deliver(receiver.url("/fail"), generate_secret(), "m1", b"{}", settings=settings)
    assert not failed.ok and failed.status_code == 500 and failed.response_body == "boom"
    moved = await deliver(receiver.url("/moved"), generate_secret(), "m2", b"{}", settings=settings)
    assert not moved.ok and moved.status_code == 302
    assert [r[1] for r in receiver.requests] == ["/fail", "/moved"]  # the redirect was not followed


async def test_callback_urls_are_rechecked_at_send_time(receiver):
    result = await deliver(receiver.url("/hook"), generate_secret(), "m", b"{}", settings=settings_for())
    assert not result.ok and result.status_code is None
    assert result.error.startswith("url_not_allowed")
    assert receiver.connections == 0


async def test_a_receiver_that_does_not_answer_in_time_is_a_failed_attempt(receiver):
    from tests.worker.loopback import stall

    receiver.routes["/slow"] = stall(3.0)
    settings = Settings(private_url_origins=[receiver.origin], webhook_timeout_seconds=0.5)
    result = await deliver(receiver.url("/slow"), generate_secret(), "m", b"{}", settings=settings)
    assert not result.ok and result.status_code is None
    assert "did not answer" in result.error and result.duration_ms < 2500
