from __future__ import annotations

import base64
import uuid
from collections.abc import Sequence
from datetime import datetime

from sqlalchemy import and_, or_, select
from sqlalchemy.orm import Session

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


def encode_cursor(delivery: WebhookDelivery) -> str:
    raw = f"{delivery.created_at.isoformat()}|{delivery.id}"
    return base64.urlsafe_b64encode(raw.encode()).decode().rstrip("=")


def decode_cursor(cursor: str) -> tuple[datetime, uuid.UUID]:
    """Raises ValueError for anything that is not a cursor this API issued."""
    padded = cursor + "=" * (-len(cursor) % 4)
    created, _, delivery_id = base64.urlsafe_b64decode(padded.encode()).decode().partition("|")
    return datetime.fromisoformat(created), uuid.UUID(delivery_id)


def page_deliveries(
    session: Session,
    user_id: uuid.UUID,
    *,
    endpoint_id: uuid.UUID | None,
    analysis_id: uuid.UUID | None,
    status: str | None,
    limit: int,
    cursor: tuple[datetime, uuid.UUID] | None,
) -> list[WebhookDelivery]:
    """Newest first, keyset-paginated on (created_at, id); fetches one extra row to detect more."""
    statement = select(WebhookDelivery).where(WebhookDelivery.user_id == user_id)
    if endpoint_id is not None:
        statement = statement.where(WebhookDelivery.endpoint_id == endpoint_id)
    if analysis_id is not None:
        statement = statement.where(WebhookDelivery.analysis_id == analysis_id)
    if status is not None:
        statement = statement.where(WebhookDelivery.status == status)
    if cursor is not None:
        created_at, delivery_id = cursor
        statement = statement.where(
            or_(
                WebhookDelivery.created_at < created_at,
                and_(WebhookDelivery.created_at == created_at, WebhookDelivery.id < delivery_id),
            )
        )
    statement = statement.order_by(WebhookDelivery.created_at.desc(), WebhookDelivery.id.desc()).limit(
        limit + 1
    )
    return list(session.scalars(statement))
