from __future__ import annotations

import base64
import uuid
from collections.abc import Sequence
from datetime import datetime

from sqlalchemy import and_, delete, or_, select
from sqlalchemy.orm import Session

from shared.db.models import Analysis, IdempotencyRecord, UtteranceResult


def get_for_user(session: Session, user_id: uuid.UUID, analysis_id: uuid.UUID) -> Analysis | None:
    return session.scalar(select(Analysis).where(Analysis.id == analysis_id, Analysis.user_id == user_id))


def utterances(session: Session, analysis_id: uuid.UUID) -> Sequence[UtteranceResult]:
    return session.scalars(
        select(UtteranceResult)
        .where(UtteranceResult.analysis_id == analysis_id)
        .order_by(UtteranceResult.index)
    ).all()


def delete_utterances(session: Session, analysis_id: uuid.UUID) -> None:
    session.execute(delete(UtteranceResult).where(UtteranceResult.analysis_id == analysis_id))


def encode_cursor(analysis: Analysis) -> str:
    raw = f"{analysis.created_at.isoformat()}|{analysis.id}"
    return base64.urlsafe_b64encode(raw.encode()).decode().rstrip("=")


def decode_cursor(cursor: str) -> tuple[datetime, uuid.UUID]:
    """Raises ValueError for anything that is not a cursor this API issued."""
    padded = cursor + "=" * (-len(cursor) % 4)
    created, _, analysis_id = base64.urlsafe_b64decode(padded.encode()).decode().partition("|")
    return datetime.fromisoformat(created), uuid.UUID(analysis_id)


def page(
    session: Session,
    user_id: uuid.UUID,
    *,
    status: str | None,
    limit: int,
    cursor: tuple[datetime, uuid.UUID] | None,
) -> list[Analysis]:
    """Newest first; keyset pagination on (created_at, id) stays stable while rows are added."""
    statement = select(Analysis).where(Analysis.user_id == user_id)
    if status is not None:
        statement = statement.where(Analysis.status == status)
    if cursor is not None:
        created_at, analysis_id = cursor
        statement = statement.where(
            or_(
                Analysis.created_at < created_at,
                and_(Analysis.created_at == created_at, Analysis.id < analysis_id),
            )
        )
    statement = statement.order_by(Analysis.created_at.desc(), Analysis.id.desc()).limit(limit + 1)
    return list(session.scalars(statement))


def get_idempotency_record(session: Session, user_id: uuid.UUID, key: str) -> IdempotencyRecord | None:
    return session.scalar(
        select(IdempotencyRecord).where(IdempotencyRecord.user_id == user_id, IdempotencyRecord.key == key)
    )
