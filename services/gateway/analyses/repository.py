from __future__ import annotations

import uuid
from collections.abc import Sequence

from sqlalchemy import delete, func, select
from sqlalchemy.orm import Session

from services.gateway.pagination import Cursor, newest_first
from shared.db.models import Analysis, IdempotencyRecord, UtteranceResult


def get_for_user(session: Session, user_id: uuid.UUID, analysis_id: uuid.UUID) -> Analysis | None:
    return session.scalar(select(Analysis).where(Analysis.id == analysis_id, Analysis.user_id == user_id))


def utterances(session: Session, analysis_id: uuid.UUID) -> Sequence[UtteranceResult]:
    return session.scalars(
        select(UtteranceResult)
        .where(UtteranceResult.analysis_id == analysis_id)
        .order_by(UtteranceResult.index)
    ).all()


def utterance(session: Session, analysis_id: uuid.UUID, index: int) -> UtteranceResult | None:
    return session.scalar(
        select(UtteranceResult).where(
            UtteranceResult.analysis_id == analysis_id, UtteranceResult.index == index
        )
    )


def delete_utterances(session: Session, analysis_id: uuid.UUID) -> None:
    session.execute(delete(UtteranceResult).where(UtteranceResult.analysis_id == analysis_id))


def page(
    session: Session,
    user_id: uuid.UUID,
    *,
    status: str | None,
    limit: int,
    cursor: Cursor | None,
    query: str | None = None,
) -> list[Analysis]:
    """Newest first; keyset pagination on (created_at, id) stays stable while rows are added.
    ``query`` keeps the analyses whose name contains it, case-insensitively (``%``/``_`` literal)."""
    statement = select(Analysis).where(Analysis.user_id == user_id)
    if status is not None:
        statement = statement.where(Analysis.status == status)
    if query:
        escaped = query.lower().replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")
        statement = statement.where(func.lower(Analysis.name).like(f"%{escaped}%", escape="\\"))
    return list(session.scalars(newest_first(statement, Analysis, limit=limit, cursor=cursor)))


def get_idempotency_record(session: Session, user_id: uuid.UUID, key: str) -> IdempotencyRecord | None:
    return session.scalar(
        select(IdempotencyRecord).where(IdempotencyRecord.user_id == user_id, IdempotencyRecord.key == key)
    )


def upload_used_elsewhere(session: Session, upload_id: uuid.UUID, analysis_id: uuid.UUID) -> bool:
    """Whether an analysis other than ``analysis_id`` was submitted with this upload."""
    other = session.scalar(
        select(Analysis.id).where(Analysis.upload_id == upload_id, Analysis.id != analysis_id).limit(1)
    )
    return other is not None
