"""Keyset pagination, newest first, on (created_at, id): the query side, shared by the analyses
list and the webhook delivery log. Cursors as the API spells them: ``services.gateway.pagination``."""

from __future__ import annotations

import uuid
from datetime import datetime
from typing import Any

from sqlalchemy import Select, and_, or_

Cursor = tuple[datetime, uuid.UUID]


def newest_first(statement: Select, model: Any, *, limit: int, cursor: Cursor | None) -> Select:
    """The page after `cursor`, plus one extra row that tells the caller whether more follow."""
    if cursor is not None:
        created_at, row_id = cursor
        statement = statement.where(
            or_(model.created_at < created_at, and_(model.created_at == created_at, model.id < row_id))
        )
    return statement.order_by(model.created_at.desc(), model.id.desc()).limit(limit + 1)
