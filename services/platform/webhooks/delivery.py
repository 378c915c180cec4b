"""Standard Webhooks 1.0: secrets, signing, verification and delivery.

A message is signed as ``v1,`` + base64(HMAC-SHA256(key, f"{id}.{timestamp}.{body}")) where the
key is the base64 part of a ``whsec_`` secret. Receivers check the timestamp is within five
minutes and compare signatures in constant time; a signature header may carry several
space-separated signatures (secret rotation), any one matching is enough.

Written on the standard library (hmac, base64) rather than the ``standardwebhooks`` package: the
scheme is a few lines and that package pulls in attrs, dateutil and Deprecated for them.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import secrets
import time
from collections.abc import Mapping
from dataclasses import dataclass

import httpx

from shared.settings import Settings, get_settings

SECRET_PREFIX = "whsec_"
SIGNATURE_VERSION = "v1"
DEFAULT_TOLERANCE_SECONDS = 300
# 24 random bytes, like Svix's generated secrets; Standard Webhooks asks for 24 to 64.
SECRET_BYTES = 24


class WebhookVerificationError(ValueError):
    """The request is not a valid, fresh message signed with the secret."""


def generate_secret() -> str:
    return SECRET_PREFIX + base64.b64encode(secrets.token_bytes(SECRET_BYTES)).decode()


def callback_secret(user_id: object, settings: Settings | None = None) -> str:
    """The secret that signs a user's per-analysis ``callback_url`` deliveries.

    Derived from the server's secret key and the user id (nothing stored); the user reads it from
    ``GET /v1/webhooks/callback-secret``. Rotating ``MOODREEL_SECRET_KEY`` rotates it.
    """
    settings = settings or get_settings()
    key = settings.secret_key.get_secret_value().encode()
    derived = hmac.new(key, f"moodreel-callback-secret:{user_id}".encode(), hashlib.sha256).digest()
    return SECRET_PREFIX + base64.b64encode(derived[:SECRET_BYTES]).decode()


def _secret_key(secret: str) -> bytes:
    if not secret.startswith(SECRET_PREFIX):
        raise ValueError("webhook secrets start with 'whsec_'")
    try:
        return base64.b64decode(secret.removeprefix(SECRET_PREFIX), validate=True)
    except ValueError as exc:
        raise ValueError("webhook secret is not base64 after 'whsec_'") from exc


def sign(secret: str, msg_id: str, timestamp: int, body: bytes) -> str:
    """The ``webhook-signature`` value for one message: ``v1,<base64 HMAC-SHA256>``."""
    signed = f"{msg_id}.{timestamp}.".encode() + body
    digest = hmac.new(_secret_key(secret), signed, hashlib.sha256).digest()
    return f"{SIGNATURE_VERSION},{base64.b64encode(digest).decode()}"


def signature_headers(secret: str, msg_id: str, body: bytes, timestamp: int | None = None) -> dict[str, str]:
    timestamp = int(time.time()) if timestamp is None else timestamp
    return {
        "webhook-id": msg_id,
        "webhook-timestamp": str(timestamp),
        "webhook-signature": sign(secret, msg_id, timestamp, body),
    }


def verify(
    secret: str,
    headers: Mapping[str, str],
    body: bytes,
    *,
    tolerance_seconds: int = DEFAULT_TOLERANCE_SECONDS,
    now: float | None = None,
) -> None:
    """Raise WebhookVerificationError unless ``body`` carries a fresh, valid signature.

    ``headers`` is looked up lower-case first, as HTTP frameworks normalise them differently.
    """
    lowered = {key.lower(): value for key, value in headers.items()}
    msg_id = lowered.get("webhook-id")
    raw_timestamp = lowered.get("webhook-timestamp")
    signature_header = lowered.get("webhook-signature")
    if not msg_id or not raw_timestamp or not signature_header:
        raise WebhookVerificationError("missing webhook-id, webhook-timestamp or webhook-signature")
    try:
        timestamp = int(raw_timestamp)
    except ValueError as exc:
        raise WebhookVerificationError("webhook-timestamp is not an integer") from exc
    now = time.time() if now is None else now
    if abs(now - timestamp) > tolerance_seconds:
        raise WebhookVerificationError("webhook-timestamp is outside the tolerance window")
    expected = sign(secret, msg_id, timestamp, body).encode()
    for candidate in signature_header.split():
        # Compare every candidate (no early exit on the version prefix) in constant time.
        if hmac.compare_digest(candidate.encode(), expected):
            return
    raise WebhookVerificationError("no matching signature")


@dataclass(frozen=True)
class DeliveryResult:
    """What one delivery attempt got: a status code, or an error when no response came."""

    status_code: int | None
    error: str | None
    response_body: str
    duration_ms: int
    # No later attempt can succeed (the URL is refused by the SSRF rules): fail the delivery now.
    permanent: bool = False

    @property
    def ok(self) -> bool:
        return self.status_code is not None and 200 <= self.status_code < 300


async def deliver(
    url: str,
    secret: str,
    msg_id: str,
    body: bytes,
    *,
    settings: Settings | None = None,
    timestamp: int | None = None,
) -> DeliveryResult:
    """POST one signed message to ``url``, re-checking it with the SSRF rules at send time.

    The connection goes to the address that passed the check (no second DNS lookup an attacker
    could rebind), redirects are not followed (a 3xx is a failed attempt), and only the first
    few KB of the response are kept for the delivery log.
    """
    from shared.net.fetch import FetchError, pinned_request

    settings = settings or get_settings()
    headers = {
        "content-type": "application/json",
        "user-agent": "Moodreel-Webhooks/1",
        **signature_headers(secret, msg_id, body, timestamp),
    }
    started = time.monotonic()
    try:
        response = await pinned_request(
            "POST",
            url,
            headers=headers,
            content=body,
            timeout=httpx.Timeout(
                settings.webhook_timeout_seconds, connect=min(5.0, settings.webhook_timeout_seconds)
            ),
            total_timeout=settings.webhook_timeout_seconds,
            max_response_bytes=settings.webhook_response_log_bytes,
            settings=settings,
        )
    except FetchError as exc:
        # The fetch module's codes name downloads; for a delivery only the SSRF refusal needs one.
        error = f"url_not_allowed: {exc}" if exc.code == "url_not_allowed" else str(exc)
        refused = exc.code == "url_not_allowed"
        return DeliveryResult(None, error, "", _elapsed_ms(started), permanent=refused)
    return DeliveryResult(
        response.status_code,
        None,
        response.body.decode("utf-8", "replace"),
        _elapsed_ms(started),
    )


def _elapsed_ms(started: float) -> int:
    return int((time.monotonic() - started) * 1000)
