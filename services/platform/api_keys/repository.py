from __future__ import annotations

import uuid
from collections.abc import Sequence

from sqlalchemy import select
from sqlalchemy.orm import Session

from shared.db.models import ApiKey


def list_for_user(session: Session, user_id: uuid.UUID) -> Sequence[ApiKey]:
    return session.scalars(select(ApiKey).where(ApiKey.user_id == user_id).order_by(ApiKey.created_at)).all()


def get_for_user(session: Session, user_id: uuid.UUID, key_id: uuid.UUID) -> ApiKey | None:
    return session.scalar(select(ApiKey).where(ApiKey.id == key_id, ApiKey.user_id == user_id))
