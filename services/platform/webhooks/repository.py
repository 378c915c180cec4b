"""The ``webhook_endpoints`` and ``webhook_deliveries`` tables: the API's reads and writes and the
analysis jobs' deliveries (inserted on their deterministic message id, so a re-run job creates
no second delivery).

Every function takes a Session and only flushes; ``session_scope`` in the caller commits.
"""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from services.platform.pagination import Cursor, newest_first
from shared.db.models import Analysis, WebhookDelivery, WebhookEndpoint
from shared.db.session import dialect_insert
from shared.db.types import utcnow


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


@dataclass(frozen=True)
class DeliveryFilter:
    """Which of an account's deliveries the log lists; a field left None keeps every value."""

    endpoint_id: uuid.UUID | None = None
    analysis_id: uuid.UUID | None = None
    status: str | None = None


def page_deliveries(
    session: Session, user_id: uuid.UUID, only: DeliveryFilter, *, limit: int, cursor: Cursor | None
) -> list[WebhookDelivery]:
    """Newest first, keyset-paginated on (created_at, id); fetches one extra row to detect more."""
    statement = select(WebhookDelivery).where(WebhookDelivery.user_id == user_id)
    if only.endpoint_id is not None:
        statement = statement.where(WebhookDelivery.endpoint_id == only.endpoint_id)
    if only.analysis_id is not None:
        statement = statement.where(WebhookDelivery.analysis_id == only.analysis_id)
    if only.status is not None:
        statement = statement.where(WebhookDelivery.status == only.status)
    return list(session.scalars(newest_first(statement, WebhookDelivery, limit=limit, cursor=cursor)))


# --- deliveries of analysis events ----------------------------------------------------------------
def message_id(analysis_id: uuid.UUID, event_type: str, receiver: str) -> str:
    """Deterministic per (analysis, event, receiver): a re-run job creates no second delivery."""
    return "msg_" + uuid.uuid5(analysis_id, f"{event_type}:{receiver}").hex


def create_deliveries(
    session: Session, analysis: Analysis, event_type: str, payload: dict[str, Any]
) -> list[uuid.UUID]:
    """One delivery per active endpoint subscribed to ``event_type`` plus the callback_url.

    Returns the ids of every delivery of this event that is still pending (new or left over from a
    killed run), so the caller can (re-)enqueue them; arq's job ids keep that idempotent.
    """
    endpoints = session.scalars(
        select(WebhookEndpoint).where(
            WebhookEndpoint.user_id == analysis.user_id, WebhookEndpoint.is_active.is_(True)
        )
    ).all()
    receivers: list[tuple[uuid.UUID | None, str, str]] = [
        (endpoint.id, endpoint.url, str(endpoint.id))
        for endpoint in endpoints
        if not endpoint.event_types or event_type in endpoint.event_types
    ]
    if analysis.callback_url:
        receivers.append((None, analysis.callback_url, "callback"))
    for endpoint_id, url, receiver in receivers:
        msg_id = message_id(analysis.id, event_type, receiver)
        session.execute(
            dialect_insert(session)(WebhookDelivery)
            .values(
                id=uuid.uuid4(),
                user_id=analysis.user_id,
                endpoint_id=endpoint_id,
                analysis_id=analysis.id,
                url=url,
                message_id=msg_id,
                event_type=event_type,
                payload=payload,
                status="pending",
                attempts=0,
                created_at=utcnow(),
            )
            .on_conflict_do_nothing(index_elements=["message_id"])
        )
    return pending_deliveries(session, analysis.id)


def pending_deliveries(session: Session, analysis_id: uuid.UUID) -> list[uuid.UUID]:
    return list(
        session.scalars(
            select(WebhookDelivery.id).where(
                WebhookDelivery.analysis_id == analysis_id, WebhookDelivery.status == "pending"
            )
        ).all()
    )
