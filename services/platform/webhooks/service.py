"""Webhook endpoints (per user, Standard Webhooks secret shown once) and the delivery log.

Endpoint URLs pass the same URL policy as video and callback URLs when registered; the worker checks them
again at every send (DNS may change in between).
"""

from __future__ import annotations

import uuid
from collections.abc import Sequence

from sqlalchemy.orm import Session

from services.gateway.pagination import decode_cursor, encode_cursor
from services.platform.webhooks import repository
from services.platform.webhooks.delivery import generate_secret
from services.platform.webhooks.schemas import (
    WebhookDeliveryPage,
    WebhookDeliveryPublic,
    WebhookEndpointCreate,
    WebhookEndpointCreated,
    WebhookEndpointPublic,
    WebhookEndpointUpdate,
)
from shared.db.models import WebhookDelivery, WebhookEndpoint
from shared.db.types import utcnow
from shared.net.urls import UrlNotAllowed, UrlPolicy
from shared.problems import BadRequest, Conflict, NotFound
from shared.settings import Settings

MAX_ENDPOINTS = 20


class WebhookEndpointNotFound(NotFound):
    code, title = "webhook_endpoint_not_found", "Webhook endpoint not found"


class WebhookDeliveryNotFound(NotFound):
    code, title = "webhook_delivery_not_found", "Webhook delivery not found"


class TooManyWebhookEndpoints(Conflict):
    code, title = "too_many_webhook_endpoints", "Too many webhook endpoints"


class WebhookUrlNotAllowed(BadRequest):
    code, title = "url_not_allowed", "The URL is not allowed"


class DeliveryPending(Conflict):
    code, title = "webhook_delivery_pending", "The delivery is still pending"


def _checked_url(url: str, settings: Settings) -> str:
    try:
        UrlPolicy.from_settings(settings).check(url)
    except UrlNotAllowed as exc:
        raise WebhookUrlNotAllowed(exc.reason) from exc
    return url


def create_endpoint(
    session: Session, settings: Settings, user_id: uuid.UUID, body: WebhookEndpointCreate
) -> WebhookEndpointCreated:
    if len(repository.list_endpoints(session, user_id)) >= MAX_ENDPOINTS:
        raise TooManyWebhookEndpoints(f"Delete an endpoint first; at most {MAX_ENDPOINTS} are allowed.")
    secret = generate_secret()
    endpoint = WebhookEndpoint(
        user_id=user_id,
        url=_checked_url(body.url, settings),
        description=body.description,
        secret=secret,
        event_types=sorted(set(body.event_types)),
        is_active=True,
        created_at=utcnow(),
    )
    session.add(endpoint)
    session.flush()
    return WebhookEndpointCreated(
        **WebhookEndpointPublic.model_validate(endpoint).model_dump(), secret=secret
    )


def get_endpoint(session: Session, user_id: uuid.UUID, endpoint_id: uuid.UUID) -> WebhookEndpoint:
    endpoint = repository.get_endpoint(session, user_id, endpoint_id)
    if endpoint is None:
        raise WebhookEndpointNotFound()
    return endpoint


def update_endpoint(
    session: Session,
    settings: Settings,
    user_id: uuid.UUID,
    endpoint_id: uuid.UUID,
    body: WebhookEndpointUpdate,
) -> WebhookEndpoint:
    endpoint = get_endpoint(session, user_id, endpoint_id)
    if body.url is not None:
        endpoint.url = _checked_url(body.url, settings)
    if body.description is not None:
        endpoint.description = body.description
    if body.event_types is not None:
        endpoint.event_types = sorted(set(body.event_types))
    if body.is_active is not None:
        endpoint.is_active = body.is_active
    session.flush()
    return endpoint


def delete_endpoint(session: Session, user_id: uuid.UUID, endpoint_id: uuid.UUID) -> None:
    # Its deliveries go with it (ON DELETE CASCADE): the log belongs to the endpoint.
    session.delete(get_endpoint(session, user_id, endpoint_id))
    session.flush()


def get_delivery(session: Session, user_id: uuid.UUID, delivery_id: uuid.UUID) -> WebhookDelivery:
    delivery = repository.get_delivery(session, user_id, delivery_id)
    if delivery is None:
        raise WebhookDeliveryNotFound()
    return delivery


def resend_delivery(session: Session, user_id: uuid.UUID, delivery_id: uuid.UUID) -> WebhookDelivery:
    """Put a delivery back to pending for one more attempt (same body and webhook-id).

    The attempt count is kept, so a delivery that had used up its attempts gets exactly one more.
    """
    delivery = get_delivery(session, user_id, delivery_id)
    if delivery.status == "pending":
        raise DeliveryPending("The delivery is still being attempted.")
    delivery.status, delivery.next_attempt_at = "pending", None
    session.flush()
    return delivery


class WebhookEndpointDisabled(Conflict):
    code, title = "webhook_endpoint_disabled", "The webhook endpoint is disabled"


TEST_EVENT = "webhook.test"


def test_delivery(session: Session, user_id: uuid.UUID, endpoint_id: uuid.UUID) -> WebhookDelivery:
    """A ``webhook.test`` event to one endpoint, signed and logged like every delivery, so a
    receiver can be checked before a real event reaches it."""
    endpoint = get_endpoint(session, user_id, endpoint_id)
    if not endpoint.is_active:
        raise WebhookEndpointDisabled("Enable the endpoint to send it a test event.")
    now = utcnow()
    delivery = WebhookDelivery(
        user_id=user_id,
        endpoint_id=endpoint.id,
        analysis_id=None,
        url=endpoint.url,
        message_id="msg_" + uuid.uuid4().hex,
        event_type=TEST_EVENT,
        payload={
            "type": TEST_EVENT,
            "timestamp": now.isoformat(),
            "data": {"endpoint_id": str(endpoint.id), "message": "A test event from Moodreel."},
        },
        status="pending",
        attempts=0,
        created_at=now,
    )
    session.add(delivery)
    session.flush()
    return delivery


def restore_status(session: Session, delivery_id: uuid.UUID, status: str) -> None:
    delivery = session.get(WebhookDelivery, delivery_id)
    if delivery is not None and delivery.status == "pending":
        delivery.status = status
        session.flush()


def page_deliveries(
    session: Session,
    user_id: uuid.UUID,
    only: repository.DeliveryFilter,
    *,
    limit: int,
    cursor: str | None,
) -> WebhookDeliveryPage:
    position = decode_cursor(cursor) if cursor is not None else None
    rows: Sequence[WebhookDelivery] = repository.page_deliveries(
        session, user_id, only, limit=limit, cursor=position
    )
    more = len(rows) > limit
    rows = rows[:limit]
    return WebhookDeliveryPage(
        items=[WebhookDeliveryPublic.model_validate(row) for row in rows],
        next_cursor=encode_cursor(rows[-1]) if more and rows else None,
    )
