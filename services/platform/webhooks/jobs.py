"""The ``deliver_webhook`` job: one attempt at one delivery, logged, retried with backoff.

The delivery row is the log the API shows: attempts, last status code or error, next attempt
time, final status. The body is fixed when the delivery is created (same bytes, same webhook-id
on every attempt); each attempt is signed with a fresh timestamp.
"""

from __future__ import annotations

import asyncio
import json
import uuid
from datetime import timedelta
from typing import Any

from arq import Retry
from sqlalchemy.orm import Session

from services.platform.resources import Resources
from services.platform.webhooks.delivery import callback_secret, deliver
from shared.db.models import WebhookDelivery, WebhookEndpoint
from shared.db.session import session_scope
from shared.db.types import utcnow
from shared.logging import get_logger
from shared.settings import Settings

log = get_logger(__name__)


async def enqueue_delivery(
    redis_pool: Any, delivery_id: uuid.UUID, settings: Settings, defer: float = 0
) -> None:
    # The job id makes a second enqueue of the same delivery (a re-run job) a no-op.
    await redis_pool.enqueue_job(
        "deliver_webhook",
        str(delivery_id),
        _job_id=f"webhook:{delivery_id}",
        _queue_name=settings.queue_name,
        _defer_by=defer or None,
    )


async def deliver_webhook(ctx: dict[str, Any], delivery_id: str) -> dict[str, Any]:
    outcome = await attempt_delivery(ctx["resources"], uuid.UUID(delivery_id))
    if "retry_in" in outcome:
        raise Retry(defer=outcome["retry_in"])
    return outcome


def backoff_seconds(attempts: int, base: float, cap: float) -> float:
    """Wait after failed attempt number ``attempts`` (1-based): base, 2·base, 4·base, … ≤ cap."""
    return min(cap, base * 2 ** (attempts - 1))


async def attempt_delivery(resources: Resources, delivery_id: uuid.UUID) -> dict[str, Any]:
    """Try once; returns {"status", "retry_in"?}: the caller re-queues when ``retry_in`` is set."""
    settings = resources.settings

    def load(session: Session) -> tuple[str, str, str, bytes] | None:
        delivery = session.get(WebhookDelivery, delivery_id)
        if delivery is None or delivery.status != "pending":
            return None
        if delivery.endpoint_id is not None:
            endpoint = session.get(WebhookEndpoint, delivery.endpoint_id)
            if endpoint is None or not endpoint.is_active:
                delivery.status, delivery.last_error = "failed", "the endpoint was disabled"
                return None
            secret = endpoint.secret
        else:
            secret = callback_secret(delivery.user_id, settings)
        body = json.dumps(delivery.payload, separators=(",", ":"), sort_keys=True).encode()
        return delivery.url, secret, delivery.message_id, body

    loaded = await asyncio.to_thread(_in_session, resources, load)
    if loaded is None:
        return {"status": "skipped"}
    url, secret, message_id, body = loaded
    result = await deliver(url, secret, message_id, body, settings=settings)

    def record(session: Session) -> dict[str, Any]:
        delivery = session.get(WebhookDelivery, delivery_id, with_for_update=True)
        if delivery is None:
            return {"status": "skipped"}
        delivery.attempts += 1
        delivery.last_status_code = result.status_code
        delivery.last_error = result.error or (None if result.ok else result.response_body[:500] or None)
        if result.ok:
            delivery.status, delivery.delivered_at, delivery.next_attempt_at = "succeeded", utcnow(), None
            return {"status": "succeeded", "attempts": delivery.attempts}
        if result.permanent or delivery.attempts >= settings.webhook_max_attempts:
            delivery.status, delivery.next_attempt_at = "failed", None
            return {"status": "failed", "attempts": delivery.attempts}
        wait = backoff_seconds(
            delivery.attempts, settings.webhook_retry_base_seconds, settings.webhook_retry_max_seconds
        )
        delivery.next_attempt_at = utcnow() + timedelta(seconds=wait)
        return {"status": "pending", "attempts": delivery.attempts, "retry_in": wait}

    outcome = await asyncio.to_thread(_in_session, resources, record)
    log.info(
        "webhook_attempt",
        delivery_id=str(delivery_id),
        status_code=result.status_code,
        error=result.error,
        outcome=outcome["status"],
        duration_ms=result.duration_ms,
    )
    return outcome


def _in_session(resources: Resources, work):
    with session_scope(resources.sessions) as session:
        return work(session)
