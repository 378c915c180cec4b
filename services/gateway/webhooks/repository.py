from __future__ import annotations

import uuid
from collections.abc import Sequence

from sqlalchemy import select
from sqlalchemy.orm import Session

from services.gateway.pagination import Cursor, newest_first
from shared.db.models import WebhookDelivery, WebhookEndpoint


def list_endpoints(session: Session, user_id: uuid.UUID) -> Sequence[WebhookEndpoint]:
    return session.scalars(
        select(WebhookEndpoint).where(WebhookEndpoint.user_id == user_id).order_by(WebhookEndpoint.created_at)
    ).all()


def get_endpoint(session: Session, user_id: uuid.UUID, endpoint_id: uuid.UUID) -> WebhookEndpoint | None:
    return session.scalar(
        select(WebhookEndpoint).where(WebhookEndpoint.id == endpoint_id, WebhookEndpoint.user_id == user_id)
    )


def get_delivery(session: Session, user_id: uuid.UUID, delivery_id: uuid.UUID) -> WebhookDelivery | None:
    return session.scalar(
        select(WebhookDelivery).where(WebhookDelivery.id == delivery_id, WebhookDelivery.user_id == user_id)
    )


def page_deliveries(
    session: Session,
    user_id: uuid.UUID,
    *,
    endpoint_id: uuid.UUID | None,
    analysis_id: uuid.UUID | None,
    status: str | None,
    limit: int,
    cursor: Cursor | None,
) -> list[WebhookDelivery]:
    """Newest first, keyset-paginated on (created_at, id); fetches one extra row to detect more."""
    statement = select(WebhookDelivery).where(WebhookDelivery.user_id == user_id)
    if endpoint_id is not None:
        statement = statement.where(WebhookDelivery.endpoint_id == endpoint_id)
    if analysis_id is not None:
        statement = statement.where(WebhookDelivery.analysis_id == analysis_id)
    if status is not None:
        statement = statement.where(WebhookDelivery.status == status)
    return list(session.scalars(newest_first(statement, WebhookDelivery, limit=limit, cursor=cursor)))
